"""Checking plain data (from YAML and --set) against the recipe dataclasses: unknown keys with the
closest valid key suggested, wrong types, values out of range. Every problem is recorded, none raised."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import fields
from typing import Any, Literal

from lorafit.recipe.problems import Problems
from lorafit.recipe.schema import LoraConfig, Recipe, _show

BAD = object()  # a value that failed its check; the problem is already recorded

# ---------------------------------------------------------------------------------------------------
# checking plain data against the dataclasses


def build(cls: type, raw: dict, prefix: str, ctx: Problems) -> Any:
    """An instance of the dataclass `cls` from `raw`, or BAD after recording every problem in it."""
    before = len(ctx.problems)
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            ctx.add(prefix + str(key), "unknown key" + suggest(str(key), cls, prefix.rstrip("."), full=False))
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
        return BAD
    return cls(**values)


# lora.targets keywords, each a recipe's only target (lorafit.lora.inject.KEYWORDS; kept here so that
# checking a recipe does not import torch; tests/test_target_keywords.py keeps the two equal).
TARGET_KEYWORDS = ("all-linear", "default", "attention", "mlp")


def _check_lora(values: dict, prefix: str, ctx: Problems) -> None:
    """What no single key can check: targets against targets_regex."""
    targets = values.get("targets", LoraConfig.targets)
    if targets is BAD:
        return
    if not targets and values.get("targets_regex") is None:
        ctx.add(prefix + "targets", "must not be empty (list module suffixes, write default or all-linear, or set targets_regex)")
    keywords = [t for t in targets if t in TARGET_KEYWORDS]
    if keywords and len(targets) > 1:
        ctx.add(prefix + "targets", f"{keywords[0]} must be the only entry, got [{', '.join(targets)}]")
    init, variant = values.get("init", LoraConfig.init), values.get("variant", LoraConfig.variant)
    if isinstance(init, str) and init.startswith(("pissa", "olora")) and variant == "dora":
        # The saved adapter is converted to apply to the original W; DoRA's magnitude does not survive that.
        ctx.add(prefix + "init", f"{init} cannot be combined with variant: dora (use init: kaiming or gaussian with dora)")
    has_pattern = values.get("rank_pattern") or values.get("alpha_pattern")
    if isinstance(init, str) and init.startswith(("pissa", "olora")) and values.get("rslora") is True and has_pattern:
        ctx.add(prefix + "init", f"{init} with rslora and rank_pattern/alpha_pattern cannot be converted on save (as in PEFT)")


def _convert(tp: Any, value: Any, path: str, meta: typing.Mapping, ctx: Problems) -> Any:
    """`value` as type `tp` (normalised: ints to floats, a string to a one-item list), or BAD."""
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}  # a section left empty (`lora:` with every key commented out) keeps its defaults
        if not isinstance(value, dict):
            ctx.add(path, f"expected a mapping of keys (a section), got {_show(value)}")
            return BAD
        return build(tp, value, path + ".", ctx)
    optional = isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)
    if optional:
        if value is None:
            return None
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007 - `str | dict[...]` kept whole
    mapping = next((a for a in (tp, *typing.get_args(tp)) if typing.get_origin(a) is dict), None)
    if mapping is not None and isinstance(value, dict) and value:  # name the entry that is wrong
        value_tp = typing.get_args(mapping)[1]
        wrong = [(k, v) for k, v in value.items() if not isinstance(k, str) or _coerce(value_tp, v) is BAD]
        for k, v in wrong:
            expected = {str: "a string", int: "an integer", float: "a number"}.get(
                value_tp, "a string or a non-empty list of strings")
            ctx.add(f"{path}.{k}", f"expected {expected}, got {_show(v)}")
        if wrong:
            return BAD
    out = _coerce(tp, value)
    if out is BAD:
        ctx.add(path, _type_problem(tp, value, optional))
        return BAD
    if isinstance(out, tuple):
        for i, item in enumerate(out):
            if not isinstance(item, str):
                ctx.add(f"{path}[{i}]", f"expected a string, got {_show(item)}")
            elif not meta.get("any_text") and (not item or re.search(r"[\s,]", item)):
                ctx.add(f"{path}[{i}]", f"not a module name: {_show(item)} (a list is written [q_proj, v_proj])")
        return BAD if any(not isinstance(item, str) for item in out) else out
    shown = value if isinstance(value, str) and not isinstance(out, str) else _show(value)  # `-2e-4` as written
    problem = _value_problem(out, meta, shown)
    if problem:
        ctx.add(path, problem)
        return BAD
    return out


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def _coerce(tp: Any, value: Any) -> Any:
    if typing.get_origin(tp) is Literal:
        return value if isinstance(value, str) and value in typing.get_args(tp) else BAD
    if tp is bool:
        return value if isinstance(value, bool) else BAD
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else BAD
    if tp is float:
        # PyYAML follows YAML 1.1, where a float needs a dot: `lr: 2e-4` arrives as the string '2e-4'.
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                return BAD
            return value if math.isfinite(value) else BAD
        return BAD
    if tp is str:
        return value if isinstance(value, str) else BAD
    if tp == tuple[str, ...]:
        if isinstance(value, str):
            return (value,)  # `targets: all-linear` is the one-item list [all-linear]
        return tuple(value) if isinstance(value, list | tuple) else BAD
    if tp == list[str]:
        return list(value) if isinstance(value, list) and value and all(isinstance(v, str) for v in value) else BAD
    if typing.get_origin(tp) is dict:  # data.source per split, data.role_names, lora.rank_pattern / alpha_pattern
        key_tp, value_tp = typing.get_args(tp)
        # An empty mapping means "none" only for the numeric patterns (their default); a mapping of names
        # to text (a split to its files, a role to its name) left empty is a mistake.
        if not isinstance(value, dict) or not value and value_tp not in (int, float):
            return BAD
        pairs = [(_coerce(key_tp, k), _coerce(value_tp, v)) for k, v in value.items()]
        return BAD if any(k is BAD or v is BAD for k, v in pairs) else dict(pairs)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # the first member the value is
        return next((out for out in (_coerce(a, value) for a in typing.get_args(tp)) if out is not BAD), BAD)
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
    if typing.get_origin(tp) is dict:
        value_type = typing.get_args(tp)[1]
        expected = {int: "a mapping of module patterns to integers ({q_proj: 16})",
                    float: "a mapping of module patterns to numbers ({q_proj: 16})"}.get(value_type, "a mapping (name: text)")
    elif typing.get_origin(tp) in (typing.Union, types.UnionType):
        expected = "a string or a mapping (name: a string or a list of strings)"
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


def suggest(key: str, cls: type, section: str, *, full: bool) -> str:
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
