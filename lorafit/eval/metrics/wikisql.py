"""WikiSQL logical-form accuracy (salesforce/WikiSQL `lib/query.py` semantics) and a parser for the
human-readable SQL of the mlx WikiSQL subset.

A logical form is `{"sel": int, "agg": int, "conds": [[col, op, value], ...]}` with
agg in AGG_OPS = ['', 'MAX', 'MIN', 'COUNT', 'SUM', 'AVG'] and op in COND_OPS = ['=', '>', '<', 'OP'].
Two forms are equal (current `Query.__eq__`) when sel and agg are equal and the conditions, each
taken as (col, op, str(value).lower()), are equal as sets, or as lists with `ordered=True`.

The mlx subset writes SQL like
    SELECT COUNT Fleet Series (Quantity) FROM 1-10007452-3 WHERE Fuel Propulsion = 'CNG' AND Year > 2003
Column names are bare (spaces and punctuation included), string values are single-quoted without
escaping inner apostrophes ('Patrick O'Bryant'), numbers are bare. `parse_sql` maps such SQL back
to a logical form using the table's column names.
"""

from __future__ import annotations

import bz2
import json
import re
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path

from lorafit.errors import DataError

AGG_OPS = ["", "MAX", "MIN", "COUNT", "SUM", "AVG"]
COND_OPS = ["=", ">", "<", "OP"]

# ---------------------------------------------------------------------------------------------
# Logical-form comparison


def _as_logical_form(lf) -> tuple[object, object, list[tuple]] | None:
    """(sel, agg, condition triples) of a logical-form dict, or None when it is malformed."""
    if not isinstance(lf, dict):
        return None
    try:
        conds = [(col, op, str(value).lower()) for col, op, value in lf["conds"]]
        return lf["sel"], lf["agg"], conds
    except (KeyError, TypeError, ValueError):
        # WikiSQL's evaluate.py: a prediction it cannot turn into a Query counts as wrong.
        return None


def logical_forms_equal(pred: dict | None, gold: dict, ordered: bool = False) -> bool:
    """WikiSQL's `Query.__eq__`: same sel, same agg, same conditions (values compared as lowercase str)."""
    p, g = _as_logical_form(pred), _as_logical_form(gold)
    if p is None or g is None:
        return False
    if p[0] != g[0] or p[1] != g[1]:
        return False
    return p[2] == g[2] if ordered else set(p[2]) == set(g[2])


def logical_form_accuracy(
    preds: Sequence[dict | None], golds: Sequence[dict], ordered: bool = False
) -> float:
    """Fraction of predictions equal to their gold logical form; None (unparseable) counts wrong."""
    if len(preds) != len(golds):
        raise DataError(f"{len(preds)} predicted logical forms but {len(golds)} gold ones")
    if not golds:
        raise DataError("no logical forms to score")
    return sum(logical_forms_equal(p, g, ordered) for p, g in zip(preds, golds, strict=True)) / len(golds)


def read_logical_forms(path: str | Path) -> list[dict | None]:
    """Logical forms from a WikiSQL jsonl file (`.bz2` too), one per line.

    Gold files (dev.jsonl) carry them under "sql"; prediction files (evaluate.py's input) under
    "query", with a non-empty "error" when the model produced none: those rows are None.
    """
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    forms: list[dict | None] = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not JSON ({err.msg})") from err
                if "sql" in row:
                    forms.append(row["sql"])
                elif "query" in row or "error" in row:
                    forms.append(None if row.get("error") else row.get("query"))
                else:
                    raise DataError(f"{path}:{number}: no 'sql' or 'query' key")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({err})") from err
    return forms


# ---------------------------------------------------------------------------------------------
# Parsing the mlx subset's SQL


