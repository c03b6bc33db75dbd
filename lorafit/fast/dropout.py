"""Dropout with a mask that is cheap to draw on a CPU: for the LoRA branch's input and the model's own.

`nn.Dropout` on a CPU draws every mask element with `bernoulli_`, one generator call per element: at
LoRA's shapes (tokens x d_in, e.g. 512 x 576) that costs about as much as the frozen matmul itself
(docs/performance.md, bench_layer). Here one 64-bit draw of the same torch generator gives the mask
for four elements: each 16-bit lane is uniform over [-32768, 32767], and an element is kept when its
lane is >= -32768 + round(p * 65536). So the drop probability is p rounded to a multiple of 1/65536
(0.1 -> 0.100006), kept values are scaled by 1 / (1 - p) as in `nn.Dropout`, and the draws come from
the seeded torch generator, so runs and resumed runs stay reproducible. On a GPU, where torch's fused
dropout is already fast, `F.dropout` is used.

`use_fast_dropout` swaps the base model's own `nn.Dropout` modules (BERT's and GPT-2's hidden-state
dropout, 0.1) for the same thing: on SST-2/MiniLM they drew ~8% of a training step's time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LANES = 65536  # 16-bit lanes: p resolves to multiples of 1 / 65536


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A `shape` tensor of 0 and 1 / (1 - p) in `dtype`, each element kept with probability ~1 - p."""
    numel = shape.numel()
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), None)  # the full 64-bit range: every 16-bit lane uniform
    lanes = words.view(torch.int16)[:numel].view(shape)
    threshold = -_LANES // 2 + round(p * _LANES)
    return (lanes >= threshold).to(dtype).mul_(1.0 / (1.0 - p))


class FastDropout(nn.Module):
    """Inverted dropout with drop probability `p` (training mode only); no parameters, no state."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * keep_mask(x.shape, self.p, x.dtype, x.device)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every `nn.Dropout` (p > 0) inside `model` with a `FastDropout` of the same p, in place.

    Dropout modules have no parameters, so the state dict is unchanged; code that reads `.p` (e.g.
    attention passing it to scaled_dot_product_attention) still finds it. Returns how many were replaced.
    """
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Dropout and child.p > 0
    ]
    for parent, name, old in swaps:
        new = FastDropout(old.p)
        new.train(old.training)  # a model already in eval mode stays so
        setattr(parent, name, new)
    return len(swaps)
