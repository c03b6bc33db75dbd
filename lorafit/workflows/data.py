"""`lorafit data RECIPE`: what the model will train on, before any training.

    recipe -> task -> tokenizer (no model weights) -> data/pipeline.prepare (the cache, as train uses it)
        -> rows per split, truncated / dropped and why, token-length histogram (terminal + PNG),
           the first training example with its loss mask (prompt tokens dimmed)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lorafit.console import Reporter
from lorafit.data.batches import IGNORE_INDEX
from lorafit.recipe import Recipe

BAR = 40  # characters of the longest histogram bar


def histogram_lines(lengths: np.ndarray, bins: int = 12) -> list[str]:
    """A text histogram of token lengths: one line per bin, `  lo-hi  count  ████`."""
    if len(lengths) == 0:
        return ["  (no examples)"]
    lo, hi = int(lengths.min()), int(lengths.max())
    edges = np.unique(np.linspace(lo, hi + 1, bins + 1).round().astype(int))  # integer bins [a, b)
    counts, _ = np.histogram(lengths, bins=edges)
    top = max(int(counts.max()), 1)
    width = len(str(hi))
    labels = [f"{a}" if b - a == 1 else f"{a}-{b - 1}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return [f"  {label:>{2 * width + 1}}  {int(c):>8}  {'█' * round(BAR * c / top)}"
            for label, c in zip(labels, counts, strict=True)]


def plot_lengths(lengths: dict[str, np.ndarray], max_length: int, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    from lorafit.runs.plots import save_figure  # also selects the headless Agg backend

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split, values in lengths.items():
        if len(values):
            ax.hist(values, bins=40, alpha=0.6, label=f"{split} ({len(values):,})")
    ax.axvline(max_length, color="red", linestyle="--", linewidth=1, label=f"data.max_length {max_length}")
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def masked_text(tokenizer, example):
    """The example as rich Text: tokens outside the loss dimmed, trained tokens bold."""
    from rich.text import Text

    text = Text()
    labels = example.labels or (IGNORE_INDEX,) * len(example)
    for token, label in zip(example.input_ids, labels, strict=True):
        piece = tokenizer.decode([token])
        text.append(piece, style="bold green" if label != IGNORE_INDEX else "dim")
    return text


def plot_path(recipe: Recipe, prepared, plot: Path | None) -> Path | None:
    """Where the histogram goes: `plot` when given, else beside the train split's data cache (None when the
    cache is not kept: --no-cache writes nothing that outlives the command, and the working directory is
    not ours to fill)."""
    if plot is not None:
        return plot
    train = prepared.caches.get("train")
    kept = train is not None and (train.hit or train.path.parent.name == "data")
    return train.path / f"lengths-{recipe.name}.png" if kept else None


def show_data(recipe: Recipe, reporter: Reporter, *, use_cache: bool = True, plot: Path | None = None,
              draw: bool = True) -> dict:
    """Prepare the recipe's data as `lorafit train` would and report on it; returns the --json summary.

    `draw`: write the token-length histogram PNG, to `plot` or beside the data cache (plot_path)."""
    from lorafit.data.pipeline import cache_line, prepare
    from lorafit.models import load_tokenizer, resolve_model
    from lorafit.train.setup import load_task

    task = load_task(recipe)
    tokenizer = load_tokenizer(resolve_model(recipe.model))
    prepared = prepare(recipe, task, tokenizer, use_cache=use_cache)
    c = prepared.counts
    source = recipe.data.source or recipe.data.train_file or task.name
    if isinstance(source, dict):  # files per split
        source = "; ".join(f"{split}: {', '.join([files] if isinstance(files, str) else files)}" for split, files in source.items())
    reporter.info(f"{recipe.name}: task {task.name} ({task.kind}) from {source}, max_length {recipe.data.max_length}")
    reporter.info(cache_line(prepared))
    rows = [[split, c[f"{split}_examples"], c[f"{split}_truncated"], c[f"{split}_skipped"]] for split in ("train", "valid")]
    reporter.table("examples per split (after data.max_*_examples)", ["split", "examples", "truncated", "dropped"], rows)
    why = []
    if c["train_truncated"] or c["valid_truncated"]:
        why.append("truncated: longer than data.max_length; " + (
            "a completion's prompt is cut from the left" if task.kind == "generation" else "cut by the tokenizer")
            + "; a chat conversation is cut at the end")
    if c["train_skipped"] or c["valid_skipped"]:
        why.append("dropped: too long even when cut (a completion leaving < 8 prompt tokens, or no assistant token "
                   "left in a conversation); raise data.max_length to keep them")
    for line in why:
        reporter.info(line)
    lengths = {"train": np.asarray(prepared.train.lengths), "valid": np.asarray(prepared.valid.lengths)}
    for split, values in lengths.items():
        if len(values):
            reporter.info(f"\n{split} token lengths: min {values.min()}, median {int(np.median(values))}, "
                          f"p95 {int(np.percentile(values, 95))}, max {values.max()}")
            for line in histogram_lines(values):
                reporter.info(line)
    target = plot_path(recipe, prepared, plot) if draw else None
    png = plot_lengths(lengths, recipe.data.max_length, target, f"{recipe.name}: token lengths") if target else None
    if png:
        reporter.info(f"\nhistogram: {png}")
    elif draw:
        reporter.info("\nhistogram: not written (no data cache is kept to put it beside; use --plot FILE.png)")
    first = prepared.train[0]
    if not reporter.quiet:
        if first.labels is None:  # classification: the whole text is input, the label is what is learned
            reporter.info(f"\nfirst training example ({len(first)} tokens):")
            reporter.console.print(tokenizer.decode(first.input_ids), markup=False)
            reporter.info(f"label: {first.target}")
        else:
            trained = sum(1 for t in first.labels if t != IGNORE_INDEX)
            reporter.info(f"\nfirst training example ({len(first)} tokens, {trained} trained; dim: not in the loss):")
            reporter.console.print(masked_text(tokenizer, first))
            learned = tokenizer.decode([t for t in first.labels if t != IGNORE_INDEX])
            reporter.info(f"\ntrained on: {learned!r}")
    return {"task": task.name, "kind": task.kind, **c, "caches": {k: str(v.path) for k, v in prepared.caches.items()},
            "cache_hit": {k: v.hit for k, v in prepared.caches.items()}, "plot": str(png) if png else None,
            "lengths": {k: {"min": int(v.min()), "max": int(v.max()), "mean": float(v.mean())} for k, v in lengths.items() if len(v)}}
