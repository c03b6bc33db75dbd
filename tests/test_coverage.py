"""Does lorafit support my model? Every family of tests/families.py trained, merged, generated (or
classified) and, in a slow test, served, with bench/model_coverage.py's checks; docs/models.md must
say what these checks find (it is that script's output)."""

import sys
from pathlib import Path

import pytest
import torch
from families import CAUSAL_FAMILIES, ENCODER_FAMILIES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import model_coverage as coverage  # noqa: E402

torch.set_num_threads(1)

FAMILIES = CAUSAL_FAMILIES + ENCODER_FAMILIES
# What is not supported, and why: the cells these families must show (every other cell of the
# default columns is "yes", "yes (classify)" or, for an encoder's pack, "n/a (classifier)").
EXPECTED_GAPS = {
    ("gemma2", "pack"): "no: gemma2 attention is 'eager', not torch's scaled_dot_product_attention",
    ("bloom", "pack"): "no: bloom attention is 'eager', not torch's scaled_dot_product_attention",
    ("llama4_text", "pack"): "no: llama4_text has chunked_attention layers",
    ("llama4_text", "generate"): "no: refused at load: model type 'llama4_text' has chunked_attention layers; batched "
                                 "decoding (generate, serve) supports full_attention and sliding_attention layers only",
}


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """Every family through the default checks once (a model build, 2 training steps, a merge, a decode)."""
    root = tmp_path_factory.mktemp("coverage")
    return {family: coverage.check_family(family, root / family) for family in FAMILIES}


def test_at_least_12_causal_and_4_encoder_families():
    assert len(CAUSAL_FAMILIES) >= 12 and set(ENCODER_FAMILIES) == {"bert", "roberta", "deberta_v2", "distilbert"}
    for family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox",
                   "opt", "falcon", "bloom"):
        assert family in CAUSAL_FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_merges_and_generates_like_peft(family, checked):
    cells = checked[family].cells
    causal = family in CAUSAL_FAMILIES
    expected = {
        "train": "yes", "merge": "yes",
        "pack": "yes" if causal else "n/a (classifier)",
        "generate": "yes" if causal else "yes (classify)",
    }
    expected.update({column: cell for (f, column), cell in EXPECTED_GAPS.items() if f == family})
    assert {c: cells[c] for c in coverage.DEFAULT_COLUMNS} == expected
    assert cells["nproc"] == cells["quantize"] == "not checked"


def test_docs_models_md_is_what_the_checks_report(checked):
    documented = coverage.parse_table(coverage.DOC.read_text(encoding="utf-8"))
    assert list(documented) == [coverage.NAMES[f] for f in FAMILIES], "regenerate: python bench/model_coverage.py"
    for family, fam in checked.items():
        row = documented[coverage.NAMES[family]]
        assert row["model type"] == f"`{coverage.build_config_type(family)}`"
        assert row["default targets"] == fam.targets, family
        for column in (*coverage.DEFAULT_COLUMNS, "nproc", "quantize"):
            assert row[column] == fam.cells[column], (family, column, "regenerate: python bench/model_coverage.py")
    intro = coverage.DOC.read_text(encoding="utf-8").split("## Coverage")[0]
    assert intro == coverage.INTRO.split("## Coverage")[0]


@pytest.mark.slow
@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_one_request_through_a_real_lorafit_serve(family, checked):
    fam = checked[family]
    coverage.check_serve(fam)
    expected = ("no: model type 'llama4_text' has chunked_attention layers; batched decoding (generate, serve) "
                "supports full_attention and sliding_attention layers only") if family == "llama4_text" else "yes"
    assert fam.cells["serve"] == expected
    documented = coverage.parse_table(coverage.DOC.read_text(encoding="utf-8"))[coverage.NAMES[family]]
    assert documented["serve"] == expected
