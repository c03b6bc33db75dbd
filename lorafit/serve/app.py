"""The HTTP routes (FastAPI), OpenAI/vLLM shaped, on top of the engine.

    GET  /health                     liveness + queue depth (no API key needed)
    GET  /metrics                    Prometheus text format (serve/metrics.py)
    GET  /v1/models                  the base, each adapter (parent = the base) and each A/B route
    POST /v1/completions             prompt -> text; stream: true gives SSE chunks then `data: [DONE]`
    POST /v1/chat/completions        messages through the tokenizer's chat template
    POST /v1/load_lora_adapter       {lora_name, lora_path}   (only with --allow-adapter-loading)
    POST /v1/unload_lora_adapter     {lora_name}              (only with --allow-adapter-loading)
    GET  /v1/routes, POST /v1/routes/{name} {weights}         A/B routes (re-weighting: --allow-adapter-loading)

The app is wrapped in `gate.Gate` (API key and body size, before any route). Routes stay thin: the
request's prompt and sampling are checked in serve/sampling.py (tokenising and chat templating in a
worker thread, never on the event loop that streams other requests' tokens), and the request's life
(submit, text, SSE) is serve/completion.py. A request's `model` is the base's name, an adapter's name
or a route's name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorafit.errors import LorafitError
from lorafit.serve.completion import CompletionRun
from lorafit.serve.engine import Engine
from lorafit.serve.gate import Gate
from lorafit.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    LoadAdapterRequest,
    RouteWeights,
    UnloadAdapterRequest,
    _Sampling,
    now,
)
from lorafit.serve.routing import Route, RouteError
from lorafit.serve.sampling import Limits, chat_prompt_ids, completion_prompt_ids, to_sampling
from lorafit.serve.security import adapter_dir_under, check_adapter_name

log = logging.getLogger("lorafit.serve")

DEFAULT_MAX_MODEL_LEN = 2048  # for a model whose config gives no max_position_embeddings
DEFAULT_MAX_REQUEST_BYTES = 1 << 20
DEFAULT_REQUEST_TIMEOUT_S = 600.0


@dataclass
class ServerConfig:
    """What the HTTP layer enforces. `max_model_len` None: the model's max_position_embeddings."""

    base_name: str
    api_key: str | None = None
    adapter_root: Path | None = None
    allow_adapter_loading: bool = False
    routes: dict[str, Route] = field(default_factory=dict)
    max_model_len: int | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S


def model_limits(model, max_model_len: int | None) -> Limits:
    """The request limits for `model`: --max-model-len (at most the model's context), its vocabulary."""
    config = getattr(model, "config", None)
    context = getattr(config, "max_position_embeddings", None)
    if max_model_len is None:
        max_model_len = context or DEFAULT_MAX_MODEL_LEN
    elif context is not None and max_model_len > context:
        raise ValueError(f"--max-model-len {max_model_len} is over the model's context ({context} tokens)")
    return Limits(max_model_len, getattr(config, "vocab_size", None))


