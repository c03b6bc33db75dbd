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

    make install
    LORAFIT_DATA=../shared/data .venv/bin/python bench/results.py run      # skips experiments already done
    .venv/bin/python bench/results.py report

Each row is one `lorafit train recipes/<recipe>.yaml --set ...` (the exact command is in
results.json), seed 0, evaluated on the dev split by the recipe's end-of-run evaluation. Rows of one
table share data, steps and seed. "not run" marks experiments this machine has not finished yet.
"""


def load(out: Path) -> dict[str, dict]:
    results = {}
    for path in sorted(out.glob("*/result.json")):
        data = json.loads(path.read_text())
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
        m = res.get("glue-mrpc-lora") if rank == 8 else res.get(f"rank-mrpc-r{rank}")
        rows.append([str(rank), trainable(e), metric(e, "BLEU"), metric(e, "CIDEr"), trainable(m),
                     metric(m, "f1", 3), metric(m, "accuracy", 3)])
    return table(["rank", "trainable (E2E)", "E2E BLEU", "E2E CIDEr", "trainable (MRPC)", "MRPC F1", "MRPC acc"], rows)


def targets_table(res: dict) -> str:
    rows = []
    for rid, r in sorted(res.items()):
        if rid.startswith("targets-mrpc-"):
            rows.append([r["variant"], trainable(r), metric(r, "f1", 3), metric(r, "accuracy", 3)])
    return table(["targets, rank", "trainable", "MRPC F1", "MRPC acc"], rows) if rows else "not run\n"


def wikisql_table(res: dict) -> str:
    rows = []
    for rid in ("wikisql-zero-shot", "wikisql-zero-shot-chat", "wikisql-lora"):
        r = res.get(rid)
        rows.append([r["variant"] if r else rid, trainable(r), metric(r, "lf_accuracy", 3),
                     metric(r, "exact_match", 3), metric(r, "parse_rate", 3)])
    return table(["variant", "trainable params", "logical-form acc", "exact match", "parsable SQL"], rows)


def merge_table(res: dict) -> str:
    rows = [[rid, fmt(r["merge_check"]["max_abs_diff"], 6)] for rid, r in sorted(res.items()) if r.get("merge_check")]
    return table(["run", "max |adapter metric - merged metric|"], rows) if rows else "not run\n"


def machine(res: dict) -> str:
    for r in res.values():
        if "summary" in r:
            m = r["summary"]["machine"]
            return (f"CPU {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads), "
                    f"python {m['python']}, lorafit {r['summary']['lorafit_version']}")
    return f"{platform.machine()} (no runs yet)"


def write_report(out: Path, docs: Path) -> None:
    res = load(out)
    from results import experiments  # bench/ is on sys.path when run as bench/results.py

    total = len(experiments())
    status = (f"**Status: {len(res)} of {total} experiments done.**"
              + (" No numbers yet: the tables below are the template `bench/results.py report` fills in."
                 if not res else "") + "\n")
    parts = [
        HEADER,
        status,
        "## 1. E2E NLG on SmolLM2-135M (dev, 547 MRs, multi-reference)\n",
        "Training: a seeded 4,000-example subset of the 42,061 training rows, one epoch (500 steps of 8); "
        "decoding: beam 4, length penalty 0.9, no repeated 4-grams. Zero-shot rows: the base model with "
        "the same prompt, raw and wrapped in its chat template.\n",
        e2e_table(res),
        "\n## 2. GLUE dev on MiniLM-L6 (22.7M parameters)\n",
        "SST-2 trains on a seeded 20,000-sentence subset; the other tasks on their full training sets "
        "(epochs as in the shipped recipes).\n",
        glue_table(res),
        "\n## 3a. Does a tiny rank suffice? (LoRA on q,v)\n",
        rank_table(res),
        "\n## 3b. Which weights, under a fixed parameter budget (MRPC)\n",
        targets_table(res),
        "\n## 4. WikiSQL subset on SmolLM2-135M (valid, 100 questions)\n",
        wikisql_table(res),
        "\n## 5. Merge check: merged model metrics equal adapter metrics\n",
        merge_table(res),
        "\nThe merged model's generation latency relative to the base model is measured by "
        "`bench/bench_layer.py` (docs/performance.md).\n",
        "\n## Machine\n",
        machine(res) + "\n",
    ]
    discussion = docs / "results-discussion.md"
    if discussion.exists():
        parts += ["\n", discussion.read_text()]
    (docs / "results.md").write_text("\n".join(parts))
    compact = {rid: {k: v for k, v in r.items() if k in ("variant", "table", "commands", "seconds_per_step",
                                                          "adapter_bytes", "merge_check", "wall_seconds", "extra")}
               | {"metrics": r["eval"]["metrics"],
                  "trainable_params": r.get("summary", {}).get("trainable_params"),
                  "peak_rss_mb": r.get("summary", {}).get("peak_rss_mb")}
               for rid, r in res.items()}
    (docs / "results.json").write_text(json.dumps(compact, indent=2) + "\n")
    print(f"wrote {docs / 'results.md'} ({len(res)} experiments)")
