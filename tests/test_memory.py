"""memory.py: malloc_trim hands free heap pages back to the OS, fit() calls it on schedule, and importing
lorafit bounds oneDNN's primitive cache."""

import ctypes
import os
import subprocess
import sys

import pytest
import torch
from tiny import tiny_llama

import lorafit.fast.memory as memory
import lorafit.train.loop as train_module
from lorafit.data.batches import Encoded
from lorafit.fast.options import FastOptions
from lorafit.recipe.schema import TrainConfig
from lorafit.train.loop import fit
from lorafit.train.loss import causal_lm_loss

glibc = pytest.mark.skipif(memory._malloc_trim() is None, reason="malloc_trim is glibc's")


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_trim_needs_both_enough_steps_and_enough_seconds():
    every, seconds = FastOptions().trim_every_steps, FastOptions().trim_min_seconds
    assert (every, seconds) == (10, 5.0)
    assert memory.trim_due(10, 5.0, every, seconds) and memory.trim_due(40, 60.0, every, seconds)
    assert not memory.trim_due(9, 60.0, every, seconds)  # slow steps: every 10 steps
    assert not memory.trim_due(60, 4.9, every, seconds)  # fast steps: every 5 seconds
    assert not memory.trim_due(1000, 1000.0, 0, seconds)  # 0 turns it off


@glibc
def test_free_pages_in_the_middle_of_the_heap_go_back_to_the_os():
    # 1600 blocks of 64 KiB (below glibc's mmap threshold, so they come from the heap), every page
    # written; all but the last freed. The last one pins the top of the heap, so glibc's automatic
    # trimming (top of heap only) cannot return the ~100 MB below it; malloc_trim(0) can.
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 64 * 1024, 1600
    blocks = [libc.malloc(size) for _ in range(count)]
    assert all(blocks)
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in blocks[:-1]:
        libc.free(b)
    held = rss_mb()
    assert memory.release_free_heap()
    released = held - rss_mb()
    libc.free(blocks[-1])
    assert released > 0.8 * size * count / 2**20, f"only {released:.0f} MB went back"


def tiny_run():
    """A 7-step fit on a tiny Llama (28 examples, batch 4), only its head trainable."""
    model = tiny_llama()
    for p in model.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    examples = [
        Encoded(input_ids=tuple(ids), labels=tuple(ids))
        for ids in torch.randint(3, 100, (28, 6), generator=g).tolist()
    ]
    settings = TrainConfig(
        batch_size=4, grad_accum=1, lr=1e-3, weight_decay=0.0, warmup_steps=0, schedule="constant",
        max_grad_norm=None, batching="bucket", epochs=1, max_steps=None, log_every=100, eval_every=0,
        save_every=0,
    )
    return model, examples, settings


def test_fit_trims_every_trim_every_steps(monkeypatch):
    calls = []
    monkeypatch.setattr(train_module, "release_free_heap", lambda: calls.append(1) or True)
    model, examples, settings = tiny_run()
    fast = FastOptions(trim_every_steps=3, trim_min_seconds=0.0)
    result = fit(model, examples, [], settings, seed=0, precision="fp32", loss_fn=causal_lm_loss, pad_id=0, fast=fast)
    assert result.state.step == 7
    assert len(calls) == 2  # after steps 3 and 6


def test_fit_waits_for_the_minimum_seconds_between_trims(monkeypatch):
    calls = []
    monkeypatch.setattr(train_module, "release_free_heap", lambda: calls.append(1) or True)
    model, examples, settings = tiny_run()
    fast = FastOptions(trim_every_steps=1, trim_min_seconds=1000.0)  # the 7 steps take well under a second
    assert fit(model, examples, [], settings, seed=0, precision="fp32", loss_fn=causal_lm_loss, pad_id=0,
               fast=fast).state.step == 7
    assert calls == []


# ---- oneDNN's primitive cache -------------------------------------------------------------------------

BF16_SHAPES_SCRIPT = """
import torch
from lorafit.fast.memory import limit_onednn_primitive_cache
limit_onednn_primitive_cache()  # what the CLI entry point and fit() do before any work
# K = 64 first, then 70 other shapes, then K = 64 again: a cache of 64 entries has evicted the first.
for k in [64, *range(65, 135), 64]:
    torch.ones(8, k, dtype=torch.bfloat16) @ torch.ones(k, 16, dtype=torch.bfloat16)
"""


def onednn_creations(tmp_path, env_extra: dict) -> list[str]:
    """oneDNN's verbose 'create' records (cache_miss / cache_hit) of the repeated 8x64 @ 64x16 matmul."""
    env = {k: v for k, v in os.environ.items() if k not in memory.ONEDNN_CACHE_VARIABLES}
    env.update(ONEDNN_VERBOSE="all", **env_extra)
    script = tmp_path / "shapes.py"
    script.write_text(BF16_SHAPES_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, check=True)
    records = [line.split(",") for line in done.stdout.splitlines() if line.startswith("onednn_verbose")]
    if not any("brg_matmul" in ",".join(r) for r in records):
        pytest.skip("bf16 matmuls do not run through oneDNN's kernels here")
    return [r[3] for r in records if r[3].startswith("create") and r[-2] == "8x64:64x16"]


def test_limit_sets_the_capacity_only_when_the_user_did_not(monkeypatch):
    for name in memory.ONEDNN_CACHE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert memory.limit_onednn_primitive_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(FastOptions().onednn_primitive_cache) == "64"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    assert not memory.limit_onednn_primitive_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    monkeypatch.setenv("DNNL_PRIMITIVE_CACHE_CAPACITY", "9")  # oneDNN's older name counts as the user's choice
    assert not memory.limit_onednn_primitive_cache()
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ


def test_lorafit_bounds_onednn_cache_and_keeps_a_users_size(tmp_path):
    # 72 bf16 matmuls of 71 shapes: with lorafit's 64 entries the repeated first shape was evicted and is
    # built again; with the size a user set (oneDNN's default, 1024) it is found in the cache.
    assert onednn_creations(tmp_path, {}) == ["create:cache_miss", "create:cache_miss"]
    kept = onednn_creations(tmp_path, {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"})
    assert kept == ["create:cache_miss", "create:cache_hit"]


def test_importing_lorafit_leaves_the_environment_unchanged():
    # A library import must not change what child processes inherit (the CLI and fit() set oneDNN's cache).
    code = ("import os, json; before = dict(os.environ); import lorafit, lorafit.cli, lorafit.train.loop, "
            "lorafit.workflows.train; print(json.dumps(dict(os.environ) == before))")
    env = {k: v for k, v in os.environ.items() if k not in memory.ONEDNN_CACHE_VARIABLES}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "true"


def test_fit_sets_the_onednn_cache_where_work_starts(monkeypatch):
    for name in memory.ONEDNN_CACHE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    model, examples, settings = tiny_run()
    fit(model, examples, [], settings, seed=0, precision="fp32", loss_fn=causal_lm_loss, pad_id=0)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
