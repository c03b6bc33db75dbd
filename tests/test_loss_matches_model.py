"""The training loss is the model's own loss, for every causal LM.

`causal_lm_loss` skips the model's forward after the backbone only for allowlisted architectures
(`PLAIN_HEAD_MODELS`); each of them, and models that transform their logits after the head (Gemma 2's
soft-capping, Granite's logits_scaling, Cohere's logit_scale), is checked here against
`model(input_ids, attention_mask, labels=labels).loss`: sum loss / target tokens within 1e-5 (fp32),
and the same LoRA gradients.
"""

import pytest
import torch
from tiny import HIDDEN, LAYERS, VOCAB, tiny_gpt2, tiny_llama, tiny_tokenizer, with_trained_looking_lora
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import lorafit.train.loss as loss_module
from lorafit.data.batches import IGNORE_INDEX, collate, collate_packed, encode_generation
from lorafit.errors import DataError
from lorafit.tasks.types import GenerationExample
from lorafit.train.loss import PLAIN_HEAD_MODELS, causal_lm_loss, uses_plain_head

EXAMPLES = [
    GenerationExample("name[A], food[Thai]\nDescription:", " A serves Thai food."),
    GenerationExample("name[Bo]\nDescription:", " Bo."),
    GenerationExample("name[Cafe Zed], area[riverside]\nDescription:", " Cafe Zed is by the river."),
]
# Small enough that the tiny models' logits (|logit| up to ~1) are visibly bent by the cap.
SOFTCAP = 0.5
COMMON = dict(  # the sizes of tests/tiny.py
    vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
)


def _build(model_class, config):
    return model_class(config).eval()  # transformers' default attention: sdpa where the model has it


def _seeded(build):
    def seeded(seed: int = 0):
        torch.manual_seed(seed)
        return build()

    seeded.__name__ = build.__name__
    return seeded


@_seeded
def tiny_mistral():
    return _build(MistralForCausalLM, MistralConfig(**COMMON, sliding_window=None))


@_seeded
def tiny_qwen2():
    return _build(Qwen2ForCausalLM, Qwen2Config(**COMMON))


@_seeded
def tiny_qwen3():
    return _build(Qwen3ForCausalLM, Qwen3Config(**COMMON, head_dim=HIDDEN // 4))


@_seeded
def tiny_gemma2_softcapped():
    config = Gemma2Config(
        **COMMON, head_dim=HIDDEN // 4, query_pre_attn_scalar=HIDDEN // 4, sliding_window=64,
        final_logit_softcapping=SOFTCAP, attn_logit_softcapping=None,
    )
    return _build(Gemma2ForCausalLM, config)


@_seeded
def tiny_granite_scaled():
    return _build(GraniteForCausalLM, GraniteConfig(**COMMON, logits_scaling=0.25))


@_seeded
def tiny_cohere_scaled():
    return _build(CohereForCausalLM, CohereConfig(**COMMON, logit_scale=4.0))


@_seeded
def tiny_llama_with_logit_scale():
    """A Llama config that carries another architecture's logit attribute: the head path refuses it
    (Llama's forward ignores it today; a fork that reads it would be silently wrong)."""
    return _build(LlamaForCausalLM, LlamaConfig(**COMMON, logit_scale=4.0))


@_seeded
def tiny_llama_with_softcapping():
    return _build(LlamaForCausalLM, LlamaConfig(**COMMON, final_logit_softcapping=SOFTCAP))


PLAIN = {"llama": tiny_llama, "gpt2": tiny_gpt2, "mistral": tiny_mistral, "qwen2": tiny_qwen2, "qwen3": tiny_qwen3}
TRANSFORMED = {
    "gemma2-softcap": tiny_gemma2_softcapped,
    "granite-logits_scaling": tiny_granite_scaled,
    "cohere-logit_scale": tiny_cohere_scaled,
}
REFUSED = {"llama-logit_scale": tiny_llama_with_logit_scale, "llama-final_logit_softcapping": tiny_llama_with_softcapping}
ALL = {**PLAIN, **TRANSFORMED, **REFUSED}


def padded_batch():
    """Right-padded rows whose prompts are masked to -100 (as training builds them)."""
    batch = collate(encode_generation(EXAMPLES, tiny_tokenizer(), 512)[0], 0)
    assert (batch["attention_mask"][:, -1] == 0).any() and (batch["labels"][:, 1] == IGNORE_INDEX).all()
    return batch


def target_tokens(batch):
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def own_loss(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_every_allowlisted_architecture_is_tested_here():
    assert set(PLAIN) == set(PLAIN_HEAD_MODELS)


@pytest.mark.parametrize("name", PLAIN)
def test_allowlisted_models_take_the_head_path(name):
    assert uses_plain_head(PLAIN[name]())


@pytest.mark.parametrize("name", {**TRANSFORMED, **REFUSED})
def test_models_that_transform_or_may_transform_their_logits_take_their_own_forward(name):
    assert not uses_plain_head(ALL[name]())


def test_a_subclass_of_an_allowlisted_class_takes_its_own_forward():
    class Custom(LlamaForCausalLM):  # e.g. remote code with model_type "llama" and another forward
        pass

    Custom.__name__ = "LlamaForCausalLM"
    assert not uses_plain_head(_build(Custom, LlamaConfig(**COMMON)))


@pytest.mark.parametrize("name", ALL)
def test_loss_and_lora_gradients_equal_the_models_own(name):
    batch = padded_batch()
    count = target_tokens(batch)
    losses, grads = [], []
    for loss_fn in (lambda m: causal_lm_loss(m, batch) / count, lambda m: own_loss(m, batch)):
        model = with_trained_looking_lora(ALL[name]())
        loss = loss_fn(model)
        loss.backward()
        losses.append(loss.item())
        grads.append(lora_grads(model))
    assert abs(losses[0] - losses[1]) <= 1e-5, losses
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for param in grads[0]:
        torch.testing.assert_close(grads[0][param], grads[1][param], atol=1e-6, rtol=1e-4, msg=param)


@pytest.mark.parametrize("name", TRANSFORMED)
def test_the_head_path_would_get_these_models_wrong(name, monkeypatch):
    # What the loss did before the allowlist: lm_head(hidden) without the model's logit transform.
    batch = padded_batch()
    model = ALL[name]()
    monkeypatch.setattr(loss_module, "uses_plain_head", lambda m: True)
    with torch.no_grad():
        head_only = causal_lm_loss(model, batch).item() / target_tokens(batch)
        assert abs(head_only - own_loss(model, batch).item()) > 1e-3


@pytest.mark.parametrize("name", ["llama", "gpt2", "granite-logits_scaling", "cohere-logit_scale"])
def test_a_packed_row_gives_the_sum_of_each_examples_own_loss(name):
    model = with_trained_looking_lora(ALL[name]())
    items = encode_generation(EXAMPLES, tiny_tokenizer(), 512)[0]
    with torch.no_grad():
        expected = sum(own_loss(model, collate([e], 0)).item() * target_tokens(collate([e], 0)) for e in items)
        packed = causal_lm_loss(model, collate_packed(items)).item()
    assert abs(packed - expected) <= 1e-5 * expected


def test_a_packed_row_refuses_a_model_without_sdpa_on_its_own_forward_too():
    model = tiny_gemma2_softcapped()  # Gemma 2 has eager attention only in transformers 5
    with pytest.raises(DataError, match="'pack' needs the model's attention"):
        causal_lm_loss(model, collate_packed(encode_generation(EXAMPLES, tiny_tokenizer(), 512)[0]))
