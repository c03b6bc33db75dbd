"""Attention while training: dropout without per-element `bernoulli_` draws on a CPU, and packed rows
attended example by example (`PackedAttention`, for `train.batching: pack`).

BERT (attention_probs_dropout_prob 0.1) and GPT-2 (attn_pdrop 0.1) pass their attention dropout to
`F.scaled_dot_product_attention`. With `dropout_p > 0` torch 2.13's CPU dispatch cannot use its flash
kernel and runs the math fallback, which draws the (B, H, L, S) mask with `bernoulli_`, one generator
call per element: torch.profiler put that draw alone at ~2.6% of an SST-2/MiniLM fp32 training step.
`attention_with_fast_dropout` is the same math (scores, mask, softmax, dropout, weighted sum) with the
mask from `lora.dropout.keep_mask` (one 64-bit draw per four elements, same seeded generator, p rounded
to a multiple of 1/65536, kept weights scaled by 1 / (1 - p)).

`FastAttentionDropout` is the torch-function mode fit() trains under: it reroutes only CPU calls with
`dropout_p > 0` (training a model that has attention dropout); every other call, and every call in
evaluation (dropout_p 0) or on a GPU, goes to torch's kernels unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lorafit.fast.dropout import keep_mask


def may_mask_whole_rows(attn_mask: torch.Tensor | None, is_causal: bool) -> bool:
    """Whether some query may see no key at all. Checked on the mask as given (e.g. (B, 1, 1, S)
    padding), which is far smaller than the (B, H, L, S) scores; True when it cannot be ruled out."""
    if attn_mask is None:
        return False  # no mask, or the causal one: every query sees at least the first key
    if is_causal:
        return True
    if attn_mask.dtype == torch.bool:
        return bool((~attn_mask).all(-1).any())
    return bool(torch.isneginf(attn_mask).all(-1).any())


def attention_with_fast_dropout(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention`'s result with the dropout mask from `keep_mask`.

    query (..., H, L, E), key (..., Hk, S, E), value (..., Hk, S, Ev) -> (..., H, L, Ev). attn_mask: bool
    (True = attend) or additive float, broadcastable to (..., H, L, S). A query row with every key masked
    gets zeros, as SDPA gives.
    """
    if enable_gqa and key.size(-3) != query.size(-3):
        groups = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(groups, dim=-3)
        value = value.repeat_interleave(groups, dim=-3)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    # In place on the fresh (..., H, L, S) scores: none of these ops' backward reads its input.
    scores = torch.matmul(query, key.transpose(-2, -1)).mul_(scale)
    if is_causal:
        length, source = scores.shape[-2:]
        future = torch.ones(length, source, dtype=torch.bool, device=scores.device).triu_(1)
        scores.masked_fill_(future, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores.masked_fill_(attn_mask.logical_not(), float("-inf"))
        else:
            scores.add_(attn_mask)
    if may_mask_whole_rows(attn_mask, is_causal):
        probs = torch.ops.aten._safe_softmax(scores, -1)  # fully masked rows -> 0, not NaN (as SDPA)
    else:
        probs = torch.softmax(scores, -1)  # 3 fewer passes over (..., H, L, S) than the safe one
    if dropout_p > 0.0:
        probs = probs * keep_mask(probs.shape, dropout_p, probs.dtype, probs.device)
    return torch.matmul(probs, value)


_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")


def sdpa_arguments(args: tuple, kwargs: dict) -> dict:
    """A `scaled_dot_product_attention` call's arguments by name, however they were passed."""
    return {**dict(zip(_SDPA_PARAMS, args, strict=False)), **kwargs}


class FastAttentionDropout(TorchFunctionMode):
    """Routes CPU `scaled_dot_product_attention` calls with dropout_p > 0 to `attention_with_fast_dropout`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            named = sdpa_arguments(args, kwargs)
            if named.get("dropout_p", 0.0) > 0.0 and named["query"].device.type == "cpu":
                return attention_with_fast_dropout(**named)
        return func(*args, **kwargs)


class PackedAttention(TorchFunctionMode):
    """Attention of a packed row (`data.collate_packed`) computed example by example.

    For a packed row transformers builds a (1, 1, T, T) block-diagonal causal mask (from the restarting
    position_ids), which already keeps every example to itself; SDPA with that mask still computes all
    T x T scores, 8x the per-example work for 8 examples of equal length. This mode replaces each
    `scaled_dot_product_attention` call on the row, query/key/value (1, H, T, E), by one causal call per
    example on its piece of the sequence dimension and joins the outputs: the same result without the
    off-diagonal blocks. Dropout, scale and grouped heads pass through (and reach `FastAttentionDropout`).
    """

    def __init__(self, segment_lengths: list[int]) -> None:
        super().__init__()
        self.lengths = list(segment_lengths)
        self.total = sum(self.lengths)
        self.calls = 0  # attention calls split so far: 0 after a forward means the model bypassed SDPA

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        named = sdpa_arguments(args, kwargs)
        query, key, value = named.pop("query"), named.pop("key"), named.pop("value")
        if query.size(-2) != self.total or key.size(-2) != self.total:
            raise ValueError(f"packed attention: sequence length {query.size(-2)} is not the packed row's {self.total}")
        # No mask: plain causal attention within each example. A mask (T, T) for the row (a sliding-window
        # layer's: Mistral, Qwen2, Gemma 3): each example gets its own diagonal block of it, which is its
        # windowed causal mask, since within one example a column distance is a position distance.
        row_mask = named.pop("attn_mask", None)
        named["is_causal"] = row_mask is None
        starts = [sum(self.lengths[:i]) for i in range(len(self.lengths))]
        self.calls += 1
        # split, not slicing: split's backward joins the pieces' gradients into one tensor, while each
        # slice's backward would write its piece into a zero-filled gradient of the whole row.
        pieces = [
            F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if row_mask is None else row_mask[..., s : s + n, s : s + n], **named)
            for q, k, v, s, n in zip(*(t.split(self.lengths, dim=-2) for t in (query, key, value)), starts,
                                     self.lengths, strict=True)
        ]
        return torch.cat(pieces, dim=-2)

