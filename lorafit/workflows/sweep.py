"""`lorafit sweep`: many `run_training` runs over a grid or a space of recipe keys, an optuna study
choosing them, the best recipe written out.

    plan_sweep: recipe + --set (fixed) + --grid / --space, checked -> DIR/base.yaml, DIR/sweep-config.json
    run_sweep:  study (DIR/study.db) -> [continue interrupted trials] -> ask, run_trial, ... until N trials
                -> DIR/sweep.json, DIR/best.yaml, objective-<key>.png, curves.png, table, analyze's advice
    run_trial:  trial k's recipe (base + its params, train.best_metric = the objective) -> run_training in
                DIR/trials/kkk-<params>/ (an ordinary run directory), reporting the objective at each
                evaluation (the pruner may stop it) -> told to the study: complete, pruned or failed

A trial interrupted (Ctrl-C, SIGTERM, a crash) stays RUNNING in the study; the next `lorafit sweep` on
DIR continues it from its run directory's newest checkpoint before asking for new trials, and a trial
the study holds as finished is never run again. With --jobs J the trials run in J worker processes
(`lorafit sweep --worker K -o DIR`), each with cores // J torch threads, all writing the one study.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from lorafit.console import Reporter
from lorafit.errors import LorafitError, RecipeError, RunDirError
from lorafit.recipe import Recipe, dump_recipe, load_recipe, parse_recipe
from lorafit.recipe.parse import apply_overrides
from lorafit.runs.atomic import write_text_atomic
from lorafit.runs.interrupts import sigterm_as_interrupt
from lorafit.runs.rundir import SUMMARY_FILE, RunDir, is_run_dir, read_metrics
from lorafit.sweep.report import best_row, compute_used, ranked, table_rows
from lorafit.sweep.space import Param, grid_points, load_space, override, parse_grid, trial_dir_name
from lorafit.train.best import metric_direction, record_key

CONFIG_FILE, BASE_FILE, SWEEP_FILE, BEST_FILE, TRIALS_DIR = "sweep-config.json", "base.yaml", "sweep.json", "best.yaml", "trials"
PLOTTED_TRIALS = 5  # learning curves of the best five


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A checked sweep: where, what it varies, how it chooses and judges trials."""

    directory: Path
    base: Recipe  # the recipe file with every --set applied
    params: tuple[Param, ...]
    grid: bool
    trials: int
    objective: str
    sampler: str
    prune: str
    prune_startup: int

    @property
    def direction(self) -> str:
        return metric_direction(record_key(self.objective))

    def config(self) -> dict:
        return {"params": [p.as_dict() for p in self.params], "grid": self.grid, "trials": self.trials,
                "objective": self.objective, "direction": self.direction, "sampler": self.sampler,
                "prune": self.prune, "prune_startup": self.prune_startup}

    def study(self):
        from lorafit.sweep.study import open_study

        points = grid_points(list(self.params)) if self.grid else None
        return open_study(self.directory, direction=self.direction, sampler=self.sampler, prune=self.prune,
                          prune_startup=self.prune_startup, seed=self.base.seed, grid=points)


def plan_sweep(recipe: Path | None, sets: list[str], output: Path, *, grid: list[str], space: Path | None,
               trials: int | None, sampler: str, objective: str, prune: str, prune_startup: int,
               resume: bool) -> Sweep:
    """Check everything a sweep needs before any trial runs; a sweep already in `output` is reopened
    (the same settings) or refused (other settings). `recipe` None with `resume`: the saved sweep."""
    require_optuna()
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise RunDirError(f"{output}: exists and is not a directory")
    saved = output / CONFIG_FILE
    if recipe is None:
        if not resume or not saved.is_file():
            raise RunDirError(f"{output}: no sweep to resume (no {CONFIG_FILE}); give a RECIPE to start one")
        return load_sweep(output)
    base = load_recipe(recipe, sets)
    if bool(grid) == (space is not None):
        raise RecipeError("--grid and --space: give one of them (--grid KEY=V1,V2 ..., or --space SPACE.yaml)")
    params = parse_grid(grid, base) if grid else load_space(space, base)
    if grid and trials is not None:
        raise RecipeError(f"--trials: a grid runs each of its {len(grid_points(params))} combinations; drop --trials")
    count = len(grid_points(params)) if grid else trials if trials is not None else 10
    check_objective(base, objective, prune)
    sweep = Sweep(output, base, tuple(params), bool(grid), count, objective, "grid" if grid else sampler, prune,
                  prune_startup)
    if saved.is_file():
        stored = load_sweep(output)
        if stored.config() != sweep.config() or dump_recipe(stored.base) != dump_recipe(base):
            raise RunDirError(f"{output}: holds a sweep with other settings; continue it with `lorafit sweep --resume "
                              f"-o {output}`, or choose another -o")
        return stored
    if resume:
        raise RunDirError(f"{output}: nothing to resume (no {CONFIG_FILE} in it)")
    if output.is_dir() and any(output.iterdir()):
        raise RunDirError(f"{output}: is not empty and holds no sweep; choose another -o")
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output / BASE_FILE, dump_recipe(base))
    write_text_atomic(output / CONFIG_FILE, json.dumps(sweep.config(), indent=1) + "\n")
    return sweep


