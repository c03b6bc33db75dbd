"""Section 6 of docs/results.md (the converged rows) from the committed row records alone.

    .venv/bin/python bench/results.py report --converged   # rewrites section 6 of docs/results.md in place

Every finished converged row is kept as results/rows/<id>.json (bench/results.py keep_row: result.json
plus the run's validation and task-metric records), so this section, its learning curves and its
verdicts can be regenerated on any checkout, whether or not the run directories survived. Nothing here
is typed by hand: a row that has not finished shows as "not run", and each verdict is computed from
the numbers printed beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from results_converged import GLUE_TASKS, LRS, MAIN, best_full_e2e_lr, result, seed_summary

E2E_METRICS = (("BLEU", "BLEU"), ("NIST", "NIST"), ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE-L"), ("CIDEr", "CIDEr"))
WIKISQL_METRICS = (("lf_accuracy", "logical-form acc"), ("exact_match", "exact match"))
ONE_POINT = 0.01  # "within one point": metrics on a 0-1 scale


def table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def value(row: dict | None, name: str):
    return None if row is None else row.get("eval", {}).get("metrics", {}).get(name)


def cell(row: dict | None, name: str, digits: int = 4) -> str:
    v = value(row, name)
    return "not run" if row is None else "n/a" if v is None else f"{v:.{digits}f}"


def examples_per_step(row: dict) -> int:
    summary = row.get("summary", {})
    return round(summary.get("examples_seen", 0) / max(summary.get("steps", 1), 1)) or 1


def curve(row: dict | None, key: str) -> list[tuple[int, float]]:
    """(examples seen, value) of `key` (e.g. "eval_f1", "valid_loss") over a row's kept records."""
    if row is None:
        return []
    per_step = examples_per_step(row)
    return [(r["step"] * per_step, r[key]) for r in row.get("curve", []) if r.get(key) is not None]


# ---------------------------------------------------------------------------------------------- GLUE


def glue_cell(out: Path, task: str, method: str) -> str:
    summary = seed_summary(out, task, method)
    if summary is None:
        return "not run"
    spread = f" [{summary['min']:.3f}, {summary['max']:.3f}]" if summary["seeds"] > 1 else ""
    return f"{summary['median']:.3f}{spread} (lr {summary['lr']}, {summary['seeds']} seed{'s' * (summary['seeds'] > 1)})"


def glue_tables(out: Path) -> str:
    rows = [["head only (floor)", *(cell(result(out, f"cg-{t}-head"), MAIN[t], 3) for t in GLUE_TASKS)]]
    rows += [[label, *(glue_cell(out, t, m) for t in GLUE_TASKS)]
             for m, label in (("lora", "LoRA r=8 q,v"), ("full", "full fine-tuning"))]
    sweep = [[f"{m} lr {lr}", *(cell(result(out, f"cg-{t}-{m}-lr{lr}"), MAIN[t], 3) for t in GLUE_TASKS)]
             for m in ("lora", "full") for lr in LRS[m]]
    return (table(["variant", *(f"{t} {MAIN[t]}" for t in GLUE_TASKS)], rows)
            + "\nLearning-rate sweep (seed 0, main dev metric):\n\n"
            + table(["sweep row (seed 0)", *GLUE_TASKS], sweep))


def glue_verdicts(out: Path) -> list[str]:
    lines = []
    for task in GLUE_TASKS:
        lora, full = seed_summary(out, task, "lora"), seed_summary(out, task, "full")
        if lora is None or full is None:
            lines.append(f"- {task}: not finished yet (LoRA sweep {'done' if lora else 'open'}, "
                         f"full sweep {'done' if full else 'open'}).")
            continue
        gap = lora["median"] - full["median"]
        seeds = f"{lora['seeds']} and {full['seeds']} seed(s)"
        verdict = ("LoRA matched full fine-tuning within one point" if gap >= -ONE_POINT
                   else "LoRA did NOT match full fine-tuning within one point")
        lines.append(f"- {task} ({MAIN[task]}): {verdict}: LoRA {lora['median']:.3f} vs full {full['median']:.3f} "
                     f"(LoRA - full = {100 * gap:+.1f} points; medians over {seeds}).")
    return lines


