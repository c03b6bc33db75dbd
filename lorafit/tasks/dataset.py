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
import shutil
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from lorafit.data.formats import Format, features_of, format_of, normalise_row
from lorafit.data.source import RawSplit, SourceSpec, load_split, resolve_source
from lorafit.errors import DataError
from lorafit.recipe.schema import DataConfig
from lorafit.tasks.labels import LabelError, class_names
from lorafit.tasks.text_scores import score_classification, score_generation
from lorafit.tasks.types import EvalItem, GenerationExample, Task

NAME = "text"
CARVE_SEED = 0


def carved_rows(num_rows: int, fraction: float) -> np.ndarray:
    """Source-row indices (sorted) that form the validation split carved out of train."""
    count = max(1, round(num_rows * fraction)) if fraction > 0 else 0
    return np.sort(np.random.default_rng(CARVE_SEED).permutation(num_rows)[:count])


def train_labels(raw: RawSplit, fmt: Format) -> list:
    """The distinct labels of the train split, each checked to be a label at all (a float such as 1.5, true,
    a list: refused with its row); a missing or null label is left to the row's own check."""
    seen: dict = {}
    for where, row in raw.rows():
        value = row.get(fmt.label_field)
        key = (type(value).__name__, value) if isinstance(value, str | int | float | bool | None) else None
        if key in seen:
            continue
        try:
            class_names([value], fmt.num_labels)
        except LabelError as e:
            raise DataError(f"{where}: field {fmt.label_field!r}: {e}") from None
        seen[key] = value
    return list(seen.values())


def source_format(options: DataConfig, data_dir: Path | None) -> tuple[SourceSpec, Format]:
    """The source and the row format; string class labels are mapped from the train split's sorted labels
    (or the recipe's data.label_names)."""
    spec = resolve_source(options, data_dir)
    fmt = format_of(options)
    if fmt.name == "classification" and fmt.num_labels > 1 and not fmt.labels_listed:
        train = options.train_split if options.train_split in spec.splits else "train"
        raw = load_split(spec, train)
        try:
            names = class_names(train_labels(raw, fmt), fmt.num_labels)
        except LabelError as e:
            raise DataError(f"data.source {train} split ({raw.parts[0][0]}{', ...' if len(raw.parts) > 1 else ''}): "
                            f"field {fmt.label_field!r}: {e}") from None
        fmt = Format(**{**fmt.settings(), "label_names": names})
    return spec, fmt


def write_rows(path: Path, fmt: Format, rows) -> int:
    """Normalised rows (dicts) -> an Arrow file of the format's fixed columns, 1,000 rows at a time."""
    from datasets.arrow_writer import ArrowWriter

    features = features_of(fmt)
    batch: list[dict] = []
    with ArrowWriter(features=features, path=str(path)) as writer:
        for row in rows:
            batch.append(row)
            if len(batch) == 1000:
                writer.write_batch({c: [r[c] for r in batch] for c in features})
                batch = []
        if batch:
            writer.write_batch({c: [r[c] for r in batch] for c in features})
        count, _ = writer.finalize()
    return count


def normalised_split(spec: SourceSpec, fmt: Format, split: str, *, keep_in_memory: bool = False,
                     cache_file: str | None = None, carve: float = 0.0):
    """The split's rows in the format's normalised columns (+ `row`, the source row), as a datasets.Dataset.

    Every row is checked as it is read (data/formats.py: normalise_row). `carve` > 0: only the rows
    `carved_rows` picks for validation."""
    import datasets

    raw = load_split(spec, split)
    picked = set(carved_rows(raw.num_rows(), carve).tolist()) if carve > 0 else None
    rows = (out for index, (where, row) in enumerate(raw.rows()) if picked is None or index in picked
            for out in normalise_row(fmt, row, where, index))
    scratch = None if cache_file else Path(tempfile.mkdtemp(prefix="lorafit-rows-"))
    path = Path(cache_file) if cache_file else scratch / "rows.arrow"
    try:
        write_rows(path, fmt, rows)
        return datasets.Dataset.from_file(str(path), in_memory=keep_in_memory or scratch is not None)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


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
    sources = options.source.values() if isinstance(options.source, dict) else [options.source]
    names = [n for v in sources for n in ([v] if isinstance(v, str) else v)]
    relative = not all(Path(n).expanduser().is_absolute() for n in names)
    if fmt.kind == "generation":
        score, main = score_generation, "bleu"
    else:
        score = partial(score_classification, fmt.num_labels)
        main = "pearson" if fmt.kind == "regression" else "accuracy"

    def bind(fn):
        return lambda data_dir, split, _options=None: fn(options, data_dir, split)

    return Task(NAME, fmt.kind, fmt.num_labels if fmt.name == "classification" else 0, ("train", "dev", "test"),
                bind(load_train), bind(load_eval), score, main, needs_data_dir=relative, data_dir_optional=True)
