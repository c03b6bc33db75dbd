"""The `text` task: a user's own JSON Lines, JSON or CSV/TSV files, named in the recipe's `data:` section.

Files: `data.train_file` (split `train`), `data.valid_file` (`dev`), `data.test_file` (`test`). A
relative path is taken relative to the data directory, an absolute one as it is (with only absolute
paths the task needs no data directory: `needs_data_dir` is False). The format comes
from the suffix: `.jsonl` (one object per line), `.json` (an array of objects, or JSON Lines),
`.csv` (header row, standard quoting), `.tsv` (header row, tabs, no quoting).

Two modes, chosen by which field is set:

- generation (`data.completion_field`): prompt = `data.prompt_template.format(**row)`, completion =
  the row's completion field, verbatim (lorafit inserts nothing between them: end the template
  with the separator you want, e.g. "Answer:", and start completions with a space). In JSON a
  completion may be a list of strings: several references, one training example each. EvalItem
  references are the completion(s). Scored by exact match (after stripping outer whitespace) and
  corpus BLEU on a 0-1 scale like E2E's (sacrebleu, lowercased, 13a tokenisation).
- classification (`data.label_field`, with `data.text_field`, optional `data.text_pair_field`,
  and `data.num_labels`):
  - `num_labels: 1` is regression: labels are read as floats; scored by Pearson, Spearman, MSE.
  - `data.label_names: [neg, pos]`: labels are those names (or their ids), ids by position;
  - otherwise, when every label in the train file is an integer (a JSON int, 1.0, or digits), the
    labels are those class ids (each must be in 0..num_labels-1; 1.5 is refused, never rounded);
  - else labels are strings, and the ids are their positions in the **sorted** set of the train
    file's labels (["neg", "pos"] -> neg=0, pos=1); a dev/test label not seen in train is an error,
    and so is a train file that mixes ids and names (lorafit/tasks/labels.py has the rules).
  Text fields are JSON strings (a number or a list is refused, not converted); the text to classify
  and every completion must not be empty.
  Scored by accuracy and macro F1.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from lorafit.data.jsonrows import check_unicode, json_kind
from lorafit.errors import DataError
from lorafit.recipe.schema import DataConfig
from lorafit.tasks._io import (
    check_split,
    column_index,
    read_csv,
    read_jsonl,
    read_tsv,
)
from lorafit.tasks.labels import LabelError, check_listed, class_names, is_int_label, parse_label
from lorafit.tasks.text_scores import score_classification, score_generation
from lorafit.tasks.types import ClassificationExample, EvalItem, GenerationExample, Task

NAME = "text"
SPLIT_FILES = {"train": "train_file", "dev": "valid_file", "test": "test_file"}
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


@dataclass(frozen=True)
class Row:
    """One record of a user file: its fields and where it came from (for error messages)."""

    path: Path
    line: int  # line number (JSON: where the object starts; CSV: where the record ends)
    fields: dict

    @property
    def where(self) -> str:
        return f"{self.path} line {self.line}"


def template_fields(template: str) -> list[str]:
    """The field names a `str.format` template uses; positional `{}` / `{0}` are refused."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DataError(f"task {NAME}: data.prompt_template is not a valid format string: {e}") from None
    names = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if root == "" or root.isdigit():
            raise DataError(
                f"task {NAME}: data.prompt_template uses a positional field {{{field}}}; name a field, e.g. {{question}}"
            )
        names.append(root)
    return list(dict.fromkeys(names))


def validate(options: DataConfig) -> None:
    """Check the `data:` settings the text task needs, before any file is read."""
    o = options
    if not (o.train_file or o.valid_file or o.test_file):
        raise DataError(f"task {NAME}: set data.train_file (and optionally data.valid_file, data.test_file)")
    if bool(o.completion_field) == bool(o.label_field):
        raise DataError(
            f"task {NAME}: set exactly one of data.completion_field (generation) or data.label_field (classification)"
        )
    if o.completion_field:
        if not o.prompt_template:
            raise DataError(
                f"task {NAME}: data.completion_field is set, so data.prompt_template is needed too, "
                "e.g. 'Question: {question}\\nAnswer:'"
            )
        template_fields(o.prompt_template)
    else:
        if not o.text_field:
            raise DataError(f"task {NAME}: data.label_field is set, so data.text_field is needed too")
        if o.num_labels is None or o.num_labels < 1:
            raise DataError(
                f"task {NAME}: data.label_field is set, so data.num_labels is needed too "
                "(1 for regression, 2 or more for classes)"
            )
        try:
            check_listed(o.label_names, o.num_labels)
        except LabelError as e:
            raise DataError(f"task {NAME}: {e}") from None
    for key in SPLIT_FILES.values():
        name = getattr(o, key)
        if name and Path(name).suffix.lower() not in SUFFIXES:
            raise DataError(f"task {NAME}: data.{key} {name!r} should end in one of: {', '.join(SUFFIXES)}")