# ---------------------------------------------------------------------------------------------- E2E and WikiSQL


def e2e_rows(out: Path) -> list[str]:
    ids = ["ce-lora-qv", "ce-lora-qv-2ep", "ce-lora-all", "ce-full", "ce-lora-qv-beam10", "ce-lora-qv-2ep-beam10",
           "ce-full-beam10"]
    return [i for i in ids if result(out, i) is not None] or ["ce-lora-qv", "ce-full"]


def rows_table(out: Path, ids: list[str], metrics) -> str:
    rows = []
    for rid in ids:
        row = result(out, rid)
        decoding = "beam 10" if rid.endswith("beam10") else "greedy"
        rows.append([rid, row["variant"] if row else "not run", decoding, *(cell(row, m) for m, _ in metrics)])
    return table(["row", "variant", "decoding", *(c for _, c in metrics)], rows)


def e2e_sweep(out: Path) -> str:
    from results_converged import FULL_SWEEP_LRS

    rows = []
    for lr in FULL_SWEEP_LRS:
        row = result(out, f"ce-full-sweep-lr{lr}")
        loss = None if row is None else row.get("summary", {}).get("final_valid_loss")
        rows.append([lr, "not run" if row is None else f"{loss:.4f}"])
    chosen = best_full_e2e_lr(out)
    return table(["full FT lr (4,000 rows, 500 steps)", "final dev loss (500 examples)"], rows) + (
        f"\nChosen: lr {chosen} (lowest dev loss).\n" if chosen else "\nNot chosen yet (sweep not finished).\n")


def e2e_verdict(out: Path) -> list[str]:
    lora_ids = [i for i in ("ce-lora-qv-2ep-beam10", "ce-lora-qv-beam10", "ce-lora-qv-2ep", "ce-lora-qv", "ce-lora-all")
                if value(result(out, i), "BLEU") is not None]
    full_ids = [i for i in ("ce-full-beam10", "ce-full") if value(result(out, i), "BLEU") is not None]
    if not lora_ids or not full_ids:
        return ["- E2E: not finished yet."]
    best_lora = max(lora_ids, key=lambda i: value(result(out, i), "BLEU"))
    lora_bleu = value(result(out, best_lora), "BLEU")
    same_decoding = [i for i in full_ids if i.endswith("beam10") == best_lora.endswith("beam10")]
    full_id = same_decoding[0] if same_decoding else full_ids[0]
    full_bleu = value(result(out, full_id), "BLEU")
    gap = lora_bleu - full_bleu
    goal = "meets" if lora_bleu >= 0.65 else "misses"
    return [f"- E2E (BLEU): best LoRA row {best_lora} {lora_bleu:.4f} vs {full_id} {full_bleu:.4f} "
            f"(LoRA - full = {100 * gap:+.1f} points: {'within' if gap >= -ONE_POINT else 'NOT within'} one point); "
            f"the goal BLEU >= 0.65 {goal}."]


def wikisql_verdict(out: Path) -> list[str]:
    lora = [i for i in ("cw-lora-qv", "cw-lora-all") if value(result(out, i), "lf_accuracy") is not None]
    full = value(result(out, "cw-full"), "lf_accuracy")
    if not lora or full is None:
        return ["- WikiSQL: not finished yet."]
    best = max(lora, key=lambda i: value(result(out, i), "lf_accuracy"))
    gap = value(result(out, best), "lf_accuracy") - full
    return [f"- WikiSQL (logical-form accuracy): {best} {value(result(out, best), 'lf_accuracy'):.3f} vs full "
            f"{full:.3f} (LoRA - full = {100 * gap:+.1f} points)."]


# ---------------------------------------------------------------------------------------------- curves, compute


