"""The lean decode loop: same greedy tokens as `model.generate`, rows stopping at eos, rows joining and
leaving mid-decode (continuous batching), and per-row seeded sampling."""

import pytest
import torch
from multi_fixtures import host_for, llama_adapters
from tiny import tiny_gpt2, tiny_llama

from lorafit.adapters.decode import DecodeBatch, Request
from lorafit.eval.generate import left_padded

torch.set_num_threads(1)


def prompts(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 128, (int(length),), generator=g).tolist() for length in torch.randint(1, 12, (n,), generator=g)]


def hf_greedy(model, prompt_ids, max_new_tokens, eos):
    """model.generate's new tokens per row, cut after the first eos (it pads after that)."""
    ids, mask = left_padded(prompt_ids, 0)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=0, eos_token_id=eos)[:, ids.shape[1] :].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in out]


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("prefill_rows", [16, 3])
def test_greedy_tokens_equal_hf_generate(build, prefill_rows, monkeypatch):
    # 8 prompts of 1-11 tokens: one prefill forward, or three (3 + 3 + 2 rows, by length) joined.
    monkeypatch.setattr("lorafit.adapters.decode.PREFILL_ROWS", prefill_rows)
    model, rows = build(), prompts(8)
    expected = hf_greedy(model, rows, 16, eos=2)
    got = DecodeBatch(model, None, [2], 0).run([Request(p, max_new_tokens=16) for p in rows])
    assert [r.tokens for r in got] == expected


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_rows_stop_at_eos_and_leave_the_batch(build):
    model, rows = build(), prompts(8, seed=5)
    # An eos that the base actually produces mid-sequence in some rows, so rows finish at different steps.
    plain = hf_greedy(model, rows, 16, eos=2)
    counts = torch.bincount(torch.tensor([t for r in plain for t in r[3:]]), minlength=128)
    eos = int(counts.argmax())
    expected = hf_greedy(model, rows, 16, eos=eos)
    assert len({len(r) for r in expected}) > 1, "test needs rows of different lengths"
    batch = DecodeBatch(model, None, [eos], 0)
    sizes, done = [], batch.add([Request(p, max_new_tokens=16, key=i) for i, p in enumerate(rows)])
    while batch.rows:
        sizes.append(len(batch.rows))
        done += batch.step()
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < len(rows)  # rows left as they finished
    got = sorted(done, key=lambda r: r.request.key)
    assert [r.tokens for r in got] == expected
    assert all(r.finish_reason == ("eos" if r.tokens[-1] == eos else "length") for r in got)


def test_rows_joining_mid_decode_get_the_tokens_they_get_alone(tmp_path):
    """Continuous batching: rows added between steps (longer and shorter prompts than the batch's cache,
    other adapters) and a row removed, each row's tokens equal to decoding it alone."""
    adapters = llama_adapters(tmp_path)
    host = host_for(tiny_llama)
    for name, (directory, _) in adapters.items():
        host.load_adapter(name, directory)
    slot = {name: host.adapters()[name]["slot"] for name in adapters} | {None: 0}
    first = [Request(p, slot=slot[n], max_new_tokens=12, key=f"a{i}")
             for i, (p, n) in enumerate(zip(prompts(4, seed=1), ["r4", None, "r16", "r1"], strict=True))]
    later = [Request(p, slot=slot[n], max_new_tokens=10, key=f"b{i}")
             for i, (p, n) in enumerate(zip([list(range(3, 25)), [7], [9, 9, 9]], ["r8", "r4", None], strict=True))]
    batch = DecodeBatch(host.model, host.routing, [2], 0)
    done = batch.add(first)
    for _ in range(3):
        done += batch.step()
    done += batch.add(later)  # 22-token prompt: longer than the batch's cache; [7]: shorter
    assert sorted(int(s) for s in batch.slots) == [int(s) for s in batch.slots]  # kept sorted by slot
    done += batch.step()
    cancelled = batch.remove(["a1"])
    assert [r.request.key for r in cancelled] == ["a1"]
    while batch.rows:
        done += batch.step()
    by_key = {r.request.key: r for r in done}
    assert set(by_key) == {r.key for r in first + later} - {"a1"}
    for req in first + later:
        if req.key == "a1":
            continue
        alone = DecodeBatch(host.model, host.routing, [2], 0).run([Request(req.prompt_ids, req.slot, req.max_new_tokens)])
        assert by_key[req.key].tokens == alone[0].tokens, req.key


