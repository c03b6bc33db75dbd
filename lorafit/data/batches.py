"""Tokenization, loss masks and batches: task examples in, padded tensors out.

Generation examples become `prompt_ids + completion_ids + [eos]` with labels -100 on the prompt, so
the loss covers the completion only; the rules live in data/encode.py, shared with the data cache.

Batch order is a pure function of (seed, epoch): a run that resumes at batch k of epoch e rebuilds the
same order and skips k batches. "bucket" batching groups examples of similar length (less padding),
"pad" keeps a plain shuffled order and pads to the longest row of each batch, as the usual collators do;
"pack" takes the same shuffled batches as "pad" and joins each into one unpadded row (causal LMs only).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from lorafit.data.encode import IGNORE_INDEX, encode_classification_batch, encode_generation_batch
from lorafit.errors import DataError
from lorafit.tasks.types import ClassificationExample, GenerationExample


@dataclass(frozen=True)
class Encoded:
    """One tokenized example. `labels` is None for classification (the label is `target`)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...] | None = None
    token_type_ids: tuple[int, ...] | None = None
    target: float | int | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodeStats:
    """What tokenization had to change, reported in the run log."""

    examples: int = 0
    truncated: int = 0
    skipped: int = 0
    completion_tokens: int = 0


def encode_generation(
    examples: Sequence[GenerationExample], tokenizer, max_length: int
) -> tuple[list[Encoded], EncodeStats]:
    """Tokenize prompt -> completion pairs with the prompt masked out of the loss (data/encode.py's rules).

    Too long: the prompt is cut from the left (its end, next to the completion, is kept); an example
    whose completion alone leaves fewer than 8 prompt tokens is skipped. Both are counted.
    """
    stats = EncodeStats()
    if not examples:  # e.g. no validation split; a fast tokenizer fails on an empty batch
        return [], stats
    columns = encode_generation_batch(tokenizer, [e.prompt for e in examples], [e.completion for e in examples], max_length)
    encoded = [Encoded(input_ids=tuple(ids), labels=tuple(labels)) for ids, labels, dropped
               in zip(columns["input_ids"], columns["labels"], columns["dropped"], strict=True) if not dropped]
    stats.skipped = sum(columns["dropped"])
    stats.truncated = sum(columns["truncated"])
    stats.completion_tokens = sum(sum(1 for t in e.labels if t != IGNORE_INDEX) for e in encoded)
    stats.examples = len(encoded)
    return encoded, stats


def encode_classification(
    examples: Sequence[ClassificationExample], tokenizer, max_length: int
) -> tuple[list[Encoded], EncodeStats]:
    """Tokenize sentences (or pairs) for a sequence-classification model, truncating to max_length."""
    stats = EncodeStats()
    if not examples:  # e.g. no validation split; a fast tokenizer fails on an empty batch
        return [], stats
    pairs = [e.text_pair or "" for e in examples] if any(e.text_pair is not None for e in examples) else None
    columns = encode_classification_batch(tokenizer, [e.text for e in examples], pairs, [e.label for e in examples],
                                          max_length)
    types = columns.get("token_type_ids")
    encoded = [Encoded(input_ids=tuple(ids), token_type_ids=tuple(types[i]) if types is not None else None,
                       target=target)
               for i, (ids, target) in enumerate(zip(columns["input_ids"], columns["target"], strict=True))]
    stats.truncated = sum(columns["truncated"])
    stats.examples = len(encoded)
    return encoded, stats


# bucket mode sorts by length within windows of this many batches: a wider window means less padding,
# a narrower one more varied batches (docs/performance.md measures both; FastOptions.bucket_window_batches).
BUCKET_WINDOW_BATCHES = 64


def resolve_batching(mode: str, task_kind: str, model=None) -> str:
    """`auto` -> pack for causal-LM (generation) tasks whose model can pack (`packing_blocker`), bucket
    otherwise and for classifiers; other modes as given. Without a `model`, as if it could pack.

    Why: on E2E/SmolLM2 both remove the padding, but bucketed batches of similar lengths trained to a
    higher held-out loss than random batches (docs/performance.md), and a packed row keeps the random
    batches; on SST-2 bucketing cost no loss, and classifiers cannot be packed here.
    """
    if mode == "auto":
        packs = task_kind == "generation" and (model is None or packing_blocker(model) is None)
        return "pack" if packs else "bucket"
    return mode


