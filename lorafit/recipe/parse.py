"""Recipes: YAML loading, validation against the schema (schema.py, checked in check.py), `--set` overrides, dumping.

    text -> yaml.compose (nodes with line marks) -> plain dict + {dotted key: line}
         -> --set overrides applied to the dict -> checked field by field against the dataclasses -> Recipe

Every problem is collected before anything is raised: one RecipeError whose message is one line per
problem, `recipe.yaml:7: lora.rnak: unknown key (did you mean 'rank'?)`, under a summary line when
there are several. This module imports neither torch nor transformers (`lorafit inspect` loads it).
"""

import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from lorafit.errors import RecipeError
from lorafit.recipe.check import BAD, all_keys, build, suggest  # noqa: F401 - all_keys re-exported
from lorafit.recipe.problems import Problems, recipe_error
from lorafit.recipe.schema import (  # noqa: F401 - re-exported: callers import the schema from here
    DataConfig,
    EvalConfig,
    LogConfig,
    LoraConfig,
    Recipe,
    TrainConfig,
    _show,
)

# ---------------------------------------------------------------------------------------------------
# public API


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe file; an empty name becomes the file's stem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise recipe_error([f"{path}: not UTF-8 text"]) from None
    except OSError as e:
        raise recipe_error([f"{path}: cannot read recipe: {e.strerror or e}"]) from None
    return parse_recipe(text, str(path), overrides, default_name=path.stem)


def parse_recipe(
    text: str, source: str = "<string>", overrides: typing.Sequence[str] = (), *, default_name: str = ""
) -> Recipe:
    """A Recipe from YAML text; `source` names it in error messages."""
    ctx = Problems(source)
    try:
        raw = _read_yaml(text, ctx)
    except RecursionError:
        raise recipe_error([f"{source}: the YAML is nested too deeply"]) from None
    if raw is None:
        raise recipe_error([f"{source}: the recipe is empty (it needs at least model: and task:)"])
    if not isinstance(raw, dict):
        raise recipe_error([f"{source}: a recipe is a mapping of keys (model: ..., task: ...), got {_show(raw)}"])
    return _resolve(raw, ctx, overrides, default_name)


def recipe_from_dict(d: dict, source: str = "<dict>", overrides: typing.Sequence[str] = ()) -> Recipe:
    """A Recipe from plain data (as recipe_to_dict or yaml.safe_load give it), validated like a file."""
    if not isinstance(d, dict):
        raise recipe_error([f"{source}: a recipe is a mapping of keys, got {_show(d)}"])
    return _resolve(dict(d), Problems(source), overrides, "")


def apply_overrides(recipe: Recipe, overrides: typing.Sequence[str], source: str = "--set") -> Recipe:
    """A copy of `recipe` with `key.path=value` items applied (values are YAML), validated again."""
    return _resolve(recipe_to_dict(recipe), Problems(source), overrides, "")


def recipe_to_dict(recipe: Any) -> dict:
    """Every key, in field order, as plain YAML/JSON data (lists, not tuples)."""
    out = {}
    for f in fields(recipe):
        value = getattr(recipe, f.name)
        if dataclasses.is_dataclass(value):
            value = recipe_to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists on one line: `targets: [q_proj, v_proj]`."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))
