"""Recipes: defaults, exact error messages (file, line, dotted key, suggestion), --set, dump round trip."""

import dataclasses
import subprocess
import sys
import textwrap

import pytest
import yaml

from lorafit.errors import EXIT_BAD_INPUT, RecipeError
from lorafit.recipe.parse import (
    LoraConfig,
    Recipe,
    TrainConfig,
    all_keys,
    apply_overrides,
    dump_recipe,
    load_recipe,
    parse_recipe,
    recipe_from_dict,
    recipe_hash,
    recipe_to_dict,
)

MINIMAL = "model: smollm2-135m\ntask: e2e\n"


def error(text: str, overrides=()) -> str:
    """The RecipeError message parse_recipe gives for `text` (dedented) named recipe.yaml."""
    with pytest.raises(RecipeError) as info:
        parse_recipe(textwrap.dedent(text), "recipe.yaml", overrides)
    problems = info.value.problems
    assert str(info.value) == (problems[0] if len(problems) == 1 else "\n".join(
        [f"recipe.yaml: {len(problems)} problems", *("  " + p for p in problems)]))
    return str(info.value)


# ---------------------------------------------------------------------------------------------------
# defaults


def test_minimal_recipe_takes_every_default_from_the_dataclasses():
    recipe = parse_recipe(MINIMAL)
    assert recipe == Recipe(model="smollm2-135m", task="e2e")
    assert recipe.name == "" and recipe.data_dir is None and recipe.output_dir is None
    assert recipe.seed == 0 and recipe.precision == "auto"
    assert recipe.lora == LoraConfig(
        rank=8, alpha=16.0, dropout=0.0, targets=("default",), targets_regex=None,
        rslora=False, init="kaiming", bias="none", modules_to_save=(),
    )
    t = recipe.train
    assert (t.epochs, t.max_steps, t.batch_size, t.grad_accum, t.lr) == (1.0, None, 8, 1, 2e-4)
    assert (t.weight_decay, t.warmup_steps, t.schedule, t.max_grad_norm, t.batching) == (0.0, 0, "linear", 1.0, "auto")
    assert (t.log_every, t.eval_every, t.save_every, t.keep_checkpoints, t.method) == (10, 0, 0, 2, "lora")
    d = recipe.data
    assert (d.max_length, d.max_train_examples, d.max_valid_examples, d.train_file, d.num_labels) == (512, None, 200, None, None)
    e = recipe.eval
    assert (e.split, e.limit, e.at_end, e.every, e.batch_size) == ("dev", None, False, 0, 16)
    assert (e.beam_size, e.length_penalty, e.no_repeat_ngram_size, e.max_new_tokens) == (1, 1.0, 0, 64)
    assert (recipe.log.tensorboard, recipe.log.plot) == (False, True)


def test_every_field_has_a_one_line_help():
    for cls in (Recipe, *(f.type for f in dataclasses.fields(Recipe) if dataclasses.is_dataclass(f.type))):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help") and "\n" not in f.metadata["help"], f"{cls.__name__}.{f.name}"


def test_name_defaults_to_the_file_stem_and_an_explicit_name_wins(tmp_path):
    path = tmp_path / "e2e-r4.yaml"
    path.write_text(MINIMAL)
    assert load_recipe(path).name == "e2e-r4"
    path.write_text(MINIMAL + "name: mine\n")
    assert load_recipe(path).name == "mine"
    assert load_recipe(path, ["name=other"]).name == "other"
    assert parse_recipe(MINIMAL).name == ""


def test_values_are_normalised():
    recipe = parse_recipe(MINIMAL + "lora: {alpha: 32, targets: all-linear}\ntrain: {epochs: 3}\n")
    assert recipe.lora.alpha == 32.0 and isinstance(recipe.lora.alpha, float)
    assert recipe.train.epochs == 3.0 and isinstance(recipe.train.epochs, float)
    assert recipe.lora.targets == ("all-linear",)  # a single string is a one-item list
    assert parse_recipe(MINIMAL + "lora: {targets: q_proj}").lora.targets == ("q_proj",)


def test_an_empty_section_keeps_its_defaults():
    assert parse_recipe(MINIMAL + "lora:\n  # rank: 4\ntrain:\n").lora == LoraConfig()


def test_recipes_are_frozen_and_updated_with_replace():
    recipe = parse_recipe(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.seed = 1  # type: ignore[misc]
    changed = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, lr=1e-3))
    assert changed.train.lr == 1e-3 and recipe.train.lr == 2e-4


