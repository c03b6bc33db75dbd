"""Class labels as files give them (ints, digit strings, names, numbers) -> what the model trains on.

Shared by the built-in `text` task (lorafit/tasks/text.py) and the `data.source` formats
(lorafit/data/formats.py), which word their errors for their own sources. A leaf module: it imports
nothing from lorafit, so both can use it without an import cycle.
"""

from __future__ import annotations

import re

_INT = re.compile(r"[+-]?\d+")


def is_int_label(v) -> bool:
    """True for an int, or a string of digits (a class id as CSV gives it)."""
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and bool(_INT.fullmatch(v.strip())))


def parse_label(v, num_labels: int, names: list[str] | None) -> int | float:
    """A label as the model trains on it: a float for regression (num_labels 1), the index of its name
    when the labels are names, else an int class id in 0..num_labels-1. Raises ValueError naming what
    was expected ("number", "name" or "class id"); callers word the error for their own source."""
    if num_labels == 1:
        if isinstance(v, bool):
            raise ValueError("number")
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ValueError("number") from None
    if names is not None:
        if str(v).strip() not in names:
            raise ValueError("name")
        return names.index(str(v).strip())
    if not is_int_label(v) or not 0 <= int(v) < num_labels:
        raise ValueError("class id")
    return int(v)
