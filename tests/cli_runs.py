"""Running the `lorafit` CLI in tests: in-process (CliRunner, fast) or as a real subprocess (signals,
no traceback on a real stderr), on tiny models trained on the generated `quickstart` task.

Both ways run torch on one thread: on 2 shared cores a second thread mostly spins (10x slower), and
one thread makes in-process and subprocess runs compute the very same floating-point sums.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lorafit.cli import app

REPO_ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("lorafit")  # the console script beside this interpreter
LORAFIT = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-c", "from lorafit.cli import main; main()"]

# A recipe that trains in ~2 s on one CPU thread: 40 steps of batch 4, a checkpoint every 5 steps,
# dropout on (so a resumed run must restore the RNG to match), several epochs (so resuming crosses
# epoch boundaries). `{model}` is a tiny model directory from tiny.save_tiny_model.
TINY_RECIPE = """\
name: tiny
model: {model}
task: quickstart
seed: 3
lora:
  rank: 4
  alpha: 8
  dropout: 0.1
  targets: [q_proj, v_proj]
data:
  max_length: 96
  max_train_examples: 64
  max_valid_examples: 4
train:
  max_steps: 40
  batch_size: 4
  lr: 1.0e-2
  warmup_steps: 4
  save_every: 5
  log_every: 5
  keep_checkpoints: 2
log:
  plot: false
"""


def write_recipe(path: Path, model_dir: Path, text: str = TINY_RECIPE) -> Path:
    path.write_text(text.format(model=model_dir), encoding="utf-8")
    return path


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_cli(args: list[str]):
    """`lorafit ARGS` in this process; returns click's Result (exit_code, stdout, stderr)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        torch.set_num_threads(threads)


def run_subprocess(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`lorafit ARGS` as a real process (its own interpreter, real stdout/stderr)."""
    return subprocess.run(
        [*LORAFIT, *map(str, args)], cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
        timeout=timeout,
    )


def start_subprocess(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start `lorafit ARGS` in the background, stdout and stderr into `log` (a pipe could fill up)."""
    out = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed by the caller through finish()
    proc = subprocess.Popen([*LORAFIT, *map(str, args)], cwd=cwd, env=subprocess_env(), stdout=out, stderr=out)
    proc.log_file = out
    return proc


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    """Wait for a started process; returns (exit code, everything it printed)."""
    try:
        code = proc.wait(timeout=timeout)
    finally:
        proc.log_file.close()
    return code, Path(proc.log_file.name).read_text(encoding="utf-8")


def checkpoint_steps(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    return sorted(int(p.name[5:]) for p in root.glob("step-*") if p.name[5:].isdigit()) if root.is_dir() else []


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, after: int, timeout: float = 120) -> int:
    """Poll until `run_dir` holds a checkpoint newer than step `after` (checkpoints appear whole, by a
    rename); returns its step. Fails if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        newer = [s for s in checkpoint_steps(run_dir) if s > after]
        if newer:
            return max(newer)
        if proc.poll() is not None:
            proc.log_file.flush()
            raise AssertionError(
                f"lorafit exited ({proc.returncode}) before a checkpoint after step {after}:\n"
                + Path(proc.log_file.name).read_text(encoding="utf-8")
            )
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no checkpoint after step {after} in {run_dir} within {timeout} s")


def adapter_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """stderr is exactly one `error: ...` line, without a traceback, containing every fragment."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes, to show that nothing changed."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
