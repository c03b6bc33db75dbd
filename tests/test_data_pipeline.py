"""One pipeline for every task: the same examples through the old list path (load_train -> subsample ->
encode_*) and through data/pipeline.py (rows -> cached Arrow tokens -> lazy sequences) give identical token
ids, labels, targets and counts; the lazy sequence batches exactly as a list does."""

import pytest
import torch
from datahelp import jsonl, recipe
from tiny import tiny_tokenizer

from lorafit.data.batches import encode_classification, encode_generation, iterate_batches, subsample
from lorafit.data.lazy import EncodedRows
from lorafit.data.pipeline import prepare
from lorafit.tasks import get_task, task_data_dir


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "cache"))


def old_path(r, task, tok, split, limit):
    """What train/setup.py did before the pipeline: Python lists, encoded in one go."""
    examples = subsample(task.load_train(task_data_dir(task, r.data_dir), split, r.data), limit, r.seed)
    encode = encode_generation if task.kind == "generation" else encode_classification
    return encode(examples, tok, r.data.max_length)


def assert_same(r, tok=None):
    tok = tok or tiny_tokenizer()
    task = get_task(r.task, r.data)
    new = prepare(r, task, tok)
    for split, rows, limit, name in (("train", new.train, r.data.max_train_examples, "train"),
                                     (r.eval.split, new.valid, r.data.max_valid_examples, "valid")):
        old, stats = old_path(r, task, tok, split, limit) if split in task.splits else ([], None)
        assert list(rows) == old, f"{r.task} {split}"
        if stats is not None:
            assert new.counts[f"{name}_examples"] == stats.examples
            assert new.counts[f"{name}_truncated"] == stats.truncated
            assert new.counts[f"{name}_skipped"] == stats.skipped
    return new


@pytest.mark.parametrize("task, data", [
    ("e2e", {"max_train_examples": 300, "max_valid_examples": 50, "max_length": 64}),  # truncates and skips
    ("wikisql", {"max_train_examples": 200, "max_valid_examples": 30, "max_length": 160}),
    ("glue/sst2", {"max_train_examples": 300, "max_length": 40}),
    ("glue/mrpc", {"max_train_examples": 100, "max_valid_examples": 20, "max_length": 120}),
    ("glue/stsb", {"max_train_examples": 100, "max_valid_examples": 20}),
    ("quickstart", {"max_valid_examples": 10}),
])
def test_named_tasks_identical_to_the_list_path(data_dir, task, data):
    r = recipe(task, **data)
    if task == "wikisql" and "train" not in get_task(task).splits:
        pytest.skip("no wikisql train split in this data copy")
    new = assert_same(r)
    assert len(new.train) > 0 and isinstance(new.train, EncodedRows)


def test_e2e_with_smollm2_tokens_identical(data_dir):
    from lorafit.models.aliases import list_aliases

    if not any(row["alias"] == "smollm2-135m" and row["installed"] for row in list_aliases()):
        pytest.skip("model alias smollm2-135m is not installed")
    from lorafit.models import load_tokenizer, resolve_model

    assert_same(recipe("e2e", max_train_examples=200, max_valid_examples=20, max_length=40),
                load_tokenizer(resolve_model("smollm2-135m")))


def test_text_task_files_identical(tmp_path):
    jsonl(tmp_path / "train.jsonl", [{"q": f"question {i}", "a": [f" answer {i}", " another"] if i % 3 == 0 else f" a{i}"}
                                     for i in range(30)])
    jsonl(tmp_path / "dev.jsonl", [{"q": "x", "a": " y"}])
    assert_same(recipe(train_file=str(tmp_path / "train.jsonl"), valid_file=str(tmp_path / "dev.jsonl"),
                       prompt_template="Q: {q}\nA:", completion_field="a", max_train_examples=25))
    (tmp_path / "c.csv").write_text("s,l\n" + "".join(f"text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(20)))
    assert_same(recipe(train_file=str(tmp_path / "c.csv"), text_field="s", label_field="l", num_labels=2))


def test_source_and_files_give_the_same_tokens(tmp_path):
    rows = [{"q": f"question {i}", "a": f" a{i}"} for i in range(12)]
    jsonl(tmp_path / "train.jsonl", rows)
    files = prepare(r := recipe(train_file=str(tmp_path / "train.jsonl"), prompt_template="{q}", completion_field="a"),
                    get_task(r.task, r.data), tiny_tokenizer())
    source = prepare(r := recipe(source=str(tmp_path / "train.jsonl"), prompt_field="q", completion_field="a"),
                     get_task(r.task, r.data), tiny_tokenizer())
    assert list(files.train) == list(source.train)


def test_lazy_rows_batch_like_a_list(data_dir):
    r = recipe("e2e", max_train_examples=64, max_length=160)
    new = prepare(r, get_task(r.task, r.data), tiny_tokenizer())
    as_list = list(new.train)
    for mode in ("bucket", "pad", "pack"):
        lazy = list(iterate_batches(new.train, 8, 0, seed=3, epoch=1, mode=mode))
        eager = list(iterate_batches(as_list, 8, 0, seed=3, epoch=1, mode=mode))
        assert len(lazy) == len(eager) > 1
        for a, b in zip(lazy, eager, strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert list(new.train.lengths) == [len(e) for e in as_list]