def test_sampling_is_per_row_and_seeded():
    host = host_for(tiny_llama)
    texts = ["abc", "hello there", "x"]
    kwargs = {"max_new_tokens": 12, "temperature": 1.5, "top_p": 0.95}
    a = host.generate(texts, seed=[1, 2, 3], **kwargs)
    b = host.generate(texts[::-1], seed=[3, 2, 1], **kwargs)  # other batch order and neighbours
    assert [g.tokens for g in a] == [g.tokens for g in b[::-1]]
    c = host.generate(texts, seed=[4, 5, 6], **kwargs)
    assert [g.tokens for g in a] != [g.tokens for g in c]
    greedy = host.generate(texts, max_new_tokens=12)
    tiny_p = host.generate(texts, temperature=1.0, top_p=1e-6, seed=0, max_new_tokens=12)
    assert [g.tokens for g in tiny_p] == [g.tokens for g in greedy]
    mixed = host.generate(texts, temperature=[0.0, 1.5, 0.0], seed=7, max_new_tokens=12)
    assert mixed[0].tokens == greedy[0].tokens and mixed[2].tokens == greedy[2].tokens


def test_generate_refills_the_batch_as_rows_finish(tmp_path):
    """More prompts than batch_size: rows join as others finish; results in the prompts' order."""
    adapters = llama_adapters(tmp_path)
    host = host_for(tiny_llama)
    for name, (directory, _) in adapters.items():
        host.load_adapter(name, directory)
    texts = [f"prompt number {i}" + "!" * (i % 5) for i in range(11)]
    rows = [["r1", "r4", "r8", "r16", None][i % 5] for i in range(11)]
    lengths = [3 + i % 6 for i in range(11)]
    small = host.generate(texts, adapter=rows, max_new_tokens=lengths, batch_size=3)
    big = host.generate(texts, adapter=rows, max_new_tokens=lengths, batch_size=64)
    assert [g.tokens for g in small] == [g.tokens for g in big]
    assert [len(g.tokens) for g in big] == lengths  # random tiny model: no eos in 8 tokens
    assert [g.adapter for g in big] == rows


@pytest.mark.parametrize("prefill_rows", [16, 2])
def test_prompts_sharing_a_prefix_prefill_it_once_and_decode_as_alone(tmp_path, monkeypatch, prefill_rows):
    """Rows of one adapter whose prompts start alike prefill the common prefix once (per adapter: never
    across adapters); every row's tokens equal decoding it alone and the adapter's own model.generate."""
    import lorafit.adapters.decode as decode

    monkeypatch.setattr(decode, "PREFILL_ROWS", prefill_rows)
    adapters = llama_adapters(tmp_path)
    host = host_for(tiny_llama)
    for name, (directory, _) in adapters.items():
        host.load_adapter(name, directory)
    slot = {name: host.adapters()[name]["slot"] for name in adapters} | {None: 0}
    template = list(range(40, 52))  # 12 shared tokens, then each prompt's own (1-5 tokens)
    own = [[7], [8, 9], [10, 11, 12], [13, 14, 15, 16, 17], [18, 19], [20]]
    names = ["r4", "r4", "r4", "r16", "r16", None]  # r4: 3 rows share 12 tokens; r16: 2 rows; one base row
    requests = [Request(template + tail, slot[n], 8, key=i) for i, (tail, n) in enumerate(zip(own, names, strict=True))]
    requests.append(Request([60, 61, 62], slot["r4"], 8, key="other"))  # same adapter, no shared prefix

    shared = []
    monkeypatch.setattr(decode, "SHARED_PREFIX_MIN_SAVED", 12)
    original = DecodeBatch._shared_prefix
    monkeypatch.setattr(DecodeBatch, "_shared_prefix", lambda self, prefix, s: shared.append((len(prefix), s))
                        or original(self, prefix, s))
    got = DecodeBatch(host.model, host.routing, [], 0).run(requests)
    # r4's group holds the unrelated prompt too, so its common prefix is empty: only r16's 2 rows share (12 saved).
    assert shared == [(12, slot["r16"])]
    monkeypatch.setattr(decode, "SHARED_PREFIX_MIN_SAVED", 1)
    shared.clear()
    got_again = DecodeBatch(host.model, host.routing, [], 0).run(requests[:-1])
    assert sorted(shared) == sorted([(12, slot["r4"]), (12, slot["r16"])])  # the base row alone: no sharing
    shared.clear()
    unshared = DecodeBatch(host.model, host.routing, [], 0, share_prefixes=False).run(requests[:-1])
    assert shared == [] and [r.tokens for r in unshared] == [r.tokens for r in got_again]
    for req, row, row_again in zip(requests, got, got_again + [None], strict=True):
        alone = DecodeBatch(host.model, host.routing, [], 0).run([Request(req.prompt_ids, req.slot, 8)])[0].tokens
        assert row.tokens == alone, req.key
        if row_again is not None:
            assert row_again.tokens == alone, req.key
            name = names[req.key]
            model = adapters[name][1] if name else tiny_llama()
            ids = torch.tensor([req.prompt_ids])
            hf = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
            assert row_again.tokens == hf.tolist(), req.key
