"""Normalised subspace similarity between two adapters, layer by layer (LoRA paper, section 7.2, eq. 4).

    phi(A1, A2, i, j) = ||U1[:, :i]ᵀ U2[:, :j]||_F^2 / min(i, j)   in [0, 1]

U1, U2 hold orthonormal singular vectors ordered by singular value; U[:, :i] spans the top-i
directions. 1 means the smaller of the two subspaces lies inside the other, 0 that they are orthogonal.

Which singular vectors (`side`):
- "input" (the paper's choice, Fig. 3 and 4): the right-singular vectors of the factor A (r, d_in),
  i.e. directions in the layer's input space, ordered by A's own singular values.
- "output": the left-singular vectors of the factor B (d_out, r), directions in the output space.
Both SVDs are of a thin r x d factor (never d x d).

For two independent subspaces, one of them uniformly random (e.g. the row space of a Gaussian A),
E[P2] = (j/d) I for the projection P2 = U2 U2ᵀ onto a uniformly random j-dimensional subspace, so
E||U1ᵀ U2||_F^2 = trace(U1ᵀ E[P2] U1) = i j / d and E[phi(i, j)] = max(i, j) / d: the baseline a
learned similarity should be read against (tests/test_analysis.py checks it by sampling).
"""

from __future__ import annotations

import torch

from lorafit.analysis.factors import AdapterFactors, LayerFactors
from lorafit.errors import AdapterError

SIDES = ("input", "output")


def singular_basis(layer: LayerFactors, side: str = "input") -> torch.Tensor:
    """Orthonormal columns, top singular direction first: A's right vectors (d_in, k) or B's left (d_out, k)."""
    if side == "input":
        _, _, vh = torch.linalg.svd(layer.a.detach().to(torch.float64), full_matrices=False)  # A = U S Vh, Vh (k, d_in)
        return vh.T
    if side == "output":
        u, _, _ = torch.linalg.svd(layer.b.detach().to(torch.float64), full_matrices=False)  # B = U S Vh, U (d_out, k)
        return u
    raise ValueError(f"side must be one of {SIDES}, got {side!r}")


def phi_matrix(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """phi[i-1, j-1] = ||u1[:, :i]ᵀ u2[:, :j]||_F^2 / min(i, j) for all i <= k1, j <= k2: (k1, k2).

    With G = u1ᵀ u2 (k1, k2), ||u1[:, :i]ᵀ u2[:, :j]||_F^2 is the sum of G^2 over the top-left i x j
    block: a 2-D cumulative sum.
    """
    if u1.shape[0] != u2.shape[0]:
        raise ValueError(f"bases live in different spaces: {tuple(u1.shape)} vs {tuple(u2.shape)}")
    g2 = (u1.T.to(torch.float64) @ u2.to(torch.float64)) ** 2
    block = g2.cumsum(0).cumsum(1)
    i = torch.arange(1, g2.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, g2.shape[1] + 1, dtype=torch.float64)[None, :]
    return block / torch.minimum(i, j)


def compare_adapters(first: AdapterFactors, second: AdapterFactors, side: str = "input") -> dict[str, torch.Tensor]:
    """phi matrices (r1, r2) for every layer both adapters adapt, in the first adapter's order.

    AdapterError when they share no layer, or a shared layer has different shapes (other base models).
    """
    others = second.layer_map()
    shared = [layer for layer in first.layers if layer.name in others]
    if not shared:
        raise AdapterError(
            f"{second.directory}: adapts none of the layers of {first.directory} (e.g. {first.layers[0].name}); "
            "compare adapters of the same base model and targets"
        )
    result = {}
    for layer in shared:
        other = others[layer.name]
        if layer.shape != other.shape:
            raise AdapterError(
                f"{second.directory}: {layer.name} has shape {other.shape}, {first.directory} has {layer.shape}; "
                "the adapters belong to different base models"
            )
        result[layer.name] = phi_matrix(singular_basis(layer, side), singular_basis(other, side))
    return result


def phi_summary(phi: torch.Tensor) -> dict:
    """The numbers a reader looks at in Fig. 3: phi(1,1), the diagonal phi(i,i), and the whole matrix."""
    k = min(phi.shape)
    return {
        "phi_1_1": float(phi[0, 0]),
        "diagonal": [float(phi[i, i]) for i in range(k)],
        "matrix": [[float(x) for x in row] for row in phi],
    }
