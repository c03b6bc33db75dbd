"""attention.py: SDPA's math with lorafit's cheap dropout mask, and the mode fit() trains under."""

import pytest
import torch
import torch.nn.functional as F
from tiny import HIDDEN, LAYERS, VOCAB, tiny_bert

import lorafit.fast.attention as attention
from lorafit.data.batches import Encoded
from lorafit.fast.attention import FastAttentionDropout, attention_with_fast_dropout, may_mask_whole_rows
from lorafit.fast.dropout import keep_mask
from lorafit.fast.precision import autocast_context
from lorafit.recipe.schema import TrainConfig
from lorafit.train.loop import fit
from lorafit.train.loss import classification_loss


def qkv(batch=2, heads=4, length=7, source=7, dim=8, kv_heads=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, dim, generator=g, requires_grad=True)
    k = torch.randn(batch, kv_heads or heads, source, dim, generator=g, requires_grad=True)
    v = torch.randn(batch, kv_heads or heads, source, dim, generator=g, requires_grad=True)
    return q, k, v


def padding_mask(batch=2, source=7) -> torch.Tensor:
    """(B, 1, 1, S) bool, True = attend: row 1 has its last three keys padded."""
    mask = torch.ones(batch, 1, 1, source, dtype=torch.bool)
    mask[1, ..., -3:] = False
    return mask


def outputs_and_grads(fn, q, k, v, **kwargs):
    out = fn(q, k, v, **kwargs)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum(), (q, k, v))
    return out, grads


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"attn_mask": padding_mask()},
        {"attn_mask": torch.where(padding_mask(), 0.0, -1e4)},  # an additive float mask
        {"is_causal": True},
        {"scale": 0.3},
    ],
    ids=["plain", "bool-mask", "float-mask", "causal", "scale"],
)
def test_without_dropout_it_is_sdpa_forward_and_backward(kwargs):
    q, k, v = qkv()
    ours, our_grads = outputs_and_grads(attention_with_fast_dropout, q, k, v, **kwargs)
    ref, ref_grads = outputs_and_grads(F.scaled_dot_product_attention, q, k, v, **kwargs)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    for a, b in zip(our_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_grouped_query_attention_repeats_the_key_value_heads_as_sdpa_does():
    q, k, v = qkv(heads=4, kv_heads=2)
    ours = attention_with_fast_dropout(q, k, v, enable_gqa=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, enable_gqa=True), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("additive", [False, True], ids=["bool-mask", "float-mask"])
def test_a_query_row_with_every_key_masked_gets_zeros_like_sdpa(additive):
    q, k, v = qkv()
    mask = padding_mask().expand(2, 1, 7, 7).clone()
    mask[0, 0, 2] = False  # query 2 of example 0 may attend to nothing
    if additive:
        mask = torch.where(mask, 0.0, float("-inf"))
    ours = attention_with_fast_dropout(q, k, v, attn_mask=mask, dropout_p=0.1)
    assert torch.equal(ours[0, :, 2], torch.zeros_like(ours[0, :, 2])) and ours.isfinite().all()
    torch.testing.assert_close(
        attention_with_fast_dropout(q, k, v, attn_mask=mask),
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6, rtol=1e-5,
    )


def test_whole_masked_rows_are_found_on_the_small_mask():
    pad = padding_mask()  # (B, 1, 1, S): padding leaves every query some keys
    assert not may_mask_whole_rows(pad, is_causal=False)
    assert not may_mask_whole_rows(torch.where(pad, 0.0, -1e4), is_causal=False)  # finite: never NaN
    assert not may_mask_whole_rows(None, is_causal=True)  # the causal mask keeps the first key
    empty = pad.clone()
    empty[1] = False
    assert may_mask_whole_rows(empty, is_causal=False)
    assert may_mask_whole_rows(torch.where(empty, 0.0, float("-inf")), is_causal=False)
    assert may_mask_whole_rows(pad, is_causal=True)  # both: not ruled out


def test_dropout_multiplies_the_attention_weights_by_keep_mask_from_the_seeded_generator():
    q, k, v = qkv()
    mask = padding_mask()
    torch.manual_seed(5)
    keep = keep_mask(torch.Size((2, 4, 7, 7)), 0.1, torch.float32, torch.device("cpu"))
    weights = torch.softmax((q @ k.transpose(-2, -1) / 8**0.5).masked_fill(~mask, float("-inf")), dim=-1)
    expected = (weights * keep) @ v
    torch.manual_seed(5)
    ours = attention_with_fast_dropout(q, k, v, attn_mask=mask, dropout_p=0.1)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    assert 0 < int((keep == 0).sum()) < keep.numel() // 3  # some weights dropped, most kept


def test_dropout_drops_a_share_p_of_the_weights_and_rescales_the_rest():
    # value = identity over the keys, so the output rows are the (dropped, rescaled) attention weights.
    q = torch.randn(4, 8, 64, 16)
    k = torch.randn(4, 8, 64, 16)
    v = torch.eye(64).expand(4, 8, 64, 64)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 4, dim=-1)
    out = attention_with_fast_dropout(q, k, v, dropout_p=0.25)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - 0.25) < 0.01  # 131,072 weights
    torch.testing.assert_close(out[~dropped], weights[~dropped] / 0.75, atol=1e-6, rtol=1e-5)