def file_for(data_dir: Path, split: str, options: DataConfig) -> Path:
    """The file of `split` named in the `data:` section, relative to the data directory unless absolute."""
    splits = tuple(s for s, key in SPLIT_FILES.items() if getattr(options, key))
    check_split(NAME, split, tuple(SPLIT_FILES), "")
    if split not in splits:
        raise DataError(f"task {NAME}: no file for split {split!r}: set data.{SPLIT_FILES[split]}")
    name = Path(getattr(options, SPLIT_FILES[split])).expanduser()
    path = name if name.is_absolute() else Path(data_dir) / name
    if not path.is_file():
        raise DataError(f"task {NAME}, split {split}: data.{SPLIT_FILES[split]} not found: {path}")
    return path


def read_rows(path: Path, needed: Sequence[str]) -> list[Row]:
    """Every record of a user file; a field in `needed` missing from a record is an error."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        names, rows = read_csv(NAME, path) if suffix == ".csv" else read_tsv(NAME, path)
        column_index(NAME, path, names, needed)  # a missing column is an error listing those there are
        return [Row(path, number, dict(zip(names, fields, strict=True))) for number, fields in rows]
    rows = [Row(path, number, r) for number, r in read_jsonl(NAME, path)]  # JSON Lines, or a JSON array
    for row in rows:
        missing = [n for n in needed if n not in row.fields]
        if missing:
            raise DataError(
                f"task {NAME}: {row.where} has no field {', '.join(map(repr, missing))} "
                f"(fields: {', '.join(row.fields)})"
            )
    return rows


def value(row: Row, field: str, what: str):
    """The row's `field`; a null is an error naming the row (`what`: which field it is, for the message)."""
    v = row.fields[field]
    if v is None:
        raise DataError(f"task {NAME}: {row.where}: {what} field {field!r} is null")
    return v


def text_value(row: Row, field: str, what: str, *, trained: bool = False) -> str:
    """A text field: a string as written (a JSON number or list is refused, not converted); `trained`
    (what the model learns): not empty either."""
    v = value(row, field, what)
    if not isinstance(v, str):
        raise DataError(f"task {NAME}: {row.where}: {what} field {field!r} should be text, got {json_kind(v)}")
    if trained and not v.strip():
        raise DataError(f"task {NAME}: {row.where}: {what} field {field!r} is empty (nothing to learn)")
    return check_unicode(v, f"task {NAME}: {row.where}", field)


# -- generation ------------------------------------------------------------------------------------


def prompt_of(row: Row, template: str) -> str:
    """The row's prompt: the template filled in from its fields (text fields: a number is not guessed at)."""
    for name in template_fields(template):
        if name in row.fields:
            text_value(row, name, "template")
    try:
        return template.format(**row.fields)
    except KeyError as e:
        raise DataError(
            f"task {NAME}: {row.where}: data.prompt_template uses {{{e.args[0]}}} but the row has "
            f"no field {e.args[0]!r} (fields: {', '.join(row.fields)})"
        ) from None
    except (IndexError, AttributeError, ValueError, TypeError) as e:
        raise DataError(f"task {NAME}: {row.where}: data.prompt_template cannot be filled: {e}") from None


def completions_of(row: Row, field: str) -> list[str]:
    """The row's completion(s) as text: one, or several from a JSON list."""
    v = value(row, field, "completion")
    refs = v if isinstance(v, list) else [v]
    if not refs:
        raise DataError(f"task {NAME}: {row.where}: completion field {field!r} is an empty list")
    return [text_value(Row(row.path, row.line, {field: r}), field, "completion", trained=True) for r in refs]


def generation_rows(data_dir: Path, split: str, options: DataConfig) -> list[tuple[str, list[str]]]:
    """(prompt, completions) for each row of the split's file."""
    path = file_for(data_dir, split, options)
    rows = read_rows(path, [options.completion_field])
    return [(prompt_of(r, options.prompt_template), completions_of(r, options.completion_field)) for r in rows]


def load_generation_train(data_dir: Path, split: str, options: DataConfig) -> list[GenerationExample]:
    """One example per (prompt, completion): a row with several completions gives several."""
    rows = generation_rows(data_dir, split, options)
    return [GenerationExample(prompt, ref) for prompt, refs in rows for ref in refs]


