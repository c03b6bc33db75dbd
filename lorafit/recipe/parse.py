"""Recipes: YAML loading, validation against the schema (recipe_schema.py), `--set` overrides, dumping.

    text -> yaml.compose (nodes with line marks) -> plain dict + {dotted key: line}
         -> --set overrides applied to the dict -> checked field by field against the dataclasses -> Recipe

Every problem is collected before anything is raised: one RecipeError whose message is one line per
problem, `recipe.yaml:7: lora.rnak: unknown key (did you mean 'rank'?)`, under a summary line when
there are several. This module imports neither torch nor transformers (`lorafit inspect` loads it).
"""

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import yaml

from lorafit.errors import RecipeError
from lorafit.recipe.schema import (  # noqa: F401 - re-exported: callers import the schema from here
    DataConfig,
    EvalConfig,
    LogConfig,
    LoraConfig,
    Recipe,
    TrainConfig,
    _show,
)

_BAD = object()  # a value that failed its check; the problem is already recorded


# ---------------------------------------------------------------------------------------------------
# public API


def load_recipe(path: str | Path, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe file; an empty name becomes the file's stem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _error([f"{path}: not UTF-8 text"]) from None
    except OSError as e:
        raise _error([f"{path}: cannot read recipe: {e.strerror or e}"]) from None
    return parse_recipe(text, str(path), overrides, default_name=path.stem)


def parse_recipe(
    text: str, source: str = "<string>", overrides: typing.Sequence[str] = (), *, default_name: str = ""
) -> Recipe:
    """A Recipe from YAML text; `source` names it in error messages."""
    ctx = _Context(source)
    try:
        raw = _read_yaml(text, ctx)
    except RecursionError:
        raise _error([f"{source}: the YAML is nested too deeply"]) from None
    if raw is None:
        raise _error([f"{source}: the recipe is empty (it needs at least model: and task:)"])
    if not isinstance(raw, dict):
        raise _error([f"{source}: a recipe is a mapping of keys (model: ..., task: ...), got {_show(raw)}"])
    return _resolve(raw, ctx, overrides, default_name)


def recipe_from_dict(d: dict, source: str = "<dict>", overrides: typing.Sequence[str] = ()) -> Recipe:
    """A Recipe from plain data (as recipe_to_dict or yaml.safe_load give it), validated like a file."""
    if not isinstance(d, dict):
        raise _error([f"{source}: a recipe is a mapping of keys, got {_show(d)}"])
    return _resolve(dict(d), _Context(source), overrides, "")


def apply_overrides(recipe: Recipe, overrides: typing.Sequence[str], source: str = "--set") -> Recipe:
    """A copy of `recipe` with `key.path=value` items applied (values are YAML), validated again."""
    return _resolve(recipe_to_dict(recipe), _Context(source), overrides, "")


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
# problems and where they were written


class _Context:
    """Collects problems; knows the line of each dotted key (from YAML) and which came from --set."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[str, int] = {}
        self.origins: dict[str, str] = {}  # dotted key -> "--set key=value"
        self.problems: list[tuple[float, int, str]] = []

    def where(self, path: str) -> tuple[float, str]:
        for p in _self_and_parents(path):
            if p in self.origins:
                return math.inf, self.origins[p]
        for p in _self_and_parents(path):
            if p in self.lines:
                return self.lines[p], f"{self.source}:{self.lines[p]}"
        return math.inf, self.source

    def add(self, path: str, message: str, *, line: int | None = None, where: str | None = None) -> None:
        """Record `<where>: <path>: <message>`; where is the YAML line, the --set item, or the file."""
        if where is not None:
            line, loc = math.inf, where
        elif line is not None:
            loc = f"{self.source}:{line}"
        else:
            line, loc = self.where(path)
        self.problems.append((line, len(self.problems), f"{loc}: {path}: {message}"))

    def note(self, where: str, message: str) -> None:
        """A problem with no key to name (a malformed --set item)."""
        self.problems.append((math.inf, len(self.problems), f"{where}: {message}"))

    def raise_if_any(self) -> None:
        if self.problems:
            raise _error([text for _, _, text in sorted(self.problems)], self.source)


def _error(problems: list[str], source: str = "") -> RecipeError:
    """One RecipeError for every problem: `source: N problems` then one indented line each.

    `.problems` keeps the lines for callers that want them one by one.
    """
    problems = [_one_line(p) for p in problems]
    if len(problems) == 1:
        err = RecipeError(problems[0])
    else:
        err = RecipeError("\n".join([f"{source}: {len(problems)} problems", *("  " + p for p in problems)]))
    err.problems = problems
    return err


def _one_line(text: str) -> str:
    """Control characters (a newline in a quoted key, a stray \\x1e in --set) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _self_and_parents(path: str):
    """'lora.targets[0]', 'lora.targets', 'lora'."""
    while path:
        yield path
        last = re.search(r"(\.[^.\[]*|\[\d+\])$", path)
        path = path[: last.start()] if last else path.rpartition(".")[0]


# ---------------------------------------------------------------------------------------------------
# YAML -> plain data, remembering lines


def _read_yaml(text: str, ctx: _Context) -> Any:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        raise _error([_yaml_message(e, ctx.source)]) from None
    except yaml.YAMLError as e:
        raise _error([f"{ctx.source}: YAML error: {' '.join(str(e).split())}"]) from None
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


def _plain(node: yaml.Node, path: str, ctx: _Context, constructor: Any, memo: dict) -> Any:
    """Plain data from a node; mapping keys stay the text written (so `on:` is 'on', not True).

    `memo` shares the result of aliased nodes, so `*alias` chains cannot blow up and cycles terminate.
    """
    if id(node) in memo:
        return memo[id(node)]
    if isinstance(node, yaml.ScalarNode):
        try:
            return constructor.construct_object(node)
        except yaml.MarkedYAMLError as e:  # an unknown tag: !foo, !!python/object
            raise _error([_yaml_message(e, ctx.source, "cannot read the value")]) from None
        except Exception as e:  # e.g. a timestamp like 2024-13-45, or `!!int abc`
            m = node.start_mark
            raise _error([f"{ctx.source}:{m.line + 1}:{m.column + 1}: cannot read {node.value!r}: {e}"]) from None
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


def _apply(raw: dict, overrides: typing.Sequence[str], ctx: _Context) -> None:
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
        if value is _BAD:
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
            return "unknown key" + _suggest(part, cls, ".".join(parts[:depth]), full=True)
        tp, last = known[part], depth == len(parts) - 1
        if last and dataclasses.is_dataclass(tp):
            return f"is a section; set one of its keys, e.g. --set {key}.{fields(tp)[0].name}=..."
        if not last and not dataclasses.is_dataclass(tp):
            return f"unknown key ({'.'.join(parts[: depth + 1])} is not a section)"
        cls = tp
    return None


def _override_value(text: str, where: str, ctx: _Context) -> Any:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        return None if node is None else _plain(node, "", _Context(where), yaml.constructor.SafeConstructor(), {})
    except (yaml.YAMLError, RecipeError, RecursionError) as e:
        detail = e.problem if isinstance(e, yaml.MarkedYAMLError) else str(e).split(": ")[-1]
        ctx.note(where, f"cannot read the value as YAML: {detail}")
        return _BAD


# ---------------------------------------------------------------------------------------------------
# checking plain data against the dataclasses


def _resolve(raw: dict, ctx: _Context, overrides: typing.Sequence[str], default_name: str) -> Recipe:
    _apply(raw, overrides, ctx)
    recipe = _build(Recipe, raw, "", ctx)
    ctx.raise_if_any()
    if not recipe.name and default_name:
        recipe = dataclasses.replace(recipe, name=default_name)
    return recipe


def _build(cls: type, raw: dict, prefix: str, ctx: _Context) -> Any:
    """An instance of the dataclass `cls` from `raw`, or _BAD after recording every problem in it."""
    before = len(ctx.problems)
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            ctx.add(prefix + str(key), "unknown key" + _suggest(str(key), cls, prefix.rstrip("."), full=False))
    values = {}
    for f in fields(cls):
        path = prefix + f.name
        if f.name in raw:
            values[f.name] = _convert(f.type, raw[f.name], path, f.metadata, ctx)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            ctx.add(path, "required key is missing")
    if cls is LoraConfig:
        _check_lora(values, prefix, ctx)
    if len(ctx.problems) > before:
        return _BAD
    return cls(**values)


def _check_lora(values: dict, prefix: str, ctx: _Context) -> None:
    """What no single key can check: targets against targets_regex."""
    targets = values.get("targets", LoraConfig.targets)
    if targets is _BAD:
        return
    if not targets and values.get("targets_regex") is None:
        ctx.add(prefix + "targets", "must not be empty (list module suffixes, write all-linear, or set targets_regex)")
    if "all-linear" in targets and len(targets) > 1:
        ctx.add(prefix + "targets", f"all-linear must be the only entry, got [{', '.join(targets)}]")


def _convert(tp: Any, value: Any, path: str, meta: typing.Mapping, ctx: _Context) -> Any:
    """`value` as type `tp` (normalised: ints to floats, a string to a one-item list), or _BAD."""
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}  # a section left empty (`lora:` with every key commented out) keeps its defaults
        if not isinstance(value, dict):
            ctx.add(path, f"expected a mapping of keys (a section), got {_show(value)}")
            return _BAD
        return _build(tp, value, path + ".", ctx)
    optional = isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)
    if optional:
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    out = _coerce(tp, value)
    if out is _BAD:
        ctx.add(path, _type_problem(tp, value, optional))
        return _BAD
    if isinstance(out, tuple):
        for i, item in enumerate(out):
            if not isinstance(item, str):
                ctx.add(f"{path}[{i}]", f"expected a string, got {_show(item)}")
            elif not item or re.search(r"[\s,]", item):
                ctx.add(f"{path}[{i}]", f"not a module name: {_show(item)} (a list is written [q_proj, v_proj])")
        return _BAD if any(not isinstance(item, str) for item in out) else out
    shown = value if isinstance(value, str) and not isinstance(out, str) else _show(value)  # `-2e-4` as written
    problem = _value_problem(out, meta, shown)
    if problem:
        ctx.add(path, problem)
        return _BAD
    return out


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def _coerce(tp: Any, value: Any) -> Any:
    if typing.get_origin(tp) is Literal:
        return value if isinstance(value, str) and value in typing.get_args(tp) else _BAD
    if tp is bool:
        return value if isinstance(value, bool) else _BAD
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if tp is float:
        # PyYAML follows YAML 1.1, where a float needs a dot: `lr: 2e-4` arrives as the string '2e-4'.
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                return _BAD
            return value if math.isfinite(value) else _BAD
        return _BAD
    if tp is str:
        return value if isinstance(value, str) else _BAD
    if tp == tuple[str, ...]:
        if isinstance(value, str):
            return (value,)  # `targets: all-linear` is the one-item list [all-linear]
        return tuple(value) if isinstance(value, list | tuple) else _BAD
    raise TypeError(f"recipe field type {tp!r} has no converter")


