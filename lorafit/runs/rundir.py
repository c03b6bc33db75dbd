"""The run directory: everything one `lorafit train` produces, laid out for people and scripts.

    <run>/recipe.yaml              the fully resolved recipe (every key)
    <run>/metrics.jsonl            one JSON line per logged step / validation
    <run>/adapter/                 the final adapter (PEFT format)
    <run>/checkpoints/step-000100/ state.pt (weights, optimizer, scheduler, RNG, data position)
    <run>/eval.json                task metrics, when evaluated
    <run>/summary.json             final numbers of the run
    <run>/loss.png                 training and validation loss curves
    <run>/tensorboard/             TensorBoard event files, when log.tensorboard is true

Checkpoints and the adapter are written atomically (see atomic.py); the newest K checkpoints are kept.
A checkpoint that cannot be read is skipped with a warning when resuming.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

from lorafit.errors import RunDirError
from lorafit.runs.atomic import atomic_directory, recover_directory, write_text_atomic

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
SUMMARY_FILE = "summary.json"
EVAL_FILE = "eval.json"
PLOT_FILE = "loss.png"
TENSORBOARD_DIR = "tensorboard"
STATE_FILE = "state.pt"


def is_run_dir(path: Path) -> bool:
    """A directory that holds a lorafit run (its resolved recipe)."""
    return (Path(path) / RECIPE_FILE).is_file()


class RunDir:
    """Paths and writes of one run directory. Only rank 0 of a distributed run should write."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ---- creation -------------------------------------------------------------------------
    def check(self, *, overwrite: bool, resume: bool) -> None:
        """Refuse, before anything is loaded or written, a directory that cannot be used as asked:
        a file, a run to resume that is not there, or a run to replace without `overwrite`."""
        if resume and overwrite:
            raise RunDirError(f"{self.path}: --resume continues the run and --overwrite replaces it; pass only one")
        if resume and not is_run_dir(self.path):
            raise RunDirError(f"{self.path}: nothing to resume (no {RECIPE_FILE} in it)")
        if not resume and not overwrite and self.path.is_dir() and any(self.path.iterdir()):
            raise RunDirError(
                f"{self.path}: already holds a run; pass --overwrite to replace it or --resume to continue it"
            )
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path}: output path exists and is not a directory")

    def prepare(self, *, overwrite: bool) -> None:
        """Create the directory for a new run, emptied first with `overwrite` (see `check`)."""
        self.check(overwrite=overwrite, resume=False)
        if self.path.is_dir():
            for child in self.path.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def plot(self) -> Path:
        return self.path / PLOT_FILE

    def write_recipe(self, text: str) -> None:
        write_text_atomic(self.recipe, text)

    def write_json(self, name: str, data: dict) -> Path:
        path = self.path / name
        write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
        return path

    # ---- metrics log ----------------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        """Append one JSON line and flush, so a crash loses at most the line being written."""
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def truncate_metrics(self, after_step: int) -> None:
        """Drop lines logged after `after_step` (they are re-logged when a resumed run redoes them)."""
        if not self.metrics.exists():
            return
        kept = [line for line in read_metrics(self.metrics) if line.get("step", 0) <= after_step]
        write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    # ---- checkpoints ----------------------------------------------------------------------
    def checkpoint_dirs(self) -> list[Path]:
        """Checkpoint directories, oldest first."""
        root = self.path / CHECKPOINTS_DIR
        if not root.is_dir():
            return []
        for old in root.glob("step-*.old"):
            recover_directory(old.with_name(old.name[: -len(".old")]))
        return sorted(p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit())

    def save_checkpoint(self, snapshot: dict, recipe_text: str, keep: int) -> Path:
        """Write `snapshot` atomically as checkpoints/step-NNNNNN and keep only the newest `keep`."""
        step = snapshot["state"]["step"]
        target = self.path / CHECKPOINTS_DIR / f"step-{step:06d}"
        with atomic_directory(target) as tmp:
            import torch  # here, not at import: `lorafit train` checks the run directory before torch loads

            torch.save(snapshot, tmp / STATE_FILE)
            (tmp / RECIPE_FILE).write_text(recipe_text, encoding="utf-8")
        for old in self.checkpoint_dirs()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in target.parent.glob(".step-*.tmp"):  # half-written by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        return target

    def latest_checkpoint(self, on_skip: Callable[[str], None] | None = None) -> tuple[Path, dict] | None:
        """The newest checkpoint that loads, skipping any that cannot be read (truncated, corrupted).

        Each skipped one is reported with a one-line message to `on_skip` (default: warnings.warn).
        """
        for path in reversed(self.checkpoint_dirs()):
            try:
                import torch

                snapshot = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
                if not isinstance(snapshot, dict) or "state" not in snapshot:
                    raise ValueError("not a lorafit checkpoint")
                return path, snapshot
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, by design
                reason = (str(e).splitlines() or [""])[0]
                message = f"skipping unreadable checkpoint {path} ({type(e).__name__}: {reason})"
                if on_skip is not None:
                    on_skip(message)
                else:
                    warnings.warn(message, stacklevel=2)
        return None


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl as a list of dicts; a torn last line (crash mid-write) is ignored."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def run_directory(recipe, output: Path | None) -> RunDir:
    """--output, else the recipe's output_dir, else runs/<name>."""
    return RunDir(output or (Path(recipe.output_dir) if recipe.output_dir else Path("runs") / recipe.name))


def locate_run(recipe_path: Path, overrides: list[str], output: Path | None, *, resume: bool, overwrite: bool = False,
               check: bool = True):
    """(recipe, RunDir, note) to train with; `note` says why a given recipe is not used, else "".

    RECIPE is a recipe file (the run goes to --output, else its output_dir, else runs/<name>) or, with
    --resume, a run directory (`lorafit train --resume runs/x`). On --resume the recipe saved in the run
    directory is the one trained with; a recipe file or --set that differs from it is noted, not used.
    `check` False: the directory is not checked for a new run (ranks > 0 of a multi-process run: rank 0
    checks it and creates it, maybe before they look).
    """
    from lorafit.recipe import load_recipe, recipe_hash

    if recipe_path.is_dir():
        if not resume:
            raise RunDirError(f"{recipe_path}: is a directory; give a recipe file, or add --resume to continue the run in it")
        if output is not None and output.resolve() != recipe_path.resolve():
            raise RunDirError(f"--output {output}: differs from the run directory {recipe_path} given to --resume")
        run = RunDir(recipe_path)
        run.check(overwrite=False, resume=True)  # it must hold a run before its recipe is read
        given = load_recipe(run.recipe, overrides)
    else:
        given = load_recipe(recipe_path, overrides)
        run = run_directory(given, output)
    if check or resume:
        run.check(overwrite=overwrite, resume=resume)  # fail fast, before any model is loaded
    if not resume:
        return given, run, ""
    saved = load_recipe(run.recipe)
    if recipe_hash(saved) == recipe_hash(given):
        return saved, run, ""
    note = (f"note: resuming with the recipe saved in {run.recipe}; {recipe_path} "
            f"{'with --set ' if overrides else ''}differs from it and is not used")
    return saved, run, note
