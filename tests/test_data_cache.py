"""The token cache: a second run reuses it without reading the data; anything the tokens depend on
(the data files, the chat template, max_length, the format's fields) makes a new entry; --no-cache writes none."""

import os

import pytest
from datahelp import CHATML, chat_tokenizer, conversation, jsonl, recipe

from lorafit.data import cache as cache_module
from lorafit.data.pipeline import prepare
from lorafit.tasks import get_task


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


def prepared(r, tok):
    return prepare(r, get_task(r.task, r.data), tok)


def entries(cache):
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) if cache.exists() else []


def test_hit_reuses_without_reading_and_changes_invalidate(tmp_path, cache, monkeypatch):
    path = jsonl(tmp_path / "chat.jsonl", [conversation(i) for i in range(20)])
    tok = chat_tokenizer()
    first = prepared(recipe(source=str(path)), tok)
    assert not first.caches["train"].hit and len(entries(cache)) == 1
    assert str(first.caches["train"].path).startswith(str(cache))

    import lorafit.data.source as source

    def no_reading(*a, **k):
        raise AssertionError("a cache hit must not read the data")

    monkeypatch.setattr(source, "load_split", no_reading)
    again = prepared(recipe(source=str(path)), tok)
    assert again.caches["train"].hit
    assert [e.input_ids for e in again.train] == [e.input_ids for e in first.train]
    assert [e.labels for e in again.train] == [e.labels for e in first.train]
    monkeypatch.undo()
    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "cache"))

    # another chat template, another max_length, touched data: each re-tokenises into a new entry
    other = chat_tokenizer(CHATML.replace("<|im_start|>", "<|turn|>"))
    changed = prepared(recipe(source=str(path)), other)
    assert not changed.caches["train"].hit and len(entries(cache)) == 2
    assert changed.train[0].input_ids != first.train[0].input_ids
    shorter = prepared(recipe(source=str(path), max_length=100), tok)
    assert not shorter.caches["train"].hit and len(entries(cache)) == 3
    os.utime(path, ns=(1, 1))
    touched = prepared(recipe(source=str(path)), tok)
    assert not touched.caches["train"].hit and len(entries(cache)) == 4
    assert prepared(recipe(source=str(path)), tok).caches["train"].hit  # the new entry is reused


def test_format_fields_are_part_of_the_key(tmp_path, cache):
    from tiny import tiny_tokenizer

    path = jsonl(tmp_path / "qa.jsonl", [{"q": "a", "r": " b", "s": " c"}])
    a = prepared(recipe(source=str(path), prompt_field="q", completion_field="r"), tiny_tokenizer())
    b = prepared(recipe(source=str(path), prompt_field="q", completion_field="s"), tiny_tokenizer())
    assert not b.caches["train"].hit and a.train[0].input_ids != b.train[0].input_ids


def test_no_cache_reads_and_writes_nothing(tmp_path, cache):
    path = jsonl(tmp_path / "chat.jsonl", [conversation(i) for i in range(5)])
    tok = chat_tokenizer()
    r = recipe(source=str(path))
    data = prepare(r, get_task(r.task, r.data), tok, use_cache=False)
    assert len(data.train) == 5 and entries(cache) == []
    prepared(r, tok)
    assert not prepare(r, get_task(r.task, r.data), tok, use_cache=False).caches["train"].hit


def test_cache_key_covers_the_encoder_version(monkeypatch):
    key = cache_module.cache_key({"a": 1})
    monkeypatch.setattr(cache_module, "ENCODER_VERSION", cache_module.ENCODER_VERSION + 1)
    assert cache_module.cache_key({"a": 1}) != key
