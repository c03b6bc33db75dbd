"""data.source and data.format on small files: every format and reader, splits, and bad data named by file, row, field."""

import dataclasses
import json

import pytest
from datahelp import chat_tokenizer, conversation, jsonl, recipe
from tiny import tiny_tokenizer

from lorafit.data.batches import IGNORE_INDEX
from lorafit.data.pipeline import prepare
from lorafit.errors import DataError
from lorafit.tasks import get_task
from lorafit.tasks.types import ClassificationExample, EvalItem, GenerationExample


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "cache"))


def run(r, tok=None):
    task = get_task(r.task, r.data)
    return task, prepare(r, task, tok or tiny_tokenizer())


def text_of(tok, ids):
    return tok.decode([i for i in ids if i != IGNORE_INDEX])


def test_completion_jsonl_with_prompt_field_and_list_completions(tmp_path):
    jsonl(tmp_path / "qa.jsonl", [{"q": "Capital of France?", "a": " Paris"}, {"q": "2+2?", "a": [" 4", " four"]}])
    r = recipe(source=str(tmp_path / "qa.jsonl"), format="completion", prompt_field="q", completion_field="a",
               max_valid_examples=None)
    task, data = run(r)
    assert task.kind == "generation" and len(data.train) == 3 and len(data.valid) == 0
    tok = tiny_tokenizer()
    first = data.train[0]
    assert tok.decode(first.input_ids[1:]) == "Capital of France? Paris</s>"
    assert text_of(tok, first.labels) == " Paris</s>"
    assert task.load_eval(tmp_path, "train") == [EvalItem("Capital of France?", (" Paris",)), EvalItem("2+2?", (" 4", " four"))]


def test_csv_with_template_keeps_cells_as_written(tmp_path):
    (tmp_path / "d.csv").write_text('id,question,answer\n007,"Say ""hi""",NA\n8,x, y\n', encoding="utf-8")
    r = recipe(source="d.csv", prompt_template="{id}: {question} ->", completion_field="answer")
    task = get_task(r.task, r.data)
    assert task.load_train(tmp_path, "train") == [GenerationExample('007: Say "hi" ->', "NA"), GenerationExample("8: x ->", " y")]


def test_alpaca_parquet(tmp_path):
    import datasets

    datasets.Dataset.from_list([
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Greet.", "input": "", "output": "Hello"},
    ]).to_parquet(str(tmp_path / "alpaca.parquet"))
    r = recipe(source=str(tmp_path / "alpaca.parquet"), format="alpaca")
    task = get_task(r.task, r.data)
    examples = task.load_train(tmp_path, "train")
    assert examples[0].prompt.endswith("### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n")
    assert "### Input" not in examples[1].prompt and examples[1].completion == "Hello"
    _, data = run(r)
    assert len(data.train) == 2


def test_classification_tsv_string_labels_and_dev_file_by_name(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.tsv").write_text('sentence\tlabel\ngood "film"\tpos\nbad\tneg\nok\tpos\n', encoding="utf-8")
    (tmp_path / "data" / "dev.tsv").write_text("sentence\tlabel\nfine\tpos\n", encoding="utf-8")
    r = recipe(source=str(tmp_path / "data"), format="classification", text_field="sentence", label_field="label", num_labels=2)
    task, data = run(r)
    assert task.kind == "classification" and task.num_labels == 2
    assert [e.target for e in data.train] == [1, 0, 1] or sorted(e.target for e in data.train) == [0, 1, 1]
    assert [e.target for e in data.valid] == [1]
    assert task.load_eval(tmp_path, "dev") == [ClassificationExample("fine", None, 1)]
    assert task.load_train(tmp_path, "train")[0].text == 'good "film"'  # TSV: quotes are characters


def test_chat_json_array_masks_every_assistant_turn(tmp_path):
    (tmp_path / "chat.json").write_text(json.dumps([conversation(0, turns=2)]), encoding="utf-8")
    tok = chat_tokenizer()
    _, data = run(recipe(source=str(tmp_path / "chat.json")), tok)  # format auto: chat
    e = data.train[0]
    learned = [tok.decode([i]) for i, lab in zip(e.input_ids, e.labels, strict=True) if lab != IGNORE_INDEX]
    assert "".join(learned) == "a0.0<|im_end|>a0.1<|im_end|>"


def test_save_to_disk_dict_glob_and_valid_fraction(tmp_path):
    import datasets

    rows = [conversation(i) for i in range(40)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:30]),
                          "validation": datasets.Dataset.from_list(rows[30:])}).save_to_disk(str(tmp_path / "saved"))
    tok = chat_tokenizer()
    _, data = run(recipe(source=str(tmp_path / "saved")), tok)
    assert (len(data.train), len(data.valid)) == (30, 10)
    for k in range(4):
        jsonl(tmp_path / f"part-{k}.jsonl", rows[k * 10:(k + 1) * 10])
    _, carved = run(recipe(source=str(tmp_path / "part-*.jsonl"), valid_fraction=0.25), tok)
    assert (len(carved.train), len(carved.valid)) == (30, 10)
    train_rows, valid_rows = set(carved.train.column("row")), set(carved.valid.column("row"))
    assert not train_rows & valid_rows and len(train_rows | valid_rows) == 40
    _, again = run(recipe(source=str(tmp_path / "part-*.jsonl"), valid_fraction=0.25, max_valid_examples=None), tok)
    assert set(again.valid.column("row")) == valid_rows  # seeded: the same rows every time


