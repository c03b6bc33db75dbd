"""Row formats: a user's rows (any field names) -> the normalised columns the encoders read.

    completion      {prompt_field or prompt_template, completion_field}  -> prompt, completion
    alpaca          {instruction, input (optional), output}             -> prompt, completion (Alpaca's prompt)
    classification  {text_field, text_pair_field?, label_field}          -> text, text_pair, label
    chat            {messages_field: [{role, content}, ...]}             -> messages
                    or {prompt_field / prompt_template, completion_field} -> one user turn + one assistant reply

Every field name is remappable in the recipe (`data.*_field`). A completion may be a list of strings
(several references): one row each. Bad rows are a one-line `DataError` naming the file, row and field.
`normalise(fmt, batch, indices, where)` is a `datasets.map(batched=True, with_indices=True)` function.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lorafit.errors import DataError
from lorafit.recipe.schema import DataConfig
from lorafit.tasks.labels import parse_label

ROLES = ("system", "user", "assistant", "tool")
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{ctx}. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input}### Response:\n"
)


@dataclass(frozen=True)
class Format:
    """How to read one row: the format's name and the field names (all part of the cache key)."""

    name: str  # completion, alpaca, classification, chat
    prompt_field: str | None = None
    prompt_template: str | None = None
    completion_field: str | None = None
    text_field: str | None = None
    text_pair_field: str | None = None
    label_field: str | None = None
    num_labels: int = 0
    label_names: tuple[str, ...] | None = None  # string labels -> ids by position (sorted train labels)
    messages_field: str = "messages"
    system_prompt: str | None = None
    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"

    @property
    def kind(self) -> str:
        if self.name == "classification":
            return "regression" if self.num_labels == 1 else "classification"
        return "generation"

    @property
    def encoder(self) -> str:
        """Which encoder tokenises the normalised rows: generation, classification or chat."""
        return {"alpaca": "generation", "completion": "generation"}.get(self.name, self.name)

    def settings(self) -> dict:
        return asdict(self)


def format_of(options: DataConfig) -> Format:
    """The Format the recipe's `data:` section describes; a missing key is named."""
    o = options
    name = o.format
    if name == "auto":
        name = "completion" if o.completion_field else "classification" if o.label_field else "chat"
    if name == "completion":
        if not o.completion_field or not (o.prompt_field or o.prompt_template):
            raise DataError("data.format completion needs data.completion_field and data.prompt_field (or data.prompt_template)")
        return Format(name, prompt_field=o.prompt_field, prompt_template=None if o.prompt_field else o.prompt_template,
                      completion_field=o.completion_field)
    if name == "classification":
        if not (o.text_field and o.label_field and o.num_labels):
            raise DataError("data.format classification needs data.text_field, data.label_field and data.num_labels")
        return Format(name, text_field=o.text_field, text_pair_field=o.text_pair_field, label_field=o.label_field,
                      num_labels=o.num_labels)
    if name == "alpaca":
        return Format(name, instruction_field=o.instruction_field, input_field=o.input_field, output_field=o.output_field)
    if o.completion_field:  # one user turn (the prompt) and one assistant reply (the completion)
        if not (o.prompt_field or o.prompt_template):
            raise DataError("data.format chat with data.completion_field needs data.prompt_field or data.prompt_template")
        return Format("chat", prompt_field=o.prompt_field, prompt_template=None if o.prompt_field else o.prompt_template,
                      completion_field=o.completion_field, system_prompt=o.system_prompt)
    return Format("chat", messages_field=o.messages_field, system_prompt=o.system_prompt)


def columns_needed(fmt: Format) -> list[str]:
    """The source fields a format reads (a missing column fails before any row is processed)."""
    if fmt.name == "completion" or fmt.completion_field:
        return [f for f in (fmt.prompt_field, fmt.completion_field) if f]
    if fmt.name == "classification":
        return [f for f in (fmt.text_field, fmt.text_pair_field, fmt.label_field) if f]
    if fmt.name == "alpaca":
        return [fmt.instruction_field, fmt.output_field]
    return [fmt.messages_field]


def _text(value, where: str, field: str, *, allow_empty: bool = True) -> str:
    if value is None:
        raise DataError(f"{where}: field {field!r} is null")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(f"{where}: field {field!r} should be text, got {type(value).__name__}")
    if not allow_empty and not str(value).strip():
        raise DataError(f"{where}: field {field!r} is empty")
    return str(value)


