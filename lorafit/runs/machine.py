"""The machine a run or benchmark ran on (summary.json), so timings are compared like with like."""

from __future__ import annotations

import platform

import psutil
import torch


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | None = None) -> dict:
    """Versions and CPU facts recorded in summary.json, so timings can be compared across machines;
    with `device`, the device the run computed on ("cpu" or the GPU's name)."""
    import transformers

    from lorafit.models.device import device_name

    return {
        **({"device": device_name(device)} if device is not None else {}),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_name(),
        "cores": psutil.cpu_count(logical=True),
        "threads": torch.get_num_threads(),
    }