@pytest.mark.parametrize("rows, data, message", [
    ([{"q": "a"}], {"format": "completion", "prompt_field": "q", "completion_field": "a"},
     r"d\.jsonl line 1: no field 'a' \(fields: q\); set data\.format / data\.\*_field$"),
    ([{"q": "a", "a": "b"}, {"q": "x", "a": None}], {"format": "completion", "prompt_field": "q", "completion_field": "a"},
     r"d\.jsonl line 2: field 'a' is null$"),
    ([{"q": "a", "a": {"x": 1}}], {"format": "completion", "prompt_field": "q", "completion_field": "a"},
     r"d\.jsonl line 1: field 'a' should be text, got an object$"),
    ([conversation(0), {"messages": []}], {}, r"d\.jsonl line 2: field 'messages': empty conversation$"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], {}, r"d\.jsonl line 1: field 'messages': no assistant turn"),
    ([{"messages": [{"role": "bot", "content": "hi"}]}], {},
     r"line 1: field 'messages' message 1: role 'bot' is not one of assistant, system, tool, user \(data\.role_names\)$"),
    ([{"t": "x", "y": "7"}], {"format": "classification", "text_field": "t", "label_field": "y", "num_labels": 2},
     r"d\.jsonl line 1: field 'y': label '7' is not a class id in 0\.\.1 \(data\.num_labels is 2\)$"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, rows, data, message):
    jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=message):
        run(recipe(source=str(tmp_path / "d.jsonl"), **data), chat_tokenizer())


