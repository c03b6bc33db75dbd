"""Data pipeline at scale (not a test): time to the first training step and peak RSS before training,
for synthetic chat data of 10k, 100k and 1M rows, cold cache, warm cache, and the old list path.

    python bench/bench_data.py                          # 10k and 100k
    python bench/bench_data.py --rows 10000 100000 1000000 --old-max 100000

Each measurement is a fresh process (`bench_data.py one ...`) so peak RSS (ru_maxrss) is its own:
  new-cold  empty lorafit and datasets caches: read the jsonl, render + tokenise every conversation, write Arrow
  new-warm  the same again: the token cache is reused, no data file is opened
  old       the list path lorafit had before data/pipeline.py, on the same conversations flattened to
            prompt/completion (the old path had no chat format): text.py reads the file into Python
            objects, encode_generation tokenises into tuples
then each loads SmolLM2-135M with LoRA (the `smollm2-135m` alias) and runs one optimizer step (batch 8,
packed). "data s" is the data part alone; "first step s" is from process start to the end of step 1.
Results: bench/out/data/results.json and a markdown table on stdout (copied into docs/data.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "data"
SYSTEM = "You are a helpful assistant for a bicycle shop."
TOPICS = ("brakes", "tyres", "gears", "chains", "saddles", "lights", "locks", "helmets", "pumps", "frames")
VERBS = ("fix", "replace", "adjust", "clean", "choose", "store", "check", "upgrade")


def conversation(rng: random.Random) -> list[dict]:
    """A seeded synthetic conversation: a system prompt, 1-2 user/assistant turns of 10-60 words."""
    messages = [{"role": "system", "content": SYSTEM}]
    for _ in range(rng.choice((1, 1, 2))):
        topic, verb = rng.choice(TOPICS), rng.choice(VERBS)
        messages.append({"role": "user", "content": f"How do I {verb} the {topic} on my bike? " + " ".join(
            rng.choice(TOPICS) for _ in range(rng.randint(2, 12)))})
        words = [rng.choice(VERBS + TOPICS + ("the", "a", "then", "and", "carefully")) for _ in range(rng.randint(10, 50))]
        messages.append({"role": "assistant", "content": f"To {verb} the {topic}: " + " ".join(words) + "."})
    return messages


def make_data(rows: int) -> tuple[Path, Path]:
    """chat-N.jsonl (messages) and flat-N.jsonl (prompt = the context as text, completion = the last reply)."""
    OUT.mkdir(parents=True, exist_ok=True)
    chat, flat = OUT / f"chat-{rows}.jsonl", OUT / f"flat-{rows}.jsonl"
    if chat.exists() and flat.exists():
        return chat, flat
    rng = random.Random(rows)
    with open(chat, "w") as c, open(flat, "w") as f:
        for _ in range(rows):
            messages = conversation(rng)
            c.write(json.dumps({"messages": messages}) + "\n")
            context = "\n".join(f"{m['role']}: {m['content']}" for m in messages[:-1]) + "\nassistant:"
            f.write(json.dumps({"prompt": context, "completion": " " + messages[-1]["content"]}) + "\n")
    return chat, flat


def one(mode: str, path: Path) -> dict:
    """One measurement in this process (see the module docstring)."""
    started = time.perf_counter()
    from lorafit.data.batches import encode_generation, subsample
    from lorafit.models.loader import load_for_training
    from lorafit.recipe import parse_recipe
    from lorafit.tasks import get_task
    from lorafit.train.loop import fit
    from lorafit.train.setup import loss_function, prepare_data

    common = "model: smollm2-135m\ntask: text\ntrain: {max_steps: 1, batch_size: 8, log_every: 1}\n"
    if mode == "old":
        recipe = parse_recipe(common + f"data: {{train_file: {path}, prompt_template: '{{prompt}}', completion_field: completion, max_length: 512}}\n")
    else:
        recipe = parse_recipe(common + f"data: {{source: {path}, max_length: 512}}\n")
    task = get_task(recipe.task, recipe.data)
    from lorafit.models import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(recipe.model))
    data_started = time.perf_counter()
    if mode == "old":  # train/setup.py's prepare_data before data/pipeline.py
        examples = subsample(task.load_train(None, "train", recipe.data), None, 0)
        train, stats = encode_generation(examples, tokenizer, recipe.data.max_length)
        del examples
        valid, hit = [], None
    else:
        train, valid, counts = prepare_data(recipe, task, tokenizer)
        hit = "reused" in counts["data_cache"]
    data_s = time.perf_counter() - data_started
    rss_data_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loaded = load_for_training(recipe, task.num_labels)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak before training
    fit(loaded.model, train, [], recipe.train, seed=0, precision="fp32", loss_fn=loss_function(task),
        pad_id=loaded.tokenizer.pad_token_id, on_log=lambda r: None)
    return {"mode": mode, "rows": len(train), "data_s": round(data_s, 2), "first_step_s": round(time.perf_counter() - started, 2),
            "peak_rss_before_training_mb": round(rss_mb), "peak_rss_after_data_mb": round(rss_data_mb), "cache_hit": hit}


def measure(mode: str, path: Path, cache: Path, hf_cache: Path) -> dict:
    env = {**os.environ, "LORAFIT_CACHE": str(cache), "HF_DATASETS_CACHE": str(hf_cache), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    # the converted SmolLM2 checkpoint lives in the normal lorafit cache: link it so no run converts it again
    models = Path(os.environ.get("LORAFIT_CACHE") or Path.home() / ".cache" / "lorafit") / "models"
    (cache / "models").parent.mkdir(parents=True, exist_ok=True)
    if models.exists() and not (cache / "models").exists():
        (cache / "models").symlink_to(models)
    done = subprocess.run([sys.executable, __file__, "one", mode, str(path)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} {path.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    import datasets
    import torch
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchlib

    return (f"{benchlib.cpu_model()} ({', '.join(benchlib.cpu_flags())}), {len(os.sched_getaffinity(0))} cores usable, Python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, datasets {datasets.__version__}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        print(json.dumps(one(sys.argv[2], Path(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--old-max", type=int, default=100_000, help="run the old path only up to this many rows")
    args = parser.parse_args()
    results = json.loads((OUT / "results.json").read_text()) if (OUT / "results.json").exists() else {}
    results["machine"] = machine()
    for rows in args.rows:
        chat, flat = make_data(rows)
        scratch = OUT / f"cache-{rows}"
        shutil.rmtree(scratch, ignore_errors=True)
        row = {"cold": measure("new", chat, scratch / "lorafit", scratch / "hf")}
        row["warm"] = measure("new", chat, scratch / "lorafit", scratch / "hf")
        if rows <= args.old_max:
            row["old"] = measure("old", flat, scratch / "lorafit-old", scratch / "hf-old")
        results[str(rows)] = row
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
        print(json.dumps({rows: row}), flush=True)
        shutil.rmtree(scratch, ignore_errors=True)
    print(table(results))


def table(results: dict) -> str:
    lines = ["| rows | path | data s | first step s | peak RSS before training (MB) |", "|---:|---|---:|---:|---:|"]
    for rows in sorted(k for k in results if k.isdigit()):
        for mode in ("cold", "warm", "old"):
            r = results[rows].get(mode)
            if r:
                name = {"cold": "new, cold cache", "warm": "new, warm cache", "old": "old list path"}[mode]
                lines.append(f"| {int(rows):,} | {name} | {r['data_s']} | {r['first_step_s']} | {r['peak_rss_before_training_mb']:,} |")
    return "\n".join(lines) + f"\n\nMachine: {results.get('machine')}"


if __name__ == "__main__":
    main()
