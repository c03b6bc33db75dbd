"""Where a command computes: the CPU or a CUDA GPU.

    compute_device("auto")   a CUDA GPU when torch sees one (and was built with CUDA), else the CPU

The choice comes from, in order: the caller's `requested` value (a recipe's `device` key), the
environment variable LORAFIT_DEVICE (for `lorafit eval` / `generate` / `serve`, and to force the CPU on
a GPU machine), then "auto". Everything downstream follows the model: batches, caches and sampling
read `next(model.parameters()).device`. The CPU-only fast paths (oneDNN-packed weights, fp32 attention
under bf16 autocast, the counter-based dropout mask) check the device themselves and step aside on a GPU.
"""

from __future__ import annotations

import os

import torch

from lorafit.errors import ModelError

DEVICES = ("auto", "cpu", "cuda")
ENV = "LORAFIT_DEVICE"


def compute_device(requested: str | None = None) -> torch.device:
    """The device to compute on: `requested` ("auto", "cpu", "cuda" or "cuda:N"), else $LORAFIT_DEVICE,
    else "auto" (the current CUDA GPU when one is usable, else the CPU). Asking for a GPU that is not
    there is a one-line error, never a silent fall-back to the CPU."""
    name = (requested or os.environ.get(ENV) or "auto").strip().lower()
    source = "device" if requested else ENV if os.environ.get(ENV) else "device"
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            built = "this torch has no CUDA support" if torch.version.cuda is None else "torch sees no CUDA GPU"
            raise ModelError(f"{source}: {name!r} asked for, but {built} (use auto or cpu; docs/gpu.md)")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ModelError(f"{source}: {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(name)
    raise ModelError(f"{source}: {name!r} is not a device; choose one of {', '.join(DEVICES)} (or cuda:N)")


def device_name(device: torch.device) -> str:
    """A device as summary.json records it: "cpu", or "cuda:0 (NVIDIA H100 80GB HBM3)"."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