# ---------------------------------------------------------------------------------------------------
# the 2e-4 trap: PyYAML (YAML 1.1) reads a float without a dot as a string


def test_pyyaml_reads_2e_4_as_a_string_which_is_the_trap():
    assert yaml.safe_load("lr: 2e-4") == {"lr": "2e-4"}


@pytest.mark.parametrize("written, value", [("2e-4", 2e-4), ("2.0e-4", 2e-4), ("1E-3", 1e-3), ("0.0002", 2e-4),
                                            ("'2e-4'", 2e-4), ("3", 3.0), ("+1e2", 100.0)])
def test_float_keys_accept_scientific_notation(written, value):
    recipe = parse_recipe(MINIMAL + f"train:\n  lr: {written}\n")
    assert recipe.train.lr == value and isinstance(recipe.train.lr, float)


def test_scientific_notation_through_set_and_a_negative_one_is_reported_as_written():
    assert parse_recipe(MINIMAL, overrides=["train.lr=1e-4"]).train.lr == 1e-4
    assert error(MINIMAL + "train:\n  lr: -2e-4\n") == "recipe.yaml:4: train.lr: must be > 0, got -2e-4"


def test_int_keys_do_not_take_scientific_notation_or_floats():
    assert error(MINIMAL + "lora:\n  rank: 1e3\n") == "recipe.yaml:4: lora.rank: expected an integer, got '1e3'"
    assert error(MINIMAL + "lora:\n  rank: 4.0\n") == "recipe.yaml:4: lora.rank: expected an integer, got 4.0"


# ---------------------------------------------------------------------------------------------------
# bad recipes: one exact message each


