"""train.early_stopping_patience and train.keep_best (train/best.py) pick the steps a hand computation
picks: `fit` on a tiny Llama with a scripted task metric, and `lorafit train` end to end on the
validation loss, its summary.json and adapter checked against metrics.jsonl and a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from cli_runs import TINY_RECIPE, assert_one_line_error, run_cli, write_recipe
from tiny import tiny_llama, tiny_tokenizer, with_trained_looking_lora

from lorafit.data.batches import encode_generation
from lorafit.recipe.schema import TrainConfig
from lorafit.tasks.types import GenerationExample
from lorafit.train.best import BestTracker
from lorafit.train.loop import fit
from lorafit.train.loss import causal_lm_loss

EXAMPLES = [GenerationExample(prompt=f"item {i}:", completion=f" answer {i % 7}") for i in range(20)]
# Constant lr, no warm-up: the first k steps of a 20-step run are the very steps of a k-step run.
BASE = dict(batch_size=4, lr=1e-2, schedule="constant", log_every=100)


def scripted(values: list[float], name: str = "eval_accuracy"):
    """on_task_eval returning values[0], values[1], ... at its successive calls."""
    calls = iter(values)
    return lambda state: {name: next(calls)}


def trainable(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])


def run_fit(config: TrainConfig, on_task_eval=None, every: int = 0, on_step=lambda s, snap: None, resume=None):
    model = with_trained_looking_lora(tiny_llama())
    encoded = encode_generation(EXAMPLES, tiny_tokenizer(), 64)[0]
    result = fit(model, encoded, [], config, seed=3, precision="fp32", loss_fn=causal_lm_loss, pad_id=0,
                 on_task_eval=on_task_eval, task_eval_every=every, on_step=on_step, resume=resume)
    return model, result


def test_patience_and_keep_best_on_a_scripted_accuracy():
    # Evaluations every 2 steps: 0.5 @2, 0.7 @4 (best), 0.6 @6 (1 without improvement), 0.7 @8 (a tie is
    # no improvement: 2 = patience) -> stop after step 8, with step 4's weights put back.
    config = TrainConfig(**BASE, max_steps=20, best_metric="accuracy", early_stopping_patience=2, keep_best=True)
    model, result = run_fit(config, scripted([0.5, 0.7, 0.6, 0.7, 0.9, 0.9]), every=2)
    assert result.state.step == 8 and result.stopped == "early stopping"
    assert result.best == {"metric": "accuracy", "direction": "maximize", "value": 0.7, "step": 4, "kept": True}
    four_steps, _ = run_fit(TrainConfig(**BASE, max_steps=4))
    torch.testing.assert_close(trainable(model), trainable(four_steps), atol=0, rtol=0)


def test_a_loss_is_minimised_and_without_keep_best_the_last_weights_stay():
    # 3.0 @2, 2.5 @4, 2.6 @6 (1), 2.4 @8 (best, reset), 2.45 @10 (1), 2.5 @12 (2), 2.7 @14 (3 = patience).
    config = TrainConfig(**BASE, max_steps=20, best_metric="loss", early_stopping_patience=3)
    model, result = run_fit(config, scripted([3.0, 2.5, 2.6, 2.4, 2.45, 2.5, 2.7, 1.0], "eval_loss"), every=2)
    assert result.state.step == 14 and result.stopped == "early stopping"
    assert result.best["step"] == 8 and result.best["value"] == 2.4 and result.best["direction"] == "minimize"
    fourteen, _ = run_fit(TrainConfig(**BASE, max_steps=14))
    torch.testing.assert_close(trainable(model), trainable(fourteen), atol=0, rtol=0)


def test_a_resumed_run_keeps_the_best_weights_and_patience_of_its_checkpoint():
    config = TrainConfig(**BASE, max_steps=20, best_metric="accuracy", early_stopping_patience=2, keep_best=True)
    values = [0.5, 0.7, 0.6, 0.7]
    snapshots = {}
    whole, _ = run_fit(config, scripted(values), every=2, on_step=lambda s, snap: snapshots.setdefault(s.step, snap()))
    # From step 6's checkpoint (best 0.7 @4 and one evaluation without improvement held in it), the
    # resumed run sees only 0.7 @8 and must still stop there with step 4's weights.
    resumed, result = run_fit(config, scripted(values[3:]), every=2, resume=snapshots[6])
    assert result.state.step == 8 and result.best["step"] == 4
    torch.testing.assert_close(trainable(resumed), trainable(whole), atol=0, rtol=0)


def test_a_task_evaluation_without_the_watched_metric_is_an_error():
    from lorafit.errors import RecipeError

    tracker = BestTracker("bleu", keep=True)
    with pytest.raises(RecipeError, match=r"train.best_metric: the task evaluation has no metric 'bleu' \(it gives: accuracy\)"):
        tracker.observe({"step": 2, "eval_accuracy": 0.5}, dict)
    assert tracker.observe({"step": 2, "valid_loss": 1.0}, dict) is False  # a validation record: not its metric


def test_lorafit_train_keeps_the_step_with_the_lowest_validation_loss(tmp_path, model_dir):
    # lr 3 makes the validation loss climb again after step 10; the hand computation is the argmin over
    # metrics.jsonl, and the adapter must hold that step's checkpointed weights.
    text = (TINY_RECIPE.replace("lr: 1.0e-2", "lr: 3.0").replace("warmup_steps: 4", "warmup_steps: 0")
            .replace("max_steps: 40", "max_steps: 20").replace("keep_checkpoints: 2", "keep_checkpoints: 10")
            .replace("  log_every: 5\n", "  log_every: 5\n  eval_every: 5\n  keep_best: true\n"))
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir, text)
    result = run_cli(["train", recipe, "-o", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    valid = {r["step"]: r["valid_loss"] for r in records if "valid_loss" in r and r["step"] > 0}
    best_step = min(valid, key=valid.get)
    assert best_step < max(valid), valid  # the test needs a best before the end
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best"] == {"metric": "valid_loss", "direction": "minimize", "value": valid[best_step],
                               "step": best_step, "kept": True}
    assert f"keeping the best evaluation: step {best_step}, valid_loss" in result.output
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    state = torch.load(tmp_path / "run" / "checkpoints" / f"step-{best_step:06d}" / "state.pt", weights_only=False)
    for key, value in adapter.items():  # PEFT key base_model.model.<path>.lora_A.weight, parameter <path>.lora_A.weight
        name = key.removeprefix("base_model.model.")
        torch.testing.assert_close(value, state["trainable"][name], atol=0, rtol=0)


@pytest.mark.parametrize(("sets", "message"), [
    (["train.early_stopping_patience=2"], "train.early_stopping_patience: needs train.eval_every > 0"),
    (["train.keep_best=true", "train.best_metric=bleu"],
     "train.best_metric: 'bleu' is a task metric, evaluated during training only with eval.every > 0"),
])
def test_watching_a_metric_that_is_never_evaluated_is_refused(tmp_path, model_dir, sets, message):
    recipe = write_recipe(tmp_path / "tiny.yaml", model_dir)
    result = run_cli(["train", recipe, "-o", tmp_path / "run", *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, message)