def require_optuna() -> None:
    """optuna is the extra `lorafit[sweep]`: say so in one line rather than fail on an import."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise RecipeError("lorafit sweep needs the optuna package: pip install lorafit[sweep]") from None


def check_objective(base: Recipe, objective: str, prune: str) -> None:
    """A task-metric objective needs eval.every; pruning needs values before the end."""
    key = record_key(objective)
    if key != "valid_loss" and base.eval.every <= 0:
        raise RecipeError(f"--objective {objective}: a task metric is evaluated during training only with "
                          "eval.every > 0; add --set eval.every=N")
    every = base.train.eval_every if key == "valid_loss" else base.eval.every
    if prune != "none" and every <= 0:
        raise RecipeError(f"--prune {prune}: needs evaluations before the end of each trial; add --set "
                          f"{'train.eval_every' if key == 'valid_loss' else 'eval.every'}=N")


def load_sweep(directory: Path) -> Sweep:
    config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    base = parse_recipe((directory / BASE_FILE).read_text(encoding="utf-8"), str(directory / BASE_FILE))
    params = tuple(Param(**{**p, "values": tuple(p["values"])}) for p in config["params"])
    return Sweep(directory, base, params, config["grid"], config["trials"], config["objective"], config["sampler"],
                 config["prune"], config["prune_startup"])


def trial_recipe(sweep: Sweep, number: int, params: dict) -> Recipe:
    """The base recipe with trial `number`'s values, watching the objective (train.best_metric)."""
    items = [override(k, v) for k, v in params.items()] + [f"train.best_metric={sweep.objective}"]
    recipe = apply_overrides(sweep.base, items, source=f"trial {number}")
    return dataclasses.replace(recipe, name=f"{sweep.base.name}-{number:03d}", output_dir=None)


# ---------------------------------------------------------------------------------------------- one trial


def run_trial(sweep: Sweep, number: int) -> None:
    """Run (or continue) trial `number` in its run directory and tell the study how it ended."""
    import optuna

    from lorafit.sweep.study import tell_failed, trial_id
    from lorafit.workflows.train import run_training

    study = sweep.study()
    trial = optuna.trial.Trial(study, trial_id(study, number))
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    run = RunDir(sweep.directory / frozen.user_attrs["run_dir"])
    key = record_key(sweep.objective)
    started = time.perf_counter()

    def on_evaluation(record: dict) -> bool:
        value = record.get(key)
        if value is None or record["step"] == 0:
            return False
        trial.report(float(value), record["step"])
        return sweep.prune != "none" and trial.should_prune()

    try:
        if (run.path / SUMMARY_FILE).is_file():  # finished before the study was told: no second run
            summary = json.loads((run.path / SUMMARY_FILE).read_text(encoding="utf-8"))
        else:
            resume = is_run_dir(run.path)
            summary = run_training(trial_recipe(sweep, number, frozen.params), run, overwrite=not resume,
                                   resume=resume, reporter=Reporter(quiet=True), on_evaluation=on_evaluation)
    except LorafitError as e:
        tell_failed(study, number, str(e).splitlines()[0], seconds=time.perf_counter() - started)
        return
    except Exception as e:  # noqa: BLE001 - one trial's crash is that trial's failure; the sweep goes on
        tell_failed(study, number, f"unexpected {type(e).__name__}: {(str(e).splitlines() or [''])[0]}",
                    seconds=time.perf_counter() - started)
        return
    value = objective_value(summary, run, key)
    trial.set_user_attr("steps", summary["steps"])
    trial.set_user_attr("seconds", summary.get("seconds", round(time.perf_counter() - started, 1)))
    if summary.get("best"):
        trial.set_user_attr("best_step", summary["best"]["step"])
    if summary.get("stopped") == "pruned":
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
    elif value is None:
        tell_failed(study, number, f"{run.path}: the run has no value of {sweep.objective}",
                    seconds=time.perf_counter() - started)
    else:
        study.tell(number, value)


