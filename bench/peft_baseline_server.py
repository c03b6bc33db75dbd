"""BASELINE for bench/bench_serve.py — not lorafit, not for use: the obvious hand-written LoRA server.

FastAPI + PEFT: one PeftModel with every adapter loaded; each request takes a single worker thread
(one request at a time), calls `set_adapter(name)` and `model.generate` (greedy, stops at eos), and
streams the tokens back as OpenAI-style SSE (`data: {...}` chunks, a usage chunk, `data: [DONE]`).
No batching, no queue limit, no auth: it exists to be measured against `lorafit serve`.

    python bench/peft_baseline_server.py --model DIR --adapter a0=DIR0 --adapter a1=DIR1 --port 8101

`--generate-on main` runs `generate` on the main thread (uvicorn on a second one), as `lorafit serve`
runs its engine: not what a hand-written FastAPI server does, but it removes the second-thread
slowdown of torch's kernels from the comparison (docs/serving.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue as queue_module
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer


class QueueStreamer(BaseStreamer):
    """Hands each new token id to the event loop (generate calls put() with the prompt first)."""

    def __init__(self, loop, queue):
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.flatten().tolist():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, token)

    def end(self):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


class MainThreadExecutor(Executor):
    """Work submitted from any thread, run one item at a time by whoever calls `run_forever` (main)."""

    def __init__(self):
        self.work: queue_module.Queue = queue_module.Queue()

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        self.work.put((fn, args, kwargs, future))
        return future

    def run_forever(self):
        while True:
            fn, args, kwargs, future = self.work.get()
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(e)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapter", action="append", default=[], help="NAME=DIR")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="the base's weights (adapters: PEFT "
                        "keeps them in fp32, autocast_adapter_dtype)")
    parser.add_argument("--generate-on", default="worker", choices=["worker", "main"],
                        help="thread that runs generate: a worker thread (as FastAPI code does) or the main one")
    args = parser.parse_args()

    tok = AutoTokenizer.from_pretrained(args.model)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    adapters = dict(a.split("=", 1) for a in args.adapter)
    names = list(adapters)
    model = PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    model.eval()
    # One request at a time, on a worker thread (what a streaming FastAPI handler does) or the main one.
    worker = MainThreadExecutor() if args.generate_on == "main" else ThreadPoolExecutor(max_workers=1)
    lock = threading.Lock()
    app = FastAPI()

    def generate(name, ids, max_tokens, streamer):
        with lock, torch.no_grad():
            model.set_adapter(name)
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                           do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id, streamer=streamer)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        ids = tok(body["prompt"], return_tensors="pt")["input_ids"]
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        loop.run_in_executor(worker, generate, body["model"], ids, int(body.get("max_tokens", 16)),
                             QueueStreamer(loop, queue))

        async def sse():
            count = 0
            while (token := await queue.get()) is not None:
                count += 1
                chunk = {"object": "text_completion", "created": int(time.time()), "model": body["model"],
                         "choices": [{"index": 0, "text": tok.decode([token], skip_special_tokens=True),
                                      "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            usage = {"prompt_tokens": ids.shape[1], "completion_tokens": count, "total_tokens": ids.shape[1] + count}
            yield f"data: {json.dumps({'object': 'text_completion', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream")

    if args.generate_on == "main":
        threading.Thread(target=uvicorn.run, args=(app,), kwargs={"host": "127.0.0.1", "port": args.port,
                                                                   "log_level": "warning"}, daemon=True).start()
        worker.run_forever()
    else:
        uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
