"""The recipes shipped with lorafit (lorafit/recipes/*.yaml, also reachable as ./recipes in a checkout)."""

from __future__ import annotations

import difflib
from pathlib import Path

from lorafit.errors import RecipeError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def recipe_paths() -> list[Path]:
    """The shipped recipe files, sorted by name."""
    return sorted(RECIPES_DIR.glob("*.yaml"))


def description(path: Path) -> str:
    """A recipe's first comment line ("# ...") is its one-line description."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def shipped_recipes() -> list[dict]:
    """One row per shipped recipe for `lorafit recipes`: name, path and description."""
    return [{"name": p.stem, "path": str(p), "description": description(p)} for p in recipe_paths()]


def recipe_text(name: str) -> str:
    """The text of shipped recipe `name` (with or without .yaml)."""
    path = RECIPES_DIR / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        names = [p.stem for p in recipe_paths()]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"no shipped recipe {name!r}{hint}; available: {', '.join(names)}")
    return path.read_text(encoding="utf-8")