_SELECT = re.compile(r"\s*select\s+", re.I)
_AGG = re.compile(r"(max|min|count|sum|avg)(?=[\s(])", re.I)
_FROM_TABLE = re.compile(r"\s+from\s+(?:\"[^\"]*\"|`[^`]*`|\[[^\]]*\]|[^\s;]+)", re.I)
_WHERE = re.compile(r"\s+where\s+", re.I)
_AND = re.compile(r"\s+and\s+", re.I)
_OP = re.compile(r"\s*([=<>])(?![=<>])\s*")
_OPEN_PAREN = re.compile(r"\s*\(\s*")
_CLOSE_PAREN = re.compile(r"\s*\)")
_SPACE = re.compile(r"\s+")
_END = re.compile(r"\s*;?\s*$")
# Quotes a model may put around a column name.
_COLUMN_QUOTES = [("", ""), ('"', '"'), ("`", "`"), ("[", "]")]


@lru_cache(maxsize=256)
def _column_patterns(columns: tuple[str, ...]) -> tuple[tuple[re.Pattern, int], ...]:
    """(regex, column index) pairs, longest name first, for matching a column at a position.

    Matching ignores case and whitespace (like WikiSQL's own `find_column`, which compares names
    with all whitespace removed). The subset's `columns:` line joins names with ", " and some names
    contain ", " themselves, so a caller's list may hold such a name split into neighbours: runs of
    up to 3 neighbouring names joined by ", " are candidates too, mapped to the first one's index.
    Gold and predicted SQL are parsed with the same list, so indices stay consistent.
    """
    names: dict[str, int] = {}
    for start in range(len(columns)):
        for stop in range(start + 1, min(start + 3, len(columns)) + 1):
            names.setdefault(", ".join(columns[start:stop]), start)
    patterns = []
    for name, index in sorted(names.items(), key=lambda item: -len(item[0])):
        chars = [re.escape(c) for c in name if not c.isspace()]
        if not chars:
            continue
        body = r"\s*".join(chars)
        alternatives = "|".join(re.escape(o) + body + re.escape(c) for o, c in _COLUMN_QUOTES)
        patterns.append((re.compile(f"(?:{alternatives})", re.I), index))
    return tuple(patterns)


def _columns_at(sql: str, pos: int, patterns) -> Iterator[tuple[int, int]]:
    """Every (column index, end position) of a column name starting at `pos`, longest first."""
    for pattern, index in patterns:
        m = pattern.match(sql, pos)
        if m:
            yield index, m.end()


def _parse_select(sql: str, pos: int, patterns) -> Iterator[tuple[int, int, int]]:
    """Every (agg, sel, position after `FROM <table>`) reading of the text after SELECT.

    The bare-column reading comes first, so "SELECT Max memory FROM" picks a column named
    "Max memory" when there is one, before trying MAX of a column "memory".
    """
    readings = [(0, pos, False)]
    agg = _AGG.match(sql, pos)
    if agg:
        agg_index = AGG_OPS.index(agg.group(1).upper())
        paren = _OPEN_PAREN.match(sql, agg.end())
        if paren:
            readings.append((agg_index, paren.end(), True))
        space = _SPACE.match(sql, agg.end())
        if space:
            readings.append((agg_index, space.end(), False))
    for agg_index, start, parenthesised in readings:
        for sel, end in _columns_at(sql, start, patterns):
            if parenthesised:
                close = _CLOSE_PAREN.match(sql, end)
                if not close:
                    continue
                end = close.end()
            table = _FROM_TABLE.match(sql, end)
            if table:
                yield agg_index, sel, table.end()


def _parse_conditions(sql: str, pos: int, patterns) -> list[list] | None:
    """Conditions `col op value [AND ...]` from `pos` to the end of the statement, or None."""
    for col, end in _columns_at(sql, pos, patterns):
        op = _OP.match(sql, end)
        if not op:
            continue
        for value, rest in _values_at(sql, op.end()):
            if _END.match(sql, rest):
                return [[col, COND_OPS.index(op.group(1)), value]]
            and_ = _AND.match(sql, rest)
            if and_:
                tail = _parse_conditions(sql, and_.end(), patterns)
                if tail is not None:
                    return [[col, COND_OPS.index(op.group(1)), value], *tail]
    return None


