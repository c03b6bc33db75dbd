"""Many adapters on one base, measured: lorafit's mixed batch against PEFT and the bare base.

Generation (SmolLM2-135M, `smollm2-135m`): 8 adapters (ranks 4/8/16, q/k/v/o, non-zero B), 64 prompts
spread over them, greedy, exactly --new-tokens new tokens per row (eos ignored everywhere, so every
system does the same work). Systems, all on the same 64 prompts:

    lorafit mixed        AdapterHost + DecodeBatch, one batch of 64 rows over 8 adapters (also timed
                         without sharing the prompts' common prefix: share_prefixes=False)
    lorafit base         the same decode loop with every row on the base (adapter None)
    HF base              bare base, model.generate on the same batch
    PEFT adapter_names   PeftModel with 8 adapters, model.generate(adapter_names=per-row names)
    PEFT one at a time   set_adapter(name) + generate on that adapter's sub-batch, for each adapter

Classification (MiniLM-L6, `minilm-l6`): 3 adapters with their own 2-label heads, 192 texts,
batches of 64, each row scored by its own adapter's head; lorafit mixed, PEFT adapter_names,
PEFT one at a time, bare base (one head for all).

    OMP_NUM_THREADS=2 python bench/bench_multi_adapter.py --threads 2 [--kernels] [--skip-classify] [--precision bf16]

--precision puts every system's base weights in that precision (adapters stay fp32, as lorafit and
PEFT both keep them), so each table compares like with like. --weights both times lorafit with its
base weights oneDNN-packed (lorafit/fast/packed.py, the default of `AdapterHost.load`, `lorafit
generate` and `lorafit serve`) and with plain nn.Linear weights, in the same run.

Prints machine, versions and the command, then one table per part. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

from lorafit.adapters.decode import DecodeBatch, Request  # noqa: E402
from lorafit.adapters.host import AdapterHost, cast_base  # noqa: E402
from lorafit.models import load_base, model_identity, resolve_model  # noqa: E402

# --weights: which lorafit hosts to time (the others always run on plain nn.Linear weights).
WEIGHTS = {"packed": ("packed",), "plain": ("plain",), "both": ("packed", "plain")}

WORDS = ("Ginger Bristol guinea pig playful older people cat dog Leeds shy calm rabbit parrot London young "
         "friendly quiet energetic family children hamster Oxford loves walks garden indoor").split()


def machine() -> dict:
    import peft
    import transformers

    info = {"cpu": benchlib.cpu_model(), "flags": benchlib.cpu_flags(("avx2", "avx512f", "avx512_bf16", "amx_bf16"))}
    info |= {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
             "peft": peft.__version__, "threads": torch.get_num_threads(),
             "command": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    return info


def prompts(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(4, 14, (1,), generator=g))
        words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)]
        out.append(f"Write a one-sentence listing for this pet. | {' '.join(words)} | Listing:")
    return out


def write_adapter(model, directory: Path, rank: int, targets, seed: int, task_type: str, heads=None) -> None:
    """A PEFT-format adapter with random A and non-zero B on every `targets` layer (+ saved heads)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if name.split(".")[-1] in targets and isinstance(module, torch.nn.Linear):
            d_out, d_in = module.weight.shape
            tensors[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, d_in, generator=g) / d_in**0.5
            tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(d_out, rank, generator=g) * 0.02
    for key, shape in (heads or {}).items():
        tensors[f"base_model.model.{key}"] = torch.randn(shape, generator=g) * 0.05
    directory.mkdir(parents=True)
    identity = json.dumps(model_identity(model), sort_keys=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt", "lorafit_base_identity": identity})
    config = {"peft_type": "LORA", "task_type": task_type, "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
              "target_modules": list(targets), "bias": "none", "base_model_name_or_path": "bench",
              "modules_to_save": sorted({k.split(".")[0] for k in heads}) if heads else None}
    (directory / "adapter_config.json").write_text(json.dumps(config))


def write_bench_adapters(model, directory: Path, count: int) -> dict[str, Path]:
    """The benches' generation adapters, written from `model` before any host wraps it: a0..a{count-1}
    under `directory`, ranks 4/8/16/8 in turn on q/k/v/o, seed = index. Returns name -> directory."""
    dirs = {f"a{i}": Path(directory) / f"a{i}" for i in range(count)}
    for i, path in enumerate(dirs.values()):
        write_adapter(model, path, (4, 8, 16, 8)[i % 4], ("q_proj", "k_proj", "v_proj", "o_proj"), seed=i,
                      task_type="CAUSAL_LM")
    return dirs


def timed(fn, repeats: int = 1):
    """Best of `repeats` wall times (after the caller's warm-up), and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def left_pad(tok, texts):
    enc = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, width - len(e) :], mask[i, width - len(e) :] = torch.tensor(e), 1
    return enc, ids, mask


# ---------------------------------------------------------------------------------------------- generation


def gen_settings(tok, n_new: int) -> dict:
    """HF generate settings: greedy, exactly n_new new tokens (eos ignored, as in lorafit's runs)."""
    return {"max_new_tokens": n_new, "min_new_tokens": n_new, "do_sample": False, "pad_token_id": tok.pad_token_id}


def bench_generate(args, work: Path) -> list[tuple]:
    from peft import PeftModel

    ref = resolve_model("smollm2-135m")
    base, tok = load_base(ref)
    names = list(write_bench_adapters(base, work, args.adapters))
    texts = prompts(args.prompts)
    rows = [names[i % len(names)] for i in range(len(texts))]
    enc, ids, mask = left_pad(tok, texts)
    n_new = args.new_tokens
    total = n_new * len(texts)
    results = []

    mixed_tokens = None
    for weights in WEIGHTS[args.weights]:
        if base is None:
            base, _ = load_base(ref)
        host = AdapterHost(base, tok, causal=True, kernel=args.kernel, precision=args.precision,
                           pack_weights=weights == "packed")
        base = None  # the host owns (and may have packed) it; a second host loads its own
        load_times = []
        for name in names:
            start = time.perf_counter()
            host.load_adapter(name, work / name)
            load_times.append(time.perf_counter() - start)
        print(f"adapter load times, {weights} weights (s): {', '.join(f'{t:.3f}' for t in load_times)}")
        _, slots = host.slots_for(rows, len(rows))

        def lorafit_run(slot_list, new_tokens=n_new, host=host, share=True):
            reqs = [Request(e, int(s), new_tokens) for e, s in zip(enc, slot_list, strict=False)]
            # No eos: n_new tokens each.
            return DecodeBatch(host.model, host.routing, [], tok.pad_token_id, share_prefixes=share).run(reqs)

        # Warm-ups on the full batch with a few new tokens, every system alike: the first run at a new
        # shape pays for allocations and kernel setup, and an earlier version timed that into the first row.
        lorafit_run(slots.tolist(), 4)
        kernels = ("auto", "loop", "grouped") if args.kernels else (args.kernel,)
        for kernel in kernels:
            for layer in host._layers.values():
                layer.kernel = kernel
            t, out = timed(lambda lorafit_run=lorafit_run, slots=slots: lorafit_run(slots.tolist()), args.repeats)
            mixed_tokens = mixed_tokens or [r.tokens for r in out]
            results.append((f"lorafit mixed ({kernel}, {weights} weights)", t, total / t))
        for layer in host._layers.values():
            layer.kernel = args.kernel
        # The 64 prompts share an 11-token instruction: the same run without the shared-prefix prefill.
        t, _ = timed(lambda lorafit_run=lorafit_run, slots=slots: lorafit_run(slots.tolist(), share=False), args.repeats)
        results.append((f"lorafit mixed ({args.kernel}, {weights} weights, no prefix sharing)", t, total / t))
        t, _ = timed(lambda lorafit_run=lorafit_run: lorafit_run([0] * len(rows)), args.repeats)
        results.append((f"lorafit base (same decode, {weights} weights)", t, total / t))
        host = None
    warm = gen_settings(tok, 4)

    bare, _ = load_base(ref)
    cast_base(bare, args.precision)
    gen = gen_settings(tok, n_new)
    with torch.no_grad():
        bare.generate(input_ids=ids, attention_mask=mask, **warm)
        t, _ = timed(lambda: bare.generate(input_ids=ids, attention_mask=mask, **gen), args.repeats)
    results.append(("HF generate, bare base", t, total / t))
    bare = None  # free it before PEFT loads its own copy

    peft_base, _ = load_base(ref)
    cast_base(peft_base, args.precision)
    peft = PeftModel.from_pretrained(peft_base, str(work / names[0]), adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(str(work / name), adapter_name=name)
    peft.eval()
    with torch.no_grad():
        peft.generate(input_ids=ids, attention_mask=mask, adapter_names=rows, **warm)
        t, out = timed(lambda: peft.generate(input_ids=ids, attention_mask=mask, adapter_names=rows, **gen), args.repeats)
    results.append(("PEFT adapter_names= mixed", t, total / t))
    peft_tokens = out[:, ids.shape[1] :].tolist()
    same = sum(a == b for a, b in zip(mixed_tokens, peft_tokens, strict=True))
    print(f"greedy rows identical, lorafit mixed vs PEFT adapter_names: {same}/{len(rows)}")

    def one_at_a_time():
        for name in names:
            idx = [i for i, r in enumerate(rows) if r == name]
            _, sub_ids, sub_mask = left_pad(tok, [texts[i] for i in idx])
            peft.set_adapter(name)
            peft.generate(input_ids=sub_ids, attention_mask=sub_mask, **gen)

    with torch.no_grad():
        t, _ = timed(one_at_a_time, args.repeats)
    results.append(("PEFT one adapter at a time", t, total / t))
    return results


# ---------------------------------------------------------------------------------------------- classification


def bench_classify(args, work: Path) -> list[tuple]:
    from peft import PeftModel

    ref = resolve_model("minilm-l6")
    base, tok = load_base(ref, num_labels=2)
    names = ["sst", "mrpc", "cola"]
    for i, name in enumerate(names):
        heads = {"classifier.weight": (2, base.config.hidden_size), "classifier.bias": (2,)}
        write_adapter(base, work / name, 8, ("query", "value"), seed=100 + i, task_type="SEQ_CLS", heads=heads)
    texts = [p.split("|")[1].strip() for p in prompts(192, seed=1)]
    rows = [names[i % 3] for i in range(len(texts))]
    total, bs = len(texts), 64
    results = []

    ours = None
    for weights in WEIGHTS[args.weights]:
        if base is None:
            base, _ = load_base(ref, num_labels=2)
        host = AdapterHost(base, tok, causal=False, kernel=args.kernel, precision=args.precision,
                           pack_weights=weights == "packed")
        base = None
        for name in names:
            host.load_adapter(name, work / name)
        host.classify(texts[:64], adapter=rows[:64])  # warm-up on a full batch
        t, out = timed(lambda host=host: host.classify(texts, adapter=rows, batch_size=bs), repeats=3)
        ours = ours or out
        results.append((f"lorafit mixed ({weights} weights)", t, total / t))
        host = None

    bare, _ = load_base(ref, num_labels=2)
    cast_base(bare.eval(), args.precision)

    def batches():
        for s in range(0, total, bs):
            yield s, tok(texts[s : s + bs], padding=True, return_tensors="pt")

    with torch.no_grad():
        t, _ = timed(lambda: [bare(**enc) for _, enc in batches()], repeats=3)
    results.append(("bare base (one head)", t, total / t))

    peft_base = load_base(ref, num_labels=2)[0]
    cast_base(peft_base, args.precision)
    peft = PeftModel.from_pretrained(peft_base, str(work / names[0]), adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(str(work / name), adapter_name=name)
    peft.eval()
    with torch.no_grad():
        t, theirs = timed(lambda: [peft(**enc, adapter_names=rows[s : s + bs]).logits for s, enc in batches()], repeats=3)
    results.append(("PEFT adapter_names= mixed", t, total / t))
    diff = (torch.tensor([r["logits"] for r in ours]) - torch.cat(theirs).float()).abs().max().item()
    print(f"classification logits, lorafit mixed vs PEFT adapter_names: max |diff| {diff:.2e}")

    def one_at_a_time():
        for name in names:
            idx = [i for i, r in enumerate(rows) if r == name]
            peft.set_adapter(name)
            for s in range(0, len(idx), bs):
                peft(**tok([texts[i] for i in idx[s : s + bs]], padding=True, return_tensors="pt"))

    with torch.no_grad():
        t, _ = timed(one_at_a_time, repeats=3)
    results.append(("PEFT one adapter at a time", t, total / t))
    return results


def bench_load_scaling(args, work: Path) -> None:
    """Load --scaling adapters one after another into one host: the time per load must stay flat."""
    ref = resolve_model("smollm2-135m")
    base, tok = load_base(ref)
    write_adapter(base, work / "one", 8, ("q_proj", "k_proj", "v_proj", "o_proj"), seed=0, task_type="CAUSAL_LM")
    host = AdapterHost(base, tok, causal=True)
    times = []
    for i in range(args.scaling):
        start = time.perf_counter()
        host.load_adapter(f"a{i}", work / "one")
        times.append(time.perf_counter() - start)
    k = max(1, args.scaling // 8)
    first, last = sorted(times[1 : k + 1])[k // 2], sorted(times[-k:])[k // 2]
    print(f"\nload time per adapter, median of loads 2..{k + 1}: {first * 1e3:.1f} ms; of the last {k}: "
          f"{last * 1e3:.1f} ms ({args.scaling} loaded; slow outliers are the capacity doublings: "
          f"{', '.join(f'#{i + 1}' for i, t in enumerate(times) if t > 3 * first)})")
    start = time.perf_counter()
    for i in range(args.scaling):
        host.unload_adapter(f"a{i}")
    print(f"unload of all {args.scaling}: {(time.perf_counter() - start) * 1e3:.1f} ms")


def table(title: str, unit: str, results: list[tuple], reference: str) -> None:
    ref = dict((n, r) for n, _, r in results)[reference]
    print(f"\n{title}\n| system | seconds | {unit} | vs {reference} |\n|---|---:|---:|---:|")
    for name, t, rate in results:
        print(f"| {name} | {t:.2f} | {rate:.1f} | {rate / ref:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--kernel", default="auto", choices=["auto", "loop", "grouped"])
    parser.add_argument("--repeats", type=int, default=1,
                        help="generation: best of this many timed runs per system (the machine's noise is ~10-15%%)")
    parser.add_argument("--kernels", action="store_true", help="time every kernel on the mixed batch")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="base weights of every system")
    parser.add_argument("--weights", default="packed", choices=sorted(WEIGHTS),
                        help="lorafit's base weights: oneDNN-packed (AdapterHost.load's default), plain, or both in turn")
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--skip-classify", action="store_true")
    parser.add_argument("--scaling", type=int, default=32, help="adapters loaded in the load-time test (0: skip)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress visible when redirected to a file
    torch.set_num_threads(args.threads)
    for key, value in machine().items():
        print(f"{key}: {value}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.scaling:
            bench_load_scaling(args, Path(tmp) / "scaling")
        if not args.skip_generate:
            results = bench_generate(args, Path(tmp) / "gen")
            table(f"generation ({args.precision}): SmolLM2-135M, {args.prompts} prompts over {args.adapters} adapters, "
                  f"greedy, {args.new_tokens} new tokens each", "new tokens/s", results, results[0][0])
        if not args.skip_classify:
            results = bench_classify(args, Path(tmp) / "cls")
            table(f"classification ({args.precision}): MiniLM-L6, 192 texts over 3 adapters with own heads, batch 64",
                  "texts/s", results, results[0][0])


if __name__ == "__main__":
    main()
