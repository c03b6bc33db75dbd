"""GLUE classification and regression tasks, read from the `glue_data/` tree that GLUE's
`download_glue_data.py` writes (`<data_dir>/glue/SST-2/train.tsv`, ...).

Splits are `train` and `dev`. GLUE's test labels are private, so there is no `test` split.
`load_train` and `load_eval` return the same `ClassificationExample` list for a split.

Files are read as plain tab-separated text, with no CSV quoting: they hold literal `"` characters.

Labels:
- SST-2, CoLA, MRPC, WNLI: the 0/1 in the file.
- RTE, QNLI: the strings in the file, mapped as GLUE and Hugging Face `glue` do:
  `entailment` = 0, `not_entailment` = 1.
- STS-B: regression; `label` is the float similarity score (0 to 5) and `num_labels` is 1.

MRPC's train.tsv from the download script misses one pair (2750203/2750153), so MRPC is derived
as the script intends: `msr_paraphrase_train.txt` (4076 pairs) split by `dev_ids.tsv` into dev (408
pairs, in file order) and train (the other 3668). Those match Hugging Face `glue/mrpc`.

QNLI's train.tsv is not in our data, so `glue/qnli` is eval-only: it has a `dev` split only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from lorafit.errors import DataError
from lorafit.eval.metrics.glue import score_classification
from lorafit.recipe.schema import DataConfig
from lorafit.tasks._io import check_lengths, check_split, column_index, find_file, read_tsv
from lorafit.tasks.types import ClassificationExample, Task

ENTAILMENT_LABELS = ("entailment", "not_entailment")  # id = position, as in GLUE / HF datasets


@dataclass(frozen=True)
class GlueSpec:
    """Where a GLUE task's files are and which columns hold the text and the label.

    `text`, `text_pair` and `label` are header names, or column positions for a headerless file.
    `labels` lists the label strings by id when the file holds strings; `None` means the file holds
    int ids (or, with `num_labels` 1, float scores).
    """

    name: str  # "sst2": the name the metrics use
    folder: str  # "SST-2"
    text: str | int
    text_pair: str | int | None
    label: str | int
    num_labels: int
    main_metric: str
    labels: tuple[str, ...] | None = None
    splits: tuple[str, ...] = ("train", "dev")

    @property
    def task_name(self) -> str:
        return f"glue/{self.name}"


# main_metric: the key of `lorafit.eval.metrics.glue.MAIN_METRIC[name]` (a test checks they agree).
SPECS: dict[str, GlueSpec] = {
    spec.name: spec
    for spec in (
        GlueSpec("sst2", "SST-2", "sentence", None, "label", 2, "accuracy"),
        GlueSpec("cola", "CoLA", 3, None, 1, 2, "matthews_corr"),
        GlueSpec("mrpc", "MRPC", "#1 String", "#2 String", "Quality", 2, "f1"),
        GlueSpec("rte", "RTE", "sentence1", "sentence2", "label", 2, "accuracy", ENTAILMENT_LABELS),
        GlueSpec("stsb", "STS-B", "sentence1", "sentence2", "score", 1, "pearson"),
        GlueSpec("wnli", "WNLI", "sentence1", "sentence2", "label", 2, "accuracy"),
        GlueSpec("qnli", "QNLI", "question", "sentence", "label", 2, "accuracy", ENTAILMENT_LABELS, ("dev",)),
    )
}

MRPC_FILES = {"train": "msr_paraphrase_train.txt", "dev": "msr_paraphrase_train.txt"}
MRPC_DEV_IDS = "dev_ids.tsv"


def glue_dir(data_dir: Path, spec: GlueSpec) -> Path:
    """The task's folder in the data directory, e.g. `<data_dir>/glue/SST-2`."""
    return Path(data_dir) / "glue" / spec.folder


def _check_split(spec: GlueSpec, split: str) -> None:
    if split == "test":
        note = "GLUE's test labels are private, so there is no test split to train or score on"
    elif split == "train" and "train" not in spec.splits:
        note = f"{spec.task_name} is eval-only: its train.tsv is not in this data"
    else:
        note = ""
    check_split(spec.task_name, split, spec.splits, note)


