"""lora.targets keywords `default` (the attention's query and value projections, by model type or by
the documented rule), `attention` and `mlp`; the shipped GLUE recipes use `default` and so run on
BERT, RoBERTa, DeBERTa-v2 and DistilBERT unchanged."""

import json

import pytest
import torch
from cli_runs import run_cli
from families import CAUSAL_FAMILIES, ENCODER_FAMILIES, build
from peft import PeftModel
from tiny import tiny_bert, tiny_llama, tiny_tokenizer

from lorafit.errors import TargetError
from lorafit.lora import LoraSpec, add_lora, save_adapter
from lorafit.lora.inject import KEYWORDS
from lorafit.lora.targets import QUERY_VALUE_BY_MODEL_TYPE
from lorafit.recipe.check import TARGET_KEYWORDS
from lorafit.recipe.shipped import recipe_paths

torch.set_num_threads(1)

# family -> the leaf names `default` adapts (what PEFT's per-architecture defaults name too).
EXPECTED_DEFAULT = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "opt", "starcoder2",
                     "llama4_text"), ["q_proj", "v_proj"]),
    "phi3": ["qkv_proj"], "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"], "falcon": ["query_key_value"], "bloom": ["query_key_value"],
    "bert": ["query", "value"], "roberta": ["query", "value"], "deberta_v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
}


def adapted_leaves(model, *targets, **spec):
    report = add_lora(model, LoraSpec(rank=2, targets=targets, **spec))
    return report.adapted, sorted({name.rsplit(".", 1)[-1] for name in report.adapted})


@pytest.mark.parametrize("family", CAUSAL_FAMILIES + ENCODER_FAMILIES)
def test_default_is_the_query_and_value_projections_and_the_rule_agrees_with_the_table(family):
    saved = ("classifier", "pre_classifier") if family in ENCODER_FAMILIES else ()
    names, leaves = adapted_leaves(build(family), "default", modules_to_save=saved)
    assert leaves == EXPECTED_DEFAULT[family] and len(names) == 2 * len(leaves)  # in each of the 2 layers
    unknown = build(family)
    assert unknown.config.model_type in QUERY_VALUE_BY_MODEL_TYPE
    unknown.config.model_type = "not-in-the-table"  # the rule alone: attention layer names
    assert adapted_leaves(unknown, "default", modules_to_save=saved)[0] == names


def test_attention_and_mlp_on_llama_and_bert():
    assert adapted_leaves(tiny_llama(), "attention")[1] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert adapted_leaves(tiny_llama(), "mlp")[1] == ["down_proj", "gate_proj", "up_proj"]
    names, _ = adapted_leaves(tiny_bert(), "attention", modules_to_save=("classifier",))
    assert [n.split("layer.0.")[1] for n in names if "layer.0." in n] == [
        "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"]
    names, _ = adapted_leaves(tiny_bert(), "mlp", modules_to_save=("classifier",))
    assert [n.split("layer.1.")[1] for n in names if "layer.1." in n] == ["intermediate.dense", "output.dense"]
    assert not any("pooler" in n or "classifier" in n for n in names)  # not in a block / trained in full


def test_default_on_an_unknown_model_without_attention_names_says_what_to_do():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(TargetError) as e:
        add_lora(model, LoraSpec(targets=("default",)))
    assert str(e.value) == ("lora.targets default: no query/value projection found in model type None; list the "
                            "layers to adapt (attention layer names: none found)")


def test_keywords_are_the_only_target_and_the_recipe_checker_knows_them(tmp_path):
    assert TARGET_KEYWORDS == KEYWORDS
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ntask: quickstart\nlora:\n  targets: [mlp, q_proj]\n")
    done = run_cli(["inspect", recipe])
    assert done.exit_code == 2 and "lora.targets: mlp must be the only entry, got [mlp, q_proj]" in done.output


@pytest.mark.parametrize("keyword", ["default", "mlp"])
def test_a_keyword_adapter_loads_in_peft_with_the_same_logits(keyword, tmp_path):
    # mlp on BERT adapts two of the three `dense` layers per block: the file names them by a regex.
    model = tiny_bert(num_labels=2)
    spec = LoraSpec(rank=4, targets=(keyword,), modules_to_save=("classifier",))
    add_lora(model, spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    save_adapter(model, tmp_path / "a", spec, base_model_name_or_path="tiny", task_type="SEQ_CLS")
    peft = PeftModel.from_pretrained(tiny_bert(num_labels=2), str(tmp_path / "a")).eval()
    ids = torch.randint(3, 128, (2, 9))
    torch.testing.assert_close(peft(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


GLUE_RECIPES = [p for p in recipe_paths() if p.stem.endswith("-minilm")]


@pytest.fixture(scope="module")
def encoder_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    for family in ENCODER_FAMILIES:  # the bare encoder, as pretrained checkpoints ship (each task adds its head)
        build(family).base_model.save_pretrained(root / family)
        tiny_tokenizer().save_pretrained(root / family)
    return root


def test_every_shipped_glue_recipe_names_default():
    assert len(GLUE_RECIPES) == 5 and all("  targets: default" in p.read_text() for p in GLUE_RECIPES)


# Each recipe on one encoder, each encoder at least once (the recipes' lora sections are alike).
@pytest.mark.parametrize("recipe, family", [(r, ENCODER_FAMILIES[i % 4]) for i, r in enumerate(GLUE_RECIPES)],
                         ids=lambda x: getattr(x, "stem", x))
def test_shipped_glue_recipes_adapt_query_and_value_on_every_encoder(recipe, family, encoder_dirs):
    done = run_cli(["inspect", recipe, "--set", f"model={encoder_dirs / family}", "--json"])
    assert done.exit_code == 0, done.output
    matched = json.loads(done.stdout.strip().splitlines()[-1])["matched"]
    assert sorted({n.rsplit(".", 1)[-1] for n in matched["default"]}) == EXPECTED_DEFAULT[family]