def packing_blocker(model) -> str | None:
    """Why `model` cannot train on packed rows, in a few words; None when it can (or cannot be told).

    A packed row keeps its examples apart only where attention runs through torch's
    scaled_dot_product_attention (fast/attention.py splits those calls example by example); models
    that compute attention themselves ("eager": Gemma 2's logit soft-capping, BLOOM's ALiBi) would let
    the examples of a row see each other. Layers other than full or sliding-window attention cannot
    either (their masks are not per example)."""
    config = getattr(getattr(model, "module", model), "config", None)  # DDP wraps the model in .module
    implementation = getattr(config, "_attn_implementation", None)
    if implementation is not None and implementation != "sdpa":
        return f"{config.model_type} attention is {implementation!r}, not torch's scaled_dot_product_attention"
    # Full and sliding-window attention keep to one example per block of the row's mask; chunked attention
    # (Llama 4) cuts chunks from the row's start, not from each example's.
    kinds = sorted(set(getattr(config, "layer_types", None) or ()) - {"full_attention", "sliding_attention"})
    if kinds:
        return f"{config.model_type} has {', '.join(kinds)} layers"
    return None


def describe_batching(mode: str, task_kind: str, model) -> str:
    """The batching a run uses, and why when `auto` could not pack a causal LM (the log's data line)."""
    chosen = resolve_batching(mode, task_kind, model)
    if mode == "auto" and task_kind == "generation" and chosen != "pack":
        return f"{chosen} (auto; cannot pack: {packing_blocker(model)})"
    return chosen


def batch_order(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, mode: str, window: int = BUCKET_WINDOW_BATCHES
) -> list[list[int]]:
    """Indices of each batch for one epoch; deterministic in (seed, epoch).

    bucket: shuffle, cut into windows of `window` batches, sort each window by length,
    cut into batches, then shuffle the batches, so every batch holds similar lengths but the order
    stays random. pad and pack: shuffle and cut (pack then joins each batch into one row).
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if mode == "bucket":
        span = batch_size * window
        sorted_order = []
        for start in range(0, len(order), span):
            sorted_order += sorted(order[start : start + span], key=lambda i: lengths[i])
        order = sorted_order
    elif mode not in ("pad", "pack"):
        raise DataError(f"train.batching: {mode!r} is not available; choose 'bucket', 'pad' or 'pack'")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if mode == "bucket":
        rng.shuffle(batches)
    return batches


def collate(items: Sequence[Encoded], pad_id: int, pad_to_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad a list of examples to the longest one (rounded up to `pad_to_multiple`, an experiment knob):
    input_ids/attention_mask (B, T) and labels.

    Generation: labels (B, T) with IGNORE_INDEX on prompt and padding. Classification: labels (B,)
    as int64, or float32 for regression targets.
    """
    width = -(-max(len(item) for item in items) // pad_to_multiple) * pad_to_multiple
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item)] = torch.tensor(item.input_ids)
        mask[row, : len(item)] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if items[0].labels is not None:
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            labels[row, : len(item)] = torch.tensor(item.labels)
        batch["labels"] = labels
    else:
        if items[0].token_type_ids is not None:
            types = torch.zeros((len(items), width), dtype=torch.long)
            for row, item in enumerate(items):
                types[row, : len(item)] = torch.tensor(item.token_type_ids)
            batch["token_type_ids"] = types
        is_float = isinstance(items[0].target, float)
        batch["labels"] = torch.tensor([item.target for item in items], dtype=torch.float32 if is_float else torch.long)
    return batch


