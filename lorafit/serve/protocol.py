"""The OpenAI-shaped wire format: request bodies (pydantic), response dicts, and errors.

Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the HTTP status
the OpenAI clients map to their exception classes:

    400 invalid_request_error   bad parameter, prompt + max_tokens over --max-model-len, bad adapter path
    401 authentication_error    missing or wrong API key
    403 permission_error        adapter loading / route re-weighting over HTTP is off (--allow-adapter-loading)
    404 not_found_error         unknown model / adapter / route
    413 invalid_request_error   the request body is over --max-request-bytes
    500 server_error            generation failed inside the engine (this request only)
    503 server_error            the request queue is full (retry later)
    504 server_error            the request ran past --request-timeout

Fields lorafit adds to a response start with `lorafit_` (e.g. `lorafit_adapter`: the adapter an A/B
route picked); `token_ids` / `prompt_token_ids` come back when the request sets `return_token_ids`
(as vLLM does).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from lorafit.adapters.decode import MAX_SEED  # OpenAI's seed is int64: its non-negative range

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256  # a stop string is held back while it may be forming: bound what one can hold


class APIError(Exception):
    """An error answered to the client as OpenAI's error JSON with `status`."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 413: "invalid_request_error", 503: "server_error", 500: "server_error",
             504: "server_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


class _Sampling(BaseModel):
    """What completions and chat share. Unknown fields are ignored (as OpenAI servers do). Numbers are
    finite (a JSON `NaN` or `Infinity` is refused), integers are integers (not `true` or `2.5`)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str = Field(max_length=256)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: StrictInt | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    return_token_ids: bool = False

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise APIError(400, f"stop: at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}", param="stop")
        if any(not s for s in stops):
            raise APIError(400, "stop: sequences must be non-empty strings", param="stop")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise APIError(400, f"stop: sequences must be at most {MAX_STOP_CHARS} characters", param="stop")
        return stops

    def check(self) -> None:
        if self.n != 1:
            raise APIError(400, f"n: only n=1 is supported, got {self.n}", param="n")

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[StrictInt]
    max_tokens: StrictInt | None = Field(default=16, ge=1)  # OpenAI's default for completions
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # [{"type": "text", "text": ...}, ...]
            if any(part.get("type") != "text" for part in self.content):
                raise APIError(400, "messages: only text content parts are supported", param="messages")
            return "".join(str(part.get("text", "")) for part in self.content)
        return self.content or ""


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class LoadAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1)


class RouteWeights(BaseModel):
    weights: dict[str, float]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(rid: str, model: str, text: str, finish: str | None, extra: dict, *, chunk: bool = False,
                    use: dict | None = None) -> dict:
    """A completion, or one streamed chunk of it (the same shape; `chunk` only for symmetry with chat)."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    choice |= extra.pop("choice", {})
    body = {"id": rid, "object": "text_completion", "created": now(), "model": model, "choices": [choice]}
    if use is not None:
        body["usage"] = use
    return body | extra


def chat_body(rid: str, model: str, text: str | None, finish: str | None, extra: dict, *, chunk: bool = False,
              first: bool = False, use: dict | None = None) -> dict:
    if chunk:
        delta = ({"role": "assistant", "content": ""} if first else {}) | ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish}
        obj = "chat.completion"
    choice |= extra.pop("choice", {})
    body = {"id": rid, "object": obj, "created": now(), "model": model, "choices": [choice]}
    if use is not None:
        body["usage"] = use
    return body | extra


SSE_DONE = "data: [DONE]\n\n"


def sse_event(payload: dict) -> str:
    """One Server-Sent Event carrying `payload` as JSON (a chunk, or an error mid-stream)."""
    return f"data: {json.dumps(payload)}\n\n"
