"""fit's bookkeeping and the decoding flags it passes: examples_seen counts examples (a packed row
counts the examples joined in it), and greedy decoding passes no beam-search-only flags."""

import logging

import pytest
import torch
from tiny import tiny_llama, tiny_tokenizer, with_trained_looking_lora

from lorafit.data.batches import batch_order, encode_generation
from lorafit.eval.generate import generate, search_arguments
from lorafit.recipe.schema import EvalConfig, TrainConfig
from lorafit.tasks.types import GenerationExample
from lorafit.train.loop import fit
from lorafit.train.loss import causal_lm_loss

EXAMPLES = [GenerationExample(prompt=f"item {i}:", completion=f" answer {i % 7}") for i in range(20)]


@pytest.mark.parametrize("batching", ["pack", "pad", "bucket"])
def test_examples_seen_counts_examples_not_batches(batching):
    # 5 steps x grad_accum 2 x batch 3 = 30 examples (the 20 examples once, then 10 of the next epoch).
    encoded = encode_generation(EXAMPLES, tiny_tokenizer(), 64)[0]
    config = TrainConfig(batch_size=3, grad_accum=2, max_steps=5, lr=1e-3, batching=batching, log_every=100)
    result = fit(with_trained_looking_lora(tiny_llama()), encoded, [], config, seed=0, precision="fp32",
                 loss_fn=causal_lm_loss, pad_id=0)
    # 10 batches: all 7 of epoch 0 (six of 3 examples, one of 2), then the first 3 of epoch 1.
    lengths = [len(e) for e in encoded]
    epoch1 = batch_order(lengths, 3, seed=0, epoch=1, mode=batching)
    assert result.state.step == 5
    assert result.state.epoch == 1 and result.state.batch_in_epoch == 3
    assert result.state.examples_seen == 20 + sum(len(b) for b in epoch1[:3]) > 10


def test_greedy_decoding_passes_no_beam_only_flags(caplog, capfd):
    assert search_arguments(EvalConfig(beam_size=1, length_penalty=0.9)) == {"num_beams": 1, "do_sample": False}
    beams = search_arguments(EvalConfig(beam_size=4, length_penalty=0.9))
    assert beams["num_beams"] == 4 and beams["length_penalty"] == 0.9 and beams["early_stopping"] is True
    with caplog.at_level(logging.WARNING):
        out = generate(tiny_llama(), tiny_tokenizer(), ["hello", "a longer prompt"],
                       EvalConfig(beam_size=1, length_penalty=0.9, max_new_tokens=3))
    assert len(out) == 2
    printed = caplog.text + "".join(capfd.readouterr())
    assert "may be ignored" not in printed and "length_penalty" not in printed


def test_fit_is_reproducible_from_its_seed():
    encoded = encode_generation(EXAMPLES, tiny_tokenizer(), 64)[0]
    config = TrainConfig(batch_size=4, max_steps=3, lr=1e-2, log_every=1)
    weights = []
    for _ in range(2):
        model = with_trained_looking_lora(tiny_llama())
        fit(model, encoded, [], config, seed=3, precision="fp32", loss_fn=causal_lm_loss, pad_id=0)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(weights[0], weights[1], atol=0, rtol=0)