BAD = [
    pytest.param(
        """\
        model: m
        task: e2e
        lora:
          rnak: 4
        """,
        "recipe.yaml:4: lora.rnak: unknown key (did you mean 'rank'?)",
        id="misspelt-key",
    ),
    pytest.param(
        "model: m\ntask: e2e\nrank: 4\n",
        "recipe.yaml:3: rank: unknown key (did you mean 'lora.rank'?)",
        id="key-in-the-wrong-section",
    ),
    pytest.param(
        "model: m\ntask: e2e\ntrain:\n  rank: 4\n",
        "recipe.yaml:4: train.rank: unknown key (did you mean 'lora.rank'?)",
        id="key-in-another-section",
    ),
    pytest.param(
        "model: m\ntask: e2e\nbatch_size: 4\n",
        "recipe.yaml:3: batch_size: unknown key (did you mean 'train.batch_size' or 'eval.batch_size'?)",
        id="key-in-two-sections",
    ),
    pytest.param(
        "model: m\ntask: e2e\nlora.rank: 4\n",
        "recipe.yaml:3: lora.rank: unknown key (nest it: 'rank:' inside 'lora:')",
        id="dotted-key-in-yaml",
    ),
    pytest.param(
        "model: m\ntask: e2e\ntrain:\n  batch_size: 8\n  lr: -0.001\n",
        "recipe.yaml:5: train.lr: must be > 0, got -0.001",
        id="negative-lr",
    ),
    pytest.param(
        "model: m\ntask: e2e\nlora:\n  rank: four\n",
        "recipe.yaml:4: lora.rank: expected an integer, got 'four'",
        id="int-as-word",
    ),
    pytest.param(
        "model: m\ntask: e2e\neval:\n  beam_size: true\n",
        "recipe.yaml:4: eval.beam_size: expected an integer, got true",
        id="bool-is-not-an-int",
    ),
    pytest.param(
        "model: m\ntask: e2e\nlora:\n  dropout: 1.0\n",
        "recipe.yaml:4: lora.dropout: must be in [0, 1), got 1.0",
        id="dropout-range",
    ),
    pytest.param(
        "model: m\ntask: e2e\nlora:\n  rslora: 1\n",
        "recipe.yaml:4: lora.rslora: expected true or false, got 1",
        id="bool-as-int",
    ),
    pytest.param(
        "model: m\ntask: e2e\nlog:\n  plot: 'true'\n",
        "recipe.yaml:4: log.plot: expected true or false, got 'true'",
        id="bool-as-string",
    ),
    pytest.param(
        "model: m\ntask: e2e\nprecision: fp16\n",
        "recipe.yaml:3: precision: must be one of 'fp32', 'bf16', 'auto', got 'fp16' (did you mean 'bf16'?)",
        id="literal-choice",
    ),
    pytest.param(
        "model: m\ntask: e2e\ntrain:\n  schedule: cosin\n",
        "recipe.yaml:4: train.schedule: must be one of 'linear', 'cosine', 'constant', got 'cosin' (did you mean 'cosine'?)",
        id="literal-typo",
    ),
    pytest.param(
        "model: m\ntask: e2e\nlora:\n  targets:\n    - q_proj\n    - 3\n",
        "recipe.yaml:6: lora.targets[1]: expected a string, got 3",
        id="list-item-not-a-string",
    ),
    pytest.param(
        "model: m\ntask: e2e\nlora:\n  targets: q_proj,v_proj\n",
        "recipe.yaml:4: lora.targets[0]: not a module name: 'q_proj,v_proj' (a list is written [q_proj, v_proj])",
        id="comma-string-instead-of-list",
    ),
    pytest.param(
        "model: m\ntask: e2e\nlora:\n  targets: [q_proj, all-linear]\n",
        "recipe.yaml:4: lora.targets: all-linear must be the only entry, got [q_proj, all-linear]",
        id="all-linear-with-others",
    ),
    pytest.param(
        "model: m\ntask: e2e\nlora:\n  targets_regex: '(q_proj'\n",
        "recipe.yaml:4: lora.targets_regex: '(q_proj' is not a valid regular expression: "
        "missing ), unterminated subpattern at position 0",
        id="bad-regex",
    ),
    pytest.param(
        "model: m\ntask: e2e\ntrain: 5\n",
        "recipe.yaml:3: train: expected a mapping of keys (a section), got 5",
        id="section-not-a-mapping",
    ),
    pytest.param(
        "model: m\ntask: ''\n",
        "recipe.yaml:2: task: must not be empty",
        id="empty-task",
    ),
    pytest.param(
        "model: m\ntask: e2e\ndata_dir: 7\n",
        "recipe.yaml:3: data_dir: expected a string or null, got 7",
        id="optional-string",
    ),
    pytest.param(
        "model: m\ntask: e2e\ntrain:\n  max_grad_norm: 0\n",
        "recipe.yaml:4: train.max_grad_norm: must be > 0, got 0",
        id="zero-clip",
    ),
    pytest.param(
        "model: m\ntask: e2e\ntrain:\n  lr: .inf\n",
        "recipe.yaml:4: train.lr: expected a finite number, got inf",
        id="infinite-lr",
    ),
    pytest.param(
        "model: m\ntask: e2e\nseed: 1\nseed: 2\n",
        "recipe.yaml:4: seed: duplicate key (first at line 3)",
        id="duplicate-key",
    ),
    pytest.param(
        "task: e2e\n",
        "recipe.yaml: model: required key is missing",
        id="missing-model",
    ),
    pytest.param(
        "model: m\ntask: e2e\nlora:\n  rank: 4\n alpha: 8\n",
        "recipe.yaml:5:2: YAML syntax error: expected <block end>, but found '<block mapping start>' "
        "(while parsing a block mapping at line 1); check the indentation",
        id="yaml-indentation",
    ),
    pytest.param(
        "model: m\ntask: e2e\nlora: rank: 4\n",
        "recipe.yaml:3:11: YAML syntax error: mapping values are not allowed here",
        id="yaml-two-colons",
    ),
    pytest.param(
        "model: m\ntask: [e2e\n",
        "recipe.yaml:3:1: YAML syntax error: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence at line 2)",
        id="yaml-unclosed-list",
    ),
    pytest.param("", "recipe.yaml: the recipe is empty (it needs at least model: and task:)", id="empty"),
    pytest.param("# nothing yet\n", "recipe.yaml: the recipe is empty (it needs at least model: and task:)", id="comments"),
    pytest.param(
        "- model: m\n",
        "recipe.yaml: a recipe is a mapping of keys (model: ..., task: ...), got a list",
        id="top-level-list",
    ),
    pytest.param(
        "model: m\ntask: e2e\nseed: !!python/object:os.system x\n",
        "recipe.yaml:3:7: cannot read the value: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object:os.system'",
        id="unsafe-tag",
    ),
    pytest.param(
        "model: m\ntask: e2e\non: 1\n",
        "recipe.yaml:3: on: unknown key",
        id="yaml-1.1-boolean-key-stays-a-name",
    ),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_recipe_gives_one_exact_message(text, message):
    assert error(text) == message


def test_every_problem_is_reported_at_once_in_file_order():
    text = """\
    model: m
    task: e2e
    lora:
      rank: 0
      rnak: 4
    train:
      lr: -1
      schedule: cosin
    """
    assert error(text) == "\n".join(
        [
            "recipe.yaml: 4 problems",
            "  recipe.yaml:4: lora.rank: must be > 0, got 0",
            "  recipe.yaml:5: lora.rnak: unknown key (did you mean 'rank'?)",
            "  recipe.yaml:7: train.lr: must be > 0, got -1",
            "  recipe.yaml:8: train.schedule: must be one of 'linear', 'cosine', 'constant', got 'cosin' (did you mean 'cosine'?)",
        ]
    )


def test_control_characters_in_keys_and_overrides_stay_on_one_line():
    assert error(MINIMAL + '"a\\nb": 1\n') == "recipe.yaml:3: a\\nb: unknown key"
    assert error(MINIMAL, ["name\x1e"]) == "--set name\\x1e: expected KEY=VALUE, e.g. --set train.lr=1e-4"


def test_missing_required_keys_are_all_named():
    with pytest.raises(RecipeError) as info:
        parse_recipe("seed: 1\n", "r.yaml")
    assert info.value.problems == ["r.yaml: model: required key is missing", "r.yaml: task: required key is missing"]
    assert str(info.value).splitlines()[0] == "r.yaml: 2 problems"
    assert info.value.exit_code == EXIT_BAD_INPUT


def test_load_recipe_names_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: m\ntask: e2e\nlora:\n  rnak: 4\n")
    with pytest.raises(RecipeError, match=r"^.*r\.yaml:4: lora\.rnak: unknown key \(did you mean 'rank'\?\)$"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="missing.yaml: cannot read recipe: No such file or directory"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"model: caf\xe9\n")
    with pytest.raises(RecipeError, match="latin1.yaml: not UTF-8 text"):
        load_recipe(tmp_path / "latin1.yaml")


def test_recursive_and_exploding_aliases_are_errors_not_hangs():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    assert error(MINIMAL + bomb).splitlines()[0] == "recipe.yaml: 9 problems"
    assert error(MINIMAL + "lora: &x {targets: *x}\n") == "recipe.yaml:3: lora.targets: expected a string or a list of strings, got a mapping"


# ---------------------------------------------------------------------------------------------------
# --set overrides


def test_overrides_set_any_key_with_yaml_values():
    recipe = parse_recipe(
        MINIMAL + "lora:\n  rank: 4\n",
        overrides=["train.lr=1e-4", "lora.targets=[q_proj,k_proj]", "lora.rank=16", "eval.limit=null",
                   "train.max_steps=100", "log.plot=false", "name = spaced "],
    )
    assert recipe.train.lr == 1e-4
    assert recipe.lora.targets == ("q_proj", "k_proj")
    assert recipe.lora.rank == 16
    assert recipe.train.max_steps == 100 and recipe.eval.limit is None and recipe.log.plot is False
    assert recipe.name == "spaced"


def test_an_override_can_supply_a_missing_required_key():
    assert parse_recipe("task: e2e\n", overrides=["model=minilm-l6"]).model == "minilm-l6"


def test_override_problems_name_the_set_item():
    with pytest.raises(RecipeError) as info:
        parse_recipe(
            MINIMAL + "lora:\n  rnak: 4\n",
            "recipe.yaml",
            ["train.lr=-1e-4", "train.rnak=3", "lr=1e-4", "lora", "lora=3", "seed.x=1", "eval.limit=[", "=3"],
        )
    assert info.value.problems == [
        "recipe.yaml:4: lora.rnak: unknown key (did you mean 'rank'?)",
        "--set train.rnak=3: train.rnak: unknown key (did you mean 'lora.rank'?)",
        "--set lr=1e-4: lr: unknown key (did you mean 'train.lr'?)",
        "--set lora: expected KEY=VALUE, e.g. --set train.lr=1e-4",
        "--set lora=3: lora: is a section; set one of its keys, e.g. --set lora.rank=...",
        "--set seed.x=1: seed.x: unknown key (seed is not a section)",
        "--set eval.limit=[: cannot read the value as YAML: expected the node content, but found '<stream end>'",
        "--set =3: expected KEY=VALUE, e.g. --set train.lr=1e-4",
        "--set train.lr=-1e-4: train.lr: must be > 0, got -1e-4",
    ]
    assert str(info.value).splitlines()[0] == "recipe.yaml: 9 problems"


def test_apply_overrides_returns_a_new_validated_recipe():
    recipe = parse_recipe(MINIMAL)
    changed = apply_overrides(recipe, ["lora.rank=4", "train.schedule=cosine"])
    assert (changed.lora.rank, changed.train.schedule) == (4, "cosine")
    assert recipe.lora.rank == 8
    assert apply_overrides(recipe, []) == recipe
    with pytest.raises(RecipeError) as info:
        apply_overrides(recipe, ["lora.rank=0"])
    assert str(info.value) == "--set lora.rank=0: lora.rank: must be > 0, got 0"


# ---------------------------------------------------------------------------------------------------
# dict, dump, hash


FULL = """\
name: full
model: ./models/tiny
task: text
data_dir: /data
seed: 3
precision: bf16
output_dir: runs/x
lora:
  rank: 4
  alpha: 32
  dropout: 0.1
  targets: [q_proj, "1e-4", "no", "null"]
  targets_regex: '.*\\.(q|v)_proj'
  rslora: true
  init: gaussian
  bias: lora_only
  modules_to_save: [score]
data:
  train_file: train.jsonl
  prompt_template: "Q: {question}\\nA:"
  completion_field: answer
  num_labels: 3
  max_length: 128
  max_train_examples: 1000
  max_valid_examples: null
train:
  epochs: 2.5
  max_steps: 50
  lr: 2e-4
  weight_decay: 0.01
  max_grad_norm: null
  batching: pad
eval:
  split: test
  limit: 10
  at_end: true
  length_penalty: 0.8
log: {tensorboard: true, plot: false}
"""


def test_dump_then_parse_gives_the_same_recipe():
    recipe = parse_recipe(FULL)
    text = dump_recipe(recipe)
    assert parse_recipe(text) == recipe
    assert dump_recipe(parse_recipe(text)) == text  # stable
    assert "targets: [q_proj, 1e-4, 'no', 'null']" in text  # strings that look like other types stay strings


def test_dump_writes_every_key_in_field_order():
    text = dump_recipe(parse_recipe(MINIMAL))
    top = yaml.safe_load(text)
    written = [k for k in top] + [f"{s}.{k}" for s, v in top.items() if isinstance(v, dict) for k in v]
    assert sorted(written) == sorted(all_keys())
    assert list(top) == [f.name for f in dataclasses.fields(Recipe)]
    assert list(top["train"]) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert text.startswith("name: ''\nmodel: smollm2-135m\ntask: e2e\ndata_dir: null\n")
    assert "\nlora:\n  rank: 8\n  alpha: 16.0\n  dropout: 0.0\n  targets: [default]\n" in text


def test_recipe_to_dict_and_from_dict_round_trip():
    recipe = parse_recipe(FULL)
    d = recipe_to_dict(recipe)
    assert d["lora"]["targets"] == ["q_proj", "1e-4", "no", "null"] and isinstance(d["lora"]["modules_to_save"], list)
    assert recipe_from_dict(d) == recipe


def test_recipe_from_dict_validates_and_leaves_its_input_alone():
    d = {"model": "m", "task": "e2e", "train": {"lr": 1e-3}}
    assert recipe_from_dict(d, "api", ["train.lr=1e-4"]).train.lr == 1e-4
    assert d == {"model": "m", "task": "e2e", "train": {"lr": 1e-3}}
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"model": "m", "task": "e2e", 3: 1, "lora": {"rank": "4"}}, "api")
    assert info.value.problems == [
        "api: 3: unknown key",
        "api: lora.rank: expected an integer, got '4'",
    ]


def test_recipe_hash_is_stable_and_changes_with_any_value():
    recipe = parse_recipe(FULL)
    h = recipe_hash(recipe)
    assert len(h) == 16 and int(h, 16) >= 0
    assert recipe_hash(parse_recipe(dump_recipe(recipe))) == h
    assert recipe_hash(apply_overrides(recipe, ["train.lr=3e-4"])) != h
    assert recipe_hash(parse_recipe(MINIMAL + "lora: {alpha: 16}")) == recipe_hash(parse_recipe(MINIMAL))


def test_recipe_module_imports_neither_torch_nor_transformers():
    code = "import sys, lorafit.recipe.parse, lorafit.recipe.docs; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