def plot_curves(out: Path, path: Path) -> Path | None:
    """One panel per task: the dev metric (GLUE: main metric, every learning rate of both methods;
    WikiSQL: logical-form accuracy; E2E: dev loss) vs examples seen, LoRA and full fine-tuning on the
    same axes."""
    import matplotlib.pyplot as plt

    from lorafit.runs.plots import save_figure  # also selects the headless Agg backend

    panels = []
    for task in GLUE_TASKS:  # every finished sweep row (seed 0): the learning-rate choice shows too
        runs = {f"{m} lr {lr}": result(out, f"cg-{task}-{m}-lr{lr}") for m in ("lora", "full") for lr in LRS[m]}
        panels.append((f"{task} dev {MAIN[task]}", {k: curve(r, f"eval_{MAIN[task]}") for k, r in runs.items()}))
    panels.append(("WikiSQL valid lf accuracy", {i: curve(result(out, i), "eval_lf_accuracy")
                                                 for i in ("cw-lora-qv", "cw-lora-all", "cw-full")}))
    panels.append(("E2E dev loss", {i: curve(result(out, i), "valid_loss") for i in ("ce-lora-qv", "ce-lora-qv-2ep",
                                                                                     "ce-lora-all", "ce-full")}))
    panels = [(title, {k: v for k, v in c.items() if v}) for title, c in panels]
    panels = [(title, c) for title, c in panels if c]
    if not panels:
        return None
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, curves) in zip(axes.flat, panels, strict=False):
        for label, points in curves.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("examples seen")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def compute_table(out: Path) -> str:
    """Per converged row: wall time (all invocations), device, threads, peak RSS, steps, examples."""
    rows = []
    for path in sorted((out.parent / "rows").glob("c[gwe]-*.json")):
        r = json.loads(path.read_text())
        s = r.get("summary", {})
        rows.append([r["id"], f"{r.get('wall_seconds', 0):,.0f}", s.get("machine", {}).get("device", "cpu"), str(r.get("torch_threads")),
                     f"{s['peak_rss_mb']:,.0f}" if s.get("peak_rss_mb") else "n/a",
                     f"{s['steps']:,}" if "steps" in s else "-",
                     f"{s['examples_seen']:,}" if "examples_seen" in s else "-"])
    if not rows:
        return "No converged row has finished yet.\n"
    return table(["row", "wall s", "device", "torch threads", "peak RSS MB", "steps", "examples seen"], rows)


def epoch_check(out: Path) -> str:
    """The run that set the GLUE epoch budget: MRPC LoRA at 10 epochs, its dev F1 after each epoch."""
    row = result(out, "cg-mrpc-lora-lr5e-4-10ep")
    if row is None:
        return ""
    points = curve(row, "eval_f1")
    per_epoch = ", ".join(f"{v:.3f}" for _, v in points)
    best = max(range(len(points)), key=lambda i: points[i][1]) + 1 if points else 0
    return (f"\nEpoch budget: the first MRPC row ran 10 epochs (LoRA lr 5e-4); its dev F1 after each epoch was "
            f"{per_epoch} (best after epoch {best}; after 5: {points[4][1]:.3f}, after 10: {points[-1][1]:.3f}), so "
            "the GLUE rows run 5 epochs (SST-2: 3), half the compute.\n") if len(points) >= 5 else ""


