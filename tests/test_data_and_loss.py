"""Tokenization masks, batching, and the exactness of the fast loss paths."""

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_bert, tiny_gpt2, tiny_llama, tiny_tokenizer, with_trained_looking_lora

from lorafit.data.batches import (
    IGNORE_INDEX,
    batch_order,
    collate,
    count_target_tokens,
    encode_classification,
    encode_generation,
    iterate_batches,
)
from lorafit.tasks.types import ClassificationExample, GenerationExample
from lorafit.train import loss as loss_module
from lorafit.train.loss import (
    causal_lm_loss,
    causal_lm_loss_full_logits,
    classification_loss,
    head_cross_entropy,
)

EXAMPLES = [
    GenerationExample("name[A], food[Thai]\nDescription:", " A serves Thai food."),
    GenerationExample("name[Bo]\nDescription:", " Bo."),
    GenerationExample("name[Cafe Zed], area[riverside], rating[high], price[cheap]\nDescription:", " Cafe Zed is a cheap, highly rated place by the river."),
    GenerationExample("x\nDescription:", " Some words here"),
]


def test_prompt_is_masked_and_completion_ends_with_eos():
    tok = tiny_tokenizer()
    encoded, stats = encode_generation(EXAMPLES, tok, max_length=512)
    assert stats.examples == 4 and stats.truncated == 0 and stats.skipped == 0
    first = encoded[0]
    prompt_len = len(tok(EXAMPLES[0].prompt)["input_ids"])
    assert first.labels[:prompt_len] == (IGNORE_INDEX,) * prompt_len
    assert first.labels[prompt_len:] == first.input_ids[prompt_len:]
    assert first.input_ids[-1] == tok.eos_token_id
    assert tok.decode(first.input_ids[prompt_len:-1]) == EXAMPLES[0].completion


def test_long_prompts_are_cut_from_the_left_and_counted():
    tok = tiny_tokenizer()
    encoded, stats = encode_generation(EXAMPLES, tok, max_length=80)
    assert all(len(e) <= 80 for e in encoded)
    assert stats.truncated >= 1
    # The completion is kept whole; only the prompt's start is dropped.
    cut = encoded[2]
    completion = tok(EXAMPLES[2].completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert list(cut.input_ids[-len(completion):]) == completion
    encoded, stats = encode_generation(EXAMPLES, tok, max_length=20)
    assert stats.skipped >= 1 and stats.examples + stats.skipped == 4


def test_bucket_order_is_deterministic_covers_everything_and_groups_lengths():
    lengths = [(i * 37) % 101 + 1 for i in range(1000)]
    a = batch_order(lengths, 8, seed=3, epoch=0, mode="bucket")
    assert a == batch_order(lengths, 8, seed=3, epoch=0, mode="bucket")
    assert a != batch_order(lengths, 8, seed=3, epoch=1, mode="bucket")
    assert sorted(i for b in a for i in b) == list(range(1000))
    bucket_pad = sum(max(lengths[i] for i in b) * len(b) for b in a)
    plain = batch_order(lengths, 8, seed=3, epoch=0, mode="pad")
    plain_pad = sum(max(lengths[i] for i in b) * len(b) for b in plain)
    assert bucket_pad < 0.7 * plain_pad  # far fewer padded positions


def test_resume_skip_yields_the_remaining_batches():
    tok = tiny_tokenizer()
    encoded, _ = encode_generation(EXAMPLES * 5, tok, 512)
    full = list(iterate_batches(encoded, 3, 0, seed=1, epoch=2, mode="bucket"))
    rest = list(iterate_batches(encoded, 3, 0, seed=1, epoch=2, mode="bucket", skip=4))
    assert len(rest) == len(full) - 4
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(full[4:], rest, strict=True))


def per_example_losses(model, encoded, loss_fn):
    out = []
    for e in encoded:
        batch = collate([e], 0)
        out.append(loss_fn(model, batch).item())
    return out


def test_padded_batch_gives_the_same_per_example_loss_as_one_by_one():
    tok = tiny_tokenizer()
    encoded, _ = encode_generation(EXAMPLES, tok, 512)
    for build in (tiny_llama, tiny_gpt2):
        model = build()
        one_by_one = per_example_losses(model, encoded, causal_lm_loss)
        batch = collate(encoded, 0)
        with torch.no_grad():
            batched_rows = [
                causal_lm_loss(model, {k: v[i : i + 1] for k, v in batch.items()}).item() for i in range(len(encoded))
            ]
            whole = causal_lm_loss(model, batch).item()
        assert max(abs(a - b) for a, b in zip(one_by_one, batched_rows, strict=True)) <= 1e-5 * max(one_by_one)
        assert abs(whole - sum(one_by_one)) <= 1e-5 * sum(one_by_one)


def test_completion_only_head_matches_full_logits_loss_and_gradients():
    tok = tiny_tokenizer()
    encoded, _ = encode_generation(EXAMPLES, tok, 512)
    batch = collate(encoded, 0)
    for build in (tiny_llama, tiny_gpt2):
        grads = []
        losses = []
        for loss_fn in (causal_lm_loss, causal_lm_loss_full_logits):
            model = with_trained_looking_lora(build())
            loss = loss_fn(model, batch)
            loss.backward()
            losses.append(loss.item())
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        assert abs(losses[0] - losses[1]) <= 1e-5 * abs(losses[1])
        for name in grads[0]:
            assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4), name
    assert count_target_tokens(batch) == sum(len(tok(e.completion, add_special_tokens=False)["input_ids"]) + 1 for e in EXAMPLES)


