"""The serve scheduler in-process, stepped by hand: slot pinning across unload/reload, cancellation,
the bounded queue, and requests joining a running batch (each row equal to greedy on its own adapter)."""

import pytest
import torch
from multi_fixtures import host_for, llama_adapters
from tiny import tiny_llama

from lorafit.serve.engine import Engine, Sampling
from lorafit.serve.protocol import APIError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return {name: d for name, (d, _) in llama_adapters(tmp_path_factory.mktemp("adapters")).items()}


@pytest.fixture(scope="module")
def reference(adapters):
    host = host_for(tiny_llama)
    for name, d in adapters.items():
        host.load_adapter(name, d)

    def greedy(prompt_ids, adapter, n):
        return host.generate([host.tokenizer.decode(prompt_ids[1:])], adapter, max_new_tokens=n)[0].tokens

    return greedy


def collect(events):
    return [t for kind, value in events if kind == "tokens" for t in value]


def run(engine, limit=500):
    for _ in range(limit):
        if not engine.run_once():
            return
    raise AssertionError("engine did not go idle")


def ids(host, text):
    return host.tokenizer(text)["input_ids"]


def test_unload_waits_for_pinned_requests_and_reload_takes_another_slot(adapters, reference):
    host = host_for(tiny_llama)
    host.load_adapter("r4", adapters["r4"])
    engine = Engine(host, max_batch=4)
    a_events, b_events = [], []
    prompt = ids(host, "name[Ginger]")
    a = engine.submit(prompt, "r4", Sampling(20), a_events.append)
    engine.run_once()  # a admitted: its first token goes out after the prefill, before the next step's
    assert [len(tokens) for _, tokens in a_events] == [1, 1] and a.sent == 2 and a.finish_reason is None
    engine.unload_adapter("r4")
    assert not engine.has_adapter("r4")
    with pytest.raises(APIError) as e:
        engine.submit(prompt, "r4", Sampling(5), b_events.append)
    assert e.value.status == 404
    future = engine.load_adapter("r4", adapters["r8"])  # same public name, other weights
    engine._reader.submit(lambda: None).result()  # the one reader thread has read and checked it (off this loop)
    assert not future.done()  # ... and only the engine installs it, between two steps
    engine.run_once()
    assert future.result(timeout=0) == {"name": "r4", "slot": 2}  # slot 1 is still pinned by a
    b = engine.submit(prompt, "r4", Sampling(20), b_events.append)
    run(engine)
    assert a.finish_reason == "length" and b.finish_reason == "length"
    assert collect(a_events) == reference(prompt, "r4", 20)  # the adapter a was admitted with
    assert collect(b_events) == reference(prompt, "r8", 20)
    assert set(host.adapters()) == {"r4#1"} and engine.adapters() == ["r4"]  # old slot freed after a


def test_cancel_leaves_the_batch_and_releases_the_slot(adapters):
    host = host_for(tiny_llama)
    host.load_adapter("r1", adapters["r1"])
    engine = Engine(host, max_batch=4)
    events = []
    job = engine.submit(ids(host, "hello"), "r1", Sampling(60), events.append)
    other = engine.submit(ids(host, "bye"), None, Sampling(3), [].append)
    engine.run_once()
    engine.cancel(job)
    engine.unload_adapter("r1")
    assert "r1" in host.adapters()  # still pinned by job until the engine drops it
    run(engine)
    assert job.finish_reason == "cancelled" and other.finish_reason == "length"
    assert not engine.batch.rows and host.adapters() == {}
    assert len(collect(events)) < 60 and ("done", "length") not in events


def test_queue_is_bounded():
    engine = Engine(host_for(tiny_llama), max_batch=1, max_queue=2)
    for _ in range(2):
        engine.submit([1, 5, 6], None, Sampling(2), [].append)
    with pytest.raises(APIError) as e:
        engine.submit([1, 5, 6], None, Sampling(2), [].append)
    assert e.value.status == 503 and e.value.code == "queue_full"
    run(engine)
    engine.submit([1, 5, 6], None, Sampling(2), [].append)  # room again


def test_requests_join_a_running_batch(adapters, reference):
    host = host_for(tiny_llama)
    for name in ("r1", "r16"):
        host.load_adapter(name, adapters[name])
    engine = Engine(host, max_batch=3)
    plan = [("abc", "r1", 9), ("hello world", None, 12), ("x", "r16", 7), ("name[Ginger]", "r16", 11),
            ("select", "r1", 5)]
    jobs = []
    for i, (text, adapter, n) in enumerate(plan):
        events = []
        jobs.append((ids(host, text), adapter, n, events, engine.submit(ids(host, text), adapter, Sampling(n), events.append)))
        if i % 2:
            engine.run_once()  # later requests arrive while earlier ones decode
    run(engine)
    for prompt, adapter, n, events, job in jobs:
        assert collect(events) == reference(prompt, adapter, n), (adapter, n)
        assert events[-1] == ("done", "length") and job.finish_reason == "length" and not job.cancelled
    # The counters on /health: every request prefilled once; each step carried at most max_batch rows, and
    # every token after a request's first came from a step.
    stats = engine.stats()
    assert stats["prefill_rows"] == len(plan) and 1 <= stats["prefills"] <= len(plan)
    assert stats["step_rows"] == sum(n - 1 for *_, n in plan) and stats["step_rows"] <= 3 * stats["steps"]
    assert stats["step_s"] > 0 and stats["prefill_s"] > 0 and stats["running"] == stats["waiting"] == 0
