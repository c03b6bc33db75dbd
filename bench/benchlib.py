"""Helpers shared by the bench scripts: machine and version facts, matmul peak, FLOP counting, JSON out.

Nothing here is timed against a threshold: the scripts print numbers and ratios from one run.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags(wanted=("avx512f", "avx512_bf16", "amx_bf16", "avx2")) -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def machine() -> dict:
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "flags": cpu_flags(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "lorafit"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [".venv/bin/python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def busy_processes(min_cpu: float = 20.0) -> list[str]:
    """Other processes using a lot of CPU right now (psutil), to warn that timings may be contended."""
    try:
        import psutil
    except ImportError:
        return []
    me = os.getpid()
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    busy = []
    for p in procs:
        try:
            if p.pid != me and p.cpu_percent(None) >= min_cpu:
                busy.append(f"{p.pid} {' '.join(p.info['cmdline'] or [p.info['name']])[:100]}")
        except psutil.Error:
            pass
    return busy


def cpu_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot (all cores, from /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Contention:
    """How much CPU other processes used while we measured: (machine busy time - ours) / (wall * cores).

    `ours` is this process plus its finished children (getrusage). Above a few percent, the timings of
    this measurement are not reportable on a shared 2-core machine.
    """

    def __enter__(self):
        self.busy0 = cpu_busy_seconds()
        self.mine0 = self._mine()
        self.t0 = time.perf_counter()
        return self

    @staticmethod
    def _mine() -> float:
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        others = (cpu_busy_seconds() - self.busy0) - (self._mine() - self.mine0)
        self.share = max(0.0, others) / max(wall * (os.cpu_count() or 1), 1e-9)
        return False


def wait_quiet(max_wait_s: float = 900, threshold: float = 0.05, probe_s: float = 5.0) -> float:
    """Wait until other processes use less than `threshold` of the CPU over `probe_s`; returns the seconds
    waited (gives up after `max_wait_s` and lets the caller measure anyway, flagged as contended)."""
    began = time.perf_counter()
    announced = False
    while True:
        with Contention() as c:
            time.sleep(probe_s)
        waited = time.perf_counter() - began
        if c.share < threshold or waited > max_wait_s:
            return waited
        if not announced:
            print(f"  (machine busy: others use {100 * c.share:.0f}% of the CPU; waiting for quiet)", flush=True)
            announced = True
        time.sleep(20)


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """This process's resident set size now (the second field of /proc/self/statm, in pages)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:  # not Linux: no trace, the peak still comes from peak_rss_mb
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def header(title: str) -> dict:
    """Print and return the facts every bench output starts with."""
    info = {"title": title, "command": command_line(), "machine": machine(), "versions": versions(),
            "load_average_1min": load_average(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    m = info["machine"]
    print(f"# {title}")
    print(f"command:  {info['command']}")
    print(f"machine:  {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, flags {' '.join(m['flags'])}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    busy = busy_processes()
    info["busy_processes"] = busy
    if busy:
        print("WARNING: other busy processes, timings are contended and not reportable:")
        for b in busy:
            print(f"  {b}")
    return info


def write_json(name: str, data: dict) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"results: {os.path.relpath(path, REPO)}")
    return path


# ----------------------------------------------------------------------------------------- matmul peak


def matmul_gflops(n: int, dtype, reps: int = 10, trials: int = 3) -> float:
    """Best-of-`trials` GFLOP/s of an (n x n) @ (n x n) matmul: 2 n^3 FLOPs per product."""
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        dt = time.perf_counter() - t0
        best = max(best, 2 * n**3 * reps / dt / 1e9)
    return best


def matmul_peak(sizes=(1024, 2048, 3072)) -> dict:
    """The machine's measured matmul peak per precision: the best GFLOP/s over a few square sizes."""
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        by_size = {n: round(matmul_gflops(n, dtype, reps=max(2, int(4 * (2048 / n) ** 3))), 1) for n in sizes}
        out[name] = {"peak_gflops": max(by_size.values()), "by_size": by_size}
    return out


# ----------------------------------------------------------------------------------------- FLOP counting


SKIP = ("lora_", "embed", "lm_head", "classifier", "pooler", "score")


def body_weights(model) -> dict[str, int]:
    """The frozen 2-D weights of the transformer body by name: the same set for a plain model, lorafit's
    LoRALinear (`...q_proj.weight`) and PEFT's wrapper (`...q_proj.base_layer.weight`). Embeddings, the
    output head and the classification head/pooler are left out (the head is counted per target token)."""
    return {
        name.replace(".base_layer", ""): p.numel()
        for name, p in model.named_parameters()
        if p.dim() == 2 and name.endswith(".weight") and not any(s in name for s in SKIP)
    }


FIRST_LAYER_INPUT_PROJECTIONS = ("layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj",
                                 "layer.0.attention.self.query", "layer.0.attention.self.key", "layer.0.attention.self.value")


def flop_model(model) -> dict:
    """What the FLOP count needs from a (LoRA-wrapped) model: body weights, LoRA params, d, layers, vocab,
    and the first layer's q/k/v weights (their input, the embeddings, needs no gradient)."""
    config = model.config
    body = body_weights(model)
    first = sum(n for name, n in body.items() if any(name.endswith(p + ".weight") for p in FIRST_LAYER_INPUT_PROJECTIONS))
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    return {
        "body_linear_params": sum(body.values()),
        "first_layer_qkv_params": first,
        "lora_params": lora,
        "hidden": config.hidden_size,
        "layers": config.num_hidden_layers,
        "vocab": config.vocab_size,
    }


def step_flops(fm: dict, real_tokens: int, sum_len_sq: int, head_tokens: int) -> float:
    """Useful training FLOPs of one step (the counting convention of docs/performance.md):

    linear layers  4 * N_body per real token   (forward 2N; backward 2N for the input gradient only:
                                                frozen weights get no weight gradient), less 2 * N for
                                                the first layer's q/k/v (the embeddings need no gradient)
    LoRA           6 * N_lora per real token   (forward 2, backward input + weight gradients 4)
    attention      12 * d * L^2 per example and layer (QK^T and PV: 4 d L^2 forward, twice that backward)
    output head    4 * d * V per head token    (forward + input gradient; lorafit applies it only at the
                                                positions predicting a completion token, so the useful
                                                count uses those for both sides)
    Padding, embeddings, norms, softmax and the optimizer are not counted.
    """
    d, layers = fm["hidden"], fm["layers"]
    return (
        (4 * fm["body_linear_params"] - 2 * fm["first_layer_qkv_params"] + 6 * fm["lora_params"]) * real_tokens
        + 12 * d * sum_len_sq * layers
        + 4 * d * fm["vocab"] * head_tokens
    )


def batch_stats(batch: dict) -> dict:
    """Counts of one collated batch: real (non-pad) tokens, padded positions, loss targets, sum of L^2
    over the examples, examples. A packed row (lorafit's `batching: pack`) counts each example's length."""
    mask = batch["attention_mask"]
    lengths = batch["segment_lengths"] if "segment_lengths" in batch else mask.sum(dim=1)
    labels = batch.get("labels")
    if labels is not None and labels.dim() == 2:
        targets = int((labels[:, 1:] != -100).sum())
    else:
        targets = int(mask.shape[0])
    return {
        "real": int(lengths.sum()),
        "padded": int(mask.numel()),
        "targets": targets,
        "sum_len_sq": int((lengths.long() ** 2).sum()),
        "rows": int(lengths.numel()),
    }


def interleaved_samples(fns: dict, rounds: int, reps: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each fn, one sample per round (the mean of `reps` calls), the fns timed in
    turn within every round and in reverse order every other round, so drift in machine load hits all
    alike. Two warm-up calls each first."""
    for fn in fns.values():
        fn()
        fn()
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            for _ in range(reps):
                fns[name]()
            samples[name].append((time.perf_counter() - t0) / reps)
    return samples