def objective_value(summary: dict, run: RunDir, key: str) -> float | None:
    """What the trial's adapter scores: the kept best evaluation (train.keep_best), else the task
    evaluation at the end (eval.at_end), else the last evaluation of the objective."""
    best = summary.get("best")
    if best and best.get("kept"):
        return best["value"]
    metric = key.removeprefix("eval_")
    if key != "valid_loss" and isinstance((summary.get("metrics") or {}).get(metric), int | float):
        return float(summary["metrics"][metric])
    values = [r[key] for r in read_metrics(run.metrics) if r.get(key) is not None and r.get("step", 0) > 0] \
        if run.metrics.is_file() else []
    return float(values[-1]) if values else None


# ---------------------------------------------------------------------------------------------- the sweep


def run_sweep(sweep: Sweep, reporter: Reporter, *, jobs: int = 1) -> dict:
    """Run the sweep to its N trials (continuing interrupted ones first), then write its outputs."""
    from lorafit.sweep.study import tell_failed
    from lorafit.sweep.workers import start_worker, stop_workers, wait_for_a_worker

    study = sweep.study()
    distributions = {p.key: p.distribution() for p in sweep.params}
    reporter.info(f"sweep of {sweep.trials} trials ({'grid' if sweep.grid else sweep.sampler}) over "
                  f"{', '.join(p.key for p in sweep.params)}; objective {sweep.objective} ({sweep.direction}); "
                  f"pruning {sweep.prune}; study in {sweep.directory / 'study.db'}")
    shown = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    if shown:
        reporter.info(f"{len(shown)} trial(s) finished earlier are kept, not run again")

    def next_trial() -> int | None:
        """An interrupted trial to continue, else a new one while fewer than N have started."""
        trials = study.get_trials(deepcopy=False)
        interrupted = [t.number for t in trials if t.state.name == "RUNNING" and t.number not in running]
        if interrupted:
            reporter.info(f"trial {interrupted[0]:03d}: continuing from its run directory")
            return interrupted[0]
        if sum(t.state.name != "WAITING" for t in trials) >= sweep.trials:
            return None
        trial = study.ask(distributions)
        trial.set_user_attr("run_dir", f"{TRIALS_DIR}/{trial_dir_name(trial.number, trial.params)}")
        return trial.number

    def report_finished() -> None:
        """A line per newly finished trial, and sweep.json brought up to date (for `sweep show`, scripts)."""
        fresh = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.number not in shown]
        for t in fresh:
            shown.add(t.number)
            reporter.info(trial_line(t, sweep))
        if fresh:
            write_outputs(sweep, study, reporter, final=False)

    running: dict = {}  # trial number -> its worker process (None: this process runs it)
    with sigterm_as_interrupt():
        try:
            while True:
                while len(running) < jobs and (number := next_trial()) is not None:
                    if jobs == 1:
                        running[number] = None
                        run_trial(sweep, number)
                        del running[number]
                        report_finished()
                    else:
                        running[number] = start_worker(sweep.directory, number, jobs)
                if not running:
                    break
                number, code = wait_for_a_worker(running)
                if code != 0:  # died without telling the study (killed, out of memory): not retried now
                    tell_failed(study, number, f"worker process exited with code {code}", only_running=True)
                report_finished()
        except KeyboardInterrupt:
            stop_workers(running)
            write_outputs(sweep, study, reporter, final=False)
            reporter.info(f"interrupted: the study keeps every finished trial; continue with: lorafit sweep --resume "
                          f"-o {sweep.directory}")
            raise
    return write_outputs(sweep, study, reporter, final=True)


