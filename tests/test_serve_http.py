"""`lorafit serve` end to end: a real server subprocess on a tiny Llama, driven by the official openai client.

One server with an API key, adapter loading under a root, and an A/B route. Every generated token is
checked against greedy decoding on AdapterHost for the same adapter and prompt. (The defaults: loading
off, and a full queue (503) are checked in-process in test_serve_app.py: one server start is most of
this file's time.)
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

httpx = pytest.importorskip("httpx", reason="pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="pip install -e '.[serve]'")

from multi_fixtures import make_adapter  # noqa: E402
from tiny import tiny_llama, tiny_tokenizer  # noqa: E402

from lorafit.adapters.host import AdapterHost  # noqa: E402

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
KEY = "sekret-key"
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
ADAPTERS = {"r1": (1, ("q_proj", "v_proj")), "r4": (4, ("all-linear",)), "r8": (8, ("o_proj", "up_proj")),
            "r16": (16, ("k_proj", "down_proj", "gate_proj")), "other": (2, ("q_proj",))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, log_path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", LORAFIT_API_KEY="")
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "lorafit", "serve", "--port", str(port), *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    return proc, port, log_path


def stop(proc) -> None:
    """SIGTERM a server process, SIGKILL it if it has not exited 15 s later."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_ready(proc, port, log_path, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {Path(log_path).read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"server not ready: {Path(log_path).read_text()[-2000:]}")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    model_dir = tmp / "tiny"
    tiny_llama().save_pretrained(model_dir)
    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    tok.save_pretrained(model_dir)
    root = tmp / "adapters"
    for i, (name, (rank, targets)) in enumerate(ADAPTERS.items()):
        make_adapter(tiny_llama, root / name, rank, targets, seed=40 + i)
    (root / "picklish").mkdir()  # a .bin adapter: never loaded over HTTP
    shutil.copy(root / "r1" / "adapter_config.json", root / "picklish")
    (root / "picklish" / "adapter_model.bin").write_bytes(b"not really")
    outside = tmp / "outside"
    shutil.copytree(root / "r1", outside)
    (root / "sneaky").symlink_to(outside)
    main, port, main_log = start(
        ["--model", str(model_dir), "--name", "tiny", "--api-key", KEY, "--adapter-root", str(root),
         "--allow-adapter-loading", "--max-batch", "24", "--route", "ab=r1:50,r4:50", "--precision", "fp32",
         "--max-request-bytes", "65536",
         *[a for n in ("r1", "r4", "r8") for a in ("--adapter", f"{n}={root / n}")]], tmp / "main.log")
    host = AdapterHost.load(str(model_dir), task="generate", precision="fp32")  # the reference, while the server starts
    for name in ADAPTERS:
        host.load_adapter(name, root / name)
    try:
        url = wait_ready(main, port, main_log)
        yield {"url": url, "root": root, "outside": outside, "host": host,
               "log": main_log, "client": openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)}
    finally:
        stop(main)


def greedy(host, prompt, adapter, n):
    """Greedy tokens of AdapterHost for `prompt` on `adapter` (the base: None)."""
    return host.generate([prompt], None if adapter == "tiny" else adapter, max_new_tokens=n)[0].tokens


def extra(obj, key):
    return (obj.model_extra or {}).get(key) if hasattr(obj, "model_extra") else obj[key]