def _values_at(sql: str, pos: int) -> Iterator[tuple[str, int]]:
    """Candidate (value, end position) readings of a condition value starting at `pos`, shortest first.

    A quoted value ends at a matching quote followed by the end or by " AND "; inner apostrophes
    are not escaped in the subset ('Patrick O'Bryant'), so every such quote is a candidate and the
    caller keeps the first one after which the rest parses. A bare value ends before " AND " or at
    the end.
    """
    quote = sql[pos : pos + 1]
    if quote in ("'", '"'):
        close = sql.find(quote, pos + 1)
        while close != -1:
            yield sql[pos + 1 : close], close + 1
            close = sql.find(quote, close + 1)
        return
    for and_ in _AND.finditer(sql, pos):
        value = sql[pos : and_.start()].strip()
        if value:
            yield value, and_.start()
    value = sql[pos : _END.search(sql, pos).start()].strip()
    if value:
        yield value, len(sql)


def parse_sql(sql: str, columns: Sequence[str]) -> dict | None:
    """The logical form of a subset-style SQL query, or None when it does not parse.

    Keywords are case-insensitive; whitespace is free; column names may be quoted ("", ``, [])
    and match case- and whitespace-insensitively (longest name first); values may be quoted with
    ' or " or bare, and are returned as the text between the quotes (so 8, '8' and "8" are the
    same value, as they are under WikiSQL's str(value).lower() comparison). Aggregations may be
    written `COUNT col` or `COUNT(col)`. A trailing ";" is allowed.
    """
    if not isinstance(sql, str) or not columns:
        return None
    patterns = _column_patterns(tuple(columns))
    start = _SELECT.match(sql)
    if not start:
        return None
    for agg, sel, pos in _parse_select(sql, start.end(), patterns):
        if _END.match(sql, pos):
            return {"sel": sel, "agg": agg, "conds": []}
        where = _WHERE.match(sql, pos)
        if where:
            conds = _parse_conditions(sql, where.end(), patterns)
            if conds is not None:
                return {"sel": sel, "agg": agg, "conds": conds}
    return None


def _normalize_sql_text(sql: str) -> str:
    return " ".join(sql.split()).lower()


def score_wikisql(
    predicted_sqls: Sequence[str], gold_sqls: Sequence[str], columns: Sequence[Sequence[str]]
) -> dict:
    """Score generated SQL against gold SQL (both in the subset's format), one table per example.

    Returns `lf_accuracy` (logical forms equal, conditions as a set), `lf_accuracy_ordered`
    (conditions in order), `exact_match` (strings equal after collapsing whitespace and
    lowercasing) and `parse_rate` (share of predictions that parse). A gold query that does not
    parse makes its example count as correct only on an exact string match.
    """
    if not (len(predicted_sqls) == len(gold_sqls) == len(columns)):
        raise DataError(
            f"{len(predicted_sqls)} predictions, {len(gold_sqls)} gold queries and {len(columns)} column lists"
        )
    if not gold_sqls:
        raise DataError("no WikiSQL examples to score")
    totals = {"lf_accuracy": 0, "lf_accuracy_ordered": 0, "exact_match": 0, "parse_rate": 0}
    for pred_sql, gold_sql, cols in zip(predicted_sqls, gold_sqls, columns, strict=True):
        exact = _normalize_sql_text(pred_sql) == _normalize_sql_text(gold_sql)
        pred, gold = parse_sql(pred_sql, cols), parse_sql(gold_sql, cols)
        totals["exact_match"] += exact
        totals["parse_rate"] += pred is not None
        if gold is None:
            totals["lf_accuracy"] += exact
            totals["lf_accuracy_ordered"] += exact
        else:
            totals["lf_accuracy"] += logical_forms_equal(pred, gold)
            totals["lf_accuracy_ordered"] += logical_forms_equal(pred, gold, ordered=True)
    return {name: count / len(gold_sqls) for name, count in totals.items()}
