"""Checkpoints and resume: a run stopped any way (SIGKILL, SIGTERM, Ctrl-C) and resumed ends with the
same adapter as a run that was never stopped, and an unreadable checkpoint is skipped with a warning.

The stopped runs are real `lorafit train` processes on a tiny Llama; the uninterrupted reference runs
in this process (one torch thread in both, see cli_runs.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import (
    TINY_RECIPE,
    adapter_weights,
    checkpoint_steps,
    finish,
    max_abs_diff,
    run_cli,
    start_subprocess,
    wait_for_checkpoint,
    write_recipe,
)
from tiny import save_tiny_model

from lorafit.rng import rng_state, set_rng_state
from lorafit.runs.interrupts import interrupts_deferred, sigterm_as_interrupt
from lorafit.runs.rundir import RunDir

# The bar of the issue. On one thread the runs are in fact bit-identical (diff 0.0 here), but a test
# that ran earlier in this process could change a global torch setting, so only the bar is asserted.
TOLERANCE = 1e-6
STEPS = 120  # ~1.5 s of training: after a checkpoint appears, plenty of steps remain to be interrupted
RECIPE = TINY_RECIPE.replace("max_steps: 40", f"max_steps: {STEPS}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_dir) -> Path:
    """An uninterrupted run of the tiny recipe: the run directory."""
    root = tmp_path_factory.mktemp("reference")
    recipe = write_recipe(root / "tiny.yaml", model_dir, RECIPE)
    result = run_cli(["train", recipe, "-o", root / "run", "-q"])
    assert result.exit_code == 0, result.output
    return root / "run"


def assert_same_adapter(run_dir: Path, reference: Path) -> None:
    diff = max_abs_diff(adapter_weights(run_dir / "adapter"), adapter_weights(reference / "adapter"))
    assert diff <= TOLERANCE, f"resumed adapter differs from the uninterrupted one by {diff}"


def test_killed_then_terminated_then_interrupted_run_resumes_to_the_same_adapter(tmp_path, model_dir, reference):
    """SIGKILL (no chance to save), SIGTERM and Ctrl-C (checkpoint, exit 130), each followed by a
    resume, in the three spellings of --resume; the final adapter equals the uninterrupted run's."""
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, RECIPE)
    run = tmp_path / "run"

    # 1. SIGKILL once the first periodic checkpoint exists: like a crash or an OOM kill.
    proc = start_subprocess(["train", recipe, "-o", run], tmp_path, tmp_path / "1.log")
    killed_after = wait_for_checkpoint(proc, run, after=0)
    proc.send_signal(signal.SIGKILL)
    code, _ = finish(proc)
    assert code == -signal.SIGKILL
    assert not (run / "adapter").exists()

    # 2. Resume (recipe + --resume), then SIGTERM as a job scheduler would: checkpoint, exit 130.
    proc = start_subprocess(["train", recipe, "-o", run, "--resume"], tmp_path, tmp_path / "2.log")
    seen = wait_for_checkpoint(proc, run, after=killed_after)
    proc.send_signal(signal.SIGTERM)
    code, log = finish(proc)
    assert code == 130, log
    assert f"resuming from {run / 'checkpoints'}" in log
    assert f"interrupted: checkpoint written; continue with: lorafit train --resume {run}" in log
    assert "Traceback" not in log
    terminated_at = checkpoint_steps(run)[-1]
    assert seen <= terminated_at < STEPS and not (run / "adapter").exists()

    # 3. Resume by run directory alone, then Ctrl-C (SIGINT): checkpoint, exit 130.
    proc = start_subprocess(["train", "--resume", run], tmp_path, tmp_path / "3.log")
    wait_for_checkpoint(proc, run, after=terminated_at)
    proc.send_signal(signal.SIGINT)
    code, log = finish(proc)
    assert code == 130, log
    assert f"step-{terminated_at:06d} (step {terminated_at})" in log
    assert "interrupted: checkpoint written" in log and "Traceback" not in log
    assert terminated_at < checkpoint_steps(run)[-1] < STEPS and not (run / "adapter").exists()

    # 4. Resume to the end (run directory first, then --resume), in this process to save a start-up.
    result = run_cli(["train", run, "--resume"])
    assert result.exit_code == 0, result.output
    assert f"resuming from {run / 'checkpoints'}" in result.stdout
    assert_same_adapter(run, reference)
    assert checkpoint_steps(run) == [STEPS - 5, STEPS]  # keep_checkpoints: 2