_Dumper.add_representer(  # PyYAML would write NEL and the Unicode line separators raw, and read them back as breaks
    str,
    lambda dumper, data: dumper.represent_scalar(
        "tag:yaml.org,2002:str", data, style='"' if re.search("[\x85\u2028\u2029]", data) else None
    ),
)


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML: every key, in field order; parse_recipe reads it back equal."""
    return yaml.dump(recipe_to_dict(recipe), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)


def recipe_hash(recipe: Recipe) -> str:
    """First 16 hex digits of the sha256 of the canonical JSON of every key."""
    canonical = json.dumps(recipe_to_dict(recipe), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------
# YAML -> plain data, remembering lines


def _read_yaml(text: str, ctx: Problems) -> Any:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        raise recipe_error([_yaml_message(e, ctx.source)]) from None
    except yaml.YAMLError as e:
        raise recipe_error([f"{ctx.source}: YAML error: {' '.join(str(e).split())}"]) from None
    if root is None:
        return None
    return _plain(root, "", ctx, yaml.constructor.SafeConstructor(), {})


def _yaml_message(e: yaml.MarkedYAMLError, source: str, what: str = "YAML syntax error") -> str:
    mark = e.problem_mark or e.context_mark
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
    problem = " ".join(str(e.problem or e.context or "invalid YAML").split())
    context = ""
    if e.context and e.problem:
        context = f" ({e.context}" + (f" at line {e.context_mark.line + 1}" if e.context_mark else "") + ")"
    hint = "; check the indentation" if "<block end>" in problem else ""
    return f"{where}: {what}: {problem}{context}{hint}"


def _plain(node: yaml.Node, path: str, ctx: Problems, constructor: Any, memo: dict) -> Any:
    """Plain data from a node; mapping keys stay the text written (so `on:` is 'on', not True).

    `memo` shares the result of aliased nodes, so `*alias` chains cannot blow up and cycles terminate.
    """
    if id(node) in memo:
        return memo[id(node)]
    if isinstance(node, yaml.ScalarNode):
        try:
            return constructor.construct_object(node)
        except yaml.MarkedYAMLError as e:  # an unknown tag: !foo, !!python/object
            raise recipe_error([_yaml_message(e, ctx.source, "cannot read the value")]) from None
        except Exception as e:  # e.g. a timestamp like 2024-13-45, or `!!int abc`
            m = node.start_mark
            raise recipe_error([f"{ctx.source}:{m.line + 1}:{m.column + 1}: cannot read {node.value!r}: {e}"]) from None
    if isinstance(node, yaml.SequenceNode):
        items: list = []
        memo[id(node)] = items
        for i, item in enumerate(node.value):
            ctx.lines.setdefault(f"{path}[{i}]", item.start_mark.line + 1)
            items.append(_plain(item, f"{path}[{i}]", ctx, constructor, memo))
        return items
    out: dict = {}
    memo[id(node)] = out
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            ctx.add(path or "recipe", f"keys must be plain names, got {'a list' if isinstance(key_node, yaml.SequenceNode) else 'a mapping'}", line=line)
            continue
        key = key_node.value
        dotted = f"{path}.{key}" if path else key
        if key in out:
            ctx.add(dotted, f"duplicate key (first at line {ctx.lines.get(dotted, '?')})", line=line)
        ctx.lines[dotted] = line  # the last one wins, as in PyYAML: its value is the one checked
        out[key] = _plain(value_node, dotted, ctx, constructor, memo)
    return out


# ---------------------------------------------------------------------------------------------------
# overrides


def _apply(raw: dict, overrides: typing.Sequence[str], ctx: Problems) -> None:
    """Write each `key.path=value` into the raw data before it is checked (so --set can fix a file)."""
    for item in overrides:
        where = f"--set {item}"
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            ctx.note(where, "expected KEY=VALUE, e.g. --set train.lr=1e-4")
            continue
        problem = _override_key_problem(key)
        if problem:
            ctx.add(key, problem, where=where)
            continue
        value = _override_value(text, where, ctx)
        if value is BAD:
            continue
        *sections, name = key.split(".")
        target = raw
        for section in sections:
            if target.get(section) is None:
                target[section] = {}
            if not isinstance(target[section], dict):
                break  # the file's section is not a mapping: reported when the section is checked
            target[section] = dict(target[section])  # copy on write: the caller's dict stays as it was
            target = target[section]
        else:
            target[name] = value
            ctx.origins[key] = where


def _override_key_problem(key: str) -> str | None:
    """Why `key` (dotted) names no settable key, or None."""
    parts, cls = key.split("."), Recipe
    for depth, part in enumerate(parts):
        known = {f.name: f.type for f in fields(cls)}
        if part not in known:
            return "unknown key" + suggest(part, cls, ".".join(parts[:depth]), full=True)
        tp, last = known[part], depth == len(parts) - 1
        if last and dataclasses.is_dataclass(tp):
            return f"is a section; set one of its keys, e.g. --set {key}.{fields(tp)[0].name}=..."
        if not last and not dataclasses.is_dataclass(tp):
            return f"unknown key ({'.'.join(parts[: depth + 1])} is not a section)"
        cls = tp
    return None


def _override_value(text: str, where: str, ctx: Problems) -> Any:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        return None if node is None else _plain(node, "", Problems(where), yaml.constructor.SafeConstructor(), {})
    except (yaml.YAMLError, RecipeError, RecursionError) as e:
        detail = e.problem if isinstance(e, yaml.MarkedYAMLError) else str(e).split(": ")[-1]
        ctx.note(where, f"cannot read the value as YAML: {detail}")
        return BAD


# ---------------------------------------------------------------------------------------------------
# resolving


def _resolve(raw: dict, ctx: Problems, overrides: typing.Sequence[str], default_name: str) -> Recipe:
    _apply(raw, overrides, ctx)
    recipe = build(Recipe, raw, "", ctx)
    ctx.raise_if_any()
    if not recipe.name and default_name:
        recipe = dataclasses.replace(recipe, name=default_name)
    return recipe


