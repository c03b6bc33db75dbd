"""WikiSQL: logical-form accuracy vs the official sample predictions, and the mlx subset SQL parser."""

import json
import random
import re

import pytest

from lorafit.errors import DataError
from lorafit.eval.metrics.wikisql import (
    AGG_OPS,
    COND_OPS,
    logical_form_accuracy,
    logical_forms_equal,
    parse_sql,
    read_logical_forms,
    score_wikisql,
)


def subset_rows(data_dir, split):
    """(table id, columns, question, gold SQL) of each row of the mlx subset split."""
    rows = []
    with open(data_dir / "wikisql" / "mlx_lora_subset" / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            head, sql = json.loads(line)["text"].split("\nA: ", 1)
            table, columns, question = head.split("\n")
            rows.append(
                (
                    table.removeprefix("table: "),
                    columns.removeprefix("columns: ").split(", "),
                    question[3:],
                    sql,
                )
            )
    return rows


# --- logical-form comparison ---------------------------------------------------------------------


def test_official_sample_predictions_match_current_query_py(data_dir):
    preds = read_logical_forms(data_dir / "wikisql" / "example.pred.dev.jsonl.bz2")
    golds = read_logical_forms(data_dir / "wikisql" / "dev.jsonl")
    assert len(preds) == len(golds) == 8421
    # Rows with an "error" (the model produced no query) are None and count as wrong.
    assert sum(p is None for p in preds) == 606
    assert logical_form_accuracy(preds, golds) == pytest.approx(0.45208, abs=5e-6)
    assert logical_form_accuracy(preds, golds, ordered=True) == pytest.approx(0.44116, abs=5e-6)


def test_logical_form_equality_rules():
    gold = {"sel": 3, "agg": 0, "conds": [[5, 0, "Butler CC (KS)"], [1, 1, 3]]}
    swapped = {"sel": 3, "agg": 0, "conds": [[1, 1, "3"], [5, 0, "butler cc (ks)"]]}
    assert logical_forms_equal(swapped, gold)  # values compared as str().lower(), as a set
    assert not logical_forms_equal(swapped, gold, ordered=True)
    assert not logical_forms_equal({**swapped, "sel": 2}, gold)
    assert not logical_forms_equal({**swapped, "agg": 3}, gold)
    # str(3.0) is "3.0": a float value is not the int 3 (WikiSQL's own semantics).
    assert not logical_forms_equal(
        {"sel": 3, "agg": 0, "conds": [[5, 0, "butler cc (ks)"], [1, 1, 3.0]]}, gold
    )
    assert not logical_forms_equal(None, gold)
    assert not logical_forms_equal({"sel": 3}, gold)  # malformed counts wrong, like evaluate.py
    assert logical_form_accuracy([gold, None], [gold, gold]) == 0.5
    with pytest.raises(DataError):
        logical_form_accuracy([gold], [gold, gold])


# --- the subset's SQL ----------------------------------------------------------------------------


@pytest.mark.parametrize("split, rows", [("train", 1000), ("valid", 100)])
def test_every_gold_sql_in_the_subset_parses(data_dir, split, rows):
    data = subset_rows(data_dir, split)
    assert len(data) == rows
    unparsed = [sql for _, columns, _, sql in data if parse_sql(sql, columns) is None]
    assert unparsed == []


def test_valid_split_parses_to_the_official_dev_logical_forms(data_dir):
    """The subset's valid rows are WikiSQL dev rows: the parse must give dev.jsonl's logical form."""
    gold = {}
    with open(data_dir / "wikisql" / "dev.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            gold[(row["table_id"], row["question"])] = row["sql"]
    mismatched = []
    for table, columns, question, sql in subset_rows(data_dir, "valid"):
        if not logical_forms_equal(parse_sql(sql, columns), gold[(table, question)], ordered=True):
            mismatched.append(sql)
    # 4 rows use table 1-10342194-3, whose header has names containing ", " ("Prevailing types, %",
    # "Amount of trees, that require replacement"). The columns line cannot tell those from two
    # names, so later indices shift by one there; pred and gold are parsed alike, so scoring is
    # unaffected. Every other row gives exactly the official logical form.
    assert len(mismatched) == 4
    assert all("FROM 1-10342194-3" in sql for sql in mismatched)


def test_parse_sql_examples():
    columns = ["Player", "No.", "Nationality", "Position", "Years in Toronto", "School/Club Team"]
    assert parse_sql("SELECT No. FROM 1-10015132-14 WHERE Player = 'Patrick O'Bryant'", columns) == {
        "sel": 1,
        "agg": 0,
        "conds": [[0, 0, "Patrick O'Bryant"]],
    }
    assert parse_sql("SELECT COUNT No. FROM t WHERE No. > 8 AND Player = 'Tom and Jerry'", columns) == {
        "sel": 1,
        "agg": 3,
        "conds": [[1, 1, "8"], [0, 0, "Tom and Jerry"]],
    }
    # A bare value may contain " and ": the split is where the rest parses as a condition.
    assert parse_sql("select position from t where player = tom and jerry and no. < 3;", columns) == {
        "sel": 3,
        "agg": 0,
        "conds": [[0, 0, "tom and jerry"], [1, 2, "3"]],
    }
    assert parse_sql("SELECT MAX(No.) FROM t", columns) == {"sel": 1, "agg": 1, "conds": []}


def test_parse_sql_column_names_containing_commas():
    sql = "SELECT Octane rating FROM t WHERE Power, continuous = 'hp at 2,200 RPM'"
    expected = {"sel": 2, "agg": 0, "conds": [[1, 0, "hp at 2,200 RPM"]]}
    assert parse_sql(sql, ["Engine", "Power, continuous", "Octane rating"]) == expected
    # The same header split at every ", " (all the columns line can say): still parses.
    split = parse_sql(sql, ["Engine", "Power", "continuous", "Octane rating"])
    assert split == {"sel": 3, "agg": 0, "conds": [[1, 0, "hp at 2,200 RPM"]]}


def test_parse_sql_longest_column_and_agg_ambiguity():
    columns = ["Model", "Max memory", "memory", "Count"]
    # "Max memory" is a column: the bare reading wins over MAX(memory)...
    assert parse_sql("SELECT Max memory FROM t", columns)["agg"] == 0
    assert parse_sql("SELECT Max memory FROM t", columns)["sel"] == 1
    # ...and the aggregation is still recognised when it is there.
    assert parse_sql("SELECT MAX Max memory FROM t", columns) == {"sel": 1, "agg": 1, "conds": []}
    assert parse_sql("SELECT COUNT Count FROM t", columns) == {"sel": 3, "agg": 3, "conds": []}
    assert parse_sql("SELECT Count FROM t", columns) == {"sel": 3, "agg": 0, "conds": []}


@pytest.mark.parametrize(
    "sql",
    [
        "",
        "SELECT FROM t",
        "SELECT Unknown FROM t",
        "SELECT Player t",  # no FROM
        "SELECT Player FROM t WHERE",
        "SELECT Player FROM t WHERE Position",
        "SELECT Player FROM t WHERE Position >= 3",  # not a WikiSQL operator
        "SELECT Player FROM t WHERE Position = 'Guard' AND",
        "SELECT MEDIAN Player FROM t",
        "UPDATE t SET Player = 1",
    ],
)
def test_parse_sql_rejects_malformed(sql):
    assert parse_sql(sql, ["Player", "Position"]) is None


def _render(lf, columns, original, rng):
    """Write a logical form back as SQL in a randomly chosen but equivalent style."""
    kw = rng.choice([str.upper, str.lower, str.title])
    space = lambda: rng.choice([" ", "  ", " \t "])  # noqa: E731

    def column(index):
        # A name holding ", " comes split into neighbours: write the run the original SQL used.
        runs = [", ".join(columns[index:stop]) for stop in range(index + 3, index, -1)]
        name = next(run for run in runs if run in original)
        if rng.random() < 0.3:
            name = name.upper() if rng.random() < 0.5 else name.lower()
        opening, closing = rng.choice([("", ""), ('"', '"'), ("`", "`"), ("[", "]")])
        return opening + name + closing

    def value(text):
        if re.fullmatch(r"-?\d+(\.\d+)?", text) and rng.random() < 0.5:
            return text
        quote = rng.choice(["'", '"'])
        return quote + text + quote

    if lf["agg"]:
        agg = kw(AGG_OPS[lf["agg"]])
        head = f"{agg}({column(lf['sel'])})" if rng.random() < 0.3 else f"{agg}{space()}{column(lf['sel'])}"
    else:
        head = column(lf["sel"])
    sql = f"{space()}{kw('select')}{space()}{head}{space()}{kw('from')}{space()}1-234-5"
    if lf["conds"]:
        conds = [
            f"{column(c)}{rng.choice(['', ' ', '  '])}{COND_OPS[o]}{rng.choice(['', ' '])}{value(v)}"
            for c, o, v in lf["conds"]
        ]
        sql += f"{space()}{kw('where')}{space()}" + f"{space()}{kw('and')}{space()}".join(conds)
    return sql + rng.choice(["", ";", " ; ", "  "])


def test_parse_is_stable_under_reformatting(data_dir):
    rng = random.Random(1234)
    rows = subset_rows(data_dir, "train") + subset_rows(data_dir, "valid")
    for _, columns, _, sql in rows:
        lf = parse_sql(sql, columns)
        for _ in range(3):
            variant = _render(lf, columns, sql, rng)
            assert logical_forms_equal(parse_sql(variant, columns), lf, ordered=True), (sql, variant)
        shuffled = dict(lf, conds=rng.sample(lf["conds"], len(lf["conds"])))
        assert logical_forms_equal(parse_sql(_render(shuffled, columns, sql, rng), columns), lf)


def test_score_wikisql():
    columns = ["Player", "No.", "Position"]
    gold = [
        "SELECT Position FROM t WHERE Player = 'Ann' AND No. = 3",
        "SELECT COUNT Player FROM t WHERE Position = 'Guard'",
        "SELECT No. FROM t WHERE Player = 'Bob'",
        "SELECT Player FROM t WHERE No. > 7",
    ]
    pred = [
        "select position from t where No. = '3' and player = 'ANN'",  # same LF, other order
        "SELECT  COUNT Player FROM t WHERE Position = 'Guard'",  # exact after whitespace
        "SELECT No. FROM t WHERE Player = 'Rob'",  # wrong value
        "SELECT Player FROM",  # unparseable
    ]
    scores = score_wikisql(pred, gold, [columns] * 4)
    assert scores == {
        "lf_accuracy": 0.5,
        "lf_accuracy_ordered": 0.25,
        "exact_match": 0.25,
        "parse_rate": 0.75,
    }
    with pytest.raises(DataError):
        score_wikisql(pred, gold[:3], [columns] * 4)
