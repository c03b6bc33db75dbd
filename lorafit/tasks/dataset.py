"""`task: text` with `data.source`: a user's dataset of any size, in any format `datasets` reads.

The rows are read by lorafit/data/source.py and normalised by lorafit/data/formats.py; training data goes
through the cached, lazy pipeline (lorafit/data/pipeline.py) and never becomes Python lists. This module
gives the Task record: its kind (from data.format), and the eval items (small: the eval split) for
`lorafit eval`, `eval.at_end` and `eval.show_examples`.

Validation carved out of train (`data.valid_fraction`) takes whole source rows, chosen with a fixed seed
(the same rows in every run, whatever `seed:` says, so runs are compared on the same rows).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np

from lorafit.data.formats import Format, columns_needed, format_of, label_names_of, normalise
from lorafit.data.source import RawSplit, SourceSpec, load_split, resolve_source
from lorafit.errors import DataError
from lorafit.recipe.schema import DataConfig
from lorafit.tasks.text_scores import score_classification, score_generation
from lorafit.tasks.types import EvalItem, GenerationExample, Task

NAME = "text"
CARVE_SEED = 0


def carved_rows(num_rows: int, fraction: float) -> np.ndarray:
    """Source-row indices (sorted) that form the validation split carved out of train."""
    count = max(1, round(num_rows * fraction)) if fraction > 0 else 0
    return np.sort(np.random.default_rng(CARVE_SEED).permutation(num_rows)[:count])


def check_columns(raw: RawSplit, fmt: Format) -> None:
    missing = [c for c in columns_needed(fmt) if c not in raw.dataset.column_names]
    if missing:
        raise DataError(f"{raw.starts[0][1]}: no field {', '.join(map(repr, missing))} "
                        f"(fields: {', '.join(raw.dataset.column_names)}); set data.format / data.*_field")


def source_format(options: DataConfig, data_dir: Path | None) -> tuple[SourceSpec, Format]:
    """The source and the row format; string class labels are mapped from the train split's sorted labels."""
    spec = resolve_source(options, data_dir)
    fmt = format_of(options)
    if fmt.name == "classification" and fmt.num_labels > 1:
        raw = load_split(spec, options.train_split if options.train_split in spec.splits else "train")
        check_columns(raw, fmt)
        names = label_names_of(fmt, raw.dataset.unique(fmt.label_field))
        fmt = Format(**{**fmt.settings(), "label_names": names})
    return spec, fmt


def normalised_split(spec: SourceSpec, fmt: Format, split: str, *, keep_in_memory: bool = False,
                     cache_file: str | None = None, carve: float = 0.0):
    """The split's rows in the format's normalised columns (+ `row`), as a datasets.Dataset.

    `carve` > 0: only the rows `carved_rows` picks for validation (read before normalising: a carved dev
    split of a huge train split costs only its own rows)."""
    raw = load_split(spec, split)
    check_columns(raw, fmt)
    dataset, where = raw.dataset, raw.where
    if carve > 0:
        picked = carved_rows(len(dataset), carve)
        dataset = dataset.select(picked)
        where = lambda i: raw.where(int(picked[i]))  # noqa: E731 - error messages name the source row
    return dataset.map(
        partial(normalise, fmt, where=where), batched=True, with_indices=True, batch_size=1000,
        remove_columns=dataset.column_names, keep_in_memory=keep_in_memory, cache_file_name=cache_file,
        new_fingerprint=f"lorafit-normalise-{spec.fingerprint()}-{split}-{carve}", desc=f"read {split}",
    )


def eval_rows(options: DataConfig, data_dir: Path | None, split: str):
    """(format, normalised rows) of an eval split; `dev` may be the rows carved out of train."""
    spec, fmt = source_format(options, data_dir)
    wanted = options.valid_split if split == "dev" and options.valid_split else split
    if wanted not in spec.splits and split == "dev" and options.valid_fraction > 0:
        return fmt, normalised_split(spec, fmt, options.train_split, keep_in_memory=True, carve=options.valid_fraction)
    return fmt, normalised_split(spec, fmt, wanted, keep_in_memory=True)


def load_eval(options: DataConfig, data_dir: Path | None, split: str, _options=None) -> list:
    """Eval items: one per source row (its completions as references), classification examples, or for chat
    one per distinct context (everything before a conversation's last assistant turn; those turns are the references)."""
    from lorafit.data.chat import eval_item
    from lorafit.tasks.types import ClassificationExample

    fmt, rows = eval_rows(options, data_dir, split)
    if fmt.encoder == "chat":  # conversations with the same context are one item with every reference (as E2E's MRs)
        items: dict[str, EvalItem] = {}
        for messages in rows["messages"]:
            item = eval_item(messages)
            key = json.dumps(item.meta["messages"], sort_keys=True)
            seen = items.get(key)
            items[key] = item if seen is None else EvalItem(seen.prompt, seen.references + item.references, seen.meta)
        return list(items.values())
    if fmt.encoder == "classification":
        return [ClassificationExample(t, p, label) for t, p, label in zip(rows["text"], rows["text_pair"], rows["label"], strict=True)]
    refs: dict[int, list[str]] = {}
    prompts: dict[int, str] = {}
    for prompt, completion, row in zip(rows["prompt"], rows["completion"], rows["row"], strict=True):
        prompts.setdefault(row, prompt)
        refs.setdefault(row, []).append(completion)
    return [EvalItem(prompts[r], tuple(refs[r])) for r in prompts]


def load_train(options: DataConfig, data_dir: Path | None, split: str, _options=None) -> list:
    """Small-data convenience (tests, callers outside training): the split's examples as Python objects."""
    fmt, rows = eval_rows(options, data_dir, split)
    if fmt.encoder == "generation":
        return [GenerationExample(p, c) for p, c in zip(rows["prompt"], rows["completion"], strict=True)]
    return load_eval(options, data_dir, split)


def source_task(options: DataConfig) -> Task:
    """The Task for `data.source` (kind and scoring from data.format; splits checked when read)."""
    if options.valid_fraction > 0 and options.valid_split:
        raise DataError("set data.valid_split (a split of the source) or data.valid_fraction (carved from train), not both")
    fmt = format_of(options)
    relative = not Path(options.source).expanduser().is_absolute()
    if fmt.kind == "generation":
        score, main = score_generation, "bleu"
    else:
        score = partial(score_classification, fmt.num_labels)
        main = "pearson" if fmt.kind == "regression" else "accuracy"

    def bind(fn):
        return lambda data_dir, split, _options=None: fn(options, data_dir, split)

    return Task(NAME, fmt.kind, fmt.num_labels if fmt.name == "classification" else 0, ("train", "dev", "test"),
                bind(load_train), bind(load_eval), score, main, needs_data_dir=relative, data_dir_optional=True)
