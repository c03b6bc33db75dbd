"""Cut an adapter to rank K: the best rank-K approximation of every ΔW, written as a PEFT adapter.

By Eckart-Young, the best rank-K approximation of ΔW = U diag(s) Vᵀ (spectrum.py) in Frobenius (and
spectral) norm is ΔW_K = U_K diag(s_K) V_Kᵀ, with error ||ΔW - ΔW_K||_F^2 = sum_{i>K} s_i^2; the
energy kept is sum_{i<=K} s_i^2 / sum_i s_i^2 (LoRA paper, section 7.2: the top directions carry the
adaptation, the rest is mostly noise).

New factors, split evenly so neither is tiny or huge (as a trained pair tends to be):

    A' = sqrt(S_K) V_Kᵀ                (K, d_in)
    B' = U_K sqrt(S_K) / scale'        (d_out, K)      so that scale' · B' A' = ΔW_K

The new scale is kept equal to the old one (scale' = scale), which fixes lora_alpha for r = K:
lora_alpha' = scale · K (scale · sqrt(K) with use_rslora). Training the cut adapter further then has the
same effective learning rate per factor entry. Everything else in adapter_config.json is kept; all
tensors other than lora_A / lora_B (saved heads, base_layer biases) are copied unchanged, and so is the
safetensors header, plus `lorafit_truncated` (JSON: source rank, new rank, energy kept).

A layer narrower than K (min(d_out, d_in) < K) or with fewer than K non-zero singular values gets
zero-padded factors: the same ΔW, in PEFT's uniform-rank layout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from lorafit.analysis.factors import A_SUFFIX, B_SUFFIX, PREFIX, AdapterFactors
from lorafit.analysis.spectrum import FactorSVD, factor_svd
from lorafit.errors import AdapterError
from lorafit.lora import CONFIG_NAME, WEIGHTS_NAME, safetensors_os_errors
from lorafit.runs.atomic import atomic_directory


def truncated_factors(svd: FactorSVD, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A' (rank, d_in), B' (d_out, rank)) with scale · B' A' the best rank-`rank` approximation of ΔW."""
    k = min(rank, svd.s.shape[0])
    root = svd.s[:k].sqrt()  # sqrt(S_K)
    a = torch.zeros(rank, svd.v.shape[0], dtype=torch.float64)
    b = torch.zeros(svd.u.shape[0], rank, dtype=torch.float64)
    a[:k] = root[:, None] * svd.v[:, :k].T  # sqrt(S_K) V_Kᵀ
    b[:, :k] = svd.u[:, :k] * root[None, :] / scale  # U_K sqrt(S_K) / scale
    return a, b


def energy_kept(s: torch.Tensor, rank: int) -> float:
    """sum_{i<=rank} s_i^2 / sum_i s_i^2 (1.0 for ΔW = 0: nothing was lost)."""
    energy = s.to(torch.float64) ** 2
    total = float(energy.sum())
    return float(energy[:rank].sum()) / total if total > 0 else 1.0


def truncated_alpha(scale: float, rank: int, rslora: bool) -> float:
    """lora_alpha for r = rank that keeps `scale` (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)."""
    alpha = scale * (math.sqrt(rank) if rslora else rank)
    return int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 else alpha


def truncate_adapter(factors: AdapterFactors, rank: int, output: str | Path, svds: dict[str, FactorSVD] | None = None) -> dict:
    """Write the rank-`rank` adapter into `output` (a new or empty directory); returns the energy kept.

    `svds` (module path -> FactorSVD) reuses SVDs already computed. The directory appears complete or
    not at all (written beside it, then renamed).
    """
    output = Path(output)
    if rank < 1 or rank > factors.rank:
        raise AdapterError(f"--truncate-rank: must be between 1 and the adapter's rank {factors.rank}, got {rank}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise AdapterError(f"{output}: already exists and is not an empty directory; choose another output")
    svds = svds or {}
    tensors = dict(factors.other)
    layers, kept_total, energy_total = [], 0.0, 0.0
    for layer in factors.layers:
        svd = svds.get(layer.name) or factor_svd(layer.a, layer.b, layer.scale)
        a, b = truncated_factors(svd, rank, factors.scale)
        dtype = layer.a.dtype
        tensors[PREFIX + layer.name + A_SUFFIX] = a.to(dtype).contiguous()
        tensors[PREFIX + layer.name + B_SUFFIX] = b.to(dtype).contiguous()
        energy = float((svd.s**2).sum())
        kept = energy_kept(svd.s, rank)
        kept_total += kept * energy
        energy_total += energy
        layers.append({"name": layer.name, "energy_kept": kept})
    overall = kept_total / energy_total if energy_total > 0 else 1.0
    config = dict(factors.config)
    config["r"] = rank
    config["lora_alpha"] = truncated_alpha(factors.scale, rank, bool(config.get("use_rslora", False)))
    note = {"from_rank": factors.rank, "rank": rank, "energy_kept": overall, "source": str(factors.directory)}
    header = {"format": "pt", **factors.metadata, "lorafit_truncated": json.dumps(note, sort_keys=True)}
    _write_atomic(output, tensors, header, config)
    return {"directory": str(output), "rank": rank, "from_rank": factors.rank, "lora_alpha": config["lora_alpha"],
            "energy_kept": overall, "layers": layers}


def _write_atomic(output: Path, tensors: dict[str, torch.Tensor], header: dict[str, str], config: dict) -> None:
    """Both files written into a temporary directory that replaces `output` in one step
    (runs/atomic.py): no half-written adapter, an existing one intact on failure."""
    with atomic_directory(output) as tmp, safetensors_os_errors():
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=header)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