def _prompt(fmt: Format, row: dict, where: str) -> str:
    if fmt.prompt_field:
        return _text(row[fmt.prompt_field], where, fmt.prompt_field)
    try:
        return fmt.prompt_template.format(**row)
    except KeyError as e:
        raise DataError(f"{where}: data.prompt_template uses {{{e.args[0]}}} but the row has no field {e.args[0]!r}") from None
    except (IndexError, AttributeError, ValueError, TypeError) as e:
        raise DataError(f"{where}: data.prompt_template cannot be filled: {e}") from None


def _label(fmt: Format, value, where: str) -> float | int:
    field = fmt.label_field
    if value is None:
        raise DataError(f"{where}: field {field!r} is null")
    try:
        return parse_label(value, fmt.num_labels, fmt.label_names)
    except ValueError as e:
        expected = {"number": "a number (num_labels 1: regression)",
                    "name": f"a train label ({', '.join(fmt.label_names or [])})",
                    "class id": f"a class id in 0..{fmt.num_labels - 1}"}[str(e)]
        raise DataError(f"{where}: field {field!r}: label {value!r} is not {expected}") from None


def _messages(fmt: Format, value, where: str) -> list[dict]:
    field = fmt.messages_field
    if not isinstance(value, list):
        raise DataError(f"{where}: field {field!r} should be a list of messages, got {type(value).__name__}")
    if not value:
        raise DataError(f"{where}: field {field!r}: empty conversation")
    messages = []
    for n, m in enumerate(value, start=1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: field {field!r} message {n}: should be an object with role and content")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: field {field!r} message {n}: role {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: field {field!r} message {n}: content should be text, got {type(m['content']).__name__}")
        messages.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: field {field!r}: no assistant turn (nothing to learn)")
    return messages


def normalise(fmt: Format, batch: dict, indices: list[int], where) -> dict:
    """One `datasets.map` batch of source rows -> normalised columns plus `row` (the source row index).

    `where(i)` names source row i ("data.jsonl row 12") for errors. A row with several completions
    becomes several rows (same `row`)."""
    fields = list(batch)
    rows = ({k: batch[k][j] for k in fields} for j in range(len(indices)))
    out: dict[str, list] = {"row": []}
    for index, row in zip(indices, rows, strict=True):
        at = where(index)
        if fmt.encoder == "generation":
            if fmt.name == "alpaca":
                extra = row.get(fmt.input_field) or ""
                instruction = _text(row[fmt.instruction_field], at, fmt.instruction_field, allow_empty=False)
                inp = f"### Input:\n{_text(extra, at, fmt.input_field)}\n\n" if str(extra).strip() else ""
                prompt = ALPACA_PROMPT.format(ctx=", paired with an input that provides further context" if inp else "",
                                              instruction=instruction, input=inp)
                completions = [_text(row[fmt.output_field], at, fmt.output_field)]
            else:
                prompt = _prompt(fmt, row, at)
                value = row[fmt.completion_field]
                values = value if isinstance(value, list) else [value]
                if not values:
                    raise DataError(f"{at}: field {fmt.completion_field!r} is an empty list")
                completions = [_text(v, at, fmt.completion_field) for v in values]
            for completion in completions:
                out.setdefault("prompt", []).append(prompt)
                out.setdefault("completion", []).append(completion)
                out["row"].append(index)
        elif fmt.encoder == "classification":
            out.setdefault("text", []).append(_text(row[fmt.text_field], at, fmt.text_field))
            pair = _text(row[fmt.text_pair_field], at, fmt.text_pair_field) if fmt.text_pair_field else None
            out.setdefault("text_pair", []).append(pair)
            out.setdefault("label", []).append(_label(fmt, row[fmt.label_field], at))
            out["row"].append(index)
        else:
            if fmt.completion_field:
                messages = [{"role": "user", "content": _prompt(fmt, row, at)},
                            {"role": "assistant", "content": _text(row[fmt.completion_field], at, fmt.completion_field)}]
            else:
                messages = _messages(fmt, row[fmt.messages_field], at)
            if fmt.system_prompt and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": fmt.system_prompt})
            out.setdefault("messages", []).append(messages)
            out["row"].append(index)
    return out


def label_names_of(fmt: Format, labels) -> tuple[str, ...] | None:
    """Class names by id when the train labels are strings (sorted), None for class ids or regression."""
    if fmt.name != "classification" or fmt.num_labels == 1:
        return None
    values = [v for v in labels if v is not None]
    if all((isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v.strip().lstrip("+-").isdigit())
           for v in values):
        return None
    names = tuple(sorted({str(v).strip() for v in values}))
    if len(names) > fmt.num_labels:
        raise DataError(f"the train split has {len(names)} distinct labels ({', '.join(names[:10])}) "
                        f"but data.num_labels is {fmt.num_labels}")
    return names