def _type_problem(tp: Any, value: Any, optional: bool) -> str:
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        hint = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5) if isinstance(value, str) else []
        listed = ", ".join(f"'{c}'" for c in choices)
        return f"must be one of {listed}, got {_show(value)}" + (f" (did you mean '{hint[0]}'?)" if hint else "")
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, "a string or a list of strings"
    )
    if tp is float and (isinstance(value, float) or isinstance(value, str) and _NUMBER.fullmatch(value.strip())):
        expected = "a finite number"  # .inf, .nan
    return f"expected {expected}{' or null' if optional else ''}, got {_show(value)}"


def _value_problem(value: Any, meta: typing.Mapping, shown: str) -> str | None:
    """The field's own checks (metadata nonempty, check, gt, ge, lt) on a value of the right type."""
    if meta.get("nonempty") and value == "":
        return "must not be empty"
    if "check" in meta:
        return meta["check"](value)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    gt, ge, lt = meta.get("gt"), meta.get("ge"), meta.get("lt")
    if ge is not None and lt is not None and not ge <= value < lt:
        return f"must be in [{ge}, {lt}), got {shown}"
    if gt is not None and not value > gt:
        return f"must be > {gt}, got {shown}"
    if ge is not None and not value >= ge:
        return f"must be >= {ge}, got {shown}"
    return None


