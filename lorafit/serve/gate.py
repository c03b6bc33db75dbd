"""The ASGI layer in front of every route: the API key and the body size limit, checked before any
route runs, so a request without the right key is refused before its body is read or parsed.

    app = Gate(fastapi_app, api_key="...", max_request_bytes=1 << 20)

- Every path but /health needs `Authorization: Bearer KEY` when a key is set (401 otherwise).
- A body over `max_request_bytes` is refused with 413: at once when its Content-Length says so, or
  as soon as the bytes received pass the limit (chunked uploads); the route then sees a client that
  went away, and nothing it answers is sent.
"""

from __future__ import annotations

import json

from lorafit.serve.protocol import APIError
from lorafit.serve.security import check_api_key

OPEN_PATHS = ("/health",)  # load balancers probe it without a key; it says nothing about adapters


class Gate:
    def __init__(self, app, *, api_key: str | None, max_request_bytes: int, on_refused=None):
        """`on_refused(status)`: told of each request this gate refuses (metrics)."""
        self.app, self.api_key, self.max_request_bytes = app, api_key, max_request_bytes
        self.on_refused = on_refused or (lambda status: None)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        try:
            if scope["path"] not in OPEN_PATHS:
                check_api_key(self.api_key, headers.get(b"authorization", b"").decode("latin-1") or None)
            self._check_length(headers.get(b"content-length"))
        except APIError as e:
            self.on_refused(e.status)
            return await answer(send, e)

        state = {"started": False, "answered": False, "received": 0}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_request_bytes:
                    if not state["started"]:
                        self.on_refused(413)
                        await answer(send, self._too_large())
                        state["answered"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if state["answered"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    def _check_length(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            length = int(value)
        except ValueError:
            raise APIError(400, f"Content-Length {value.decode('latin-1')!r} is not a number") from None
        if length > self.max_request_bytes:
            raise self._too_large()

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body is over the server's limit of {self.max_request_bytes} bytes "
                             "(--max-request-bytes)", code="request_too_large")


async def answer(send, error: APIError) -> None:
    """Send `error` as OpenAI's error JSON and end the response."""
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
