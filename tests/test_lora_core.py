"""LoRALinear, injection and merging on tiny Llama, GPT-2 (Conv1D) and BERT models."""

import copy
import math

import pytest
import torch
from tiny import HIDDEN, LAYERS, VOCAB, randomize_lora, tiny_bert, tiny_gpt2, tiny_llama, token_batch

from lorafit.errors import MergeError, TargetError
from lorafit.lora import (
    LoRALinear,
    LoraSpec,
    add_lora,
    count_parameters,
    lora_layers,
    merge_lora,
    unload_lora,
    unmerge_lora,
)

BUILDERS = {
    "llama": (tiny_llama, ("q_proj", "v_proj")),
    "gpt2": (tiny_gpt2, ("c_attn",)),
    "bert": (tiny_bert, ("query", "value")),
}


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", BUILDERS)
def test_untrained_adapter_gives_base_logits_exactly(family):
    build, targets = BUILDERS[family]
    base, adapted = build(), build()
    add_lora(adapted, LoraSpec(rank=4, alpha=8, targets=targets))
    ids = token_batch()
    assert torch.equal(logits(base, ids), logits(adapted, ids))


@pytest.mark.parametrize("family", BUILDERS)
def test_merged_logits_equal_adapter_logits_and_unmerge_restores_base(family):
    build, targets = BUILDERS[family]
    model = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, LoraSpec(rank=4, alpha=8, targets=targets))
    randomize_lora(model)
    ids = token_batch()
    with_adapter = logits(model, ids)
    assert (with_adapter - logits(build(), ids)).abs().max().item() > 1e-5  # the adapter does something

    assert merge_lora(model) == len(lora_layers(model)) > 0
    merged = logits(model, ids)
    assert (merged - with_adapter).abs().max().item() <= 1e-4

    unmerge_lora(model)
    for key, value in model.state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, before[key]), key  # bit-identical base weights


@pytest.mark.parametrize("family", BUILDERS)
def test_unload_after_merge_gives_plain_model_with_base_keys(family):
    build, targets = BUILDERS[family]
    model = build()
    base_keys = set(model.state_dict())
    base_types = {n: type(m) for n, m in model.named_modules()}
    add_lora(model, LoraSpec(rank=2, alpha=4, targets=targets))
    randomize_lora(model)
    ids = token_batch()
    expected = logits(model, ids)
    merge_lora(model, keep_original=False)
    unload_lora(model)
    assert set(model.state_dict()) == base_keys
    assert {n: type(m) for n, m in model.named_modules()} == base_types
    assert (logits(model, ids) - expected).abs().max().item() <= 1e-4


def test_merge_twice_is_refused_and_never_double_adds():
    model = tiny_llama()
    add_lora(model, LoraSpec(rank=4, alpha=8))
    randomize_lora(model)
    merge_lora(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MergeError, match="already merged"):
        merge_lora(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key])


def test_non_finite_delta_is_refused_and_leaves_weights_untouched():
    model = tiny_llama()
    add_lora(model, LoraSpec(rank=4, alpha=8))
    randomize_lora(model)
    name, layer = lora_layers(model)[-1]
    with torch.no_grad():
        layer.lora_B.weight[0, 0] = float("inf")
    weights = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    with pytest.raises(MergeError, match="non-finite"):
        merge_lora(model)
    assert not any(layer.merged for _, layer in lora_layers(model))
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value)


def test_forward_matches_hand_computation_for_linear_and_conv1d():
    torch.manual_seed(0)
    x = torch.randn(3, 5, HIDDEN)
    for build, target in ((tiny_llama, "q_proj"), (tiny_gpt2, "c_attn")):
        model = build()
        add_lora(model, LoraSpec(rank=3, alpha=6, targets=(target,), rslora=False))
        randomize_lora(model)
        _, layer = lora_layers(model)[0]
        w = layer.weight.T if layer.transposed else layer.weight  # (d_out, d_in)
        a, b = layer.lora_A.weight, layer.lora_B.weight
        expected = x @ w.T + (layer.bias if layer.bias is not None else 0) + (x @ a.T @ b.T) * (6 / 3)
        assert torch.allclose(layer(x), expected, atol=1e-5)


@pytest.mark.parametrize("transposed", [False, True], ids=["linear", "conv1d"])
def test_gradients_match_hand_computation_with_bias_and_3d_input(transposed):
    # The input, A and B gradients of W x + b + scale * B A x, for both weight orientations.
    torch.manual_seed(0)
    d_in, d_out, rank, scale = 12, 10, 3, 2.0
    weight = torch.nn.Parameter(torch.randn(d_in, d_out) if transposed else torch.randn(d_out, d_in), requires_grad=False)
    bias = torch.nn.Parameter(torch.randn(d_out), requires_grad=False)
    layer = LoRALinear(weight, bias, transposed=transposed, rank=rank, alpha=rank * scale)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(2, 4, d_in, requires_grad=True)
    upstream = torch.randn(2, 4, d_out)
    layer(x).backward(upstream)
    got = [x.grad, layer.lora_A.weight.grad, layer.lora_B.weight.grad]

    x_ref = x.detach().clone().requires_grad_(True)
    a = layer.lora_A.weight.detach().clone().requires_grad_(True)
    b = layer.lora_B.weight.detach().clone().requires_grad_(True)
    w = weight.T if transposed else weight
    expected = x_ref @ w.T + bias + (x_ref @ a.T @ b.T) * scale
    assert torch.allclose(layer(x), expected, atol=1e-5)
    expected.backward(upstream)
    for g, ref in zip(got, [x_ref.grad, a.grad, b.grad], strict=True):
        assert torch.allclose(g, ref, atol=1e-5)


