"""`train.gradient_checkpointing`: the same loss and LoRA gradients as without it, with LoRA dropout and
attention dropout on (the recompute must draw the forward's masks), on padded and packed batches (packed
attention must be in force during the recompute too), in fp32 and bf16."""

import pytest
import torch
from tiny import tiny_llama, tiny_tokenizer

from lorafit.data.batches import collate, collate_packed, encode_generation
from lorafit.errors import RecipeError
from lorafit.fast.attention import FastAttentionDropout
from lorafit.fast.dropout import use_fast_dropout
from lorafit.fast.precision import FrozenWeightCasts, autocast_context
from lorafit.lora import LoraSpec, add_lora
from lorafit.tasks.types import GenerationExample
from lorafit.train import checkpointing
from lorafit.train.checkpointing import enable_gradient_checkpointing
from lorafit.train.loss import causal_lm_loss

EXAMPLES = [
    GenerationExample("name[A], food[Thai]\nDescription:", " A serves Thai food."),
    GenerationExample("name[Bo]\nDescription:", " Bo."),
    GenerationExample("name[Cafe Zed], area[riverside]\nDescription:", " Cafe Zed is by the river."),
]


def batch(kind: str) -> dict:
    encoded = encode_generation(EXAMPLES, tiny_tokenizer(), 512)[0]
    return collate_packed(encoded) if kind == "packed" else collate(encoded, 0)


def model_with_lora(dropout: float):
    model = tiny_llama()
    model.config.attention_dropout = dropout  # the attention modules read it at every forward
    add_lora(model, LoraSpec(rank=4, alpha=8, dropout=dropout, targets=("all-linear",)))
    with torch.no_grad():  # trained-looking B, so every A gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    use_fast_dropout(model)
    return model.train()


def loss_and_grads(model, data: dict, precision: str, seed: int = 7):
    """One training micro-step as Training.backward runs it: modes and autocast around the forward only."""
    torch.manual_seed(seed)
    casts = FrozenWeightCasts() if precision == "bf16" else None
    with FastAttentionDropout(), autocast_context(precision, torch.device("cpu"), casts):
        loss = causal_lm_loss(model, data)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def count_layer_calls(model) -> list[int]:
    calls = [0]
    model.model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["padded", "packed"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointing_gives_the_same_loss_and_gradients(dropout, kind, precision):
    plain, checkpointed = model_with_lora(dropout), model_with_lora(dropout)
    enable_gradient_checkpointing(checkpointed)
    plain_calls, checkpointed_calls = count_layer_calls(plain), count_layer_calls(checkpointed)
    data = batch(kind)
    loss, grads = loss_and_grads(plain, data, precision)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, data, precision)
    assert (plain_calls[0], checkpointed_calls[0]) == (1, 2)  # the layer really ran again in backward
    assert loss_ckpt == loss
    assert grads_ckpt.keys() == grads.keys() and len(grads) == 2 * 7 * 2
    worst = max(float((grads_ckpt[n] - grads[n]).abs().max()) for n in grads)
    assert worst <= 1e-6
    if dropout:  # the masks matter: another seed gives another loss
        assert loss_and_grads(model_with_lora(dropout), data, precision, seed=8)[0] != loss


def test_without_replaying_the_modes_a_packed_recompute_would_differ(monkeypatch):
    """Why the forward's torch-function modes are entered again: without packed attention the recompute
    runs another computation (one attention over the whole row instead of one per example), which
    torch's checkpoint detects by the tensors it saves."""
    checkpointed = model_with_lora(0.0)
    monkeypatch.setattr(checkpointing, "_replay_forward_modes", torch.utils.checkpoint.noop_context_fn)
    enable_gradient_checkpointing(checkpointed)
    with pytest.raises(torch.utils.checkpoint.CheckpointError, match="different number of tensors"):
        loss_and_grads(checkpointed, batch("packed"), "fp32")


def test_a_model_without_checkpointing_support_is_refused():
    with pytest.raises(RecipeError, match="train.gradient_checkpointing: Linear does not support"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))
