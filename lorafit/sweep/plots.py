"""A sweep's pictures: the objective against each swept key (one PNG per key), and the validation
curves of the best trials side by side (runs/plots.plot_runs)."""

from __future__ import annotations

from pathlib import Path

from lorafit.runs.plots import plot_runs, plt, save_figure
from lorafit.runs.rundir import read_metrics


def objective_plots(rows: list[dict], keys: list[str], objective: str, directory: Path) -> list[Path]:
    """objective-<key>.png for each swept key: complete trials as dots, pruned ones as grey crosses at
    their last reported value. Numbers spanning 10x or more get a log axis; other values are categories."""
    paths = []
    for key in keys:
        shown = [r for r in rows if r["objective"] is not None and key in r["params"] and r["state"] in ("complete", "pruned")]
        if not shown:
            continue
        values = [r["params"][key] for r in shown]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        categories = [] if numeric else sorted({str(v) for v in values})
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for state, style in (("complete", {"color": "C0", "marker": "o"}), ("pruned", {"color": "0.6", "marker": "x"})):
            xs = [r["params"][key] if numeric else categories.index(str(r["params"][key])) for r in shown if r["state"] == state]
            ys = [r["objective"] for r in shown if r["state"] == state]
            if xs:
                ax.scatter(xs, ys, label=state, **style)
        if numeric and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log", base=2 if all(isinstance(v, int) for v in values) else 10)
        if not numeric:
            ax.set_xticks(range(len(categories)), categories, rotation=15)
        ax.set_xlabel(key)
        ax.set_ylabel(objective)
        ax.set_title(f"{objective} by {key}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, frameon=False)
        fig.tight_layout()
        paths.append(save_figure(fig, directory / f"objective-{key}.png"))
    return paths


def curves_plot(best_rows: list[dict], directory: Path, sweep_dir: Path, objective: str) -> Path | None:
    """curves.png: training and validation loss of the given (best) trials."""
    runs = {}
    for row in best_rows:
        metrics = sweep_dir / row["run_dir"] / "metrics.jsonl" if row["run_dir"] else None
        if metrics is not None and metrics.is_file():
            runs[f"{row['number']:03d}"] = read_metrics(metrics)
    if not runs:
        return None
    return plot_runs(runs, directory / "curves.png", title=f"best {len(runs)} trials by {objective}")
