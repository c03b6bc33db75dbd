"""Property tests: whatever rows a user's file holds, each format's reader gives well-typed normalised rows
or one clean line `<file> line N: ...` (a DataError), never anything else (TypeError, KeyError, an Arrow
error) and never a value changed on the way (a label 1.5 is refused, not rounded; a number is not text).

Three levels: one row through `normalise_row` (every format, with an oracle for what must be accepted),
arbitrary bytes through the one JSON reader, and whole generated files through `normalised_split` (the
reader, the row checks and the Arrow writer together).
"""

import dataclasses
import json
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lorafit.data.formats import ROLES, Format, format_of, normalise_row
from lorafit.data.jsonrows import json_rows
from lorafit.data.source import resolve_source
from lorafit.errors import DataError
from lorafit.recipe.schema import DataConfig
from lorafit.tasks.dataset import normalised_split

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FILES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WHERE = "d.jsonl line 7"

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.integers(), st.just(10**400), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([1.5, 1.0, 0.0, -0.0, 2.0]), st.text(max_size=8),
                    st.sampled_from(["", " ", "0", "1", "7", "+1", "1.0", "pos", "neg", "x\u2028y", "a\ud800b", "\udfff"]))
keys = st.text(max_size=4) | st.just("k\ud800")  # JSON may escape half a surrogate pair anywhere
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                      max_leaves=6)
messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from([*ROLES, "bot", "human", "gpt"]) | values, "content": values}),
    st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "observation", "user", "bot"]) | values,
                           "value": values}),
    values), max_size=4)

FORMATS = {
    "completion": DataConfig(source="d.jsonl", prompt_field="q", completion_field="a"),
    "template": DataConfig(source="d.jsonl", prompt_template="Q: {q} ({id})", completion_field="a"),
    "alpaca": DataConfig(source="d.jsonl", format="alpaca"),
    "classification": DataConfig(source="d.jsonl", text_field="t", label_field="y", num_labels=3),
    "regression": DataConfig(source="d.jsonl", text_field="t", label_field="y", num_labels=1),
    "chat": DataConfig(source="d.jsonl", format="chat"),
    "sharegpt": DataConfig(source="d.jsonl", format="sharegpt"),
}
FIELDS = {"completion": ["q", "a"], "template": ["q", "id", "a"], "alpaca": ["instruction", "input", "output"],
          "classification": ["t", "y"], "regression": ["t", "y"], "chat": ["messages"], "sharegpt": ["conversations"]}


def rows_for(name: str):
    """Rows with each field the format reads present or not, holding any JSON value (chats: message lists)."""
    def value_of(field):
        return messages | values if field in ("messages", "conversations") else values
    return st.fixed_dictionaries({}, optional={f: value_of(f) for f in FIELDS[name] + ["extra"]})


