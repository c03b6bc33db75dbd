"""docs/results.md and docs/results.json from results/out/*/result.json (written by bench/results.py).

Only numbers found in those files are printed; a missing experiment shows as "not run".
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

HEADER = """# Results: the LoRA paper's claims at CPU scale

Every number below was produced by `bench/results.py` on the machine described at the end; the
tables are generated from its output files (`results/out/<id>/result.json`, summarised in
[results.json](results.json)) by `.venv/bin/python bench/results.py report`. To regenerate:

    make results        # = bench/results.py run --jobs 2, then bench/results.py report

`run` skips experiments whose result.json exists (an interrupted run continues; `--force` redoes,
`--only ID ...` picks rows, `list` shows them). On 2 cores the whole set took about two hours, two
experiments side by side with one torch thread each.

Each row is one `lorafit train recipes/<recipe>.yaml --set ...` (the exact command is in
results.json), seed 0, evaluated on the dev split by the recipe's end-of-run evaluation. Rows of one
table share data, steps and seed. "not run" marks experiments this machine has not finished yet.
"""


def load(out: Path) -> dict[str, dict]:
    results = {}
    for path in sorted(out.glob("*/result.json")):
        data = json.loads(path.read_text())
        counts = adapter_counts(path.parent / "run" / "adapter")
        if counts is not None:
            data["lora_params"] = counts["lora"]
        results[data["id"]] = data
    return results


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def metric(r: dict | None, name: str, digits: int = 4) -> str:
    if r is None:
        return "not run"
    return fmt(r["eval"]["metrics"].get(name), digits)


def trainable(r: dict | None) -> str:
    if r is None:
        return "not run"
    if "summary" not in r:
        return "0"
    s = r["summary"]
    return f"{s['trainable_params']:,} ({s['trainable_percent']:.2f}%)"


def adapter_counts(adapter: Path) -> dict[str, int] | None:
    """Parameters in a saved adapter from its safetensors header alone: LoRA A/B vs the rest (head,
    pooler: `modules_to_save`). None when the run directory is gone."""
    path = adapter / "adapter_model.safetensors"
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    counts = {"lora": 0, "other": 0}
    for key, entry in header.items():
        if key != "__metadata__":
            n = 1
            for dim in entry["shape"]:
                n *= dim
            counts["lora" if "lora_" in key else "other"] += n
    return counts


def lora_params(r: dict | None) -> str:
    """The LoRA A/B parameter count of a run (the head and pooler, trained in every variant, left out)."""
    if r is None:
        return "not run"
    n = r.get("lora_params")
    return "n/a" if n is None else f"{n:,}"


def table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def e2e_table(res: dict) -> str:
    rows = []
    for rid in ("e2e-zero-shot", "e2e-zero-shot-chat", "e2e-lora-qv-r4", "e2e-lora-all-r4", "e2e-full"):
        r = res.get(rid)
        name = r["variant"] if r else rid
        s = (r or {}).get("summary", {})
        rows.append([
            name, trainable(r),
            fmt(s.get("peak_rss_mb"), 0) if s else "-",
            fmt(r.get("seconds_per_step"), 2) if r and "seconds_per_step" in r else "-",
            f"{r['adapter_bytes'] / 2**20:.1f} MiB" if r and "adapter_bytes" in r else "-",
            *(metric(r, m) for m in ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")),
        ])
    return table(["variant", "trainable params", "peak RSS MB", "s/step", "saved size", "BLEU", "NIST", "METEOR",
                  "ROUGE-L", "CIDEr"], rows)


GLUE_COLUMNS = [("sst2", "accuracy", "SST-2 acc"), ("mrpc", "f1", "MRPC F1"), ("mrpc", "accuracy", "MRPC acc"),
                ("cola", "matthews_corr", "CoLA MCC"), ("rte", "accuracy", "RTE acc"),
                ("stsb", "pearson", "STS-B Pearson"), ("stsb", "spearman", "STS-B Spearman")]


def glue_table(res: dict) -> str:
    rows = []
    for variant, label in (("head", "head only"), ("lora", "LoRA r=8 q,v"), ("full", "full fine-tuning")):
        params = trainable(res.get(f"glue-mrpc-{variant}"))
        rows.append([label, params, *(metric(res.get(f"glue-{t}-{variant}"), m, 3) for t, m, _ in GLUE_COLUMNS)])
    return table(["variant", "trainable params (MRPC)", *(c for _, _, c in GLUE_COLUMNS)], rows)


def rank_table(res: dict) -> str:
    rows = []
    for rank in (1, 2, 4, 8, 64):
        e = res.get("e2e-lora-qv-r4") if rank == 4 else res.get(f"rank-e2e-r{rank}")
        m = res.get("glue-sst2-lora") if rank == 8 else res.get(f"rank-sst2-r{rank}")
        rows.append([str(rank), lora_params(e), valid_loss(e), *(metric(e, k) for k in ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")),
                     lora_params(m), valid_loss(m), metric(m, "accuracy", 3)])
    return table(["rank", "LoRA params (E2E)", "E2E valid loss", "BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr",
                  "LoRA params (SST-2)", "SST-2 valid loss", "SST-2 acc"], rows)


def variants_table(res: dict) -> str:
    """Table "variants": plain LoRA (tables 1 and 2's rows) beside DoRA, LoRA+ and PiSSA, E2E and SST-2."""
    from results import VARIANTS  # bench/ is on sys.path when run as bench/results.py

    def cost(r: dict | None) -> list[str]:
        s = (r or {}).get("summary", {})
        return [fmt(r.get("seconds_per_step"), 2) if r and "seconds_per_step" in r else "-",
                fmt(s.get("peak_rss_mb"), 0) if s else "-"]

    rows = []
    for label, e2e_id, sst2_id in (("LoRA", "e2e-lora-qv-r4", "glue-sst2-lora"),
                                   *((lbl, f"variant-e2e-{k}", f"variant-sst2-{k}") for k, lbl, _ in VARIANTS)):
        e, m = res.get(e2e_id), res.get(sst2_id)
        rows.append([label, lora_params(e), *(metric(e, k) for k in ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")),
                     *cost(e), lora_params(m), metric(m, "accuracy", 3), *cost(m)])
    return table(["variant", "LoRA params (E2E)", "BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr", "E2E s/step",
                  "E2E peak RSS MB", "LoRA params (SST-2)", "SST-2 acc", "SST-2 s/step", "SST-2 peak RSS MB"], rows)


def valid_loss(r: dict | None) -> str:
    """The run's final validation loss (E2E: 200 dev examples, completion tokens; SST-2: 872 sentences)."""
    if r is None:
        return "not run"
    return fmt((r.get("summary") or {}).get("final_valid_loss"))


TARGET_ROWS = (("targets-sst2-query", "q, r=8"), ("targets-sst2-value", "v, r=8"), ("rank-sst2-r4", "q+v, r=4"),
               ("targets-sst2-query+key+value+o", "q+k+v+o, r=2"))


def targets_table(res: dict) -> str:
    rows = [[label, lora_params(res.get(rid)), metric(res.get(rid), "accuracy", 3)] for rid, label in TARGET_ROWS]
    return table(["adapted weights, rank", "LoRA params", "SST-2 acc"], rows)


def wikisql_table(res: dict) -> str:
    rows = []
    for rid in ("wikisql-zero-shot", "wikisql-zero-shot-chat", "wikisql-lora"):
        r = res.get(rid)
        rows.append([r["variant"] if r else rid, trainable(r), metric(r, "lf_accuracy", 3),
                     metric(r, "exact_match", 3), metric(r, "parse_rate", 3)])
    return table(["variant", "trainable params", "logical-form acc", "exact match", "parsable SQL"], rows)


def merge_table(res: dict) -> str:
    rows = []
    for rid, r in sorted(res.items()):
        check = r.get("merge_check")
        if check:
            adapter = check.get("adapter_metrics") or r["eval"]["metrics"]  # E2E: both on the first 100 inputs
            names = [k for k, v in adapter.items() if isinstance(v, int | float)]
            shown = ", ".join(f"{k} {fmt(adapter[k])} / {fmt(check['metrics'].get(k))}" for k in names[:2])
            inputs = check.get("inputs") or r["eval"].get("num_examples") or "all"
            diff = check["max_abs_diff"]
            rows.append([rid, str(inputs), shown, "0" if diff == 0 else f"{diff:.1e}"])
    return table(["run", "inputs", "adapter / merged (first metrics)", "max abs difference, all metrics"], rows) if rows \
        else "not run\n"


def latency(res: dict) -> str:
    """The merged-vs-base generation latency rows (bench/results.py latency)."""
    r = res.get("merge-latency")
    if r is None:
        return "not run\n"
    rows = [[k, fmt(v["base_ms"], 1), fmt(v["merged_ms"], 1), fmt(v["ratio"], 3),
             f"{v['paired_ratio_min']:.3f}-{v['paired_ratio_max']:.3f}", f"{v['max_abs_logit_diff_merged_vs_adapter']:.1e}"]
            for k, v in r["latency"].items()]
    return table(["model", "base ms / call", "merged ms / call", "merged / base (medians)", "per-round ratios",
                  "max abs logit diff, merged vs adapter"], rows) + "\n" + r["how"] + "\n"


def machine(res: dict) -> str:
    # Prefer a run whose summary records the most machine facts (later lorafit versions record more).
    for r in sorted(res.values(), key=lambda r: -len(r.get("summary", {}).get("machine", {}))):
        if "summary" in r:
            m = r["summary"]["machine"]
            jobs, threads = r.get("parallel_jobs", 1), r.get("torch_threads", m["threads"])
            side = (f"; experiments ran {jobs} side by side, each lorafit process with {threads} torch thread(s), "
                    "so s/step is comparable within a table, not with docs/performance.md") if jobs > 1 else ""
            return (f"CPU {m['cpu']}, {m['cores']} cores, torch {m['torch']}, transformers {m.get('transformers', 'n/a')}, "
                    f"python {m['python']}, "
                    f"lorafit {r['summary']['lorafit_version']}; precision {r['summary'].get('precision', 'fp32')} "
                    f"(the recipes' `auto`){side}. Seed {r.get('seed', 0)} everywhere.")
    return f"{platform.machine()} (no runs yet)"


def write_report(out: Path, docs: Path) -> None:
    res = load(out)
    from results_converged_report import converged_section

    from results import experiments  # bench/ is on sys.path when run as bench/results.py

    ids = {e.id for e in experiments()} | {"merge-latency"}
    done = [rid for rid in res if rid in ids]
    status = (f"**Status: {len(done)} of {len(ids)} experiments done.**"
              + (" No numbers yet: the tables below are the template `bench/results.py report` fills in."
                 if not res else "") + "\n")
    parts = [
        HEADER,
        status,
        "## 1. E2E NLG on SmolLM2-135M (dev, 547 MRs, multi-reference)\n",
        "Training: a seeded 1,000-example subset of the 42,061 training rows, one epoch (125 steps of 8), "
        "recipe `e2e-smollm2` (lr 5e-4; full fine-tuning lr 5e-5); decoding: greedy, no repeated 4-grams, at "
        "most 64 new tokens (a beam-4 pass over the dev set took ~20 minutes on one core, more than the "
        "training; the paper uses beam 10). Zero-shot rows: the base model with the same prompt, raw and "
        "wrapped in its chat template. s/step: mean seconds per optimizer step, validation passes excluded "
        "(see Machine for threads). Saved size: what the run saves, the adapter directory (LoRA) or the whole "
        "model (full fine-tuning).\n",
        e2e_table(res),
        "\n## 2. GLUE dev on MiniLM-L6 (22.7M parameters)\n",
        "SST-2 trains on a seeded 20,000-sentence subset (of 67,349) for one epoch; MRPC and RTE on their "
        "full training sets for 3 epochs (the shipped recipes say 5), CoLA for 4 and STS-B for 3, as "
        "shipped. Every variant trains the task head and the [CLS] pooler (all-MiniLM-L6-v2 was trained "
        "with mean pooling, so its pooler is untuned); head only: lr 2e-3, LoRA: lr 1e-3, full: lr 5e-5. "
        "Trainable counts include the head and pooler (148,610 for a 2-class task).\n",
        glue_table(res),
        "\n## 3a. Does a tiny rank suffice? (LoRA on q,v)\n",
        "E2E: as in table 1 (r=4 is table 1's LoRA q,v row). SST-2: as in table 2 (r=8 is table 2's LoRA "
        "row). alpha stays as in the recipes (32 for E2E, 16 for SST-2), so the scale alpha/r varies with r, "
        "as in the paper.\n",
        rank_table(res),
        "\n## 3b. Which weights, under a fixed parameter budget (SST-2)\n",
        "The paper's Table 5 question with the same budget per layer (rank x number of adapted matrices = 8), "
        "SST-2 as in table 2; q+v at r=4 is table 3a's r=4 row.\n",
        targets_table(res),
        "\n## 3c. LoRA variants: DoRA, LoRA+, PiSSA (E2E and SST-2)\n",
        "Tables 1 and 2's budget, data and seed; plain LoRA is their LoRA q,v row. DoRA: `lora.variant: dora` "
        "(a magnitude per output feature, trained); LoRA+: `train.loraplus_lr_ratio: 16` (B at 16x the lr); "
        "PiSSA: `lora.init: pissa` (A and B from W's top-r SVD; the saved adapter is converted to rank 2r for "
        "the original base). LoRA params count what the adapter file holds (DoRA adds one value per output "
        "feature; PiSSA's converted adapter holds twice the rank).\n",
        variants_table(res),
        "\n## 4. WikiSQL subset on SmolLM2-135M (valid, 100 questions)\n",
        "Training: the subset's 1,000 training questions, one epoch (125 steps of 8), recipe `wikisql-smollm2`; "
        "greedy decoding. Logical-form accuracy compares the parsed query (WikiSQL's semantics: select column, "
        "aggregation, conditions as a set); exact match compares the text.\n",
        wikisql_table(res),
        "\n## 5. Merge check: merged model metrics equal adapter metrics\n",
        "`lorafit merge` on the run, then `lorafit eval` on the merged directory with the run's decoding "
        "settings; the difference is taken over every metric of the task. E2E: adapter and merged model "
        "both re-decode the first 100 dev inputs (a full pass costs more than the training); GLUE and "
        "WikiSQL: the whole dev set.\n",
        merge_table(res),
        "\n### Merged model latency vs the base model\n",
        latency(res),
        "",
        converged_section(out, docs),
        "\n## Machine\n",
        machine(res) + "\n",
    ]
    discussion = docs / "results-discussion.md"
    if discussion.exists():
        parts += ["\n", discussion.read_text()]
    (docs / "results.md").write_text("\n".join(parts))
    compact = {rid: {k: v for k, v in r.items() if k in ("variant", "table", "commands", "seconds_per_step",
                                                          "adapter_bytes", "merge_check", "wall_seconds", "extra",
                                                          "lora_params", "torch_threads", "parallel_jobs")}
               | {"metrics": r["eval"]["metrics"],
                  "trainable_params": r.get("summary", {}).get("trainable_params"),
                  "peak_rss_mb": r.get("summary", {}).get("peak_rss_mb")}
               for rid, r in res.items() if "eval" in r}
    if "merge-latency" in res:
        compact["merge-latency"] = res["merge-latency"]
    (docs / "results.json").write_text(json.dumps(compact, indent=2) + "\n")
    print(f"wrote {docs / 'results.md'} ({len(res)} experiments)")
