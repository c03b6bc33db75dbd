"""The memory estimate `lorafit inspect` prints (train/estimate.py): its activation term against the
tensors autograd really keeps, its weight term against the model's own parameter count, and the CLI."""

import pytest
import torch
from cli_runs import run_cli, write_recipe

from lorafit.lora import LoraSpec, add_lora
from lorafit.train.checkpointing import enable_gradient_checkpointing
from lorafit.train.estimate import DecoderShape, adapted, describe, estimate_memory
from lorafit.train.loss import causal_lm_loss

CONFIG = dict(model_type="llama", hidden_size=192, intermediate_size=512, num_hidden_layers=3, num_attention_heads=6,
              num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True, pad_token_id=0, dtype="float32")


def saved_bytes(targets, dropout, checkpointing, tokens=(2, 128)):
    """Bytes of the distinct non-parameter tensors autograd saves for one forward of a LoRA model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    add_lora(model, LoraSpec(rank=4, alpha=8, dropout=dropout, targets=targets))
    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(3, 256, tokens)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        causal_lm_loss(model, batch)
    return sum(seen.values())


@pytest.mark.parametrize("targets, dropout", [(("q_proj", "v_proj"), 0.1), (("all-linear",), 0.0)])
def test_activation_estimate_is_within_20_percent_of_the_saved_tensors(targets, dropout):
    shape = DecoderShape.from_config(CONFIG)
    estimate = estimate_memory(shape, quantize="none", bf16=False, targets=adapted(targets, None), rank=4,
                               dropout=dropout, tokens=256, checkpointing=False)
    measured = saved_bytes(targets, dropout, checkpointing=False)
    assert 0.8 < estimate.activations / measured < 1.2
    # With checkpointing each layer's input stays (plus the head's few tensors); the recompute in the
    # backward adds one layer's activations, which the checkpointed estimate counts on top.
    kept = saved_bytes(targets, dropout, checkpointing=True)
    inputs = shape.layers * 256 * shape.hidden * 4
    assert inputs <= kept < inputs + estimate.activations / shape.layers
    assert estimate.activations_checkpointed == inputs + estimate.activations // shape.layers


def test_parameter_count_and_lora_size_match_the_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = DecoderShape.from_config(CONFIG)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    assert shape.parameters() == sum(p.numel() for p in model.parameters())
    report = add_lora(model, LoraSpec(rank=4, targets=("q_proj", "v_proj")))
    estimate = estimate_memory(shape, quantize="nf4", bf16=True, targets=["q_proj", "v_proj"], rank=4, dropout=0.0,
                               tokens=64, checkpointing=True)
    assert estimate.trainable_params == report.trainable_params and estimate.trainable == 16 * report.trainable_params
    assert adapted(("all-linear",), None) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert adapted((), r".*\.(up|down)_proj") == ["up_proj", "down_proj"]
    assert DecoderShape.from_config({**CONFIG, "model_type": "bert"}) is None


def test_llama_7b_prediction():
    """Llama-2-7B's published config, nf4 + checkpointing, batch 4 x 256: the weights term by hand."""
    config = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False,
                  dtype="float16")
    shape = DecoderShape.from_config(config)
    assert shape.parameters() == 6_738_415_616  # the published count
    estimate = estimate_memory(shape, quantize="nf4", bf16=False, targets=["q_proj", "v_proj"], rank=8, dropout=0.05,
                               tokens=1024, checkpointing=True)
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert estimate.weights == int(linear * 0.5625 + (shape.parameters() - linear) * 4)
    assert estimate.loading == shape.parameters() * 2 + estimate.runtime  # read in its own fp16
    assert "expected peak" in describe(estimate)[-1]


def test_inspect_prints_the_estimate_before_loading(tmp_path):
    from cli_runs import TINY_RECIPE
    from tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model")
    recipe = write_recipe(tmp_path / "r.yaml", model_dir, TINY_RECIPE.replace("seed: 3", "seed: 3\nquantize: nf4"))
    result = run_cli(["inspect", recipe, "--json"])
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads(result.stdout.strip().splitlines()[-1])
    memory = summary["memory_bytes"]
    assert memory["peak"] == max(memory["loading"], memory["weights"] + memory["trainable"] + memory["activations"]
                                 + memory["runtime"])
