"""A quantized frozen base and activation checkpointing, measured (docs/quantization.md).

    .venv/bin/python bench/bench_quantization.py e2e --steps 20     # SmolLM2-135M E2E: 4 bases x checkpointing
    .venv/bin/python bench/bench_quantization.py big --steps 2      # SmolLM2-1.7B shape, random weights, nf4

e2e: `lorafit train recipes/e2e-smollm2.yaml` as subprocesses (1 torch thread each, one at a time), same
data, seed and steps, with base fp32 / bf16 / int8 / nf4, each without and with
train.gradient_checkpointing: peak RSS (summary.json), s/step, held-out loss on `--valid` validation
examples, and `inspect`'s estimated peak for the same recipe beside the measured one.

big: a Llama with SmolLM2-1.7B's published config (written below; no download), random bf16 weights
built in this process (as a bf16 checkpoint would be read), quantized to nf4 by lorafit's loader code
(models/quantize.py), LoRA r=8 on q/v, gradient checkpointing, trained `--steps` steps at batch 4 x 256
tokens by lorafit's `fit`. Peak RSS while building/quantizing and while training (the kernel's
high-water mark, reset between the two through /proc/self/clear_refs), against the estimate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

SMOLLM2_1_7B = {  # HuggingFaceTB/SmolLM2-1.7B config.json (published), as a dict
    "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 49152, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "rope_theta": 130000, "tie_word_embeddings": True, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "dtype": "bfloat16",
}
LLAMA_2_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
              "tie_word_embeddings": False, "dtype": "float16"}
LLAMA_3_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
              "tie_word_embeddings": False, "dtype": "bfloat16"}
BASES = [("fp32", "none", "fp32"), ("bf16", "none", "bf16"), ("int8", "int8", "auto"), ("nf4", "nf4", "auto")]


def hwm_mb() -> float:
    """The kernel's resident high-water mark of this process (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def run_e2e(args) -> list[dict]:
    from lorafit.recipe import load_recipe
    from lorafit.train.setup import memory_estimate

    repo = benchlib.REPO
    recipe = repo / "lorafit" / "recipes" / "e2e-smollm2.yaml"
    rows = []
    for label, quantize, precision in [b for b in BASES if b[0] in args.bases.split(",")]:
        for ckpt in (False, True):
            sets = [f"quantize={quantize}", f"precision={precision}", f"train.gradient_checkpointing={str(ckpt).lower()}",
                    f"train.max_steps={args.steps}", "train.eval_every=0", "eval.at_end=false", "log.plot=false",
                    f"data.max_train_examples={args.steps * 8}", f"data.max_valid_examples={args.valid}",
                    "train.log_every=5"]
            parsed = load_recipe(recipe, sets)
            estimate = memory_estimate(parsed)
            out = Path(tempfile.mkdtemp(prefix="bq-")) / "run"
            cmd = [str(Path(sys.executable).with_name("lorafit")), "train", str(recipe), "-o", str(out), "--quiet"]
            for s in sets:
                cmd += ["--set", s]
            began = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, env=benchlib_env())
            if done.returncode != 0:
                print(f"{label} ckpt={ckpt}: failed\n{done.stderr[-2000:]}", flush=True)
                continue
            summary = json.loads((out / "summary.json").read_text())
            records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            train = [r for r in records if "loss" in r]
            row = {"base": label, "checkpointing": ckpt, "precision_run": summary["precision"],
                   "peak_rss_mb": summary["peak_rss_mb"], "valid_loss": summary["final_valid_loss"],
                   "initial_valid_loss": summary["initial_valid_loss"],
                   "s_per_step": train[-1]["elapsed_s"] / summary["steps"], "wall_s": time.perf_counter() - began,
                   "estimate_peak_mb": estimate.peak / 2**20, "estimate_training_mb": estimate.training / 2**20,
                   **estimate_at_run_tokens(parsed, summary)}
            rows.append(row)
            print(f"{label:5s} ckpt={'on ' if ckpt else 'off'} ({row['precision_run']}): peak RSS {row['peak_rss_mb']:.0f} MB "
                  f"(estimate {row['estimate_peak_mb']:.0f} MB at batch x max_length, {row['estimate_run_tokens_mb']:.0f} MB "
                  f"at the run's {row['tokens_per_step']:.0f} tokens/step: {row['estimate_run_tokens_mb'] / row['peak_rss_mb']:.2f}x), "
                  f"{row['s_per_step']:.2f} s/step, held-out loss {row['valid_loss']:.4f} "
                  f"(from {row['initial_valid_loss']:.4f})", flush=True)
    return rows


def estimate_at_run_tokens(parsed, summary: dict) -> dict:
    """inspect's estimate counts batch_size x max_length tokens (the most a batch can hold); E2E's packed
    batches hold fewer. The same estimate at the run's mean tokens per step, for comparing with RSS."""
    from dataclasses import replace

    from lorafit.train.setup import memory_estimate

    tokens = summary["tokens_seen"] / summary["steps"]
    length = max(1, round(tokens / parsed.train.batch_size))
    estimate = memory_estimate(replace(parsed, data=replace(parsed.data, max_length=length)))
    return {"tokens_per_step": tokens, "estimate_run_tokens_mb": estimate.peak / 2**20}


