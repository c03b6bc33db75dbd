"""One completion request's life on the HTTP side: submit it to the engine, turn the tokens the engine
sends into text, and answer with one JSON body or a Server-Sent Event stream.

    run = CompletionRun(engine, tokenizer, body, prompt_ids, settings, adapter, picked, chat=False, timeout=600)
    return await run.json_response(request)      # or StreamingResponse(run.sse(), ...)

The engine calls the job's sink from its own thread; the sink hands each event to this request's
asyncio queue. Text, `usage.completion_tokens` and `token_ids` all come from the same TextStream, so
they match what the client received, also when a stop string ended the text (tokens the engine made
after that are dropped). A request that runs past `timeout` seconds (waiting included) is cancelled:
504 (`code: timeout`), or an error event on a stream. `outcome` ends as the log line's `finish`:
stop, length, error, timeout or disconnected.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import Request
from fastapi.responses import JSONResponse

from lorafit.serve.engine import Engine, Sampling
from lorafit.serve.protocol import (
    SSE_DONE,
    APIError,
    _Sampling,
    chat_body,
    completion_body,
    new_id,
    now,
    sse_event,
    usage,
)
from lorafit.serve.text import TextStream

log = logging.getLogger("lorafit.serve")

DISCONNECT_POLL_S = 1.0  # how often a non-streaming request checks that its client is still there


class CompletionRun:
    """See the module docstring. `on_end(run)` is called once, when the request has ended (metrics)."""

    def __init__(self, engine: Engine, tokenizer, body: _Sampling, prompt_ids: list[int], settings: Sampling,
                 adapter: str | None, picked: str, *, chat: bool, timeout: float, on_end=None):
        self.engine, self.body, self.prompt_ids, self.picked, self.chat = engine, body, prompt_ids, picked, chat
        self.rid = new_id("chatcmpl" if chat else "cmpl")
        self.text = TextStream(tokenizer, body.stop_list())
        self.shape = chat_body if chat else completion_body
        self.outcome = "error"
        self._on_end = on_end
        self._deadline = time.perf_counter() + timeout
        self._timeout = timeout
        self._events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def sink(event):
            try:
                loop.call_soon_threadsafe(self._events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

        self.job = engine.submit(prompt_ids, adapter, settings, sink)

    # ------------------------------------------------------------------------------------ answers

    async def json_response(self, request: Request):
        """The whole completion as one JSON body (499 if the client went away, 504 past the timeout)."""
        parts = []
        try:
            while True:
                try:
                    kind, delta = await self._next_event(poll=DISCONNECT_POLL_S)
                except APIError as e:
                    self.outcome = "timeout" if e.status == 504 else "error"
                    raise
                except TimeoutError:
                    if await request.is_disconnected():
                        self.outcome = "disconnected"
                        return JSONResponse({}, status_code=499)
                    continue
                parts.append(delta)
                if kind == "done":
                    break
            self.outcome = self._finish_reason()
            return self.shape(self.rid, self.body.model, "".join(parts), self.outcome, self._extra(),
                              use=self._usage())
        finally:
            self._end()

    async def sse(self):
        """Server-Sent Events: a chunk per text delta, the finish chunk, usage if asked, `[DONE]`."""
        self.outcome, first = "disconnected", True
        extra = {"lorafit_adapter": self.picked}
        try:
            while True:
                try:
                    kind, delta = await self._next_event()
                except APIError as e:
                    self.outcome = "timeout" if e.status == 504 else "error"
                    yield sse_event(e.body())
                    break
                if delta or first:
                    chunk = self.shape(self.rid, self.body.model, delta, None, dict(extra), chunk=True,
                                       **({"first": first} if self.chat else {}))
                    first = False
                    yield sse_event(chunk)
                if kind == "done":
                    self.outcome = self._finish_reason()
                    last = self.shape(self.rid, self.body.model, "", self.outcome, self._extra(), chunk=True)
                    yield sse_event(last)
                    if self.body.include_usage():
                        yield sse_event({"id": self.rid, "object": last["object"], "created": now(),
                                         "model": self.body.model, "choices": [], "usage": self._usage()})
                    break
            yield SSE_DONE
        finally:
            self._end()

    # ------------------------------------------------------------------------------------ pieces

    async def _next_event(self, poll: float | None = None) -> tuple[str, str]:
        """("tokens", text delta) or ("done", the rest of the text). TimeoutError after `poll` seconds
        without an event; APIError 500 if the engine failed this request, 504 past the deadline."""
        left = self._deadline - time.perf_counter()
        if left <= 0:
            self.engine.cancel(self.job)
            raise APIError(504, f"the request ran past the server's --request-timeout ({self._timeout:g} s)",
                           code="timeout")
        try:
            event = await asyncio.wait_for(self._events.get(), min(left, poll) if poll else left)
        except TimeoutError:
            if poll is None or self._deadline - time.perf_counter() <= 0:
                return await self._next_event(poll)  # raises the 504
            raise
        if event[0] == "error":
            raise APIError(500, f"generation failed: {event[1]}")
        if event[0] == "tokens":
            delta = self.text.push(event[1])
            if self.text.stopped:
                self.engine.cancel(self.job)
                return "done", delta + self.text.flush()
            return "tokens", delta
        return "done", self.text.flush()

    def _finish_reason(self) -> str:
        return "stop" if self.text.stopped or self.job.finish_reason == "eos" else "length"

    def _usage(self) -> dict:
        return usage(len(self.prompt_ids), len(self.text.tokens))

    def _extra(self) -> dict:
        out = {"lorafit_adapter": self.picked}
        if self.body.return_token_ids:
            out["choice"] = {"token_ids": list(self.text.tokens), "prompt_token_ids": list(self.prompt_ids)}
        return out

    def _end(self) -> None:
        self.engine.cancel(self.job)  # a no-op when it finished; stops decoding when the client went away
        end = time.perf_counter()
        job = self.job
        ttft = f"{(job.first_token_at - job.submitted) * 1000:.0f}" if job.first_token_at else "-"
        log.info("%s model=%s adapter=%s prompt_tokens=%d completion_tokens=%d ttft_ms=%s latency_ms=%.0f "
                 "finish=%s", self.rid, self.body.model, self.picked, len(self.prompt_ids), len(self.text.tokens),
                 ttft, (end - job.submitted) * 1000, self.outcome)
        if self._on_end is not None:
            self._on_end(self)
