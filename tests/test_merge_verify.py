"""`lorafit merge` reloads what it saved and compares its logits with the unmerged adapter's before
anything is published; a mismatch writes nothing (exit 2), --no-verify skips the check."""

import json

import pytest
import torch
from cli_runs import TINY_RECIPE, assert_one_line_error, run_cli, tree_bytes, write_recipe
from safetensors.torch import load_file, save_file
from tiny import randomize_lora, save_tiny_model, tiny_bert, tiny_gpt2, tiny_llama

import lorafit.workflows.merge as merge_module
from lorafit.lora import LoraSpec, add_lora, save_adapter
from lorafit.lora.merge import lora_layers
from lorafit.workflows.merge import SIDE_FILE

# kind -> (base builder, LoRA targets, PEFT task type, saved head)
ADAPTERS = {
    "llama": (tiny_llama, ("q_proj", "v_proj"), "CAUSAL_LM", ()),
    "gpt2-conv1d": (tiny_gpt2, ("c_attn", "c_proj"), "CAUSAL_LM", ()),
    "bert-classifier": (lambda: tiny_bert(num_labels=3), ("query", "value"), "SEQ_CLS", ("classifier",)),
}


def make_adapter(root, kind):
    """A base model directory and a trained-looking adapter on it (no training: random lora_A/B)."""
    build, targets, task_type, heads = ADAPTERS[kind]
    base_kind = kind.split("-")[0]
    base = save_tiny_model(root / f"{base_kind}-base", base_kind, num_labels=3)
    model = build()
    spec = LoraSpec(rank=4, alpha=8, targets=targets, modules_to_save=heads)
    add_lora(model, spec)
    randomize_lora(model)
    return save_adapter(model, root / f"{kind}-adapter", spec, base_model_name_or_path=str(base), task_type=task_type)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {kind: make_adapter(root, kind) for kind in ADAPTERS}


def side_file(output):
    return json.loads((output / SIDE_FILE).read_text())


@pytest.mark.parametrize("kind", ADAPTERS)
def test_a_good_merge_is_verified_and_recorded(tmp_path, adapters, kind):
    out = tmp_path / "merged"
    result = run_cli(["merge", adapters[kind], "-o", out])
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "verified: reloaded merged model matches the adapter on 3 probes" in result.output
    record = side_file(out)
    assert record["verified"] is True and record["adapter"] == str(adapters[kind])
    assert record["base"].endswith("-base") and record["dtype"] == "float32" and record["lorafit_version"]
    assert record["probes"]["source"] == "fixed text" and record["probes"]["count"] == 3
    assert record["max_abs_diff"] <= 1e-5 and record["tolerance"] >= 1e-4
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_a_run_directory_is_probed_with_its_tasks_inputs(tmp_path, model_dir):
    recipe = write_recipe(tmp_path / "r.yaml", model_dir, TINY_RECIPE.replace("max_steps: 40", "max_steps: 2"))
    run = tmp_path / "run"
    assert run_cli(["train", recipe, "-o", run, "-q", "--set", "train.save_every=0"]).exit_code == 0
    result = run_cli(["merge", run, "-o", tmp_path / "merged", "--json"])
    assert result.exit_code == 0, (result.output, result.stderr)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["verification"]["verified"] is True and summary["verification"]["probes"] == 4
    record = side_file(tmp_path / "merged")
    assert record["probes"]["source"].startswith("task quickstart ") and len(record["probes"]["texts"]) == 4
    assert SIDE_FILE in summary["files"]


def noisy_merge(monkeypatch):
    """merge_lora that also adds noise to one merged weight, as a buggy merge would."""
    real = merge_module.merge_lora

    def merge_with_noise(model, **kwargs):
        layers = real(model, **kwargs)
        _, layer = lora_layers(model)[0]
        with torch.no_grad():
            layer.weight.add_(0.05 * torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(0)))
        return layers

    monkeypatch.setattr(merge_module, "merge_lora", merge_with_noise)


@pytest.mark.parametrize("kind", ["llama", "gpt2-conv1d"])
def test_a_wrong_merge_writes_nothing_and_names_the_adapter_and_the_difference(tmp_path, adapters, kind, monkeypatch):
    noisy_merge(monkeypatch)
    out = tmp_path / "merged"
    result = run_cli(["merge", adapters[kind], "-o", out])
    assert result.exit_code == 2, (result.output, result.stderr)
    line = assert_one_line_error(result.stderr, str(adapters[kind]), "logits differ from the adapter's by",
                                 "tolerance", "nothing written")
    assert float(line.split("by ")[1].split(" ")[0]) > 1e-3
    assert [p.name for p in tmp_path.iterdir()] == []  # no output, no leftover temporary directory


def test_a_wrong_merge_leaves_an_existing_output_intact(tmp_path, adapters, monkeypatch):
    out = tmp_path / "merged"
    assert run_cli(["merge", adapters["llama"], "-o", out]).exit_code == 0
    before = tree_bytes(out)
    noisy_merge(monkeypatch)
    assert run_cli(["merge", adapters["llama"], "-o", out, "--overwrite"]).exit_code == 2
    assert tree_bytes(out) == before and [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_a_weight_changed_while_saving_is_caught(tmp_path, adapters, monkeypatch):
    from transformers import PreTrainedModel

    real_save = PreTrainedModel.save_pretrained

    def save_then_perturb(self, directory, *args, **kwargs):
        real_save(self, directory, *args, **kwargs)
        path = f"{directory}/model.safetensors"
        tensors = load_file(path)
        name = next(k for k in sorted(tensors) if "classifier" not in k and tensors[k].ndim == 2)
        tensors[name] = tensors[name] * 1.5
        save_file(tensors, path, metadata={"format": "pt"})

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_perturb)
    adapter = adapters["bert-classifier"]
    result = run_cli(["merge", adapter, "-o", tmp_path / "merged"])
    assert result.exit_code == 2, (result.output, result.stderr)
    assert_one_line_error(result.stderr, str(adapter), "differ")
    assert not (tmp_path / "merged").exists()


def test_no_verify_skips_the_check_and_says_so(tmp_path, adapters, monkeypatch):
    noisy_merge(monkeypatch)  # not caught: nothing compares
    out = tmp_path / "merged"
    result = run_cli(["merge", adapters["llama"], "-o", out, "--no-verify"])
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "not verified (--no-verify)" in result.output
    record = side_file(out)
    assert record["verified"] is False and record["max_abs_diff"] is None and record["probes"] is None


def test_tolerance_follows_the_dtype_and_the_largest_logit():
    small, large = [torch.tensor([0.2, -0.5])], [torch.tensor([30.0, -50.0])]
    assert merge_module.tolerance(small, torch.float32) == pytest.approx(1e-4)
    assert merge_module.tolerance(large, torch.float32) == pytest.approx(5e-3)
    assert merge_module.tolerance(small, torch.float32) < merge_module.tolerance(small, torch.float16) \
        < merge_module.tolerance(small, torch.bfloat16)
