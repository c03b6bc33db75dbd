"""The one JSON reader (lorafit/data/jsonrows.py): rows with the line they start on, and exact one-line errors."""

import gzip

import pytest

from lorafit.data.jsonrows import json_rows
from lorafit.errors import DataError


@pytest.mark.parametrize("name, content, rows", [
    ("a.jsonl", b'{"a": 1}\n\n  \n{"a": 2}\r\n', [(1, {"a": 1}), (4, {"a": 2})]),  # blank lines dropped, counted
    ("a.jsonl", b'\xef\xbb\xbf{"a": "\xe2\x80\xa8"}', [(1, {"a": "\u2028"})]),  # a BOM; U+2028 is not a line break
    ("a.json", b'\n[\n {"a": 1},\n\n {"a": 2}\n]\n', [(3, {"a": 1}), (5, {"a": 2})]),  # an array: where each starts
    ("a.json", b'[{"a": 1}, {"a": 2}]', [(1, {"a": 1}), (1, {"a": 2})]),
])
def test_rows_and_their_lines(tmp_path, name, content, rows):
    (tmp_path / name).write_bytes(content)
    assert list(json_rows(tmp_path / name)) == rows


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\n \n", "has no data rows (only blank lines)"),
    (b'{"a": 1}\n{"a": \n', "line 2: invalid JSON: Expecting value (column 7)"),
    (b'{"a": 1}\n[1, 2]\n', "line 2: expected a JSON object ({...}), got an array"),
    (b'{"a": 1}\n"text"\n', "line 2: expected a JSON object ({...}), got a string"),
    (b'{"a": NaN}\n', "line 1: invalid JSON: NaN is not valid JSON (write it as a string, or leave the row out)"),
    (b'{"a": -Infinity}\n', "line 1: invalid JSON: -Infinity is not valid JSON (write it as a string, or leave the row out)"),
    (b'{"a": 1, "b": {"c": 1, "c": 2}}\n', "line 1: invalid JSON: key 'c' appears twice in one object"),
    (b'{"a": 1} {"b": 2}\n', "line 1: invalid JSON: something follows the object (column 10; one object per line)"),
    (b'{"a": 1}\n{"a": "caf\xe9"}\n', "is not UTF-8: byte 0xe9 at offset 19 (line 2)"),
    (b'[\n{"a": 1},\n{"a": 2,}\n]', "line 3: invalid JSON: Expecting property name enclosed in double quotes (column 9)"),
    (b'[\n{"a": 1},\n3\n]', "line 3: expected a JSON object ({...}), got a number (3)"),
    (b'[\n{"a": 1}\n{"a": 2}]', "line 3: invalid JSON: expected ',' or ']' after an object"),
    (b'[{"a": 1},\n', "line 2: invalid JSON: the array is not closed (no ']')"),
    (b'[{"a": 1}]\n{"b": 2}', "line 2: invalid JSON: something follows the array's ']'"),
    (b"[ ]", "has no data rows (an empty array)"),
    (b'[\n{"a": 1},\n{"a": "\xff"}]', "is not UTF-8: byte 0xff at offset 19 (line 3)"),
])
def test_broken_files_are_one_line_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / ("a.json" if content.lstrip().startswith(b"[") else "a.jsonl")
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        list(json_rows(path))
    assert str(error.value) == f"{path} {message}"


def test_gzip(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n\n{"a": 2}\n'))
    assert list(json_rows(tmp_path / "a.jsonl.gz")) == [(1, {"a": 1}), (3, {"a": 2})]
    (tmp_path / "b.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"b\.jsonl\.gz: Not a gzipped file"):
        list(json_rows(tmp_path / "b.jsonl.gz"))
