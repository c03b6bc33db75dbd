"""Reproduce the LoRA paper's claims at CPU scale: every number in docs/results.md comes from here.

    .venv/bin/python bench/results.py run [--tables glue,e2e,rank,targets,wikisql] [--only ID ...]
    .venv/bin/python bench/results.py report          # docs/results.md + docs/results.json from results/out

Each experiment is a shipped recipe plus `--set` overrides, trained through the real CLI in its own
process (`lorafit train ... --json`), then evaluated by the recipe's end-of-run evaluation (eval.json).
Zero-shot rows are `lorafit eval <base model>`; the merge check merges each trained adapter
(`lorafit merge`) and re-evaluates the merged model with the same decoding settings.
Results land in results/out/<id>/ (summary.json, eval.json, metrics.jsonl); an experiment whose
eval.json exists is skipped, so an interrupted `run` continues where it stopped (--force redoes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "out"
ROWS = REPO / "results" / "rows"  # committed: one JSON per finished row (result + learning curve), see keep_row
KEPT_ADAPTERS = REPO / "results" / "adapters"  # committed: the converged generation rows' adapters (PEFT format)
LORAFIT = str(Path(sys.executable).with_name("lorafit"))
SEED = 0

# Shared scale settings, one place: each variant's training stays within ~30 min on 2 CPU cores, and the
# whole set within ~2 hours when two experiments run side by side (`--jobs 2`, one thread each).
# E2E: 1,000 training examples (125 steps of 8) and greedy decoding with a batch of 32: a beam-4 pass
# over the 547 dev inputs takes ~20 minutes on one core, more than the training, for every row.
E2E_SCALE = ["--set", "data.max_train_examples=1000", "--set", "train.epochs=1", "--set", "train.eval_every=0",
             "--set", "eval.beam_size=1", "--set", "eval.batch_size=32"]
E2E_DECODE = ["--beam-size", "1", "--no-repeat-ngram-size", "4", "--max-new-tokens", "64", "--batch-size", "32"]
E2E_MERGE_CHECK_LIMIT = 100  # the merge check re-decodes the first 100 dev inputs with adapter and merged model
SST2_SCALE = ["--set", "data.max_train_examples=20000"]
EPOCHS = {"mrpc": 3, "rte": 3}  # fewer than the shipped recipes' 5, for time; same for every variant
WIKISQL_SCALE = ["--set", "train.epochs=1"]


@dataclass(frozen=True)
class Experiment:
    """One row of a table: a recipe + overrides to train (or a base model to evaluate zero-shot)."""

    id: str
    table: str
    variant: str
    recipe: str | None = None  # shipped recipe name; None for zero-shot rows
    overrides: tuple[str, ...] = ()
    zero_shot: tuple[str, ...] = ()  # (model, task) for zero-shot rows
    eval_args: tuple[str, ...] = ()
    merge_check: bool = False
    extra: dict = field(default_factory=dict)


def s(*pairs: str) -> tuple[str, ...]:
    """`--set` pairs: s("lora.rank=4", ...) -> ("--set", "lora.rank=4", ...)."""
    return tuple(x for p in pairs for x in ("--set", p))


GLUE_TASKS = ("sst2", "mrpc", "cola", "rte", "stsb")
ALL_LINEAR_BERT = "lora.targets=[query,key,value,attention.output.dense,intermediate.dense,output.dense]"


VARIANTS = (("dora", "DoRA", "lora.variant=dora"), ("loraplus16", "LoRA+ ratio 16", "train.loraplus_lr_ratio=16"),
            ("pissa", "PiSSA init", "lora.init=pissa"))


def experiments() -> list[Experiment]:
    rows: list[Experiment] = []
    # Table 1: E2E NLG on SmolLM2-135M.
    rows.append(Experiment("e2e-zero-shot", "e2e", "zero-shot, raw prompt",
                           zero_shot=("smollm2-135m", "e2e"), eval_args=E2E_DECODE))
    rows.append(Experiment("e2e-zero-shot-chat", "e2e", "zero-shot, chat template",
                           zero_shot=("smollm2-135m", "e2e"), eval_args=(*E2E_DECODE, "--chat-template")))
    rows.append(Experiment("e2e-lora-qv-r4", "e2e", "LoRA r=4 q,v (paper)", "e2e-smollm2", tuple(E2E_SCALE),
                           merge_check=True))
    rows.append(Experiment("e2e-lora-all-r4", "e2e", "LoRA r=4 all linear", "e2e-smollm2",
                           (*E2E_SCALE, *s("lora.targets=all-linear")), merge_check=True))
    rows.append(Experiment("e2e-full", "e2e", "full fine-tuning", "e2e-smollm2",
                           (*E2E_SCALE, *s("train.method=full", "train.lr=5e-5"))))
    # Table 2: GLUE on MiniLM-L6: head only vs LoRA q,v r=8 vs full fine-tuning.
    for task in GLUE_TASKS:
        scale = tuple(SST2_SCALE) if task == "sst2" else s(f"train.epochs={EPOCHS[task]}") if task in EPOCHS else ()
        rows.append(Experiment(f"glue-{task}-head", "glue", "head only", f"{task}-minilm",
                               (*scale, *s("train.method=head", "train.lr=2e-3"))))
        rows.append(Experiment(f"glue-{task}-lora", "glue", "LoRA r=8 q,v", f"{task}-minilm", scale,
                               merge_check=True))
        rows.append(Experiment(f"glue-{task}-full", "glue", "full fine-tuning", f"{task}-minilm",
                               (*scale, *s("train.method=full", "train.lr=5e-5"))))
    # Table 3a: rank on one generation and one GLUE task (same data, steps, seed within each task).
    # r=4 on E2E is the row e2e-lora-qv-r4 and r=8 on SST-2 the row glue-sst2-lora: not run twice.
    for rank in (1, 2, 4, 8, 64):
        if rank != 4:
            rows.append(Experiment(f"rank-e2e-r{rank}", "rank", f"r={rank}", "e2e-smollm2",
                                   (*E2E_SCALE, *s(f"lora.rank={rank}")), merge_check=True,
                                   extra={"task": "e2e", "rank": rank}))
        if rank != 8:
            rows.append(Experiment(f"rank-sst2-r{rank}", "rank", f"r={rank}", "sst2-minilm",
                                   (*SST2_SCALE, *s(f"lora.rank={rank}")), merge_check=True,
                                   extra={"task": "sst2", "rank": rank}))
    # Table 3b: which weights under a fixed budget of 8 * d parameters per layer (paper Table 5), on SST-2.
    # q+v at r=4 is the row rank-sst2-r4: not run twice.
    for targets, rank in (("[query]", 8), ("[value]", 8), ("[query,key,value,attention.output.dense]", 2)):
        rows.append(Experiment(f"targets-sst2-{targets.strip('[]').replace(',', '+').replace('attention.output.dense', 'o')}",
                               "targets", f"{targets} r={rank}", "sst2-minilm",
                               (*SST2_SCALE, *s(f"lora.targets={targets}", f"lora.rank={rank}")), merge_check=True,
                               extra={"rank": rank}))
    # Table 4: WikiSQL subset on SmolLM2-135M.
    rows.append(Experiment("wikisql-zero-shot", "wikisql", "zero-shot, raw prompt", zero_shot=("smollm2-135m", "wikisql")))
    rows.append(Experiment("wikisql-zero-shot-chat", "wikisql", "zero-shot, chat template",
                           zero_shot=("smollm2-135m", "wikisql"), eval_args=("--chat-template",)))
    rows.append(Experiment("wikisql-lora", "wikisql", "LoRA r=4 q,v", "wikisql-smollm2", tuple(WIKISQL_SCALE),
                           merge_check=True))
    # Table "variants": DoRA, LoRA+ (ratio 16) and PiSSA at tables 1 and 2's budget (same data, steps, seed).
    # Plain LoRA is the row e2e-lora-qv-r4 (E2E) and glue-sst2-lora (SST-2): not run twice.
    for key, label, overrides in VARIANTS:
        rows.append(Experiment(f"variant-e2e-{key}", "variants", label, "e2e-smollm2", (*E2E_SCALE, *s(overrides)),
                               merge_check=True, extra={"task": "e2e"}))
        rows.append(Experiment(f"variant-sst2-{key}", "variants", label, "sst2-minilm", (*SST2_SCALE, *s(overrides)),
                               merge_check=True, extra={"task": "sst2"}))
    from results_converged import converged_rows  # bench/ is on sys.path when run as bench/results.py

    return rows + converged_rows(Experiment, OUT)


THREADS = {"n": 0}  # torch threads per lorafit process; 0: $OMP_NUM_THREADS if set, else torch's default (all cores)


def torch_threads() -> int:
    return THREADS["n"] or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1


DEADLINE = {"at": None}  # time.time() at which `run --hours` stops every training (None: no limit)


class OutOfTime(Exception):
    """The `--hours` deadline passed: the running training wrote a checkpoint; `run` again continues it."""


def run(cmd: list[str], log: Path) -> subprocess.CompletedProcess:
    """Run a lorafit command, its stderr appended to `log`; stdout (the --json summary) returned.

    At the `--hours` deadline the command gets SIGTERM: `lorafit train` writes a checkpoint and exits
    130, and OutOfTime is raised so no new experiment starts."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if THREADS["n"]:
        env["OMP_NUM_THREADS"] = str(THREADS["n"])
    env.setdefault("LORAFIT_DATA", str(REPO.parent / "shared" / "data"))
    with open(log, "a", encoding="utf-8") as err:
        err.write(f"\n$ {' '.join(cmd)}\n")
        err.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=REPO)
        left = None if DEADLINE["at"] is None else max(DEADLINE["at"] - time.time(), 0)
        try:
            stdout, _ = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            proc.communicate()
            raise OutOfTime(" ".join(cmd[1:3])) from None
        return subprocess.CompletedProcess(cmd, proc.returncode, stdout, None)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_experiment(exp: Experiment, force: bool) -> None:
    out = OUT / exp.id
    if (out / "result.json").exists() and not force:
        result = json.loads((out / "result.json").read_text())
        if exp.merge_check and "merge_check" not in result and (out / "run" / "adapter").is_dir():
            # Done before its row asked for a merge check: add the check to the finished run.
            evaluation = {**result["eval"], "settings": json.loads((out / "run" / "eval.json").read_text()).get("settings")}
            limit = E2E_MERGE_CHECK_LIMIT if evaluation["task"] == "e2e" else None
            result["merge_check"] = merge_check(out / "run", out, out / "commands.log", evaluation, limit)
            (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
            print(f"[done] {exp.id}: merge check added, max abs diff {result['merge_check']['max_abs_diff']}", flush=True)
            return
        print(f"[skip] {exp.id} (done)", flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    started = time.time()
    result: dict = {"id": exp.id, "table": exp.table, "variant": exp.variant, "extra": exp.extra,
                    "torch_threads": torch_threads(), "parallel_jobs": THREADS.get("jobs", 1)}
    if exp.zero_shot:
        model, task = exp.zero_shot
        cmd = [LORAFIT, "eval", model, "--task", task, "-o", str(out / "eval.json"), "--json", *exp.eval_args]
        done = run(cmd, log)
        if done.returncode != 0:
            raise SystemExit(f"{exp.id}: {' '.join(cmd)} failed ({done.returncode}); see {log}")
        result.update(commands=[" ".join(cmd[1:])], eval=json.loads((out / "eval.json").read_text()))
        result["eval"].pop("predictions", None)
    else:
        run_dir = out / "run"
        cmd = [LORAFIT, "train", f"recipes/{exp.recipe}.yaml", "-o", str(run_dir), "--overwrite", "--json",
               "--set", f"seed={exp.extra.get('seed', SEED)}", "--set", "eval.at_end=true", *exp.overrides]
        if any((run_dir / "checkpoints").glob("step-*")):  # an interrupted training: continue it
            cmd = [LORAFIT, "train", "--resume", str(run_dir), "--json"]
        earlier = out / "seconds-before-interruptions.json"  # wall time of earlier, interrupted invocations
        before = json.loads(earlier.read_text())["seconds"] if earlier.exists() else 0.0
        try:
            done = run(cmd, log)
        except OutOfTime:
            earlier.write_text(json.dumps({"seconds": before + time.time() - started}) + "\n")
            raise
        started -= before
        if done.returncode != 0:
            raise SystemExit(f"{exp.id}: {' '.join(cmd)} failed ({done.returncode}); see {log}")
        summary = json.loads(done.stdout)
        evaluation = json.loads((run_dir / "eval.json").read_text())
        evaluation.pop("predictions", None)
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        train_records = [r for r in records if "loss" in r]
        result.update(
            commands=[" ".join(cmd[1:])], summary={k: v for k, v in summary.items() if k != "examples"},
            eval=evaluation, adapter_bytes=dir_size(run_dir / "adapter"),
            seconds_per_step=train_time(records) / max(summary["steps"], 1),
            final_train_loss=train_records[-1]["loss"] if train_records else None,
        )
        if exp.merge_check:
            limit = E2E_MERGE_CHECK_LIMIT if evaluation["task"] == "e2e" else None
            result["merge_check"] = merge_check(run_dir, out, log, evaluation, limit)
    result["wall_seconds"] = round(time.time() - started, 1)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    keep_row(exp, result, out)
    print(f"[done] {exp.id} in {result['wall_seconds']:.0f}s: {result['eval']['metrics']}", flush=True)


def keep_row(exp: Experiment, result: dict, out: Path) -> None:
    """Copy a finished row into the committed tree: results/rows/<id>.json (result.json plus the run's
    validation and task-metric records, its learning curve) and, for the converged generation rows, the
    adapter itself in results/adapters/<id>/ (PEFT format, with the run's recipe). The report reads
    these, so no number depends on a run directory surviving."""
    ROWS.mkdir(parents=True, exist_ok=True)
    metrics = out / "run" / "metrics.jsonl"
    curve = [r for r in (json.loads(x) for x in metrics.read_text().splitlines()) if "loss" not in r] if metrics.exists() else []
    (ROWS / f"{exp.id}.json").write_text(json.dumps({**result, "curve": curve}, indent=1) + "\n")
    adapter = out / "run" / "adapter"
    if exp.extra.get("keep_adapter") and adapter.is_dir():
        kept = KEPT_ADAPTERS / exp.id
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(adapter, kept)
        shutil.copy2(out / "run" / "recipe.yaml", kept / "recipe.yaml")


def train_time(records: list[dict]) -> float:
    """Seconds spent in optimizer steps: the last training record's elapsed time minus the time spent
    in validation passes (each validation record's elapsed minus the record before it)."""
    elapsed = 0.0
    previous = 0.0
    valid_time = 0.0
    for r in records:
        if "loss" not in r:
            valid_time += r["elapsed_s"] - previous
        else:
            elapsed = r["elapsed_s"]
        previous = r["elapsed_s"]
    return max(elapsed - valid_time, 0.0)


def merge_check(run_dir: Path, out: Path, log: Path, evaluation: dict, limit: int | None = None) -> dict:
    """Merge the adapter, evaluate the merged model with the run's decoding settings, compare with the
    adapter's metrics: the run's own evaluation, or with `limit`, both re-evaluated on the first
    `limit` inputs (generation over the whole dev set twice more costs more than the training)."""
    merged = out / "merged"
    cmd = [LORAFIT, "merge", str(run_dir), "-o", str(merged), "--overwrite", "--json"]
    if run(cmd, log).returncode != 0:
        raise SystemExit(f"merge failed; see {log}")
    recipe_eval = json.loads(json.dumps(evaluation.get("settings") or {}))
    flags = []
    for key, flag in (("beam_size", "--beam-size"), ("length_penalty", "--length-penalty"),
                      ("no_repeat_ngram_size", "--no-repeat-ngram-size"), ("max_new_tokens", "--max-new-tokens"),
                      ("batch_size", "--batch-size")):
        if key in recipe_eval:
            flags += [flag, str(recipe_eval[key])]
    def evaluate(target: Path, name: str) -> dict:
        path = out / f"{name}-eval.json"
        cmd = [LORAFIT, "eval", str(target), "--task", evaluation["task"], "--split", evaluation["split"],
               "-o", str(path), "--json", *flags]
        n = limit or evaluation.get("num_examples")
        if n:
            cmd += ["--limit", str(n)]
        if run(cmd, log).returncode != 0:
            raise SystemExit(f"{name} eval failed; see {log}")
        return json.loads(path.read_text())

    if limit:
        evaluation = evaluate(run_dir, "adapter")
    merged_eval = evaluate(merged, "merged")
    diffs = {k: abs(v - merged_eval["metrics"].get(k, float("nan")))
             for k, v in evaluation["metrics"].items() if isinstance(v, int | float)}
    shutil.rmtree(merged, ignore_errors=True)  # hundreds of MB each; the numbers are what we keep
    return {"metrics": merged_eval["metrics"], "adapter_metrics": evaluation["metrics"],
            "max_abs_diff": max(diffs.values()) if diffs else None, "inputs": merged_eval.get("num_examples")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run experiments (skips those already done)")
    r.add_argument("--tables", default="glue,wikisql,e2e,rank,targets,merge")
    r.add_argument("--only", nargs="*", default=None, help="experiment ids")
    r.add_argument("--force", action="store_true")
    r.add_argument("--jobs", type=int, default=1, help="experiments run side by side (threads split between them)")
    r.add_argument("--hours", type=float, default=None,
                   help="stop at this many hours (trainings checkpoint and continue on the next run)")
    rep = sub.add_parser("report", help="write docs/results.md and docs/results.json from results/out")
    rep.add_argument("--converged", action="store_true",
                     help="only rewrite section 6 (the converged rows) from the committed results/rows")
    sub.add_parser("list", help="list the experiments")
    args = parser.parse_args()
    if args.command == "list":
        for exp in experiments():
            print(f"{exp.id:32s} {exp.table:8s} {exp.variant}")
        return
    if args.command == "report" and args.converged:
        from results_converged_report import converged_section, splice_section

        splice_section(REPO / "docs" / "results.md", converged_section(OUT, REPO / "docs"))
        print(f"wrote section 6 of {REPO / 'docs' / 'results.md'}")
        return
    if args.command == "report":
        from results_report import write_report

        write_report(OUT, REPO / "docs")
        return
    tables = args.tables.split(",")
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    todo = [e for e in experiments() if e.table in tables and (args.only is None or e.id in args.only)]
    if args.jobs > 1:
        THREADS.update(n=max(1, (os.cpu_count() or 1) // args.jobs), jobs=args.jobs)
    if args.hours is not None:
        DEADLINE["at"] = time.time() + args.hours * 3600
    if args.jobs == 1 and any(table.startswith("converged") for table in tables):
        run_converged(tables, args.only, args.force)
    else:
        run_in_lanes(todo, args.jobs, args.force)
    THREADS.update(n=0, jobs=1)
    if "merge" in tables:
        run_latency(args.force)


# The main rows first, so that an interrupted run has filled the tables that matter most.
FIRST = ("e2e-lora-qv-r4", "e2e-zero-shot-chat", "e2e-full", "e2e-lora-all-r4", "e2e-zero-shot", "wikisql-lora",
         "wikisql-zero-shot-chat", "wikisql-zero-shot", "rank-e2e-r1", "rank-e2e-r64", "rank-e2e-r2", "rank-e2e-r8")


def lane(exp: Experiment) -> int:
    """0 for SmolLM2 experiments (long), 1 for MiniLM ones (short)."""
    model = exp.zero_shot[0] if exp.zero_shot else exp.recipe or ""
    return 0 if "smollm2" in model else 1


def run_in_lanes(todo: list[Experiment], jobs: int, force: bool) -> None:
    """Run `todo` with `jobs` workers. With two, one worker works through the SmolLM2 experiments and the
    other through the MiniLM ones, each taking from the other list once its own is empty; every lorafit
    process then gets cores // jobs threads (no oversubscription: two 2-thread torch processes on 2
    cores slow each other several-fold)."""
    first = {rid: i for i, rid in enumerate(FIRST)}
    queues = [sorted((e for e in todo if lane(e) == k), key=lambda e: first.get(e.id, len(first))) for k in (0, 1)]
    lock = threading.Lock()
    failures: list[str] = []

    def take(worker: int) -> Experiment | None:
        with lock:
            for q in (queues[worker % 2], queues[(worker + 1) % 2]):
                if q:
                    return q.pop(0)
            return None

    stopped: list[str] = []

    def work(worker: int) -> None:
        while not stopped and (exp := take(worker)) is not None:
            try:
                run_experiment(exp, force)
            except SystemExit as failed:  # one failed experiment must not stop the others
                print(f"[fail] {failed}", flush=True)
                failures.append(exp.id)
            except OutOfTime:
                print(f"[stopped] {exp.id} at the --hours deadline (checkpoint written); run again to continue",
                      flush=True)
                stopped.append(exp.id)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(max(jobs, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"{len(failures)} experiment(s) failed: {', '.join(failures)}")
    if stopped:
        raise SystemExit(f"stopped at the deadline: {', '.join(stopped)} continue on the next run")


def run_converged(tables: list[str], only: list[str] | None, force: bool) -> None:
    """One row at a time on all the threads the process was given, re-planning after each row: rows that
    depend on finished ones (the GLUE seed reruns at the best learning rate, E2E's beam-search rows)
    join the queue as soon as they can. Order: bench/results_converged.py's list order."""
    failed: list[str] = []
    done: set[str] = set()
    while True:
        todo = [e for e in experiments() if e.table in tables and (only is None or e.id in only)
                and e.id not in failed and e.id not in done and (force or not (OUT / e.id / "result.json").exists())]
        if not todo:
            break
        exp = todo[0]
        try:
            run_experiment(exp, force)
            done.add(exp.id)
        except SystemExit as failure:  # one failed row must not stop the others
            print(f"[fail] {failure}", flush=True)
            failed.append(exp.id)
        except OutOfTime:
            print(f"[stopped] {exp.id} at the --hours deadline (checkpoint written); run again to continue", flush=True)
            raise SystemExit(f"stopped at the deadline: {exp.id} continues on the next run") from None
    if failed:
        raise SystemExit(f"{len(failed)} experiment(s) failed: {', '.join(failed)}")


LATENCY_RUNS = {"smollm2-135m": "e2e-lora-qv-r4", "minilm-l6": "glue-sst2-lora"}


def run_latency(force: bool) -> None:
    """Merged vs base inference latency on two trained adapters, measured alone (all cores) after the
    experiments, by bench/merge_latency.py in one process per model."""
    out = OUT / "merge-latency"
    if (out / "result.json").exists() and not force:
        print("[skip] merge-latency (done)", flush=True)
        return
    runs = {model: OUT / rid / "run" for model, rid in LATENCY_RUNS.items() if (OUT / rid / "run" / "adapter").is_dir()}
    if not runs:
        print("[skip] merge-latency: no trained adapter yet", flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    latency, commands = {}, []
    for model, run_dir in runs.items():
        cmd = [sys.executable, str(REPO / "bench" / "merge_latency.py"), str(run_dir)]
        done = run(cmd, out / "commands.log")
        if done.returncode != 0:
            raise SystemExit(f"merge-latency: {' '.join(cmd)} failed; see {out / 'commands.log'}")
        latency[model] = json.loads(done.stdout.strip().splitlines()[-1])[str(run_dir)]
        commands.append(" ".join(cmd[1:]).replace(str(REPO) + "/", ""))
    how = ("Measured by `bench/merge_latency.py` alone on the machine after the experiments: base and merged "
           "models timed in alternating order over 10 rounds, medians compared; " +
           "; ".join(f"{m}: {v['what']}" for m, v in latency.items()) + ".")
    result = {"id": "merge-latency", "table": "merge", "latency": latency, "how": how, "commands": commands}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print("[done] merge-latency: " + ", ".join(f"{m} merged/base {v['ratio']:.3f}" for m, v in latency.items()), flush=True)


if __name__ == "__main__":
    main()
