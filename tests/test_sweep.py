"""`lorafit sweep` on a tiny Llama: a grid runs every combination and its best.yaml trains; a sweep
stopped by SIGTERM (a real process) resumes without rerunning a finished trial and ends an interrupted
one as if it had never stopped; median pruning stops the trial a hand computation says is worse than
the median; bad input is one line and exit 2."""

from __future__ import annotations

import json
import signal
import sqlite3
import statistics
from pathlib import Path

import pytest
from cli_runs import (
    TINY_RECIPE,
    adapter_weights,
    assert_one_line_error,
    finish,
    max_abs_diff,
    run_cli,
    start_subprocess,
    wait_for_checkpoint,
    write_recipe,
)

# 20 steps, the validation loss every 5 (what the objective and the pruner read), a checkpoint every 5.
SWEEP_RECIPE = (TINY_RECIPE.replace("max_steps: 40", "max_steps: 20")
                .replace("  log_every: 5\n", "  log_every: 5\n  eval_every: 5\n"))


def sweep_json(directory: Path) -> dict:
    return json.loads((directory / "sweep.json").read_text())


def valid_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["valid_loss"] for r in records if "valid_loss" in r}


def test_a_grid_of_four_runs_every_combination_and_its_best_recipe_trains(tmp_path, model_dir):
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, SWEEP_RECIPE)
    out = tmp_path / "sweep"
    result = run_cli(["sweep", recipe, "-o", out, "--grid", "lora.rank=2,4", "--grid", "train.lr=1e-2,3e-3"])
    assert result.exit_code == 0, result.output
    data = sweep_json(out)
    rows = data["trials"]
    assert [r["params"] for r in sorted(rows, key=lambda r: r["number"])] == [
        {"lora.rank": 2, "train.lr": 0.01}, {"lora.rank": 2, "train.lr": 0.003},
        {"lora.rank": 4, "train.lr": 0.01}, {"lora.rank": 4, "train.lr": 0.003}]
    for row in rows:  # each trial an ordinary run directory; its objective is its last validation loss
        run = out / row["run_dir"]
        summary = json.loads((run / "summary.json").read_text())
        assert row["state"] == "complete" and row["steps"] == summary["steps"] == 20
        assert row["objective"] == summary["final_valid_loss"] == valid_losses(run)[20]
        assert (run / "adapter" / "adapter_model.safetensors").is_file()
    best = min(rows, key=lambda r: r["objective"])
    assert data["best"]["number"] == best["number"]
    assert (out / "best.yaml").read_text() == (out / best["run_dir"] / "recipe.yaml").read_text()
    assert {Path(f).name for f in data["files"]} == {"objective-lora.rank.png", "objective-train.lr.png", "curves.png"}
    with sqlite3.connect(out / "study.db") as db:  # a real database: four trials, all COMPLETE
        assert db.execute("select state, count(*) from trials group by state").fetchall() == [("COMPLETE", 4)]
    assert f"best: trial {best['number']:03d}" in result.output and "lorafit analyze" in result.output

    shown = run_cli(["sweep", "show", out])
    assert shown.exit_code == 0 and f"best: trial {best['number']:03d}" in shown.output
    finished = {r["run_dir"]: (out / r["run_dir"] / "summary.json").read_bytes() for r in rows}
    again = run_cli(["sweep", "--resume", "-o", out])  # the saved sweep, nothing left to run
    assert again.exit_code == 0 and "4 trial(s) finished earlier are kept, not run again" in again.output
    assert finished == {r["run_dir"]: (out / r["run_dir"] / "summary.json").read_bytes() for r in rows}
    other = run_cli(["sweep", recipe, "-o", out, "--grid", "lora.rank=2,8"])
    assert other.exit_code == 2
    assert_one_line_error(other.stderr, f"{out}: holds a sweep with other settings; continue it with `lorafit sweep "
                                        f"--resume -o {out}`, or choose another -o")
    runs = [out / r["run_dir"] for r in rows]  # trials are run directories `lorafit report` compares
    compared = run_cli(["report", *runs, "-o", tmp_path / "report.png"])
    assert compared.exit_code == 0 and (tmp_path / "report.png").is_file(), compared.output
    trained = run_cli(["train", out / "best.yaml", "-o", tmp_path / "again", "-q"])
    assert trained.exit_code == 0, trained.output
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["final_valid_loss"] == pytest.approx(best["objective"], abs=1e-6)


