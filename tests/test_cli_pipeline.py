"""End to end through the CLI on tiny models: train -> merge -> plain transformers load; inspect; eval."""

import json
import subprocess
import sys

import pytest
import torch
from cli_runs import REPO_ROOT, TINY_RECIPE, run_cli, subprocess_env, write_recipe
from tiny import save_tiny_model, token_batch

from lorafit.fast.precision import resolve_precision
from lorafit.models.loader import load_adapter

TRAIN = ["--set", "train.max_steps=6", "--set", "train.save_every=0"]


def merged_logits_without_lorafit(merged_dir, auto_class: str, ids: torch.Tensor) -> torch.Tensor:
    """Load the merged directory in a fresh interpreter where importing lorafit is impossible."""
    code = (
        "import sys, torch; sys.modules['lorafit'] = None\n"
        f"from transformers import {auto_class}\n"
        f"m = {auto_class}.from_pretrained(sys.argv[1]).eval()\n"
        "ids = torch.tensor(eval(sys.argv[2]))\n"
        "with torch.no_grad(): print(m(input_ids=ids).logits.tolist())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(merged_dir), repr(ids.tolist())],
        capture_output=True, text=True, env=subprocess_env(), check=True, cwd=REPO_ROOT.parent,
    )
    return torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_train_merge_and_load_merged_with_transformers_alone(tmp_path, kind):
    model_dir = save_tiny_model(tmp_path / "base", kind)
    targets = "[q_proj, v_proj]" if kind == "llama" else "[c_attn]"
    recipe = write_recipe(tmp_path / "r.yaml", model_dir, TINY_RECIPE.replace("[q_proj, v_proj]", targets))
    run = tmp_path / "run"
    result = run_cli(["train", recipe, "-o", run, *TRAIN])
    assert result.exit_code == 0, result.output
    for name in ("recipe.yaml", "metrics.jsonl", "summary.json", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [5, 6]
    assert records[0]["step"] == 0 and "valid_loss" in records[0]
    # The recipe's default precision "auto" is recorded as what actually ran on this machine.
    summary = json.loads((run / "summary.json").read_text())
    assert summary["precision"] == resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    assert f"precision {summary['precision']}" in result.output

    merged = tmp_path / "merged"
    result = run_cli(["merge", run, "-o", merged])
    assert result.exit_code == 0, result.output
    assert (merged / "model.safetensors").is_file() and (merged / "config.json").is_file()

    ids = token_batch(length=12)
    adapted = load_adapter(run / "adapter")
    with torch.no_grad():
        expected = adapted.model(input_ids=ids).logits
    got = merged_logits_without_lorafit(merged, "AutoModelForCausalLM", ids)
    assert (got - expected).abs().max().item() <= 1e-4


def test_classifier_run_merges_into_sequence_classification_model(tmp_path):
    model_dir = save_tiny_model(tmp_path / "base", "bert", num_labels=2)
    rows = [{"text": f"sample {i} {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"} for i in range(24)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "cls.yaml"
    recipe.write_text(
        f"model: {model_dir}\ntask: text\n"
        f"data: {{train_file: {tmp_path / 'train.jsonl'}, valid_file: {tmp_path / 'train.jsonl'}, "
        "text_field: text, label_field: label, num_labels: 2}\n"
        "lora: {rank: 2, alpha: 4, targets: [query, value]}\n"
        "train: {max_steps: 5, batch_size: 4, lr: 0.01}\neval: {at_end: true}\nlog: {plot: false}\n"
    )
    run = tmp_path / "run"
    result = run_cli(["train", recipe, "-o", run])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["classifier"]
    evaluation = json.loads((run / "eval.json").read_text())
    assert set(evaluation["metrics"]) >= {"accuracy"} and evaluation["num_examples"] == 24

    merged = tmp_path / "merged"
    assert run_cli(["merge", run, "-o", merged]).exit_code == 0
    ids = token_batch(length=10)
    adapted = load_adapter(run / "adapter")
    with torch.no_grad():
        expected = adapted.model(input_ids=ids).logits
    got = merged_logits_without_lorafit(merged, "AutoModelForSequenceClassification", ids)
    assert got.shape == (2, 2) and (got - expected).abs().max().item() <= 1e-4


def test_inspect_lists_matches_and_counts_and_fails_on_no_match(tmp_path):
    model_dir = save_tiny_model(tmp_path / "base", "llama")
    recipe = write_recipe(tmp_path / "r.yaml", model_dir)
    result = run_cli(["inspect", recipe])
    assert result.exit_code == 0, result.output
    assert "target 'q_proj' matches 2 module(s):" in result.stdout
    assert "model.layers.1.self_attn.v_proj" in result.stdout
    # 2 layers x 2 matrices x 2 * rank(4) * hidden(32)
    assert "trainable parameters: 1,024 of " in result.stdout

    result = run_cli(["inspect", recipe, "--set", "lora.targets=[q_proj, query]"])
    assert result.exit_code == 2
    assert "target 'query' matches no linear layer" in result.stderr
    assert "Traceback" not in result.output


def test_eval_of_a_fresh_run_writes_full_metrics_json(tmp_path):
    model_dir = save_tiny_model(tmp_path / "base", "llama")
    recipe = write_recipe(tmp_path / "r.yaml", model_dir)
    run = tmp_path / "run"
    assert run_cli(["train", recipe, "-o", run, *TRAIN]).exit_code == 0
    out = tmp_path / "eval.json"
    result = run_cli(["eval", run, "--limit", "5", "--max-new-tokens", "8", "-o", out])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["task"] == "quickstart" and data["split"] == "dev" and data["num_examples"] == 5
    assert set(data["metrics"]) == {"bleu", "exact_match"}
    assert data["settings"]["max_new_tokens"] == 8 and data["kind"] == "run"
    assert len(data["predictions"]) == 5


def test_eval_of_a_tiny_e2e_run_has_all_five_metrics(tmp_path, data_dir):
    model_dir = save_tiny_model(tmp_path / "base", "llama")
    recipe = write_recipe(tmp_path / "r.yaml", model_dir, TINY_RECIPE.replace("task: quickstart", "task: e2e"))
    run = tmp_path / "run"
    assert run_cli(["train", recipe, "-o", run, "--set", f"data_dir={data_dir}", *TRAIN]).exit_code == 0
    out = tmp_path / "eval.json"
    result = run_cli(["eval", run, "--limit", "6", "--max-new-tokens", "6", "--beam-size", "2", "-o", out])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["task"] == "e2e" and data["num_examples"] == 6 and data["settings"]["beam_size"] == 2
    assert set(data["metrics"]) >= {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}
    assert all(isinstance(data["metrics"][k], float) for k in ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"))


def test_eval_scores_a_predictions_file_without_a_model(tmp_path, data_dir):
    from lorafit.tasks import get_task

    task = get_task("glue/rte")
    items = task.load_eval(data_dir, "dev", None)
    preds = tmp_path / "preds.txt"
    preds.write_text("".join(f"{item.label}\n" for item in items))
    out = tmp_path / "scored.json"
    result = run_cli(["eval", "--task", "glue/rte", "--predictions", preds, "--data-dir", data_dir, "-o", out])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["metrics"] == {"accuracy": 1.0}

    wikisql = get_task("wikisql").load_eval(data_dir, "dev", None)
    preds.write_text("".join(item.references[0].strip() + "\n" for item in wikisql))
    result = run_cli(["eval", "--task", "wikisql", "--predictions", preds, "--data-dir", data_dir, "-o", out])
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["lf_accuracy"] == 1.0 and metrics["exact_match"] == 1.0

    preds.write_text("1\n0\n")
    result = run_cli(["eval", "--task", "glue/rte", "--predictions", preds, "--data-dir", data_dir])
    assert result.exit_code == 2 and "has 2 lines, the split has 277 inputs" in result.stderr


def test_models_lists_aliases():
    result = run_cli(["models", "--json"])
    assert result.exit_code == 0
    aliases = {m["alias"] for m in json.loads(result.stdout)["models"]}
    assert aliases == {"smollm2-135m", "minilm-l6"}


@pytest.mark.parametrize("method", ["head", "full"])
def test_head_only_and_full_finetuning_baselines(tmp_path, method):
    from safetensors.torch import load_file

    model_dir = save_tiny_model(tmp_path / "base", "bert", num_labels=2)
    rows = [{"text": f"sample {i}", "label": i % 2} for i in range(16)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "cls.yaml"
    recipe.write_text(
        f"model: {model_dir}\ntask: text\n"
        f"data: {{train_file: {tmp_path / 'train.jsonl'}, text_field: text, label_field: label, num_labels: 2}}\n"
        f"train: {{max_steps: 3, batch_size: 4, lr: 0.01, method: {method}}}\nlog: {{plot: false}}\n"
    )
    run = tmp_path / "run"
    result = run_cli(["train", recipe, "-o", run, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    before = load_file(str(model_dir / "model.safetensors"))
    after = load_file(str(run / "adapter" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    if method == "head":
        assert changed == {"classifier.weight", "classifier.bias"}
        assert summary["trainable_params"] == 32 * 2 + 2
    else:
        assert "bert.encoder.layer.0.attention.self.query.weight" in changed
        assert summary["trainable_params"] == summary["total_params"]
    assert run_cli(["merge", run, "-o", tmp_path / "m"]).exit_code == 2  # nothing to merge


def test_chat_template_wraps_prompts_and_is_refused_without_one(tmp_path):
    from tiny import tiny_llama, tiny_tokenizer

    from lorafit.errors import ModelError
    from lorafit.eval.generate import generate
    from lorafit.recipe.schema import EvalConfig

    model, tokenizer = tiny_llama(), tiny_tokenizer()
    settings = EvalConfig(max_new_tokens=3, chat_template=True)
    with pytest.raises(ModelError, match="no chat template"):
        generate(model, tokenizer, ["hi"], settings)
    tokenizer.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    seen = []
    original = model.generate

    def spy(**kwargs):
        seen.append(tokenizer.decode(kwargs["input_ids"][0]))
        return original(**kwargs)

    model.generate = spy
    generate(model, tokenizer, ["hi "], settings)
    assert seen == ["[hi]>"]
