"""PNG figures of an analysis report (matplotlib, headless Agg backend).

- spectra.png: every layer's singular values of ΔW (log scale) and cumulative energy, one color per target;
- norms.png:   ||ΔW||_F by layer index, one bar per target;
- phi.png:     subspace similarity phi(i, j) heatmaps (LoRA paper Fig. 3 / 4): the mean over shared layers,
               then per target its middle layer (the paper shows layer 48 of 96).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from lorafit.runs.plots import save_figure  # noqa: E402


def _colors(records: list[dict]) -> dict[str, str]:
    targets = list(dict.fromkeys(r["target"] for r in records))
    return {t: f"C{i % 10}" for i, t in enumerate(targets)}


def plot_spectra(report: dict, path: Path) -> Path:
    """Left: s_i of every layer (log); right: share of ||ΔW||_F^2 in the top-k, with 90 % / 99 % lines."""
    records = report["layers"]
    colors = _colors(records)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    seen = set()
    for r in records:
        ks = range(1, len(r["singular_values"]) + 1)
        label = r["target"] if r["target"] not in seen else None
        seen.add(r["target"])
        values = [max(v, 1e-12) for v in r["singular_values"]]
        left.plot(ks, values, color=colors[r["target"]], alpha=0.55, linewidth=1, marker=".", label=label)
        right.plot(ks, r["energy"], color=colors[r["target"]], alpha=0.55, linewidth=1, label=label)
    left.set_yscale("log")
    left.set(xlabel="index i", ylabel="singular value s_i of ΔW", title="spectrum per layer")
    for level in (0.9, 0.99):
        right.axhline(level, color="grey", linestyle=":", linewidth=1)
    right.set(xlabel="rank k", ylabel="energy kept (top-k)", title="cumulative energy", ylim=(0, 1.02))
    left.legend(fontsize=8)
    fig.suptitle(f"{report['adapter']} (rank {report['rank']})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_norms(report: dict, path: Path) -> Path:
    """||ΔW||_F per layer index, grouped bars by target (layers outside blocks are left out)."""
    records = [r for r in report["layers"] if r["depth"] is not None]
    colors = _colors(report["layers"])
    targets = list(colors)
    width = 0.8 / max(len(targets), 1)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    for i, target in enumerate(targets):
        mine = [r for r in records if r["target"] == target]
        ax.bar([r["depth"] + (i - (len(targets) - 1) / 2) * width for r in mine], [r["norm"] for r in mine],
               width=width, color=colors[target], label=target)
    ax.set(xlabel="layer index", ylabel="||ΔW||_F", title=f"update norm by layer: {report['adapter']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_phi(report: dict, path: Path) -> Path:
    """Heatmaps of phi(i, j): the mean over layers, then one middle layer per target."""
    compare = report["compare"]
    layers = report["layers"]
    panels = [("mean over layers", compare["mean"]["matrix"])]
    for target in dict.fromkeys(r["target"] for r in layers):
        mine = [r for r in layers if r["target"] == target and r["name"] in compare["layers"]]
        mine.sort(key=lambda r: (r["depth"] is None, r["depth"] or 0))  # file order is not depth order
        if mine:
            name = mine[len(mine) // 2]["name"]
            panels.append((name, compare["layers"][name]["matrix"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), dpi=110, squeeze=False,
                             layout="constrained")
    for n, (ax, (title, matrix)) in enumerate(zip(axes[0], panels, strict=True)):
        rows, cols = len(matrix), len(matrix[0])
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto",
                          extent=(0.5, cols + 0.5, 0.5, rows + 0.5))
        ax.set(title=title, xlabel=f"j (r={compare['ranks'][1]})", ylabel=f"i (r={compare['ranks'][0]})" if n == 0 else "")
        ax.title.set_fontsize(8)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="phi(i, j)")
    fig.suptitle(f"phi ({compare['side']} side): {report['adapter']} vs {compare['other']}", fontsize=8)
    return save_figure(fig, path)


def plot_report(report: dict, directory: Path) -> list[Path]:
    """All figures the report has data for, written into `directory`."""
    paths = [plot_spectra(report, directory / "spectra.png"), plot_norms(report, directory / "norms.png")]
    if "compare" in report:
        paths.append(plot_phi(report, directory / "phi.png"))
    return paths
