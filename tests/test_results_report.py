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

    tmp_path = tmp_path / "out"
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


def kept_row(out: Path, rid: str, metrics: dict, curve: list[dict], **summary) -> None:
    """A committed row record (results/rows/<id>.json beside results/out), as keep_row writes it."""
    rows = out.parent / "rows"
    rows.mkdir(parents=True, exist_ok=True)
    record = {"id": rid, "variant": rid, "eval": {"metrics": metrics}, "curve": curve, "wall_seconds": 10.0,
              "torch_threads": 1, "summary": {"steps": 100, "examples_seen": 800, "peak_rss_mb": 900.0, **summary}}
    (rows / f"{rid}.json").write_text(json.dumps(record))


def test_converged_order_small_glue_tasks_first_each_task_complete_before_the_next(tmp_path):
    import results_converged as rc

    ids = [e.id for e in rc.converged_rows(results.Experiment, tmp_path / "out")]
    firsts = [next(i for i, rid in enumerate(ids) if rid.startswith(prefix))
              for prefix in ("cg-mrpc-", "cg-stsb-", "cg-rte-", "cw-", "ce-", "cg-cola-", "cg-sst2-")]
    assert firsts == sorted(firsts)
    mrpc = [rid for rid in ids if rid.startswith("cg-mrpc-")]
    assert mrpc[-1] == "cg-mrpc-head" and ids.index("cg-stsb-lora-lr5e-4") > ids.index("cg-mrpc-head")


def test_e2e_second_epoch_only_while_the_dev_loss_still_fell_and_beam_rows_once_trained(tmp_path):
    import results_converged as rc

    out = tmp_path / "out"
    # Dev loss 2.0 at 80% of the run, 1.99 at the end: 0.5% < 1%, so no second epoch.
    flat = [{"step": s, "valid_loss": v} for s, v in ((100, 2.5), (400, 2.0), (500, 1.99))]
    kept_row(out, "ce-lora-qv", {"BLEU": 0.6}, flat)
    assert rc.still_falling(out, "ce-lora-qv") is False
    ids = [e.id for e in rc.converged_rows(results.Experiment, out)]
    assert "ce-lora-qv-2ep" not in ids
    # Its run directory is gone, so the beam-10 row cannot run here (it would be rerun with the row).
    assert "ce-lora-qv-beam10" not in ids
    (out / "ce-lora-qv" / "run").mkdir(parents=True)
    beam = next(e for e in rc.converged_rows(results.Experiment, out) if e.id == "ce-lora-qv-beam10")
    assert beam.zero_shot == (str(out / "ce-lora-qv" / "run"), "e2e") and "--beam-size" in beam.eval_args
    assert beam.eval_args[beam.eval_args.index("--beam-size") + 1] == "10"
    falling = [{"step": s, "valid_loss": v} for s, v in ((100, 2.5), (400, 2.0), (500, 1.9))]  # 5% in the last fifth
    kept_row(out, "ce-lora-qv", {"BLEU": 0.6}, falling)
    assert rc.still_falling(out, "ce-lora-qv") is True
    two = next(e for e in rc.converged_rows(results.Experiment, out) if e.id == "ce-lora-qv-2ep")
    assert "train.epochs=2" in two.overrides and two.extra["keep_adapter"]
    # Full fine-tuning joins with the sweep's lowest-loss lr once all three sweep rows are kept.
    assert "ce-full" not in [e.id for e in rc.converged_rows(results.Experiment, out)]
    for lr, loss in zip(rc.FULL_SWEEP_LRS, (1.5, 1.2, 1.4), strict=True):
        kept_row(out, f"ce-full-sweep-lr{lr}", {"BLEU": 0.5}, [], final_valid_loss=loss)
    full = next(e for e in rc.converged_rows(results.Experiment, out) if e.id == "ce-full")
    assert "train.lr=5e-5" in full.overrides and "train.method=full" in full.overrides


def test_keep_row_writes_the_record_with_its_curve_and_the_adapter(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "ROWS", tmp_path / "rows")
    monkeypatch.setattr(results, "KEPT_ADAPTERS", tmp_path / "adapters")
    out = tmp_path / "out" / "cw-lora-qv"
    (out / "run" / "adapter").mkdir(parents=True)
    (out / "run" / "adapter" / "adapter_config.json").write_text("{}")
    (out / "run" / "recipe.yaml").write_text("name: x\n")
    (out / "run" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"step": 10, "loss": 1.0, "elapsed_s": 1.0}, {"step": 10, "valid_loss": 0.9, "elapsed_s": 2.0},
        {"step": 20, "eval_lf_accuracy": 0.4, "elapsed_s": 3.0})) + "\n")
    exp = next(e for e in results.experiments() if e.id == "cw-lora-qv")
    results.keep_row(exp, {"id": exp.id, "eval": {"metrics": {"lf_accuracy": 0.4}}}, out)
    kept = json.loads((tmp_path / "rows" / "cw-lora-qv.json").read_text())
    assert kept["curve"] == [{"step": 10, "valid_loss": 0.9, "elapsed_s": 2.0}, {"step": 20, "eval_lf_accuracy": 0.4, "elapsed_s": 3.0}]
    assert (tmp_path / "adapters" / "cw-lora-qv" / "adapter_config.json").is_file()
    assert (tmp_path / "adapters" / "cw-lora-qv" / "recipe.yaml").read_text() == "name: x\n"


def test_converged_section_verdicts_come_from_the_kept_numbers(tmp_path):
    import results_converged as rc
    import results_converged_report as report

    out, docs = tmp_path / "out", tmp_path / "docs"
    (docs / "img").mkdir(parents=True)
    # MRPC: LoRA median 0.86 vs full 0.88 -> 2 points behind; STS-B: LoRA 0.875 vs full 0.88 -> within one point.
    for task, lora, full in (("mrpc", (0.80, 0.86, 0.83, 0.84, 0.88), (0.85, 0.88, 0.87, 0.89, 0.86)),
                             ("stsb", (0.87, 0.875, 0.86, 0.88, 0.87), (0.88, 0.87, 0.86, 0.89, 0.88))):
        metric = rc.MAIN[task]
        for method, values in (("lora", lora), ("full", full)):
            for lr, v in zip(rc.LRS[method], values[:3], strict=True):
                kept_row(out, rc.sweep_id(task, method, lr), {metric: v}, [{"step": 50, f"eval_{metric}": v}])
            for seed, v in zip(rc.SEEDS, values[3:], strict=True):
                kept_row(out, rc.seed_id(task, method, seed), {metric: v}, [])
    text = report.converged_section(out, docs)
    assert ("- mrpc (f1): LoRA did NOT match full fine-tuning within one point: LoRA 0.860 vs full 0.880 "
            "(LoRA - full = -2.0 points; medians over 3 and 3 seed(s)).") in text
    assert "- stsb (pearson): LoRA matched full fine-tuning within one point: LoRA 0.875 vs full 0.880" in text
    assert "- rte: not finished yet" in text and "Rows finished so far: 20." in text
    assert (docs / "img" / "converged-curves.png").is_file()
    md = docs / "results.md"
    md.write_text("# R\n\n## 5. x\n\n## Machine\nm\n")
    report.splice_section(md, text)
    report.splice_section(md, text)  # a second splice replaces, never duplicates
    spliced = md.read_text()
    assert spliced.count("## 6. At a converged budget") == 1 and spliced.index("## 6.") < spliced.index("## Machine")
