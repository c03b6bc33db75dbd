"""How A and B start: random A with zero B (the paper's), or factors of the base weight W itself.

    kaiming, gaussian   A random, B = 0: B A = 0, the untrained adapter is the identity.
    pissa               (Meng et al. 2024) the top-r SVD of W: W = U S V^T, B = U_r sqrt(S_r / s),
                        A = sqrt(S_r / s) V_r^T, so s B A is W's best rank-r approximation;
    pissa_niter_K       the same from torch.svd_lowrank with K subspace iterations (fast, randomised);
    olora               (Büyükakyüz 2024) the QR of W: B = Q[:, :r], A = R[:r].

For the last three the base weight is replaced by the residual W - s B A while training, so the model
starts exactly where the base is; `lorafit.lora.adapter.save_adapter` converts the trained adapter back
to one that applies to the original W (PEFT's `path_initial_model_for_weight_conversion`). Facts from
PEFT's `LoraLayer.pissa_init` / `olora_init`; shapes W (d_out, d_in), A (rank, d_in), B (d_out, rank).
"""

from __future__ import annotations

import math
import re

import torch

BASE_INITS = ("pissa", "olora")  # and pissa_niter_K: inits that take A and B from W
NITER = re.compile(r"pissa_niter_(\d+)")


def init_problem(init: str) -> str | None:
    """None for a known init, else what is wrong (for the recipe and adapter_config.json checks)."""
    if init in ("kaiming", "gaussian", "pissa", "olora") or NITER.fullmatch(init):
        return None
    return f"must be 'kaiming', 'gaussian', 'pissa', 'pissa_niter_K' (K an integer) or 'olora', got {init!r}"


def uses_base_weight(init: str) -> bool:
    """True for the inits that factor W (and replace it by the residual while training)."""
    return init in BASE_INITS or NITER.fullmatch(init) is not None


def random_factors(init: str, rank: int, d_in: int, d_out: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (rank, d_in) random, B (d_out, rank) zero, in `like`'s dtype and device.

    kaiming: kaiming_uniform(a=sqrt(5)), nn.Linear's default (PEFT, loralib); gaussian: N(0, 1/rank).
    """
    a = like.new_empty(rank, d_in)
    if init == "kaiming":
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    elif init == "gaussian":
        torch.nn.init.normal_(a, std=1 / rank)
    else:
        raise ValueError(f"unknown random init {init!r}")
    return a, like.new_zeros(d_out, rank)


@torch.no_grad()
def base_factors(init: str, weight: torch.Tensor, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A (rank, d_in), B (d_out, rank) in fp32 from weight (d_out, d_in) for pissa / pissa_niter_K / olora."""
    w = weight.float()
    if init == "olora":
        q, r = torch.linalg.qr(w)  # w = Q R, Q (d_out, k), R (k, d_in)
        return r[:rank].contiguous(), q[:, :rank].contiguous()
    if init == "pissa":
        u, s, vh = torch.linalg.svd(w, full_matrices=False)  # w = U diag(S) V^T
        u_r, s_r, vh_r = u[:, :rank], s[:rank] / scale, vh[:rank]
    else:
        found = NITER.fullmatch(init)
        if found is None:
            raise ValueError(f"unknown init {init!r}")
        u_r, s_r, v_r = torch.svd_lowrank(w, rank, niter=int(found.group(1)))
        s_r, vh_r = s_r / scale, v_r.T
    root = torch.diag(torch.sqrt(s_r))  # split sqrt(S_r / s) between the two factors, as PEFT does
    return root @ vh_r, u_r @ root