def build_app(engine: Engine, config: ServerConfig, metrics=None):
    """The ASGI app: FastAPI routes behind the Gate. `metrics`: a serve.metrics.Metrics (for /metrics)."""
    app = FastAPI(title="lorafit serve", docs_url=None, redoc_url=None, openapi_url=None)
    tokenizer = engine.host.tokenizer
    limits = model_limits(engine.host.model, config.max_model_len)
    refused = metrics.request_refused if metrics is not None else None
    add_error_handlers(app, refused)

    @app.get("/health")
    async def health():
        return {"status": "ok"} | engine.stats()

    if metrics is not None:
        app.add_api_route("/metrics", metrics.endpoint, methods=["GET"])

    v1 = APIRouter(prefix="/v1")

    # ---------------------------------------------------------------------------------------- models

    def model_card(name: str, parent: str | None, **extra) -> dict:
        return {"id": name, "object": "model", "created": now(), "owned_by": "lorafit", "root": name,
                "parent": parent, "max_model_len": limits.max_model_len} | extra

    @v1.get("/models")
    async def list_models():
        cards = [model_card(config.base_name, None)]
        cards += [model_card(name, config.base_name) for name in engine.adapters()]
        cards += [model_card(name, config.base_name, lorafit_route=dict(r.weights)) for name, r in config.routes.items()]
        return {"object": "list", "data": cards}

    def resolve(model: str, user: str | None) -> tuple[str | None, str]:
        """The adapter a request runs on (None: the base) and the name reported as `lorafit_adapter`."""
        target = model
        if model in config.routes:
            target = config.routes[model].pick(user)
        if target == config.base_name:
            return None, target
        if not engine.has_adapter(target):
            via = f" (picked by route {model!r})" if target != model else ""
            raise APIError(404, f"the model {target!r}{via} does not exist", param="model", code="model_not_found")
        return target, target

    # ---------------------------------------------------------------------------------------- generation

    async def generate(request: Request, body: _Sampling, target: tuple[str | None, str], prompt_ids: list[int],
                       chat: bool):
        adapter, picked = target
        settings = to_sampling(body, prompt_ids, limits, chat=chat)
        on_end = metrics.request_ended if metrics is not None else None
        run = CompletionRun(engine, tokenizer, body, prompt_ids, settings, adapter, picked, chat=chat,
                            timeout=config.request_timeout, on_end=on_end)
        if not body.stream:
            return await run.json_response(request)
        return StreamingResponse(run.sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @v1.post("/completions")
    async def completions(body: CompletionRequest, request: Request):
        target = resolve(body.model, body.user)  # 404 before tokenising
        ids = await run_in_threadpool(completion_prompt_ids, tokenizer, body, limits)
        return await generate(request, body, target, ids, chat=False)

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        target = resolve(body.model, body.user)
        ids = await run_in_threadpool(chat_prompt_ids, tokenizer, body, config.base_name)
        return await generate(request, body, target, ids, chat=True)

    # ---------------------------------------------------------------------------------------- adapters

    def admin_allowed(what: str) -> None:
        if not config.allow_adapter_loading:
            raise APIError(403, f"{what} over HTTP is off; start the server with --allow-adapter-loading "
                                "--adapter-root DIR", code="adapter_loading_disabled")

    @v1.post("/load_lora_adapter")
    async def load_lora_adapter(body: LoadAdapterRequest):
        admin_allowed("adapter loading")
        check_adapter_name(body.lora_name)
        if body.lora_name == config.base_name or body.lora_name in config.routes:
            raise APIError(400, f"lora_name {body.lora_name!r} is already the name of the base or a route",
                           param="lora_name")
        directory = adapter_dir_under(config.adapter_root, body.lora_path)
        try:
            result = await engine.load_adapter_async(body.lora_name, str(directory))
        except LorafitError as e:
            raise APIError(400, str(e), param="lora_path", code="invalid_adapter") from None
        log.info("loaded adapter %s from %s into slot %d", body.lora_name, directory, result["slot"])
        return {"status": "ok", "lora_name": body.lora_name, "slot": result["slot"]}

    @v1.post("/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadAdapterRequest):
        admin_allowed("adapter loading")
        engine.unload_adapter(body.lora_name)
        log.info("unloaded adapter %s (its slot is freed when its running requests finish)", body.lora_name)
        return {"status": "ok", "lora_name": body.lora_name}

    # ---------------------------------------------------------------------------------------- routes

    @v1.get("/routes")
    async def list_routes():
        return {"object": "list", "data": [{"name": n, "weights": dict(r.weights)} for n, r in config.routes.items()]}

    @v1.post("/routes/{name}")
    async def reweight(name: str, body: RouteWeights):
        admin_allowed("re-weighting routes")
        if name not in config.routes:
            raise APIError(404, f"route {name!r} does not exist (routes: {', '.join(config.routes) or 'none'})",
                           param="name", code="route_not_found")
        unknown = [t for t in body.weights if t != config.base_name and not engine.has_adapter(t)]
        if unknown:
            raise APIError(400, f"weights: {unknown[0]!r} is not a loaded adapter or the base", param="weights")
        try:
            config.routes[name].reweight(body.weights)
        except RouteError as e:
            raise APIError(400, str(e), param="weights") from None
        log.info("route %s re-weighted: %s", name, body.weights)
        return {"name": name, "weights": dict(config.routes[name].weights)}

    app.include_router(v1)
    return Gate(app, api_key=config.api_key, max_request_bytes=config.max_request_bytes, on_refused=refused)


def add_error_handlers(app: FastAPI, on_refused=None) -> None:
    """Every error as OpenAI's error JSON: APIError as raised, a body that fails validation as 400
    naming the first bad field, Starlette's own (404 path, 405 method) with their status.
    `on_refused(status)` is told of each."""
    count = on_refused or (lambda status: None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        log.info("%s %s -> %d %s", request.method, request.url.path, e.status, e.message)
        count(e.status)
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_, e: RequestValidationError):
        count(400)
        first = e.errors()[0] if e.errors() else {}
        if first.get("type") == "json_invalid":
            error = APIError(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})")
            return JSONResponse(error.body(), status_code=400)
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else str(first.get("msg", "invalid request"))
        # `param` is the top-level field (OpenAI's convention); the message has the full path.
        return JSONResponse(APIError(400, message, param=loc[0] if loc else None).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, e: StarletteHTTPException):
        count(e.status_code)
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)
