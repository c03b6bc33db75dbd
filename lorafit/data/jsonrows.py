"""The one reader of users' JSON Lines and JSON files: each object with the line it starts on.

    json_rows(path) -> Iterator[(line, dict)]      line: 1-based, the actual line of the file

Used by `data.source` (data/source.py) and the named tasks' files (tasks/_io.py), so a broken file gets
the same one-line `DataError` everywhere. A file is JSON Lines (one object per line, streamed: memory
stays flat) unless its first character is `[`: then it is one array of objects, each reported at the
line where it starts. `.gz` files are read through gzip.

Refused, with the file and the line: bytes that are not UTF-8 (with the byte offset), a line that is
not valid JSON, NaN / Infinity (not JSON), a value that is not an object, an object with a key twice,
an empty file, a file of blank lines only. Dropped: blank lines (whitespace only) between rows.
JSON may also escape half a surrogate pair ("\\ud800"): not text; `check_unicode` refuses it in the fields
that are read as text (checking every string of every row here would cost more than the parse).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from lorafit.errors import DataError


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (write it as a string, or leave the row out)")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {twice!r} appears twice in one object")
    return row


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)


def json_kind(value) -> str:
    """A value's kind as the user wrote it in JSON: 'a number (5)', 'an array', 'an object', 'true', 'a string'."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    if isinstance(value, int | float):
        shown = str(value)
        return f"a number ({shown if len(shown) <= 40 else shown[:37] + '...'})"
    kinds = {list: "an array", tuple: "an array", dict: "an object", str: "a string"}
    return next((name for t, name in kinds.items() if isinstance(value, t)), type(value).__name__)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def _decode(raw: bytes, path: Path, line: int, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at_line = line + raw.count(b"\n", 0, e.start)  # `raw` may be the rest of a JSON array: many lines
        raise DataError(f"{path} is not UTF-8: byte 0x{raw[e.start]:02x} at offset {offset + e.start} "
                        f"(line {at_line})") from None


def _parse(text: str, path: Path, base: int, start: int = 0) -> tuple[dict, int]:
    """The JSON object of `text` at `start`: (object, where it ends). `base`: the file's line before text[0]."""
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as e:  # its lineno counts from text[0]
        raise DataError(f"{path} line {base + e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # NaN, a key twice; nesting too deep
        reason = str(e) if isinstance(e, ValueError) else "nested too deeply"
        raise DataError(f"{path} line {base + text.count(chr(10), 0, start) + 1}: invalid JSON: {reason}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} line {base + text.count(chr(10), 0, start) + 1}: expected a JSON object ({{...}}), "
                        f"got {json_kind(value)}")
    return value, end


def _array_rows(text: str, path: Path, base: int) -> Iterator[tuple[int, dict]]:
    """The objects of one JSON array, each with the file's line where it starts (text[0] is on line base + 1)."""
    line, counted = base + 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip(text.index("[") + 1)
    rows = 0
    while pos < len(text) and text[pos] != "]":
        row, end = _parse(text, path, base, pos)
        rows += 1
        yield line_at(pos), row
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < len(text) and text[pos] != "]":
            raise DataError(f"{path} line {line_at(pos)}: invalid JSON: expected ',' or ']' after an object")
    if pos >= len(text):
        raise DataError(f"{path} line {line_at(len(text))}: invalid JSON: the array is not closed (no ']')")
    if skip(pos + 1) < len(text):
        raise DataError(f"{path} line {line_at(skip(pos + 1))}: invalid JSON: something follows the array's ']'")
    if not rows:
        raise DataError(f"{path} has no data rows (an empty array)")


def json_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line, object) for every row of a JSON Lines file, or of a JSON file holding one array."""
    path = Path(path)
    try:
        f = _open(path)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    rows = 0
    with f:
        try:
            offset, line = 0, 0
            for raw in f:
                line += 1
                if line == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, as editors on Windows write
                    raw, offset = raw[3:], 3
                text = _decode(raw, path, line, offset).rstrip("\r\n")
                offset += len(raw)
                stripped = text.strip()
                if not stripped:
                    continue
                if rows == 0 and stripped.startswith("["):  # one JSON array: the whole file is needed
                    rest = f.read()
                    whole = text + "\n" + _decode(rest, path, line + 1, offset)
                    yield from _array_rows(whole, path, line - 1)
                    return
                row, end = _parse(text, path, line - 1)
                if text[end:].strip():
                    column = len(text) - len(text[end:].lstrip()) + 1  # where the extra starts
                    raise DataError(f"{path} line {line}: invalid JSON: something follows the object "
                                    f"(column {column}; one object per line)")
                rows += 1
                yield line, row
        except (OSError, EOFError) as e:  # unreadable, or a corrupt gzip stream
            raise DataError(f"cannot read {path}: {e}") from None
    if rows == 0:
        raise DataError(f"{path} is empty" if line == 0 else f"{path} has no data rows (only blank lines)")


def check_unicode(value: str, where: str, field: str) -> str:
    """`value`, unless it holds a lone surrogate (JSON may write "\\ud800"; it is not text and no tokenizer
    or Arrow file takes it)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = value[e.start].encode("utf-8", "backslashreplace").decode()
            raise DataError(f"{where}: field {field!r} holds {bad}, half of a UTF-16 surrogate pair: not text") from None
    return value