def test_a_terminated_sweep_resumes_without_rerunning_a_finished_trial(tmp_path, model_dir):
    text = SWEEP_RECIPE.replace("max_steps: 20", "max_steps: 60")  # room to stop trial 001 midway
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, text)
    out = tmp_path / "sweep"
    args = ["sweep", recipe, "-o", out, "--grid", "train.lr=1e-2,5e-3"]
    proc = start_subprocess(args, tmp_path, tmp_path / "1.log")
    second = out / "trials" / "001-lr=0.005"
    wait_for_checkpoint(proc, second, after=0)
    proc.send_signal(signal.SIGTERM)
    code, log = finish(proc)
    assert code == 130, log
    assert f"interrupted: the study keeps every finished trial; continue with: lorafit sweep --resume -o {out}" in log
    assert {r["number"]: r["state"] for r in sweep_json(out)["trials"]} == {0: "complete", 1: "running"}
    first = out / "trials" / "000-lr=0.01"
    finished = (first / "summary.json").read_bytes()
    assert not (second / "adapter").exists()

    result = run_cli(args)  # the same command continues it (in this process: one start-up fewer)
    assert result.exit_code == 0, result.output
    log = result.output
    assert "1 trial(s) finished earlier are kept, not run again" in log
    assert "trial 001: continuing from its run directory" in log and "trial 000" not in log.split("sweep ")[1]
    assert (first / "summary.json").read_bytes() == finished
    assert {r["number"]: (r["state"], r["steps"]) for r in sweep_json(out)["trials"]} == {
        0: ("complete", 60), 1: ("complete", 60)}
    # The resumed trial ends with the adapter of an uninterrupted run of its recipe.
    reference = run_cli(["train", second / "recipe.yaml", "-o", tmp_path / "reference", "-q"])
    assert reference.exit_code == 0, reference.output
    assert max_abs_diff(adapter_weights(second / "adapter"), adapter_weights(tmp_path / "reference" / "adapter")) <= 1e-6


def test_median_pruning_stops_the_trial_worse_than_the_median(tmp_path, model_dir):
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, SWEEP_RECIPE)
    out = tmp_path / "sweep"
    result = run_cli(["sweep", recipe, "-o", out, "--grid", "train.lr=1e-2,5e-3,1e-7", "--prune", "median",
                      "--prune-startup", "2"])
    assert result.exit_code == 0, result.output
    rows = {r["number"]: r for r in sweep_json(out)["trials"]}
    losses = {n: valid_losses(out / rows[n]["run_dir"]) for n in rows}
    # The hand computation: at step 5, trial 2 (lr 1e-7, barely moved) is above the median of the two
    # finished trials there, so the pruner stops it after its first evaluation.
    assert losses[2][5] > statistics.median([losses[0][5], losses[1][5]])
    assert [rows[n]["state"] for n in (0, 1, 2)] == ["complete", "complete", "pruned"]
    assert rows[2]["steps"] == 5 and rows[2]["objective"] == losses[2][5]
    summary = json.loads((out / rows[2]["run_dir"] / "summary.json").read_text())
    assert summary["stopped"] == "pruned" and (out / rows[2]["run_dir"] / "adapter").is_dir()
    assert "trial 002 pruned" in result.output
    with sqlite3.connect(out / "study.db") as db:  # pruned, not failed
        assert db.execute("select number, state from trials order by number").fetchall() == [
            (0, "COMPLETE"), (1, "COMPLETE"), (2, "PRUNED")]


