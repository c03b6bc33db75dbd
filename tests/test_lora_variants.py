"""DoRA, rank/alpha patterns and PiSSA/OLoRA inits: the same logits as PEFT's, in both directions.

Every adapter is non-trivial (random A and B, DoRA magnitudes moved off their initial norms), and the
GPT-2 cases cover Conv1D's transposed weight. PEFT's own implementation is the reference.
"""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors import safe_open
from tiny import randomize_lora, tiny_bert, tiny_gpt2, tiny_llama, token_batch

from lorafit.errors import MergeError
from lorafit.lora import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LoraSpec,
    add_lora,
    load_adapter_tensors,
    lora_disabled,
    lora_layers,
    merge_lora,
    read_adapter_config,
    read_adapter_tensors,
    save_adapter,
    spec_from_config,
    unmerge_lora,
)

DORA = {
    "llama": (tiny_llama, LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"), variant="dora"), "CAUSAL_LM"),
    "gpt2": (tiny_gpt2, LoraSpec(rank=4, alpha=16, targets=("c_attn", "c_proj"), variant="dora"), "CAUSAL_LM"),
    "bert": (
        tiny_bert,
        LoraSpec(rank=4, alpha=8, targets=("query", "value"), modules_to_save=("classifier",), variant="dora", rslora=True),
        "SEQ_CLS",
    ),
}
PATTERNS = {
    "llama": (tiny_llama, LoraSpec(rank=4, alpha=8, targets=("all-linear",),
                                   rank_pattern={r"layers\.0\.self_attn\.q_proj": 2, "mlp.up_proj": 8},
                                   alpha_pattern={"v_proj": 3.0, "q_proj": 5.0}), "CAUSAL_LM"),
    "gpt2": (tiny_gpt2, LoraSpec(rank=4, alpha=16, targets=("c_attn", "c_proj"), rank_pattern={"h.1.attn.c_attn": 1},
                                 alpha_pattern={"c_proj": 2.0}, variant="dora"), "CAUSAL_LM"),
    "bert": (tiny_bert, LoraSpec(rank=2, alpha=4, targets=("query", "value"), modules_to_save=("classifier",),
                                 rank_pattern={"value": 6}), "SEQ_CLS"),
}


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def trained(build, spec):
    """`build()` with LoRA by `spec` and everything trainable moved off its init (as after training)."""
    model = build()
    add_lora(model, spec)
    randomize_lora(model)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_magnitude_vector"):
                param.mul_(1 + 0.2 * torch.rand(param.shape, generator=g))
            elif param.requires_grad and ".lora_" not in name:
                param.add_(0.05)  # a trained head
    return model


def reload(build, directory):
    spec = spec_from_config(read_adapter_config(directory))
    model = build()
    add_lora(model, spec)
    load_adapter_tensors(model, spec, read_adapter_tensors(directory)[0], str(directory))
    return model.eval()


@pytest.mark.parametrize("case", ["dora-llama", "dora-gpt2", "dora-bert", "pattern-llama", "pattern-gpt2", "pattern-bert"])
def test_lorafit_variant_adapter_gives_peft_the_same_logits_and_reloads(case, tmp_path):
    kind, model_name = case.split("-")
    build, spec, task_type = (DORA if kind == "dora" else PATTERNS)[model_name]
    model = trained(build, spec).eval()
    save_adapter(model, tmp_path / "a", spec, base_model_name_or_path="tiny", task_type=task_type)
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert config["use_dora"] is (spec.variant == "dora")
    assert config["rank_pattern"] == dict(spec.rank_pattern) and config["alpha_pattern"] == dict(spec.alpha_pattern)

    ids = token_batch()
    ours = logits(model, ids)
    peft_model = PeftModel.from_pretrained(build(), str(tmp_path / "a")).eval()
    assert relative(logits(peft_model, ids), ours) <= 1e-5
    assert torch.equal(logits(reload(build, tmp_path / "a"), ids), ours)


def test_dora_file_holds_peft_magnitude_keys_with_row_norms_of_the_conv1d_weight(tmp_path):
    build, spec, task_type = DORA["gpt2"]
    model = build()
    add_lora(model, spec)  # untrained: m = ||W||_row (B = 0), W the (d_out, d_in) view of Conv1D's (d_in, d_out)
    save_adapter(model, tmp_path / "a", spec, base_model_name_or_path="tiny", task_type=task_type)
    with safe_open(str(tmp_path / "a" / WEIGHTS_NAME), "pt") as f:
        magnitude = f.get_tensor("base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector")
    weight = build().transformer.h[0].attn.c_attn.weight  # (32, 96): d_in x d_out
    assert magnitude.shape == (96,)
    torch.testing.assert_close(magnitude, weight.norm(dim=0), rtol=1e-6, atol=0)
    ids = token_batch()
    assert relative(logits(model.eval(), ids), logits(build(), ids)) <= 1e-6  # the untrained DoRA is the identity


@pytest.mark.parametrize("model_name", ["llama", "gpt2", "bert"])
def test_peft_made_dora_and_pattern_adapter_loads_in_lorafit_with_the_same_logits(model_name, tmp_path):
    build = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}[model_name]
    targets = {"llama": ["q_proj", "v_proj", "o_proj"], "gpt2": ["c_attn", "c_fc"], "bert": ["query", "value", "dense"]}[model_name]
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS if model_name == "bert" else TaskType.CAUSAL_LM, r=4, lora_alpha=8,
        target_modules=targets, use_dora=True, rank_pattern={targets[0]: 2}, alpha_pattern={targets[1]: 12},
        fan_in_fan_out=model_name == "gpt2",
    )
    peft_model = get_peft_model(build(), config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=g) * 0.1)
    peft_model.eval().save_pretrained(str(tmp_path / "peft"))
    spec = spec_from_config(read_adapter_config(tmp_path / "peft"))
    assert spec.variant == "dora" and spec.rank_pattern == {targets[0]: 2}
    model = reload(build, tmp_path / "peft")
    ids = token_batch()
    expected = logits(peft_model, ids)
    assert relative(logits(model, ids), expected) <= 1e-5
    merge_lora(model)  # W' = m / ||W + s B A||_row (W + s B A) baked in
    assert relative(logits(model, ids), expected) <= 1e-5