# ---------------------------------------------------------------------------------------------------
# suggestions


def all_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (sections and their keys), in field order."""
    out = []
    for f in fields(cls):
        out.append(prefix + f.name)
        if dataclasses.is_dataclass(f.type):
            out.extend(all_keys(f.type, f"{prefix}{f.name}."))
    return out


def _suggest(key: str, cls: type, section: str, *, full: bool) -> str:
    """' (did you mean ...?)' for an unknown `key` in `section`: the same name in another section,
    else a close name in this section, else a close name anywhere."""
    if "." in key and key in all_keys():  # `lora.rank: 4` written as one key
        parent, _, child = key.rpartition(".")
        return f" (nest it: '{child}:' inside '{parent}:')"
    elsewhere: dict[str, list[str]] = {}
    for k in all_keys():
        if k.rpartition(".")[0] != section:
            elsewhere.setdefault(k.rpartition(".")[2], []).append(k)
    here = difflib.get_close_matches(key, [f.name for f in fields(cls)], n=1, cutoff=0.6)
    if key not in elsewhere and here:
        return f" (did you mean '{section}.{here[0]}'?)" if full and section else f" (did you mean '{here[0]}'?)"
    close = difflib.get_close_matches(key, list(elsewhere), n=1, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{k}'" for k in elsewhere[close[0]][:2]) + "?)"
