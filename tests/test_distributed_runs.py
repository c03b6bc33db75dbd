"""Multi-process training for real: `lorafit train --nproc 2` (torch.distributed.run, gloo, one torch
thread per rank) on a tiny Llama, against one process in this test process.

- equivalence: 2 ranks x batch 4 == 1 rank x batch 8 (packed rows whose token counts differ between the
  ranks, grad_accum 2, dropout off, fp32), for ddp and fsdp: the same LoRA weights, the same logged loss
- end to end: one adapter, written once (by rank 0), that PEFT loads
- a rank that raises ends the whole job non-zero within 60 s, the error shown once
- SIGKILL, then SIGTERM (checkpoint, exit 130), then resume: the uninterrupted 2-rank run's adapter

Run with `-m slow` (each run starts 3 interpreters: ~20-40 s on 2 shared cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runs import adapter_weights, checkpoint_steps, max_abs_diff, run_cli, subprocess_env, write_recipe

from lorafit.runs.rundir import read_metrics

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
HOOKS = TESTS / "dist_hooks"  # sitecustomize.py: fault injection and a log of file writes
TOLERANCE = 1e-5  # fp32, the bar

# Dropout off, fp32, packed rows, grad_accum 2; the 59 examples of the generated quickstart task that fit
# make 7 global batches of 8 and a tail of 3 (2 ranks: 1 + 2), so the 6 steps (12 micro-batches) cross
# into a second epoch; 9 validation examples are 3 batches of 4, 4, 1: rank 0 gets two, rank 1 one.
EQUIVALENCE_RECIPE = """\
name: tiny-dist
model: {model}
task: quickstart
seed: 3
precision: fp32
lora: {{rank: 4, alpha: 8, dropout: 0.0, targets: [q_proj, v_proj]}}
data: {{max_length: 128, max_train_examples: 64, max_valid_examples: 9}}
train: {{max_steps: 6, batch_size: 4, grad_accum: 2, lr: 1.0e-2, warmup_steps: 2, log_every: 1, batching: pack}}
log: {{plot: false}}
"""


def lorafit_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(HOOKS), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**subprocess_env(), "PYTHONPATH": path, "LORAFIT_DIST_TIMEOUT": "30", **extra}


def start(args: list, cwd: Path, log: Path, **env: str) -> subprocess.Popen:
    """`python -m lorafit ARGS` in its own process group (to kill the launcher and its workers)."""
    out = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed in finish()
    proc = subprocess.Popen([sys.executable, "-m", "lorafit", *map(str, args)], cwd=cwd, env=lorafit_env(**env),
                            stdout=out, stderr=out, start_new_session=True)
    proc.log_file = out
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_job(proc)
        raise
    finally:
        proc.log_file.close()
    return code, Path(proc.log_file.name).read_text(encoding="utf-8")


def run_nproc(args: list, cwd: Path, timeout: float = 300, **env: str) -> tuple[int, str]:
    return finish(start([*args, "--nproc", "2"], cwd, cwd / f"log-{time.monotonic_ns()}.txt", **env), timeout)


def wait_for_checkpoint(proc: subprocess.Popen, run: Path, after: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        newer = [s for s in checkpoint_steps(run) if s > after]
        if newer:
            return max(newer)
        assert proc.poll() is None, Path(proc.log_file.name).read_text(encoding="utf-8")
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint after step {after} in {run}")


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and its workers at once (torchrun starts each worker in its own session),
    like a crash of the machine's job; no process gets to save anything."""
    import psutil

    processes = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(processes) >= 3, processes
    for p in processes:
        p.kill()
    psutil.wait_procs(processes, timeout=30)


def losses(run: Path, key: str) -> list[float]:
    return [r[key] for r in read_metrics(run / "metrics.jsonl") if key in r]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, model_dir) -> Path:
    """The reference: one process, batch 8 (= 2 ranks x 4), in this process on one thread."""
    root = tmp_path_factory.mktemp("one")
    recipe = write_recipe(root / "tiny.yaml", model_dir, EQUIVALENCE_RECIPE)
    result = run_cli(["train", recipe, "-o", root / "run", "-q", "--set", "train.batch_size=8"])
    assert result.exit_code == 0, result.output
    return root / "run"


