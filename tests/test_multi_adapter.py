"""Many adapters on one base: the stacked layer's kernels, mixed batches against per-adapter runs and
PEFT's `adapter_names=`, classification heads per row, refusals, and hot-swapping."""

import gc
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from multi_fixtures import (
    BERT_ADAPTERS,
    bert_adapters,
    gpt2_adapters,
    host_for,
    llama_adapters,
    make_adapter,
)
from safetensors.torch import load_file, save_file
from tiny import tiny_bert, tiny_gpt2, tiny_llama, token_batch
from torch import nn

from lorafit.errors import AdapterError
from lorafit.lora import WEIGHTS_NAME
from lorafit.lora.multi import MultiLoRALinear, SlotModules, SlotRouting, lora_delta_multi

torch.set_num_threads(1)
TOL = 1e-5

# Rows of a mixed batch: every adapter twice, base rows, interleaved (not sorted by adapter).
LLAMA_ROWS = ["r1", "r4", None, "r8", "r16", "r1", None, "r16", "r4", "r8"]


def padded_batch(rows, seed=3):
    """Right-padded ids/mask of different lengths per row (so padding is exercised)."""
    ids = token_batch(seed=seed, batch=len(rows), length=10)
    mask = torch.ones_like(ids)
    for i in range(len(rows)):
        cut = 10 - (i % 4)
        ids[i, cut:], mask[i, cut:] = 0, 0
    return ids, mask


# ---------------------------------------------------------------------------------------------- layer


def make_layer(conv1d=False, kernel="loop"):
    torch.manual_seed(0)
    if conv1d:
        from transformers.pytorch_utils import Conv1D

        base = Conv1D(12, 8)  # d_in 8, d_out 12, weight stored (8, 12)
        nn.init.normal_(base.weight, std=0.3)
    else:
        base = nn.Linear(8, 12)
    routing = SlotRouting()
    layer = MultiLoRALinear(base, routing, capacity=2, kernel=kernel)
    pairs = {}
    for slot, rank in ((1, 1), (2, 4), (3, 16), (5, 3)):  # slot 4 left empty, capacity grows to 8
        a, b = torch.randn(rank, 8) * 0.3, torch.randn(12, rank) * 0.3
        layer.set_slot(slot, a, b, scale=0.5 * slot)
        pairs[slot] = (a, b, 0.5 * slot)
    return base, layer, routing, pairs


def reference(base, x, slots, pairs):
    """Row by row: base(x_i) + scale * B (A x_i), with lorafit's LoRALinear math."""
    from lorafit.lora import lora_delta_output

    out = base(x)
    rows = []
    for i, slot in enumerate(slots.tolist()):
        row = out[i]
        if slot in pairs:
            a, b, scale = pairs[slot]
            row = row + lora_delta_output(x[i], a, b, scale)
        rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize("kernel", ["loop", "grouped", "auto"])
@pytest.mark.parametrize("slots", [[0, 1, 2, 3, 5, 0, 2], [1, 1, 2, 2, 3, 0, 0], [4, 0, 0]])
def test_layer_matches_per_row_reference(conv1d, kernel, slots):
    base, layer, routing, pairs = make_layer(conv1d, kernel)
    assert layer.capacity == 8 and layer.r_max == 16 and layer.ranks[:6] == [0, 1, 4, 16, 0, 3]
    x = torch.randn(len(slots), 5, 8)
    slots = torch.tensor(slots)
    with routing.use(slots):
        got = layer(x)
    torch.testing.assert_close(got, reference(base, x, slots, pairs), atol=TOL, rtol=0)


def test_slots_follow_repeated_rows_and_only_a_row_index_routes():
    _, layer, routing, _ = make_layer()
    with pytest.raises(ValueError, match=r"slot index must be \(rows,\), got shape \(3, 6\)"):
        with routing.use(torch.zeros(3, 6, dtype=torch.long)):
            pass
    # Beam search repeats each row k times (repeat_interleave): the slot follows its row.
    slots = torch.tensor([2, 0, 5])
    x = torch.randn(6, 1, 8)
    with routing.use(slots):
        beams = layer(x)
    with routing.use(slots.repeat_interleave(2)):
        torch.testing.assert_close(beams, layer(x), atol=0, rtol=0)


def test_routing_never_leaks():
    base, layer, routing, _ = make_layer()
    x = torch.randn(2, 3, 8)
    with routing.use(torch.tensor([2, 3])):
        with routing.use(torch.tensor([0, 0])):
            torch.testing.assert_close(layer(x), base(x), atol=TOL, rtol=0)
        assert routing.active
    assert not routing.active
    with pytest.raises(RuntimeError), routing.use(torch.tensor([1, 2])):
        raise RuntimeError("a failing forward")
    assert not routing.active
    torch.testing.assert_close(layer(x), base(x), atol=TOL, rtol=0)
    with pytest.raises(RuntimeError, match="cannot route"), routing.use(torch.tensor([1, 2, 3])):
        layer(x)


