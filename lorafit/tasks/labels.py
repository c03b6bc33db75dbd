"""Class labels as files give them (ints, digit strings, names, numbers) -> what the model trains on.

Shared by the built-in `text` task (lorafit/tasks/text.py) and the `data.source` formats
(lorafit/data/formats.py), which word their errors for their own sources (file and line). A leaf module:
it imports nothing from lorafit, so both can use it without an import cycle.

The rules (nothing is coerced silently):
- regression (num_labels 1): a finite number, or text that reads as one ("0.5" from CSV); not true/false;
- classes, ids: an integer in 0..num_labels-1 (a JSON int, an integral float such as 1.0, or "1" / "1.0"
  from CSV); 1.5 and "1.5" are refused, never rounded;
- classes, names: the names the recipe lists (data.label_names), else the train split's labels, sorted
  (["neg", "pos"] -> neg=0, pos=1); a label of another split that is not a train label is refused;
- a train split that mixes ids and names is refused (which id would "pos" be?).
"""

from __future__ import annotations

import math
import re

_INT = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


class LabelError(ValueError):
    """A label that cannot be trained on; the message says what was expected (callers add file and line)."""


def _number(v) -> float | None:
    """A number as a file writes it (a JSON number, or text such as "1.0" from CSV), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return float(v) if abs(v) < 2**1000 else math.inf  # float(10**400) raises
    if isinstance(v, float):
        return v
    if isinstance(v, str) and _NUMBER.fullmatch(v.strip()):
        return float(v)
    return None


def is_int_label(v) -> bool:
    """True for an int, or a number that is one (1.0, "1", "1.0": a class id as JSON or CSV gives it)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return True
    if isinstance(v, str) and _INT.fullmatch(v.strip()):
        return True
    number = _number(v)
    return number is not None and math.isfinite(number) and number.is_integer()


def _as_id(v) -> int:
    return v if isinstance(v, int) else int(v.strip()) if isinstance(v, str) and _INT.fullmatch(v.strip()) else int(_number(v))


def _shown(v) -> str:
    text = repr(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_listed(listed: tuple[str, ...] | None, num_labels: int | None) -> None:
    """data.label_names against data.num_labels: as many names as classes at most, none twice."""
    if not listed:
        return
    if num_labels == 1:
        raise LabelError("data.label_names is set but data.num_labels is 1 (regression has no classes)")
    if num_labels is not None and len(listed) > num_labels:
        raise LabelError(f"data.label_names lists {len(listed)} names but data.num_labels is {num_labels}")
    twice = sorted({n for n in listed if listed.count(n) > 1})
    if twice:
        raise LabelError(f"data.label_names lists {', '.join(map(repr, twice))} twice")


def class_names(values, num_labels: int, listed: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
    """Class names by id for the train split's label `values`: the recipe's list when given, None when the
    labels are class ids, else the sorted set of the names. Raises LabelError for a mix, too many names, or
    a value that is neither (a float such as 1.5, true/false, a list)."""
    if num_labels == 1:
        return None
    if listed:
        return tuple(listed)
    values = [v for v in values if v is not None]  # a null is refused row by row, with its line
    for v in values:  # a number that is not an integer (1.5, "1.5", NaN) is neither: refused, never rounded
        if not isinstance(v, int | float | str) or isinstance(v, bool) or (_number(v) is not None and not is_int_label(v)):
            raise LabelError(f"label {_shown(v)} is neither a class id (an integer in 0..{num_labels - 1}) nor a name")
    ids = [v for v in values if is_int_label(v)]
    if len(ids) == len(values):
        return None
    if ids:
        name = next(v for v in values if not is_int_label(v))
        raise LabelError(f"the train split mixes class ids ({_shown(ids[0])}) and names ({_shown(name)}): use one kind, "
                         "or list the names in data.label_names")
    names = tuple(sorted({v.strip() for v in values}))
    if len(names) > num_labels:
        raise LabelError(f"the train split has {len(names)} distinct labels ({', '.join(names[:10])}"
                         f"{', ...' if len(names) > 10 else ''}) but data.num_labels is {num_labels}")
    return names


def parse_label(v, num_labels: int, names: tuple[str, ...] | list[str] | None, *, listed: bool = False) -> int | float:
    """A label as the model trains on it: a float for regression (num_labels 1), the index of its name
    when the labels are names, else an int class id in 0..num_labels-1. `listed`: the names are the
    recipe's data.label_names (a JSON integer id is then accepted too). Raises LabelError saying what
    was expected; callers add where the label is."""
    if v is None:
        raise LabelError("is null")
    if num_labels == 1:
        number = _number(v)  # as written: not "1_0", not "nan"
        if number is None or not math.isfinite(number):
            raise LabelError(f"label {_shown(v)} is not a finite number (data.num_labels is 1: regression)")
        return number
    if names is not None:
        if isinstance(v, str) and v.strip() in names:
            return list(names).index(v.strip())
        if listed and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(names):
            return v  # a JSON id beside the names the recipe lists
        where = "data.label_names" if listed else "the train split's labels"
        raise LabelError(f"label {_shown(v)} is not one of {where} ({', '.join(names)})")
    if not is_int_label(v):
        raise LabelError(f"label {_shown(v)} is not a class id (an integer in 0..{num_labels - 1})")
    if not 0 <= _as_id(v) < num_labels:
        raise LabelError(f"label {_shown(v)} is not a class id in 0..{num_labels - 1} (data.num_labels is {num_labels})")
    return _as_id(v)
