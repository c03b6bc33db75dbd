"""Does a quantized frozen linear run forward AND backward (gradient w.r.t. its input) on this CPU, and
how fast, next to fp32 / bf16 nn.Linear? The measurement behind `quantize:` (docs/quantization.md).

    .venv/bin/python bench/bench_quant_layer.py                 # ~2 minutes, 1 torch thread
    .venv/bin/python bench/bench_quant_layer.py --tokens 512 --rounds 5

For each shape (SmolLM2-135M's linears, SmolLM2-1.7B's, and the issue's 2048x8192) and each kind of
frozen weight: one forward x W^T + one backward dY -> dX of `--tokens` rows, as a LoRA training step
runs it (the frozen weight gets no gradient). Kinds:
  fp32      nn.Linear, fp32 weight and input
  bf16      nn.Linear, bf16 weight and input (what autocast runs)
  nf4-fp32  bitsandbytes Linear4bit nf4 (blocksize 64), fp32 compute: dequantize to fp32, fp32 matmul
  nf4-bf16  the same, bf16 compute dtype and bf16 input
  int8      bitsandbytes Linear8bitLt (LLM.int8 weights, threshold 0: no outlier columns), fp32 input
Also: weight bytes per kind, and the largest |difference| from the fp32 output (quantization noise).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

SHAPES = [("smollm2-135m q/o", 576, 576), ("smollm2-135m gate/up", 576, 1536), ("smollm2-135m down", 1536, 576),
          ("smollm2-1.7b q/o", 2048, 2048), ("smollm2-1.7b gate/up", 2048, 8192), ("smollm2-1.7b down", 8192, 2048)]


def build(kind: str, weight, bias=None):
    """A frozen linear of `kind` holding `weight` (d_out, d_in) fp32."""
    import bitsandbytes as bnb
    import torch
    from torch import nn

    d_out, d_in = weight.shape
    if kind in ("fp32", "bf16"):
        layer = nn.Linear(d_in, d_out, bias=False)
        layer.weight.data = weight.clone().to(torch.float32 if kind == "fp32" else torch.bfloat16)
    elif kind.startswith("nf4"):
        compute = torch.float32 if kind == "nf4-fp32" else torch.bfloat16
        layer = bnb.nn.Linear4bit(d_in, d_out, bias=False, compute_dtype=compute, quant_type="nf4",
                                  compress_statistics=False)
        layer.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4",
                                         blocksize=64, compress_statistics=False)._quantize("cpu")
    elif kind == "int8":
        layer = bnb.nn.Linear8bitLt(d_in, d_out, bias=False, has_fp16_weights=False, threshold=0.0)
        layer.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)._quantize("cpu")
    else:
        raise ValueError(kind)
    layer.requires_grad_(False)
    return layer.train()


def weight_bytes(layer) -> int:
    total = sum(t.numel() * t.element_size() for t in layer.state_dict().values() if hasattr(t, "numel"))
    return total


def input_dtype(kind: str):
    import torch

    return torch.bfloat16 if kind in ("bf16", "nf4-bf16") else torch.float32


def step_fn(layer, x, dy):
    def run():
        xi = x.detach().requires_grad_(True)
        y = layer(xi)
        y.backward(dy)
        return xi.grad
    return run


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1024, help="rows per forward (batch x length)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kinds", default="fp32,bf16,nf4-fp32,nf4-bf16,int8")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = benchlib.header("quantized frozen linears: forward + input gradient")
    kinds = args.kinds.split(",")
    torch.manual_seed(0)
    rows = []
    for name, d_in, d_out in SHAPES:
        weight = torch.randn(d_out, d_in) * d_in ** -0.5
        x = torch.randn(args.tokens, d_in)
        dy = torch.randn(args.tokens, d_out)
        with torch.no_grad():
            reference = x @ weight.T
        fns, errors, sizes = {}, {}, {}
        for kind in kinds:
            layer = build(kind, weight)
            dt = input_dtype(kind)
            fn = step_fn(layer, x.to(dt), dy.to(dt))
            grad = fn()  # also checks that backward runs
            with torch.no_grad():
                out = layer(x.to(dt)).float()
            errors[kind] = float((out - reference).abs().max() / reference.abs().max())
            if grad is None or grad.shape != x.shape:
                raise SystemExit(f"{kind}: no input gradient")
            fns[kind] = fn
            sizes[kind] = weight_bytes(layer)
        samples = benchlib.interleaved_samples(fns, args.rounds)
        ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
        row = {"shape": name, "d_in": d_in, "d_out": d_out, "ms": ms, "rel_max_err": errors, "weight_bytes": sizes}
        rows.append(row)
        line = "  ".join(f"{k} {ms[k]:7.2f} ms ({ms[k] / ms['fp32']:.2f}x, err {errors[k]:.1e}, {sizes[k] / 2**20:.1f} MiB)"
                         for k in kinds)
        print(f"{name:22s} {d_in}x{d_out}: {line}", flush=True)
    total = {k: sum(r["ms"][k] for r in rows) for k in kinds}
    print("sum over shapes: " + ", ".join(f"{k} {total[k]:.1f} ms ({total[k] / total['fp32']:.2f}x fp32)" for k in kinds))
    benchlib.write_json("quant_layer", {**info, "tokens": args.tokens, "rows": rows, "total_ms": total})


if __name__ == "__main__":
    main()
