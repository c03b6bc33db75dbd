"""bench/results.py and its report: the experiment list is well-formed and the report prints only
numbers found in result files (missing experiments show as "not run")."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import results_report  # noqa: E402

import results  # noqa: E402


def test_experiment_ids_are_unique_and_every_trained_row_names_a_shipped_recipe():
    rows = results.experiments()
    assert len({e.id for e in rows}) == len(rows)
    shipped = {p.stem for p in (BENCH.parent / "lorafit" / "recipes").glob("*.yaml")}
    for e in rows:
        assert (e.recipe in shipped) != bool(e.zero_shot), e.id
    # Every table the issue asks for has rows, and the rank sweep covers the paper's ranks on both tasks.
    assert {e.table for e in rows} == {"e2e", "glue", "rank", "targets", "wikisql", "converged-glue",
                                       "converged-wikisql", "converged-e2e", "variants"}
    # The variants table: DoRA, LoRA+ 16, PiSSA on E2E and SST-2 at tables 1 and 2's settings (plain LoRA reused).
    variants = {e.id: e for e in rows if e.table == "variants"}
    assert sorted(variants) == sorted(f"variant-{t}-{k}" for t in ("e2e", "sst2") for k in ("dora", "loraplus16", "pissa"))
    assert variants["variant-e2e-dora"].overrides[: len(results.E2E_SCALE)] == tuple(results.E2E_SCALE)
    assert variants["variant-sst2-loraplus16"].overrides[-2:] == ("--set", "train.loraplus_lr_ratio=16")
    assert sorted(e.extra["rank"] for e in rows if e.id.startswith("rank-e2e-")) == [1, 2, 8, 64]  # r=4: e2e-lora-qv-r4
    assert sorted(e.extra["rank"] for e in rows if e.id.startswith("rank-sst2-")) == [1, 2, 4, 64]  # r=8: glue-sst2-lora


def test_lanes_put_smollm2_experiments_apart_from_minilm_ones():
    by_id = {e.id: e for e in results.experiments()}
    assert results.lane(by_id["e2e-zero-shot"]) == 0 and results.lane(by_id["wikisql-lora"]) == 0
    assert results.lane(by_id["glue-rte-full"]) == 1 and results.lane(by_id["targets-sst2-query"]) == 1


def write_result(out: Path, rid: str, metrics: dict, with_adapter: bool = False) -> None:
    d = out / rid
    d.mkdir(parents=True)
    result = {"id": rid, "table": "glue", "variant": "v", "eval": {"metrics": metrics},
              "summary": {"trainable_params": 1000, "trainable_percent": 0.5, "peak_rss_mb": 1.0, "final_valid_loss": 0.35,
                          "precision": "bf16", "lorafit_version": "0.1.0",
                          "machine": {"cpu": "Test CPU", "cores": 2, "torch": "x", "threads": 2, "python": "3"}}}
    (d / "result.json").write_text(json.dumps(result))
    if with_adapter:
        (d / "run" / "adapter").mkdir(parents=True)
        save_file({"base_model.model.q.lora_A.weight": torch.zeros(4, 10),
                   "base_model.model.q.lora_B.weight": torch.zeros(6, 4),
                   "base_model.model.classifier.modules_to_save.weight": torch.zeros(2, 10)},
                  str(d / "run" / "adapter" / "adapter_model.safetensors"))


def test_report_prints_numbers_from_result_files_and_not_run_elsewhere(tmp_path):
    out, docs = tmp_path / "out", tmp_path / "docs"
    docs.mkdir()
    write_result(out, "glue-sst2-lora", {"accuracy": 0.8451834862385321}, with_adapter=True)
    write_result(out, "glue-cola-full", {"matthews_corr": 0.41234})
    results_report.write_report(out, docs)
    text = (docs / "results.md").read_text()
    assert f"**Status: 2 of {len(results.experiments()) + 1} experiments done.**" in text
    lora_row = next(line for line in text.splitlines() if line.startswith("| LoRA r=8 q,v |"))
    assert "| 0.845 |" in lora_row and lora_row.count("not run") == 7  # params (MRPC) + 6 metrics
    assert "| 0.412 |" in next(line for line in text.splitlines() if line.startswith("| full fine-tuning |"))
    # The rank table's r=8 SST-2 row counts LoRA parameters from the adapter file: 4*10 + 6*4, head left out.
    assert "| 64 | 0.3500 | 0.845 |" in next(line for line in text.splitlines() if line.startswith("| 8 |"))
    assert "CPU Test CPU, 2 cores" in text
    summary = json.loads((docs / "results.json").read_text())
    assert summary["glue-sst2-lora"]["metrics"] == {"accuracy": 0.8451834862385321}
    assert summary["glue-sst2-lora"]["lora_params"] == 64


def test_adapter_counts_read_the_safetensors_header_only(tmp_path):
    (tmp_path / "adapter").mkdir()
    save_file({"x.lora_A.weight": torch.zeros(3, 5), "y.weight": torch.zeros(7)},
              str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert results_report.adapter_counts(tmp_path / "adapter") == {"lora": 15, "other": 7}
    assert results_report.adapter_counts(tmp_path / "missing") is None


def test_train_time_leaves_validation_passes_out():
    records = [{"step": 0, "valid_loss": 1.0, "elapsed_s": 10.0},  # 10 s validating before training
               {"step": 5, "loss": 1.0, "elapsed_s": 30.0},
               {"step": 5, "valid_loss": 0.9, "elapsed_s": 34.0},  # 4 s validating
               {"step": 10, "loss": 0.8, "elapsed_s": 50.0}]
    assert results.train_time(records) == 50.0 - 10.0 - 4.0


def test_converged_rows_sweep_three_lrs_then_rerun_the_best_with_two_more_seeds(tmp_path):
    import results_converged as rc

    rows = rc.converged_rows(results.Experiment, tmp_path)
    sweep = [e for e in rows if e.id.startswith("cg-mrpc-lora-lr")]
    assert [e.extra["lr"] for e in sweep] == list(rc.LRS["lora"]) and not any("best" in e.id for e in rows)
    for lr, f1 in zip(rc.LRS["lora"], (0.80, 0.86, 0.83), strict=True):  # the middle lr is best
        write_result(tmp_path, rc.sweep_id("mrpc", "lora", lr), {"f1": f1})
    rows = rc.converged_rows(results.Experiment, tmp_path)
    best = [e for e in rows if e.id.startswith("cg-mrpc-lora-best")]
    assert [e.extra["seed"] for e in best] == [1, 2] and {e.extra["lr"] for e in best} == {"1e-3"}
    assert all("train.lr=1e-3" in e.overrides for e in best)
    for seed, f1 in ((1, 0.84), (2, 0.88)):
        write_result(tmp_path, rc.seed_id("mrpc", "lora", seed), {"f1": f1})
    summary = rc.seed_summary(tmp_path, "mrpc", "lora")
    assert summary["median"] == 0.86 and (summary["min"], summary["max"]) == (0.84, 0.88) and summary["seeds"] == 3
    # Long rows checkpoint, so `run --hours` can stop and continue them.
    assert all(any(o.startswith("train.save_every=") for o in e.overrides) for e in rows if e.table.startswith("converged"))
