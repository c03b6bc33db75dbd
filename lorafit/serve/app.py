"""The HTTP routes (FastAPI), OpenAI/vLLM shaped, on top of the engine.

    GET  /health                     liveness + queue depth (no API key needed)
    GET  /v1/models                  the base, each adapter (parent = the base) and each A/B route
    POST /v1/completions             prompt -> text; stream: true gives SSE chunks then `data: [DONE]`
    POST /v1/chat/completions        messages through the tokenizer's chat template
    POST /v1/load_lora_adapter       {lora_name, lora_path}   (only with --allow-adapter-loading)
    POST /v1/unload_lora_adapter     {lora_name}              (only with --allow-adapter-loading)
    GET  /v1/routes, POST /v1/routes/{name} {weights}         A/B routes, re-weighted at runtime

A request's `model` is the base's name, an adapter's name or a route's name. One log line per request:
model, adapter, tokens in/out, time to first token, latency, finish reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorafit.errors import LorafitError
from lorafit.serve.engine import Engine, Sampling
from lorafit.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    LoadAdapterRequest,
    RouteWeights,
    UnloadAdapterRequest,
    _Sampling,
    chat_body,
    completion_body,
    new_id,
    now,
    usage,
)
from lorafit.serve.routing import Route, RouteError
from lorafit.serve.security import adapter_dir_under, check_api_key
from lorafit.serve.text import TextStream

log = logging.getLogger("lorafit.serve")


@dataclass
class ServerConfig:
    base_name: str
    api_key: str | None = None
    adapter_root: Path | None = None
    allow_adapter_loading: bool = False
    routes: dict[str, Route] = field(default_factory=dict)


def build_app(engine: Engine, config: ServerConfig) -> FastAPI:
    app = FastAPI(title="lorafit serve", docs_url=None, redoc_url=None, openapi_url=None)
    tokenizer = engine.host.tokenizer
    context = getattr(engine.host.model.config, "max_position_embeddings", None)
    vocab = getattr(engine.host.model.config, "vocab_size", None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        log.info("%s %s -> %d %s", request.method, request.url.path, e.status, e.message)
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid request')}" if param else str(first.get("msg", "invalid request"))
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, e: StarletteHTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    async def authorize(request: Request) -> None:
        check_api_key(config.api_key, request.headers.get("authorization"))

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @app.get("/health")
    async def health():
        return {"status": "ok"} | engine.stats()

    # ---------------------------------------------------------------------------------------- models

    def model_card(name: str, parent: str | None, **extra) -> dict:
        return {"id": name, "object": "model", "created": now(), "owned_by": "lorafit", "root": name,
                "parent": parent, "max_model_len": context} | extra

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

    def sampling(body: _Sampling, prompt_ids: list[int]) -> Sampling:
        body.check()
        if not prompt_ids:
            raise APIError(400, "the prompt is empty (no tokens)", param="prompt")
        max_tokens = body.max_tokens
        if context is not None:
            room = context - len(prompt_ids)
            if max_tokens is None:
                max_tokens = room
            if max_tokens < 1 or len(prompt_ids) + max_tokens > context:
                raise APIError(400, f"This model's maximum context length is {context} tokens. However, you "
                                    f"requested {len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the "
                                    f"prompt, {max_tokens} in the completion). Please reduce the prompt or max_tokens.",
                               param="max_tokens", code="context_length_exceeded")
        return Sampling(max_tokens or 256, body.temperature, body.top_p, body.seed)

    def completion_ids(body: CompletionRequest) -> list[int]:
        if body.echo:
            raise APIError(400, "echo is not supported", param="echo")
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise APIError(400, f"prompt: one prompt per request, got {len(prompt)}", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            return tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if vocab is not None and any(not 0 <= t < vocab for t in prompt):
            raise APIError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
        return list(prompt)

    def chat_ids(body: ChatRequest) -> list[int]:
        if not getattr(tokenizer, "chat_template", None):
            raise APIError(400, f"model {config.base_name!r} has no chat template; use /v1/completions",
                           param="messages", code="no_chat_template")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001 - a template that rejects these messages (roles, order)
            raise APIError(400, f"messages: the chat template rejected them ({str(e).splitlines()[0]})",
                           param="messages") from None
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    async def generate(request: Request, body: _Sampling, prompt_ids: list[int], chat: bool):
        adapter, picked = resolve(body.model, body.user)  # 404 before any 400 about the parameters
        settings = sampling(body, prompt_ids)
        stops = body.stop_list()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(event):
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

        job = engine.submit(prompt_ids, adapter, settings, sink)
        rid = new_id("chatcmpl" if chat else "cmpl")
        text = TextStream(tokenizer, stops)
        shape = chat_body if chat else completion_body

        def extra() -> dict:
            out = {"lorafit_adapter": picked}
            if body.return_token_ids:
                out["choice"] = {"token_ids": list(job.tokens), "prompt_token_ids": list(prompt_ids)}
            return out

        def finish_reason() -> str:
            return "stop" if text.stopped or job.finish_reason == "eos" else "length"

        async def next_event(timeout: float | None = None):
            event = await asyncio.wait_for(events.get(), timeout)
            if event[0] == "error":
                raise APIError(500, f"generation failed: {event[1]}")
            if event[0] == "tokens":
                delta = text.push(event[1])
                if text.stopped:
                    engine.cancel(job)
                    return "done", delta
                return "tokens", delta
            return "done", text.flush()

        def log_line(outcome: str) -> None:
            end = time.perf_counter()
            ttft = f"{(job.first_token_at - job.submitted) * 1000:.0f}" if job.first_token_at else "-"
            log.info("%s model=%s adapter=%s prompt_tokens=%d completion_tokens=%d ttft_ms=%s latency_ms=%.0f "
                     "finish=%s", rid, body.model, picked, len(prompt_ids), len(job.tokens), ttft,
                     (end - job.submitted) * 1000, outcome)

        if not body.stream:
            parts, outcome = [], "error"
            try:
                while True:
                    try:
                        kind, delta = await next_event(timeout=1.0)
                    except TimeoutError:
                        if await request.is_disconnected():
                            outcome = "disconnected"
                            engine.cancel(job)
                            return JSONResponse({}, status_code=499)
                        continue
                    parts.append(delta)
                    if kind == "done":
                        break
                outcome = finish_reason()
                return shape(rid, body.model, "".join(parts), outcome, extra(),
                             use=usage(len(prompt_ids), len(job.tokens)))
            finally:
                engine.cancel(job)  # a no-op when it finished
                log_line(outcome)

        async def sse():
            outcome = "disconnected"
            first = True
            try:
                while True:
                    try:
                        kind, delta = await next_event()
                    except APIError as e:
                        outcome = "error"
                        yield f"data: {json.dumps(e.body())}\n\n"
                        break
                    if delta or first:
                        chunk = shape(rid, body.model, delta, None, {"lorafit_adapter": picked}, chunk=True,
                                      **({"first": first} if chat else {}))
                        first = False
                        yield f"data: {json.dumps(chunk)}\n\n"
                    if kind == "done":
                        outcome = finish_reason()
                        last = shape(rid, body.model, "", outcome, extra(), chunk=True)
                        yield f"data: {json.dumps(last)}\n\n"
                        if body.include_usage():
                            tail = {"id": rid, "object": last["object"], "created": now(), "model": body.model,
                                    "choices": [], "usage": usage(len(prompt_ids), len(job.tokens))}
                            yield f"data: {json.dumps(tail)}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:
                engine.cancel(job)  # a no-op when it finished; stops decoding when the client went away
                log_line(outcome)

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @v1.post("/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await generate(request, body, completion_ids(body), chat=False)

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        return await generate(request, body, chat_ids(body), chat=True)

    # ---------------------------------------------------------------------------------------- adapters

    def loading_allowed() -> None:
        if not config.allow_adapter_loading:
            raise APIError(403, "adapter loading over HTTP is off; start the server with --allow-adapter-loading "
                                "--adapter-root DIR", code="adapter_loading_disabled")

    @v1.post("/load_lora_adapter")
    async def load_lora_adapter(body: LoadAdapterRequest):
        loading_allowed()
        if body.lora_name == config.base_name or body.lora_name in config.routes:
            raise APIError(400, f"lora_name {body.lora_name!r} is already the name of the base or a route",
                           param="lora_name")
        directory = adapter_dir_under(config.adapter_root, body.lora_path)
        try:
            result = await asyncio.wrap_future(engine.load_adapter(body.lora_name, str(directory)))
        except LorafitError as e:
            raise APIError(400, str(e), param="lora_path", code="invalid_adapter") from None
        log.info("loaded adapter %s from %s into slot %d", body.lora_name, directory, result["slot"])
        return {"status": "ok", "lora_name": body.lora_name, "slot": result["slot"]}

    @v1.post("/unload_lora_adapter")
    async def unload_lora_adapter(body: UnloadAdapterRequest):
        loading_allowed()
        engine.unload_adapter(body.lora_name)
        log.info("unloaded adapter %s (its slot is freed when its running requests finish)", body.lora_name)
        return {"status": "ok", "lora_name": body.lora_name}

    # ---------------------------------------------------------------------------------------- routes

    @v1.get("/routes")
    async def list_routes():
        return {"object": "list", "data": [{"name": n, "weights": dict(r.weights)} for n, r in config.routes.items()]}

    @v1.post("/routes/{name}")
    async def reweight(name: str, body: RouteWeights):
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
    return app
