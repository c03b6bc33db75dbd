"""A quantized frozen base (recipe `quantize: nf4 | int8`): the quantized forward against fp32 and against
the dequantized weights, LoRA on it against PEFT + bitsandbytes on the very same nf4 base (transformers'
own BitsAndBytesConfig loading), a CLI run whose adapter is an ordinary adapter of the fp32 base."""

import json

import pytest
import torch
from cli_runs import TINY_RECIPE, run_cli, write_recipe
from safetensors import safe_open
from tiny import tiny_tokenizer, token_batch

from lorafit.errors import MergeError
from lorafit.lora import LoraSpec, add_lora, merge_lora
from lorafit.lora.layer import LoRALinear
from lorafit.models import model_identity
from lorafit.models.base import identity_mismatch
from lorafit.models.loader import load_adapter
from lorafit.models.quantize import quantize_base, quantized_kind

pytest.importorskip("bitsandbytes")


def tiny_llama64(seed: int = 0):
    """A 2-layer Llama whose linear sizes are multiples of nf4's 64-weight blocks (GQA: k/v 64 -> 32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model64_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama64")
    tiny_llama64().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def dequantized_copy(model):
    """An fp32 model holding what each quantized layer of `model` multiplies by (bitsandbytes' own
    dequantization): the reference the quantized forward must equal up to float rounding."""
    import bitsandbytes.functional as bf

    reference = tiny_llama64()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or weight.dtype.is_floating_point:
            continue
        if hasattr(weight, "quant_state"):  # nf4
            dense = bf.dequantize_4bit(weight.data, weight.quant_state)
        else:  # int8: one scale per output row (SCB: the row's absmax), code x absmax / 127
            scale = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
            dense = weight.data.float() * (scale.float()[:, None] / 127)
        reference.get_submodule(name).weight.data.copy_(dense)
    return reference


@pytest.mark.parametrize("kind, noise", [("nf4", 0.15), ("int8", 0.02)])
def test_quantized_forward_is_the_dequantized_forward_and_close_to_fp32(kind, noise):
    model = tiny_llama64()
    names = quantize_base(model, kind, torch.float32, keep={"lm_head"})
    assert len(names) == 2 * 7 and "lm_head" not in names  # q k v o gate up down per layer, not the head
    assert quantized_kind(model) == kind
    ids = token_batch(length=12)
    fp32, quantized = logits(tiny_llama64(), ids), logits(model, ids)
    # The only change is the weights' rounding: same as fp32 with bitsandbytes' dequantized weights.
    assert torch.allclose(quantized, logits(dequantized_copy(model), ids), atol=2e-3 if kind == "int8" else 1e-5)
    rel = float((quantized - fp32).abs().max() / fp32.abs().max())
    assert 0 < rel < noise


def test_lora_on_quantized_linear_gets_gradients_and_fp32_factors():
    model = tiny_llama64()
    quantize_base(model, "nf4", torch.float32, keep={"lm_head"})
    report = add_lora(model, LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj")))
    assert report.total_params == sum(p.numel() for p in tiny_llama64().parameters()) + report.trainable_params
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, LoRALinear) and layer.lora_A.weight.dtype == torch.float32
    ids = token_batch(length=12)
    model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert len(grads) == 8 and all(g is not None for g in grads.values())
    # Layer 0's A gets a gradient through layer 1's quantized linears (bitsandbytes' input gradient).
    assert float(model.model.layers[0].self_attn.v_proj.lora_B.weight.grad.abs().sum()) > 0
    with pytest.raises(MergeError, match="quantized base weight; merge the adapter into the full-precision base"):
        merge_lora(model)


def test_identity_records_quantization_but_matches_the_fp32_base():
    fp32 = tiny_llama64()
    quantized = tiny_llama64()
    quantize_base(quantized, "nf4", torch.float32, keep={"lm_head"})
    expected, actual = model_identity(quantized), model_identity(fp32)
    assert expected["quantize"] == "nf4" and "quantize" not in actual
    assert expected["fingerprint"] == actual["fingerprint"]
    assert identity_mismatch(expected, actual) is None


def test_same_losses_as_peft_with_bitsandbytes_on_the_same_nf4_base(model64_dir):
    """Five AdamW steps of r=4 LoRA on q/v over an nf4 base: lorafit (quantize_base + add_lora) against
    transformers' BitsAndBytesConfig loading + PEFT's bnb Linear4bit LoRA, from the same A/B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(model64_dir, quantization_config=config, device_map="cpu")
    peft_model = get_peft_model(reference, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    assert type(peft_model.base_model.model.model.layers[0].self_attn.q_proj).__module__ == "peft.tuners.lora.bnb"
    ours = AutoModelForCausalLM.from_pretrained(model64_dir)
    quantize_base(ours, "nf4", torch.float32, keep={"lm_head"})
    add_lora(ours, LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj")))
    # The same nf4 codes and scales on both sides: bitsandbytes quantized the same fp32 weights.
    ours_w, peft_w = ours.model.layers[1].mlp.down_proj.weight, reference.model.layers[1].mlp.down_proj.weight
    assert torch.equal(ours_w.data, peft_w.data) and torch.equal(ours_w.quant_state.absmax, peft_w.quant_state.absmax)
    peft_params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if param.requires_grad:
                peft_params["base_model.model." + name.replace(".weight", ".default.weight")].copy_(param)
    losses = {}
    for label, model in (("lorafit", ours), ("peft", peft_model)):
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses[label] = []
        ids = token_batch(seed=5, batch=4, length=16)  # one batch, learned: the loss must fall
        for _ in range(5):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[label].append(loss.item())
    assert losses["lorafit"][-1] < losses["lorafit"][0]
    assert losses["lorafit"] == pytest.approx(losses["peft"], abs=1e-5)


def test_cli_trains_on_nf4_and_the_adapter_loads_on_the_fp32_base(model64_dir, tmp_path):
    recipe = (TINY_RECIPE.replace("seed: 3", "seed: 3\nquantize: nf4\nprecision: fp32")
              .replace("save_every: 5", "save_every: 0\n  gradient_checkpointing: true"))
    result = run_cli(["train", write_recipe(tmp_path / "r.yaml", model64_dir, recipe), "-o", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    valid = [r["valid_loss"] for r in history if "valid_loss" in r]
    assert valid[-1] < valid[0] - 0.1
    adapter = tmp_path / "run" / "adapter"
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        identity = json.loads(f.metadata()["lorafit_base_identity"])
        assert {k: f.get_tensor(k).dtype for k in f.keys()} == {k: torch.float32 for k in f.keys()}
    assert identity["quantize"] == "nf4"
    # An ordinary adapter of the full-precision base: it loads there, nothing quantized, LoRA active.
    loaded = load_adapter(adapter)
    assert quantized_kind(loaded.model) == "none"
    assert not torch.equal(logits(loaded.model, token_batch()), logits(tiny_llama64(), token_batch()))
    merged = run_cli(["merge", adapter, "-o", tmp_path / "merged"])
    assert merged.exit_code == 0, merged.output


@pytest.mark.parametrize("setting, message", [
    ("method: full", "quantize: int8 freezes the base in int8; train.method full trains every weight"),
    ("gradient_checkpointing: true", "quantize: int8 does not work with train.gradient_checkpointing (bitsandbytes "
                                     "keeps every int8 layer's input alive); use quantize: nf4"),
])
def test_int8_with_full_fine_tuning_or_checkpointing_is_refused(model64_dir, tmp_path, setting, message):
    recipe = TINY_RECIPE.replace("seed: 3", "seed: 3\nquantize: int8").replace("train:\n", f"train:\n  {setting}\n")
    result = run_cli(["train", write_recipe(tmp_path / "r.yaml", model64_dir, recipe), "-o", tmp_path / "run"])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("setting, message", [
    ("variant: dora", "quantize: nf4 cannot be combined with lora.variant: dora yet (both need the full-precision W)"),
    ("init: pissa", "quantize: nf4 cannot be combined with lora.init: pissa yet (both need the full-precision W)"),
])
def test_dora_or_a_weight_factoring_init_on_a_quantized_base_is_refused(model64_dir, tmp_path, setting, message):
    recipe = TINY_RECIPE.replace("seed: 3", "seed: 3\nquantize: nf4").replace("lora:\n", f"lora:\n  {setting}\n")
    assert setting in recipe
    result = run_cli(["train", write_recipe(tmp_path / "r.yaml", model64_dir, recipe), "-o", tmp_path / "run"])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_fsdp_with_a_quantized_base_is_refused():
    from types import SimpleNamespace

    from lorafit.errors import RecipeError
    from lorafit.recipe.schema import Recipe, TrainConfig
    from lorafit.workflows.train import check_distributed

    recipe = Recipe(model="m", task="e2e", quantize="nf4", train=TrainConfig(distributed="fsdp"))
    with pytest.raises(RecipeError, match="quantize: nf4 cannot be sharded by train.distributed fsdp; use"):
        check_distributed(recipe, None, SimpleNamespace(sharded=True))


def test_explicit_bf16_on_a_cpu_without_native_bf16_warns(model64_dir, tmp_path, monkeypatch):
    import lorafit.workflows.train as train_workflow

    monkeypatch.setattr(train_workflow, "has_native_bf16", lambda device: False)
    recipe = TINY_RECIPE.replace("seed: 3", "seed: 3\nprecision: bf16").replace("max_steps: 40", "max_steps: 2")
    result = run_cli(["train", write_recipe(tmp_path / "r.yaml", model64_dir, recipe), "-o", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    assert ("warning: precision: bf16 on a CPU without native bf16 (avx512_bf16 / amx_bf16): bf16 matmuls are "
            "emulated, many times slower than fp32; precision: auto picks fp32 here") in result.stderr


def test_int8_under_bf16_keeps_no_copies_of_its_dequantized_rows():
    """bitsandbytes dequantizes int8 rows into a new fp32 tensor at every call; the run's bf16 weight
    cache (fast/precision.py) must not keep them (it once grew by a model's worth per step)."""
    from lorafit.fast.precision import FrozenWeightCasts, autocast_context

    model = tiny_llama64()
    quantize_base(model, "int8", torch.bfloat16, keep={"lm_head"})
    model.requires_grad_(False)  # frozen, as under LoRA
    casts = FrozenWeightCasts()
    for _ in range(3):
        with autocast_context("bf16", torch.device("cpu"), casts):
            model(input_ids=token_batch())
    assert len(casts) == 1  # the fp32 head's bf16 copy, nothing per call
