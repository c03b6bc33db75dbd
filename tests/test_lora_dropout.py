"""FastDropout: the cheap CPU mask keeps nn.Dropout's semantics (rate, scaling, gradient, eval, seed)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_bert, tiny_gpt2

from lorafit.fast.dropout import FastDropout, keep_mask, use_fast_dropout
from lorafit.lora.layer import LoRALinear


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_drop_rate_and_scaling(p):
    torch.manual_seed(0)
    x = torch.rand(1_000_003) + 1.0  # odd size: the last 64-bit draw is only partly used
    y = FastDropout(p).train()(x)
    dropped = (y == 0).double().mean().item()
    n = x.numel()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(dropped - p) < 5 * sigma + 1 / 65536
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=1e-6, atol=0)


def test_lanes_are_independent_of_position():
    # Each of the four 16-bit lanes of a 64-bit draw must drop at the same rate.
    torch.manual_seed(1)
    mask = keep_mask(torch.Size([400_000]), 0.25, torch.float32, torch.device("cpu")).view(-1, 4)
    rates = (mask == 0).double().mean(0)
    assert torch.all((rates - 0.25).abs() < 5 * math.sqrt(0.25 * 0.75 / 100_000)), rates


def test_seeded_reproducible_and_fresh_each_call():
    x = torch.randn(8, 33, 17)
    drop = FastDropout(0.1).train()
    torch.manual_seed(3)
    a, b = drop(x), drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), a)
    assert not torch.equal(a, b)


def test_gradient_is_the_mask_and_eval_is_identity():
    x = torch.randn(4, 50, requires_grad=True)
    drop = FastDropout(0.3).train()
    y = drop(x)
    y.sum().backward()
    expected = (y.detach() != 0).float() / 0.7
    torch.testing.assert_close(x.grad, expected)
    drop.eval()
    assert drop(x) is x


def test_keeps_dtype_bf16():
    x = torch.randn(3, 7, dtype=torch.bfloat16)
    assert FastDropout(0.2).train()(x).dtype == torch.bfloat16


def test_rejects_bad_probability():
    with pytest.raises(ValueError, match="dropout"):
        FastDropout(1.0)


def test_lora_layer_uses_the_mask_on_the_branch_only():
    torch.manual_seed(0)
    base = torch.nn.Linear(12, 6)
    layer = LoRALinear.wrap(base, rank=2, alpha=4, dropout=0.5).train()
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(5, 12)
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)
    mask = keep_mask(x.shape, 0.5, x.dtype, x.device)
    expected = base(x) + F.linear(F.linear(x * mask, layer.lora_A.weight), layer.lora_B.weight) * layer.scale
    torch.testing.assert_close(out, expected)


def test_model_dropout_modules_are_swapped_without_changing_the_model():
    for build in (tiny_bert, tiny_gpt2):
        model = build()
        before = [m.p for m in model.modules() if type(m) is torch.nn.Dropout and m.p > 0]
        state = {k: v.clone() for k, v in model.state_dict().items()}
        ids = torch.randint(5, 90, (2, 11))
        model.eval()
        with torch.no_grad():
            reference = model(input_ids=ids).logits
        assert use_fast_dropout(model) == len(before) > 0
        assert not any(type(m) is torch.nn.Dropout and m.p > 0 for m in model.modules())
        assert sorted(m.p for m in model.modules() if isinstance(m, FastDropout)) == sorted(before)
        assert model.state_dict().keys() == state.keys()
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, reference)  # eval: dropout off, same outputs
        model.train()
        with torch.no_grad():
            assert not torch.equal(model(input_ids=ids).logits, reference)  # train: dropout active
