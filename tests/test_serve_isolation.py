"""One bad request must never hurt another (in-process; the HTTP side is in test_serve_http.py).

- `DecodeBatch.add` is atomic: a request it refuses, or a prefill forward that fails after other chunks
  ran, leaves the running batch exactly as it was, and its rows then decode as if nothing happened.
- The engine, given 16 good requests and 1 poisoned one in one admission, fails the poisoned one alone:
  the 16 finish with the tokens each gets decoding alone, no row is left behind, slots are released.
"""

import math

import pytest
import torch
from multi_fixtures import host_for, llama_adapters
from tiny import tiny_llama

from lorafit.adapters.decode import MAX_SEED, DecodeBatch, Request, check_request
from lorafit.serve.engine import Engine, Sampling

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return {name: d for name, (d, _) in llama_adapters(tmp_path_factory.mktemp("adapters")).items()}


@pytest.fixture(scope="module")
def host(adapters):
    h = host_for(tiny_llama)
    for name in ("r1", "r4"):
        h.load_adapter(name, adapters[name])
    return h


_alone: dict = {}


def greedy_alone(host, prompt_ids, slot, n):
    key = (id(host), tuple(prompt_ids), slot, n)
    if key not in _alone:
        _alone[key] = DecodeBatch(host.model, host.routing, [2], 0).run([Request(prompt_ids, slot, n)])[0].tokens
    return _alone[key]


def state(batch):
    return ([row.request.key for row in batch.rows], batch.mask.clone(), batch.next_pos.clone(),
            batch.last_token.clone(), batch.slots.clone(), [(lay.keys.clone(), lay.values.clone()) for lay in batch.cache.layers])


def assert_same_state(a, b):
    assert a[0] == b[0]
    for x, y in zip(a[1:5], b[1:5], strict=True):
        assert torch.equal(x, y)
    for (k1, v1), (k2, v2) in zip(a[5], b[5], strict=True):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


@pytest.mark.parametrize("field, value, message", [
    ("prompt_ids", [], "at least one prompt token"),
    ("prompt_ids", [1, 128], "token ids must be integers in [0, 128)"),
    ("prompt_ids", [1, -1], "token ids must be integers in [0, 128)"),
    ("max_new_tokens", 0, "max_new_tokens must be an integer >= 1"),
    ("temperature", math.nan, "temperature must be finite"),
    ("temperature", math.inf, "temperature must be finite"),
    ("top_p", 0.0, "top_p must be in (0, 1]"),
    ("top_p", -0.5, "top_p must be in (0, 1]"),
    ("seed", 2**64, f"seed must be an integer in [0, {MAX_SEED}]"),
    ("seed", -1, f"seed must be an integer in [0, {MAX_SEED}]"),
])
def test_add_refuses_a_bad_request_and_leaves_the_batch_as_it_was(host, field, value, message):
    batch = host.new_decode_batch()
    batch.add([Request([1, 5, 6, 7], 1, 8, key="a"), Request([1, 9], 0, 8, key="b")])
    batch.step()
    before = state(batch)
    good = [Request([1, 10 + i, 11], i % 3, 6, key=f"g{i}") for i in range(20)]
    bad = Request([1, 4, 4], 2, 6, key="bad")
    setattr(bad, field, value)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        batch.add([*good, bad])
    assert_same_state(state(batch), before)
    with pytest.raises(ValueError):
        check_request(bad, 128)


def test_a_failing_prefill_after_other_chunks_ran_leaves_the_batch_as_it_was(host, monkeypatch):
    """20 requests are two prefill chunks (16 + 4); the second forward fails: none of the first chunk's
    rows may stay. The running rows then decode to the tokens they get alone."""
    batch = host.new_decode_batch()
    running = [Request([1, 5, 6, 7], 1, 12, key="a"), Request([1, 9], 2, 12, key="b")]
    batch.add(running)
    batch.step()
    before = state(batch)
    real, calls = DecodeBatch._prefill, []

    def second_fails(self, requests, shared=None):
        calls.append(len(requests))
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(self, requests, shared)

    monkeypatch.setattr(DecodeBatch, "_prefill", second_fails)
    with pytest.raises(RuntimeError, match="simulated"):
        batch.add([Request([1, 10 + i, 11, 12], i % 3, 6, key=f"g{i}") for i in range(20)])
    assert calls == [16, 4]
    assert_same_state(state(batch), before)
    monkeypatch.setattr(DecodeBatch, "_prefill", real)
    done = []
    while batch.rows:
        done += batch.step()
    got = {row.request.key: row.tokens for row in done}
    assert got == {r.key: greedy_alone(host, r.prompt_ids, r.slot, 12) for r in running}