def class_id_oracle(v, num_labels: int) -> int | None:
    """What a label must be accepted as when the labels are class ids (None: refused)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v if 0 <= v < num_labels else None
    if isinstance(v, float):
        return int(v) if math.isfinite(v) and v.is_integer() and 0 <= v < num_labels else None
    if isinstance(v, str) and re.fullmatch(r"[+-]?[0-9]+", v.strip()):
        return int(v) if 0 <= int(v) < num_labels else None
    if isinstance(v, str) and re.fullmatch(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", v.strip()):
        number = float(v)  # a number written as text ("1.0", "1e0" from a CSV) is that number
        return int(number) if number.is_integer() and 0 <= number < num_labels else None
    return None


def check_row(name: str, fmt: Format, row: dict) -> None:
    try:
        out = normalise_row(fmt, row, WHERE, 6)
    except DataError as e:
        message = str(e)
        assert message.startswith(f"{WHERE}: ") and "\n" not in message, message
        return
    assert out and all(r["row"] == 6 for r in out)
    json.dumps(out, ensure_ascii=False).encode("utf-8")  # every text is real text: Arrow and tokenizers take it
    for r in out:
        if fmt.encoder == "generation":
            assert isinstance(r["prompt"], str) and isinstance(r["completion"], str) and r["completion"].strip()
        elif fmt.encoder == "classification":
            assert isinstance(r["text"], str) and r["text"].strip()
            if fmt.kind == "regression":
                assert isinstance(r["label"], float) and math.isfinite(r["label"])
                assert not isinstance(row["y"], bool) and float(row["y"]) == r["label"]
            else:
                assert r["label"] == class_id_oracle(row["y"], fmt.num_labels)
        else:
            roles = [m["role"] for m in r["messages"]]
            assert set(roles) <= set(ROLES) and "assistant" in roles
            assert all(isinstance(m["content"], str) for m in r["messages"])
    if name in ("completion", "template"):
        assert all(isinstance(row[f], str) for f in FIELDS[name] if f != "a")  # no number turned into text
        references = row["a"] if isinstance(row["a"], list) else [row["a"]]
        assert [r["completion"] for r in out] == references


@pytest.mark.parametrize("name", list(FORMATS))
def test_any_row_is_normalised_or_refused_in_one_line(name):
    fmt = format_of(FORMATS[name])

    @FUZZ
    @given(rows_for(name))
    @example({f: "a\ud800b" for f in FIELDS[name]} | {"y": 1})  # JSON's "\\ud800": valid JSON, not text
    @example({"q": "q", "id": "7", "a": ["x", 5], "instruction": "i", "output": "o", "t": "t", "y": 1.5})
    def run(row):
        check_row(name, fmt, row)

    run()


@FUZZ
@given(st.integers(-2, 4) | st.floats(allow_nan=True) | st.booleans()
       | st.sampled_from(["0", "2", "3", "1.5", "+1", " 1 ", "1.0", "2.", "3.0", "1e0", "nan", "pos"]))
def test_class_id_labels_are_accepted_exactly_when_they_are_ids_in_range(label):
    fmt = format_of(FORMATS["classification"])
    row = {"t": "some text", "y": label}
    expected = class_id_oracle(label, 3)
    if expected is None:
        with pytest.raises(DataError, match=rf"^{WHERE}: field 'y': label .* (is not a class id|is not a class id in 0\.\.2)"):
            normalise_row(fmt, row, WHERE, 0)
    else:
        assert normalise_row(fmt, row, WHERE, 0)[0]["label"] == expected


lines = st.one_of(
    st.builds(json.dumps, st.dictionaries(st.sampled_from(["q", "a", "x"]), values, max_size=3)),
    st.just('{"q": "a\\ud800", "a": "b"}'),  # an escaped lone surrogate: valid JSON, not text
    st.text(alphabet='{}[]":,0123456789 qa\\ntrue', max_size=20), st.just(""), st.just("   "),
)


@FILES
@given(st.lists(lines, max_size=6), st.binary(max_size=4), st.booleans())
def test_any_file_is_read_or_refused_in_one_line_naming_it(body, junk, as_array):
    """Arbitrary JSON Lines (broken lines, blank lines, stray bytes), or a JSON array: rows with their true
    line numbers, or one line naming the file."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("d.json" if as_array else "d.jsonl")
        text = ("[\n" + ",\n".join(body) + "\n]\n") if as_array else "\n".join(body) + "\n"
        path.write_bytes(text.encode() + junk)
        try:
            rows = list(json_rows(path))
        except DataError as e:
            message = str(e)
            assert message.startswith(str(path)) and "\n" not in message
            return
        file_lines = path.read_bytes().decode("utf-8-sig").split("\n")
        for line, row in rows:
            assert isinstance(row, dict)
            if not as_array:  # the line number is the line that holds the object
                assert json.loads(file_lines[line - 1]) == row


@FILES
@given(st.sampled_from(list(FORMATS)), st.data())
def test_any_file_through_the_whole_reader_gives_typed_rows_or_one_line(name, data):
    """Rows of mixed types (a field text in one row, a number in the next: what breaks Arrow's type
    inference) through reading, checking and the Arrow writer together."""
    rows = data.draw(st.lists(rows_for(name), min_size=1, max_size=4))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        options = dataclasses.replace(FORMATS[name], source=str(path))
        spec, fmt = resolve_source(options, None), format_of(options)
        try:
            table = normalised_split(spec, fmt, "train", keep_in_memory=True)
        except DataError as e:
            message = str(e)
            assert message.startswith(f"{path} line ") and "\n" not in message, message
            return
        assert sorted(set(table["row"])) == list(range(len(rows)))