def test_models_completion_chat_and_stream(env):
    client, host = env["client"], env["host"]
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny", "r1", "r4", "r8", "ab"}
    assert extra(models["r4"], "parent") == "tiny" and extra(models["tiny"], "parent") is None
    out = client.completions.create(model="r4", prompt="name[Ginger]", max_tokens=12, temperature=0,
                                    extra_body={"return_token_ids": True})
    expected = greedy(host, "name[Ginger]", "r4", 12)
    assert extra(out.choices[0], "token_ids") == expected
    assert out.choices[0].text == host.tokenizer.decode(expected, skip_special_tokens=True)
    assert out.usage.prompt_tokens == 13 and out.usage.completion_tokens == 12 and out.model == "r4"
    assert out.choices[0].finish_reason == "length"
    ids = host.tokenizer("name[Ginger]")["input_ids"]
    by_ids = client.completions.create(model="r4", prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == out.choices[0].text

    messages = [{"role": "user", "content": "hi there"}]
    chat = client.chat.completions.create(model="r8", messages=messages, max_tokens=10, temperature=0,
                                          extra_body={"return_token_ids": True})
    text = "<user>hi there\n<assistant>"  # TEMPLATE; AdapterHost adds the <s> the template starts with
    assert extra(chat.choices[0], "token_ids") == greedy(host, text, "r8", 10)
    assert chat.choices[0].message.role == "assistant"

    pieces = [c for c in client.completions.create(model="tiny", prompt="hello", max_tokens=15, temperature=0,
                                                    stream=True, stream_options={"include_usage": True})]
    assert "".join(c.choices[0].text for c in pieces if c.choices) == host.tokenizer.decode(
        greedy(host, "hello", "tiny", 15), skip_special_tokens=True)
    assert pieces[-1].usage.completion_tokens == 15 and pieces[-2].choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model="r1", messages=messages, max_tokens=9, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == host.tokenizer.decode(
        greedy(host, text, "r1", 9), skip_special_tokens=True)

    # Stop strings end the text before them; seeded sampling repeats.
    full = client.completions.create(model="r1", prompt="abc", max_tokens=30, temperature=0).choices[0].text
    stop = full[5:7]
    cut = client.completions.create(model="r1", prompt="abc", max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.find(stop)] and cut.choices[0].finish_reason == "stop"
    sampled = [client.completions.create(model="r4", prompt="abc", max_tokens=10, temperature=0.9, top_p=0.9,
                                         seed=7).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]
    log = Path(env["log"]).read_text()
    assert "model=r4 adapter=r4 prompt_tokens=13 completion_tokens=12" in log and "latency_ms=" in log


def test_errors_have_openai_shape_and_status(env):
    client, url = env["client"], env["url"]
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="r1", prompt="abcdef", max_tokens=200)
    assert "maximum context length is 128 tokens" in e.value.message and "7 in the prompt, 200 in the completion" in e.value.message
    for bad in ({"n": 2}, {"temperature": -1}, {"top_p": 0}):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="r1", prompt="x", max_tokens=2, **bad)
        assert e.value.body["param"] == next(iter(bad)), e.value.body
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    raw = httpx.get(url + "/v1/models")
    assert raw.status_code == 401 and raw.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url + "/health").status_code == 200  # load balancers need no key



def test_adapter_loading_is_confined_to_the_root(env):
    client = env["client"]

    def load(name, path):
        return client.post("/load_lora_adapter", body={"lora_name": name, "lora_path": str(path)}, cast_to=object)

    with pytest.raises(openai.PermissionDeniedError):
        load("x", env["outside"])
    with pytest.raises(openai.PermissionDeniedError):
        load("x", "r1/../../outside")
    with pytest.raises(openai.PermissionDeniedError):
        load("x", "sneaky")  # a symlink out of the root
    with pytest.raises(openai.BadRequestError, match="only safetensors"):
        load("x", "picklish")
    with pytest.raises(openai.BadRequestError, match="already loaded"):
        load("r1", "r4")
    with pytest.raises(openai.NotFoundError):
        client.post("/unload_lora_adapter", body={"lora_name": "never"}, cast_to=object)
    assert load("r16", "r16")["slot"] > 0  # relative to the root
    assert "r16" in {m.id for m in client.models.list().data}