def test_a_space_file_draws_its_trials_within_the_ranges(tmp_path, model_dir):
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, SWEEP_RECIPE.replace("max_steps: 20", "max_steps: 5"))
    space = tmp_path / "space.yaml"
    space.write_text("lora.rank: {type: int, low: 1, high: 8, log: true}\ntrain.lr: {type: log, low: 1.0e-4, high: 1.0e-2}\n"
                     "lora.targets: {type: choice, values: [[q_proj, v_proj], all-linear]}\n")
    out = tmp_path / "sweep"
    result = run_cli(["sweep", recipe, "-o", out, "--space", space, "--trials", "3", "--sampler", "random"])
    assert result.exit_code == 0, result.output
    rows = sweep_json(out)["trials"]
    assert len(rows) == 3 and all(r["state"] == "complete" for r in rows)
    for row in rows:
        saved = (out / row["run_dir"] / "recipe.yaml").read_text()
        assert 1 <= row["params"]["lora.rank"] <= 8 and 1e-4 <= row["params"]["train.lr"] <= 1e-2
        assert f"rank: {row['params']['lora.rank']}\n" in saved
        targets = "[all-linear]" if row["params"]["lora.targets"] == "all-linear" else "[q_proj, v_proj]"
        assert f"targets: {targets}\n" in saved


@pytest.mark.parametrize(("args", "space_text", "fragments"), [
    (["--grid", "lora.rnak=4,8"], None, ["--grid lora.rnak=4,8: lora.rnak: unknown key (did you mean 'lora.rank'?)"]),
    (["--grid", "lora.rank=0,4"], None, ["--grid lora.rank=0,4: lora.rank: must be > 0, got 0"]),
    (["--grid", "train.schedule=linear,cosin"], None, ["--grid train.schedule=linear,cosin: train.schedule: must be one of"]),
    (["--grid", "lora.rank"], None, ["--grid lora.rank: expected KEY=V1,V2,..."]),
    (["--space", "SPACE"], "lora.rank: {type: int, low: 1\n  high: [", ["space.yaml:", "YAML syntax error"]),
    (["--space", "SPACE"], "lora.rank: {type: integer, low: 1, high: 8}\n",
     ["space.yaml: lora.rank: type must be one of int, float, log, choice, got 'integer'"]),
    (["--space", "SPACE"], "train.lr: {type: log, low: 1.0e-2, high: 1.0e-4}\n",
     ["space.yaml: train.lr: low 0.01 must be below high 0.0001"]),
    (["--space", "SPACE"], "lora.dropout: {type: float, low: 0.0, high: 1.5}\n",
     ["space.yaml: lora.dropout: lora.dropout: must be in [0, 1), got 1.5"]),
    (["--grid", "lora.rank=4,8", "--objective", "accuracy"], None, ["--objective accuracy: a task metric is evaluated"]),
    (["--grid", "lora.rank=4,8", "--prune", "median", "--set", "train.eval_every=0"], None,
     ["--prune median: needs evaluations before the end of each trial; add --set train.eval_every=N"]),
    (["--grid", "lora.rank=4,8", "--trials", "3"], None, ["--trials: a grid runs each of its 2 combinations"]),
    ([], None, ["--grid and --space: give one of them"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, model_dir, args, space_text, fragments):
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, SWEEP_RECIPE)
    if space_text is not None:
        (tmp_path / "space.yaml").write_text(space_text)
    args = [str(tmp_path / "space.yaml") if a == "SPACE" else a for a in args]
    result = run_cli(["sweep", recipe, "-o", tmp_path / "sweep", *args])
    assert result.exit_code == 2, result.output
    assert_one_line_error(result.stderr, *fragments)
    assert not (tmp_path / "sweep").exists()  # nothing written for a sweep refused


@pytest.mark.slow  # four worker processes, each a Python + torch start-up
def test_jobs_run_trials_in_worker_processes(tmp_path, model_dir):
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, SWEEP_RECIPE.replace("max_steps: 20", "max_steps: 5"))
    out = tmp_path / "sweep"
    result = run_cli(["sweep", recipe, "-o", out, "--grid", "lora.rank=2,4", "--grid", "train.lr=1e-2,3e-3",
                      "--jobs", "2"])
    assert result.exit_code == 0, result.output
    rows = sweep_json(out)["trials"]
    assert sorted(r["number"] for r in rows) == [0, 1, 2, 3] and all(r["state"] == "complete" for r in rows)
    assert all((out / r["run_dir"] / "adapter").is_dir() for r in rows)
