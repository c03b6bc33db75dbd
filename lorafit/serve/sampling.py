"""A request's prompt and sampling settings, checked at the boundary: every value a client controls is
refused here with a 400 naming its field, so nothing malformed reaches the engine.

    limits = Limits(max_model_len=2048, vocab_size=49152)
    ids = completion_prompt_ids(tokenizer, body, limits)     # or chat_prompt_ids(tokenizer, body, name)
    settings = to_sampling(body, ids, limits, chat=False)    # -> engine.Sampling

`to_sampling` bounds prompt + max_tokens by `max_model_len` (chat's default max_tokens is what is left
of it) and turns a temperature below GREEDY_BELOW into greedy decoding, as vLLM does: dividing logits
by 1e-40 overflows to inf and sampling from it fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorafit.adapters.decode import GREEDY_BELOW
from lorafit.serve.engine import Sampling
from lorafit.serve.protocol import APIError, ChatRequest, CompletionRequest, _Sampling


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: `max_model_len` tokens of prompt + completion, token ids below
    `vocab_size` (None: the model does not say; then only non-negative ids under 2**31 pass)."""

    max_model_len: int
    vocab_size: int | None = None


def check_token_ids(ids: list[int], limits: Limits) -> list[int]:
    """`ids` if every one is a token of the model; else 400 naming `prompt`."""
    top = limits.vocab_size if limits.vocab_size is not None else 2**31
    bad = next((t for t in ids if not 0 <= t < top), None)
    if bad is not None:
        raise APIError(400, f"prompt: token ids must be in [0, {top}), got {bad}", param="prompt")
    return list(ids)


def completion_prompt_ids(tokenizer, body: CompletionRequest, limits: Limits) -> list[int]:
    """The prompt's token ids: a string (tokenised with special tokens, as the model expects), a list
    of one string, or token ids (checked against the vocabulary)."""
    if body.echo:
        raise APIError(400, "echo is not supported", param="echo")
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise APIError(400, f"prompt: one prompt per request, got {len(prompt)}", param="prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    return check_token_ids(prompt, limits)


def chat_prompt_ids(tokenizer, body: ChatRequest, model_name: str) -> list[int]:
    """The messages through the tokenizer's chat template, ending with the assistant's turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise APIError(400, f"model {model_name!r} has no chat template; use /v1/completions",
                       param="messages", code="no_chat_template")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - a template that rejects these messages (roles, order)
        raise APIError(400, f"messages: the chat template rejected them ({str(e).splitlines()[0]})",
                       param="messages") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def to_sampling(body: _Sampling, prompt_ids: list[int], limits: Limits, *, chat: bool) -> Sampling:
    """The engine's settings for this request; 400 naming the field that is out of bounds."""
    body.check()
    if not prompt_ids:
        raise APIError(400, "the prompt is empty (no tokens)", param="prompt")
    context, n = limits.max_model_len, len(prompt_ids)
    max_tokens = body.max_tokens
    if max_tokens is None:  # chat's default: what is left of the context (at least 1, checked below)
        max_tokens = context - n if chat else 16
    if n + max_tokens > context or max_tokens < 1:
        raise APIError(400, f"This model's maximum context length is {context} tokens. However, you "
                            f"requested {n + max_tokens} tokens ({n} in the prompt, {max_tokens} in the "
                            f"completion). Please reduce the prompt or max_tokens.",
                       param="max_tokens", code="context_length_exceeded")
    temperature = 0.0 if body.temperature < GREEDY_BELOW else body.temperature
    return Sampling(max_tokens, temperature, body.top_p, body.seed)