def test_ctrl_c_right_after_a_weight_update_still_resumes_exactly(tmp_path, model_dir, reference, monkeypatch):
    """Ctrl-C that arrives while AdamW has just updated the weights (before the loop has recorded the
    step) is held until the step is recorded, so the checkpoint pairs step 3's weights with step 3."""
    real_step = torch.optim.AdamW.step
    calls = []

    def step_then_ctrl_c(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_ctrl_c)
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, RECIPE)
    run = tmp_path / "run"
    result = run_cli(["train", recipe, "-o", run])
    assert result.exit_code == 130, result.output
    assert checkpoint_steps(run) == [3]
    monkeypatch.undo()
    result = run_cli(["train", "--resume", run])
    assert result.exit_code == 0, result.output
    assert_same_adapter(run, reference)


def test_unreadable_newest_checkpoint_is_skipped_with_a_warning(tmp_path, model_dir, reference):
    """A truncated newest state.pt (a disk that lost its tail) is skipped with a one-line warning; the
    run continues from the one before and still ends with the uninterrupted run's adapter."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "adapter")
    newest = run / "checkpoints" / f"step-{STEPS:06d}" / "state.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    result = run_cli(["train", "--resume", run])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [line for line in result.stderr.splitlines() if line.strip()], result.stderr
    assert len(warnings) == 1 and f"skipping unreadable checkpoint {newest.parent}" in warnings[0]
    assert f"resuming from {run / 'checkpoints' / f'step-{STEPS - 5:06d}'} (step {STEPS - 5})" in result.stdout
    assert_same_adapter(run, reference)


def test_checkpoint_holds_everything_a_resume_needs(reference):
    """Trainable weights, optimizer, scheduler, RNG (python, numpy, torch), data position, step, and
    the resolved recipe."""
    path, snapshot = RunDir(reference).latest_checkpoint()
    assert path.name == f"step-{STEPS:06d}"
    assert (path / "recipe.yaml").read_text() == (reference / "recipe.yaml").read_text()
    trainable = snapshot["trainable"]
    assert trainable and all(".lora_A." in k or ".lora_B." in k for k in trainable)
    assert len(snapshot["optimizer"]["state"]) == len(trainable)  # AdamW moments for each
    assert snapshot["scheduler"]["last_epoch"] == STEPS
    assert set(snapshot["rng"]) >= {"python", "numpy", "torch"}
    state = snapshot["state"]
    batches_per_epoch = -(-json.loads((reference / "summary.json").read_text())["train_examples"] // 4)
    assert state["step"] == STEPS and state["epoch"] >= 1
    assert state["epoch"] * batches_per_epoch + state["batch_in_epoch"] == STEPS  # batch size 4, no accumulation
    assert snapshot["history"][-1]["step"] == STEPS


def test_checkpoint_of_a_classifier_holds_its_head(tmp_path):
    """A sequence classifier's new head is trained in full, so a checkpoint must hold it."""
    save_tiny_model(tmp_path / "bert", "bert")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(f'{{"text": "item {i}", "label": {i % 2}}}\n' for i in range(8)))
    recipe = tmp_path / "cls.yaml"
    recipe.write_text(
        f"model: {tmp_path / 'bert'}\ntask: text\nlora: {{targets: [query, value]}}\n"
        f"data: {{train_file: {data}, text_field: text, label_field: label, num_labels: 2}}\n"
        "train: {max_steps: 2, batch_size: 4, save_every: 1}\nlog: {plot: false}\n"
    )
    result = run_cli(["train", recipe, "-o", tmp_path / "run", "-q"])
    assert result.exit_code == 0, result.output
    _, snapshot = RunDir(tmp_path / "run").latest_checkpoint()
    assert any(k.startswith("classifier.") for k in snapshot["trainable"])
    assert any(".lora_A." in k for k in snapshot["trainable"])


def test_checkpoints_are_fsynced_before_the_rename_and_only_the_last_k_kept(tmp_path, monkeypatch):
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("rename", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run = RunDir(tmp_path)
    snapshot = {"state": {"step": 0}, "trainable": {"w": torch.ones(2)}, "rng": rng_state()}
    for step in (5, 10, 15):
        snapshot["state"]["step"] = step
        run.save_checkpoint(snapshot, "name: x\n", keep=2)
    assert checkpoint_steps(tmp_path) == [10, 15]
    target = str(tmp_path / "checkpoints" / "step-000015")
    rename = calls.index(("rename", target))
    synced = [path for kind, path in calls[:rename] if kind == "fsync"]
    assert any(p.endswith("state.pt") for p in synced) and any(p.endswith("recipe.yaml") for p in synced)
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_rng_state_covers_python_numpy_and_torch():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_stop_signals_are_held_over_the_update_and_handlers_restored():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    reached = []
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt(), interrupts_deferred():
        signal.raise_signal(signal.SIGTERM)
        reached.append("the rest of the block")  # runs: the signal waits for the block to end
    assert reached == ["the rest of the block"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
