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


def test_trim_schedule():
    assert [s for s in range(1, 31) if memory.trim_due(s, every=10)] == [10, 20, 30]
    assert [s for s in range(1, 4) if memory.trim_due(s, every=1)] == [1, 2, 3]
    assert not any(memory.trim_due(s, every=0) for s in range(1, 100))  # 0 turns it off


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


def test_fit_trims_every_trim_every_steps(monkeypatch):
    calls = []
    monkeypatch.setattr(train_module, "release_free_heap", lambda: calls.append(1) or True)
    monkeypatch.setattr(memory, "TRIM_EVERY_STEPS", 3)
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
    result = fit(model, examples, [], settings, loss_fn=causal_lm_loss, pad_id=0)
    assert result.state.step == 7
    assert len(calls) == 2  # after steps 3 and 6
