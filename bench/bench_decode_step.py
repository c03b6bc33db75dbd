"""One decode step of a mixed-adapter batch, per multi-adapter kernel: where `kernel="auto"` comes from.

SmolLM2-135M (`smollm2-135m`) with 8 adapters (ranks 4/8/16/8 on q/k/v/o, random non-zero B, the same
as bench_multi_adapter.py), --rows prompts spread over them (row i on adapter i % 8), prefilled once,
then decode steps timed for: every row on the base (no adapter work), and each kernel (loop,
grouped, auto) with the rows on their adapters. The kernels are timed in turn within every round
(benchlib.interleaved_samples), so drift in machine load hits all alike; the table gives the median.

    OMP_NUM_THREADS=2 python bench/bench_decode_step.py --threads 2 --rows 16 --precision fp32
    OMP_NUM_THREADS=1 python bench/bench_decode_step.py --threads 1 --rows 64 --precision bf16
    OMP_NUM_THREADS=2 python bench/bench_decode_step.py --threads 2 --rows 16 --kernels auto --in-thread
    OMP_NUM_THREADS=2 python bench/bench_decode_step.py --threads 2 --rows 16 --kernels auto --weights both

--weights both builds two hosts, one with the base's linear weights oneDNN-packed (lorafit/fast/packed.py,
what `AdapterHost.load` does) and one with plain nn.Linear weights, and times them in the same rounds.

--in-thread then times every setting again from a second Python thread (as a server that decodes
off its main thread does), after the main-thread rounds.

Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from bench_multi_adapter import prompts, write_bench_adapters  # noqa: E402

from lorafit.adapters.decode import DecodeBatch, Request  # noqa: E402
from lorafit.adapters.host import AdapterHost  # noqa: E402
from lorafit.models import load_base, resolve_model  # noqa: E402

KERNELS = ("loop", "grouped", "auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=8, help="decode steps per sample")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated subset of " + ",".join(KERNELS))
    parser.add_argument("--weights", default="packed", choices=["packed", "plain", "both"],
                        help="the base's linear weights: oneDNN-packed (lorafit's default), plain, or both hosts in turn")
    parser.add_argument("--in-thread", action="store_true", help="then time each setting from a second Python thread")
    args = parser.parse_args()
    kernels = [k for k in args.kernels.split(",") if k]
    torch.set_num_threads(args.threads)
    info = benchlib.header(f"decode step, {args.rows} rows over {args.adapters} adapters, {args.precision}, "
                           f"{args.weights} weights")

    weights = ("packed", "plain") if args.weights == "both" else (args.weights,)
    tmp = tempfile.TemporaryDirectory()
    hosts, dirs = {}, {}
    for w in weights:
        base, tok = load_base(resolve_model("smollm2-135m"))
        dirs = dirs or write_bench_adapters(base, Path(tmp.name), args.adapters)  # from the plain base, once
        hosts[w] = AdapterHost(base, tok, causal=True, precision=args.precision, pack_weights=w == "packed")
        for name, directory in dirs.items():
            hosts[w].load_adapter(name, directory)
    tmp.cleanup()
    names = list(dirs)
    encoded = [tok(t)["input_ids"] for t in prompts(args.rows)]
    _, slots = hosts[weights[0]].slots_for([names[i % len(names)] for i in range(args.rows)], args.rows)
    # Enough new tokens that no row finishes while being timed (every sample runs --steps more steps).
    budget = 2 + args.steps * (2 * args.rounds + 8)

    def batch_on(host, row_slots):
        batch = DecodeBatch(host.model, host.routing, [], tok.pad_token_id)
        batch.add([Request(ids, int(s), budget) for ids, s in zip(encoded, row_slots, strict=True)])
        return batch

    # name -> (host, kernel, batch); names carry the weights only when both kinds are timed.
    settings = {}
    for w, host in hosts.items():
        suffix = f", {w}" if len(hosts) > 1 else ""
        settings[f"base rows only{suffix}"] = (host, "loop", batch_on(host, [0] * args.rows))
        settings |= {f"{kernel}{suffix}": (host, kernel, batch_on(host, slots.tolist())) for kernel in kernels}

    def timed(name):
        host, kernel, batch = settings[name]

        def run():
            for layer in host._layers.values():
                layer.kernel = kernel
            for _ in range(args.steps):
                batch.step()
        return run

    samples = benchlib.interleaved_samples({name: timed(name) for name in settings}, args.rounds)
    if args.in_thread:
        # After the main-thread rounds, not interleaved with them: once a second thread has run torch
        # work, the process has two OpenMP thread teams and the main thread's steps slow down too.
        worker = ThreadPoolExecutor(max_workers=1)  # one long-lived second thread, like a server's
        on_worker = worker.submit(benchlib.interleaved_samples, {name: timed(name) for name in settings}, args.rounds)
        samples |= {f"{name}, 2nd thread": v for name, v in on_worker.result().items()}
        worker.shutdown()
    print(f"\n| rows | threads | precision | {' | '.join(samples)} |\n|---|---|---|{'---:|' * len(samples)}")
    medians = {name: statistics.median(v) / args.steps * 1e3 for name, v in samples.items()}
    print(f"| {args.rows} | {args.threads} | {args.precision} | " + " | ".join(f"{m:.1f} ms" for m in medians.values()) + " |")
    benchlib.write_json("bench_decode_step", info | {"args": vars(args), "ms_per_step_median": medians,
                                                     "samples_s": samples})


if __name__ == "__main__":
    main()
