"""Recipes: the schema (frozen dataclasses holding every default), the YAML parser with file:line
errors and `--set` overrides, the generated reference (docs.py) and the shipped recipes."""

from lorafit.recipe.parse import dump_recipe, load_recipe, parse_recipe, recipe_from_dict, recipe_hash
from lorafit.recipe.schema import DataConfig, EvalConfig, LogConfig, LoraConfig, Recipe, TrainConfig

__all__ = [
    "DataConfig", "EvalConfig", "LogConfig", "LoraConfig", "Recipe", "TrainConfig",
    "dump_recipe", "load_recipe", "parse_recipe", "recipe_from_dict", "recipe_hash",
]
