"""Loss curves as PNG files (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.ticker import MaxNLocator  # noqa: E402


def curves(history: list[dict]) -> tuple[list, list, list, list]:
    """(train steps, train losses, valid steps, valid losses) from metrics records."""
    train = [(r["step"], r["loss"]) for r in history if r.get("loss") is not None]
    valid = [(r["step"], r["valid_loss"]) for r in history if r.get("valid_loss") is not None]
    return [s for s, _ in train], [v for _, v in train], [s for s, _ in valid], [v for _, v in valid]


def plot_runs(runs: dict[str, list[dict]], path: Path, title: str = "loss") -> Path:
    """One figure with the training (solid) and validation (dashed, dots) loss of each run.

    With one run the legend says just "train" / "validation" (the title names the run) and the first
    and last validation losses are written on the plot, the two numbers a reader looks for. Several
    runs get a color each (solid: train, dashed: validation); the legend names them.
    """
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    single = len(runs) == 1
    for i, (name, history) in enumerate(runs.items()):
        train_color, valid_color = ("C0", "C1") if single else (f"C{i % 10}", f"C{i % 10}")
        prefix = "" if single else f"{name} "
        ts, tl, vs, vl = curves(history)
        if ts:
            ax.plot(ts, tl, color=train_color, linewidth=1.6, label=f"{prefix}train")
        if vs:
            ax.plot(vs, vl, color=valid_color, linestyle="--", linewidth=1.4, marker="o", markersize=5,
                    label=f"{prefix}validation")
            if single:
                annotate(ax, vs[0], vl[0], valid_color, "left")
                if len(vs) > 1:
                    annotate(ax, vs[-1], vl[-1], valid_color, "right")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per target token")
    ax.set_title(title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    if ax.lines:
        ax.legend(fontsize=9, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: Path, dpi: float | None = None) -> Path:
    """Write `fig` to `path` (PNG) and close it. The file appears complete or not at all (a temp file
    beside it, then a rename), and missing parent directories are made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path


def annotate(ax, step: float, loss: float, color: str, side: str) -> None:
    """Write a validation loss next to its point (`side`: which side of the point the text sits on)."""
    ax.annotate(f"{loss:.3f}", (step, loss), textcoords="offset points", xytext=(6 if side == "left" else -6, 8),
                ha="left" if side == "left" else "right", fontsize=9, color=color)