def benchlib_env() -> dict:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(benchlib.REPO)}


def run_big(args) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorafit.data.batches import Encoded
    from lorafit.lora import LoraSpec, add_lora
    from lorafit.models.quantize import quantize_base
    from lorafit.recipe.schema import TrainConfig
    from lorafit.train.checkpointing import enable_gradient_checkpointing
    from lorafit.train.estimate import DecoderShape, estimate_memory
    from lorafit.train.loop import fit
    from lorafit.train.loss import causal_lm_loss

    reset_hwm()
    began = time.perf_counter()
    torch.manual_seed(0)
    config = LlamaConfig(**{k: v for k, v in SMOLLM2_1_7B.items() if k != "dtype"})
    torch.set_default_dtype(torch.bfloat16)  # built as a bf16 checkpoint is read
    model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    built_s = time.perf_counter() - began
    quantize_base(model, args.quantize, torch.bfloat16, keep={"lm_head"})
    load_peak = hwm_mb()
    print(f"built {built_s:.0f}s + quantized ({args.quantize}) {time.perf_counter() - began - built_s:.0f}s: "
          f"peak RSS {load_peak:.0f} MB", flush=True)
    add_lora(model, LoraSpec(rank=8, alpha=16, dropout=0.05, targets=("q_proj", "v_proj")))
    if args.checkpointing:
        enable_gradient_checkpointing(model)
    g = torch.Generator().manual_seed(1)
    examples = [Encoded(tuple(ids), tuple(ids)) for ids in torch.randint(3, 49152, (4 * args.steps, 256), generator=g).tolist()]
    reset_hwm()
    trained = time.perf_counter()
    result = fit(model, examples, [], TrainConfig(max_steps=args.steps, batch_size=4, batching="pad", lr=1e-4, log_every=1),
                 seed=0, precision="bf16", loss_fn=causal_lm_loss, pad_id=2)
    seconds = time.perf_counter() - trained
    train_peak = hwm_mb()
    shape = DecoderShape.from_config(SMOLLM2_1_7B)
    estimate = estimate_memory(shape, quantize=args.quantize, bf16=True, targets=["q_proj", "v_proj"], rank=8,
                               dropout=0.05, tokens=4 * 256, checkpointing=args.checkpointing)
    row = {"quantize": args.quantize, "checkpointing": args.checkpointing, "steps": args.steps,
           "load_peak_mb": load_peak, "train_peak_mb": train_peak, "s_per_step": seconds / args.steps,
           "tokens_per_s": 4 * 256 * args.steps / seconds, "final_loss": result.train_loss,
           "estimate_loading_mb": estimate.loading / 2**20, "estimate_training_mb": estimate.training / 2**20,
           "estimate_peak_mb": estimate.peak / 2**20}
    print(f"SmolLM2-1.7B shape, {args.quantize}, checkpointing {args.checkpointing}: loading peak {load_peak:.0f} MB "
          f"(estimate {row['estimate_loading_mb']:.0f}), training peak {train_peak:.0f} MB (estimate "
          f"{row['estimate_training_mb']:.0f}, {row['estimate_training_mb'] / train_peak:.2f}x), "
          f"{row['s_per_step']:.1f} s/step, {row['tokens_per_s']:.0f} tokens/s", flush=True)
    return row


def predictions() -> list[dict]:
    from lorafit.train.estimate import DecoderShape, estimate_memory

    rows = []
    for name, config in (("SmolLM2-1.7B", SMOLLM2_1_7B), ("Llama-2-7B", LLAMA_2_7B), ("Llama-3-8B", LLAMA_3_8B)):
        shape = DecoderShape.from_config(config)
        for quantize, ckpt in (("none", False), ("nf4", False), ("nf4", True)):
            e = estimate_memory(shape, quantize=quantize, bf16=True, targets=["q_proj", "v_proj"], rank=8, dropout=0.05,
                                tokens=4 * 256, checkpointing=ckpt)
            row = {"model": name, "params": shape.parameters(), "quantize": quantize, "checkpointing": ckpt,
                   **{k: round(getattr(e, k) / 2**30, 2) for k in ("weights", "trainable", "activations",
                                                                   "activations_checkpointed", "loading", "training", "peak")}}
            rows.append(row)
            print(f"{name:13s} {quantize:4s} ckpt={'on ' if ckpt else 'off'}: weights {row['weights']} GB, activations "
                  f"{row['activations_checkpointed'] if ckpt else row['activations']} GB, training {row['training']} GB, "
                  f"loading {row['loading']} GB, peak {row['peak']} GB")
    return rows


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["e2e", "big", "predict"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quantize", default="nf4")
    parser.add_argument("--valid", type=int, default=200, help="e2e: held-out examples for the loss")
    parser.add_argument("--bases", default="fp32,bf16,int8,nf4", help="e2e: which frozen bases")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = benchlib.header(f"quantized base + checkpointing: {args.what}")
    result = {"e2e": run_e2e, "big": run_big, "predict": lambda a: predictions()}[args.what](args)
    benchlib.write_json(f"quantization_{args.what}", {**info, "steps": args.steps, "result": result})


if __name__ == "__main__":
    main()
