"""Tasks by name, and where their data lives.

    get_task("glue/sst2")                  -> Task (glue/*, e2e, wikisql, quickstart)
    get_task("text", options)              -> Task built from the recipe's `data:` settings
    resolve_data_dir(recipe.data_dir)      -> Path (recipe `data_dir:`, else $LORAFIT_DATA)

Each family is one module (glue.py, e2e.py, wikisql.py, text.py, quickstart.py) producing the
records in types.py.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from lorafit.errors import DataError
from lorafit.recipe.schema import DataConfig
from lorafit.tasks import e2e, glue, quickstart, wikisql
from lorafit.tasks.text import text_task
from lorafit.tasks.types import Task

DATA_ENV = "LORAFIT_DATA"
TASK_NAMES: tuple[str, ...] = tuple(
    sorted([e2e.NAME, wikisql.NAME, quickstart.TASK.name, "text", *(spec.task_name for spec in glue.SPECS.values())])
)

__all__ = [
    "DATA_ENV", "TASK_NAMES", "Task", "get_task", "resolve_data_dir", "task_data_dir", "text_task",
]


def get_task(name: str, options: DataConfig | None = None) -> Task:
    """The task called `name`; `text` needs `options` (the recipe's `data:` section), others ignore them."""
    if options is not None and options.source and name != "text":
        raise DataError(f"data.source is read by task: text; task {name} reads its own files (remove data.source, "
                        "or set task: text)")
    if name == "text":
        if options is None:
            raise DataError(
                "task text needs a data: section (data.train_file and data.completion_field + "
                "data.prompt_template, or data.label_field + data.text_field + data.num_labels)"
            )
        return text_task(options)
    if name == e2e.NAME:
        return e2e.TASK
    if name == wikisql.NAME:
        return wikisql.TASK
    if name == quickstart.TASK.name:
        return quickstart.TASK
    if name.startswith("glue/") and name.removeprefix("glue/") in glue.SPECS:
        return glue.glue_task(name.removeprefix("glue/"))
    close = difflib.get_close_matches(name, TASK_NAMES, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise DataError(f"unknown task {name!r} (valid: {', '.join(TASK_NAMES)}){hint}")


def resolve_data_dir(recipe_value: str | None) -> Path:
    """The data directory: the recipe's `data_dir:` if set, else $LORAFIT_DATA; it must exist."""
    value = recipe_value or os.environ.get(DATA_ENV)
    if not value:
        raise DataError(
            f"no data directory: set data_dir: in the recipe, or the environment variable {DATA_ENV} "
            f"(e.g. export {DATA_ENV}=/path/to/data, the folder that holds glue/, e2e/, wikisql/)"
        )
    path = Path(value).expanduser()
    source = "the recipe's data_dir" if recipe_value else f"${DATA_ENV}"
    if not path.exists():
        raise DataError(f"data directory {path} (from {source}) does not exist")
    if not path.is_dir():
        raise DataError(f"data directory {path} (from {source}) is not a directory")
    return path


def task_data_dir(task: Task, recipe_value: str | None) -> Path | None:
    """The data directory `task` reads from, or None for a task that brings its own data."""
    if not task.needs_data_dir and not recipe_value:
        return None
    if task.data_dir_optional and not recipe_value:
        # Only the environment's directory is optional: a data_dir the recipe names must exist.
        env = os.environ.get(DATA_ENV)
        return Path(env).expanduser() if env and Path(env).expanduser().is_dir() else None
    return resolve_data_dir(recipe_value)