def test_a_temperature_far_below_greedy_is_greedy(host):
    rows = host.new_decode_batch().run([Request([1, 7, 8], 1, 10, temperature=1e-40, seed=3)])
    assert rows[0].tokens == greedy_alone(host, [1, 7, 8], 1, 10)


def run(engine, limit=500):
    for _ in range(limit):
        if not engine.run_once():
            return
    raise AssertionError("engine did not go idle")


POISONS = {
    # What the HTTP layer refuses never reaches the engine; these are what an embedding caller (or a
    # check that slipped) could still hand it, and a forward that fails for one request only.
    "seed 2**64": dict(sampling=Sampling(8, 0.7, 1.0, 2**64)),
    "token id past the vocabulary": dict(prompt=[1, 5, 500]),
    "negative token id": dict(prompt=[1, -3]),
    "NaN temperature": dict(sampling=Sampling(8, math.nan)),
    "top_p 0": dict(sampling=Sampling(8, 0.5, 0.0)),
    "max_new_tokens 0": dict(sampling=Sampling(0)),
    "a forward that fails for it": dict(prompt=[1, 66, 66, 66], fail_forward=True),
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_sixteen_good_requests_and_one_poisoned_in_one_admission(host, poison, monkeypatch):
    spec = POISONS[poison]
    engine = Engine(host, max_batch=32)
    good = [([1, 10 + i % 7, 20 + i], ("r1", "r4", None)[i % 3], 5 + i % 4) for i in range(16)]
    events = {i: [] for i in range(17)}
    jobs = [engine.submit(p, a, Sampling(n), events[i].append) for i, (p, a, n) in enumerate(good)]
    bad_prompt = spec.get("prompt", [1, 44, 45])
    jobs.append(engine.submit(bad_prompt, "r4", spec.get("sampling", Sampling(8)), events[16].append))
    if spec.get("fail_forward"):
        real = DecodeBatch._prefill

        def fails_with_poison(self, requests, shared=None):
            if any(r.prompt_ids == bad_prompt for r in requests):
                raise RuntimeError("kernel failure (simulated)")
            return real(self, requests, shared)

        monkeypatch.setattr(DecodeBatch, "_prefill", fails_with_poison)
    engine.run_once()  # all 17 admitted together (max_batch 32)
    assert engine.stats()["prefill_rows"] == 17 and engine.stats()["waiting"] == 0
    run(engine)
    for i, (prompt, adapter, n) in enumerate(good):
        tokens = [t for kind, value in events[i] if kind == "tokens" for t in value]
        slot = 0 if adapter is None else host.adapters()[adapter]["slot"]
        assert tokens == greedy_alone(host, prompt, slot, n), i
        assert events[i][-1] == ("done", "length") and jobs[i].finish_reason == "length"
    assert [kind for kind, _ in events[16]] == ["error"] and jobs[16].finish_reason == "error"
    assert not engine.batch.rows and engine.stats()["running"] == 0
    assert engine.registry._refs == {"r1": 0, "r4": 0}  # every pin released, the poisoned one's too


def test_non_finite_logits_of_one_row_decode_greedily_instead_of_failing_the_step():
    from lorafit.adapters.decode import Row, sample_next

    rows = [Row(Request([1], temperature=0.7, seed=1), torch.Generator().manual_seed(1)) for _ in range(2)]
    logits = torch.zeros(2, 10)
    logits[0, 3] = float("inf")  # softmax of inf is NaN: multinomial would raise for the whole step
    logits[1, 6] = 50.0  # a finite row still samples (here all but certainly token 6)
    assert sample_next(logits, rows).tolist() == [3, 6]