def test_rank_parts_of_the_packed_batches_differ_in_tokens(tmp_path, model_dir):
    """The equivalence below is not trivial: the two ranks' packed rows hold different token counts."""
    from lorafit.data.batches import count_target_tokens, iterate_batches
    from lorafit.models.loader import load_for_training
    from lorafit.recipe import load_recipe
    from lorafit.train.setup import load_task, prepare_data

    recipe = load_recipe(write_recipe(tmp_path / "tiny.yaml", model_dir, EQUIVALENCE_RECIPE))
    task = load_task(recipe)
    train, _, _ = prepare_data(recipe, task, load_for_training(recipe, task.num_labels).tokenizer)
    counts = [[count_target_tokens(b) for b in iterate_batches(train, 4, 0, seed=3, epoch=0, mode="pack", shard=(r, 2))]
              for r in range(2)]
    assert len(counts[0]) == len(counts[1]) == 8 and counts[0] != counts[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_of_batch_4_train_what_one_process_of_batch_8_trains(tmp_path, model_dir, one_process, mode):
    """Same LoRA weights after 6 steps (max abs diff <= 1e-5), the same logged loss per step (the
    global per-token loss) and validation loss; ddp: the adapter is written once, by rank 0, and PEFT
    loads it to the model lorafit trained."""
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, EQUIVALENCE_RECIPE)
    writes = tmp_path / "writes.txt"
    evaluation = ["--set", "eval.at_end=true", "--set", "eval.limit=5", "--set", "eval.batch_size=2",
                  "--set", "eval.max_new_tokens=6"] if mode == "ddp" else []
    code, log = run_nproc(["train", recipe, "-o", tmp_path / "run", "--set", f"train.distributed={mode}", *evaluation],
                          tmp_path, LORAFIT_TEST_WRITES=str(writes))
    assert code == 0, log
    run = tmp_path / "run"
    diff = max_abs_diff(adapter_weights(run / "adapter"), adapter_weights(one_process / "adapter"))
    assert diff <= TOLERANCE, f"{mode}: 2 ranks x 4 differ from 1 x 8 by {diff}"
    assert header(run / "adapter")["lorafit_base_identity"] == header(one_process / "adapter")["lorafit_base_identity"]
    assert losses(run, "loss") == pytest.approx(losses(one_process, "loss"), abs=TOLERANCE)
    assert losses(run, "valid_loss") == pytest.approx(losses(one_process, "valid_loss"), abs=TOLERANCE)
    assert f"distributed: 2 processes ({mode}, gloo)" in log
    assert "global batch 16 = 4 per rank x 2 ranks x 2 grad_accum" in log
    assert log.count("step 6/6  epoch") == 1  # rank 0 alone prints
    assert "Traceback" not in log and "error" not in log.lower()
    adapter_writes = [line for line in writes.read_text().splitlines() if "adapter_model.safetensors" in line]
    assert len(adapter_writes) == 1 and adapter_writes[0].startswith("0 "), writes.read_text()
    if mode == "ddp":
        assert_peft_loads(run / "adapter", model_dir)
        assert_same_evaluation_as_one_process(run)


def assert_same_evaluation_as_one_process(run: Path) -> None:
    """The task evaluation at the end, shared out over 2 ranks (3 batches: 2 + 1), gives one process's
    predictions and metrics for the same adapter: each input once, none padded in twice."""
    shared = json.loads((run / "eval.json").read_text())
    result = run_cli(["eval", run, "--limit", "5", "-o", run / "one.json", "-q"])
    assert result.exit_code == 0, result.output
    one = json.loads((run / "one.json").read_text())
    assert shared["num_examples"] == len(shared["predictions"]) == 5
    assert shared["predictions"] == one["predictions"] and shared["metrics"] == one["metrics"]


def header(adapter: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        return f.metadata()


def assert_peft_loads(adapter: Path, model_dir: Path) -> None:
    """PEFT reads the adapter as it is and computes the logits lorafit's own loader does."""
    from peft import PeftModel
    from tiny import token_batch
    from transformers import AutoModelForCausalLM

    from lorafit.models.loader import load_target

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(adapter)).eval()
    ours = load_target(str(adapter)).model.eval()
    ids = token_batch()
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-5)