def load_generation_eval(data_dir: Path, split: str, options: DataConfig) -> list[EvalItem]:
    """One item per row, with all its completions as references."""
    return [EvalItem(prompt, tuple(refs)) for prompt, refs in generation_rows(data_dir, split, options)]


# -- classification --------------------------------------------------------------------------------


def raw_labels(data_dir: Path, split: str, options: DataConfig) -> tuple[list[Row], list]:
    """The split's rows and their labels as written in the file."""
    needed = [options.text_field, options.label_field] + ([options.text_pair_field] if options.text_pair_field else [])
    rows = read_rows(file_for(data_dir, split, options), needed)
    return rows, [value(r, options.label_field, "label") for r in rows]


def label_names(data_dir: Path, options: DataConfig) -> list[str] | None:
    """Class names by id: data.label_names, or for string labels the sorted set of the train file's labels;
    None when the labels are class ids or floats (regression)."""
    if options.num_labels == 1:
        return None
    if options.label_names:
        return list(options.label_names)
    if not options.train_file:
        raise DataError(f"task {NAME}: labels are mapped to ids from the train file's labels: set data.train_file")
    return _names(*raw_labels(data_dir, "train", options), options.num_labels)


def _names(rows: list[Row], labels: list, num_labels: int) -> list[str] | None:
    for row, v in zip(rows, labels, strict=True):  # each label a label at all (1.5, true, a list: refused here)
        try:
            class_names([v], num_labels)
        except LabelError as e:
            raise DataError(f"task {NAME}: {row.where}: {e}") from None
    try:
        names = class_names(labels, num_labels)
    except LabelError as e:
        raise DataError(f"task {NAME}: {rows[0].path}: {e}") from None
    return list(names) if names is not None else None


def label_of(row: Row, v, options: DataConfig, names: list[str] | None) -> int | float:
    """A row's label as a class id (or a float for regression), checked against the task's labels."""
    try:
        return parse_label(v, options.num_labels, names, listed=bool(options.label_names))
    except LabelError as e:
        raise DataError(f"task {NAME}: {row.where}: {e}") from None


def load_classification(data_dir: Path, split: str, options: DataConfig) -> list[ClassificationExample]:
    """The split's examples, with labels mapped to ids as the module docstring describes."""
    rows, labels = raw_labels(data_dir, split, options)
    if options.num_labels == 1 or (not options.train_file and not options.label_names
                                   and all(is_int_label(v) for v in labels)):
        names = None
    elif split == "train" and not options.label_names:
        names = _names(rows, labels, options.num_labels)
    else:
        names = label_names(data_dir, options)
    pair = options.text_pair_field
    return [
        ClassificationExample(
            text=text_value(r, options.text_field, "text", trained=True),
            text_pair=text_value(r, pair, "text pair") if pair else None,
            label=label_of(r, v, options, names),
        )
        for r, v in zip(rows, labels, strict=True)
    ]


def _bound(load, bound: DataConfig):
    """`load` with the options the task was built for (a Task's kind and label count come from them)."""

    def load_split(data_dir: Path, split: str, options: DataConfig | None = None) -> list:
        if options is not None and options != bound:
            raise ValueError("this text task was built for other data options: call text_task(options) again")
        return load(data_dir, split, bound)

    return load_split


def text_task(options: DataConfig) -> Task:
    """The text task for these `data:` settings (its kind and label count depend on them).

    Its loaders use these options; they accept the same options again (or None) as their third argument.
    With `data.source` the rows are read by `datasets` instead (tasks/dataset.py: any format, any size).
    """
    if options.source:
        if options.train_file or options.valid_file or options.test_file:
            raise DataError(f"task {NAME}: set data.source or data.train_file/valid_file/test_file, not both")
        from lorafit.tasks.dataset import source_task

        return source_task(options)
    validate(options)
    files = {s: getattr(options, key) for s, key in SPLIT_FILES.items() if getattr(options, key)}
    relative = any(not Path(f).expanduser().is_absolute() for f in files.values())
    if options.completion_field:
        kind, num_labels, main_metric = "generation", 0, "bleu"
        load_train, load_eval = _bound(load_generation_train, options), _bound(load_generation_eval, options)
        score = score_generation
    else:
        num_labels = options.num_labels
        kind, main_metric = ("regression", "pearson") if num_labels == 1 else ("classification", "accuracy")
        load_train = load_eval = _bound(load_classification, options)
        score = partial(score_classification, num_labels)
    return Task(NAME, kind, num_labels, tuple(files), load_train, load_eval, score, main_metric,
                needs_data_dir=relative)
