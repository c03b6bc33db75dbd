"""What a sweep varies: `--grid KEY=V1,V2,...` items or a `--space SPACE.yaml` file, checked against
the recipe before any trial runs, as optuna distributions.

A space file maps dotted recipe keys to ranges:

    lora.rank:    {type: int, low: 1, high: 16, log: true}      # int: optional step, log
    train.lr:     {type: log, low: 1.0e-5, high: 1.0e-3}         # float drawn log-uniformly
    lora.dropout: {type: float, low: 0.0, high: 0.2}
    lora.targets: {type: choice, values: [[q_proj, v_proj], all-linear]}

optuna's choices are scalars, so a list value (lora.targets) is kept as its YAML text ('[q_proj,
v_proj]') and read back as YAML when the trial's recipe is built, as `--set` reads it. Every bad key
or value is one RecipeError line naming the item or file and the key (exit 2).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lorafit.errors import RecipeError
from lorafit.recipe import Recipe
from lorafit.recipe.parse import apply_overrides

TYPES = ("int", "float", "log", "choice")
NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


@dataclass(frozen=True)
class Param:
    """One swept recipe key: its distribution as plain data (type, low, high, log, step, values)."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int = 1
    values: tuple = ()

    def distribution(self):
        """The optuna distribution this parameter is drawn from."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "choice":
            return CategoricalDistribution(list(self.values))
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step)
        return FloatDistribution(float(self.low), float(self.high), log=self.type == "log")

    def as_dict(self) -> dict:
        return {"key": self.key, "type": self.type, "low": self.low, "high": self.high, "log": self.log,
                "step": self.step, "values": list(self.values)}


def override(key: str, value: Any) -> str:
    """`key=value` as `--set` takes it (a string value is YAML text already: a list stays a list)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    return f"{key}={text}"


def check_value(base: Recipe, key: str, value: Any, where: str) -> None:
    """Refuse a key or value the recipe would refuse: `<where>: <key>: <problem>`."""
    item = override(key, value)
    try:
        apply_overrides(base, [item])
    except RecipeError as e:
        first = str(e).splitlines()[-1].strip()
        raise RecipeError(f"{where}: {first.removeprefix(f'--set {item}: ')}") from None


def split_values(text: str) -> list[str]:
    """'1,2,[q_proj,v_proj]' -> ['1', '2', '[q_proj,v_proj]']: commas inside brackets do not split."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def choice_value(text: str, where: str) -> Any:
    """A grid value as optuna keeps it: a YAML scalar as itself, a list or mapping as its YAML text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{where}: cannot read {text.strip()!r} as YAML: {' '.join(str(e).split())}") from None
    if isinstance(value, list | dict):
        return text.strip()
    if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; the recipe takes it as the number
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return text.strip()  # a date or another YAML type: the recipe check reports it


def parse_grid(items: list[str], base: Recipe) -> list[Param]:
    """`--grid KEY=V1,V2,...` items as choice parameters, each value checked against the recipe."""
    params: list[Param] = []
    for item in items:
        where = f"--grid {item}"
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise RecipeError(f"{where}: expected KEY=V1,V2,..., e.g. --grid lora.rank=4,8,16")
        if any(p.key == key for p in params):
            raise RecipeError(f"{where}: {key} is already swept by another --grid")
        values = []
        for part in split_values(text):
            if not part.strip():
                raise RecipeError(f"{where}: an empty value (two commas in a row, or one at the end)")
            value = choice_value(part, where)
            check_value(base, key, value, where)
            if value in values:
                raise RecipeError(f"{where}: {part.strip()!r} is listed twice")
            values.append(value)
        params.append(Param(key, "choice", values=tuple(values)))
    return params


def grid_points(params: list[Param]) -> list[dict]:
    """Every combination of the grid's values, the first key's values varying slowest."""
    return [dict(zip([p.key for p in params], combo, strict=True))
            for combo in itertools.product(*[p.values for p in params])]


def load_space(path: Path, base: Recipe) -> list[Param]:
    """A space file's parameters, each range or choice checked against the recipe."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the space file: {e.strerror or e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{line}: YAML syntax error: {' '.join(str(e.problem).split())}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read the space file: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict) or not raw:
        raise RecipeError(f"{path}: a space file maps recipe keys to ranges, e.g. 'lora.rank: {{type: int, low: 1, "
                          "high: 16}}'")
    return [space_param(path, str(key), spec, base) for key, spec in raw.items()]


def space_param(path: Path, key: str, spec: Any, base: Recipe) -> Param:
    where = f"{path}: {key}"
    if not isinstance(spec, dict):
        raise RecipeError(f"{where}: expected a mapping like {{type: int, low: 1, high: 16}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise RecipeError(f"{where}: type must be one of {', '.join(TYPES)}, got {kind!r}")
    allowed = {"choice": {"type", "values"}, "int": {"type", "low", "high", "log", "step"},
               "float": {"type", "low", "high"}, "log": {"type", "low", "high"}}[kind]
    extra = sorted(set(map(str, spec)) - allowed)
    if extra:
        raise RecipeError(f"{where}: unknown field {extra[0]!r} for type {kind} (it takes {', '.join(sorted(allowed))})")
    check_value(base, key, getattr_default(base, key), where)  # an unknown key fails here, whatever its values
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise RecipeError(f"{where}: values must be a non-empty list")
        kept = []
        for v in values:
            value = yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip() \
                if isinstance(v, list | dict) else v
            check_value(base, key, value, where)
            kept.append(value)
        return Param(key, "choice", values=tuple(kept))
    low, high = spec.get("low"), spec.get("high")
    number = int if kind == "int" else float
    for name, value in (("low", low), ("high", high)):
        if not is_number(value, number):
            raise RecipeError(f"{where}: {name} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    low, high = number(low), number(high)
    if not low < high:
        raise RecipeError(f"{where}: low {low!r} must be below high {high!r}")
    if (kind == "log" or spec.get("log")) and low <= 0:
        raise RecipeError(f"{where}: a log range needs low > 0, got {low!r}")
    step = spec.get("step", 1)
    if kind == "int" and (not is_number(step, int) or step < 1 or (spec.get("log") and step != 1)):
        raise RecipeError(f"{where}: step must be a positive integer (1 with log), got {step!r}")
    if not isinstance(spec.get("log", False), bool):
        raise RecipeError(f"{where}: log must be true or false, got {spec.get('log')!r}")
    for value in (low, high):
        check_value(base, key, value, where)
    return Param(key, kind, low=low, high=high, log=bool(spec.get("log", False)), step=int(step))


def is_number(value: Any, number: type) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        return number is float or value.is_integer()
    return isinstance(value, int) if number is int else isinstance(value, int | float) and math.isfinite(value)


def getattr_default(recipe: Recipe, key: str) -> Any:
    """The recipe's current value of a dotted key (None for an unknown key: check_value then names it)."""
    value: Any = recipe
    for part in key.split("."):
        if not hasattr(value, part):
            return None
        value = getattr(value, part)
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    return value


def trial_dir_name(number: int, params: dict) -> str:
    """'003-rank=4-lr=0.001': the trial number, then each swept key's last part and value."""
    parts = [f"{number:03d}"]
    for key, value in params.items():
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.rpartition('.')[2]}={shown}")
    name = "-".join(parts)
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", name)[:120]
