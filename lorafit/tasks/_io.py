"""File reading shared by the task loaders: strict UTF-8, tab-separated rows without CSV quoting,
CSV, and JSON Lines (through the one JSON reader, lorafit/data/jsonrows.py), and the one-line
`DataError`s they raise.

Every message names the task and the file (and the line where there is one), so a user can fix the
data without reading a traceback.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from lorafit.data.jsonrows import json_rows
from lorafit.errors import DataError


def check_split(task: str, split: str, splits: Sequence[str], note: str = "") -> None:
    """Refuse a split name the task does not have, listing the ones it does."""
    if split not in splits:
        extra = f"; {note}" if note else ""
        raise DataError(f"task {task}: unknown split {split!r} (valid: {', '.join(splits)}){extra}")


def find_file(task: str, split: str, directory: Path, files: Mapping[str, str | Sequence[str]]) -> Path:
    """The file for `split` in `directory`; the first that exists when a split accepts several names.

    `files` maps every split to its file name(s), so a missing file's message lists what the
    directory should hold.
    """
    names = files[split]
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        path = directory / name
        if path.is_file():
            return path
    wanted = " or ".join(names)
    listing = ", ".join(f"{n if isinstance(n, str) else ' or '.join(n)} ({s})" for s, n in files.items())
    where = f"in {directory}" if directory.is_dir() else f"in {directory}, which does not exist"
    raise DataError(f"task {task}, split {split}: {wanted} not found {where} (expected files: {listing})")


def read_text(task: str, path: Path) -> str:
    """The whole file as text: gunzipped if it ends in .gz, UTF-8 with an optional BOM, strict.

    A byte that is not UTF-8 is reported with its byte offset and line number.
    """
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise DataError(f"task {task}: file not found: {path}") from None
    except (OSError, EOFError) as e:  # unreadable, or a corrupt gzip stream
        raise DataError(f"task {task}: cannot read {path}: {e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
        offset = e.start + bom  # utf-8-sig reports offsets after the BOM
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(
            f"task {task}: {path} is not UTF-8: byte 0x{data[offset]:02x} at offset {offset} (line {line})"
        ) from None


def lines_of(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for each non-blank line; `\\n` or `\\r\\n` endings.

    Splits on newlines only: `str.splitlines` would also break lines at U+2028, U+0085 and friends,
    which occur inside sentences.
    """
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield number, line


def read_tsv(task: str, path: Path, header: bool = True) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A tab-separated file read with no quoting at all: a `"` is an ordinary character.

    GLUE's TSVs hold literal quote characters ("the witness"); the csv module's default quoting would
    join lines or drop the quotes. Returns (header names, [(line number, fields)]); every row must
    have as many fields as the header (or as the first row, without a header).
    """
    rows = [(number, line.split("\t")) for number, line in lines_of(read_text(task, path))]
    names = rows.pop(0)[1] if header and rows else []
    if not rows:
        raise DataError(f"task {task}: {path} has no data rows")
    width = len(names) if header else len(rows[0][1])
    for number, fields in rows:
        if len(fields) != width:
            raise DataError(
                f"task {task}: {path} line {number} has {len(fields)} tab-separated fields, expected {width}"
            )
    return names, rows


def column_index(task: str, path: Path, names: list[str], wanted: Sequence[str]) -> list[int]:
    """Positions of the `wanted` header columns; a missing one is an error listing what is there."""
    missing = [name for name in wanted if name not in names]
    if missing:
        raise DataError(
            f"task {task}: {path} has no column {', '.join(map(repr, missing))} (columns: {', '.join(names)})"
        )
    return [names.index(name) for name in wanted]


def read_csv(task: str, path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A comma-separated file with a header row and standard quoting (quoted fields may hold newlines).

    Returns (header names, [(line number, fields)]); the line number is where the record ends.
    """
    text = read_text(task, path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        names = next(reader, None)
        rows = [(reader.line_num, fields) for fields in reader if any(fields)]  # skip blank lines
    except csv.Error as e:
        raise DataError(f"task {task}: {path} line {reader.line_num}: bad CSV: {e}") from None
    if names is None or not rows:
        raise DataError(f"task {task}: {path} has no data rows")
    for number, fields in rows:
        if len(fields) != len(names):
            raise DataError(
                f"task {task}: {path} line {number} has {len(fields)} fields, the header has {len(names)}"
            )
    return names, rows


def read_jsonl(task: str, path: Path) -> list[tuple[int, dict]]:
    """JSON Lines (or a JSON array of objects): [(line number, object)], blank lines skipped.

    Read by the one JSON reader (lorafit/data/jsonrows.py), so every broken line is reported alike;
    its messages get the task's name in front."""
    try:
        return list(json_rows(path))
    except DataError as e:
        raise DataError(f"task {task}: {e}") from None


def check_lengths(task: str, predictions: Sequence, items: Sequence) -> None:
    """Refuse a predictions list whose length differs from the eval items'."""
    if len(predictions) != len(items):
        raise DataError(f"task {task}: {len(predictions)} predictions for {len(items)} eval items")