def progress(out: Path) -> str:
    """Rows done and left per task, the wall time spent, and for tasks with a finished row a projection
    of the time left (its mean wall time per row x rows left; rows not yet listed, such as the seed
    reruns before their sweep ends, are counted as the plan has them)."""
    from results_converged import SEEDS, converged_rows

    import results

    planned = converged_rows(results.Experiment, out)
    tasks = {"cg-mrpc": "MRPC", "cg-stsb": "STS-B", "cg-rte": "RTE", "cw-": "WikiSQL", "ce-": "E2E",
             "cg-cola": "CoLA", "cg-sst2": "SST-2"}
    rows = []
    for prefix, name in tasks.items():
        ids = [e.id for e in planned if e.id.startswith(prefix)]
        # Rows the plan lists only once the rows they depend on have finished.
        later = ([f"{prefix}-{m}-best-s{s}" for m in ("lora", "full") for s in SEEDS] if prefix.startswith("cg-")
                 else ["ce-full", "ce-lora-qv-beam10", "ce-full-beam10"] if prefix == "ce-" else [])
        ids += [i for i in later if i not in ids and not (prefix == "ce-" and "ce-lora-qv-2ep-beam10" in ids
                                                           and i == "ce-lora-qv-beam10")]
        done = [result(out, i) for i in ids if result(out, i) is not None]
        spent = sum(r.get("wall_seconds", 0) for r in done)
        left = len(ids) - len(done)
        projection = f"~{left * spent / len(done) / 3600:.1f} h" if done and left else "-" if not left else "unknown"
        rows.append([name, f"{len(done)} / {len(ids)}", f"{spent / 3600:.2f} h", projection])
    return table(["task", "rows done / planned", "wall time so far", "time left at that pace"], rows)


def converged_section(out: Path, docs: Path) -> str:
    """The markdown of section 6, from results/rows (committed) and results/out (this machine)."""
    done = sorted(p.stem for p in (out.parent / "rows").glob("c[gwe]-*.json"))
    png = plot_curves(out, docs / "img" / "converged-curves.png")
    parts = [
        "## 6. At a converged budget: does LoRA match full fine-tuning?\n",
        "The tables above stop after a short budget. These rows train on all the training data until the dev "
        "metric stops improving; `bench/results_converged.py` says exactly how (epochs per task, learning-rate "
        "sweeps, seeds, the order they run in) and `bench/results_converged_report.py` writes this section "
        "from the committed row records in `results/rows/` (regenerate: `bench/results.py report --converged`). "
        f"Rows finished so far: {len(done)}.\n",
        "### Progress\n",
        "One row at a time on one core (`OMP_NUM_THREADS=1`, the other core kept for development work); "
        "the queue goes on in the next sitting, resuming an interrupted row from its checkpoint.\n\n" + progress(out),
        "### Verdicts (computed from the tables below)\n",
        "\n".join(glue_verdicts(out) + wikisql_verdict(out) + e2e_verdict(out)) + "\n",
        "### 6a. GLUE dev on MiniLM-L6: median [range] over seeds at the best learning rate\n",
        glue_tables(out) + epoch_check(out),
        "\n### 6b. WikiSQL subset, 6 epochs (valid)\n",
        rows_table(out, ["cw-lora-qv", "cw-lora-all", "cw-full"], WIKISQL_METRICS),
        "\n### 6c. E2E on all 42,061 training rows (dev, 547 MRs)\n",
        rows_table(out, e2e_rows(out), E2E_METRICS),
        "\nFull fine-tuning's learning rate, from a short sweep on a 4,000-row subset:\n\n" + e2e_sweep(out),
        "\n### 6d. Learning curves\n",
        "![dev metric vs examples seen, LoRA and full fine-tuning](img/converged-curves.png)\n" if png
        else "No curve yet.\n",
        "\n### 6e. Compute per converged row\n",
        "Rows run one at a time (`results.py run --jobs 1`) with the torch threads shown: 1 where development "
        "work (tests, other benches) shared the 2 cores, so wall times are upper bounds; wall time sums all "
        "invocations of an interrupted row.\n\n"
        + compute_table(out),
    ]
    return "\n".join(parts)


def splice_section(results_md: Path, section: str) -> None:
    """Replace section 6 of docs/results.md (from its heading up to "## Machine") with `section`, or
    insert it before "## Machine" where it is not there yet."""
    text = results_md.read_text()
    end = text.index("\n## Machine")
    start = text.find("## 6. At a converged budget")
    start = end + 1 if start < 0 else start
    results_md.write_text(text[:start] + section + text[end:])