def test_the_mode_reroutes_only_cpu_attention_with_dropout():
    q, k, v = qkv()
    with FastAttentionDropout():
        plain = F.scaled_dot_product_attention(q, k, v, attn_mask=padding_mask())
        torch.manual_seed(3)
        dropped = F.scaled_dot_product_attention(q, k, v, padding_mask(), 0.1)  # positional dropout_p
    assert torch.equal(plain, F.scaled_dot_product_attention(q, k, v, attn_mask=padding_mask()))
    torch.manual_seed(3)
    assert torch.equal(dropped, attention_with_fast_dropout(q, k, v, attn_mask=padding_mask(), dropout_p=0.1))


def bert_run(precision: str):
    """A tiny BERT with attention dropout 0.1 and only its classifier trainable: 3 steps of fit()."""
    model = tiny_bert(num_labels=2)
    assert model.config.attention_probs_dropout_prob == 0.1
    for p in model.parameters():
        p.requires_grad_(False)
    model.classifier.weight.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    examples = [
        Encoded(input_ids=tuple(ids[: 4 + i % 5]), labels=None, target=i % 2)
        for i, ids in enumerate(torch.randint(3, VOCAB, (12, 9), generator=g).tolist())
    ]
    settings = TrainConfig(
        batch_size=4, grad_accum=1, lr=1e-3, weight_decay=0.0, warmup_steps=0, schedule="constant",
        max_grad_norm=None, batching="bucket", epochs=1, max_steps=None, log_every=100, eval_every=0,
        save_every=0,
    )
    return fit(model, examples, [], settings, seed=0, precision=precision, loss_fn=classification_loss, pad_id=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fit_trains_attention_dropout_through_the_fast_mask_in_fp32(monkeypatch, precision):
    seen = []

    def spy(query, key, value, **kwargs):
        seen.append((query.dtype, query.shape[-1] * query.shape[-3], kwargs["dropout_p"]))
        return attention_with_fast_dropout(query, key, value, **kwargs)

    monkeypatch.setattr(attention, "attention_with_fast_dropout", spy)
    result = bert_run(precision)
    assert result.state.step == 3 and result.precision == precision
    # every layer of every step, attention in fp32 under bf16 autocast too (precision.py)
    assert seen == [(torch.float32, HIDDEN, 0.1)] * (3 * LAYERS)


def test_evaluation_attention_is_untouched(monkeypatch):
    monkeypatch.setattr(attention, "attention_with_fast_dropout", lambda *a, **k: pytest.fail("rerouted"))
    model = tiny_bert(num_labels=2)
    ids = torch.randint(3, VOCAB, (2, 6))
    with FastAttentionDropout(), autocast_context("fp32", torch.device("cpu")):
        logits = model(input_ids=ids).logits  # eval mode: dropout_p 0 reaches SDPA
    assert torch.equal(logits, model(input_ids=ids).logits)
