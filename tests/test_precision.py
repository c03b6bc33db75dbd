"""bf16 autocast as the training loop uses it: matmuls in bf16, attention in fp32 on CPU."""

import torch
import torch.nn.functional as F
from tiny import tiny_llama, tiny_tokenizer

from lorafit.data.batches import collate, encode_generation
from lorafit.fast.precision import FrozenWeightCasts, autocast_context, resolve_precision
from lorafit.lora import LoraSpec, add_lora
from lorafit.tasks.types import GenerationExample
from lorafit.train.loss import causal_lm_loss

CPU = torch.device("cpu")


def test_bf16_context_runs_attention_in_fp32_and_everything_else_under_autocast():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 16, generator=g).to(torch.bfloat16).requires_grad_(True) for _ in range(3))
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    with autocast_context("bf16", CPU):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        linear = F.linear(torch.randn(3, 16), torch.randn(5, 16))
    assert out.dtype == torch.bfloat16 and linear.dtype == torch.bfloat16
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(torch.bfloat16)
    assert torch.equal(out, expected)
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))


def test_fp32_context_changes_nothing():
    x, w = torch.randn(3, 16), torch.randn(5, 16)
    with autocast_context("fp32", CPU):
        assert torch.equal(F.linear(x, w), x @ w.T)


def test_bf16_training_loss_is_close_to_fp32_and_has_gradients():
    tok = tiny_tokenizer()
    examples = [GenerationExample("name[A], food[Thai]\nDescription:", " A serves Thai food."),
                GenerationExample("name[Bo]\nDescription:", " Bo.")]
    batch = collate(encode_generation(examples, tok, 512)[0], 0)
    losses = {}
    for precision in ("fp32", "bf16"):
        model = tiny_llama()
        add_lora(model, LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj")))
        with autocast_context(precision, CPU):
            loss = causal_lm_loss(model, batch)
        loss.backward()
        losses[precision] = loss.item()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert abs(losses["bf16"] - losses["fp32"]) <= 0.02 * losses["fp32"]


def test_auto_precision_is_bf16_only_where_the_hardware_has_bf16_matmuls(monkeypatch):
    from lorafit.fast import precision as train

    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": False})
    assert resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    assert resolve_precision("auto", CPU) == "fp32"
    x, w = torch.randn(3, 16), torch.randn(5, 16)
    with train.autocast_context("auto", CPU):  # resolved inside too
        assert F.linear(x, w).dtype == torch.float32


def _lora_llama_batch():
    tok = tiny_tokenizer()
    examples = [GenerationExample("name[A], food[Thai]\nDescription:", " A serves Thai food."),
                GenerationExample("name[Bo]\nDescription:", " Bo.")]
    batch = collate(encode_generation(examples, tok, 512)[0], 0)
    torch.manual_seed(0)
    model = tiny_llama()
    add_lora(model, LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj")))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # a non-zero update, so the LoRA gradients are non-trivial
    return model, batch


def _loss_and_grads(model, batch, casts):
    model.zero_grad(set_to_none=True)
    with autocast_context("bf16", CPU, casts):
        loss = causal_lm_loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_frozen_weight_casts_are_bitwise_autocast_and_made_once():
    model, batch = _lora_llama_batch()
    model.eval()  # no dropout: the two passes must see identical computations
    loss_ref, grads_ref = _loss_and_grads(model, batch, None)
    casts = FrozenWeightCasts()
    loss_1, grads_1 = _loss_and_grads(model, batch, casts)
    frozen_linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]
    # every frozen nn.Linear weight (the tied head too), plus the weights LoRA layers wrap
    wrapped = [m.weight for m in model.modules() if hasattr(m, "lora_A")]
    assert len(casts) == len({id(w) for w in frozen_linears + wrapped})
    copies = {k: v[2] for k, v in casts._copies.items()}
    loss_2, grads_2 = _loss_and_grads(model, batch, casts)
    assert all(casts._copies[k][2] is c for k, c in copies.items())  # reused, not cast again
    assert torch.equal(loss_1, loss_ref) and torch.equal(loss_2, loss_ref)
    for name in grads_ref:
        assert torch.equal(grads_1[name], grads_ref[name]), name
        assert torch.equal(grads_2[name], grads_ref[name]), name


def test_frozen_weight_cast_is_redone_after_an_in_place_change():
    casts = FrozenWeightCasts()
    w = torch.nn.Parameter(torch.randn(5, 16), requires_grad=False)
    x = torch.randn(3, 16)
    with autocast_context("bf16", CPU, casts):
        first = F.linear(x, w)
    with torch.no_grad():
        w.add_(1.0)  # what a merge does
    with autocast_context("bf16", CPU, casts):
        second = F.linear(x, weight=w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.linear(x, w)
    assert not torch.equal(first, second) and torch.equal(second, expected)
    assert len(casts) == 1  # cached, then re-cast after the change
    trainable = torch.randn(5, 16, requires_grad=True)
    assert not casts.cacheable(trainable) and not casts.cacheable(w.T)
    assert not casts.cacheable(torch.randn(5, 16))  # a tensor made on the fly: a new identity every call