def trial_line(trial, sweep: Sweep) -> str:
    from lorafit.sweep.study import trial_row

    row = trial_row(trial)
    value = "" if row["objective"] is None else f" {sweep.objective} {row['objective']:.4f}"
    params = " ".join(f"{k.rpartition('.')[2]}={v}" for k, v in row["params"].items())
    tail = f" ({row['steps']} steps, {row['seconds']:.0f}s)" if row["steps"] is not None else ""
    error = f": {row['error']}" if row["error"] else ""
    return f"trial {row['number']:03d} {row['state']}{value}  {params}{tail}{error}"


def write_outputs(sweep: Sweep, study, reporter: Reporter, *, final: bool) -> dict:
    """sweep.json always; at the end also best.yaml, the PNGs, the table and the rank advice."""
    from lorafit.sweep.plots import curves_plot, objective_plots
    from lorafit.sweep.study import trial_row

    rows = [trial_row(t) for t in study.get_trials(deepcopy=False) if t.state.name != "WAITING"]
    best = best_row(rows, sweep.direction)
    keys = [p.key for p in sweep.params]
    data = {"directory": str(sweep.directory), "objective": sweep.objective, "direction": sweep.direction,
            "params": keys, "compute": compute_used(rows), "best": best, "trials": rows}
    if final:
        data["files"] = [str(p) for p in objective_plots(rows, keys, sweep.objective, sweep.directory)]
        curves = curves_plot(ranked(rows, sweep.direction)[:PLOTTED_TRIALS], sweep.directory, sweep.directory, sweep.objective)
        data["files"] += [str(curves)] if curves else []
        if best is not None:
            text = (sweep.directory / best["run_dir"] / "recipe.yaml").read_text(encoding="utf-8")
            write_text_atomic(sweep.directory / BEST_FILE, text)
            data["best_recipe"] = str(sweep.directory / BEST_FILE)
    write_text_atomic(sweep.directory / SWEEP_FILE, json.dumps(data, indent=1, default=str) + "\n")
    if final:
        print_sweep(data, reporter)
        data["advice"] = rank_advice(sweep, best, reporter)
    return data


def print_sweep(data: dict, reporter: Reporter) -> None:
    """The table sorted by objective, the best trial and what the sweep cost."""
    columns, rows = table_rows(data["trials"], data["params"], data["direction"])
    reporter.table(f"sweep {data['directory']}: {data['objective']} ({data['direction']})", columns, rows)
    compute = data["compute"]
    states = ", ".join(f"{n} {s}" for s, n in compute["by_state"].items())
    reporter.info(f"{compute['trials']} trials ({states}): {compute['steps']} optimizer steps, {compute['seconds']:.0f}s")
    best = data["best"]
    if best is None:
        reporter.info("no trial completed: no best recipe")
        return
    params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
    reporter.info(f"best: trial {best['number']:03d} ({params}) {data['objective']} {best['objective']:.4f}; "
                  f"run {Path(data['directory']) / best['run_dir']}; recipe {Path(data['directory']) / BEST_FILE} "
                  f"(lorafit train {Path(data['directory']) / BEST_FILE})")


def rank_advice(sweep: Sweep, best: dict | None, reporter: Reporter) -> list[str]:
    """`lorafit analyze`'s effective-rank advice on the best trial's adapter (LoRA runs only)."""
    from lorafit.workflows.analyze import run_analyze

    adapter = sweep.directory / best["run_dir"] / "adapter" if best else None
    if adapter is None or not (adapter / "adapter_config.json").is_file():
        return []
    try:
        lines = run_analyze(adapter)["advice"]["lines"]
    except LorafitError as e:
        reporter.info(f"note: no rank advice for {adapter}: {e}")
        return []
    reporter.info(f"\nlorafit analyze {adapter}:")
    for line in lines:
        reporter.info(f"  {line}")
    return lines


def show_sweep(directory: Path, reporter: Reporter) -> dict:
    """`lorafit sweep show DIR`: the table and the best trial again, from the study as it is now."""
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise RunDirError(f"{directory}: holds no sweep (no {CONFIG_FILE})")
    sweep = load_sweep(directory)
    from lorafit.sweep.study import trial_row

    rows = [trial_row(t) for t in sweep.study().get_trials(deepcopy=False) if t.state.name != "WAITING"]
    data = {"directory": str(directory), "objective": sweep.objective, "direction": sweep.direction,
            "params": [p.key for p in sweep.params], "compute": compute_used(rows),
            "best": best_row(rows, sweep.direction), "trials": rows}
    print_sweep(data, reporter)
    return data
