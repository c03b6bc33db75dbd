"""The LoRA layer's cost and the merged model's inference cost.

    .venv/bin/python bench/bench_layer.py           # ~3 minutes
    .venv/bin/python bench/bench_layer.py --quick

1. LoRALinear vs the frozen base nn.Linear (and vs PEFT's lora.Linear) at a few shapes, forward only
   (inference with an unmerged adapter) and forward + backward (training: the input gradient flows
   through the frozen weight, LoRA A and B get weight gradients). Variants are timed in interleaved
   rounds; the median per call is reported.
2. Greedy generation with SmolLM2-135M: the base model vs the model after `merge_lora` + `unload_lora`
   (a plain transformers model again), interleaved repetitions over a few prompts. The ratio must be
   ~1.0: a merged adapter costs nothing at inference.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# (tokens in the batch, d_in, d_out, rank): SmolLM2 q_proj / MLP up, GPT-2-small-like, MiniLM query.
SHAPES = [(512, 576, 576, 4), (512, 576, 1536, 8), (1024, 768, 768, 8), (512, 384, 384, 8)]


def interleaved(fns: dict, rounds: int, reps: int) -> dict:
    """Median seconds per call of each fn over interleaved rounds (benchlib.interleaved_samples)."""
    return {name: statistics.median(s) for name, s in benchlib.interleaved_samples(fns, rounds, reps).items()}


def layer_overhead(quick: bool, dropout: float) -> list[dict]:
    import torch
    from peft import LoraConfig
    from peft.tuners.lora.layer import Linear as PeftLinear
    from torch import nn

    from lorafit.lora import LoRALinear

    rows = []
    for tokens, d_in, d_out, rank in SHAPES:
        torch.manual_seed(0)
        base = nn.Linear(d_in, d_out).requires_grad_(False)
        ours = LoRALinear.wrap(base, rank=rank, alpha=2 * rank, dropout=dropout)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout)
        theirs = PeftLinear(copy.deepcopy(base), "default", config, r=rank, lora_alpha=2 * rank)
        for layer in (ours, theirs):
            layer.train()
            with torch.no_grad():  # non-zero B, as after training
                for name, p in layer.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.02)
        x = torch.randn(tokens, d_in)
        xg = x.clone().requires_grad_(True)
        g = torch.randn(tokens, d_out)

        def fwd(layer, x=x):
            def run():
                with torch.no_grad():
                    layer(x)
            return run

        def train(layer, xg=xg, g=g):
            def run():
                layer(xg).backward(g)
            return run

        layers = {"base": base, "lorafit": ours, "peft": theirs}
        rounds, reps = (3, 5) if quick else (15, 20)
        f = interleaved({k: fwd(v) for k, v in layers.items()}, rounds, reps)
        t = interleaved({k: train(v) for k, v in layers.items()}, rounds, reps)
        row = {"tokens": tokens, "d_in": d_in, "d_out": d_out, "rank": rank, "dropout": dropout,
               "forward_ms": {k: 1e3 * v for k, v in f.items()}, "train_ms": {k: 1e3 * v for k, v in t.items()}}
        rows.append(row)
        print(
            f"  {tokens:5d} x {d_in:4d} -> {d_out:4d}, r={rank}, dropout {dropout}:  forward  base {1e3 * f['base']:.3f} ms, "
            f"lorafit x{f['lorafit'] / f['base']:.2f}, peft x{f['peft'] / f['base']:.2f}  |  forward+backward  base "
            f"{1e3 * t['base']:.3f} ms, lorafit x{t['lorafit'] / t['base']:.2f}, peft x{t['peft'] / t['base']:.2f}",
            flush=True,
        )
    return rows


PROMPTS = [
    "Describe this restaurant.\nname: The Vaults | eatType: pub | near: Café Adriatic\nDescription:",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea,",
]


def merged_generation(quick: bool, new_tokens: int) -> dict:
    import torch

    from lorafit.lora import LoraSpec, add_lora, merge_lora, unload_lora
    from lorafit.models import load_causal_lm, load_tokenizer, resolve_model

    ref = resolve_model("smollm2-135m")
    tokenizer = load_tokenizer(ref)
    base = load_causal_lm(ref, tokenizer=tokenizer).eval()
    merged = copy.deepcopy(base)
    torch.manual_seed(0)
    add_lora(merged, LoraSpec(rank=8, alpha=16, targets=("all-linear",)))
    with torch.no_grad():
        for name, p in merged.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    merge_lora(merged, keep_original=False)
    unload_lora(merged)
    assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear

    def generate(model, prompt):
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        assert out.shape[1] == ids["input_ids"].shape[1] + new_tokens

    rounds = 2 if quick else 6
    samples = {"base": [], "merged": []}
    for model in (base, merged):
        generate(model, PROMPTS[0])  # warm-up
    for r in range(rounds):
        order = [("base", base), ("merged", merged)] if r % 2 == 0 else [("merged", merged), ("base", base)]
        for prompt in PROMPTS:
            for name, model in order:
                t0 = time.perf_counter()
                generate(model, prompt)
                samples[name].append(time.perf_counter() - t0)
    base_s, merged_s = statistics.median(samples["base"]), statistics.median(samples["merged"])
    # Paired per-(round, prompt) ratios show the noise level.
    paired = [m / b for b, m in zip(samples["base"], samples["merged"], strict=True)]
    out = {
        "new_tokens": new_tokens, "prompts": len(PROMPTS), "rounds": rounds,
        "base_ms_per_token": 1e3 * base_s / new_tokens, "merged_ms_per_token": 1e3 * merged_s / new_tokens,
        "ratio_median": merged_s / base_s,
        "paired_ratio_min": min(paired), "paired_ratio_max": max(paired),
    }
    print(
        f"  greedy {new_tokens} tokens x {len(PROMPTS)} prompts x {rounds} rounds: base {out['base_ms_per_token']:.2f} ms/token, "
        f"merged {out['merged_ms_per_token']:.2f} ms/token, merged/base x{out['ratio_median']:.3f} "
        f"(paired ratios {out['paired_ratio_min']:.3f}..{out['paired_ratio_max']:.3f})"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    info = benchlib.header("LoRA layer overhead and merged-model generation")
    print("\n## LoRA layer vs the frozen base linear (median per call; ratios to the base layer)")
    layers = layer_overhead(args.quick, 0.0) + layer_overhead(args.quick, 0.1)
    print("\n## Generation: merged model vs base model (SmolLM2-135M, fp32)")
    generation = merged_generation(args.quick, 8 if args.quick else 32)
    benchlib.write_json("bench_layer-quick" if args.quick else "bench_layer", {"info": info, "layers": layers, "generation": generation})


if __name__ == "__main__":
    main()
