"""Soak `lorafit serve`: minutes of mixed load on 127.0.0.1, then check nothing leaked.

One server (SmolLM2-135M by default, fp32, with --allow-adapter-loading under a temporary adapter
root and an API key) gets, at the same time, until --seconds have passed (every loop bounded by that
deadline):

- good clients: completions and chat, streamed or not, greedy, on the base or one of the adapters
  loaded at start; each (model, prompt, length) must give the same text every time it is asked;
- churn: an adapter loaded, asked once, unloaded, again and again (its requests may get 404 while it
  is gone; never a 5xx);
- disconnecting clients: a stream opened, one or two chunks read, the connection dropped;
- hostile clients: malformed JSON, bodies over --max-request-bytes, a wrong key, poisoned sampling
  fields (seed 2**64, temperature NaN, token ids past the vocabulary, ...), unknown models, paths out
  of the adapter root; each must get its 4xx.

Checked at the end: zero failures of well-formed requests, every hostile request refused with a 4xx,
the server's resident memory after warm-up (the first quarter) grew less than 5%, and once idle no row
is running, nothing waits, and only the adapters loaded at start hold slots.

    python bench/soak_serve.py --seconds 300 --threads 1

Prints machine, CPU flags, versions and the command, then a summary; writes bench/out/soak_serve.json.
`soak(url, key, ...)` is also what tests/test_serve_soak.py (-m slow) runs against a tiny model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import httpx  # noqa: E402

PROMPTS = ["The weather today is", "name[Ginger], species[cat]", "SELECT count(*) FROM", "Once upon a time",
           "A haiku about servers:", "1, 2, 3,"]
POISONS = [{"seed": 2**64}, {"temperature": float("nan")}, {"top_p": -1}, {"max_tokens": 10**30},
           {"prompt": [1, 10**9]}, {"prompt": [-5]}, {"stop": ["x"] * 9}, {"n": 3}, {"seed": True}, {"max_tokens": 0}]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def soak(url: str, key: str, *, seconds: float, stable: list[str], churn_dirs: list[str], base: str,
               pid: int | None = None, good_clients: int = 4, max_request_bytes: int = 65536, seed: int = 0) -> dict:
    """Run the mixed load for `seconds`; a summary dict (see the module docstring for what is checked)."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    auth = {"Authorization": f"Bearer {key}"}
    counts: Counter = Counter()
    failures: list[str] = []
    answers: dict = {}
    rss: list[tuple[float, int]] = []
    started = time.monotonic()

    async def good(client: httpx.AsyncClient, worker: int):
        local = random.Random(seed * 1000 + worker)
        while time.monotonic() < deadline:
            model = local.choice([base, *stable])
            prompt, n = local.choice(PROMPTS), local.choice((4, 8, 16))
            chat, streamed = local.random() < 0.3, local.random() < 0.5
            body = {"model": model, "max_tokens": n, "temperature": 0, "stream": streamed}
            body |= {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
            path = "/v1/chat/completions" if chat else "/v1/completions"
            try:
                if streamed:
                    text = ""
                    async with client.stream("POST", url + path, json=body, headers=auth) as r:
                        if r.status_code != 200:
                            failures.append(f"{path} {model}: {r.status_code} {(await r.aread())[:200]!r}")
                            continue
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                chunk = json.loads(line[6:])
                                if "error" in chunk:
                                    failures.append(f"{path} {model}: stream error {chunk['error']}")
                                for choice in chunk.get("choices", []):
                                    text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                else:
                    r = await client.post(url + path, json=body, headers=auth)
                    if r.status_code != 200:
                        failures.append(f"{path} {model}: {r.status_code} {r.text[:200]}")
                        continue
                    choice = r.json()["choices"][0]
                    text = choice["message"]["content"] if chat else choice["text"]
            except httpx.HTTPError as e:
                failures.append(f"{path} {model}: {type(e).__name__} {e}")
                continue
            counts["good"] += 1
            answer_key = (model, prompt, n, chat)
            if answers.setdefault(answer_key, text) != text:
                failures.append(f"{answer_key}: {text!r} != first answer {answers[answer_key]!r}")

    async def churn(client: httpx.AsyncClient):
        i = 0
        while time.monotonic() < deadline:
            name, directory = f"churn{i % 3}", churn_dirs[i % len(churn_dirs)]
            i += 1
            r = await client.post(url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": directory},
                                  headers=auth)
            if r.status_code != 200:
                failures.append(f"load {name}: {r.status_code} {r.text[:200]}")
                continue
            r = await client.post(url + "/v1/completions", json={"model": name, "prompt": "churn", "max_tokens": 4,
                                                               "temperature": 0}, headers=auth)
            if r.status_code != 200:
                failures.append(f"request on {name}: {r.status_code} {r.text[:200]}")
            r = await client.post(url + "/v1/unload_lora_adapter", json={"lora_name": name}, headers=auth)
            if r.status_code != 200:
                failures.append(f"unload {name}: {r.status_code} {r.text[:200]}")
            counts["churn"] += 1

    async def disconnect(client: httpx.AsyncClient):
        while time.monotonic() < deadline:
            body = {"model": rng.choice([base, *stable]), "prompt": rng.choice(PROMPTS), "max_tokens": 64,
                    "temperature": 0, "stream": True}
            async with client.stream("POST", url + "/v1/completions", json=body, headers=auth) as r:
                read = 0
                async for line in r.aiter_lines():
                    read += line.startswith("data: ")
                    if read >= rng.choice((1, 2)):
                        break  # leaving the block closes the connection mid-stream
            counts["disconnect"] += 1

    async def hostile(client: httpx.AsyncClient):
        kinds = ["json", "big", "key", "poison", "model", "path"]
        while time.monotonic() < deadline:
            kind = rng.choice(kinds)
            good_body = {"model": base, "prompt": "x", "max_tokens": 2}
            if kind == "json":
                r = await client.post(url + "/v1/completions", content=b'{"model": ', headers=auth | {
                    "Content-Type": "application/json"})
            elif kind == "big":
                r = await client.post(url + "/v1/completions", headers=auth, content=json.dumps(
                    good_body | {"prompt": "y" * (max_request_bytes + 10)}).encode())
            elif kind == "key":
                r = await client.post(url + "/v1/completions", json=good_body, headers={"Authorization": "Bearer nope"})
            elif kind == "poison":
                r = await client.post(url + "/v1/completions", content=json.dumps(good_body | rng.choice(POISONS)),
                                      headers=auth | {"Content-Type": "application/json"})
            elif kind == "model":
                r = await client.post(url + "/v1/completions", json=good_body | {"model": "../etc/passwd"}, headers=auth)
            else:
                r = await client.post(url + "/v1/load_lora_adapter", json={"lora_name": "evil", "lora_path": "../../"},
                                      headers=auth)
            counts[f"hostile_{kind}"] += 1
            if not 400 <= r.status_code < 500:
                failures.append(f"hostile {kind}: expected a 4xx, got {r.status_code} {r.text[:200]}")
            await asyncio.sleep(0.05)

    async def monitor():
        while time.monotonic() < deadline:
            if pid is not None:
                rss.append((time.monotonic() - started, rss_kb(pid)))
            await asyncio.sleep(1.0)

    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*[good(client, w) for w in range(good_clients)], churn(client), disconnect(client),
                             hostile(client), monitor())
        for _ in range(100):  # the engine drops the last disconnected streams at its next step
            health = (await client.get(url + "/health")).json()
            if health["running"] == 0 and health["waiting"] == 0:
                break
            await asyncio.sleep(0.1)
        models = [m["id"] for m in (await client.get(url + "/v1/models", headers=auth)).json()["data"]]
    warm = [kb for t, kb in rss if t >= seconds / 4]
    growth = (max(warm[len(warm) // 2 :]) - warm[0]) / warm[0] if len(warm) >= 4 else None
    return {"seconds": round(time.monotonic() - started, 1), "counts": dict(counts), "failures": failures[:20],
            "failure_count": len(failures), "health": health, "models_at_end": models,
            "rss_kb_after_warmup": warm[0] if warm else None, "rss_kb_end": warm[-1] if warm else None,
            "rss_growth": round(growth, 4) if growth is not None else None,
            "leaked_slots": health.get("slots_in_use", 0) - len(stable)}


def main() -> None:
    from bench_multi_adapter import write_bench_adapters
    from bench_serve import free_port, start_server
    from benchlib import OUT_DIR, busy_processes, command_line, load_average, machine, versions

    from lorafit.models import load_base, resolve_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--good-clients", type=int, default=4)
    args = parser.parse_args()
    info = {"machine": machine(), "versions": versions(), "command": command_line(), "load_average": load_average(),
            "busy_processes": len(busy_processes())}
    print(json.dumps(info, indent=1))
    work = Path(tempfile.mkdtemp(prefix="soak_serve_"))
    base_model, _ = load_base(resolve_model("smollm2-135m"))
    dirs = write_bench_adapters(base_model, work / "adapters", 5)
    del base_model
    stable = ["a0", "a1", "a2"]
    port, key = free_port(), "soak-key"
    cmd = [sys.executable, "-m", "lorafit", "serve", "--model", "smollm2-135m", "--precision", "fp32", "--port", str(port),
           "--api-key", key, "--allow-adapter-loading", "--adapter-root", str(work / "adapters"),
           "--max-request-bytes", "65536", *[a for n in stable for a in ("--adapter", f"{n}={dirs[n]}")]]
    proc = start_server(cmd, port, args.threads, work / "server.log")
    try:
        summary = asyncio.run(soak(f"http://127.0.0.1:{port}", key, seconds=args.seconds, stable=stable,
                                   churn_dirs=["a3", "a4"], base="smollm2-135m", pid=proc.pid,
                                   good_clients=args.good_clients))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(json.dumps(summary, indent=1))
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "soak_serve.json").write_text(json.dumps(info | {"summary": summary, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
