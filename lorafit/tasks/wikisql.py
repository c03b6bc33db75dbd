"""WikiSQL text-to-SQL, from the mlx-examples LoRA subset (`<data_dir>/wikisql/mlx_lora_subset/`):

    train  train.jsonl   1000 rows
    dev    valid.jsonl    100 rows
    test   test.jsonl     100 rows (not in every data copy)

Each row is `{"text": "table: <id>\\ncolumns: A, B, ...\\nQ: <question>\\nA: SELECT ..."}`. The prompt
is the text up to and including `A:`; the completion is the rest (`" SELECT ..."`).

The `columns:` line joins the table header with ", ", and some column names hold ", " themselves
("Power, continuous"), so the list is ambiguous. `split_columns` splits it on ", " and then joins
neighbours back into one name where the gold SQL of the same table (anywhere in the file) uses the
joined name as a column. EvalItem.meta = {"columns": [...], "table_id": ...} for `score_wikisql`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from lorafit.errors import DataError
from lorafit.eval.metrics.wikisql import score_wikisql
from lorafit.recipe.schema import DataConfig
from lorafit.tasks._io import check_lengths, check_split, find_file, read_jsonl
from lorafit.tasks.types import EvalItem, GenerationExample, Task

NAME = "wikisql"
SPLITS = ("train", "dev", "test")
FILES = {"train": "train.jsonl", "dev": "valid.jsonl", "test": "test.jsonl"}
SUBDIR = ("wikisql", "mlx_lora_subset")
_ROW = re.compile(r"table: (?P<table>[^\n]*)\ncolumns: (?P<columns>[^\n]*)\nQ: (?P<question>.*)\nA:(?P<sql> .*)\Z", re.S)
_AGGREGATES = ("MAX", "MIN", "COUNT", "SUM", "AVG")
_SQL = re.compile(r"SELECT (?P<sel>.*?) FROM (?P<table>\S+)(?: WHERE (?P<where>.*))?\Z", re.S)
_CONDITION = re.compile(r"(?:^| AND )(.+?) (?:=|>|<) ")


def sql_columns(sql: str) -> list[str]:
    """Column names an SQL string of this subset mentions (the selected one and condition columns).

    A rough reading, good enough to tell which joined names are real columns: the condition values
    are not parsed, so a value holding " AND x = " can add a spurious candidate.
    """
    match = _SQL.match(sql.strip())
    if not match:
        return []
    selected = match["sel"]
    head, _, rest = selected.partition(" ")
    names = [rest if head in _AGGREGATES and rest else selected]
    if match["where"]:
        names += _CONDITION.findall(match["where"])
    return names


def split_columns(columns: str, used: Iterable[str] = ()) -> list[str]:
    """The `columns:` line as a list of names; neighbours are joined when `used` names the join.

    >>> split_columns("Engine, Power, continuous, Octane rating", ["Power, continuous"])
    ['Engine', 'Power, continuous', 'Octane rating']
    """
    pieces = columns.split(", ")
    used = {name for name in used if ", " in name}
    out: list[str] = []
    i = 0
    while i < len(pieces):
        # the longest run of pieces starting at i whose join is a name the SQL uses
        for j in range(len(pieces), i + 1, -1):
            if ", ".join(pieces[i:j]) in used:
                out.append(", ".join(pieces[i:j]))
                i = j
                break
        else:
            out.append(pieces[i])
            i += 1
    return out


def read_rows(data_dir: Path, split: str) -> list[dict]:
    """The split's rows as dicts: prompt, completion, table_id, columns, question, sql."""
    check_split(NAME, split, SPLITS)
    path = find_file(NAME, split, Path(data_dir).joinpath(*SUBDIR), FILES)
    parsed = []
    for number, row in read_jsonl(NAME, path):
        text = row.get("text")
        if not isinstance(text, str):
            raise DataError(f"task {NAME}: {path} line {number}: no \"text\" string (keys: {', '.join(row)})")
        text = text.replace("\r\n", "\n")
        match = _ROW.match(text)
        if match is None:
            raise DataError(
                f"task {NAME}: {path} line {number}: text is not 'table: ...\\ncolumns: ...\\nQ: ...\\nA: SELECT ...'"
            )
        parsed.append({**match.groupdict(), "prompt": text[: match.start("sql")]})
    used: dict[str, set[str]] = {}
    for row in parsed:
        used.setdefault(row["table"], set()).update(sql_columns(row["sql"]))
    return [
        {
            "prompt": row["prompt"],
            "completion": row["sql"],
            "table_id": row["table"],
            "columns": split_columns(row["columns"], used[row["table"]]),
            "question": row["question"],
            "sql": row["sql"].strip(),
        }
        for row in parsed
    ]


def load_train(data_dir: Path, split: str, options: DataConfig | None = None) -> list[GenerationExample]:
    """One (prompt, SQL completion) example per row."""
    return [GenerationExample(row["prompt"], row["completion"]) for row in read_rows(data_dir, split)]


def load_eval(data_dir: Path, split: str, options: DataConfig | None = None) -> list[EvalItem]:
    """One item per row: the prompt, the gold SQL, and the table's columns for scoring."""
    return [
        EvalItem(row["prompt"], (row["sql"],), {"columns": row["columns"], "table_id": row["table_id"]})
        for row in read_rows(data_dir, split)
    ]


def score(predictions: Sequence[str], items: Sequence[EvalItem]) -> dict:
    """Logical-form accuracy, exact match and parse rate of the predicted SQL."""
    check_lengths(NAME, predictions, items)
    return score_wikisql(
        [str(p) for p in predictions],
        [item.references[0] for item in items],
        [list(item.meta["columns"]) for item in items],
    )


TASK = Task(
    name=NAME,
    kind="generation",
    num_labels=0,
    splits=SPLITS,
    load_train=load_train,
    load_eval=load_eval,
    score=score,
    main_metric="lf_accuracy",
)
