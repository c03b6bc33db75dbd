"""Adapters cross between lorafit and PEFT in both directions with the same logits."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors import safe_open
from tiny import randomize_lora, tiny_bert, tiny_gpt2, tiny_llama, token_batch

from lorafit.errors import AdapterError
from lorafit.lora import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LoraSpec,
    add_lora,
    load_adapter_tensors,
    read_adapter_config,
    read_adapter_tensors,
    save_adapter,
    spec_from_config,
)

CASES = {
    "llama": (tiny_llama, LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj")), "CAUSAL_LM"),
    "llama-all-linear": (tiny_llama, LoraSpec(rank=2, alpha=4, targets=("all-linear",), rslora=True), "CAUSAL_LM"),
    "gpt2": (tiny_gpt2, LoraSpec(rank=4, alpha=16, targets=("c_attn", "c_proj")), "CAUSAL_LM"),
    "bert-head": (
        tiny_bert,
        LoraSpec(rank=4, alpha=8, targets=("query", "value"), modules_to_save=("classifier",), bias="lora_only"),
        "SEQ_CLS",
    ),
    "llama-regex": (tiny_llama, LoraSpec(rank=2, alpha=4, targets_regex=r".*layers\.0\.mlp\.(up|down)_proj"), "CAUSAL_LM"),
}


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def trained_lorafit_model(build, spec):
    model = build()
    add_lora(model, spec)
    randomize_lora(model)
    with torch.no_grad():  # a trained head and trained biases differ from the fresh base's
        for name, param in model.named_parameters():
            if param.requires_grad and ".lora_" not in name:
                param.add_(0.05)
    return model


@pytest.mark.parametrize("case", CASES)
def test_lorafit_adapter_loads_in_peft_with_same_logits(case, tmp_path):
    build, spec, task_type = CASES[case]
    model = trained_lorafit_model(build, spec)
    save_adapter(model, tmp_path / "adapter", spec, base_model_name_or_path="tiny", task_type=task_type)

    peft_model = PeftModel.from_pretrained(build(), str(tmp_path / "adapter")).eval()
    ids = token_batch()
    diff = (logits(peft_model, ids) - logits(model, ids)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_lorafit_reload_of_its_own_adapter(case, tmp_path):
    build, spec, task_type = CASES[case]
    model = trained_lorafit_model(build, spec)
    save_adapter(model, tmp_path / "a", spec, base_model_name_or_path="tiny", task_type=task_type)
    config = read_adapter_config(tmp_path / "a")
    reloaded = build()
    loaded_spec = spec_from_config(config)
    add_lora(reloaded, loaded_spec)
    tensors, _ = read_adapter_tensors(tmp_path / "a")
    load_adapter_tensors(reloaded, loaded_spec, tensors, "a")
    ids = token_batch()
    assert torch.equal(logits(reloaded, ids), logits(model, ids))


def test_saved_files_use_peft_key_names_and_config_fields(tmp_path):
    build, spec, task_type = CASES["bert-head"]
    model = trained_lorafit_model(build, spec)
    save_adapter(
        model, tmp_path / "a", spec, base_model_name_or_path="some/base", task_type=task_type,
        metadata={"lorafit_version": "x"},
    )
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == ["query", "value"] and config["modules_to_save"] == ["classifier"]
    assert config["base_model_name_or_path"] == "some/base" and config["task_type"] == "SEQ_CLS"
    with safe_open(str(tmp_path / "a" / WEIGHTS_NAME), "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["lorafit_version"] == "x"
    layer = "base_model.model.bert.encoder.layer.0.attention.self.query"
    assert {f"{layer}.lora_A.weight", f"{layer}.lora_B.weight", f"{layer}.base_layer.bias"} <= keys
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= keys
    assert not any(".default." in k for k in keys)


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_saved_classifier_adapter_loads_in_lorafit(tmp_path, rslora):
    base = tiny_bert()
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"], use_rslora=rslora,
        init_lora_weights="gaussian",
    )
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.1)
    peft_model.eval()
    peft_model.save_pretrained(str(tmp_path / "peft"))

    adapter_config = read_adapter_config(tmp_path / "peft")
    spec = spec_from_config(adapter_config)
    assert spec.rslora == rslora and spec.init == "gaussian"
    model = tiny_bert()
    add_lora(model, spec)
    tensors, _ = read_adapter_tensors(tmp_path / "peft")
    load_adapter_tensors(model, spec, tensors, "peft")
    ids = token_batch()
    assert (logits(model, ids) - logits(peft_model, ids)).abs().max().item() <= 1e-5


def test_peft_saved_gpt2_adapter_loads_in_lorafit(tmp_path):
    peft_model = get_peft_model(
        tiny_gpt2(), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 0.1)
    peft_model.eval().save_pretrained(str(tmp_path / "peft"))
    spec = spec_from_config(read_adapter_config(tmp_path / "peft"))
    model = tiny_gpt2()
    add_lora(model, spec)
    load_adapter_tensors(model, spec, read_adapter_tensors(tmp_path / "peft")[0], "peft")
    ids = token_batch()
    assert (logits(model, ids) - logits(peft_model, ids)).abs().max().item() <= 1e-5


def test_adapter_for_another_base_is_refused(tmp_path):
    build, spec, task_type = CASES["llama"]
    save_adapter(trained_lorafit_model(build, spec), tmp_path / "a", spec, base_model_name_or_path="t", task_type=None)
    other = tiny_gpt2()
    with pytest.raises(Exception) as err:  # targets do not exist in GPT-2 at all
        add_lora(other, spec)
    assert "q_proj" in str(err.value)

    bigger = tiny_llama()
    add_lora(bigger, LoraSpec(rank=8, alpha=8, targets=("q_proj", "v_proj")))
    with pytest.raises(AdapterError, match="shape"):
        load_adapter_tensors(bigger, LoraSpec(rank=8, alpha=8), read_adapter_tensors(tmp_path / "a")[0], "a")


def test_unsupported_peft_feature_is_refused():
    with pytest.raises(AdapterError, match="layer_replication"):
        spec_from_config({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q"], "layer_replication": [[0, 1]]})
    with pytest.raises(AdapterError, match="init_lora_weights='corda' is a PEFT init lorafit does not support"):
        spec_from_config({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q"], "init_lora_weights": "corda"})


def test_corrupted_or_missing_adapter_files_are_refused(tmp_path):
    build, spec, _ = CASES["llama"]
    save_adapter(trained_lorafit_model(build, spec), tmp_path / "a", spec, base_model_name_or_path="t", task_type=None)
    weights = tmp_path / "a" / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(AdapterError, match="corrupted or truncated"):
        read_adapter_tensors(tmp_path / "a")
    (tmp_path / "a" / CONFIG_NAME).unlink()
    with pytest.raises(AdapterError, match="adapter_config.json: missing"):
        read_adapter_config(tmp_path / "a")


def test_failed_save_leaves_previous_adapter_intact(tmp_path, monkeypatch):
    build, spec, _ = CASES["llama"]
    model = trained_lorafit_model(build, spec)
    save_adapter(model, tmp_path / "a", spec, base_model_name_or_path="t", task_type=None)
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}

    import lorafit.lora.adapter as adapter_module

    def failing_save(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(adapter_module, "save_file", failing_save)
    randomize_lora(model, seed=9)
    with pytest.raises(OSError):
        save_adapter(model, tmp_path / "a", spec, base_model_name_or_path="t", task_type=None)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # no temporary directory left behind