def test_dora_merge_matches_peft_merge_and_unmerge_restores_the_base():
    build, spec, _ = DORA["gpt2"]
    model = trained(build, spec).eval()
    ids = token_batch()
    unmerged = logits(model, ids)
    base_weights = {n: layer.weight.detach().clone() for n, layer in lora_layers(model)}
    merge_lora(model)
    assert relative(logits(model, ids), unmerged) <= 1e-5
    unmerge_lora(model)
    assert all(torch.equal(layer.weight, base_weights[n]) for n, layer in lora_layers(model))
    merge_lora(model, keep_original=False)
    with pytest.raises(MergeError, match="DoRA layer merged without keep_original cannot be unmerged"):
        unmerge_lora(model)


def test_dora_gradients_reach_magnitude_a_and_b_but_not_through_the_norm():
    build, spec, _ = DORA["llama"]
    model = trained(build, spec).train()
    layer = dict(lora_layers(model))["model.layers.0.self_attn.q_proj"]
    x = torch.randn(3, 5, 32, requires_grad=False)
    layer(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in
               (layer.lora_magnitude_vector, layer.lora_A.weight, layer.lora_B.weight))
    # By hand, the norm a constant: out = W x + (g - 1) W x + g s B A x with g = m / ||W + s B A||
    w, a, b, m, s = (layer.weight.detach(), layer.lora_A.weight.detach(), layer.lora_B.weight.detach().requires_grad_(),
                     layer.lora_magnitude_vector.detach(), layer.scale)
    g = m / (w + s * b.detach() @ a).norm(dim=1)
    expected = x @ w.T + (g - 1) * (x @ w.T) + g * s * (x @ a.T @ b.T)
    expected.sum().backward()
    torch.testing.assert_close(layer.lora_B.weight.grad, b.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora"])
def test_base_factored_inits_give_peft_factors_and_residual(init):
    spec = LoraSpec(rank=4, alpha=8, targets=("q_proj", "up_proj"), init=init)
    torch.manual_seed(11)
    ours = tiny_llama()
    add_lora(ours, spec)
    torch.manual_seed(11)
    theirs = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"], init_lora_weights=init))
    peft_params = dict(theirs.named_parameters())
    for name, layer in lora_layers(ours):
        prefix = f"base_model.model.{name}"
        torch.testing.assert_close(layer.lora_A.weight, peft_params[f"{prefix}.lora_A.default.weight"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.lora_B.weight, peft_params[f"{prefix}.lora_B.default.weight"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.weight, peft_params[f"{prefix}.base_layer.weight"], rtol=1e-5, atol=1e-6)
    ids = token_batch()
    assert relative(logits(ours, ids), logits(tiny_llama(), ids)) <= 1e-5  # the residual + s B A is the base
    with lora_disabled(ours):  # "the base model" still means the original W
        assert relative(logits(ours, ids), logits(tiny_llama(), ids)) <= 1e-5


@pytest.mark.parametrize("build,targets,init", [(tiny_llama, ("q_proj", "v_proj"), "pissa"), (tiny_gpt2, ("c_attn",), "olora"),
                                                (tiny_llama, ("all-linear",), "olora")])
def test_pissa_adapter_is_saved_converted_for_the_original_base(build, targets, init, tmp_path):
    spec = LoraSpec(rank=4, alpha=8, targets=targets, init=init, rank_pattern={"v_proj": 2} if "v_proj" in targets else {})
    model = build()
    add_lora(model, spec)
    with torch.no_grad():  # "training": A and B move away from their SVD / QR start
        for name, param in model.named_parameters():
            if ".lora_" in name:
                param.add_(torch.randn_like(param) * 0.05)
    model.eval()
    save_adapter(model, tmp_path / "a", spec, base_model_name_or_path="tiny", task_type="CAUSAL_LM")
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (8, 16, True)
    assert config["rank_pattern"] == {k: 2 * v for k, v in spec.rank_pattern.items()}
    with safe_open(str(tmp_path / "a" / WEIGHTS_NAME), "pt") as f:
        assert f.metadata()["lorafit_converted_from"] == init

    ids = token_batch()
    trained_logits = logits(model, ids)  # the residual base + trained factors
    assert relative(logits(PeftModel.from_pretrained(build(), str(tmp_path / "a")).eval(), ids), trained_logits) <= 1e-5
    assert relative(logits(reload(build, tmp_path / "a"), ids), trained_logits) <= 1e-5


def test_peft_unconverted_pissa_adapter_reapplies_the_residual_like_peft(tmp_path):
    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn_like(param) * 0.05)
    peft_model.eval().save_pretrained(str(tmp_path / "peft"))
    model = reload(tiny_llama, tmp_path / "peft")
    ids = token_batch()
    assert relative(logits(model, ids), logits(peft_model, ids)) <= 1e-5


# ---------------------------------------------------------------------------------------------- LoRA+


def test_loraplus_training_gives_the_same_parameters_as_peft_optimizer_after_steps():
    """lorafit's Training (train.loraplus_lr_ratio) vs PEFT's create_loraplus_optimizer + the same AdamW,
    on the same batches from the same start (a BERT classifier: LayerNorm, biases and a head in play)."""
    from peft.optimizers import create_loraplus_optimizer

    from lorafit.fast.options import FastOptions
    from lorafit.recipe.schema import TrainConfig
    from lorafit.train.distributed import Dist
    from lorafit.train.loop import Training
    from lorafit.train.loss import classification_loss

    peft_model = get_peft_model(tiny_bert(), LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                                        target_modules=["query", "value"], bias="lora_only", use_dora=True))
    ours = tiny_bert()
    add_lora(ours, LoraSpec(rank=4, alpha=8, targets=("query", "value"), modules_to_save=("classifier",),
                            bias="lora_only", variant="dora"))
    with torch.no_grad():  # the same start: PEFT's random A (and fresh head) copied into lorafit's model
        theirs = {n.replace("base_model.model.", "").replace(".default", "").replace("modules_to_save.", "")
                  .replace(".base_layer", "").replace("lora_magnitude_vector.weight", "lora_magnitude_vector"): p for n, p in peft_model.named_parameters() if p.requires_grad}
        trainable = {n: p for n, p in ours.named_parameters() if p.requires_grad}
        assert set(trainable) == set(theirs)
        for name, param in trainable.items():
            param.copy_(theirs[name])
    config = TrainConfig(lr=1e-2, weight_decay=0.01, loraplus_lr_ratio=16, max_grad_norm=None, schedule="constant")
    run = Training(ours.train(), config, total=4, seed=0, precision="fp32", batching="pad", loss_fn=classification_loss,
                   pad_id=0, fast=FastOptions(), dist=Dist())
    optimizer = create_loraplus_optimizer(peft_model, torch.optim.AdamW, lr=1e-2, loraplus_lr_ratio=16,
                                          loraplus_weight_decay=0.01, weight_decay=0.01)
    assert sorted(g["lr"] for g in run.optimizer.param_groups) == sorted(g["lr"] for g in optimizer.param_groups if g["params"])
    peft_model.train()
    for step in range(4):
        ids = token_batch(seed=20 + step, batch=4)
        labels = torch.tensor([0, 1, 2, step % 3])
        for model, opt in ((ours, run.optimizer), (peft_model, optimizer)):
            torch.manual_seed(step)  # the same dropout masks (BERT's own dropout)
            torch.nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
            opt.step()
            opt.zero_grad()
    for name, param in trainable.items():
        torch.testing.assert_close(param, theirs[name], rtol=1e-4, atol=1e-6, msg=name)
    lr_of = {id(p): g["lr"] for g in run.optimizer.param_groups for p in g["params"]}
    assert lr_of[id(trainable["bert.encoder.layer.0.attention.self.query.lora_B.weight"])] == pytest.approx(0.16)
    assert lr_of[id(trainable["bert.encoder.layer.0.attention.self.query.lora_A.weight"])] == pytest.approx(0.01)
    assert lr_of[id(trainable["bert.encoder.layer.0.attention.self.query.lora_magnitude_vector"])] == pytest.approx(0.16)


# ---------------------------------------------------------------------------------------------- recipes


def test_recipe_keys_reach_the_spec_and_bad_values_name_the_key(tmp_path):
    from lorafit.errors import RecipeError
    from lorafit.models.loader import lora_spec
    from lorafit.recipe import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("model: m\ntask: e2e\nlora:\n  variant: dora\n  rank_pattern: {q_proj: 16}\n"
                    "  alpha_pattern: {v_proj: 32}\n  init: pissa_niter_4\ntrain:\n  loraplus_lr_ratio: 16\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "r.yaml:7: lora.init: pissa_niter_4 cannot be combined with variant: dora" in str(e.value)
    path.write_text(path.read_text().replace("init: pissa_niter_4", "init: gaussian"))
    recipe = load_recipe(path)
    spec = lora_spec(recipe, tiny_llama())
    assert (spec.variant, spec.rank_pattern, spec.alpha_pattern, spec.init) == ("dora", {"q_proj": 16}, {"v_proj": 32.0}, "gaussian")
    assert recipe.train.loraplus_lr_ratio == 16.0
    path.write_text("model: m\ntask: e2e\nlora:\n  rank_pattern: {'q_proj(': 2, v_proj: 0}\n  init: svd\n"
                    "  alpha_pattern: {v_proj: big}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    message = str(e.value)
    assert "r.yaml:4: lora.rank_pattern: key 'q_proj(' is not a valid regular expression" in message
    assert "r.yaml:5: lora.init: must be 'kaiming', 'gaussian', 'pissa', 'pissa_niter_K' (K an integer) or 'olora', got 'svd'" in message
    assert "r.yaml:6: lora.alpha_pattern.v_proj: expected a number, got 'big'" in message


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("variant", ["dora", "pissa"])
def test_cli_trains_evaluates_and_merges_a_variant_run(variant, tmp_path):
    """train (DoRA + LoRA+, or PiSSA + a rank pattern) -> the adapter PEFT reads -> eval -> merge, self-verified."""
    from cli_runs import TINY_RECIPE, run_cli, write_recipe
    from tiny import save_tiny_model

    from lorafit.models.loader import load_adapter

    model_dir = save_tiny_model(tmp_path / "base", "llama")
    extra = "  variant: dora\n" if variant == "dora" else "  init: pissa\n  rank_pattern: {{v_proj: 2}}\n"  # .format() fills {model}
    text = TINY_RECIPE.replace("  targets: [q_proj, v_proj]\n", "  targets: [q_proj, v_proj]\n" + extra)
    recipe = write_recipe(tmp_path / "r.yaml", model_dir, text)
    run = tmp_path / "run"
    result = run_cli(["train", recipe, "-o", run, "--set", "train.max_steps=6", "--set", "train.save_every=0",
                      "--set", "train.loraplus_lr_ratio=16", "--set", "precision=fp32"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "adapter" / CONFIG_NAME).read_text())
    if variant == "dora":
        assert config["use_dora"] is True and config["r"] == 4
    else:
        assert (config["r"], config["rank_pattern"], config["init_lora_weights"]) == (8, {"v_proj": 4}, True)
        assert "lora.init pissa: saved converted to apply to the original base weights" in result.output

    ids = token_batch(length=12)
    ours = logits(load_adapter(run / "adapter").model, ids)
    from transformers import AutoModelForCausalLM

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(run / "adapter")).eval()
    assert relative(logits(peft_model, ids), ours) <= 1e-5

    result = run_cli(["eval", run, "--limit", "2", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    result = run_cli(["merge", run, "-o", tmp_path / "merged"])
    assert result.exit_code == 0, result.output
    assert "verified: reloaded merged model matches the adapter" in result.output


# ---------------------------------------------------------------------------------------------- analyze


def test_analyze_takes_a_dora_update_as_merged_minus_base_and_pattern_scales_per_layer(tmp_path):
    """The spectrum analyze reports is that of PEFT's own merged W' - W (DoRA), and of each layer's own
    scale * B A (rank / alpha patterns); truncation refuses both."""
    from tiny import save_tiny_model
    from transformers import AutoModelForCausalLM

    from lorafit.workflows.analyze import AnalyzeOptionError, run_analyze

    base_dir = save_tiny_model(tmp_path / "base", "llama")
    for name, spec in (("dora", LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj"), variant="dora")),
                       ("pattern", LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj"), rank_pattern={"v_proj": 2},
                                            alpha_pattern={"q_proj": 3.0}))):
        model = trained(tiny_llama, spec)
        save_adapter(model, tmp_path / name, spec, base_model_name_or_path=str(base_dir), task_type="CAUSAL_LM")
        report = run_analyze(tmp_path / name)  # the DoRA base comes from base_model_name_or_path
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(tmp_path / name))
        base = tiny_llama()
        merged = peft_model.merge_and_unload()
        for record in report["layers"]:
            delta = merged.get_submodule(record["name"]).weight.double() - base.get_submodule(record["name"]).weight.double()
            expected = torch.linalg.svdvals(delta)
            got = torch.tensor(record["singular_values"], dtype=torch.float64)
            k = len(got)
            assert k == (32 if name == "dora" else (2 if "v_proj" in record["name"] else 4))
            torch.testing.assert_close(got, expected[:k], rtol=1e-4, atol=1e-6)
        assert report["variant"] == ("dora" if name == "dora" else "lora")
        with pytest.raises(AnalyzeOptionError, match="--truncate-rank: not supported for"):
            run_analyze(tmp_path / name, output_dir=tmp_path / f"out-{name}", truncate_rank=1)


def test_inspect_shows_each_layer_rank_alpha_and_variant(tmp_path):
    from cli_runs import run_cli
    from tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "base", "llama")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {model_dir}\ntask: quickstart\nlora:\n  variant: dora\n  targets: [q_proj, v_proj]\n"
                      "  rank_pattern: {v_proj: 16}\n  alpha_pattern: {layers.1.self_attn.q_proj: 4}\n")
    result = run_cli(["inspect", recipe])
    assert result.exit_code == 0, result.output
    assert "  model.layers.0.self_attn.q_proj  (rank 8, alpha 16, dora, init kaiming)" in result.output
    assert "  model.layers.1.self_attn.q_proj  (rank 8, alpha 4, dora, init kaiming)" in result.output
    assert "  model.layers.1.self_attn.v_proj  (rank 16, alpha 16, dora, init kaiming)" in result.output
    # q: 2 x (8*32 + 32*8 + 32 magnitudes), v (32 -> 32): 2 x (16*32 + 32*16 + 32)
    assert "trainable parameters: 3,200 of 32,032" in result.output


def test_pissa_loraplus_run_resumed_from_a_checkpoint_saves_the_same_adapter(tmp_path):
    """Resume re-applies the (deterministic) PiSSA init to the base, then restores the trained factors and
    LoRA+'s optimizer groups: the converted adapter equals the uninterrupted run's."""
    import shutil

    from cli_runs import TINY_RECIPE, adapter_weights, max_abs_diff, run_cli, write_recipe
    from tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "base", "llama")
    text = TINY_RECIPE.replace("  targets: [q_proj, v_proj]\n", "  targets: [q_proj, v_proj]\n  init: pissa\n")
    recipe = write_recipe(tmp_path / "r.yaml", model_dir, text.replace("max_steps: 40", "max_steps: 10"))
    result = run_cli(["train", recipe, "-o", tmp_path / "a", "--set", "precision=fp32", "--set", "train.loraplus_lr_ratio=4"])
    assert result.exit_code == 0, result.output
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "adapter")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-000010")  # as if stopped after step 5
    result = run_cli(["train", "--resume", tmp_path / "b"])
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.output
    assert max_abs_diff(adapter_weights(tmp_path / "a" / "adapter"), adapter_weights(tmp_path / "b" / "adapter")) == 0.0
