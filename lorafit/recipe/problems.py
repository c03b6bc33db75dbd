"""Recipe problems and where they were written: every problem is collected (file:line or the --set
item, dotted key, message) and reported at once, sorted by line."""

from __future__ import annotations

import math
import re

from lorafit.errors import RecipeError

# ---------------------------------------------------------------------------------------------------
# problems and where they were written


class Problems:
    """Collects problems; knows the line of each dotted key (from YAML) and which came from --set."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[str, int] = {}
        self.origins: dict[str, str] = {}  # dotted key -> "--set key=value"
        self.problems: list[tuple[float, int, str]] = []

    def where(self, path: str) -> tuple[float, str]:
        for p in self_and_parents(path):
            if p in self.origins:
                return math.inf, self.origins[p]
        for p in self_and_parents(path):
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
            raise recipe_error([text for _, _, text in sorted(self.problems)], self.source)


def recipe_error(problems: list[str], source: str = "") -> RecipeError:
    """One RecipeError for every problem: `source: N problems` then one indented line each.

    `.problems` keeps the lines for callers that want them one by one.
    """
    problems = [one_line(p) for p in problems]
    if len(problems) == 1:
        err = RecipeError(problems[0])
    else:
        err = RecipeError("\n".join([f"{source}: {len(problems)} problems", *("  " + p for p in problems)]))
    err.problems = problems
    return err


def one_line(text: str) -> str:
    """Control characters (a newline in a quoted key, a stray \\x1e in --set) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def self_and_parents(path: str):
    """'lora.targets[0]', 'lora.targets', 'lora'."""
    while path:
        yield path
        last = re.search(r"(\.[^.\[]*|\[\d+\])$", path)
        path = path[: last.start()] if last else path.rpartition(".")[0]


