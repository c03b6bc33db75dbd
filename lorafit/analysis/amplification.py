"""How ΔW relates to the frozen weight W it is added to (LoRA paper, section 7.3, Table 7).

With ΔW = U diag(s) Vᵀ (spectrum.py; U (d_out, r), V (d_in, r)), W is projected onto ΔW's
r-dimensional subspaces:  Uᵀ W V  (r, r). The paper compares ||Uᵀ W V||_F with the same projection
onto
- W's own top-r singular directions: ||U_Wᵀ W V_W||_F = sqrt(sum_{i<=r} sigma_i(W)^2), and
- random directions (orthonormal U, V drawn uniformly): ||Uᵀ W V||_F ~ ||W||_F · r / sqrt(d_out d_in),
and reports the amplification factor ||ΔW||_F / ||Uᵀ W V||_F (21.5 = 6.91 / 0.32 for r = 4 on the
query projection of GPT-3's 48th layer; about 1.9 = 3.57 / 1.90 for r = 64). A large factor says ΔW
strongly amplifies directions W already has but barely uses.

The paper writes Uᵀ W Vᵀ with V "the right singular-vector matrix" as in W = U S Vᵀ; with V holding
the vectors as columns, as here, that is Uᵀ W V.

W is taken in ΔW's orientation (d_out, d_in); GPT-2's Conv1D stores (d_in, d_out) and is transposed.
The comparison with W's top directions needs W's singular values (one SVD of W per layer); it is
optional (`with_baselines`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lorafit.analysis.spectrum import FactorSVD, frobenius_norm
from lorafit.errors import AdapterError
from lorafit.lora.layer import is_conv1d


def base_weight(model: nn.Module, name: str, shape: tuple[int, int]) -> torch.Tensor:
    """The frozen weight of module `name` as a float64 (d_out, d_in) matrix; AdapterError if absent or misfit."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise AdapterError(f"base model has no module {name} (the adapter was trained on another base model)") from None
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise AdapterError(f"base model module {name} ({type(module).__name__}) has no 2-D weight")
    w = weight.detach().to(torch.float64)
    w = w.T if is_conv1d(module) else w  # Conv1D stores (d_in, d_out)
    if tuple(w.shape) != tuple(shape):
        raise AdapterError(
            f"base model module {name} has weight {tuple(w.shape)} (d_out, d_in), the adapter's update is "
            f"{tuple(shape)}; the adapter was trained on another base model"
        )
    return w


def random_orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, cols) with orthonormal columns, uniformly distributed (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def amplification(svd: FactorSVD, w: torch.Tensor, *, with_baselines: bool = True, seed: int = 0) -> dict:
    """Table 7's numbers for one layer: ||ΔW||_F, ||W||_F, ||Uᵀ W V||_F and the amplification factor.

    With `with_baselines`, also ||Uᵀ W V||_F for W's own top-r directions and for random directions.
    r is the number of singular vectors of ΔW (the adapter rank, or less for a narrow layer).
    """
    r = svd.s.shape[0]
    w = w.detach().to(torch.float64)
    projected = float(torch.linalg.matrix_norm(svd.u.T @ w @ svd.v))  # (r, d_out)(d_out, d_in)(d_in, r) -> (r, r)
    delta_norm = frobenius_norm(svd.s)
    result = {
        "rank": r,
        "delta_norm": delta_norm,
        "weight_norm": float(torch.linalg.matrix_norm(w)),
        "projection_norm": projected,
        "factor": delta_norm / projected if projected > 0 else math.inf,
    }
    if with_baselines:
        sigma = torch.linalg.svdvals(w)  # W's singular values, descending
        result["projection_norm_top_w"] = math.sqrt(float((sigma[:r] ** 2).sum()))
        g = torch.Generator().manual_seed(seed)
        u_rand, v_rand = random_orthonormal(w.shape[0], r, g), random_orthonormal(w.shape[1], r, g)
        result["projection_norm_random"] = float(torch.linalg.matrix_norm(u_rand.T @ w @ v_rand))
    return result
