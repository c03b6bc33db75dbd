"""train.batching: pack — random batches joined into one unpadded row, each example still on its own."""

from types import SimpleNamespace

import pytest
import torch
from tiny import tiny_gpt2, tiny_llama, tiny_tokenizer, with_trained_looking_lora

import lorafit.train.loss as loss_module
from lorafit.data.batches import (
    IGNORE_INDEX,
    Encoded,
    batch_order,
    collate,
    collate_packed,
    encode_generation,
    iterate_batches,
    resolve_batching,
)
from lorafit.errors import DataError
from lorafit.fast.attention import PackedAttention
from lorafit.recipe.schema import TrainConfig
from lorafit.tasks.types import GenerationExample
from lorafit.train.loop import fit
from lorafit.train.loss import causal_lm_loss
from lorafit.train.setup import prepare_data

EXAMPLES = [
    GenerationExample("name[A], food[Thai]\nDescription:", " A serves Thai food."),
    GenerationExample("name[Bo]\nDescription:", " Bo."),
    GenerationExample("name[Cafe Zed], area[riverside], rating[high]\nDescription:", " Cafe Zed is highly rated."),
    GenerationExample("x\nDescription:", " Some words here"),
]


def encoded_examples():
    return encode_generation(EXAMPLES, tiny_tokenizer(), 512)[0]


def test_a_packed_row_restarts_positions_and_masks_each_first_label():
    items = encoded_examples()
    batch = collate_packed(items)
    lengths = [len(e) for e in items]
    assert batch["input_ids"].shape == (1, sum(lengths)) and batch["attention_mask"].all()
    assert batch["segment_lengths"].tolist() == lengths
    assert batch["input_ids"][0].tolist() == [t for e in items for t in e.input_ids]
    start = 0
    for e in items:
        assert batch["position_ids"][0, start : start + len(e)].tolist() == list(range(len(e)))
        assert batch["labels"][0, start].item() == IGNORE_INDEX
        assert batch["labels"][0, start + 1 : start + len(e)].tolist() == list(e.labels[1:])
        start += len(e)


def test_pack_batches_hold_the_same_examples_as_pad_batches():
    lengths = [(i * 37) % 101 + 1 for i in range(100)]
    assert batch_order(lengths, 8, seed=3, epoch=1, mode="pack") == batch_order(lengths, 8, seed=3, epoch=1, mode="pad")
    packed = list(iterate_batches(encoded_examples(), 2, 0, seed=0, epoch=0, mode="pack"))
    assert [b["input_ids"].shape[0] for b in packed] == [1, 1] and all("segment_lengths" in b for b in packed)


def backbone_hidden(model, batch):
    return loss_module._backbone(model)(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
    ).last_hidden_state


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("split_attention", [True, False], ids=["per-example-attention", "transformers-mask"])
def test_each_packed_example_sees_only_itself(build, split_attention):
    # Both paths isolate the examples: transformers' block mask from the restarting position_ids, and
    # PackedAttention's per-example attention calls (which skip the masked blocks).
    model = build()
    items = encoded_examples()
    batch = collate_packed(items)
    with torch.no_grad():
        if split_attention:
            with PackedAttention(batch["segment_lengths"].tolist()):
                packed = backbone_hidden(model, batch)
        else:
            packed = backbone_hidden(model, batch)
        start = 0
        for e in items:
            alone = loss_module._backbone(model)(input_ids=torch.tensor([e.input_ids]), use_cache=False)
            torch.testing.assert_close(packed[:, start : start + len(e)], alone.last_hidden_state, atol=1e-5, rtol=1e-5)
            start += len(e)


def assert_packed_equals_one_by_one(model, items, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """The loss of `items` packed into one row, and its gradients, equal the sum over the examples alone."""
    one_by_one = [causal_lm_loss(model, collate([e], 0)) for e in items]
    sum(one_by_one).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    packed = causal_lm_loss(model, collate_packed(items))
    packed.backward()
    total = sum(x.item() for x in one_by_one)
    assert abs(packed.item() - total) <= 1e-5 * total
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, expected[name], atol=atol, rtol=rtol)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_packed_loss_and_gradients_equal_the_examples_one_by_one(build):
    assert_packed_equals_one_by_one(with_trained_looking_lora(build()), encoded_examples())


def test_packed_attention_refuses_a_row_of_another_length():
    q = torch.randn(1, 2, 5, 4)
    with PackedAttention([2, 2]), pytest.raises(ValueError, match="sequence length 5"):
        torch.nn.functional.scaled_dot_product_attention(q, q, q)


def settings(batching: str) -> TrainConfig:
    return TrainConfig(
        batch_size=3, grad_accum=2, lr=1e-2, weight_decay=0.0, warmup_steps=0, schedule="constant",
        max_grad_norm=1.0, batching=batching, epochs=1, max_steps=None, log_every=1, eval_every=0,
        save_every=0,
    )


def test_fit_with_pack_follows_fit_with_pad_step_for_step():
    # Same batches (pad order), same loss per step, same trained weights: packing only drops padding.
    items = encode_generation(EXAMPLES * 3, tiny_tokenizer(), 512)[0]
    runs = {}
    for mode in ("pad", "pack"):
        model = with_trained_looking_lora(tiny_llama())
        losses = []
        fit(model, items, [], settings(mode), seed=0, precision="fp32", loss_fn=causal_lm_loss, pad_id=0,
            on_log=lambda r, losses=losses: losses.append(r["loss"]) if "loss" in r else None)
        runs[mode] = (losses, {n: p.detach() for n, p in model.named_parameters() if p.requires_grad})
    assert len(runs["pack"][0]) == 2
    assert runs["pack"][0] == pytest.approx(runs["pad"][0], rel=1e-5)
    for name, value in runs["pad"][1].items():
        torch.testing.assert_close(runs["pack"][1][name], value, atol=1e-5, rtol=1e-4)


def test_pack_is_refused_for_classification():
    with pytest.raises(DataError, match="train.batching: 'pack'.*classification"):
        collate_packed([Encoded(input_ids=(1, 5, 6), target=1)])
    recipe = SimpleNamespace(train=SimpleNamespace(batching="pack"))
    with pytest.raises(DataError, match="train.batching: 'pack'.*task sst2 is classification"):
        prepare_data(recipe, SimpleNamespace(name="sst2", kind="classification"), tokenizer=None)


def test_auto_packs_causal_lms_and_buckets_classifiers():
    assert resolve_batching("auto", "generation") == "pack"
    assert resolve_batching("auto", "classification") == "bucket"
    assert [resolve_batching(m, "generation") for m in ("bucket", "pad", "pack")] == ["bucket", "pad", "pack"]


def test_pack_refuses_a_model_whose_attention_bypasses_sdpa():
    model = tiny_llama()
    model.set_attn_implementation("eager")  # would attend across the examples of the row
    with pytest.raises(DataError, match="'pack' needs the model's attention .* scaled_dot_product_attention"):
        causal_lm_loss(model, collate_packed(encoded_examples()))