def test_non_utf8_missing_source_and_offline_hub(tmp_path, monkeypatch):
    first = json.dumps(conversation(0)).encode() + b"\n"  # rows are read in order: line 1 is fine
    (tmp_path / "bad.jsonl").write_bytes(first + b'{"a": "caf\xe9"}\n')
    offset = len(first) + len('{"a": "caf')
    with pytest.raises(DataError, match=rf"bad\.jsonl is not UTF-8: byte 0xe9 at offset {offset} \(line 2\)"):
        run(recipe(source=str(tmp_path / "bad.jsonl")), chat_tokenizer())
    with pytest.raises(DataError, match=r"data\.source: .*nothere\.jsonl not found"):
        run(recipe(source=str(tmp_path / "nothere.jsonl")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"'someorg/somedata' is not a local file .* offline .*save_to_disk\('DIR'\).* data\.source: DIR"):
        get_task("text", recipe(source="someorg/somedata").data)  # the task is fine; reading fails
        run(recipe(source="someorg/somedata"))
    with pytest.raises(DataError, match=r"offline"):
        run(recipe(source="someorg/somedata"))
    # A Hub name needs no data directory: with $LORAFIT_DATA pointing nowhere, the error is still the
    # Hub's; a data_dir the recipe names must exist.
    monkeypatch.setenv("LORAFIT_DATA", str(tmp_path / "no-such-dir"))
    with pytest.raises(DataError, match=r"'someorg/somedata' is not a local file .* offline"):
        run(recipe(source="someorg/somedata"))
    with pytest.raises(DataError, match=r"data directory .*missing \(from the recipe's data_dir\) does not exist"):
        run(dataclasses.replace(recipe(source="someorg/somedata"), data_dir=str(tmp_path / "missing")))


def test_carved_dev_eval_items_are_the_carved_training_rows(tmp_path):
    rows = [{"q": f"q{i}", "a": f" a{i}"} for i in range(50)]
    jsonl(tmp_path / "d.jsonl", rows)
    r = recipe(source=str(tmp_path / "d.jsonl"), prompt_field="q", completion_field="a", valid_fraction=0.1)
    task, data = run(r)
    items = task.load_eval(tmp_path, "dev")
    assert len(items) == len(data.valid) == 5
    assert [it.prompt for it in items] == [rows[i]["q"] for i in sorted(data.valid.column("row"))]


def test_recipe_combinations_that_cannot_work_are_named():
    with pytest.raises(DataError, match=r"data\.source is read by task: text; task e2e reads its own files"):
        get_task("e2e", recipe("e2e", source="x.jsonl").data)
    with pytest.raises(DataError, match=r"set data\.source or data\.train_file"):
        get_task("text", recipe(source="x.jsonl", train_file="y.jsonl", completion_field="a", prompt_field="q").data)
    with pytest.raises(DataError, match=r"data\.valid_split .* or data\.valid_fraction .* not both"):
        get_task("text", recipe(source="x.jsonl", valid_split="dev", valid_fraction=0.1).data)
    with pytest.raises(DataError, match=r"classification needs data\.text_field, data\.label_field and data\.num_labels"):
        get_task("text", recipe(source="x.jsonl", format="classification", text_field="t").data)
    with pytest.raises(DataError, match=r"completion needs data\.completion_field"):
        get_task("text", recipe(source="x.jsonl", format="completion").data)


def test_sharegpt_rows_train_exactly_as_the_same_chat_rows(tmp_path):
    """ShareGPT keys and role names map onto the chat format: the same token ids and loss mask."""
    chats = [conversation(i, turns=2) for i in range(3)]
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    jsonl(tmp_path / "chat.jsonl", chats)
    jsonl(tmp_path / "share.jsonl", [{"conversations": [{"from": names[m["role"]], "value": m["content"]}
                                                         for m in c["messages"]]} for c in chats])
    tok = chat_tokenizer()
    _, chat = run(recipe(source=str(tmp_path / "chat.jsonl")), tok)
    _, share = run(recipe(source=str(tmp_path / "share.jsonl"), format="sharegpt"), tok)
    assert [(e.input_ids, e.labels) for e in share.train] == [(e.input_ids, e.labels) for e in chat.train]
    # remapped keys and names on the chat format: {speaker, text}, bot -> assistant
    jsonl(tmp_path / "own.jsonl", [{"turns": [{"speaker": {"human": "user", "gpt": "bot"}.get(m["from"], m["from"]),
                                               "text": m["value"]} for m in row["conversations"]]}
                                   for row in map(json.loads, (tmp_path / "share.jsonl").read_text().splitlines())])
    _, own = run(recipe(source=str(tmp_path / "own.jsonl"), format="chat", messages_field="turns", role_field="speaker",
                        content_field="text", role_names={"bot": "assistant"}), tok)
    assert [(e.input_ids, e.labels) for e in own.train] == [(e.input_ids, e.labels) for e in chat.train]
    with pytest.raises(DataError, match=r"^data\.role_names: 'robot' is not one of system, user, assistant, tool$"):
        run(recipe(source=str(tmp_path / "own.jsonl"), role_names={"bot": "robot"}), tok)


def test_label_names_from_the_recipe(tmp_path):
    jsonl(tmp_path / "train.jsonl", [{"t": "a", "y": "pos"}, {"t": "b", "y": 0}, {"t": "c", "y": "neutral"}])
    jsonl(tmp_path / "dev.jsonl", [{"t": "d", "y": "neg"}, {"t": "e", "y": "meh"}])
    keys = {"text_field": "t", "label_field": "y", "num_labels": 3, "label_names": ["neg", "neutral", "pos"]}
    r = recipe(source={"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "dev.jsonl")}, **keys)
    task = get_task(r.task, r.data)
    assert [e.label for e in task.load_train(tmp_path, "train")] == [2, 0, 1]  # names by position; a JSON id as it is
    with pytest.raises(DataError, match=r"dev\.jsonl line 2: field 'y': label 'meh' is not one of data\.label_names "
                                        r"\(neg, neutral, pos\)$"):
        task.load_eval(tmp_path, "dev")
    with pytest.raises(DataError, match=r"^data\.label_names lists 3 names but data\.num_labels is 2$"):
        get_task("text", recipe(source="x.jsonl", **{**keys, "num_labels": 2}).data)
    with pytest.raises(DataError, match=r"^data\.label_names lists 'a' twice$"):
        get_task("text", recipe(source="x.jsonl", **{**keys, "label_names": ["a", "b", "a"]}).data)


def test_recipe_mappings_name_the_wrong_entry_and_its_line():
    from lorafit.errors import RecipeError
    from lorafit.recipe import parse_recipe

    base = "model: m\ntask: text\ndata:\n  source:\n    train: a.jsonl\n"
    assert parse_recipe(base + "    validation: [b.jsonl, 'c/*.jsonl']\n").data.source == \
        {"train": "a.jsonl", "validation": ["b.jsonl", "c/*.jsonl"]}
    for extra, message in [("    validation: []\n", "r.yaml:6: data.source.validation: expected a string or a non-empty "
                                                     "list of strings, got a list"),
                           ("    test: 5\n", "r.yaml:6: data.source.test: expected a string or a non-empty list of strings, got 5"),
                           ("  role_names: {bot: [1]}\n", "r.yaml:6: data.role_names.bot: expected a string, got a list")]:
        with pytest.raises(RecipeError) as error:
            parse_recipe(base + extra, "r.yaml")
        assert str(error.value).strip().splitlines()[-1].strip() == message
