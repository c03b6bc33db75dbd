"""Reading a data.source JSON Lines file into normalised rows (not a test): lorafit's own JSON reader with
every field checked (this tree) against `datasets`' JSON loader + a batched map (the code at --old-ref).

    python bench/bench_data_read.py --rows 100000 --old-ref 068be16

Each measurement is a fresh process with an empty `datasets` cache and one torch/BLAS thread; the chat
conversations are bench_data.py's (a system prompt, 1-2 user/assistant turns). Timed: load_split +
normalise into an Arrow file, i.e. what a cold `lorafit train` does before tokenising (tokenising, which
costs 10x more, is the same code in both). Prints the machine, CPU flags and versions beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

CHILD = """
import sys, time, tempfile
t0 = time.perf_counter()
from lorafit.recipe.schema import DataConfig
from lorafit.tasks.dataset import normalised_split
from lorafit.data.source import resolve_source
from lorafit.data.formats import format_of
options = DataConfig(source=sys.argv[1])
spec, fmt = resolve_source(options, None), format_of(options)
t1 = time.perf_counter()
rows = normalised_split(spec, fmt, "train", cache_file=tempfile.mkdtemp() + "/rows.arrow")
t2 = time.perf_counter()
import resource
print(f"{len(rows)} {t2 - t1:.2f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
"""


def run(tree: Path, data: Path) -> tuple[int, float, float]:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(tree), "HF_DATASETS_CACHE": cache, "OMP_NUM_THREADS": "1",
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
        out = subprocess.run([sys.executable, "-c", CHILD, str(data)], env=env, capture_output=True, text=True, check=True)
    rows, seconds, rss = out.stdout.split()[-3:]
    return int(rows), float(seconds), float(rss)


def machine() -> str:
    flags = ""
    if Path("/proc/cpuinfo").exists():
        info = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
        have = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
        flags = f"{model}; flags: {' '.join(f for f in ('avx2', 'avx512f', 'fma') if f in have)}"
    import datasets

    return (f"{platform.node()} {flags}; cores {os.cpu_count()}; load {os.getloadavg()[0]:.1f}; "
            f"Python {platform.python_version()}, datasets {datasets.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--old-ref", default="068be16", help="git commit with the previous reader")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from bench_data import make_data

    chat, _ = make_data(args.rows)
    with tempfile.TemporaryDirectory() as old:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.old_ref, "lorafit"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", old], input=archive.stdout, check=True)
        results = {}
        for name, tree in (("new", ROOT), ("old", Path(old))):
            results[name] = [run(tree, chat) for _ in range(args.repeats)]
    print(machine())
    print(f"{args.rows:,} chat rows ({chat.stat().st_size / 1e6:.0f} MB of JSON Lines), 1 thread, another job sharing the machine")
    print("| reader | rows | seconds (each run) | peak RSS MB |\n|---|---:|---:|---:|")
    for name, runs in results.items():
        label = "lorafit JSON reader, fields checked (new)" if name == "new" else f"datasets json + map ({args.old_ref})"
        print(f"| {label} | {runs[0][0]:,} | {', '.join(f'{s:.1f}' for _, s, _ in runs)} | {max(r for *_, r in runs):.0f} |")
    best = {k: min(s for _, s, _ in v) for k, v in results.items()}
    print(f"new / old (best of each): {best['new'] / best['old']:.2f}")
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    (ROOT / "bench" / "out" / "data_read.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
