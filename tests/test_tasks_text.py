"""The generic `text` task on small files in tmp_path: both modes, file formats and errors."""

import json
from pathlib import Path

import pytest

from lorafit.errors import DataError
from lorafit.recipe.schema import DataConfig
from lorafit.tasks import get_task, text_task
from lorafit.tasks.text import label_names
from lorafit.tasks.types import ClassificationExample, EvalItem, GenerationExample

QA = [
    {"question": "Capital of France?", "answer": " Paris", "id": 1},
    {"question": "2 + 2?", "answer": " 4", "id": 2},
]
GEN = {"completion_field": "answer", "prompt_template": "Q: {question}\nA:"}


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_generation_jsonl(tmp_path):
    jsonl(tmp_path / "train.jsonl", QA)
    jsonl(tmp_path / "valid.jsonl", [{"question": "Blue + yellow?", "answer": [" green", " Green"]}])
    task = get_task("text", DataConfig(train_file="train.jsonl", valid_file="valid.jsonl", **GEN))
    assert (task.kind, task.num_labels, task.splits, task.main_metric) == ("generation", 0, ("train", "dev"), "bleu")
    options = DataConfig(train_file="train.jsonl", valid_file="valid.jsonl", **GEN)
    assert task.load_train(tmp_path, "train", None) == task.load_train(tmp_path, "train", options)
    with pytest.raises(ValueError, match=r"built for other data options"):
        task.load_train(tmp_path, "train", DataConfig(train_file="other.jsonl", **GEN))
    assert task.load_train(tmp_path, "train", options) == [
        GenerationExample("Q: Capital of France?\nA:", " Paris"),
        GenerationExample("Q: 2 + 2?\nA:", " 4"),
    ]
    assert task.load_eval(tmp_path, "train", options)[1] == EvalItem("Q: 2 + 2?\nA:", (" 4",))
    # a list of completions: several references, one training example each
    assert len(task.load_train(tmp_path, "dev", options)) == 2
    assert task.load_eval(tmp_path, "dev", options) == [EvalItem("Q: Blue + yellow?\nA:", (" green", " Green"))]
    with pytest.raises(DataError, match=r"no file for split 'test': set data\.test_file"):
        task.load_eval(tmp_path, "test", options)
    with pytest.raises(DataError, match=r"unknown split 'validation' \(valid: train, dev, test\)"):
        task.load_eval(tmp_path, "validation", options)


def test_generation_csv_tsv_and_json_array(tmp_path):
    (tmp_path / "a.csv").write_text('question,answer\n"Say ""hi""",!\n"two\nlines", two\n', encoding="utf-8")
    (tmp_path / "a.tsv").write_text('question\tanswer\nSay "hi"\t hello\n', encoding="utf-8")
    (tmp_path / "a.json").write_text(json.dumps(QA), encoding="utf-8")
    for name, first in [
        ("a.csv", GenerationExample('Q: Say "hi"\nA:', "!")),
        ("a.tsv", GenerationExample('Q: Say "hi"\nA:', " hello")),
        ("a.json", GenerationExample("Q: Capital of France?\nA:", " Paris")),
    ]:
        options = DataConfig(train_file=name, **GEN)
        examples = text_task(options).load_train(tmp_path, "train", options)
        assert examples[0] == first
    options = DataConfig(train_file="a.csv", **GEN)
    assert text_task(options).load_train(tmp_path, "train", options)[1].prompt == "Q: two\nlines\nA:"
    (tmp_path / "a.csv").write_text('question,answer\nq,x\nr, \n', encoding="utf-8")  # nothing to learn: refused
    with pytest.raises(DataError, match=r"a\.csv line 3: completion field 'answer' is empty \(nothing to learn\)$"):
        text_task(options).load_train(tmp_path, "train", options)


def test_absolute_and_relative_paths(tmp_path):
    jsonl(tmp_path / "train.jsonl", QA)
    options = DataConfig(train_file=str(tmp_path / "train.jsonl"), **GEN)
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    assert len(text_task(options).load_train(elsewhere, "train", options)) == 2
    relative = DataConfig(train_file="train.jsonl", **GEN)
    with pytest.raises(DataError, match=rf"data\.train_file not found: {elsewhere / 'train.jsonl'}"):
        text_task(relative).load_train(elsewhere, "train", relative)


