"""docs/recipes.md, generated from the recipe dataclasses (their defaults and `help` metadata).

    python -m lorafit.recipe.docs > docs/recipes.md

tests/test_recipe_docs.py fails when the file in the repository differs from what this prints.
"""

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from lorafit.recipe.parse import Recipe

COMMAND = "python -m lorafit.recipe.docs > docs/recipes.md"

EXAMPLE = """\
name: e2e-smollm2-r4
model: smollm2-135m            # HF id, local path, or a built-in alias
task: e2e                      # glue/sst2, glue/mrpc, ..., e2e, wikisql, text
lora:
  rank: 4
  alpha: 32
  dropout: 0.1
  targets: [q_proj, v_proj]    # module-name suffixes; or all-linear; a regex goes in targets_regex
train:
  epochs: 1
  batch_size: 8
  lr: 2e-4
  warmup_steps: 100
  schedule: linear
eval:
  beam_size: 4
"""

INTRO = f"""\
# Recipe reference

<!-- Generated from lorafit/recipe/schema.py by `{COMMAND}`. Do not edit by hand. -->

A recipe is a YAML file that lists only what differs from the defaults below; `model` and `task`
are the only required keys. The defaults live in one place, the dataclasses in `lorafit/recipe/schema.py`.

- Override any key on the command line: `lorafit train recipe.yaml --set train.lr=1e-4 --set
  lora.targets=[q_proj,k_proj]`. The value is read as YAML.
- Numbers may be written `2e-4`, `2.0e-4` or `0.0002`. Integer keys take integers only (`8`, not
  `8.0`); true/false keys take `true` or `false`.
- A list key also takes a single string: `targets: all-linear` is `targets: [all-linear]`.
- `null` means "not set" where the type says `or null`.
- Unknown keys, wrong types and out-of-range values are errors naming the file, the line and the key,
  all of them at once, for example `recipe.yaml:7: lora.rnak: unknown key (did you mean 'rank'?)`.
- The run directory gets `recipe.yaml`, the recipe with every key resolved; `lorafit train` can be
  pointed at it again.

## Example

```yaml
{EXAMPLE}```
"""


def type_name(tp: Any) -> str:
    """A field type as the docs write it: int, float or null, one of fp32, bf16, list of str."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is dict:
        key, value = typing.get_args(tp)
        return f"mapping of {type_name(key)} to {type_name(value)}"
    if tp == list[str]:
        return "list of str"
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(typing.get_args(tp))
    if tp == tuple[str, ...]:
        return "list of str"
    if typing.get_origin(tp) is dict:
        return "mapping of str to " + typing.get_args(tp)[1].__name__
    return tp.__name__


def default_text(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dict:
        return "`{}`"
    if f.default is dataclasses.MISSING:
        return "*required*"
    value = f.default
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, tuple):
        text = "[" + ", ".join(value) + "]"
    elif value == "":
        text = '""'
    else:
        text = str(value)
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def table(cls: type, prefix: str) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type):
            continue
        rows.append(
            f"| `{prefix}{f.name}` | {_cell(type_name(f.type))} | {default_text(f)} | {_cell(f.metadata['help'])} |"
        )
    return rows


def render_docs() -> str:
    """The whole of docs/recipes.md."""
    parts = [INTRO, "## Top level", "", (Recipe.__doc__ or "").strip(), "", *table(Recipe, ""), ""]
    for f in dataclasses.fields(Recipe):
        if dataclasses.is_dataclass(f.type):
            doc = (f.type.__doc__ or "").strip()
            parts += [f"## {f.name}", "", doc, "", *table(f.type, f"{f.name}."), ""]
    return "\n".join(parts)


def write_docs(path: str | Path = "docs/recipes.md") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_docs(), encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.stdout.write(render_docs())