def collate_packed(items: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    """Join generation examples end to end into one row, no padding: (1, T) with T = total length.

    position_ids restart at 0 for each example and `segment_lengths` (n,) holds the example lengths,
    so the model sees each example as if alone (`attention.PackedAttention` keeps attention inside
    each example). The label of each example's first token is -100: the position before it belongs
    to the previous example and must not learn to predict it. attention_mask is all ones: the real
    tokens the loop counts.
    """
    if items[0].labels is None:
        raise DataError("train.batching: 'pack' joins causal-LM examples; use 'bucket' or 'pad' for classification")
    ids = torch.tensor([t for item in items for t in item.input_ids], dtype=torch.long).unsqueeze(0)
    positions = torch.cat([torch.arange(len(item)) for item in items]).unsqueeze(0)
    labels = torch.tensor([t for item in items for t in (IGNORE_INDEX, *item.labels[1:])], dtype=torch.long)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "position_ids": positions,
        "labels": labels.unsqueeze(0),
        "segment_lengths": torch.tensor([len(item) for item in items], dtype=torch.long),
    }


def rank_shard(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """Rank `rank`'s contiguous part of a global batch of `world` ranks: sizes differ by at most one."""
    n = len(indices)
    return list(indices[rank * n // world : (rank + 1) * n // world])


def sharded_batch_order(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, mode: str, window: int = BUCKET_WINDOW_BATCHES,
    shard: tuple[int, int] = (0, 1),
) -> list[list[int]]:
    """Rank `shard[0]` of `shard[1]`: its part of each global batch of batch_size x ranks examples.

    The global batches are `batch_order`'s for batch_size x ranks, so N ranks with batch b see, step
    by step, the very examples one process with batch N*b sees (the same seeded, epoch-dependent order;
    bucketing and packing as usual, within each rank's part). A last global batch with fewer examples
    than ranks is dropped on every rank (at most ranks - 1 examples an epoch), so every rank reads the
    same number of batches and runs the same number of optimizer steps. One rank: `batch_order`.
    """
    rank, world = shard
    batches = batch_order(lengths, batch_size * world, seed, epoch, mode, window)
    return [rank_shard(b, rank, world) for b in batches if len(b) >= world]


def batches_per_epoch(num_examples: int, batch_size: int, world: int = 1) -> int:
    """How many batches each rank reads in an epoch (`sharded_batch_order`)."""
    full, tail = divmod(num_examples, batch_size * world)
    return full + (1 if tail >= world else 0)


def row_lengths(encoded: Sequence[Encoded]) -> Sequence[int]:
    """Each example's token count: a lazy sequence's `lengths` column (data/lazy.py: no row is read), else len()."""
    lengths = getattr(encoded, "lengths", None)
    return lengths if lengths is not None else [len(e) for e in encoded]


def iterate_batches(
    encoded: Sequence[Encoded], batch_size: int, pad_id: int, *, seed: int, epoch: int, mode: str, skip: int = 0,
    window: int = BUCKET_WINDOW_BATCHES, pad_to_multiple: int = 1, shard: tuple[int, int] = (0, 1),
) -> Iterator[dict[str, torch.Tensor]]:
    """Collated batches of one epoch, starting after `skip` batches (for resuming); `shard` (rank,
    ranks): this rank's part of every global batch (`sharded_batch_order`)."""
    lengths = row_lengths(encoded)
    for indices in sharded_batch_order(lengths, batch_size, seed, epoch, mode, window, shard)[skip:]:
        items = [encoded[i] for i in indices]
        yield collate_packed(items) if mode == "pack" else collate(items, pad_id, pad_to_multiple)


def length_sorted_batches(
    encoded: Sequence[Encoded], batch_size: int, pad_id: int
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(indices, batch) pairs over all examples sorted by length, for evaluation: little padding,
    and the indices put results back in the original order."""
    lengths = row_lengths(encoded)
    order = sorted(range(len(encoded)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield rows, collate([encoded[i] for i in rows], pad_id)


def count_target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens the loss is computed on: completion tokens (shifted), or one per row for classification."""
    labels = batch["labels"]
    if labels.dim() == 2:
        return int((labels[:, 1:] != IGNORE_INDEX).sum())
    return labels.shape[0]


def count_examples(batch: dict[str, torch.Tensor]) -> int:
    """Examples in a batch: its rows, or for a packed row (collate_packed) the examples joined in it."""
    if "segment_lengths" in batch:
        return int(batch["segment_lengths"].numel())
    return int(batch["input_ids"].shape[0])


def subsample(items: list, limit: int | None, seed: int) -> list:
    """At most `limit` items, chosen with a fixed seed (order preserved)."""
    if limit is None or limit >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]
