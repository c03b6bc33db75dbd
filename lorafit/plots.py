"""Loss curves as PNG files (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def curves(history: list[dict]) -> tuple[list, list, list, list]:
    """(train steps, train losses, valid steps, valid losses) from metrics records."""
    train = [(r["step"], r["loss"]) for r in history if "loss" in r and r.get("loss") is not None]
    valid = [(r["step"], r["valid_loss"]) for r in history if r.get("valid_loss") is not None]
    return [s for s, _ in train], [v for _, v in train], [s for s, _ in valid], [v for _, v in valid]


def plot_runs(runs: dict[str, list[dict]], path: Path, title: str = "loss") -> Path:
    """One figure with the training (solid) and validation (dashed, markers) loss of each run."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i, (name, history) in enumerate(runs.items()):
        color = f"C{i % 10}"
        ts, tl, vs, vl = curves(history)
        if ts:
            ax.plot(ts, tl, color=color, label=f"{name} train")
        if vs:
            ax.plot(vs, vl, color=color, linestyle="--", marker="o", markersize=3, label=f"{name} validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per target token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
