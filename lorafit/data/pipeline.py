"""The one data path of `lorafit train`: rows -> (cached) tokens -> lazy training sequences.

    rows        data.source read by datasets (tasks/dataset.py), or a named task's parser output
                (e2e, wikisql, glue/*, quickstart, text with *_file) turned into the same normalised columns
    tokens      cache.tokenised: one Arrow file per split, keyed by everything the tokens depend on
    selection   validation carved from train (data.valid_fraction), seeded subsets (max_*_examples),
                rows too long dropped -- all as int64 index arrays, nothing copied
    sequences   lazy.EncodedRows: what fit() iterates, rows read on demand

Subsets are drawn over every example before the too-long ones are dropped, exactly as the list path did,
so a named task gives the same examples, token ids and labels as before (tests/test_data_pipeline.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lorafit.data.batches import subsample
from lorafit.data.cache import CacheInfo, _scratch, tokenised
from lorafit.data.formats import Format
from lorafit.data.lazy import EncodedRows
from lorafit.errors import DataError
from lorafit.recipe import Recipe
from lorafit.tasks import task_data_dir
from lorafit.tasks.types import ClassificationExample, Task

DROP_REASONS = {1: "too long for data.max_length (completion leaves < 8 prompt tokens, or no assistant token left)"}


@dataclass
class SplitData:
    """One split after tokenising: every example (`all`, dropped ones included) and the cache entry."""

    all: EncodedRows
    cache: CacheInfo
    name: str


@dataclass
class Prepared:
    train: EncodedRows
    valid: EncodedRows
    counts: dict
    caches: dict = field(default_factory=dict)  # split -> CacheInfo
    fmt: Format | None = None


def examples_format(task: Task) -> Format:
    """The normalised format a named task's examples already are."""
    if task.kind == "generation":
        return Format("completion", prompt_field="prompt", completion_field="completion")
    return Format("classification", text_field="text", text_pair_field="text_pair", label_field="label",
                  num_labels=task.num_labels)


def examples_rows(examples: list):
    """A named task's examples as a datasets.Dataset of normalised columns (one row per example)."""
    import datasets

    if examples and isinstance(examples[0], ClassificationExample):
        columns = {"text": [e.text for e in examples], "text_pair": [e.text_pair for e in examples],
                   "label": [e.label for e in examples]}
    else:
        columns = {"prompt": [e.prompt for e in examples], "completion": [e.completion for e in examples]}
    return datasets.Dataset.from_dict({**columns, "row": list(range(len(examples)))})


def content_fingerprint(examples: list) -> str:
    """A hash of parsed examples (named tasks: their files are small; parsing is cheap, tokenising is not)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(repr(e).encode())
    return h.hexdigest()[:20]


def tokenise_split(recipe: Recipe, task: Task, tokenizer, split: str, *, use_cache: bool) -> SplitData | None:
    """The split tokenised (from the cache when it can be), or None when the task has no such split."""
    options = recipe.data
    num_proc = options.num_proc
    if options.source:
        from lorafit.tasks.dataset import normalised_split, source_format

        spec, fmt = source_format(options, task_data_dir(task, recipe.data_dir))
        if split not in spec.splits:
            return None
        if fmt.encoder == "chat":
            from lorafit.data.chat import check_template

            check_template(tokenizer)
        parts = {"source": spec.fingerprint(), "split": split}

        def build():
            return normalised_split(spec, fmt, split, cache_file=str(_scratch() / "rows.arrow"))
    else:
        if split not in task.splits:
            return None
        examples = task.load_train(task_data_dir(task, recipe.data_dir), split, options)
        if not options.valid_fraction:
            # parsed lists are in memory anyway: tokenise only the seeded subset (the same one select() takes)
            limit = options.max_train_examples if split == "train" else options.max_valid_examples
            examples = subsample(examples, limit, recipe.seed)
        fmt = examples_format(task)
        parts = {"task": task.name, "examples": content_fingerprint(examples), "split": split}

        def build():
            return examples_rows(examples)

    dataset, info = tokenised(parts, build, fmt, tokenizer, options.max_length, use_cache=use_cache,
                              num_proc=num_proc, desc=f"tokenise {split}")
    return SplitData(EncodedRows(dataset), info, split)


def select(rows: EncodedRows, positions, limit: int | None, seed: int) -> tuple[EncodedRows, dict]:
    """Seeded subset of `positions` (as the list path: over all examples), then drop the too-long ones."""
    chosen = np.asarray(subsample(range(len(positions)), limit, seed), dtype=np.int64)
    picked = rows.subset(np.asarray(positions, dtype=np.int64)[chosen])
    dropped = picked.column("dropped")
    kept = picked.subset(np.flatnonzero(dropped == 0))
    return kept, {"examples": len(kept), "truncated": int(kept.column("truncated").sum()),
                  "skipped": int((dropped != 0).sum())}


def quiet_progress() -> None:
    """datasets' progress bars on a terminal only (a log file gets the counts line instead)."""
    import sys

    import datasets

    if not sys.stderr.isatty():
        datasets.disable_progress_bars()


def prepare(recipe: Recipe, task: Task, tokenizer, *, use_cache: bool = True) -> Prepared:
    """Training and validation sequences for `recipe`, with counts for the log."""
    options = recipe.data
    use_cache = use_cache and options.cache
    quiet_progress()
    train_split = options.train_split if options.source else "train"
    valid_split = (options.valid_split or recipe.eval.split) if options.source else recipe.eval.split
    train = tokenise_split(recipe, task, tokenizer, train_split, use_cache=use_cache)
    if train is None:
        raise DataError(f"task {task.name}: no {train_split!r} split to train on")
    all_train = np.arange(len(train.all))
    caches = {"train": train.cache}
    if options.valid_fraction > 0:
        from lorafit.tasks.dataset import carved_rows

        source_rows = train.all.column("row")
        carved = carved_rows(int(source_rows.max()) + 1 if len(source_rows) else 0, options.valid_fraction)
        in_valid = np.isin(source_rows, carved)
        valid_rows, valid_positions = train.all, np.flatnonzero(in_valid)
        all_train = np.flatnonzero(~in_valid)
    else:
        valid = tokenise_split(recipe, task, tokenizer, valid_split, use_cache=use_cache) if valid_split != train_split else None
        if valid is None and options.valid_split:
            raise DataError(f"data.valid_split: the source has no split {options.valid_split!r}")
        if valid is not None:
            caches["valid"] = valid.cache
        valid_rows = valid.all if valid is not None else train.all
        valid_positions = np.arange(len(valid.all)) if valid is not None else np.zeros(0, dtype=np.int64)
    train_seq, train_counts = select(train.all, all_train, options.max_train_examples, recipe.seed)
    valid_seq, valid_counts = select(valid_rows, valid_positions, options.max_valid_examples, recipe.seed)
    if len(train_seq) == 0:
        raise DataError(f"task {task.name}: no training example left ({train_counts['skipped']} too long for "
                        f"data.max_length {options.max_length})")
    counts = {f"{name}_{k}": v for name, c in (("train", train_counts), ("valid", valid_counts)) for k, v in c.items()}
    return Prepared(train_seq, valid_seq, counts, caches)


def cache_line(prepared: Prepared) -> str:
    """'data cache: <dir> (hit)' lines for the log: where the tokens are, and whether they were reused."""
    seen = []
    for split, info in prepared.caches.items():
        state = "reused" if info.hit else "written" if info.path.parent.name == "data" else "not kept (--no-cache)"
        seen.append(f"{split} {Path(info.path)} ({state})")
    return "data cache: " + "; ".join(seen)
