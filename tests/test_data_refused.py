"""Every class of malformed data file through the real CLI (`lorafit data`, and `lorafit train` for some):
exit 2 and exactly one line, `error: <file> line N: <field>: <what>` (row N for columnar files)."""

import json
import shutil

import pytest
from datahelp import CHATML, jsonl
from typer.testing import CliRunner

from lorafit.cli import app


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LORAFIT_DATA", str(tmp_path))  # relative data.source paths are taken from here
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


# A template that refuses two user turns in a row, as Llama-2's and Mistral's do
ALTERNATING = ("{% for m in messages %}{% if loop.index0 > 0 and m['role'] == 'user' and "
               "messages[loop.index0 - 1]['role'] == 'user' %}{{ raise_exception('Conversation roles must alternate "
               "user/assistant/user/assistant/...') }}{% endif %}{% endfor %}" + CHATML)


def with_template(model_dir, target, template):
    shutil.copytree(model_dir, target)
    config = json.loads((target / "tokenizer_config.json").read_text())
    (target / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    return target


@pytest.fixture(scope="module")
def chat_model_dir(model_dir, tmp_path_factory):
    """The tiny model with a ChatML template (the chat formats need one)."""
    return with_template(model_dir, tmp_path_factory.mktemp("chatmodel") / "llama", CHATML)


def refused(cli, tmp_path, model, data: str, *, train: bool = False) -> str:
    """Run `lorafit data` (and `lorafit train` when asked) on a recipe with these data: lines; each must exit 2
    with exactly one error line, the same for both, which is returned."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {model}\ntask: text\ndata:\n{data}train: {{max_steps: 1}}\n", encoding="utf-8")
    commands = [("data", recipe, "--no-plot")] + ([("train", recipe, "-o", tmp_path / "run")] if train else [])
    seen = set()
    for command in commands:
        done = cli(*command)
        assert done.exit_code == 2, done.output
        lines = done.output.strip().splitlines()
        assert [line for line in lines if line.startswith("error: ")] == lines[-1:], done.output
        assert "Traceback" not in done.output
        seen.add(lines[-1])
    assert len(seen) == 1, seen
    return seen.pop()


COMPLETION = "  prompt_field: q\n  completion_field: a\n"
LABELS = "  text_field: t\n  label_field: y\n  num_labels: 2\n"


def test_a_number_or_a_list_where_text_is_expected(cli, tmp_path, model_dir):
    p = jsonl(tmp_path / "d.jsonl", [{"q": "x", "a": " y"}, {"q": "x", "a": 5}])
    assert refused(cli, tmp_path, model_dir, f"  source: {p}\n{COMPLETION}") == \
        f"error: {p} line 2: field 'a' should be text, got a number (5)"
    jsonl(p, [{"q": ["x"], "a": " y"}])
    assert refused(cli, tmp_path, model_dir, f"  source: {p}\n{COMPLETION}") == \
        f"error: {p} line 1: field 'q' should be text, got an array"


def test_half_a_surrogate_pair_is_not_text(cli, tmp_path, model_dir):
    p = tmp_path / "d.jsonl"
    p.write_text('{"q": "ok", "a": " x"}\n{"q": "a\\ud800b", "a": " x"}\n', encoding="utf-8")  # valid JSON
    assert refused(cli, tmp_path, model_dir, f"  source: {p}\n{COMPLETION}", train=True) == \
        f"error: {p} line 2: field 'q' holds \\ud800, half of a UTF-16 surrogate pair: not text"


def test_a_missing_field_and_an_empty_trained_text(cli, tmp_path, model_dir):
    p = jsonl(tmp_path / "d.jsonl", [{"q": "x"}])
    assert refused(cli, tmp_path, model_dir, f"  source: {p}\n{COMPLETION}") == \
        f"error: {p} line 1: no field 'a' (fields: q); set data.format / data.*_field"
    jsonl(p, [{"instruction": "Add.", "output": " "}])
    assert refused(cli, tmp_path, model_dir, f"  source: {p}\n  format: alpaca\n") == \
        f"error: {p} line 1: field 'output' is empty (nothing to learn)"


def test_a_label_that_is_not_a_class_id_is_refused_not_rounded(cli, tmp_path, model_dir):
    p = jsonl(tmp_path / "d.jsonl", [{"t": "a", "y": 0}, {"t": "b", "y": 1.5}])
    assert refused(cli, tmp_path, model_dir, f"  source: {p}\n{LABELS}", train=True) == \
        f"error: {p} line 2: field 'y': label 1.5 is neither a class id (an integer in 0..1) nor a name"


def test_a_label_out_of_range_in_a_parquet_file_names_its_row(cli, tmp_path, model_dir):
    import datasets

    p = tmp_path / "d.parquet"
    datasets.Dataset.from_dict({"t": ["a", "b", "c"], "y": [0, 1, 7]}).to_parquet(str(p))
    assert refused(cli, tmp_path, model_dir, f"  source: {p}\n{LABELS}") == \
        f"error: {p} row 3: field 'y': label 7 is not a class id in 0..1 (data.num_labels is 2)"


def test_a_label_seen_only_in_the_validation_split_is_named(cli, tmp_path, model_dir):
    train = jsonl(tmp_path / "tr.jsonl", [{"t": "a", "y": "pos"}, {"t": "b", "y": "neg"}])
    valid = jsonl(tmp_path / "va.jsonl", [{"t": "c", "y": "pos"}, {"t": "d", "y": "neutral"}])
    data = f"  source: {{train: {train}, validation: {valid}}}\n{LABELS}"
    assert refused(cli, tmp_path, model_dir, data, train=True) == \
        f"error: {valid} line 2: field 'y': label 'neutral' is not one of the train split's labels (neg, pos)"
    jsonl(train, [{"t": "a", "y": 0}, {"t": "b", "y": "pos"}])
    assert refused(cli, tmp_path, model_dir, data) == (
        f"error: data.source train split ({train}): field 'y': the train split mixes class ids (0) and names ('pos'): "
        "use one kind, or list the names in data.label_names")


def test_empty_files_and_files_without_a_row(cli, tmp_path, model_dir):
    p = tmp_path / "d.jsonl"
    for content, message in [(b"", "is empty"), (b"\n  \n", "has no data rows (only blank lines)")]:
        p.write_bytes(content)
        assert refused(cli, tmp_path, model_dir, f"  source: {p}\n{COMPLETION}") == f"error: {p} {message}"
    c = tmp_path / "d.csv"
    for content, message in [(b"", "is empty"), (b"q,a\n", "has no data rows (only the header)")]:
        c.write_bytes(content)
        assert refused(cli, tmp_path, model_dir, f"  source: {c}\n{COMPLETION}") == f"error: {c} {message}"


def test_a_broken_json_line_is_named_by_its_line_in_the_file(cli, tmp_path, model_dir):
    p = tmp_path / "d.jsonl"
    broken = '{"q": "c", "a": '
    p.write_text('{"q": "a", "a": " b"}\n\n' + broken + "\n", encoding="utf-8")  # line 2 is blank: line 3 is broken
    assert refused(cli, tmp_path, model_dir, f"  source: {p}\n{COMPLETION}", train=True) == \
        f"error: {p} line 3: invalid JSON: Expecting value (column {len(broken) + 1})"
    p.write_text('{"q": "a", "a": NaN}\n', encoding="utf-8")
    assert refused(cli, tmp_path, model_dir, f"  source: {p}\n{COMPLETION}") == \
        f"error: {p} line 1: invalid JSON: NaN is not valid JSON (write it as a string, or leave the row out)"


def test_split_mapping_with_a_missing_file_or_an_empty_glob(cli, tmp_path, model_dir):
    train = jsonl(tmp_path / "tr.jsonl", [{"q": "a", "a": " b"}])
    assert refused(cli, tmp_path, model_dir, f"  source: {{train: {train}, validation: nope.jsonl}}\n{COMPLETION}") == \
        f"error: data.source.validation: {tmp_path / 'nope.jsonl'} not found"
    assert refused(cli, tmp_path, model_dir, f"  source: {{train: [{train}, 'shards/*.jsonl']}}\n{COMPLETION}") == \
        f"error: data.source.train: the glob '{tmp_path / 'shards' / '*.jsonl'}' matches no file"


def test_sharegpt_role_not_known(cli, tmp_path, chat_model_dir):
    p = jsonl(tmp_path / "d.jsonl", [{"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}])
    assert refused(cli, tmp_path, chat_model_dir, f"  source: {p}\n  format: sharegpt\n") == (
        f"error: {p} line 1: field 'conversations' message 2: from 'bot' is not one of assistant, gpt, human, "
        "observation, system, tool, user (data.role_names)")


def test_a_conversation_the_chat_template_refuses_is_named_by_its_line(cli, tmp_path, model_dir):
    model = with_template(model_dir, tmp_path / "strict", ALTERNATING)
    good = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    p = jsonl(tmp_path / "d.jsonl", [{"messages": good}, {"messages": [good[0], good[0], good[1]]}])
    assert refused(cli, tmp_path, model, f"  source: {p}\n", train=True) == (
        f"error: {p} line 2: the chat template cannot render this conversation: Conversation roles must alternate "
        "user/assistant/user/assistant/...")


def test_split_mapping_and_sharegpt_train(cli, tmp_path, chat_model_dir):
    """The working path of the two new inputs: a split mapping (two files for train, one for validation) of
    ShareGPT rows with a remapped role name; the first example's trained text is the gpt turn."""
    def row(i):
        return {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": f"q{i}"},
                                  {"from": "model", "value": f"a{i}"}]}
    jsonl(tmp_path / "a.jsonl", [row(i) for i in range(3)])
    jsonl(tmp_path / "b.jsonl", [row(i) for i in range(3, 5)])
    jsonl(tmp_path / "v.jsonl", [row(9)])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {chat_model_dir}\ntask: text\ndata:\n  source: {{train: ['{tmp_path}/[ab].jsonl'], "
                      f"validation: {tmp_path / 'v.jsonl'}}}\n  format: sharegpt\n  role_names: {{model: assistant}}\n",
                      encoding="utf-8")
    done = cli("data", recipe, "--json", "--no-plot")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert (summary["train_examples"], summary["valid_examples"]) == (5, 1)
    done = cli("data", recipe, "--no-plot")
    shown = f"from train: {tmp_path}/[ab].jsonl; validation: {tmp_path / 'v.jsonl'}"
    assert "".join(shown.split()) in "".join(done.output.split())  # however the terminal wraps it
    assert "trained on: 'a0<|im_end|>'" in done.output
