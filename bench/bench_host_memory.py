"""Resident memory of an AdapterHost on SmolLM2-135M, base weights oneDNN-packed or plain, per precision.

Each setting runs in its own process (a fresh heap): load the host (`AdapterHost.load`), load 8
adapters (ranks 4/8/16/8 on q/k/v/o, as bench_multi_adapter.py), decode 16 prompts for 8 tokens so
every weight has been read, then read /proc/self/status: VmRSS, and its anonymous and file-backed
parts (transformers maps the checkpoint file; those pages count in RSS until unmapped).

    OMP_NUM_THREADS=1 python bench/bench_host_memory.py [--precisions fp32,bf16]

Prints machine, versions and the command, then the table. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402


def measure(weights: str, precision: str) -> dict:
    """In this process: one host, 8 adapters, a short decode; the memory counters in MiB."""
    import torch
    from bench_multi_adapter import prompts, write_bench_adapters

    from lorafit.adapters.host import AdapterHost
    from lorafit.models import load_base, resolve_model

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base, _ = load_base(resolve_model("smollm2-135m"))
        dirs = write_bench_adapters(base, Path(tmp), 8)
        base = None
        host = AdapterHost.load("smollm2-135m", precision=precision, pack_weights=weights == "packed")
        for name, directory in dirs.items():
            host.load_adapter(name, directory)
    host.generate(prompts(16), adapter=[f"a{i % 8}" for i in range(16)], max_new_tokens=8)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    mib = {key: int(status[key].split()[0]) // 1024 for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}
    return {"weights": weights, "precision": host.precision, "packed_layers": host.packed_layers} | mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: WEIGHTS:PRECISION, measured in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one.split(":"))))
        return
    info = benchlib.header("AdapterHost memory, SmolLM2-135M + 8 adapters, packed vs plain weights")
    rows = []
    for precision in args.precisions.split(","):
        for weights in ("plain", "packed"):
            out = subprocess.run([sys.executable, __file__, "--one", f"{weights}:{precision}"], check=True,
                                 capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print("\n| weights | precision | packed layers | RSS MiB | anonymous MiB | file-backed MiB | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['weights']} | {r['precision']} | {r['packed_layers']} | {r['VmRSS']} | {r['RssAnon']} | "
              f"{r['RssFile']} | {r['VmHWM']} |")
    benchlib.write_json("bench_host_memory", info | {"rows": rows})


if __name__ == "__main__":
    main()
