"""The E2E NLG Challenge: restaurant meaning representations (MRs) -> one-line descriptions.

Files in `<data_dir>/e2e/`, all CSV with a header `mr,ref` (one row per MR and reference):

    train  trainset.csv.gz (or trainset.csv)   42061 rows, 4862 distinct MRs
    dev    devset.csv                           4672 rows,  547 distinct MRs
    test   testset_w_refs.csv                   4693 rows,  630 distinct MRs (not in every data copy)

`load_train` gives one GenerationExample per row; `load_eval` one EvalItem per distinct MR, in order
of first appearance, with all its references in file order (duplicates kept, as the official
e2e-metrics script keeps them). References are verbatim; a training completion is
`" " + ref.strip()` (the training code appends EOS).

The files are read with the csv module rather than `datasets.load_dataset("csv")`: it is several
times faster here (no Arrow cache to build or write) and keeps every field a string (pandas would
turn a reference such as "NA" into a missing value).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from lorafit.errors import DataError
from lorafit.eval.metrics.e2e import score_e2e
from lorafit.recipe.schema import DataConfig
from lorafit.tasks._io import check_lengths, check_split, column_index, find_file, read_csv
from lorafit.tasks.types import EvalItem, GenerationExample, Task

NAME = "e2e"
SPLITS = ("train", "dev", "test")
FILES = {
    "train": ("trainset.csv.gz", "trainset.csv"),
    "dev": ("devset.csv", "devset.csv.gz"),
    "test": ("testset_w_refs.csv", "testset_w_refs.csv.gz"),
}
INSTRUCTION = "Describe this restaurant."
_SLOT = re.compile(r"\s*([^\[\],]+?)\s*\[([^\]]*)\]\s*(?:,|$)")


def format_prompt(mr: str) -> str:
    """The prompt for one MR; its completion is `" " + reference`.

    >>> format_prompt("name[The Vaults], eatType[pub], near[Café Adriatic]")
    'Describe this restaurant.\\nname: The Vaults | eatType: pub | near: Café Adriatic\\nDescription:'

    The `slot[value]` pairs become `slot: value` joined by ` | ` (short: the prompt is paid for in
    every training step). An MR that is not a list of `slot[value]` pairs is used as it is.
    """
    slots = _SLOT.findall(mr)
    rebuilt = ", ".join(f"{k}[{v}]" for k, v in slots)
    attributes = " | ".join(f"{k}: {v}" for k, v in slots) if rebuilt == mr.strip() and slots else mr.strip()
    return f"{INSTRUCTION}\n{attributes}\nDescription:"


def read_pairs(data_dir: Path, split: str) -> list[tuple[str, str]]:
    """The split's (mr, ref) rows, verbatim, in file order."""
    check_split(NAME, split, SPLITS)
    path = find_file(NAME, split, Path(data_dir) / "e2e", FILES)
    names, rows = read_csv(NAME, path)
    mr_at, ref_at = column_index(NAME, path, [n.strip().lower() for n in names], ["mr", "ref"])
    for number, fields in rows:
        if not fields[mr_at].strip() or not fields[ref_at].strip():
            raise DataError(f"task {NAME}: {path} line {number}: empty {'mr' if not fields[mr_at].strip() else 'ref'}")
    return [(fields[mr_at], fields[ref_at]) for _, fields in rows]


def load_train(data_dir: Path, split: str, options: DataConfig | None = None) -> list[GenerationExample]:
    """One example per (MR, reference) row."""
    pairs = read_pairs(data_dir, split)
    prompts = {mr: format_prompt(mr) for mr in {mr for mr, _ in pairs}}  # ~9 rows per MR: format each once
    return [GenerationExample(prompts[mr], " " + ref.strip()) for mr, ref in pairs]


def load_eval(data_dir: Path, split: str, options: DataConfig | None = None) -> list[EvalItem]:
    """One item per distinct MR, in order of first appearance, with all its references."""
    refs: dict[str, list[str]] = {}
    for mr, ref in read_pairs(data_dir, split):
        refs.setdefault(mr, []).append(ref)
    return [EvalItem(format_prompt(mr), tuple(r), {"mr": mr}) for mr, r in refs.items()]


def score(predictions: Sequence[str], items: Sequence[EvalItem]) -> dict:
    """The five official E2E metrics of `predictions` against each item's references."""
    check_lengths(NAME, predictions, items)
    return score_e2e([str(p) for p in predictions], [list(item.references) for item in items])


TASK = Task(
    name=NAME,
    kind="generation",
    num_labels=0,
    splits=SPLITS,
    load_train=load_train,
    load_eval=load_eval,
    score=score,
    main_metric="BLEU",  # score_e2e's keys: BLEU, NIST, METEOR, ROUGE_L, CIDEr (as the official script)
)
