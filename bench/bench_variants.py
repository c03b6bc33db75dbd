"""What the LoRA variants cost: DoRA rows in a mixed serving batch, and a DoRA training step, vs plain LoRA.

    OMP_NUM_THREADS=1 python bench/bench_variants.py [--part serve|train|both] [--rounds 5]

serve (SmolLM2-135M, `smollm2-135m`, fp32, packed base weights as `lorafit generate` / `serve` use them):
8 adapters (ranks 4/8/16/8 on q/k/v/o, non-zero B, as the other benches), loaded into one AdapterHost
twice over: plain, and the same A/B as DoRA adapters (magnitude vectors = the row norms of W + s B A
times a random factor in [1, 1.3)). --rows prompts (16) spread over the 8 adapters, 16 new tokens each, greedy;
three batches: every row plain, half the rows DoRA (adapters a0..a3 as DoRA), every row DoRA.
Timed interleaved (round-robin, order reversed every other round); tokens/s = new tokens / wall time.

train (E2E on SmolLM2-135M, the shipped recipe e2e-smollm2: r 4 on q/v, batch 8, packed rows): seconds
per optimizer step (forward + backward + AdamW) for lora.variant lora and dora on the same batches, in
the same process, interleaved; fp32 and bf16 (`--precisions`).

parity: PEFT reads lorafit's DoRA + rank-pattern and PiSSA adapters on SmolLM2-135M, lorafit reads a
PEFT-made DoRA + rank-pattern classifier adapter on MiniLM-L6: relative logit differences, fp32.

layer: one stacked layer of SmolLM2's q_proj shape in a 16-row decode step over 8 slots, plain vs DoRA
slots, best of 2,000 calls (robust to a loaded machine where the end-to-end batches are not).

Prints machine, CPU flags, versions and the command, then the tables. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from bench_multi_adapter import prompts, write_bench_adapters  # noqa: E402

from lorafit.adapters.host import AdapterHost  # noqa: E402
from lorafit.models import load_base, resolve_model  # noqa: E402


def dora_copy(plain: Path, target: Path, base, seed: int) -> Path:
    """`plain` as a DoRA adapter: the same A and B, use_dora, m = ||W + s B A||_row * U[1, 1.3)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((plain / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    g = torch.Generator().manual_seed(seed)
    with safe_open(str(plain / "adapter_model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    modules = dict(base.named_modules())
    for key in [k for k in tensors if k.endswith(".lora_A.weight")]:
        path = key[len("base_model.model.") : -len(".lora_A.weight")]
        a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
        norm = (modules[path].weight.float() + scale * b @ a).norm(dim=1)
        tensors[f"base_model.model.{path}.lora_magnitude_vector"] = norm * (1 + 0.3 * torch.rand(norm.shape, generator=g))
    target.mkdir(parents=True)
    save_file(tensors, str(target / "adapter_model.safetensors"), metadata=metadata)
    (target / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    return target


def bench_serve(rounds: int, new_tokens: int, rows: int) -> dict:
    ref = resolve_model("smollm2-135m")
    base, _ = load_base(ref, 0)
    with tempfile.TemporaryDirectory() as tmp:
        plain = write_bench_adapters(base, Path(tmp) / "plain", 8)
        dora = {name: dora_copy(path, Path(tmp) / "dora" / name, base, seed=i) for i, (name, path) in enumerate(plain.items())}
        del base
        host = AdapterHost.load("smollm2-135m", precision="fp32")
        for name in plain:
            host.load_adapter(name, plain[name])
            host.load_adapter(f"{name}-dora", dora[name])
        texts = prompts(rows)
        names = [f"a{i % 8}" for i in range(rows)]
        batches = {
            "all plain": names,
            "half DoRA": [f"{n}-dora" if int(n[1:]) < 4 else n for n in names],
            "all DoRA": [f"{n}-dora" for n in names],
        }
        tokens: dict[str, int] = {}  # rows may stop early at eos: count what each batch made

        def run(label, rows):
            tokens[label] = sum(len(g.tokens) for g in host.generate(texts, adapter=rows, max_new_tokens=new_tokens))

        fns = {label: (lambda label=label, rows=rows: run(label, rows)) for label, rows in batches.items()}
        samples = benchlib.interleaved_samples(fns, rounds)
    table = {label: {"median_s": statistics.median(s), "tokens": tokens[label],
                     "tokens_per_s": tokens[label] / statistics.median(s), "samples_s": s}
             for label, s in samples.items()}
    print(f"\n## serve: {rows} rows over 8 adapters, up to {new_tokens} new tokens each, fp32, packed base ({rounds} rounds)")
    print("| batch | median s | tokens/s | vs all plain |")
    print("|---|---|---|---|")
    for label, row in table.items():
        print(f"| {label} | {row['median_s']:.2f} | {row['tokens_per_s']:.1f} | "
              f"{row['median_s'] / table['all plain']['median_s']:.3f}x time |")
    return table


def bench_layer(reps: int) -> dict:
    """One MultiLoRALinear of SmolLM2's q_proj shape (576 -> 576, packed fp32 weight), a decode step of
    16 rows (one token each) over 8 slots of rank 8: plain slots vs DoRA slots, best of `reps` calls
    (short calls, so the minimum is robust to a loaded machine)."""
    from lorafit.fast.packed import PackedLinear
    from lorafit.lora.multi import MultiLoRALinear, SlotRouting

    g = torch.Generator().manual_seed(0)
    d = 576
    weight = torch.randn(d, d, generator=g) / d**0.5
    layers = {}
    for kind in ("plain", "dora"):
        routing = SlotRouting()
        layer = MultiLoRALinear(PackedLinear(weight.clone(), None), routing, capacity=9)
        for slot in range(1, 9):
            a, b = torch.randn(8, d, generator=g) / d**0.5, torch.randn(d, 8, generator=g) * 0.02
            layer.set_slot(slot, a, b, 2.0, (weight + 2.0 * b @ a).norm(dim=1) * 1.1 if kind == "dora" else None)
        layers[kind] = (layer, routing)
    x = torch.randn(16, 1, d, generator=g)
    slots = torch.arange(16) % 8 + 1

    def call(kind):
        layer, routing = layers[kind]
        with routing.use(slots):
            layer(x)

    best = {}
    for kind in ("plain", "dora", "plain", "dora"):  # twice each, interleaved; keep the best
        for _ in range(20):
            call(kind)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            call(kind)
            times.append(time.perf_counter() - t0)
        best[kind] = min(best.get(kind, float("inf")), min(times))
    print(f"\n## layer: 576 -> 576 packed fp32, 16 rows x 1 token over 8 slots of rank 8, best of {reps} x 2")
    print("| slots | best us | vs plain |")
    print("|---|---|---|")
    for kind, t in best.items():
        print(f"| {kind} | {t * 1e6:.1f} | {t / best['plain']:.3f}x |")
    return {"best_s": best}


def bench_parity() -> dict:
    """PEFT parity on the real bases, fp32: lorafit-made adapters (DoRA + rank pattern, PiSSA converted)
    read by PEFT on SmolLM2-135M, and a PEFT-made DoRA + pattern adapter read by lorafit on MiniLM-L6.
    Max |logit difference| / max |logit|, over a batch of 4 prompts."""
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    from lorafit.lora import LoraSpec, add_lora, save_adapter
    from lorafit.models.loader import load_adapter

    def perturbed(model, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name and "magnitude" not in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                elif "magnitude" in name or "modules_to_save" in name:
                    p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        ref = resolve_model("smollm2-135m")
        for label, spec in (("SmolLM2 DoRA + rank_pattern, lorafit -> PEFT",
                             LoraSpec(rank=8, alpha=16, targets=("q_proj", "v_proj"), variant="dora", rank_pattern={"v_proj": 4})),
                            ("SmolLM2 PiSSA (converted), lorafit -> PEFT",
                             LoraSpec(rank=8, alpha=16, targets=("q_proj", "v_proj"), init="pissa"))):
            model, tok = load_base(ref, 0)
            add_lora(model, spec)
            perturbed(model, 1)
            save_adapter(model.eval(), Path(tmp) / label[:12], spec, base_model_name_or_path=ref.path_or_id, task_type="CAUSAL_LM")
            ids = tok(prompts(4), return_tensors="pt", padding=True)
            with torch.no_grad():
                ours = model(**ids).logits
                theirs = PeftModel.from_pretrained(load_base(ref, 0)[0], str(Path(tmp) / label[:12])).eval()(**ids).logits
                base_logits = load_base(ref, 0)[0](**ids).logits
            out[label] = {"relative_difference": float((ours - theirs).abs().max() / theirs.abs().max()),
                          "adapter_effect": float((ours - base_logits).abs().max() / base_logits.abs().max())}
        ref = resolve_model("minilm-l6")
        base, tok = load_base(ref, 2)
        peft_model = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, use_dora=True,
                                                     target_modules=["query", "value"], rank_pattern={"value": 4}))
        perturbed(peft_model, 2)
        peft_model.eval().save_pretrained(str(Path(tmp) / "minilm"))
        ids = tok(["a fine film", "dull and long", "not bad at all", "the plot never lands"], return_tensors="pt", padding=True)
        with torch.no_grad():
            theirs = peft_model(**ids).logits
            ours = load_adapter(Path(tmp) / "minilm", base_override="minilm-l6").model(**ids).logits
            with peft_model.disable_adapter():
                base_logits = peft_model(**ids).logits  # the base with the adapter's head, adapters off
        out["MiniLM-L6 DoRA + rank_pattern classifier, PEFT -> lorafit"] = {
            "relative_difference": float((ours - theirs).abs().max() / theirs.abs().max()),
            "adapter_effect": float((ours - base_logits).abs().max() / base_logits.abs().max())}
    print("\n## PEFT parity on the real bases (fp32, max |diff| / max |logit|; effect: adapted vs base logits)")
    print("| adapter | lorafit vs PEFT | adapter effect |")
    print("|---|---|---|")
    for label, value in out.items():
        print(f"| {label} | {value['relative_difference']:.2e} | {value['adapter_effect']:.2e} |")
    return out


def bench_train(rounds: int, steps: int, precisions: list[str]) -> dict:
    from lorafit.fast.options import FastOptions
    from lorafit.models.loader import load_for_training
    from lorafit.recipe import load_recipe
    from lorafit.recipe.shipped import recipe_paths
    from lorafit.train.distributed import Dist
    from lorafit.train.loop import Training
    from lorafit.train.setup import load_task, loss_function, prepare_data

    out = {}
    for precision in precisions:
        runs = {}
        for variant in ("lora", "dora"):
            path = next(p for p in recipe_paths() if p.stem == "e2e-smollm2")
            recipe = load_recipe(path, [f"lora.variant={variant}", f"precision={precision}", "data.max_train_examples=400"])
            task = load_task(recipe)
            loaded = load_for_training(recipe, task.num_labels)
            train, _, _ = prepare_data(recipe, task, loaded.tokenizer)
            run = Training(loaded.model.train(), recipe.train, total=10**6, seed=recipe.seed, precision=precision,
                           batching="pack", loss_fn=loss_function(task), pad_id=loaded.tokenizer.pad_token_id or 0,
                           fast=FastOptions(), dist=Dist())
            batches = run.step_batches(train)
            fixed = [next(batches) for _ in range(steps)]  # the same batches for both variants (same seed)
            runs[variant] = (run, fixed)

        def one_pass(variant, runs=runs):
            run, fixed = runs[variant]
            for micro in fixed:
                run.update(*run.backward(micro))

        samples = benchlib.interleaved_samples({v: (lambda v=v: one_pass(v)) for v in runs}, rounds)
        per_step = {v: statistics.median(s) / steps for v, s in samples.items()}
        out[precision] = {"s_per_step": per_step, "dora_over_lora": per_step["dora"] / per_step["lora"], "samples_s": samples}
    print(f"\n## train: E2E SmolLM2-135M, e2e-smollm2 recipe (r 4, q/v, batch 8, packed rows), {steps} steps x {rounds} rounds")
    print("| precision | LoRA s/step | DoRA s/step | DoRA / LoRA |")
    print("|---|---|---|---|")
    for precision, row in out.items():
        print(f"| {precision} | {row['s_per_step']['lora']:.3f} | {row['s_per_step']['dora']:.3f} | {row['dora_over_lora']:.3f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("serve", "layer", "train", "parity", "both"), default="both",
                        help="both: every part")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rows", type=int, default=16, help="prompts in the serving batch (spread over 8 adapters)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per timed pass (train)")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = benchlib.header("LoRA variants: DoRA rows in mixed batches, DoRA training steps")
    print("(1 torch thread; another job may share the machine: compare rows within one run)")
    started = time.perf_counter()
    if args.part in ("serve", "both"):
        info["serve"] = bench_serve(args.rounds, args.new_tokens, args.rows)
    if args.part in ("parity", "both"):
        info["parity"] = bench_parity()
    if args.part in ("layer", "both"):
        info["layer"] = bench_layer(reps=2000)
    if args.part in ("train", "both"):
        info["train"] = bench_train(args.rounds, args.steps, args.precisions.split(","))
    info["seconds"] = round(time.perf_counter() - started, 1)
    benchlib.write_json("bench_variants", info)


if __name__ == "__main__":
    main()
