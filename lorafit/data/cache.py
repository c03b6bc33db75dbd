"""Tokenise once, keep it on disk: normalised rows -> an Arrow file of token ids, loss masks and lengths.

    tokenised(key_parts, build_rows, fmt, tokenizer, max_length, ...) -> (datasets.Dataset, CacheInfo)

The key is a hash of everything the tokens depend on: the data's fingerprint (file paths, sizes and
mtimes, or the parsed rows' content), the tokenizer (its vocabulary and merges, special tokens, chat
template), max_length, the format and its field names, and `ENCODER_VERSION` (bumped when the encoders
change). Any change is a different key, so a stale cache is never read. A hit memory-maps the Arrow
file(s): no data file is opened, nothing is tokenised. A miss tokenises with `datasets.map` (batched,
in `num_proc` processes when there are cores to spare), writes into a temporary directory and renames it
into place, so an interrupted run leaves no half-written entry.

Location: `<lorafit cache>/data/<key>/` ($LORAFIT_CACHE, else $XDG_CACHE_HOME/lorafit, else ~/.cache/lorafit).
With `use_cache=False` (`lorafit train --no-cache`) nothing is read from or written to it: the files go to
a temporary directory removed at exit.

Columns: input_ids, labels (generation, chat) or target (+ token_type_ids) (classification), length,
truncated (bool), dropped (0 kept, 1 too long / no assistant token left), row (the source row).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lorafit.data.encode import encode_classification_batch, encode_generation_batch
from lorafit.data.formats import Format

ENCODER_VERSION = 1
DONE = "lorafit_cache.json"


@dataclass
class CacheInfo:
    path: Path
    hit: bool
    key: str


def cache_root() -> Path:
    from lorafit.models.aliases import cache_dir

    return cache_dir() / "data"


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides the token ids: the tokenizer's full definition, special tokens and chat template."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(repr((tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                   tokenizer("a b", add_special_tokens=True)["input_ids"])).encode())
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return h.hexdigest()[:20]


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps({**parts, "encoder": ENCODER_VERSION}, sort_keys=True, default=str).encode()).hexdigest()[:24]


def default_num_proc(rows: int) -> int | None:
    """One tokenising process per 2 cores above 2 (the rest train / serve the OS), at most 8; small data: one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    procs = min(8, (cores - 2) // 2) if cores > 2 else 1
    return procs if procs > 1 and rows >= 50_000 else None


# ------------------------------------------------------------------------------------------- encoders


def encode_batch(batch: dict, *, fmt: Format, tokenizer, max_length: int) -> dict:
    """One `datasets.map` batch of normalised rows -> token columns (+ the source `row`)."""
    if fmt.encoder == "generation":
        out = encode_generation_batch(tokenizer, batch["prompt"], batch["completion"], max_length)
    elif fmt.encoder == "classification":
        pairs = batch["text_pair"] if any(p is not None for p in batch["text_pair"]) else None
        pairs = [p or "" for p in pairs] if pairs else None
        out = encode_classification_batch(tokenizer, batch["text"], pairs, batch["label"], max_length)
    else:
        from lorafit.data.chat import encode_chat_batch

        out = encode_chat_batch(tokenizer, batch["messages"], max_length, batch.get("where"))
    out["row"] = batch["row"]
    return out


# ------------------------------------------------------------------------------------------- the cache

_TEMP_DIRS: list[str] = []


def _scratch() -> Path:
    path = tempfile.mkdtemp(prefix="lorafit-data-")
    if not _TEMP_DIRS:
        atexit.register(lambda: [shutil.rmtree(p, ignore_errors=True) for p in _TEMP_DIRS])
    _TEMP_DIRS.append(path)
    return Path(path)


def _open(directory: Path, files: list[str]):
    import datasets

    parts = [datasets.Dataset.from_file(str(directory / f)) for f in files]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def tokenised(key_parts: dict, build_rows: Callable[[], object], fmt: Format, tokenizer, max_length: int, *,
              use_cache: bool = True, num_proc: int | None = None, desc: str = "tokenise"):
    """(Arrow dataset of token columns, CacheInfo); `build_rows()` (normalised rows) runs only on a miss."""
    key = cache_key({**key_parts, "tokenizer": tokenizer_fingerprint(tokenizer), "max_length": max_length,
                     "format": fmt.settings()})
    final = cache_root() / key
    if use_cache and (final / DONE).is_file():
        files = json.loads((final / DONE).read_text())["files"]
        try:
            return _open(final, files), CacheInfo(final, True, key)
        except (OSError, ValueError):  # a damaged entry: rebuild it
            shutil.rmtree(final, ignore_errors=True)
    rows = build_rows()
    work = _scratch() if not use_cache else final.parent / f".tmp-{key}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    procs = num_proc if num_proc is not None else default_num_proc(len(rows))
    procs = procs if procs and procs > 1 and len(rows) >= 2 * procs else None
    encoded = rows.map(
        encode_batch, batched=True, batch_size=1000, remove_columns=rows.column_names, num_proc=procs,
        fn_kwargs={"fmt": fmt, "tokenizer": tokenizer, "max_length": max_length},
        cache_file_name=str(work / "data.arrow"), load_from_cache_file=False, new_fingerprint=key, desc=desc,
    )
    files = sorted({Path(f["filename"]).name for f in encoded.cache_files})
    if not use_cache:
        return encoded, CacheInfo(work, False, key)
    (work / DONE).write_text(json.dumps({"files": files, "parts": key_parts, "rows": len(encoded)}, default=str))
    del encoded
    try:
        os.replace(work, final)  # atomic; fails when another process finished the same entry first
    except OSError:
        if not (final / DONE).is_file():
            raise
        shutil.rmtree(work, ignore_errors=True)  # keep theirs: the same key, the same tokens
    files = json.loads((final / DONE).read_text())["files"]
    return _open(final, files), CacheInfo(final, False, key)

