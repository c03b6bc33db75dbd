"""What a person or a CI job sees when running lorafit: log lines, --json, --quiet, the run directory,
the loss plot, TensorBoard files, `lorafit report`, help texts, and every shipped recipe.

One real `lorafit train` runs in a subprocess (stdout is a pipe, as in CI) on a tiny random model and
the generated `quickstart` task; the other commands run in-process through Typer's CliRunner, which
skips the ~10 s of imports a subprocess pays.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lorafit.cli import app
from lorafit.console import Reporter, format_train_status
from lorafit.errors import RecipeError
from lorafit.recipe.parse import load_recipe
from lorafit.recipe.shipped import recipe_paths
from lorafit.runs.rundir import read_metrics

TRAIN_KEYS = {"step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"}
PLAIN_STEP_LINE = re.compile(
    r"^step (\d+)/(\d+)  epoch [\d.]+  loss [\d.]+  lr [\d.e+-]+  grad_norm [\d.]+  tok/s \d+  eta \d+m\d\ds$"
)


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def tiny_recipe(model_dir: Path, **sections) -> dict:
    """A recipe that trains a tiny random Llama for a few steps on generated data (seconds on a CPU)."""
    recipe = {
        "name": "tiny",
        "model": str(model_dir),
        "task": "quickstart",
        "data": {"max_train_examples": 48, "max_valid_examples": 8, "max_length": 96},
        "train": {"max_steps": 6, "batch_size": 8, "log_every": 2, "eval_every": 3},
        "eval": {"at_end": False, "limit": 3, "max_new_tokens": 4},
    }
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`lorafit ARGS` in a fresh interpreter with stdout and stderr captured (pipes: not a terminal)."""
    command = [sys.executable, "-c", "from lorafit.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def trained(model_dir, tmp_path_factory) -> dict:
    """One subprocess `lorafit train` in plain mode, with end-of-run eval and TensorBoard (if installed)."""
    root = tmp_path_factory.mktemp("trained")
    recipe = tiny_recipe(
        model_dir, eval={"at_end": True, "show_examples": 1}, log={"tensorboard": tensorboard_available()}
    )
    recipe_file = write_recipe(root / "tiny.yaml", recipe)
    done = run_cli(["train", str(recipe_file), "-o", str(root / "run")], cwd=root)
    assert done.returncode == 0, done.stderr
    return {"root": root, "run": root / "run", "stdout": done.stdout, "stderr": done.stderr}


@pytest.fixture
def cli(monkeypatch):
    """CliRunner.invoke on the lorafit app; restores the SIGTERM handler `lorafit train` installs."""
    previous = signal.getsignal(signal.SIGTERM)
    runner = CliRunner()
    yield lambda *args: runner.invoke(app, [str(a) for a in args])
    signal.signal(signal.SIGTERM, previous)


def only_json(stdout: str):
    """stdout holds exactly one JSON document (one line) and nothing else."""
    assert stdout.count("\n") == 1 and stdout.endswith("\n"), stdout[:500]
    return json.loads(stdout)


# ---- lorafit train without a terminal ---------------------------------------------------------


def test_plain_log_lines(trained):
    lines = trained["stdout"].splitlines()
    steps = [PLAIN_STEP_LINE.match(line) for line in lines]
    steps = [(int(m[1]), int(m[2])) for m in steps if m]
    assert steps == [(2, 6), (4, 6), (6, 6)]
    assert [line for line in lines if re.fullmatch(r"step \d+/6  valid_loss [\d.]+", line)] == [
        line for line in lines if "valid_loss" in line
    ]
    assert sum("valid_loss" in line for line in lines) == 3  # before training, at step 3, at the end
    assert any(re.fullmatch(r"generate: 3/3  eta \d+m\d\ds", line) for line in lines)  # eval progress
    assert any(line.startswith("done in ") for line in lines)
    assert "\x1b[" not in trained["stdout"] and "\r" not in trained["stdout"]  # no bar, no colors


def test_metrics_jsonl(trained):
    records = read_metrics(trained["run"] / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    valid = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert [r["step"] for r in valid] == [0, 3, 6]
    for r in train:
        assert TRAIN_KEYS <= r.keys()
        assert r["loss"] > 0 and r["lr"] >= 0 and r["tokens_per_s"] > 0 and r["grad_norm"] >= 0
    for r in valid:
        assert {"step", "valid_loss", "elapsed_s"} <= r.keys() and r["valid_loss"] > 0
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed)


def test_run_directory(trained):
    run = trained["run"]
    for name in ("recipe.yaml", "metrics.jsonl", "summary.json", "eval.json", "loss.png"):
        assert (run / name).is_file(), name
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert load_recipe(run / "recipe.yaml").train.max_steps == 6  # the resolved recipe reads back
    assert set(json.loads((run / "eval.json").read_text())["metrics"]) >= {"bleu"}


def assert_png(path: Path, min_bytes: int = 8_000) -> None:
    """A real PNG image: magic bytes, a plausible size, and it decodes to sensible dimensions."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > min_bytes
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 400 <= width <= 3000 and 250 <= height <= 2000
    assert image.std() > 0.01  # not a blank canvas


def test_loss_plot_is_a_png(trained):
    assert_png(trained["run"] / "loss.png")


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed (lorafit[tensorboard])")
def test_tensorboard_event_files(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    directory = trained["run"] / "tensorboard"
    assert list(directory.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(directory))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "valid/loss", "eval/bleu"}
    assert expected <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]
    assert [e.step for e in events.Scalars("valid/loss")] == [0, 3, 6]
    logged = [r["loss"] for r in read_metrics(trained["run"] / "metrics.jsonl") if "loss" in r]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(logged, rel=1e-6)


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed (lorafit[tensorboard])")
def test_tensorboard_resume_drops_redone_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lorafit.runs.tensorboard import TensorBoardLog

    first = TensorBoardLog(tmp_path)
    for step in (1, 2, 3, 4):  # interrupted after step 4; the newest checkpoint is step 2
        first.log({"step": step, "loss": float(step)})
    first.close()
    resumed = TensorBoardLog(tmp_path, resumed_at=2)
    for step in (3, 4, 5):
        resumed.log({"step": step, "loss": 10.0 + step})
    resumed.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1), (2, 2), (3, 13), (4, 14), (5, 15)]


def test_tensorboard_missing_is_one_line(monkeypatch):
    from lorafit.runs.tensorboard import summary_writer_class

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(RecipeError, match=r"pip install lorafit\[tensorboard\]") as error:
        summary_writer_class()
    assert "\n" not in str(error.value)


# ---- --json and --quiet --------------------------------------------------------------------------


def test_train_json_summary_and_quiet(cli, model_dir, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(model_dir, train={"max_steps": 2, "eval_every": 0},
                                                           log={"plot": False}))
    done = cli("train", recipe, "-o", tmp_path / "json-run", "--json")
    assert done.exit_code == 0, done.stderr
    summary = only_json(done.stdout)
    assert summary["steps"] == 2 and summary["run_dir"] == str(tmp_path / "json-run")
    for key in ("final_train_loss", "final_valid_loss", "initial_valid_loss", "trainable_params", "seconds"):
        assert isinstance(summary[key], int | float), key
    assert re.search(r"^step 2/2  epoch", done.stderr, re.M)  # the human log moved to stderr

    done = cli("train", recipe, "-o", tmp_path / "quiet-run", "--quiet")
    assert done.exit_code == 0, done.stderr
    assert done.stdout == ""
    assert (tmp_path / "quiet-run" / "adapter" / "adapter_config.json").is_file()


def test_eval_merge_inspect_json(cli, trained, tmp_path):
    run = trained["run"]
    done = cli("eval", run, "--limit", 2, "--json")
    assert done.exit_code == 0, done.stderr
    result = only_json(done.stdout)
    assert result["num_examples"] == 2 and "bleu" in result["metrics"] and "predictions" not in result

    done = cli("merge", run, "-o", tmp_path / "merged", "--json")
    assert done.exit_code == 0, done.stderr
    assert only_json(done.stdout)["layers"] == 4
    done = cli("merge", run, "-o", tmp_path / "merged2", "--quiet")
    assert done.exit_code == 0 and done.stdout == ""

    done = cli("inspect", trained["root"] / "tiny.yaml", "--json")
    assert done.exit_code == 0, done.stderr
    counts = only_json(done.stdout)
    assert counts["trainable_params"] > 0 and set(counts["matched"]) == {"default"}  # the recipe names no targets
    assert {name.rsplit(".", 1)[-1] for name in counts["matched"]["default"]} == {"q_proj", "v_proj"}


def test_models_and_recipes_json(cli):
    done = cli("models", "--json")
    assert done.exit_code == 0
    assert {row["alias"] for row in only_json(done.stdout)["models"]} >= {"smollm2-135m", "minilm-l6"}
    done = cli("recipes", "--json")
    assert done.exit_code == 0
    names = [row["name"] for row in only_json(done.stdout)["recipes"]]
    assert names == [p.stem for p in recipe_paths()] and "quickstart" in names


def test_recipes_list_and_show(cli):
    done = cli("recipes")
    assert done.exit_code == 0
    for path in recipe_paths():
        line = next(line for line in done.stdout.splitlines() if line.startswith(path.stem + " "))
        assert len(line.split(None, 1)) == 2  # a name and its one-line description
    done = cli("recipes", "show", "quickstart")
    assert done.exit_code == 0
    assert done.stdout == (recipe_paths()[0].parent / "quickstart.yaml").read_text()
    assert yaml.safe_load(done.stdout)["task"] == "quickstart"
    done = cli("recipes", "show", "quickstrat")
    assert done.exit_code == 2 and "did you mean 'quickstart'" in done.stderr


# ---- lorafit report -------------------------------------------------------------------------------


def test_report_compares_runs(cli, trained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained["run"], other)
    recipe = load_recipe(other / "recipe.yaml")
    (other / "recipe.yaml").write_text((trained["run"] / "recipe.yaml").read_text().replace(
        f"name: {recipe.name}", "name: tiny-copy"))
    png = tmp_path / "compare.png"
    done = cli("report", trained["run"], other, "-o", png)
    assert done.exit_code == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if "tiny-copy" in line)
    assert header.split() == ["tiny", "tiny-copy"]
    for key in ("model", "rank", "lr", "steps", "trainable_params", "final_train_loss", "final_valid_loss",
                "eval_bleu", "tokens_per_s", "seconds"):
        row = next(line for line in lines if line.startswith(key + " "))
        assert len(row.split()) == 3, row  # the key and one value per run
    assert_png(png)

    done = cli("report", trained["run"], "-o", png, "--json")
    data = only_json(done.stdout)
    assert data["runs"][0]["settings"]["rank"] == 8 and data["runs"][0]["final"]["final_valid_loss"] > 0


def test_report_bad_run_dir(cli, tmp_path):
    for path in (tmp_path / "missing", tmp_path):
        done = cli("report", path, "-o", tmp_path / "x.png")
        assert done.exit_code == 2
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")


# ---- the progress bar on a terminal --------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal(monkeypatch):
    """The interactive path renders a bar with the training status, log lines above it, and a nested
    generation bar (periodic evaluation) without crashing."""
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("TERM", "xterm")
    reporter = Reporter()
    assert reporter.interactive
    record = {"step": 2, "epoch": 0.5, "loss": 1.2345, "lr": 2e-4, "grad_norm": 0.5, "tokens_per_s": 1234.0,
              "elapsed_s": 1.0}
    with reporter.progress("train", 4, plain_ticks=False) as bar:
        bar.advance(2, status=format_train_status(record))
        bar.log("step 2/4  a line above the bar")
        with reporter.progress("generate", 3) as inner:
            inner.advance(3)
        bar.advance(2)
    shown = terminal.getvalue()
    assert "epoch 0.50  loss 1.2345  lr 2.0e-04  1234 tok/s" in shown
    assert "4/4" in shown and "3/3" in shown and "a line above the bar" in shown
    assert Reporter(quiet=True).interactive is False


def test_plain_progress_lines_without_a_terminal(capsys):
    reporter = Reporter(plain_every_s=0)
    with reporter.progress("generate", 2) as bar:
        bar.advance(1)
        bar.advance(1)
    out = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in out] == ["generate: 1/2", "generate: 2/2"]


# ---- help and version -------------------------------------------------------------------------------

COMMANDS = [[], ["train"], ["sweep"], ["inspect"], ["merge"], ["eval"], ["models"], ["report"], ["recipes"], ["recipes", "show"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "lorafit")
def test_help_has_examples_line_by_line(cli, command):
    done = cli(*command, "--help")
    assert done.exit_code == 0
    lines = done.stdout.splitlines()
    start = lines.index("  Examples:")
    examples = [line.strip() for line in lines[start + 1:] if line.startswith("    lorafit")]
    assert examples, done.stdout
    assert all(line.startswith("    lorafit") for line in lines[start + 1: start + 1 + len(examples)])


def test_train_help_examples_are_intact(cli):
    shown = cli("train", "--help").stdout
    for example in (
        "lorafit train recipes/quickstart.yaml\n",
        "lorafit train recipes/sst2-minilm.yaml --set train.lr=5e-4 --set lora.rank=4 -o runs/sst2-r4\n",
        "lorafit train recipes/e2e-smollm2.yaml --resume\n",
    ):
        assert "    " + example in shown


def test_version(cli):
    from lorafit import __version__

    done = cli("--version")
    assert done.exit_code == 0 and done.stdout == f"lorafit {__version__}\n"


# ---- every shipped recipe -------------------------------------------------------------------------


def alias_installed(alias: str) -> bool:
    from lorafit.models.aliases import list_aliases

    return any(row["alias"] == alias and row["installed"] for row in list_aliases())


@pytest.mark.parametrize("path", recipe_paths(), ids=lambda p: p.stem)
def test_shipped_recipe_loads_and_inspects(cli, path):
    recipe = load_recipe(path)
    assert recipe.name
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ") and len(first) > 10, "the first line is the recipe's one-line description"
    if not alias_installed(recipe.model):
        pytest.skip(f"model alias {recipe.model} is not installed")
    done = cli("inspect", path, "--json")
    assert done.exit_code == 0, done.stderr
    counts = only_json(done.stdout)
    assert counts["trainable_params"] > 0 and all(counts["matched"].values())
