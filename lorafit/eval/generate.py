"""Batched generation for causal LMs: greedy or beam search, prompts left-padded.

Prompts are tokenized exactly as in training (`tokenizer(prompt)` with its special tokens), so the
model continues from the same token boundary it learned. Decoder-only models need LEFT padding in a
batch: every row's last prompt token then sits at the same position, where generation starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from lorafit.errors import ModelError
from lorafit.recipe.schema import EvalConfig

# The `eval:` keys (and `lorafit eval` flags of the same names) that decoding reads.
DECODING_KEYS = ("batch_size", "beam_size", "length_penalty", "no_repeat_ngram_size", "max_new_tokens", "chat_template")


def decoding_settings(settings: EvalConfig) -> dict:
    """The decoding keys of `settings`, for results files."""
    return {key: getattr(settings, key) for key in DECODING_KEYS}


def search_arguments(settings: EvalConfig) -> dict:
    """model.generate's search arguments: the beam-only ones only with beams, so transformers does not
    warn that flags "may be ignored" on greedy decoding."""
    if settings.beam_size == 1:
        return {"num_beams": 1, "do_sample": False}
    return {"num_beams": settings.beam_size, "do_sample": False, "length_penalty": settings.length_penalty,
            "early_stopping": True}


def left_padded(prompt_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask (B, T), each row right-aligned."""
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, p in enumerate(prompt_ids):
        ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask


def first_line(text: str) -> str:
    """Keep the first non-empty line: our generation tasks answer in one line, and a base model that
    keeps talking after it should not be scored on the chatter."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    settings: EvalConfig,
    *,
    on_batch: Callable[[int], None] = lambda n: None,
    postprocess: Callable[[str], str] = first_line,
    shard: tuple[int, int] = (0, 1),
) -> list[str | None]:
    """Generate one completion per prompt, in the prompts' order.

    Prompts are processed longest-first in batches of `settings.batch_size` (less padding), and
    `on_batch(n)` is called after each batch with the number of prompts done in it. `shard` (rank,
    ranks): only batches i with i % ranks == rank, the others' outputs None (the very batches one
    process makes, so the outputs are the same).
    """
    model.eval()
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if settings.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ModelError("eval.chat_template: this model's tokenizer has no chat template; leave it off")
    if settings.chat_template:
        # Zero-shot instruct models answer best in their chat format; the template adds its own
        # special tokens, so the tokenizer must not add more.
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p.strip()}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    rank, world = shard
    outputs: list[str | None] = [""] * len(prompts) if world == 1 else [None] * len(prompts)
    for start in range(0, len(order), settings.batch_size):
        if (start // settings.batch_size) % world != rank:
            continue
        rows = order[start : start + settings.batch_size]
        ids, mask = left_padded([encoded[i] for i in rows], pad_id)
        generated = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=settings.max_new_tokens,
            no_repeat_ngram_size=settings.no_repeat_ngram_size,
            **search_arguments(settings),
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, ids.shape[1] :]
        for row, tokens in zip(rows, new_tokens, strict=True):
            outputs[row] = postprocess(tokenizer.decode(tokens, skip_special_tokens=True))
        on_batch(len(rows))
    return outputs
