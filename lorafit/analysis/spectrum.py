"""The singular values and vectors of a LoRA update ΔW = scale · B A, from the small factors only.

LoRA paper (Hu et al. 2021), section 7: the analysis of ΔW (its rank, its top directions, how it
relates to W) starts from ΔW's SVD. ΔW is (d_out, d_in) but has rank <= r, so its SVD costs
O((d_out + d_in) r^2 + r^3) through two thin QRs and one r x r SVD; a dense d x d SVD is never formed:

    B  = Q_B R_B        Q_B: (d_out, k_out) orthonormal columns, R_B: (k_out, r)    k_out = min(d_out, r)
    Aᵀ = Q_A R_A        Q_A: (d_in, k_in)  orthonormal columns, R_A: (k_in, r)      k_in  = min(d_in, r)
    ΔW = scale · Q_B (R_B R_Aᵀ) Q_Aᵀ
    M  = scale · R_B R_Aᵀ = U_M S V_Mᵀ           (k_out, k_in): the only SVD, at most r x r
    ΔW = (Q_B U_M) S (Q_A V_M)ᵀ = U S Vᵀ         U: (d_out, k), V: (d_in, k), k = min(k_out, k_in)

U and V have orthonormal columns because Q_B and Q_A do and U_M, V_M are orthogonal. Everything is
computed in float64 (the factors are small) and returned as float64.

Energy is the squared Frobenius norm: ||ΔW||_F^2 = sum_i s_i^2. The effective rank at a fraction p
is the smallest k whose top-k singular values hold >= p of it; by Eckart-Young that is the smallest
rank whose best approximation keeps that much of ΔW (truncate.py builds it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ENERGY_LEVELS = (0.90, 0.99)


@dataclass
class FactorSVD:
    """ΔW = U diag(s) Vᵀ with s descending; U (d_out, k), s (k,), V (d_in, k), k = min(r, d_out, d_in)."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor


def factor_svd(a: torch.Tensor, b: torch.Tensor, scale: float) -> FactorSVD:
    """SVD of scale · B A for A (r, d_in), B (d_out, r), through QR of B and Aᵀ and an r x r SVD."""
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    q_b, r_b = torch.linalg.qr(b64, mode="reduced")  # (d_out, k_out), (k_out, r)
    q_a, r_a = torch.linalg.qr(a64.T, mode="reduced")  # (d_in, k_in), (k_in, r)
    core = scale * (r_b @ r_a.T)  # (k_out, k_in)
    u_m, s, vh_m = torch.linalg.svd(core, full_matrices=False)  # (k_out, k), (k,), (k, k_in)
    return FactorSVD(u=q_b @ u_m, s=s, v=q_a @ vh_m.T)


def dense_svd(delta: torch.Tensor) -> FactorSVD:
    """SVD of a dense update ΔW (d_out, d_in) in float64: for DoRA, whose W' - W is not a low-rank product."""
    u, s, vh = torch.linalg.svd(delta.detach().to(torch.float64), full_matrices=False)
    return FactorSVD(u=u, s=s, v=vh.T)


def frobenius_norm(s: torch.Tensor) -> float:
    """||ΔW||_F = sqrt(sum s_i^2)."""
    return math.sqrt(float((s.to(torch.float64) ** 2).sum()))


def energy_fractions(s: torch.Tensor) -> list[float]:
    """Cumulative share of ||ΔW||_F^2 held by the top-1, top-2, ... singular values (all 0 for ΔW = 0)."""
    energy = s.to(torch.float64) ** 2
    total = float(energy.sum())
    if total == 0.0:
        return [0.0] * len(s)
    return [float(x) for x in torch.cumsum(energy, 0) / total]


def effective_rank(s: torch.Tensor, level: float) -> int:
    """Smallest k with sum_{i<=k} s_i^2 >= level · sum_i s_i^2; 0 for ΔW = 0."""
    if not 0.0 < level <= 1.0:
        raise ValueError(f"energy level must be in (0, 1], got {level}")
    fractions = energy_fractions(s)
    if not fractions or fractions[-1] == 0.0:
        return 0
    for k, fraction in enumerate(fractions, start=1):
        if fraction >= level - 1e-12:  # tolerance: level 1.0 must be reachable despite rounding
            return k
    return len(fractions)


def spectrum_summary(s: torch.Tensor) -> dict:
    """What the report shows of one ΔW: norm, singular values, energy curve, effective ranks."""
    return {
        "norm": frobenius_norm(s),
        "singular_values": [float(x) for x in s],
        "energy": energy_fractions(s),
        **{f"rank{round(level * 100)}": effective_rank(s, level) for level in ENERGY_LEVELS},
    }