def test_ab_route_sticky_and_reweighted(env):
    client, host = env["client"], env["host"]

    def ask(user=None):
        out = client.completions.create(model="ab", prompt="route me", max_tokens=6, temperature=0, user=user,
                                        extra_body={"return_token_ids": True})
        picked = extra(out, "lorafit_adapter")
        assert extra(out.choices[0], "token_ids") == greedy(host, "route me", picked, 6)
        return picked

    assert {ask(f"user{i}") for i in range(12)} == {"r1", "r4"}
    assert len({ask("alice") for _ in range(4)}) == 1  # sticky per user
    client.post("/routes/ab", body={"weights": {"r1": 0, "r4": 1}}, cast_to=object)
    assert {ask() for _ in range(4)} == {"r4"}
    with pytest.raises(openai.BadRequestError):
        client.post("/routes/ab", body={"weights": {"r1": -1}}, cast_to=object)
    with pytest.raises(openai.NotFoundError):
        client.post("/routes/nope", body={"weights": {"r1": 1}}, cast_to=object)
    assert "model=ab adapter=r4" in Path(env["log"]).read_text()


def test_no_cross_talk_under_load_while_adapters_come_and_go(env):
    """32 concurrent requests over 4 adapters and the base, while other adapters are loaded and unloaded
    and an adapter with a request in flight is unloaded and its name reloaded with other weights."""
    host, url = env["host"], env["url"]
    client = env["client"]
    if "r16" not in {m.id for m in client.models.list().data}:
        client.post("/load_lora_adapter", body={"lora_name": "r16", "lora_path": "r16"}, cast_to=object)
    client.post("/load_lora_adapter", body={"lora_name": "pin", "lora_path": "other"}, cast_to=object)
    names = ["r1", "r4", "r8", "r16", "tiny"]
    prompts = ["name[Ginger] eatType[pub]", "hello", "select count", "x", "The quick brown fox", "1 2 3 4"]
    plan = [(names[i % 5], prompts[i % 6], 8 + (7 * i) % 33) for i in range(32)]

    async def main():
        aclient = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)

        async def one(model, prompt, n):
            out = await aclient.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0,
                                                   extra_body={"return_token_ids": True})
            return extra(out.choices[0], "token_ids")

        async def pinned():  # a stream on "pin" keeps its adapter while "pin" is unloaded and reloaded
            stream = await aclient.completions.create(model="pin", prompt="pinned", max_tokens=100, temperature=0,
                                                      stream=True)
            text = ""
            async for chunk in stream:
                text += chunk.choices[0].text if chunk.choices else ""
            return text

        async def churn():
            await asyncio.sleep(0.05)
            await aclient.post("/unload_lora_adapter", body={"lora_name": "pin"}, cast_to=object)
            await aclient.post("/load_lora_adapter", body={"lora_name": "pin", "lora_path": "r1"}, cast_to=object)
            for i in range(3):
                await aclient.post("/load_lora_adapter", body={"lora_name": f"tmp{i}", "lora_path": "other"}, cast_to=object)
                await aclient.post("/unload_lora_adapter", body={"lora_name": f"tmp{i}"}, cast_to=object)

        pin_task = asyncio.create_task(pinned())
        await asyncio.sleep(0.02)
        results = await asyncio.gather(*[one(*p) for p in plan], churn())
        return results[:-1], await pin_task, await one("pin", "pinned", 20)

    tokens, pinned_text, repinned = asyncio.run(main())
    for (model, prompt, n), got in zip(plan, tokens, strict=True):
        assert got == greedy(host, prompt, model, n), (model, prompt, n)
    assert pinned_text == host.tokenizer.decode(greedy(host, "pinned", "other", 100), skip_special_tokens=True)
    assert repinned == greedy(host, "pinned", "r1", 20)
    assert httpx.get(url + "/health").json()["running"] == 0


