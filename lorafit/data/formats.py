"""Row formats: a user's rows (any field names) -> the normalised columns the encoders read.

    completion      {prompt_field or prompt_template, completion_field}  -> prompt, completion
    alpaca          {instruction, input (optional), output}             -> prompt, completion (Alpaca's prompt)
    classification  {text_field, text_pair_field?, label_field}          -> text, text_pair, label
    chat            {messages_field: [{role, content}, ...]}             -> messages
                    or {prompt_field / prompt_template, completion_field} -> one user turn + one assistant reply
    sharegpt        {conversations: [{from, value}, ...]}, roles human / gpt / system / observation -> messages

Every field name is remappable in the recipe (`data.*_field`); a message's keys (`data.role_field`,
`data.content_field`) and role names (`data.role_names`) too, as LLaMA-Factory's dataset `tags`. A
completion may be a list of strings (several references): one row each.

`normalise_row(fmt, row, where, index)` checks every field it reads, where it reads it: its presence, its
type (text is a JSON string; a number or a list is refused, never converted), its value (a trained text
is not empty, a role is known, a label is a class id in range or a known name). A bad row is a one-line
`DataError` naming `where` ("data.jsonl line 12"), the field and what was wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lorafit.data.jsonrows import check_unicode, json_kind
from lorafit.errors import DataError
from lorafit.recipe.schema import DataConfig
from lorafit.tasks.labels import LabelError, check_listed, parse_label

ROLES = ("system", "user", "assistant", "tool")
# ShareGPT's role names (the `from` of each turn), as LLaMA-Factory's sharegpt tags; lorafit's own names work too
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant", "observation": "tool"}
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{ctx}. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input}### Response:\n"
)


@dataclass(frozen=True)
class Format:
    """How to read one row: the format's name and the field names (all part of the cache key)."""

    name: str  # completion, alpaca, classification, chat (sharegpt is chat with its keys and role names)
    prompt_field: str | None = None
    prompt_template: str | None = None
    completion_field: str | None = None
    text_field: str | None = None
    text_pair_field: str | None = None
    label_field: str | None = None
    num_labels: int = 0
    label_names: tuple[str, ...] | None = None  # string labels -> ids by position (sorted train labels)
    labels_listed: bool = False  # label_names come from the recipe (data.label_names), not the train split
    messages_field: str = "messages"
    role_field: str = "role"
    content_field: str = "content"
    role_names: tuple[tuple[str, str], ...] = tuple((r, r) for r in ROLES)  # the file's role -> lorafit's
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
        try:
            check_listed(o.label_names, o.num_labels)
        except LabelError as e:
            raise DataError(str(e)) from None
        return Format(name, text_field=o.text_field, text_pair_field=o.text_pair_field, label_field=o.label_field,
                      num_labels=o.num_labels, label_names=o.label_names, labels_listed=bool(o.label_names))
    if name == "alpaca":
        return Format(name, instruction_field=o.instruction_field, input_field=o.input_field, output_field=o.output_field)
    if o.completion_field:  # one user turn (the prompt) and one assistant reply (the completion)
        if not (o.prompt_field or o.prompt_template):
            raise DataError("data.format chat with data.completion_field needs data.prompt_field or data.prompt_template")
        return Format("chat", prompt_field=o.prompt_field, prompt_template=None if o.prompt_field else o.prompt_template,
                      completion_field=o.completion_field, system_prompt=o.system_prompt)
    sharegpt = name == "sharegpt"
    roles = {**{r: r for r in ROLES}, **(SHAREGPT_ROLES if sharegpt else {}), **(o.role_names or {})}
    bad = sorted({r for r in roles.values() if r not in ROLES})
    if bad:
        raise DataError(f"data.role_names: {', '.join(map(repr, bad))} is not one of {', '.join(ROLES)}")
    return Format("chat", messages_field=o.messages_field or ("conversations" if sharegpt else "messages"),
                  role_field=o.role_field or ("from" if sharegpt else "role"),
                  content_field=o.content_field or ("value" if sharegpt else "content"),
                  role_names=tuple(sorted(roles.items())), system_prompt=o.system_prompt)


def _keys(row: dict) -> str:
    """A row's keys for a message, printable whatever they hold (a JSON "\\ud800" key is not UTF-8)."""
    return ", ".join(str(k).encode("utf-8", "backslashreplace").decode() for k in row) or "none"


def _field(row: dict, name: str, where: str):
    if name not in row:
        raise DataError(f"{where}: no field {name!r} (fields: {_keys(row)}); set data.format / data.*_field")
    return row[name]


def _text(value, where: str, field: str, *, trained: bool = False) -> str:
    """A text field as written: a string; `trained` (what the model learns to write): not empty either."""
    if value is None:
        raise DataError(f"{where}: field {field!r} is null")
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} should be text, got {json_kind(value)}")
    if trained and not value.strip():
        raise DataError(f"{where}: field {field!r} is empty (nothing to learn)")
    return check_unicode(value, where, field)


def _prompt(fmt: Format, row: dict, where: str) -> str:
    if fmt.prompt_field:
        return _text(_field(row, fmt.prompt_field, where), where, fmt.prompt_field)
    for name in template_fields(fmt.prompt_template):
        if name not in row:
            raise DataError(f"{where}: data.prompt_template uses {{{name}}} but the row has no field {name!r} "
                            f"(fields: {_keys(row)})")
        _text(row[name], where, name)  # `{id}` of a number would be str(5): the user's type is refused, not guessed
    try:
        return fmt.prompt_template.format(**row)
    except (IndexError, AttributeError, ValueError, TypeError, KeyError) as e:
        raise DataError(f"{where}: data.prompt_template cannot be filled: {e}") from None


