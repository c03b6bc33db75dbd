"""DoRA (Liu et al. 2024, "Weight-Decomposed Low-Rank Adaptation"), the math beside LoRA's.

DoRA splits the adapted weight into a direction and a magnitude: a trainable vector m, one value per
output feature, scales each row of the LoRA-updated weight to length m:

    W' = m / ||W + s B A||_row * (W + s B A)           ||.||_row: the L2 norm of each of the d_out rows

    h  = W' x + b = W x + b + (g - 1) * (W x) + g * s B A x,      g = m / ||W + s B A||_row   (d_out,)

The norm is detached from the graph (the paper's section 4.3, as PEFT does), so gradients flow to m,
A and B but not through the norm. m starts at ||W + s B A||_row, which makes g = 1 and the untrained
adapter the identity (B = 0) or plain LoRA's output (any B). Shapes: W (d_out, d_in) (a Conv1D weight
is transposed to this first), A (rank, d_in), B (d_out, rank), m (d_out,).
"""

from __future__ import annotations

import torch


def dora_weight_norm(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """||W + s B A||_row: (d_out,) for weight (d_out, d_in), in the weight's dtype."""
    updated = weight + scale * (b.to(weight.dtype) @ a.to(weight.dtype))
    return torch.linalg.norm(updated, dim=1).to(weight.dtype)


def dora_factor(magnitude: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """g = m / ||W + s B A||_row, (d_out,), the norm detached: each output feature's rescaling."""
    return magnitude / dora_weight_norm(weight, a, b, scale).detach()


def dora_delta_output(
    base: torch.Tensor, low_rank: torch.Tensor, factor: torch.Tensor, scale: float
) -> torch.Tensor:
    """What DoRA adds to the base output: (g - 1) * W x + g * s B A x.

    base = W x (no bias), low_rank = B A x (unscaled), both (..., d_out); factor g (d_out,).
    """
    return (factor - 1) * base + factor * (low_rank * scale)


@torch.no_grad()
def dora_merged_weight(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, magnitude: torch.Tensor
) -> torch.Tensor:
    """W' = m / ||W + s B A||_row * (W + s B A), (d_out, d_in), in fp32 (float64 for a float64 W: analysis)."""
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    updated = weight.to(dtype) + scale * (b.to(dtype) @ a.to(dtype))
    return (magnitude.to(dtype) / torch.linalg.norm(updated, dim=1)).unsqueeze(1) * updated