def test_a_rank_that_raises_ends_the_job_within_60_s_with_one_error(tmp_path, model_dir):
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, EQUIVALENCE_RECIPE.replace("max_steps: 6", "max_steps: 400"))
    began = time.monotonic()
    code, log = run_nproc(["train", recipe, "-o", tmp_path / "run"], tmp_path, timeout=120, LORAFIT_TEST_FAIL="1:3")
    took = time.monotonic() - began
    assert code == 1, log
    errors = [line for line in log.splitlines() if "error" in line.lower()]
    assert errors == ["error: rank 1: unexpected RuntimeError: injected failure on rank 1 at step 3 "
                      "(LORAFIT_DEBUG=1 shows the traceback)"], log
    assert "Traceback" not in log and "ChildFailedError" not in log
    assert took < 60, f"the job took {took:.0f} s to end"
    assert not (tmp_path / "run" / "adapter").exists()


def test_killed_then_terminated_two_rank_run_resumes_to_the_uninterrupted_adapter(tmp_path, model_dir):
    """Dropout on (each rank's RNG must come back), a checkpoint every 5 steps. SIGKILL to the whole job;
    resume; SIGTERM to the launcher (checkpoint by all ranks at one step, exit 130); one process may
    not resume it (one line naming 2); resume with 2 to the end: the uninterrupted run's adapter."""
    from cli_runs import TINY_RECIPE

    text = TINY_RECIPE.replace("max_steps: 40", "max_steps: 60").replace("max_length: 96", "max_length: 128")
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, text.replace("seed: 3", "seed: 3\nprecision: fp32"))
    code, log = run_nproc(["train", recipe, "-o", tmp_path / "reference", "-q"], tmp_path)
    assert code == 0, log

    run = tmp_path / "run"
    proc = start(["train", recipe, "-o", run, "--nproc", "2"], tmp_path, tmp_path / "1.log")
    killed_after = wait_for_checkpoint(proc, run, after=0)
    kill_job(proc)
    finish(proc)
    assert not (run / "adapter").exists()
    killed_after = checkpoint_steps(run)[-1]  # it may have written one more before the kill landed

    proc = start(["train", recipe, "-o", run, "--resume", "--nproc", "2"], tmp_path, tmp_path / "2.log")
    seen = wait_for_checkpoint(proc, run, after=killed_after)
    proc.send_signal(signal.SIGTERM)  # the launcher: torchrun passes SIGTERM on to the workers
    code, log = finish(proc)
    assert code == 130, log
    assert f"interrupted: checkpoint written; continue with: lorafit train --resume {run}" in log
    assert "Traceback" not in log
    stopped_at = checkpoint_steps(run)[-1]
    assert seen <= stopped_at < 60 and not (run / "adapter").exists()
    _, snapshot = __import__("lorafit.runs.rundir", fromlist=["RunDir"]).RunDir(run).latest_checkpoint()
    assert snapshot["world_size"] == 2 and len(snapshot["rng_by_rank"]) == 2

    result = run_cli(["train", "--resume", run])
    assert result.exit_code == 2 and "checkpoint was written by 2 process(es); resume it with --nproc 2" in result.stderr

    code, log = run_nproc(["train", "--resume", run], tmp_path)
    assert code == 0, log
    assert f"(step {stopped_at})" in log
    diff = max_abs_diff(adapter_weights(run / "adapter"), adapter_weights(tmp_path / "reference" / "adapter"))
    assert diff <= 1e-6, f"resumed 2-rank adapter differs from the uninterrupted one by {diff}"
    assert json.loads((run / "summary.json").read_text())["steps"] == 60


def test_fsdp_run_resumes_from_a_checkpoint_to_the_same_adapter(tmp_path, model_dir):
    """fsdp checkpoints hold whole tensors gathered from the shards (weights, AdamW moments) and every
    rank's RNG (dropout on); resuming from the step-3 checkpoint with 2 ranks redoes steps 4-6 exactly."""
    import shutil

    text = EQUIVALENCE_RECIPE.replace("dropout: 0.0", "dropout: 0.1").replace(
        "log_every: 1,", "log_every: 1, save_every: 3, keep_checkpoints: 5,")
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, text)
    reference = tmp_path / "reference"
    code, log = run_nproc(["train", recipe, "-o", reference, "-q", "--set", "train.distributed=fsdp"], tmp_path)
    assert code == 0, log
    assert checkpoint_steps(reference) == [3, 6]
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "adapter")
    shutil.rmtree(run / "checkpoints" / "step-000006")
    code, log = run_nproc(["train", "--resume", run], tmp_path)
    assert code == 0, log
    assert "(step 3)" in log
    diff = max_abs_diff(adapter_weights(run / "adapter"), adapter_weights(reference / "adapter"))
    assert diff <= 1e-6, f"resumed fsdp adapter differs from the uninterrupted one by {diff}"
