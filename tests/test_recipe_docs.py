"""docs/recipes.md is generated from the recipe dataclasses and must be up to date."""

import dataclasses
from pathlib import Path

from lorafit.recipe.docs import COMMAND, EXAMPLE, render_docs, type_name, write_docs
from lorafit.recipe.parse import Recipe, all_keys, parse_recipe

DOCS = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def test_docs_recipes_md_is_up_to_date():
    written = DOCS.read_text(encoding="utf-8") if DOCS.exists() else ""
    assert written == render_docs(), f"docs/recipes.md is out of date; regenerate it with: {COMMAND} (or make docs)"


def test_docs_list_every_key_with_its_help():
    text = render_docs()
    for key in all_keys():
        section, _, name = key.rpartition(".")
        if name in {f.name for f in dataclasses.fields(Recipe) if dataclasses.is_dataclass(f.type)}:
            assert f"\n## {name}\n" in text
        else:
            assert f"| `{key}` |" in text, key


def test_the_example_in_the_docs_is_a_valid_recipe():
    recipe = parse_recipe(EXAMPLE, "docs example")
    assert (recipe.lora.rank, recipe.train.lr, recipe.eval.beam_size) == (4, 2e-4, 4)
    assert f"```yaml\n{EXAMPLE}```" in render_docs()


def test_type_names():
    f = {f.name: f.type for f in dataclasses.fields(Recipe)}
    assert type_name(f["precision"]) == "one of fp32, bf16, auto"
    assert type_name(f["data_dir"]) == "str or null"
    assert type_name(dataclasses.fields(f["lora"])[3].type) == "list of str"


def test_write_docs(tmp_path):
    path = write_docs(tmp_path / "docs" / "recipes.md")
    assert path.read_text(encoding="utf-8") == render_docs()
