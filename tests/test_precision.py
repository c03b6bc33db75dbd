"""bf16 autocast as the training loop uses it: matmuls in bf16, attention in fp32 on CPU."""

import torch
import torch.nn.functional as F
from tiny import tiny_llama, tiny_tokenizer

from lorafit.data import collate, encode_generation
from lorafit.lora import LoraSpec, add_lora
from lorafit.loss import causal_lm_loss
from lorafit.tasks.types import GenerationExample
from lorafit.train import autocast_context, resolve_precision

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
    from lorafit import train

    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": False})
    assert resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True})
    assert resolve_precision("auto", CPU) == "fp32"
    x, w = torch.randn(3, 16), torch.randn(5, 16)
    with train.autocast_context("auto", CPU):  # resolved inside too
        assert F.linear(x, w).dtype == torch.float32
