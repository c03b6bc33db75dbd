"""memory.py: malloc_trim hands free heap pages back to the OS, and fit() calls it on schedule."""

import ctypes
import os

import pytest
import torch
from tiny import tiny_llama

import lorafit.memory as memory
import lorafit.train as train_module
from lorafit.data import Encoded
from lorafit.loss import causal_lm_loss
from lorafit.train import LoopSettings, fit

glibc = pytest.mark.skipif(memory._malloc_trim() is None, reason="malloc_trim is glibc's")


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_trim_needs_both_enough_steps_and_enough_seconds(monkeypatch):
    monkeypatch.setattr(memory, "TRIM_EVERY_STEPS", 10)
    monkeypatch.setattr(memory, "TRIM_MIN_SECONDS", 5.0)
    assert memory.trim_due(10, 5.0) and memory.trim_due(40, 60.0)
    assert not memory.trim_due(9, 60.0)  # slow steps: every 10 steps
    assert not memory.trim_due(60, 4.9)  # fast steps: every 5 seconds
    monkeypatch.setattr(memory, "TRIM_EVERY_STEPS", 0)
    assert not memory.trim_due(1000, 1000.0)  # 0 turns it off


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
    settings = LoopSettings(
        batch_size=4, grad_accum=1, lr=1e-3, weight_decay=0.0, warmup_steps=0, schedule="constant",
        max_grad_norm=None, batching="bucket", epochs=1, max_steps=None, log_every=100, eval_every=0,
        save_every=0, seed=0, precision="fp32",
    )
    return model, examples, settings


def test_fit_trims_every_trim_every_steps(monkeypatch):
    calls = []
    monkeypatch.setattr(train_module, "release_free_heap", lambda: calls.append(1) or True)
    monkeypatch.setattr(memory, "TRIM_EVERY_STEPS", 3)
    monkeypatch.setattr(memory, "TRIM_MIN_SECONDS", 0.0)
    model, examples, settings = tiny_run()
    result = fit(model, examples, [], settings, loss_fn=causal_lm_loss, pad_id=0)
    assert result.state.step == 7
    assert len(calls) == 2  # after steps 3 and 6


def test_fit_waits_for_the_minimum_seconds_between_trims(monkeypatch):
    calls = []
    monkeypatch.setattr(train_module, "release_free_heap", lambda: calls.append(1) or True)
    monkeypatch.setattr(memory, "TRIM_EVERY_STEPS", 1)
    monkeypatch.setattr(memory, "TRIM_MIN_SECONDS", 1000.0)  # the 7 steps take well under a second
    model, examples, settings = tiny_run()
    assert fit(model, examples, [], settings, loss_fn=causal_lm_loss, pad_id=0).state.step == 7
    assert calls == []
