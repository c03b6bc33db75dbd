"""Chat conversations -> token ids with the loss on assistant tokens only, via the tokenizer's own template.

How the assistant spans are found (template-agnostic, no knowledge of any model's markers):

    full    = render(messages)                                  the whole conversation, as text
    before  = render(messages[:i], add_generation_prompt=True)  ends where assistant turn i's content starts
    through = render(messages[:i + 1])                          ends after turn i (its end-of-turn marker)

`before` and `through` must be prefixes of `full` (a template that renders a turn differently once more
turns follow cannot be masked this way: an error, not a silent wrong mask). The characters
`full[len(before) : len(through.rstrip())]` are assistant turn i: its content and its end-of-turn token,
not the newline after it. Tokens whose first character falls inside a span get their id as label; every
other token -100. The full text is tokenised once, without extra special tokens (the template writes
its own), with offsets (fast tokenizers) to map characters to tokens.

Every assistant turn of a multi-turn conversation is trained. Too long: cut from the right at
max_length; a conversation with no assistant token left is dropped (counted).
"""

from __future__ import annotations

from bisect import bisect_left

from lorafit.data.batches import IGNORE_INDEX
from lorafit.errors import DataError
from lorafit.tasks.types import EvalItem


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation as the tokenizer's chat template writes it (text, special tokens included)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def fast_renderer(tokenizer, sample: list[dict]):
    """`render`, calling the compiled jinja template directly (apply_chat_template's per-call checks cost more
    than the rendering at a million rows). Used only if it writes `sample` exactly as apply_chat_template does."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        template = _compile_jinja_template(tokenizer.chat_template)
        specials = dict(tokenizer.special_tokens_map)

        def direct(tok, messages, add_generation_prompt=False):
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **specials)

        for gen in (False, True):
            if direct(tokenizer, sample, gen) != render(tokenizer, sample, gen):
                return render
        return direct
    except Exception:  # noqa: BLE001 - a private helper of transformers: any trouble, use the public path
        return render


def check_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("data.format chat: the model's tokenizer has no chat template; use a chat/instruct model, "
                        "or the completion format")


def assistant_spans(tokenizer, messages: list[dict], render=render) -> tuple[str, list[tuple[int, int]]]:
    """(rendered conversation, [(start, end) character span of each assistant turn])."""
    full = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        try:
            before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        except Exception as e:  # noqa: BLE001 - jinja raises what the template author wrote
            raise DataError(f"the chat template cannot render the conversation before message {i + 1}: {e}") from None
        # the last turn ends where the conversation does: no second rendering (a third of the cost at scale)
        through = full.rstrip() if i == len(messages) - 1 else render(tokenizer, messages[: i + 1]).rstrip()
        if not (full.startswith(before) and full.startswith(through) and len(through) > len(before)):
            raise DataError(
                "the tokenizer's chat template renders a conversation differently as it grows (message "
                f"{i + 1}), so assistant tokens cannot be located; use the completion format instead"
            )
        spans.append((len(before), len(through)))
    return full, spans


def mask_from_offsets(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Labels: the id where the token starts inside an assistant span, else IGNORE_INDEX.

    Token starts increase along the text, so each span is one slice, found by bisection."""
    starts = [start for start, _ in offsets]
    labels = [IGNORE_INDEX] * len(ids)
    for first, last in spans:
        a, b = bisect_left(starts, first), bisect_left(starts, last)
        labels[a:b] = ids[a:b]
    return labels


def _by_prefixes(tokenizer, full: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Slow tokenizers (no offsets): tokenise each prefix and diff the token ids."""
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        a = len(tokenizer(full[:start], add_special_tokens=False)["input_ids"])
        b = len(tokenizer(full[:end], add_special_tokens=False)["input_ids"])
        labels[a:b] = ids[a:b]
    return ids, labels


def _spans_of(tokenizer, messages: list[dict], renderer, where: str | None):
    """`assistant_spans`; a conversation the template refuses (e.g. "roles must alternate user/assistant",
    raised by the template itself) is a one-line DataError naming the row."""
    try:
        return assistant_spans(tokenizer, messages, renderer)
    except DataError as e:
        raise DataError(f"{where}: {e}" if where else str(e)) from None
    except Exception as e:  # noqa: BLE001 - jinja raises whatever the template author wrote
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{where + ': ' if where else ''}the chat template cannot render this conversation: {reason}") from None


def encode_chat_batch(tokenizer, conversations: list[list[dict]], max_length: int,
                      where: list[str] | None = None) -> dict[str, list]:
    """Columns input_ids, labels, length, truncated, dropped for a batch of conversations; `where` names each
    conversation's source row for errors ("chats.jsonl line 12")."""
    renderer = fast_renderer(tokenizer, conversations[0]) if conversations else render
    where = where or [None] * len(conversations)
    rendered = [_spans_of(tokenizer, messages, renderer, at) for messages, at in zip(conversations, where, strict=True)]
    texts = [full for full, _ in rendered]
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        pairs = [(ids, mask_from_offsets(ids, offsets, spans)) for ids, offsets, (_, spans)
                 in zip(enc["input_ids"], enc["offset_mapping"], rendered, strict=True)]
    else:
        pairs = [_by_prefixes(tokenizer, full, spans) for full, spans in rendered]
    out: dict[str, list] = {"input_ids": [], "labels": [], "length": [], "truncated": [], "dropped": []}
    for ids, labels in pairs:
        truncated = len(ids) > max_length
        ids, labels = ids[:max_length], labels[:max_length]
        # labels[0] never counts (nothing predicts the first token): an example needs a later assistant token
        dropped = all(t == IGNORE_INDEX for t in labels[1:])
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["length"].append(len(ids))
        out["truncated"].append(truncated)
        out["dropped"].append(1 if dropped else 0)
    return out


def eval_item(messages: list[dict]) -> EvalItem:
    """An eval input from a conversation: everything before its last assistant turn; that turn is the reference.

    `prompt` is a readable rendering for display; `meta["messages"]` is what `eval_prompts` renders with the
    model's own template."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    context = messages[:last]
    shown = "\n".join(f"{m['role']}: {m['content']}" for m in context)
    return EvalItem(shown, (messages[last]["content"],), {"messages": context})


def eval_prompts(items, tokenizer) -> list[str]:
    """The text a model is given for each eval item: a chat item rendered with the generation prompt
    (minus a leading BOS the tokenizer adds again), anything else its prompt as it is."""
    prompts = []
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [tokenizer.bos_token_id]
    for item in items:
        messages = getattr(item, "meta", {}).get("messages") if hasattr(item, "meta") else None
        if messages is None:
            prompts.append(item.prompt)
            continue
        text = render(tokenizer, messages, add_generation_prompt=True)
        prompts.append(text[len(bos):] if adds_bos and text.startswith(bos) else text)
    return prompts


def plain_decoding(items, settings):
    """Decoding settings for `items`: chat items are already in the template, so eval.chat_template must not
    wrap them again."""
    from dataclasses import replace

    if settings.chat_template and any(getattr(item, "meta", {}).get("messages") is not None for item in items):
        return replace(settings, chat_template=False)
    return settings