def test_delta_is_none_when_no_row_has_an_adapter_here():
    _, layer, routing, _ = make_layer()
    with routing.use(torch.tensor([4, 4])):  # slot 4 is empty in this layer
        plan = routing.plan(torch.Size([2, 3]))
        assert lora_delta_multi(torch.randn(2, 3, 8), layer.lora_A, layer.lora_B, layer.ranks, plan, "loop") is None


def test_slot_modules_route_rows_to_their_copy():
    routing = SlotRouting()
    head = SlotModules(nn.Linear(4, 2), routing)
    head.set_slot(1, {"weight": torch.randn(3, 4), "bias": torch.randn(3)})  # 3 labels
    x = torch.randn(3, 4)
    with routing.use(torch.tensor([1, 0, 1])):
        out = head(x)
    assert out.shape == (3, 3)
    torch.testing.assert_close(out[1, :2], head.base(x[1]), atol=TOL, rtol=0)
    assert torch.isnan(out[1, 2])
    torch.testing.assert_close(out[[0, 2]], head.copies["1"](x[[0, 2]]), atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------- causal LMs


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return llama_adapters(tmp_path_factory.mktemp("llama"))


def _peft_model(build, adapters, names):
    from peft import PeftModel

    first, *rest = names
    model = PeftModel.from_pretrained(build(), adapters[first][0], adapter_name=first)
    for name in rest:
        model.load_adapter(adapters[name][0], adapter_name=name)
    return model.eval()


# pack: the base's linear layers oneDNN-packed (lorafit/adapters/packing.py), as `AdapterHost.load` does.
@pytest.mark.parametrize(("kernel", "pack"), [("loop", False), ("grouped", False), ("auto", False),
                                              ("auto", True), ("loop", True)])
def test_mixed_llama_batch_equals_each_adapter_alone_and_peft(llama, kernel, pack):
    host = host_for(tiny_llama, kernel=kernel, pack_weights=pack)
    assert host.packed_layers == (2 * 7 + 1 if pack else 0)  # 7 linears per layer, 2 layers, the LM head
    for name, (directory, _) in llama.items():
        host.load_adapter(name, directory)
    ids, mask = padded_batch(LLAMA_ROWS)
    mixed = host.logits(ids, mask, LLAMA_ROWS)
    base = tiny_llama()
    for i, name in enumerate(LLAMA_ROWS):
        alone = (llama[name][1] if name else base)(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]).logits[0]
        real = mask[i].bool()
        torch.testing.assert_close(mixed[i][real], alone[real], atol=TOL, rtol=0, msg=f"row {i} ({name})")
    peft = _peft_model(tiny_llama, llama, list(llama))
    with torch.no_grad():
        theirs = peft(input_ids=ids, attention_mask=mask, adapter_names=[n or "__base__" for n in LLAMA_ROWS]).logits
    torch.testing.assert_close(mixed[mask.bool()], theirs[mask.bool()], atol=TOL, rtol=0)


@pytest.mark.parametrize("pack", [False, True])
def test_mixed_gpt2_batch_conv1d_equals_each_adapter_alone(tmp_path, pack):
    adapters = gpt2_adapters(tmp_path)
    host = host_for(tiny_gpt2, pack_weights=pack)
    for name, (directory, _) in adapters.items():
        host.load_adapter(name, directory)
    rows = ["g8", None, "g2", "g8", "g2"]
    ids, mask = padded_batch(rows, seed=4)
    mixed = host.logits(ids, mask, rows)
    base = tiny_gpt2()
    for i, name in enumerate(rows):
        alone = (adapters[name][1] if name else base)(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]).logits[0]
        real = mask[i].bool()
        torch.testing.assert_close(mixed[i][real], alone[real], atol=TOL, rtol=0)
    peft = _peft_model(tiny_gpt2, adapters, list(adapters))
    with torch.no_grad():
        theirs = peft(input_ids=ids, attention_mask=mask, adapter_names=[n or "__base__" for n in rows]).logits
    torch.testing.assert_close(mixed[mask.bool()], theirs[mask.bool()], atol=TOL, rtol=0)


