"""Property tests: whatever the input, the recipe loader returns a Recipe or raises RecipeError.

Any other exception (TypeError, KeyError, RecursionError, a yaml error) is a bug: the CLI would show
a traceback instead of `error: recipe.yaml:7: ...`.
"""

import dataclasses
import types
import typing

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorafit.errors import RecipeError
from lorafit.recipe.parse import Recipe, all_keys, dump_recipe, parse_recipe, recipe_from_dict, recipe_hash

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SLOW = settings(FUZZ, max_examples=150)  # big generated inputs: generating them is most of the time

KEY_NAMES = sorted({k.rsplit(".", 1)[-1] for k in all_keys()})
YAMLISH = st.text(alphabet=" \n\t:-[]{},#&*!|>'\"?%@`abcdefxyz019.eE+_", max_size=200)


def check(text: str, overrides=()) -> None:
    try:
        recipe = parse_recipe(text, "fuzz.yaml", overrides)
    except RecipeError as e:
        message = str(e)
        assert message and all(line.startswith(("fuzz.yaml", "  fuzz.yaml", "--set", "  --set")) for line in message.splitlines())
    else:
        assert isinstance(recipe, Recipe)


@FUZZ
@given(st.one_of(st.text(max_size=300), YAMLISH))
def test_any_text_gives_a_recipe_or_a_recipe_error(text):
    check(text)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.sampled_from(["2e-4", "-1", "1e999", "all-linear", "q_proj", "fp16", "bf16", "cosine", "yes", ""]),
)
keys = st.one_of(st.sampled_from(KEY_NAMES), st.text(max_size=10))
nested = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=12)
sections = st.dictionaries(st.sampled_from(KEY_NAMES), nested, max_size=6)
recipe_like = st.fixed_dictionaries(
    {"model": st.sampled_from(["m", "smollm2-135m"]), "task": st.sampled_from(["e2e", "text"])},
    optional={name: st.one_of(sections, nested) for name in ["lora", "data", "train", "eval", "log", "seed", "name", "precision"]},
)


@FUZZ_SLOW
@given(st.one_of(recipe_like, st.dictionaries(keys, nested, max_size=6), nested))
def test_any_nested_data_dumped_to_yaml_gives_a_recipe_or_a_recipe_error(data):
    check(yaml.safe_dump(data, sort_keys=False))
    if isinstance(data, dict):
        try:
            recipe_from_dict(data, "fuzz.yaml")
        except RecipeError:
            pass


dotted_keys = st.one_of(st.sampled_from(all_keys()), st.text(max_size=15))
override_items = st.one_of(
    st.text(max_size=30),
    st.builds(lambda k, v: f"{k}={v}", dotted_keys, st.one_of(YAMLISH, st.text(max_size=20))),
)


@FUZZ
@given(st.lists(override_items, max_size=4))
def test_any_override_strings_give_a_recipe_or_a_recipe_error(overrides):
    check("model: m\ntask: e2e\n", overrides)


# valid recipes built from the schema itself: dump -> parse gives back an equal recipe

def value_strategy(tp: typing.Any) -> st.SearchStrategy:
    if dataclasses.is_dataclass(tp):
        return st.builds(tp, **{f.name: field_strategy(f) for f in dataclasses.fields(tp)})
    if isinstance(tp, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return st.one_of(*([st.none()] if len(inner) < len(typing.get_args(tp)) else []), *map(value_strategy, inner))
    if typing.get_origin(tp) is typing.Literal:
        return st.sampled_from(typing.get_args(tp))
    if typing.get_origin(tp) is dict:  # data.source per split, data.role_names
        key, value = typing.get_args(tp)
        return st.dictionaries(value_strategy(key), value_strategy(value), min_size=1, max_size=3)
    if tp == list[str]:
        return st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=3)
    return {
        bool: st.booleans(),
        int: st.integers(1, 10**6),
        float: st.floats(0.001, 1e6) | st.floats(1e-12, 1e-3),
        str: st.text(min_size=1, max_size=30),
        tuple[str, ...]: st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,12}", fullmatch=True), min_size=1, max_size=3).map(tuple),
    }[tp]


def field_strategy(f: dataclasses.Field) -> st.SearchStrategy:
    if f.name in ("dropout", "valid_fraction"):  # [0, 1)
        return st.floats(0.0, 0.99)
    if f.name == "targets_regex":
        return st.sampled_from([None, r".*\.(q|v)_proj", "layers\\.0\\..*"])
    if f.name == "init":  # the inits that combine with every variant (pissa/olora + dora is refused)
        return st.sampled_from(["kaiming", "gaussian"])
    if f.name in ("rank_pattern", "alpha_pattern"):  # regex keys, values > 0; {} is the default
        values = st.integers(1, 64) if f.name == "rank_pattern" else st.floats(0.5, 64.0)
        return st.dictionaries(st.from_regex(r"[a-z_]{1,8}(\.[0-9])?", fullmatch=True), values, max_size=3)
    return value_strategy(f.type)


@FUZZ_SLOW
@given(value_strategy(Recipe))
def test_dump_then_parse_round_trips_any_valid_recipe(recipe):
    text = dump_recipe(recipe)
    again = parse_recipe(text)
    assert again == recipe
    assert recipe_hash(again) == recipe_hash(recipe)


VALID = """\
name: demo
model: smollm2-135m
task: e2e
lora:
  rank: 4
  alpha: 32
  targets: [q_proj, v_proj]
train:
  lr: 2e-4
  schedule: cosine
eval: {beam_size: 4, split: dev}
"""


@st.composite
def mutated(draw) -> str:
    """The valid recipe above with a few characters inserted, deleted or replaced: near-miss YAML."""
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        new = draw(st.sampled_from([" ", "\n", ":", "-", "[", "]", "{", "}", "'", '"', "#", "&a", "*a", "!", "\t", "2e-4", "x"]))
        cut = draw(st.integers(0, 3))
        text = text[:at] + new + text[at + cut :]
    return text


@FUZZ
@given(mutated())
def test_near_miss_recipes_give_a_recipe_or_a_recipe_error(text):
    check(text)