def _parse_label(spec: GlueSpec, path: Path, number: int, value: str) -> int | float:
    """The label in a row as an int id (or a float score for regression)."""
    value = value.strip()
    try:
        if spec.num_labels == 1:
            return float(value)
        if spec.labels is not None:
            return spec.labels.index(value)
        label = int(value)
        if 0 <= label < spec.num_labels:
            return label
    except ValueError:
        pass
    valid = ", ".join(spec.labels) if spec.labels else ("a number" if spec.num_labels == 1 else "0, 1")
    raise DataError(f"task {spec.task_name}: {path} line {number}: label {value!r} is not one of: {valid}")


def _read_split(spec: GlueSpec, data_dir: Path, split: str) -> list[ClassificationExample]:
    directory = glue_dir(data_dir, spec)
    path = find_file(spec.task_name, split, directory, {s: f"{s}.tsv" for s in spec.splits})
    header = isinstance(spec.label, str)
    names, rows = read_tsv(spec.task_name, path, header=header)
    if header:
        wanted = [spec.text, spec.label] + ([spec.text_pair] if spec.text_pair is not None else [])
        positions = column_index(spec.task_name, path, names, wanted)
        text_at, label_at = positions[0], positions[1]
        pair_at = positions[2] if spec.text_pair is not None else None
    else:
        text_at, label_at, pair_at = spec.text, spec.label, spec.text_pair
        width = len(rows[0][1])
        if width <= max(text_at, label_at):
            raise DataError(
                f"task {spec.task_name}: {path} has {width} tab-separated fields per row, expected "
                f"{max(text_at, label_at) + 1} (no header: source, label, original label, sentence)"
            )
    return [
        ClassificationExample(
            text=fields[text_at],
            text_pair=fields[pair_at] if pair_at is not None else None,
            label=_parse_label(spec, path, number, fields[label_at]),
        )
        for number, fields in rows
    ]


def load_mrpc_rows(data_dir: Path, split: str) -> list[tuple[str, str, ClassificationExample]]:
    """MRPC's (#1 ID, #2 ID, example) for `split`, derived from msr_paraphrase_train.txt + dev_ids.tsv."""
    spec = SPECS["mrpc"]
    _check_split(spec, split)
    directory = glue_dir(data_dir, spec)
    files = {**MRPC_FILES, "dev ids": MRPC_DEV_IDS}
    path = find_file(spec.task_name, split, directory, files)
    ids_path = find_file(spec.task_name, "dev ids", directory, files)
    _, id_rows = read_tsv(spec.task_name, ids_path, header=False)
    if len(id_rows[0][1]) != 2:
        raise DataError(f"task {spec.task_name}: {ids_path} should have 2 tab-separated ids per line (#1 ID, #2 ID)")
    dev_ids = {(a.strip(), b.strip()) for _, (a, b) in id_rows}
    names, rows = read_tsv(spec.task_name, path)
    id1, id2, text, pair, quality = column_index(
        spec.task_name, path, names, ["#1 ID", "#2 ID", "#1 String", "#2 String", "Quality"]
    )
    found = [(number, f) for number, f in rows if ((f[id1], f[id2]) in dev_ids) == (split == "dev")]
    if split == "dev" and len(found) != len(dev_ids):
        missing = len(dev_ids) - len(found)
        raise DataError(f"task {spec.task_name}: {missing} pairs listed in {ids_path} are not in {path}")
    return [
        (f[id1], f[id2], ClassificationExample(f[text], f[pair], _parse_label(spec, path, number, f[quality])))
        for number, f in found
    ]


def load(spec: GlueSpec, data_dir: Path, split: str, options: DataConfig | None = None) -> list:
    """The split's examples (the same list for training, validation loss and evaluation)."""
    _check_split(spec, split)
    if spec.name == "mrpc":
        return [example for _, _, example in load_mrpc_rows(data_dir, split)]
    return _read_split(spec, data_dir, split)


def score(spec: GlueSpec, predictions: Sequence, items: Sequence[ClassificationExample]) -> dict:
    """The GLUE metrics of the task (see lorafit.eval.metrics.glue)."""
    check_lengths(spec.task_name, predictions, items)
    return score_classification(spec.name, list(predictions), [item.label for item in items])


def glue_task(name: str) -> Task:
    """`glue/<name>` as a Task record (name without the `glue/` prefix: "sst2", "mrpc", ...)."""
    spec = SPECS[name]
    loader = partial(load, spec)
    return Task(
        name=spec.task_name,
        kind="regression" if spec.num_labels == 1 else "classification",
        num_labels=spec.num_labels,
        splits=spec.splits,
        load_train=loader,
        load_eval=loader,
        score=partial(score, spec),
        main_metric=spec.main_metric,
        eval_only="train" not in spec.splits,
    )