def test_template_errors(tmp_path):
    jsonl(tmp_path / "train.jsonl", [QA[0], {"answer": " x", "id": 3}])
    options = DataConfig(train_file="train.jsonl", **GEN)
    with pytest.raises(DataError) as err:
        text_task(options).load_train(tmp_path, "train", options)
    message = str(err.value)
    assert str(tmp_path / "train.jsonl") in message and "train.jsonl line 2:" in message
    assert "{question}" in message and "(fields: answer, id)" in message
    with pytest.raises(DataError, match=r"positional field \{\}"):
        text_task(DataConfig(train_file="t.jsonl", completion_field="a", prompt_template="Q: {}"))
    with pytest.raises(DataError, match=r"not a valid format string"):
        text_task(DataConfig(train_file="t.jsonl", completion_field="a", prompt_template="Q: {question"))
    jsonl(tmp_path / "train.jsonl", [{"question": "q"}])
    with pytest.raises(DataError, match=r"train\.jsonl line 1 has no field 'answer' \(fields: question\)"):
        text_task(options).load_train(tmp_path, "train", options)
    (tmp_path / "a.json").write_text(json.dumps([QA[0], {"answer": " x"}], indent=1), encoding="utf-8")
    array = DataConfig(train_file="a.json", **GEN)
    with pytest.raises(DataError, match=r"a\.json line 7: data\.prompt_template uses \{question\}"):
        text_task(array).load_train(tmp_path, "train", array)
    (tmp_path / "t.csv").write_text("question,reply\nq,a\n")
    csv_options = DataConfig(train_file="t.csv", **GEN)
    with pytest.raises(DataError, match=r"t\.csv has no column 'answer' \(columns: question, reply\)"):
        text_task(csv_options).load_train(tmp_path, "train", csv_options)


def test_option_errors():
    with pytest.raises(DataError, match=r"set data\.train_file"):
        text_task(DataConfig(**GEN))
    with pytest.raises(DataError, match=r"exactly one of data\.completion_field .* or data\.label_field"):
        text_task(DataConfig(train_file="t.jsonl"))
    with pytest.raises(DataError, match=r"data\.prompt_template is needed"):
        text_task(DataConfig(train_file="t.jsonl", completion_field="a"))
    with pytest.raises(DataError, match=r"data\.text_field is needed"):
        text_task(DataConfig(train_file="t.jsonl", label_field="y", num_labels=2))
    with pytest.raises(DataError, match=r"data\.num_labels is needed"):
        text_task(DataConfig(train_file="t.jsonl", label_field="y", text_field="x"))
    with pytest.raises(DataError, match=r"data\.train_file 't\.parquet' should end in one of"):
        text_task(DataConfig(train_file="t.parquet", **GEN))


def test_non_utf8(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b'{"question": "ok", "answer": " a"}\n{"question": "caf\xe9"}\n')
    options = DataConfig(train_file="train.jsonl", **GEN)
    with pytest.raises(DataError) as err:
        text_task(options).load_train(tmp_path, "train", options)
    assert str(tmp_path / "train.jsonl") in str(err.value)
    assert "is not UTF-8: byte 0xe9 at offset 52 (line 2)" in str(err.value)


def cls_options(**kw) -> DataConfig:
    return DataConfig(**{"train_file": "train.jsonl", "text_field": "text", "label_field": "label", **kw})


def test_classification_string_labels_sorted(tmp_path):
    jsonl(tmp_path / "train.jsonl", [
        {"text": "great", "label": "pos"}, {"text": "awful", "label": "neg"}, {"text": "meh", "label": "neutral"},
    ])
    jsonl(tmp_path / "valid.jsonl", [{"text": "fine", "label": "pos"}, {"text": "bad", "label": "neg"}])
    options = cls_options(valid_file="valid.jsonl", num_labels=3)
    task = get_task("text", options)
    assert (task.kind, task.num_labels, task.main_metric) == ("classification", 3, "accuracy")
    assert label_names(tmp_path, options) == ["neg", "neutral", "pos"]
    assert [x.label for x in task.load_train(tmp_path, "train", options)] == [2, 0, 1]
    assert task.load_eval(tmp_path, "dev", options) == [
        ClassificationExample("fine", None, 2), ClassificationExample("bad", None, 0),
    ]
    jsonl(tmp_path / "valid.jsonl", [{"text": "hmm", "label": "mixed"}])
    with pytest.raises(DataError, match=r"valid\.jsonl line 1: label 'mixed' is not one of the train split's labels \(neg, neutral, pos\)$"):
        task.load_eval(tmp_path, "dev", options)
    small = cls_options(num_labels=2)
    with pytest.raises(DataError, match=r"train\.jsonl: the train split has 3 distinct labels .* data\.num_labels is 2"):
        text_task(small).load_train(tmp_path, "train", small)


