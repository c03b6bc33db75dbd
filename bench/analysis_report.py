"""Write docs/analysis.md: the LoRA paper's section 7 questions asked of our own runs.

Expects the run directories bench/analysis_runs.sh trains under RUNS (default runs/analysis):
<task>-r8-s1, <task>-r64-s1, <task>-r8-s2, <task>-r64-s2 for task in sst2, e2e (any that are missing are
reported as missing). For each task:

1. Fig. 3: phi between r=64 and r=8 (seed 1), input side (A's right-singular vectors, as the paper);
2. Fig. 4: phi between seeds 1 and 2 at the same rank;
3. Table 7: the amplification factor ||ΔW||_F / ||Uᵀ W V||_F against the base model, beside the paper's;
4. truncation: r=64 and r=8 cut to 1, 2, 4 with energy kept and dev metrics (`lorafit eval`, --limit)
   beside the uncut adapter.

Usage:
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 LORAFIT_DATA=../shared/data \
        python bench/analysis_report.py [--runs runs/analysis] [--out docs/analysis.md] [--e2e-limit 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lorafit.analysis.report import report_tables
from lorafit.workflows.analyze import run_analyze, truncated_dir

TASKS = {
    # task prefix: (lorafit task, base alias, hidden size d (q/v are d x d), metric, eval options)
    "sst2": ("glue/sst2", "minilm-l6", 384, "accuracy", ["--batch-size", "64"]),
    "e2e": ("e2e", "smollm2-135m", 576, "BLEU",
            ["--beam-size", "1", "--no-repeat-ngram-size", "4", "--batch-size", "8", "--max-new-tokens", "64"]),
}
CUTS = (1, 2, 4)
PAPER = {  # LoRA paper, Table 7 (GPT-3 175B, layer 48, W_q): r -> (||ΔW||_F, ||UᵀWV||_F for ΔW, W's top, random)
    4: (6.91, 0.32, 21.67, 0.02),
    64: (3.57, 1.90, 37.71, 0.33),
}


def run(runs: Path, task: str, rank: int, seed: int) -> Path | None:
    path = runs / f"{task}-r{rank}-s{seed}"
    return path if (path / "adapter" / "adapter_model.safetensors").is_file() else None


def lorafit_eval(target: Path, task: str, limit: int | None, options: list[str], out: Path, log: list[str]) -> dict | None:
    """`lorafit eval` in a subprocess (as a user would run it); cached in `out`."""
    args = ["eval", str(target), "--task", task, *options, "-o", str(out), "--quiet"] + (["--limit", str(limit)] if limit else [])
    if out.is_file():
        log.append(f"lorafit {' '.join(args)}  (result cached in {out})")
    else:
        start = time.time()
        done = subprocess.run([*os.environ.get("LORAFIT", "lorafit").split(), *args], capture_output=True, text=True)
        log.append(f"lorafit {' '.join(args)}  ({time.time() - start:.0f} s, exit {done.returncode})")
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return None
    return json.loads(out.read_text())["metrics"]


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def phi_table(compares: list[dict], d: int) -> list[str]:
    """Per target and side: mean phi(i,i) for i = 1, 2, 4, 8 (within range), and the random-subspace baseline.

    The baseline is max(i,j)/d with d the input size (input side; the output side of q/v has d_out <= d)."""
    k = min(compares[0]["ranks"])
    points = [i for i in (1, 2, 4, 8) if i <= k]
    lines = ["| target | side | layers | " + " | ".join(f"phi({i},{i})" for i in points) + " |",
             "|---|---|---|" + "---|" * len(points)]
    for compare in compares:
        for target, g in compare["by_target"].items():
            lines.append(f"| {target} | {compare['side']} | {g['layers']} | "
                         + " | ".join(fmt(g["diagonal_mean"][i - 1]) for i in points) + " |")
    lines.append("| random subspaces, E = max(i,j)/d (d = d_in; for an output side d_out) | | | "
                 + " | ".join(fmt(i / d, 4) for i in points) + " |")
    return lines


def both_sides(first: Path, second: Path, input_side: dict) -> list[dict]:
    """The input-side comparison already computed, and the output side (B's left-singular vectors)."""
    return [input_side["compare"], run_analyze(first, compare=second, side="output")["compare"]]


def task_section(runs: Path, work: Path, img: Path, prefix: str, limit: int | None, log: list[str]) -> list[str]:
    task, base, d, metric, options = TASKS[prefix]
    out = [f"## {prefix.upper()} ({task}, base {base}, hidden size d = {d})", ""]
    r8, r64 = run(runs, prefix, 8, 1), run(runs, prefix, 64, 1)
    missing = [f"{prefix}-r{r}-s{s}" for r in (8, 64) for s in (1, 2) if run(runs, prefix, r, s) is None]
    if missing:
        out += [f"Missing runs (not trained in the budget): {', '.join(missing)}.", ""]
    if r8 is None or r64 is None:
        return out + ["Nothing to analyse without both r=8 and r=64 at seed 1.", ""]
    out += ["| run | steps | tokens seen | train seconds (1 thread) | final valid loss |", "|---|---|---|---|---|"]
    for rank in (8, 64):
        for seed in (1, 2):
            path = run(runs, prefix, rank, seed)
            summary = path / "summary.json" if path else None
            if summary is not None and summary.is_file():
                s = json.loads(summary.read_text())
                out.append(f"| {path.name} | {s['steps']} | {s['tokens_seen']} | {s['seconds']:.0f} | "
                           f"{fmt(s['final_valid_loss'], 4)} (from {fmt(s['initial_valid_loss'], 4)}) |")
    out.append("")

    # 1 + 3: r=8 vs r=64 (Fig. 3: i over r=8, j over r=64), with amplification against the base (Table 7).
    small = run_analyze(r8, model=base, compare=r64, output_dir=work / f"{prefix}-r8-vs-r64")
    big = run_analyze(r64, model=base, output_dir=work / f"{prefix}-r64")
    os.replace(work / f"{prefix}-r8-vs-r64" / "phi.png", img / f"{prefix}-phi-r8-r64.png")
    os.replace(work / f"{prefix}-r64" / "spectra.png", img / f"{prefix}-spectra-r64.png")
    out += ["### Do r=8 and r=64 share their top directions? (paper Fig. 3)", "",
            "phi(A_r=8, A_r=64, i, i), mean over layers; input side = right-singular vectors of A (the paper's "
            "choice), output side = left-singular vectors of B. 1 = the top-i directions of one lie in the other's top-i.", ""]
    out += phi_table(both_sides(r8, r64, small), d)
    out += ["", f"![phi r=8 vs r=64](img/analysis/{prefix}-phi-r8-r64.png)",
            "", f"![spectra r=64](img/analysis/{prefix}-spectra-r64.png)", ""]

    # 2: seed vs seed (Fig. 4).
    out += ["### Seed 1 vs seed 2 at the same rank (paper Fig. 4)", ""]
    for rank in (64, 8):
        a, b = run(runs, prefix, rank, 1), run(runs, prefix, rank, 2)
        if a is None or b is None:
            out += [f"r={rank}: seed 2 missing.", ""]
            continue
        seeds = run_analyze(a, compare=b, output_dir=work / f"{prefix}-r{rank}-seeds")
        os.replace(work / f"{prefix}-r{rank}-seeds" / "phi.png", img / f"{prefix}-phi-r{rank}-seeds.png")
        out += [f"r={rank}:", ""] + phi_table(both_sides(a, b, seeds), d)
        out += ["", f"![phi seeds r={rank}](img/analysis/{prefix}-phi-r{rank}-seeds.png)", ""]

    # 3: amplification.
    out += ["### How does ΔW compare to W? (paper Table 7)", "",
            "Mean over layers of each target. ||UᵀWV||_F with U, V the top-r singular vectors of ΔW, of W, or random.", "",
            "| adapter | target | ‖ΔW‖_F | ‖W‖_F | ΔW dirs | W top dirs | random | ΔW dirs / random | amplification ‖ΔW‖/‖UᵀWV‖ |",
            "|---|---|---|---|---|---|---|---|---|"]
    for label, rep in (("r=8", small), ("r=64", big)):
        for target in rep["by_target"]:
            amps = [r["amplification"] for r in rep["layers"] if r["target"] == target]

            def mean(key, amps=amps):
                return sum(a[key] for a in amps) / len(amps)

            out.append(f"| {label} | {target} | {fmt(mean('delta_norm'))} | {fmt(mean('weight_norm'), 2)} | "
                       f"{fmt(mean('projection_norm'))} | {fmt(mean('projection_norm_top_w'), 2)} | "
                       f"{fmt(mean('projection_norm_random'))} | "
                       f"{fmt(mean('projection_norm') / mean('projection_norm_random'), 2)} | {fmt(mean('factor'), 2)} |")
    for r, (dn, p, top, rnd) in PAPER.items():
        out.append(f"| paper GPT-3 r={r} (layer 48) | W_q | {dn} | 61.95 | {p} | {top} | {rnd} | {p / rnd:.1f} | {dn / p:.1f} |")
    out.append("")

    # 4: truncation.
    out += ["### Truncation: best rank-K approximation of each ΔW (`lorafit analyze --truncate-rank K`)", "",
            f"Dev {metric} from `lorafit eval` ({'first ' + str(limit) + ' inputs' if limit else 'whole dev split'}, "
            f"options {' '.join(options)}); energy = share of sum ||ΔW||_F^2 kept.", "",
            f"| adapter | rank | energy kept | lowest layer's energy kept | {metric} |", "|---|---|---|---|---|"]
    for rank, path in ((64, r64), (8, r8)):
        # The uncut adapter is evaluated as an adapter directory too, so every row uses the same settings.
        metrics = lorafit_eval(path / "adapter", task, limit, options, work / f"{prefix}-r{rank}-eval.json", log)
        out.append(f"| r={rank} seed 1 | {rank} (uncut) | 100% | 100% | {fmt(metrics and metrics.get(metric), 4)} |")
        for k in CUTS:
            cut_dir = work / f"{prefix}-r{rank}-cut{k}"
            adapter = truncated_dir(cut_dir, k)
            if adapter.is_dir():
                cut = json.loads((cut_dir / "analysis.json").read_text())["truncation"]
            else:
                cut = run_analyze(path, output_dir=cut_dir, truncate_rank=k)["truncation"]
            low = min(layer["energy_kept"] for layer in cut["layers"])
            metrics = lorafit_eval(adapter, task, limit, options, work / f"{prefix}-r{rank}-cut{k}-eval.json", log)
            out.append(f"| r={rank} seed 1 | {k} | {cut['energy_kept']:.1%} | {low:.1%} | "
                       f"{fmt(metrics and metrics.get(metric), 4)} |")
    out.append("")
    out += ["Advice printed by `lorafit analyze` for r=64 seed 1:", ""]
    out += [f"- {line}" for line in big["advice"]["lines"]] + [""]
    out += ["<details><summary>lorafit analyze tables (r=64 seed 1)</summary>", "", "```"]
    for title, columns, rows in report_tables(big):
        out += [title, "  ".join(columns)] + ["  ".join(str(v) for v in row) for row in rows] + [""]
    out += ["```", "</details>", ""]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/analysis"))
    parser.add_argument("--out", type=Path, default=Path("docs/analysis.md"))
    parser.add_argument("--work", type=Path, default=Path("bench/out/analysis"))
    parser.add_argument("--sst2-limit", type=int, default=None, help="SST-2 dev inputs to evaluate (default all 872)")
    parser.add_argument("--e2e-limit", type=int, default=20, help="E2E dev MRs to evaluate (default 20)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--notes", type=Path, default=Path("bench/analysis_notes.md"),
                        help="hand-written findings inserted after the header (kept when regenerating)")
    args = parser.parse_args()
    img = args.out.parent / "img" / "analysis"
    img.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    body = []
    for prefix in args.tasks:
        limit = args.sst2_limit if prefix == "sst2" else args.e2e_limit
        body += task_section(args.runs, args.work, img, prefix, limit, log)
        print(f"{prefix}: done", file=sys.stderr)
    head = [
        "# What the adapters learned: the LoRA paper's section 7 on our runs",
        "",
        f"Generated by `python bench/analysis_report.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}) "
        "from the runs `bench/analysis_runs.sh` trains. Every number comes from `lorafit analyze` "
        "(lorafit/analysis/) and `lorafit eval`.",
        "",
    ]
    if args.notes.is_file():
        head += [args.notes.read_text().rstrip(), ""]
    tail = ["## Commands run for the evaluations", "", *[f"    {line}" for line in log], ""] if log else []
    args.out.write_text("\n".join(head + body + tail) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
