"""train.batching: auto picks what the model can train on (packed rows only where attention runs
through SDPA; Gemma 2 and BLOOM compute it themselves, so they bucket) and says which in one line;
packed rows of sliding-window models keep each example's window."""

import pytest
import torch
from cli_runs import TINY_RECIPE, run_cli, write_recipe
from families import WINDOW, build
from test_packing import assert_packed_equals_one_by_one
from tiny import tiny_tokenizer, with_trained_looking_lora

from lorafit.data.batches import (
    describe_batching,
    encode_generation,
    resolve_batching,
)
from lorafit.tasks.types import GenerationExample

torch.set_num_threads(1)

# Examples of 25-60 tokens: longer than the tiny models' 8-token window.
EXAMPLES = [
    GenerationExample("name[A], food[Thai]\nDescription:", " A serves Thai food."),
    GenerationExample("name[Cafe Zed], area[riverside], rating[high]\nDescription:", " Cafe Zed is highly rated."),
    GenerationExample("x\nDescription:", " Some words here and more"),
]


@pytest.mark.parametrize("family, expected", [
    ("llama", "pack"), ("mistral", "pack"), ("gemma3_text", "pack"), ("gemma2", "bucket"), ("bloom", "bucket"),
    ("llama4_text", "bucket"),  # chunked attention: chunks counted from the row's start, not each example's
])
def test_auto_packs_only_models_whose_attention_runs_through_sdpa(family, expected):
    model = build(family)
    assert resolve_batching("auto", "generation", model) == expected
    assert resolve_batching("auto", "classification", model) == "bucket"
    assert resolve_batching("pad", "generation", model) == "pad"  # an explicit choice stays as given


def test_the_log_says_why_auto_did_not_pack():
    assert describe_batching("auto", "generation", build("gemma2")) == (
        "bucket (auto; cannot pack: gemma2 attention is 'eager', not torch's scaled_dot_product_attention)")
    assert describe_batching("auto", "generation", build("llama")) == "pack"
    assert describe_batching("auto", "generation", build("llama4_text")) == (
        "bucket (auto; cannot pack: llama4_text has chunked_attention layers)")
    assert describe_batching("auto", "classification", build("bert")) == "bucket"


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma3_text"])
def test_packed_sliding_window_loss_and_gradients_equal_the_examples_one_by_one(family):
    items = encode_generation(EXAMPLES, tiny_tokenizer(), 512)[0]
    assert min(len(e) for e in items) > 2 * WINDOW
    assert_packed_equals_one_by_one(with_trained_looking_lora(build(family)), items, atol=1e-5, rtol=1e-4)


def test_train_with_default_batching_buckets_gemma2_and_says_so_in_one_line(tmp_path):
    # (BLOOM and every other family train with the defaults in tests/test_coverage.py.)
    family = "gemma2"
    model_dir = tmp_path / family
    build(family).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    recipe = TINY_RECIPE.replace("max_steps: 40", "max_steps: 2").replace("[q_proj, v_proj]", "all-linear")
    result = run_cli(["train", write_recipe(tmp_path / "r.yaml", model_dir, recipe), "-o", tmp_path / "run"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "batching" in line]
    assert len(lines) == 1 and lines[0].endswith(
        f"batching bucket (auto; cannot pack: {family} attention is 'eager', not torch's scaled_dot_product_attention)")
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
