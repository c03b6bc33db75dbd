"""The one tokeniser of training examples, column-wise: what `lorafit train` learns from, token by token.

    encode_generation_batch(tokenizer, prompts, completions, max_length)    -> input_ids, labels (prompt -100), ...
    encode_classification_batch(tokenizer, texts, pairs, labels, max_length) -> input_ids, target, ...

Used by the data cache (data/cache.py, through `datasets.map`) and by the in-memory lists of
data/batches.py (`encode_generation`, `encode_classification`: evaluation, tests), so both apply the same
rules. Prompt and completion are tokenised separately: generation later feeds exactly `prompt_ids`, so
training and inference see the same token boundary.
"""

from __future__ import annotations

IGNORE_INDEX = -100  # label value that cross_entropy skips


def encode_generation_batch(tokenizer, prompts: list[str], completions: list[str], max_length: int) -> dict:
    """Columns input_ids, labels, length, truncated, dropped: `prompt_ids + completion_ids + [eos]`, the prompt
    masked (-100). Too long: the prompt is cut from the left (its end, next to the completion, is kept); a
    completion leaving fewer than 8 prompt tokens is dropped (kept as an empty row, flagged, so row indices
    stay aligned with the source)."""
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    out: dict[str, list] = {"input_ids": [], "labels": [], "length": [], "truncated": [], "dropped": []}
    for prompt, completion in zip(prompt_ids, completion_ids, strict=True):
        completion = list(completion) + [eos]
        room = max_length - len(completion)
        dropped = room < min(8, len(prompt))
        truncated = not dropped and len(prompt) > room
        if truncated:
            prompt = prompt[len(prompt) - room :]
        ids = [] if dropped else list(prompt) + completion
        out["input_ids"].append(ids)
        out["labels"].append([] if dropped else [IGNORE_INDEX] * len(prompt) + completion)
        out["length"].append(len(ids))
        out["truncated"].append(truncated)
        out["dropped"].append(1 if dropped else 0)
    return out


def encode_classification_batch(tokenizer, texts: list[str], pairs: list | None, labels: list, max_length: int) -> dict:
    """Columns input_ids, target, length, truncated, dropped (+ token_type_ids): sentences or pairs, with the
    tokenizer's own truncation strategy for the rows longer than max_length only."""
    batch = tokenizer(texts, pairs, truncation=False, verbose=False)
    long_rows = [i for i, ids in enumerate(batch["input_ids"]) if len(ids) > max_length]
    if long_rows:
        cut = tokenizer([texts[i] for i in long_rows], [pairs[i] for i in long_rows] if pairs else None,
                        truncation=True, max_length=max_length)
        for j, i in enumerate(long_rows):
            for key in batch:
                batch[key][i] = cut[key][j]
    out = {"input_ids": list(batch["input_ids"]), "target": list(labels),
           "length": [len(ids) for ids in batch["input_ids"]],
           "truncated": [i in set(long_rows) for i in range(len(texts))], "dropped": [0] * len(texts)}
    if batch.get("token_type_ids") is not None:
        out["token_type_ids"] = list(batch["token_type_ids"])
    return out
