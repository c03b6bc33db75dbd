"""WikiSQL (mlx-examples subset) loaders on the real data, and a test split built in tmp_path."""

import json

import pytest

from lorafit.errors import DataError
from lorafit.tasks import get_task
from lorafit.tasks.wikisql import read_rows, split_columns, sql_columns

SUBSET = ("wikisql", "mlx_lora_subset")


@pytest.fixture(scope="module")
def task():
    return get_task("wikisql")


@pytest.mark.parametrize(("split", "rows"), [("train", 1000), ("dev", 100)])
def test_counts(task, data_dir, split, rows):
    examples = task.load_train(data_dir, split, None)
    items = task.load_eval(data_dir, split, None)
    assert len(examples) == len(items) == rows
    for example, item in zip(examples, items, strict=True):
        assert example.prompt == item.prompt and example.prompt.endswith("\nA:")
        assert example.completion.startswith(" SELECT ")
        assert item.references == (example.completion.strip(),)


def test_first_row(task, data_dir):
    example = task.load_train(data_dir, "train", None)[0]
    assert example.prompt == (
        "table: 1-1000181-1\ncolumns: State/territory, Text/background colour, Format, Current slogan, "
        "Current series, Notes\nQ: Tell me what the notes are for South Australia \nA:"
    )
    assert example.completion == " SELECT Notes FROM 1-1000181-1 WHERE Current slogan = 'SOUTH AUSTRALIA'"
    item = task.load_eval(data_dir, "train", None)[0]
    assert item.meta == {
        "columns": ["State/territory", "Text/background colour", "Format", "Current slogan", "Current series", "Notes"],
        "table_id": "1-1000181-1",
    }


def test_columns_with_commas(task, data_dir):
    items = [i for i in task.load_eval(data_dir, "train", None) if i.meta["table_id"] == "1-1123802-1"]
    columns = items[0].meta["columns"]
    assert columns[:2] == ["Engine", "Power, continuous"]
    assert "Power, takeoff" in columns and len(columns) == 8
    dev = {i.meta["table_id"]: i.meta["columns"] for i in task.load_eval(data_dir, "dev", None)}
    assert any("Prevailing types, %" in cols for cols in dev.values())
    # every column the gold SQL uses is one of the item's columns
    for split in ("train", "dev"):
        for row in read_rows(data_dir, split):
            assert set(sql_columns(row["sql"])) <= set(row["columns"]), row["sql"]


def test_split_columns_and_sql_columns():
    assert split_columns("A, B, C") == ["A", "B", "C"]
    assert split_columns("A, B, C, D", ["B, C"]) == ["A", "B, C", "D"]
    assert split_columns("A, B, C", ["A, B, C"]) == ["A, B, C"]
    assert sql_columns("SELECT COUNT Power, takeoff FROM t WHERE Engine = 'x' AND Rank > 3") == [
        "Power, takeoff", "Engine", "Rank",
    ]
    assert sql_columns("not sql") == []


def test_test_split_from_copied_rows(task, data_dir, tmp_path):
    source = data_dir.joinpath(*SUBSET, "valid.jsonl").read_text(encoding="utf-8").splitlines()[:7]
    target = tmp_path.joinpath(*SUBSET)
    target.mkdir(parents=True)
    (target / "test.jsonl").write_text("\n".join(source) + "\n", encoding="utf-8")
    items = task.load_eval(tmp_path, "test", None)
    assert len(items) == 7
    assert items == task.load_eval(data_dir, "dev", None)[:7]


def test_errors(task, data_dir, tmp_path):
    with pytest.raises(DataError) as err:
        task.load_train(tmp_path, "train", None)
    assert str(tmp_path.joinpath(*SUBSET)) in str(err.value)
    assert "train.jsonl (train), valid.jsonl (dev), test.jsonl (test)" in str(err.value)
    with pytest.raises(DataError, match=r"unknown split 'valid' \(valid: train, dev, test\)"):
        task.load_train(data_dir, "valid", None)
    target = tmp_path.joinpath(*SUBSET)
    target.mkdir(parents=True)
    path = target / "valid.jsonl"
    path.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(DataError, match=r"valid\.jsonl line 1: no \"text\" string \(keys: prompt\)"):
        task.load_eval(tmp_path, "dev", None)
    path.write_text(json.dumps({"text": "Q: what?\nA: SELECT x"}) + "\n")
    with pytest.raises(DataError, match=r"valid\.jsonl line 1: text is not 'table: "):
        task.load_eval(tmp_path, "dev", None)
    path.write_text('{"text": "table: t\n')
    with pytest.raises(DataError, match=r"valid\.jsonl line 1: invalid JSON"):
        task.load_eval(tmp_path, "dev", None)
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"valid\.jsonl is empty$"):
        task.load_eval(tmp_path, "dev", None)


def test_score_has_main_metric(task, data_dir):
    pytest.importorskip("lorafit.eval.metrics.wikisql")
    items = task.load_eval(data_dir, "dev", None)[:3]
    result = task.score([item.references[0] for item in items], items)
    assert result[task.main_metric] == 1.0