def test_a_disconnected_stream_is_dropped(env):
    url = env["url"]
    body = {"model": "r1", "prompt": "go", "max_tokens": 120, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        first = next(r.iter_lines())
        assert first.startswith("data: {")
    deadline = time.time() + 10
    while httpx.get(url + "/health").json()["running"] and time.time() < deadline:
        time.sleep(0.05)
    assert httpx.get(url + "/health").json()["running"] == 0
    deadline = time.time() + 5
    while "finish=disconnected" not in Path(env["log"]).read_text() and time.time() < deadline:
        time.sleep(0.05)
    assert "model=r1 adapter=r1 prompt_tokens=3" in Path(env["log"]).read_text()
    assert "finish=disconnected" in Path(env["log"]).read_text()


def test_port_in_use_fails_in_one_line_and_sigterm_stops_cleanly(env, tmp_path):
    model_dir = env["root"].parent / "tiny"
    busy_port = env["url"].rsplit(":", 1)[1]
    proc, port, log = start(["--model", str(model_dir), "--precision", "fp32"], tmp_path / "second.log")
    try:
        wait_ready(proc, port, log)
        # The engine runs on the main thread and HTTP on another: SIGTERM must stop both, exit 0.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, Path(log).read_text()[-2000:]
    finally:
        proc.kill()
    taken = subprocess.run([sys.executable, "-m", "lorafit", "serve", "--model", str(model_dir), "--port", busy_port],
                           capture_output=True, text=True, timeout=120, cwd=REPO,
                           env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    assert taken.returncode == 2, taken.stderr[-2000:]
    assert f"could not listen on 127.0.0.1:{busy_port}" in taken.stderr and "Traceback" not in taken.stderr


# ------------------------------------------------------------------------------------------------ isolation

GOOD = [(("r1", "r4", "r8", "tiny")[i % 4], f"good request {i}", 4 + i % 3) for i in range(16)]
POISONS = [  # (fields over a good request's, status, param)
    ({"seed": 2**64}, 400, "seed"), ({"seed": -1}, 400, "seed"), ({"seed": True}, 400, "seed"),
    ({"temperature": 1e-40}, 200, None),  # decodes greedily (as vLLM does), not a 500
    ({"temperature": float("nan")}, 400, "temperature"), ({"temperature": 1e308}, 400, "temperature"),
    ({"top_p": -0.5}, 400, "top_p"), ({"top_p": float("inf")}, 400, "top_p"),
    ({"max_tokens": 10**30}, 400, "max_tokens"), ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 2.5}, 400, "max_tokens"),
    ({"stop": [""]}, 400, "stop"), ({"stop": ["a"] * 5}, 400, "stop"), ({"stop": "x" * 5000}, 400, "stop"),
    ({"prompt": [1, -1]}, 400, "prompt"), ({"prompt": [1, 128]}, 400, "prompt"),
    ({"prompt": [1, 2**70]}, 400, "prompt"), ({"prompt": []}, 400, "prompt"),
    ({"n": 2}, 400, "n"), ({"echo": True}, 400, "echo"), ({"model": "../r1"}, 404, "model"),
]


def burst_with_poisons(env, poisons):
    """For each poison: 16 well-formed requests and the poisoned one sent at once. The poisoned one gets
    its 4xx naming the field (or, for a tiny temperature, greedy output); the 16 get exactly the tokens
    they get alone; no row is left running."""
    host, url = env["host"], env["url"]
    expected = [greedy(host, prompt, model, n) for model, prompt, n in GOOD]
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    async def burst(poison):
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            def body(model, prompt, n, over=None):
                # json.dumps writes NaN / Infinity (JSON as Python reads it): the server must refuse them.
                return json.dumps({"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0,
                                   "return_token_ids": True} | (over or {}))

            sends = [client.post("/v1/completions", content=body(*g)) for g in GOOD]
            sends.insert(7, client.post("/v1/completions", content=body("r4", "poisoned", 6, poison)))
            return await asyncio.gather(*sends)

    for poison, status, param in poisons:
        answers = asyncio.run(burst(poison))
        bad = answers.pop(7)
        assert bad.status_code == status, (poison, bad.text)
        if status == 200:
            assert bad.json()["choices"][0]["token_ids"] == greedy(host, "poisoned", "r4", 6)
        else:
            assert bad.json()["error"]["param"] == param, (poison, bad.json())
        assert [a.status_code for a in answers] == [200] * 16, poison
        assert [a.json()["choices"][0]["token_ids"] for a in answers] == expected, poison
    health = httpx.get(url + "/health").json()
    assert health["running"] == 0 and health["waiting"] == 0


