"""`lorafit data RECIPE` and bad data on the command line: one line, exit 2, never a traceback."""

import json
from pathlib import Path

import pytest
from datahelp import jsonl
from typer.testing import CliRunner

from lorafit.cli import app


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def write_recipe(tmp_path, model_dir, data: str):
    path = tmp_path / "r.yaml"
    path.write_text(f"# test\nmodel: {model_dir}\ntask: text\ndata:\n{data}", encoding="utf-8")
    return path


def test_data_command_reports_rows_lengths_and_the_loss_mask(cli, tmp_path, model_dir):
    jsonl(tmp_path / "qa.jsonl", [{"q": f"Question {i}?", "a": f" Answer {i}."} for i in range(30)]
          + [{"q": "x" * 300, "a": " long"}, {"q": "y", "a": " z" * 200}])
    recipe = write_recipe(tmp_path, model_dir, f"  source: {tmp_path / 'qa.jsonl'}\n  prompt_field: q\n"
                          "  completion_field: a\n  valid_fraction: 0.2\n  max_length: 64\n")
    done = cli("data", recipe)
    assert done.exit_code == 0, done.output
    out = done.output
    assert "train  " in out and "valid  " in out and "truncated" in out and "dropped" in out
    assert "train token lengths: min" in out and "█" in out
    assert "trained on: '" in out and "first training example" in out
    assert "(written)" in out
    again = cli("data", recipe, "--json", "--no-plot")
    summary = json.loads(again.stdout)
    assert summary["cache_hit"] == {"train": True}
    # the histogram goes beside the data cache (never into the working directory), and the path is printed
    png = Path(summary["caches"]["train"]) / "lengths-r.png"
    assert f"histogram:{png}" in "".join(out.split()) and png.stat().st_size > 1000  # however the terminal wraps it
    assert not list(tmp_path.glob("*.png"))
    asked = cli("data", recipe, "--json", "--plot", tmp_path / "out" / "h.png")
    assert json.loads(asked.stdout)["plot"] == str(tmp_path / "out" / "h.png")
    assert (tmp_path / "out" / "h.png").stat().st_size > 1000
    assert summary["train_examples"] + summary["valid_examples"] + summary["train_skipped"] + summary["valid_skipped"] == 32
    assert summary["train_skipped"] + summary["valid_skipped"] == 1 and summary["train_truncated"] + summary["valid_truncated"] == 1
    fresh = cli("data", recipe, "--no-cache")
    assert "histogram: not written (no data cache is kept to put it beside; use --plot FILE.png)" in fresh.output
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("rows, data, message", [
    ([{"q": "a", "a": None}], "  prompt_field: q\n  completion_field: a\n", "d.jsonl line 1: field 'a' is null"),
    ([{"q": "a", "a": " b"}, {"q": {"x": 1}, "a": " c"}], "  prompt_field: q\n  completion_field: a\n",
     "d.jsonl line 2: field 'q' should be text, got an object"),
    ([{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}], "",
     "the model's tokenizer has no chat template"),
])
def test_bad_data_is_one_line_exit_2(cli, tmp_path, model_dir, rows, data, message):
    jsonl(tmp_path / "d.jsonl", rows)
    recipe = write_recipe(tmp_path, model_dir, f"  source: {tmp_path / 'd.jsonl'}\n{data}")
    for command in (("data", recipe, "--no-plot"), ("train", recipe, "-o", tmp_path / "run")):
        done = cli(*command)
        assert done.exit_code == 2, done.output
        lines = done.output.strip().splitlines()
        assert lines[-1].startswith("error: ") and message in lines[-1], done.output
        assert "Traceback" not in done.output


def test_train_on_a_source_with_a_carved_split_then_eval(cli, tmp_path, model_dir):
    jsonl(tmp_path / "qa.jsonl", [{"q": f"Q{i}:", "a": f" A{i}"} for i in range(40)])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"# test\nmodel: {model_dir}\ntask: text\ndata:\n  source: {tmp_path / 'qa.jsonl'}\n"
                      "  prompt_field: q\n  completion_field: a\n  valid_fraction: 0.1\n"
                      "train: {max_steps: 2, batch_size: 4}\neval: {at_end: true, limit: 3, max_new_tokens: 4}\n"
                      "log: {plot: false}\n", encoding="utf-8")
    done = cli("train", recipe, "-o", tmp_path / "run", "--json", "--no-cache")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["train_examples"], summary["valid_examples"], summary["steps"]) == (36, 4, 2)
    assert "not kept (--no-cache)" in summary["data_cache"] and not (tmp_path / "cache" / "data").exists()
    assert summary["metrics"]["exact_match"] is not None