@pytest.mark.parametrize("pack", [False, True])
def test_mixed_greedy_generation_equals_each_adapter_alone_and_peft(llama, pack):
    host = host_for(tiny_llama, pack_weights=pack)
    for name, (directory, _) in llama.items():
        host.load_adapter(name, directory)
    prompts = ["hello", "a b c", "the longest prompt of all", "x", "LoRA", "multi adapter", "zz", "q"]
    rows = ["r16", None, "r1", "r4", "r8", "r1", None, "r4"]
    got = host.generate(prompts, adapter=rows, max_new_tokens=10)
    peft = _peft_model(tiny_llama, llama, list(llama))
    base = tiny_llama()
    for prompt, name, gen in zip(prompts, rows, got, strict=True):
        ids = host.tokenizer(prompt, return_tensors="pt")["input_ids"]
        model = llama[name][1] if name else base
        alone = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=2)
        assert gen.tokens == alone[0, ids.shape[1] :].tolist(), (prompt, name)
        assert gen.adapter == name and gen.prompt_tokens == ids.shape[1]
        with torch.no_grad():
            theirs = peft.generate(input_ids=ids, max_new_tokens=10, do_sample=False, pad_token_id=0,
                                   eos_token_id=2, adapter_names=[name or "__base__"])
        assert gen.tokens == theirs[0, ids.shape[1] :].tolist(), (prompt, name)


# ---------------------------------------------------------------------------------------------- classification