def test_sixteen_good_requests_and_one_poisoned_together(env):
    """The issue's cases (seed 2**64, temperature 1e-40) and one of each kind; every poison: -m slow."""
    burst_with_poisons(env, [POISONS[i] for i in (0, 3, 4, 8, 11, 15)])


@pytest.mark.slow
def test_sixteen_good_requests_and_each_poison(env):
    burst_with_poisons(env, POISONS)


def test_counts_match_what_was_sent_when_a_stop_string_ends_it(env):
    client, host = env["client"], env["host"]
    tokens = greedy(host, "count me", "r4", 40)
    text = host.tokenizer.decode(tokens, skip_special_tokens=True)
    stop = text[9:11]
    cut = text.find(stop)
    # The tokens the client's text came from: up to the one that completed the stop string.
    k = next(i for i in range(1, len(tokens) + 1) if stop in host.tokenizer.decode(tokens[:i], skip_special_tokens=True))
    out = client.completions.create(model="r4", prompt="count me", max_tokens=40, temperature=0, stop=stop,
                                    extra_body={"return_token_ids": True})
    assert out.choices[0].text == text[:cut] and out.choices[0].finish_reason == "stop"
    assert extra(out.choices[0], "token_ids") == tokens[:k] and out.usage.completion_tokens == k
    chunks = list(client.completions.create(model="r4", prompt="count me", max_tokens=40, temperature=0, stop=stop,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"return_token_ids": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text[:cut]
    assert extra(chunks[-2].choices[0], "token_ids") == tokens[:k] and chunks[-1].usage.completion_tokens == k


def test_key_is_checked_before_the_body_and_bodies_are_bounded(env):
    url = env["url"]
    # No key and a body that is not JSON: 401, not a parse error (the body was never read).
    raw = httpx.post(url + "/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert raw.status_code == 401 and raw.json()["error"]["code"] == "invalid_api_key"
    big = json.dumps({"model": "r1", "prompt": "x" * 70000, "max_tokens": 2}).encode()
    assert httpx.post(url + "/v1/completions", content=big).status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    too_big = httpx.post(url + "/v1/completions", content=big, headers=auth)
    assert too_big.status_code == 413 and "--max-request-bytes" in too_big.json()["error"]["message"]

    def chunked():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"x" * 8192

    assert httpx.post(url + "/v1/completions", content=chunked(), headers=auth).status_code == 413
    not_json = httpx.post(url + "/v1/completions", content=b"{not json", headers=auth | {"Content-Type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"]["message"].startswith("the body is not valid JSON")
    assert httpx.get(url + "/metrics").status_code == 401


def test_metrics_in_prometheus_format(env):
    client, url = env["client"], env["url"]
    client.completions.create(model="r8", prompt="metrics", max_tokens=3, temperature=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples['lorafit_requests_total{adapter="r8",status="length"}'] >= 1
    assert samples['lorafit_completion_tokens_total{adapter="r8"}'] >= 3
    assert samples['lorafit_refused_requests_total{status="404"}'] >= 1
    assert samples["lorafit_loaded_adapters"] >= 3 and samples["lorafit_queue_depth"] == 0
    assert samples["lorafit_step_seconds_count"] >= 2 and samples["lorafit_prefill_seconds_count"] >= 1
    assert samples["lorafit_batch_size_count"] == samples["lorafit_step_seconds_count"]