def template_fields(template: str) -> list[str]:
    """The row fields a `str.format` template names ({question}, {meta[id]} -> question, meta)."""
    import re
    import string

    try:
        return [re.split(r"[.\[]", f, maxsplit=1)[0] for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError as e:
        raise DataError(f"data.prompt_template is not a valid format string: {e}") from None


def _label(fmt: Format, value, where: str) -> float | int:
    field = fmt.label_field
    if value is None:
        raise DataError(f"{where}: field {field!r} is null")
    try:
        return parse_label(value, fmt.num_labels, fmt.label_names, listed=fmt.labels_listed)
    except LabelError as e:
        raise DataError(f"{where}: field {field!r}: {e}") from None


def _messages(fmt: Format, value, where: str) -> list[dict]:
    field, role_key, text_key = fmt.messages_field, fmt.role_field, fmt.content_field
    if value is None:
        raise DataError(f"{where}: field {field!r} is null")
    if not isinstance(value, list):
        raise DataError(f"{where}: field {field!r} should be a list of messages, got {json_kind(value)}")
    if not value:
        raise DataError(f"{where}: field {field!r}: empty conversation")
    roles = dict(fmt.role_names)
    messages = []
    for n, m in enumerate(value, start=1):
        at = f"{where}: field {field!r} message {n}"
        if not isinstance(m, dict) or role_key not in m or text_key not in m:
            keys = f" (keys: {_keys(m)})" if isinstance(m, dict) else f" (got {json_kind(m)})"
            raise DataError(f"{at}: should be an object with {role_key!r} and {text_key!r}{keys}")
        role = m[role_key]
        if not isinstance(role, str) or role not in roles:
            raise DataError(f"{at}: {role_key} {role!r} is not one of {', '.join(roles)} (data.role_names)")
        role = roles[role]
        content = m[text_key]
        if not isinstance(content, str):
            raise DataError(f"{at}: {text_key} should be text, got {json_kind(content)}")
        if role == "assistant" and not content.strip():
            raise DataError(f"{at}: {text_key} of an assistant turn is empty (nothing to learn)")
        check_unicode(content, at, text_key)
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: field {field!r}: no assistant turn (nothing to learn)")
    return messages


def normalise_row(fmt: Format, row: dict, where: str, index: int) -> list[dict]:
    """One source row -> its normalised rows (several for a list of completions), each with `row` = index.

    `where` names the row in errors ("data.jsonl line 12", "data.parquet row 3")."""
    if fmt.encoder == "generation":
        if fmt.name == "alpaca":
            instruction = _text(_field(row, fmt.instruction_field, where), where, fmt.instruction_field, trained=True)
            extra = row.get(fmt.input_field)
            extra = "" if extra is None else _text(extra, where, fmt.input_field)
            inp = f"### Input:\n{extra}\n\n" if extra.strip() else ""
            prompt = ALPACA_PROMPT.format(ctx=", paired with an input that provides further context" if inp else "",
                                          instruction=instruction, input=inp)
            completions = [_text(_field(row, fmt.output_field, where), where, fmt.output_field, trained=True)]
        else:
            prompt = _prompt(fmt, row, where)
            value = _field(row, fmt.completion_field, where)
            values = value if isinstance(value, list) else [value]
            if not values:
                raise DataError(f"{where}: field {fmt.completion_field!r} is an empty list")
            completions = [_text(v, where, fmt.completion_field, trained=True) for v in values]
        return [{"prompt": prompt, "completion": c, "row": index} for c in completions]
    if fmt.encoder == "classification":
        text = _text(_field(row, fmt.text_field, where), where, fmt.text_field, trained=True)
        pair = _text(_field(row, fmt.text_pair_field, where), where, fmt.text_pair_field) if fmt.text_pair_field else None
        return [{"text": text, "text_pair": pair, "label": _label(fmt, _field(row, fmt.label_field, where), where),
                 "row": index}]
    if fmt.completion_field:
        completion = _text(_field(row, fmt.completion_field, where), where, fmt.completion_field, trained=True)
        messages = [{"role": "user", "content": _prompt(fmt, row, where)}, {"role": "assistant", "content": completion}]
    else:
        messages = _messages(fmt, _field(row, fmt.messages_field, where), where)
    if fmt.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": fmt.system_prompt})
    return [{"messages": messages, "row": index, "where": where}]  # where: the chat template may still refuse it


def features_of(fmt: Format):
    """The Arrow types of the normalised columns (fixed: a row's types never depend on the file's)."""
    import datasets

    if fmt.encoder == "generation":
        columns = {"prompt": datasets.Value("string"), "completion": datasets.Value("string")}
    elif fmt.encoder == "classification":
        columns = {"text": datasets.Value("string"), "text_pair": datasets.Value("string"),
                   "label": datasets.Value("float64" if fmt.kind == "regression" else "int64")}
    else:
        columns = {"messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
                   "where": datasets.Value("string")}
    return datasets.Features({**columns, "row": datasets.Value("int64")})
