"""Frozen linear weights pre-packed for oneDNN: faster CPU inference for a base that never trains.

`F.linear` on CPU hands fp32 matmuls to MKL, which re-packs the weight on every call and, on the AMD
EPYC machines measured here, ran the decode shapes (a few to 64 rows against SmolLM2's 576-1536-wide
weights and its 49k-word LM head) well below the speed of oneDNN with a weight reordered once into
its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, the path torch.compile's CPU freezing
uses): a 16-row fp32 decode step of SmolLM2 over 8 adapters, 2 threads, took 196 ms plain and 131 ms
packed (bench/bench_decode_step.py --weights both; the table is in docs/adapters.md, "Packed weights").

    layer = PackedLinear(weight, bias)       # weight (d_out, d_in), frozen; bias (d_out,) or None
    y = layer(x)                             # x (..., d_in) -> (..., d_out), = F.linear(x, weight, bias)
    linear = layer.unpacked()                # a plain nn.Linear again (for code that copies modules)

The packed tensor replaces the plain weight: a PackedLinear keeps no reference to it, so an untied
weight's memory is freed once its module is swapped; a weight tied to another module (an LM head
sharing the embedding matrix) stays alive there and the packed copy is extra. oneDNN sums in another
order than MKL, so fp32 outputs differ from F.linear's in the last bits (~1e-6 relative); bf16 is the
same kernel either way. Inference only: a packed weight has no gradient and cannot be merged into.
"""

from __future__ import annotations

import torch
from torch import nn

PACKABLE_DTYPES = (torch.float32, torch.bfloat16)


def can_pack(weight: torch.Tensor) -> bool:
    """Whether this torch build can pack `weight` for oneDNN: a 2-D fp32/bf16 CPU tensor, oneDNN built in."""
    return (
        torch.backends.mkldnn.is_available()
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and weight.dtype in PACKABLE_DTYPES
    )


class PackedLinear(nn.Module):
    """`F.linear(x, weight, bias)` with the weight held reordered for oneDNN; see the module docstring.

    The bias (if any) stays a Parameter under its own name, so `bias` keeps its place in the module
    tree; the weight is an opaque oneDNN tensor, not a Parameter or buffer (it cannot be saved,
    copied or moved: `unpacked()` gives a plain module for that).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if not can_pack(weight):
            raise ValueError(f"cannot pack a {weight.dtype} {tuple(weight.shape)} weight on {weight.device}")
        self.out_features, self.in_features = weight.shape
        self.dtype, self.device = weight.dtype, weight.device
        # batch_size=None: one layout for every row count (a decode step's few rows and a prefill's
        # hundreds); a row-count hint made no consistent difference in an ad-hoc sweep of 1-400 rows.
        object.__setattr__(self, "packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.dtype:  # as F.linear would, refuse rather than silently compute in another dtype
            raise RuntimeError(f"PackedLinear: input is {x.dtype}, weight is {self.dtype}")
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")

    @torch.no_grad()
    def unpacked(self) -> nn.Linear:
        """A plain nn.Linear with this layer's weight (unpacked: the same values) and bias."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.device, dtype=self.dtype)
        linear.weight = nn.Parameter(self.packed.to_dense(), requires_grad=False)
        if self.bias is not None:
            linear.bias = self.bias
        return linear.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}, packed=oneDNN"

