"""The optuna study behind a sweep: stored in <DIR>/study.db (SQLite, a real database: `optuna-dashboard
sqlite:///DIR/study.db` or any SQLite client opens it), its sampler and pruner built from the sweep's
settings (the same in the driver and in every worker process), and each trial as a plain dict.

    grid:   every combination enqueued once, in order, when the study is created (trial k is combination k)
    random: optuna's RandomSampler(seed);  tpe: TPESampler(seed) after its startup trials
    prune:  median (MedianPruner: stop a trial whose best value so far is worse than the median of the
            finished trials at the same step) or halving (SuccessiveHalvingPruner, rungs from the first
            finished trial's steps); neither acts before `prune_startup` trials have finished.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

STUDY_FILE = "study.db"
STUDY_NAME = "sweep"


def storage_url(directory: Path) -> str:
    return f"sqlite:///{Path(directory).resolve() / STUDY_FILE}"


def make_sampler(kind: str, seed: int):
    return optuna.samplers.TPESampler(seed=seed) if kind == "tpe" else optuna.samplers.RandomSampler(seed=seed)


def make_pruner(kind: str, startup: int):
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0)
    if kind == "halving":
        return _HalvingAfterStartup(startup)
    return optuna.pruners.NopPruner()


class _HalvingAfterStartup(optuna.pruners.BasePruner):
    """SuccessiveHalvingPruner (reduction factor 3), but only once `startup` trials have finished, as
    MedianPruner's n_startup_trials: before that its rungs have too few trials to rank."""

    def __init__(self, startup: int) -> None:
        self.startup = startup
        self.inner = optuna.pruners.SuccessiveHalvingPruner(reduction_factor=3)

    def prune(self, study, trial) -> bool:
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        return len(finished) >= self.startup and self.inner.prune(study, trial)


def open_study(directory: Path, *, direction: str, sampler: str, prune: str, prune_startup: int, seed: int,
               grid: list[dict] | None = None):
    """Create or reopen the study in `directory`; a new grid study gets every combination enqueued."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Several worker processes write the same SQLite file: wait for its lock rather than fail.
    storage = optuna.storages.RDBStorage(storage_url(directory), engine_kwargs={"connect_args": {"timeout": 120}})
    new = not any(s.study_name == STUDY_NAME for s in optuna.get_all_study_summaries(storage))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning on some samplers/pruners
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction=direction, load_if_exists=True,
                                    sampler=make_sampler(sampler, seed), pruner=make_pruner(prune, prune_startup))
    if new and grid:
        for point in grid:
            study.enqueue_trial(point)
    return study


def trial_id(study, number: int) -> int:
    """optuna's storage id of trial `number` (what optuna.trial.Trial needs in another process)."""
    return next(t._trial_id for t in study.get_trials(deepcopy=False) if t.number == number)


def tell_failed(study, number: int, message: str, *, seconds: float | None = None, only_running: bool = False) -> None:
    """Mark trial `number` failed with its one-line error (only_running: unless it already ended)."""
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if only_running and frozen.state != TrialState.RUNNING:
        return
    trial = optuna.trial.Trial(study, frozen._trial_id)
    trial.set_user_attr("error", message)
    if seconds is not None:
        trial.set_user_attr("seconds", round(seconds, 1))
    study.tell(number, state=TrialState.FAIL)


def trial_row(trial) -> dict:
    """A trial as sweep.json lists it: params, state, objective, steps, seconds, run dir, error."""
    state = trial.state.name.lower()
    value = trial.value
    if value is None and trial.intermediate_values:  # a pruned or stopped trial: its last reported value
        value = trial.intermediate_values[max(trial.intermediate_values)]
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "params": dict(trial.params),
        "state": {"complete": "complete", "pruned": "pruned", "fail": "failed", "running": "running",
                  "waiting": "waiting"}.get(state, state),
        "objective": value if value is None or math.isfinite(value) else None,
        "steps": attrs.get("steps"),
        "seconds": attrs.get("seconds"),
        "run_dir": attrs.get("run_dir"),
        "best_step": attrs.get("best_step"),
        "error": attrs.get("error"),
    }
