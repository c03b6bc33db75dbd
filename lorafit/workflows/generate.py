"""`lorafit generate`: many prompts, each with its own adapter (or none), on one base model.

    requests.jsonl -> read_requests (checked, all before any model loads) -> AdapterHost.load(base)
                   -> load_adapter(name, dir) for each --adapter NAME=DIR -> host.decode (mixed batches)
                   -> results.jsonl (input order)

A request line is a JSON object:

    {"prompt": "...", "adapter": "sql" | null, "max_new_tokens": 32, "temperature": 0.0, "top_p": 1.0,
     "seed": 7, "stop": ["\n"], "id": "anything"}
    {"messages": [{"role": "user", "content": "..."}], ...}      (through the tokenizer's chat template)

`prompt` or `messages` is required (one of them); `adapter` null or absent means the base model;
greedy unless temperature > 0 (default: --temperature); `stop` a string or up to 4 (default: --stop),
ending the completion before the first one (a row leaves the batch as soon as its text holds one).
A result line echoes `id` (when given) and the input line number, and holds the completion, the
adapter used, token counts and why generation stopped ("eos", "stop" or "length").
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lorafit.data.jsonrows import json_rows
from lorafit.errors import AdapterError, DataError
from lorafit.runs.atomic import write_text_atomic

FIELDS = ("prompt", "messages", "adapter", "max_new_tokens", "temperature", "top_p", "seed", "stop", "id")
MAX_STOPS = 4
MAX_SEED = 2**63 - 1  # = adapters.decode.MAX_SEED; repeated so that checking requests does not import torch


@dataclass(frozen=True)
class GenerateRequest:
    line: int
    prompt: str | None
    adapter: str | None
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    id: object = None
    messages: list[dict] | None = None
    stop: tuple[str, ...] = ()


def _field_error(path: Path, line: int, field: str, message: str) -> DataError:
    return DataError(f"{path} line {line}: {field}: {message}")  # as data/jsonrows.py names lines


def _number(row: dict, key: str, default, path: Path, line: int, *, integer: bool, low: float, high=None,
            low_open=False):
    value = row.get(key, default)
    if value is None and key == "seed":
        return None
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise _field_error(path, line, key, f"must be {kind}, got {value!r}")
    if (value <= low if low_open else value < low) or (high is not None and value > high):
        bounds = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise _field_error(path, line, key, f"must be {bounds}, got {value!r}")
    return value


def _messages(row: dict, path: Path, line: int) -> list[dict] | None:
    messages = row.get("messages")
    if messages is None:
        return None
    if not isinstance(messages, list) or not messages:
        raise _field_error(path, line, "messages", f"must be a non-empty list of {{role, content}} objects, got {messages!r}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _field_error(path, line, f"messages[{i}]", f"must be an object with string role and content, got {m!r}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _stops(value, path: Path, line: int) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise _field_error(path, line, "stop", f"must be a non-empty string or a list of up to {MAX_STOPS}, got {value!r}")
    return tuple(stops)


def read_requests(path: str | Path, adapters: dict[str, str], max_new_tokens: int = 64, *, temperature: float = 0.0,
                  stop: tuple[str, ...] = ()) -> list[GenerateRequest]:
    """Parse and check every line; DataError naming the file, line and field of the first bad one.
    `max_new_tokens`, `temperature` and `stop` are the defaults of rows that do not set them."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    requests = []
    # The one JSON reader (data/jsonrows.py): file and line for every broken line, blank lines skipped.
    for line, row in json_rows(path):
        for key in row:
            if key not in FIELDS:
                close = difflib.get_close_matches(key, FIELDS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; fields: {', '.join(FIELDS)}"
                raise _field_error(path, line, key, f"unknown field{hint}")
        prompt, messages = row.get("prompt"), _messages(row, path, line)
        if messages is not None and prompt is not None:
            raise _field_error(path, line, "prompt", "give either prompt or messages, not both")
        if messages is None and (not isinstance(prompt, str) or not prompt):
            raise _field_error(path, line, "prompt", f"must be a non-empty string (or give messages), got {prompt!r}")
        adapter = row.get("adapter")
        if adapter is not None and adapter not in adapters:
            given = ", ".join(sorted(adapters)) or "none; add --adapter NAME=DIR"
            raise _field_error(path, line, "adapter", f"{adapter!r} is not a loaded adapter (loaded: {given})")
        requests.append(GenerateRequest(
            line=line,
            prompt=prompt,
            adapter=adapter,
            max_new_tokens=_number(row, "max_new_tokens", max_new_tokens, path, line, integer=True, low=1),
            temperature=float(_number(row, "temperature", temperature, path, line, integer=False, low=0)),
            top_p=float(_number(row, "top_p", 1.0, path, line, integer=False, low=0, high=1, low_open=True)),
            seed=_number(row, "seed", None, path, line, integer=True, low=0, high=MAX_SEED),
            id=row.get("id"),
            messages=messages,
            stop=_stops(row["stop"], path, line) if "stop" in row else tuple(stop),
        ))
    return requests


def adapter_directory(name: str, directory: str) -> str:
    """The adapter folder `--adapter NAME=DIR` means: DIR itself, or a run directory's adapter (as
    eval, merge and analyze take it)."""
    from lorafit.lora import CONFIG_NAME
    from lorafit.runs.rundir import ADAPTER_DIR, is_run_dir

    path = Path(directory)
    if path.is_dir() and is_run_dir(path):
        inner = path / ADAPTER_DIR
        if not (inner / CONFIG_NAME).is_file():
            raise AdapterError(f"--adapter {name}={directory}: the run directory has no LoRA adapter "
                               f"({inner / CONFIG_NAME} is missing; a full fine-tuning run holds a whole model)")
        return str(inner)
    return directory


def _prompt_ids(tokenizer, request: GenerateRequest, source) -> list[int]:
    """A row's prompt tokens: its prompt (with the tokenizer's special tokens), or its messages through
    the chat template, ending with the assistant's turn (as `lorafit serve` does)."""
    if request.messages is None:
        return tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{source}:{request.line}: messages: the model's tokenizer has no chat template; use prompt")
    try:
        text = tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - a template that rejects these messages (roles, order)
        raise DataError(f"{source}:{request.line}: messages: the chat template rejected them "
                        f"({str(e).splitlines()[0]})") from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def parse_adapter_args(values: list[str]) -> dict[str, str]:
    """`--adapter NAME=DIR` values -> {name: adapter dir} (a run directory stands for its adapter);
    AdapterError for a malformed or repeated one."""
    adapters: dict[str, str] = {}
    for value in values:
        name, sep, directory = value.partition("=")
        name, directory = name.strip(), directory.strip()
        if not sep or not name or not directory:
            raise AdapterError(f"--adapter {value!r}: expected NAME=DIR, e.g. --adapter sql=runs/wikisql (a run "
                               "or adapter directory)")
        if name in adapters:
            raise AdapterError(f"--adapter {name!r} given twice ({adapters[name]} and {directory})")
        adapters[name] = adapter_directory(name, directory)
    return adapters


def run_generate(
    model: str,
    adapters: dict[str, str],
    input_jsonl: str | Path,
    output_jsonl: str | Path,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    stop: tuple[str, ...] = (),
    batch_size: int = 64,
    max_rank: int = 64,
    precision: str = "auto",
    pack_weights: bool = True,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> dict:
    """Generate a completion for every request line; write results in input order; return a summary.

    `on_start(n)` is called with the number of requests once the model and adapters are loaded, and
    `progress(1)` as each request finishes (a progress bar hooks in there). `precision`: fp32, bf16 or
    auto (bf16 on hardware with native bf16 matmuls); the summary says which one ran. `pack_weights`:
    the base's linear layers reordered for oneDNN (see `AdapterHost`). `max_new_tokens`, `temperature`
    and `stop`: defaults for rows that do not set them.
    """
    import time

    from lorafit.adapters.decode import Request
    from lorafit.adapters.host import AdapterHost
    from lorafit.serve.text import TextStream

    if len(stop) > MAX_STOPS or not all(stop):
        raise DataError(f"--stop: up to {MAX_STOPS} non-empty strings, got {list(stop)}")
    requests = read_requests(input_jsonl, adapters, max_new_tokens, temperature=temperature, stop=tuple(stop))
    output_jsonl = Path(output_jsonl)
    if output_jsonl.parent and not output_jsonl.parent.is_dir():
        raise DataError(f"{output_jsonl}: directory {output_jsonl.parent} does not exist")
    host = AdapterHost.load(model, task="generate", max_rank=max_rank, precision=precision,
                            pack_weights=pack_weights)
    for name, directory in adapters.items():
        host.load_adapter(name, directory)
    if on_start is not None:
        on_start(len(requests))
    encoded = [_prompt_ids(host.tokenizer, r, input_jsonl) for r in requests]
    _, slots = host.slots_for([r.adapter for r in requests], len(requests))
    decode_requests = [
        Request(ids, int(slot), r.max_new_tokens, r.temperature, r.top_p, r.seed, key=i)
        for i, (r, ids, slot) in enumerate(zip(requests, encoded, slots, strict=True))
    ]
    texts = [TextStream(host.tokenizer, list(r.stop)) for r in requests]  # text so far, stop strings

    def stopped(row) -> bool:
        text = texts[row.request.key]
        text.push(row.tokens[len(text.tokens) :])
        return text.stopped

    started = time.perf_counter()
    rows = host.decode(decode_requests, batch_size, on_done=(lambda row: progress(1)) if progress else None,
                       should_stop=stopped if any(r.stop for r in requests) else None)
    elapsed = time.perf_counter() - started
    results = []
    for req, row, text in zip(requests, rows, texts, strict=True):
        text.push(row.tokens[len(text.tokens) :])
        text.flush()
        result = {"line": req.line} | ({"id": req.id} if req.id is not None else {})
        results.append(result | {
            "adapter": req.adapter,
            "completion": text.text,
            "prompt_tokens": len(row.request.prompt_ids),
            "completion_tokens": len(text.tokens),  # up to the token that completed a stop string
            "finish_reason": "stop" if text.stopped else row.finish_reason,
        })
    # The results file appears complete or not at all.
    write_text_atomic(output_jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    new_tokens = sum(r["completion_tokens"] for r in results)
    return {
        "model": model,
        "adapters": sorted(adapters),
        "requests": len(results),
        "completion_tokens": new_tokens,
        "seconds": round(elapsed, 3),
        "tokens_per_s": round(new_tokens / elapsed, 1) if elapsed > 0 else None,
        "precision": host.precision,
        "packed_layers": host.packed_layers,
        "output": str(output_jsonl),
    }
