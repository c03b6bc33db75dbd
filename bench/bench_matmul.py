"""The machine's matmul peak (fp32, bf16) and what matmuls reach at the shapes of a LoRA training step.

    .venv/bin/python bench/bench_matmul.py            # ~1 minute
    .venv/bin/python bench/bench_matmul.py --tokens 512

Peak: the best GFLOP/s of square (n x n) @ (n x n) products over a few n (2 n^3 FLOPs each). This is
the denominator of "% of peak" in bench_train.py and docs/performance.md.

Training shapes: the matmuls of one SmolLM2-135M decoder layer and one MiniLM-L6 encoder layer for a
batch of `--tokens` real tokens (E2E batches hold ~8 x 64 = 512 tokens, SST-2 batches ~32 x 14 = 448),
forward (x W^T) and backward input-gradient (dY W) products, plus the output head at the completion
positions (~40% of E2E tokens). The FLOP-weighted rate over them is the ceiling a training step could
reach if it did nothing but its matmuls.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

# (name, rows of the activations, d_in, d_out) per layer, for `tokens` rows
SMOLLM2 = [("q/o 576x576", 1.0, 576, 576), ("k/v 576x192", 1.0, 576, 192), ("gate/up 576x1536", 1.0, 576, 1536),
           ("down 1536x576", 1.0, 1536, 576), ("head 576x49152 (completion rows)", 0.4, 576, 49152)]
SMOLLM2_COUNT = {"q/o 576x576": 2, "k/v 576x192": 2, "gate/up 576x1536": 2, "down 1536x576": 1,
                 "head 576x49152 (completion rows)": 1 / 30}  # per layer; the head once per 30 layers
MINILM = [("q/k/v/o 384x384", 1.0, 384, 384), ("ffn in 384x1536", 1.0, 384, 1536), ("ffn out 1536x384", 1.0, 1536, 384)]
MINILM_COUNT = {"q/k/v/o 384x384": 4, "ffn in 384x1536": 1, "ffn out 1536x384": 1}


def linear_gflops(rows: int, d_in: int, d_out: int, dtype, backward: bool, min_seconds: float = 0.4) -> float:
    """GFLOP/s of F.linear(x (rows, d_in), W (d_out, d_in)) forward, or of the input gradient dY @ W."""
    import torch
    import torch.nn.functional as F

    w = torch.randn(d_out, d_in).to(dtype)
    if backward:
        a, fn = torch.randn(rows, d_out).to(dtype), lambda a: a @ w  # (rows, d_out) @ (d_out, d_in)
    else:
        a, fn = torch.randn(rows, d_in).to(dtype), lambda a: F.linear(a, w)
    for _ in range(3):
        fn(a)
    best, reps = 0.0, 1
    began = time.perf_counter()
    while time.perf_counter() - began < min_seconds:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(a)
        dt = time.perf_counter() - t0
        best = max(best, 2 * rows * d_in * d_out * reps / dt / 1e9)
        reps = min(reps * 2, 64)
    return best


def shape_table(tokens: int, shapes, counts, dtype) -> dict:
    rows_out, flops, seconds = [], 0.0, 0.0
    for name, share, d_in, d_out in shapes:
        rows = max(1, int(tokens * share))
        fwd = linear_gflops(rows, d_in, d_out, dtype, backward=False)
        bwd = linear_gflops(rows, d_in, d_out, dtype, backward=True)
        f = 2 * rows * d_in * d_out * counts[name]
        flops += 2 * f
        seconds += f / (fwd * 1e9) + f / (bwd * 1e9)
        rows_out.append({"matmul": name, "rows": rows, "forward_gflops": fwd, "backward_gflops": bwd})
    return {"shapes": rows_out, "weighted_gflops": flops / seconds / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=512, help="real tokens per batch (rows of the activations)")
    args = parser.parse_args()
    import torch

    info = benchlib.header("matmul peak and training-shape matmul rates")
    peak = benchlib.matmul_peak()
    out = {"info": info, "peak": peak, "tokens": args.tokens, "models": {}}
    print("\n## Peak: square matmuls, best GFLOP/s")
    for name, p in peak.items():
        sizes = ", ".join(f"{n}: {g:.0f}" for n, g in p["by_size"].items())
        print(f"  {name}: {p['peak_gflops']:.0f} GFLOP/s  ({sizes})")
    for model, shapes, counts in (("SmolLM2-135M", SMOLLM2, SMOLLM2_COUNT), ("MiniLM-L6", MINILM, MINILM_COUNT)):
        print(f"\n## {model} layer matmuls at {args.tokens} tokens (forward / backward input-gradient, GFLOP/s)")
        out["models"][model] = {}
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            table = shape_table(args.tokens, shapes, counts, dtype)
            out["models"][model][precision] = table
            cells = "; ".join(f"{r['matmul']} [{r['rows']} rows] {r['forward_gflops']:.0f}/{r['backward_gflops']:.0f}"
                              for r in table["shapes"])
            pk = peak[precision]["peak_gflops"]
            print(f"  {precision}: {cells}")
            print(f"  {precision}: FLOP-weighted {table['weighted_gflops']:.0f} GFLOP/s = "
                  f"{100 * table['weighted_gflops'] / pk:.0f}% of the {pk:.0f} GFLOP/s peak (the ceiling of a step)")
    benchlib.write_json("bench_matmul", out)


if __name__ == "__main__":
    main()