@pytest.mark.parametrize("pack", [False, True])
def test_classification_rows_use_their_own_heads(tmp_path, pack):
    adapters = bert_adapters(tmp_path)
    host = host_for(tiny_bert, causal=False, pack_weights=pack)
    for name, (directory, _) in adapters.items():
        host.load_adapter(name, directory)
    texts = ["a good film", "no", "it was fine, I guess", "bad", "what a day", "hmm"]
    rows = ["nli", "sst", "cola", "nli", "sst", "cola"]
    got = host.classify(texts, adapter=rows)
    for text, name, result in zip(texts, rows, got, strict=True):
        enc = host.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            alone = adapters[name][1](**enc).logits[0]
        assert len(result["logits"]) == BERT_ADAPTERS[name][1]
        torch.testing.assert_close(torch.tensor(result["logits"]), alone, atol=TOL, rtol=0)
        assert result["label"] == int(alone.argmax())
    # PEFT's adapter_names= on the same batch (its modules_to_save route per row too).
    peft = _peft_model(lambda: tiny_bert(num_labels=2), {"sst": adapters["sst"], "cola": adapters["cola"]},
                       ["sst", "cola"])
    two = [(t, n) for t, n in zip(texts, rows, strict=True) if n != "nli"]
    enc = host.tokenizer([t for t, _ in two], padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = peft(**enc, adapter_names=[n for _, n in two]).logits
    ours = host.classify([t for t, _ in two], adapter=[n for _, n in two])
    torch.testing.assert_close(torch.tensor([r["logits"] for r in ours]), theirs, atol=TOL, rtol=0)


# ---------------------------------------------------------------------------------------------- refusals


def one_line(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_refusals_name_the_adapter_and_leave_the_host_unchanged(llama, tmp_path):
    host = host_for(tiny_llama, max_rank=8)
    host.load_adapter("r4", llama["r4"][0])
    before = {k: v.clone() for k, v in host.model.state_dict().items()}
    # Rank above max_rank.
    with pytest.raises(AdapterError) as e:
        host.load_adapter("big", llama["r16"][0])
    one_line(e, "'big'", "rank 16", "max_rank 8")
    # Base identity differs (adapter trained on a 3-layer model with the same module names).
    other = tmp_path / "other"

    def three_layers():
        model = tiny_llama()
        from transformers import LlamaForCausalLM

        config = model.config
        config.num_hidden_layers = 3
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()

    make_adapter(three_layers, other, 2, ("q_proj",), seed=5)
    # Drop the third layer's tensors so only the recorded identity can tell.
    path = other / WEIGHTS_NAME
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = {k: v for k, v in load_file(str(path)).items() if ".layers.2." not in k}
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(AdapterError) as e:
        host.load_adapter("other", other)
    one_line(e, "'other'", "another base model", "num_hidden_layers")
    # Keys that match no module of the base (must not be served as the base).
    ghost = tmp_path / "ghost"
    shutil.copytree(llama["r1"][0], ghost)
    tensors = {k.replace("self_attn", "attn_x"): v for k, v in load_file(str(ghost / WEIGHTS_NAME)).items()}
    save_file(tensors, str(ghost / WEIGHTS_NAME))
    with pytest.raises(AdapterError) as e:
        host.load_adapter("ghost", ghost)
    one_line(e, "'ghost'", "attn_x", "no module")
    # A missing directory, a duplicate name.
    with pytest.raises(AdapterError) as e:
        host.load_adapter("nowhere", tmp_path / "nope")
    one_line(e, "'nowhere'")
    with pytest.raises(AdapterError) as e:
        host.load_adapter("r4", llama["r4"][0])
    one_line(e, "'r4'", "already loaded")
    # Unknown name at inference: no silent fallback to the base.
    with pytest.raises(AdapterError) as e:
        host.generate(["hi", "ho"], adapter=["r4", "r44"])
    one_line(e, "'r44'", "not loaded", "r4")
    with pytest.raises(AdapterError) as e:
        host.unload_adapter("r44")
    one_line(e, "'r44'")
    assert list(host.adapters()) == ["r4"]
    after = host.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_classification_host_refuses_rows_without_a_head(tmp_path):
    adapters = bert_adapters(tmp_path)
    host = host_for(tiny_bert, causal=False)
    host.load_adapter("sst", adapters["sst"][0])
    with pytest.raises(AdapterError) as e:
        host.classify(["x", "y"], adapter=["sst", None])
    one_line(e, "every row needs an adapter")


# ---------------------------------------------------------------------------------------------- hot swap


def rss_mb():
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_load_unload_cycles_reuse_slots_and_memory(llama):
    host = host_for(tiny_llama, kernel="loop")  # loop uses each slot's true rank: bitwise comparable as r_max grows
    host.load_adapter("keep", llama["r4"][0])
    ids, mask = padded_batch(["keep", None])
    expected = host.logits(ids, mask, ["keep", None])
    for i in range(20):  # warm up allocator and caches; both adapters' ranks reserved once
        host.load_adapter("tmp", llama["r16"][0] if i % 2 else llama["r8"][0])
        host.unload_adapter("tmp")
    gc.collect()
    start = rss_mb()
    shapes = {n: tuple(m.lora_A.shape) for n, m in host._layers.items()}
    for i in range(200):
        host.load_adapter("tmp", llama["r16"][0] if i % 2 else llama["r8"][0])
        host.unload_adapter("tmp")
    gc.collect()
    assert rss_mb() - start < 8, f"RSS grew {rss_mb() - start:.1f} MB over 200 cycles"
    assert {n: tuple(m.lora_A.shape) for n, m in host._layers.items()} == shapes  # slot reused, no regrowth
    assert host.adapters()["keep"]["slot"] == 1 and host._next_slot == 3
    torch.testing.assert_close(host.logits(ids, mask, ["keep", None]), expected, atol=0, rtol=0)
    # An unloaded slot is all zeros again: the next adapter there sees no trace of the last one.
    for layer in host._layers.values():
        assert not layer.lora_A[2].any() and not layer.lora_B[2].any() and layer.ranks[2] == 0


def test_many_adapters_grow_capacity_geometrically(llama):
    host = host_for(tiny_llama, capacity=2)
    for i in range(20):
        host.load_adapter(f"a{i}", llama["r1"][0])
    layer = host._layers["model.layers.0.self_attn.q_proj"]
    assert layer.capacity == 32 and layer.r_max == 1
    rows = [f"a{i}" for i in range(0, 20, 3)] + [None]
    ids, mask = padded_batch(rows)
    mixed = host.logits(ids, mask, rows)
    alone = llama["r1"][1](input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(mixed[:-1][mask[:-1].bool()], alone[:-1][mask[:-1].bool()], atol=TOL, rtol=0)
    assert F.mse_loss(mixed[-1], tiny_llama()(input_ids=ids[-1:], attention_mask=mask[-1:]).logits[0]) < 1e-10


def test_beam_search_rows_keep_their_adapter(llama):
    """HF beam search repeats each row num_beams times and reorders beams: every beam stays on its row's
    adapter, so a mixed beam search equals each row's beam search alone."""
    host = host_for(tiny_llama)
    for name, (directory, _) in llama.items():
        host.load_adapter(name, directory)
    rows = ["r16", None, "r4"]
    ids = token_batch(seed=7, batch=3, length=6)
    _, slots = host.slots_for(rows, 3)
    settings = {"max_new_tokens": 6, "num_beams": 3, "do_sample": False, "pad_token_id": 0, "eos_token_id": 2}
    with torch.no_grad(), host.routing.use(slots):
        mixed = host.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **settings)
    base = tiny_llama()
    for i, name in enumerate(rows):
        model = llama[name][1] if name else base
        alone = model.generate(input_ids=ids[i : i + 1], attention_mask=torch.ones_like(ids[i : i + 1]), **settings)
        assert mixed[i].tolist() == alone[0].tolist(), (i, name)