@pytest.mark.parametrize("chunk", [3, 7, 1000])  # several chunks with a remainder, and one chunk
def test_chunked_head_matches_cross_entropy_loss_and_gradients(monkeypatch, chunk):
    monkeypatch.setattr(loss_module, "HEAD_CHUNK_ROWS", chunk)
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(17, 24, generator=g, dtype=torch.float64).float()
    weight = torch.randn(50, 24, generator=g) * 0.3
    targets = torch.randint(0, 50, (17,), generator=g)
    got, ref = {}, {}
    for out, fn in ((got, head_cross_entropy), (ref, lambda r, w, t: F.cross_entropy(r @ w.T, t, reduction="sum"))):
        r, w = rows.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = fn(r, w, targets)
        (loss * 0.37).backward()  # a scale, as the loop divides by the step's target tokens
        out.update(loss=loss.detach(), rows=r.grad, weight=w.grad)
    torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got["rows"], ref["rows"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got["weight"], ref["weight"], rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(head_cross_entropy(rows, weight, targets), ref["loss"], rtol=1e-6, atol=1e-5)


def test_chunked_head_under_bf16_autocast_matches_autocast_cross_entropy(monkeypatch):
    monkeypatch.setattr(loss_module, "HEAD_CHUNK_ROWS", 4)
    g = torch.Generator().manual_seed(1)
    rows, weight = torch.randn(10, 32, generator=g), torch.randn(64, 32, generator=g) * 0.2
    targets = torch.randint(0, 64, (10,), generator=g)
    grads = []
    for fn in (head_cross_entropy, lambda r, w, t: F.cross_entropy(F.linear(r, w).float(), t, reduction="sum")):
        r = rows.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(r, weight, targets)
        assert loss.dtype == torch.float32
        loss.backward()
        grads.append((loss.detach(), r.grad))
    assert grads[0][1].dtype == torch.float32
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-4)  # same bf16 logits, fp32 softmax
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=2e-2, atol=2e-3)  # bf16 matmul rounding


def test_full_fine_tuning_with_a_tied_head_gets_the_same_gradients(monkeypatch):
    monkeypatch.setattr(loss_module, "HEAD_CHUNK_ROWS", 5)
    tok = tiny_tokenizer()
    batch = collate(encode_generation(EXAMPLES, tok, 512)[0], 0)
    grads = []
    for loss_fn in (causal_lm_loss, causal_lm_loss_full_logits):
        model = tiny_gpt2()  # ties lm_head to the token embeddings
        assert model.lm_head.weight is model.transformer.wte.weight
        loss_fn(model, batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[1]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4, msg=name)


def test_classification_batches_and_loss():
    tok = tiny_tokenizer()
    examples = [ClassificationExample("good film", None, 1), ClassificationExample("bad, long film", None, 0)]
    encoded, stats = encode_classification(examples, tok, max_length=12)
    assert stats.truncated == 1 and [len(e) for e in encoded] == [10, 12]
    batch = collate(encoded, 0)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    model = tiny_bert(num_labels=2)
    loss = classification_loss(model, batch)
    expected = torch.nn.functional.cross_entropy(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"], reduction="sum")
    assert torch.allclose(loss, expected)

    regression = [ClassificationExample("a", "b", 3.5), ClassificationExample("c", "d", 1.0)]
    encoded, _ = encode_classification(regression, tok, max_length=16)
    batch = collate(encoded, 0)
    assert batch["labels"].dtype == torch.float32
    model = tiny_bert(num_labels=1)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    assert torch.allclose(classification_loss(model, batch), ((out - batch["labels"]) ** 2).sum())


def test_bucket_window_bounds_how_far_lengths_are_sorted():
    lengths = [(i * 37) % 101 + 1 for i in range(960)]
    spread = {}
    for window in (64, 2):
        batches = batch_order(lengths, 8, seed=3, epoch=0, mode="bucket", window=window)
        assert sorted(i for b in batches for i in b) == list(range(960))
        spread[window] = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread[2] > 3 * spread[64]  # a narrower window: more varied lengths within a batch


def test_pad_to_multiple_rounds_the_width_and_keeps_the_loss():
    tok = tiny_tokenizer()
    encoded, _ = encode_generation(EXAMPLES, tok, 512)
    model = tiny_llama()
    longest = max(len(e) for e in encoded)
    plain = collate(encoded, 0)
    rounded = collate(encoded, 0, pad_to_multiple=48)  # 128 -> 144 with these examples
    assert plain["input_ids"].shape[1] == longest
    assert rounded["input_ids"].shape[1] == -(-longest // 48) * 48 > longest
    assert int(rounded["attention_mask"].sum()) == int(plain["attention_mask"].sum())  # only pad added
    assert int((rounded["labels"] != IGNORE_INDEX).sum()) == count_target_tokens(plain)
    with torch.no_grad():
        a, b = causal_lm_loss(model, plain).item(), causal_lm_loss(model, rounded).item()
    assert abs(a - b) <= 1e-5 * abs(a)