def test_classification_int_labels_pairs_and_csv(tmp_path):
    (tmp_path / "train.csv").write_text("s1,s2,label\na,b,1\nc,d,0\ne,f,2\n")
    options = cls_options(train_file="train.csv", text_field="s1", text_pair_field="s2", num_labels=3)
    examples = text_task(options).load_train(tmp_path, "train", options)
    assert examples == [
        ClassificationExample("a", "b", 1), ClassificationExample("c", "d", 0), ClassificationExample("e", "f", 2),
    ]
    assert label_names(tmp_path, options) is None
    two = cls_options(train_file="train.csv", text_field="s1", num_labels=2)
    with pytest.raises(DataError, match=r"train\.csv line 4: label '2' is not a class id in 0\.\.1"):
        text_task(two).load_train(tmp_path, "train", two)
    jsonl(tmp_path / "dev.jsonl", [{"text": "x", "label": 1}])  # int labels need no train file
    dev_only = cls_options(train_file=None, valid_file="dev.jsonl", num_labels=2)
    task = text_task(dev_only)
    assert task.splits == ("dev",)
    assert task.load_eval(tmp_path, "dev", dev_only) == [ClassificationExample("x", None, 1)]


def test_regression(tmp_path):
    jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0.5}, {"text": "b", "label": "3"}])
    options = cls_options(num_labels=1)
    task = text_task(options)
    assert (task.kind, task.num_labels, task.main_metric) == ("regression", 1, "pearson")
    assert [x.label for x in task.load_train(tmp_path, "train", options)] == [0.5, 3.0]
    jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "high"}])
    with pytest.raises(DataError, match=r"line 1: label 'high' is not a finite number \(data\.num_labels is 1: regression\)$"):
        task.load_train(tmp_path, "train", options)
    jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": None}])
    with pytest.raises(DataError, match=r"line 1: label field 'label' is null"):
        task.load_train(tmp_path, "train", options)


def test_scores():
    gen = text_task(DataConfig(train_file="t.jsonl", **GEN))
    items = [EvalItem("p", ("the cat sat on the mat",)), EvalItem("q", ("a dog", "The dog runs fast today"))]
    result = gen.score(["the cat sat on the mat ", "the dog runs fast today"], items)
    assert result["exact_match"] == 0.5  # exact match is case-sensitive; BLEU is lowercased
    assert result["bleu"] == pytest.approx(1.0)
    assert gen.score(["x", "y"], items)["bleu"] < 0.01
    with pytest.raises(DataError, match=r"1 predictions for 2 eval items"):
        gen.score(["x"], items)
    cls = text_task(cls_options(num_labels=3))
    gold = [ClassificationExample("t", None, y) for y in (0, 1, 2, 2)]
    result = cls.score([0, 1, 2, 0], gold)
    assert result["accuracy"] == 0.75
    assert result["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    reg = text_task(cls_options(num_labels=1))
    gold = [ClassificationExample("t", None, y) for y in (0.0, 1.0, 2.0)]
    result = reg.score([0.0, 1.0, 2.0], gold)
    assert result["pearson"] == pytest.approx(1.0) and result["mse"] == 0.0
    assert reg.score([1.0, 1.0, 1.0], gold)["pearson_unavailable"] == "constant predictions or labels"


def test_labels_are_never_coerced(tmp_path):
    """A float label is refused (not rounded), ids and names are not mixed, data.label_names fixes the ids."""
    options = DataConfig(train_file="train.jsonl", text_field="t", label_field="y", num_labels=2)
    for labels, message in [([0, 1.5], r"train\.jsonl line 2: label 1\.5 is neither a class id \(an integer in 0\.\.1\) nor a name$"),
                            ([0, "pos"], r"train\.jsonl: the train split mixes class ids \(0\) and names \('pos'\)"),
                            ([0, True], r"train\.jsonl line 2: label true is neither a class id")]:
        jsonl(tmp_path / "train.jsonl", [{"t": f"x{i}", "y": y} for i, y in enumerate(labels)])
        with pytest.raises(DataError, match=message):
            text_task(options).load_train(tmp_path, "train", options)
    jsonl(tmp_path / "train.jsonl", [{"t": "a", "y": 1.0}, {"t": "b", "y": 0}])
    assert [x.label for x in text_task(options).load_train(tmp_path, "train", options)] == [1, 0]  # 1.0 is the id 1
    named = DataConfig(train_file="train.jsonl", text_field="t", label_field="y", num_labels=2, label_names=("pos", "neg"))
    jsonl(tmp_path / "train.jsonl", [{"t": "a", "y": "neg"}, {"t": "b", "y": "pos"}])
    assert [x.label for x in text_task(named).load_train(tmp_path, "train", named)] == [1, 0]
    jsonl(tmp_path / "train.jsonl", [{"t": 5, "y": "neg"}])
    with pytest.raises(DataError, match=r"train\.jsonl line 1: text field 't' should be text, got a number \(5\)$"):
        text_task(named).load_train(tmp_path, "train", named)