def test_rslora_scale_is_alpha_over_sqrt_rank():
    model = tiny_llama()
    add_lora(model, LoraSpec(rank=16, alpha=8, rslora=True))
    assert all(math.isclose(layer.scale, 8 / 4) for _, layer in lora_layers(model))
    model = tiny_llama()
    add_lora(model, LoraSpec(rank=16, alpha=8))
    assert all(math.isclose(layer.scale, 0.5) for _, layer in lora_layers(model))


def test_trainable_count_equals_formula_for_square_matrices_plus_head():
    rank = 4
    model = tiny_llama()
    report = add_lora(model, LoraSpec(rank=rank, alpha=8, targets=("q_proj", "v_proj")))
    # q and v are HIDDEN x HIDDEN (kv heads == heads): 2 * rank * d each, two per layer.
    assert report.trainable_params == LAYERS * 2 * (2 * rank * HIDDEN)
    assert report.total_params == count_parameters(tiny_llama()) + report.trainable_params
    assert len(report.adapted) == 2 * LAYERS

    bert = tiny_bert(num_labels=3)
    report = add_lora(bert, LoraSpec(rank=rank, alpha=8, targets=("query", "value"), modules_to_save=("classifier",)))
    head = HIDDEN * 3 + 3
    assert report.trainable_params == LAYERS * 2 * (2 * rank * HIDDEN) + head
    assert report.saved_modules == ["classifier"]


def test_gaussian_init_has_std_one_over_rank_and_b_zero():
    torch.manual_seed(0)
    layer = LoRALinear.wrap(torch.nn.Linear(512, 512), rank=4, alpha=8, init="gaussian")
    assert abs(layer.lora_A.weight.std().item() - 0.25) < 0.01
    assert torch.count_nonzero(layer.lora_B.weight) == 0


def test_all_linear_skips_output_head_and_saved_modules():
    model = tiny_llama()
    report = add_lora(model, LoraSpec(rank=2, alpha=4, targets=("all-linear",)))
    leaves = {n.split(".")[-1] for n in report.adapted}
    assert leaves == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert "lm_head" not in report.adapted and len(report.adapted) == 7 * LAYERS

    bert = tiny_bert()
    report = add_lora(bert, LoraSpec(rank=2, alpha=4, targets=("all-linear",), modules_to_save=("classifier",)))
    assert "classifier" not in report.adapted
    assert "bert.pooler.dense" in report.adapted


def test_regex_targets_full_match_module_names():
    model = tiny_llama()
    report = add_lora(model, LoraSpec(rank=2, alpha=4, targets_regex=r"model\.layers\.1\.self_attn\.(q|k)_proj"))
    assert report.adapted == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj"]


def test_target_matching_nothing_names_target_and_lists_layers():
    with pytest.raises(TargetError) as err:
        add_lora(tiny_llama(), LoraSpec(rank=2, alpha=4, targets=("q_proj", "query")))
    message = str(err.value)
    assert "'query'" in message and "q_proj" in message and "v_proj" in message
    assert "\n" not in message


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_training_step_changes_only_lora_head_and_selected_biases(bias):
    model = tiny_bert(num_labels=2).train()
    add_lora(model, LoraSpec(rank=4, alpha=8, targets=("query", "value"), modules_to_save=("classifier",), bias=bias))
    randomize_lora(model)  # so lora_A also gets a gradient (B = 0 blocks A's gradient)
    before = {k: v.clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(input_ids=token_batch(), labels=torch.tensor([0, 1]))
    out.loss.backward()
    optimizer.step()

    adapted = {n for n, _ in lora_layers(model)}
    for name, param in model.named_parameters():
        module = name.rpartition(".")[0]
        should_train = (
            ".lora_" in name
            or name.startswith("classifier.")
            or (bias == "all" and name.endswith(".bias"))
            or (bias == "lora_only" and name.endswith(".bias") and module in adapted)
        )
        assert param.requires_grad == should_train, name
        if should_train:
            assert param.grad is not None and not torch.equal(param, before[name]), name
        else:
            assert param.grad is None and torch.equal(param, before[name]), name


def test_gpt2_conv1d_delta_has_transposed_orientation():
    model = tiny_gpt2()
    add_lora(model, LoraSpec(rank=2, alpha=2, targets=("c_attn",)))
    _, layer = lora_layers(model)[0]
    assert layer.transposed and layer.weight.shape == (HIDDEN, 3 * HIDDEN)
    assert layer.lora_A.weight.shape == (2, HIDDEN) and layer.lora_B.weight.shape == (3 * HIDDEN, 2)
    assert layer.delta_weight().shape == layer.weight.shape
    assert VOCAB == model.config.vocab_size


def test_deepcopy_of_adapted_model_keeps_working():
    model = tiny_llama()
    add_lora(model, LoraSpec(rank=2, alpha=4))
    clone = copy.deepcopy(model)
    ids = token_batch()
    assert torch.equal(logits(model, ids), logits(clone, ids))
