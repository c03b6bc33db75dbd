"""The training loop: plain torch, readable top to bottom.

    for each optimizer step:
        for each micro-batch of the step (grad_accum of them):
            loss_sum(micro-batch) / target tokens in the whole step  -> backward
        clip grad norm -> AdamW step -> schedule step
        log / validate / checkpoint when due

Only trainable parameters (LoRA A/B, a head, chosen biases) are given to the optimizer, so AdamW keeps
moments for ~0.1-1% of the weights. Batch order depends only on (seed, epoch), and checkpoints hold
the optimizer, scheduler, RNG states and the data position, so a resumed run continues the very same
sequence of updates. Room for torch.distributed: the data position and "who writes" are the only places
a rank matters (see `Checkpointer` and `batch_order`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lorafit.data.batches import Encoded, count_target_tokens, iterate_batches, length_sorted_batches
from lorafit.errors import DivergedError
from lorafit.fast.attention import FastAttentionDropout
from lorafit.fast.memory import release_free_heap, trim_due
from lorafit.fast.precision import FrozenWeightCasts, autocast_context, resolve_precision
from lorafit.runs.interrupts import interrupts_deferred


@dataclass
class TrainState:
    """Where training is: the optimizer step done last and the next batch to read."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0  # real (non-pad) input tokens
    examples_seen: int = 0


@dataclass
class FitResult:
    state: TrainState
    total_steps: int
    train_loss: float | None  # mean per-token loss over the last logging window
    valid_loss: float | None
    history: list[dict] = field(default_factory=list)
    precision: str = "fp32"  # what the loop ran ("auto" resolved)


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs from the recipe (train section + seed + precision)."""

    batch_size: int
    grad_accum: int
    lr: float
    weight_decay: float
    warmup_steps: int
    schedule: str
    max_grad_norm: float | None
    batching: str
    epochs: float
    max_steps: int | None
    log_every: int
    eval_every: int
    save_every: int
    seed: int
    precision: str
    task_eval_every: int = 0  # run `on_validate` (task metrics) every N steps; 0: never


def total_optimizer_steps(num_examples: int, s: LoopSettings) -> int:
    """max_steps if set, else ceil(epochs * batches per epoch / grad_accum), at least 1."""
    if s.max_steps is not None:
        return s.max_steps
    batches_per_epoch = math.ceil(num_examples / s.batch_size)
    return max(1, math.ceil(s.epochs * batches_per_epoch / s.grad_accum))


def lr_multiplier(step: int, warmup: int, total: int, kind: str) -> float:
    """Linear warmup from 0 over `warmup` steps, then linear decay to 0, cosine to 0, or constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def rng_state() -> dict:
    """Every random generator training draws from (dropout, shuffling), for checkpoints."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()  # dropout on a GPU draws from these, not "torch"
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


LossFn = Callable[[nn.Module, dict], torch.Tensor]


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    encoded: Sequence[Encoded],
    loss_fn: LossFn,
    batch_size: int,
    pad_id: int,
    precision: str,
    casts: FrozenWeightCasts | None = None,
) -> float | None:
    """Mean per-target-token loss over `encoded` in eval mode (dropout off); `casts`: the run's
    bf16 weight copies (precision.py), reused rather than made again."""
    if not encoded:
        return None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for _, batch in length_sorted_batches(encoded, batch_size, pad_id):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast_context(precision, device, casts):
            total += loss_fn(model, batch).item()
        tokens += count_target_tokens(batch)
    model.train(was_training)
    return total / max(tokens, 1)


def fit(
    model: nn.Module,
    train: Sequence[Encoded],
    valid: Sequence[Encoded],
    s: LoopSettings,
    *,
    loss_fn: LossFn,
    pad_id: int,
    on_log: Callable[[dict], None] = lambda record: None,
    on_step: Callable[[TrainState, Callable[[], dict]], None] = lambda state, snapshot: None,
    on_validate: Callable[[TrainState], dict] | None = None,
    on_interrupt: Callable[[Callable[[], dict]], None] | None = None,
    resume: dict | None = None,
) -> FitResult:
    """Train `model`'s trainable parameters on `train`; returns the final state and losses.

    on_log(record): called every `log_every` steps and after each validation with a flat dict
    (step, epoch, loss, lr, grad_norm, tokens_per_s, elapsed_s, ...).
    on_step(state, snapshot): called after every optimizer step; `snapshot()` returns the full
    resumable state (trainable weights, optimizer, scheduler, RNG, data position), so the caller
    decides when to checkpoint (every N steps, on Ctrl-C).
    on_validate(state): task evaluation every `task_eval_every` steps; its dict is logged with the step.
    on_interrupt(snapshot): called on Ctrl-C with the state of the last completed step, before the
    KeyboardInterrupt propagates.
    resume: a snapshot returned earlier; training continues exactly where it stopped.
    """
    device = next(model.parameters()).device
    precision = resolve_precision(s.precision, device)
    casts = FrozenWeightCasts() if precision == "bf16" else None  # one bf16 copy per frozen weight per run
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    total = total_optimizer_steps(len(train), s)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, s.warmup_steps, total, s.schedule)
    )
    state = TrainState()
    history: list[dict] = []
    if resume is not None:
        trainable = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in resume["trainable"].items():
                trainable[name].copy_(value)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        state = TrainState(**resume["state"])
        history = list(resume.get("history", []))
        set_rng_state(resume["rng"])
    else:
        seed_everything(s.seed)

    # The state at the last optimizer-step boundary: what a checkpoint must hold even when Ctrl-C
    # arrives halfway through the micro-batches of the next step.
    boundary = {"state": vars(state).copy(), "rng": rng_state()}

    def snapshot() -> dict:
        return {
            "trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": dict(boundary["state"]),
            "rng": boundary["rng"],
            "history": list(history),
        }


    max_norm = s.max_grad_norm if s.max_grad_norm is not None else float("inf")

    def backward(micro: list[dict]) -> tuple[float, int, int]:
        """Accumulate gradients over the micro-batches of one step. Returns (mean token loss, target
        tokens, real input tokens); a non-finite loss stops training before any weight changes."""
        step_tokens = sum(count_target_tokens(b) for b in micro)
        step_loss, real_tokens = 0.0, 0
        for b in micro:
            b = {k: v.to(device) for k, v in b.items()}
            # FastAttentionDropout outside autocast: under bf16 the attention reaches it already in fp32.
            with FastAttentionDropout(), autocast_context(precision, device, casts):
                loss = loss_fn(model, b) / max(step_tokens, 1)
            loss.backward()
            step_loss += loss.item()
            real_tokens += int(b["attention_mask"].sum())
        if not math.isfinite(step_loss):
            raise DivergedError(
                f"training loss became {step_loss} at step {state.step + 1}; the adapter was not saved "
                "and the last good checkpoint is kept (try a lower train.lr)"
            )
        return step_loss, step_tokens, real_tokens

    def update() -> float:
        """Clip, AdamW step, schedule step; returns the gradient norm before clipping."""
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def validate() -> None:
        nonlocal valid_loss
        began = time.perf_counter()
        valid_loss = validation_loss(model, valid, loss_fn, s.batch_size, pad_id, precision, casts)
        record = {"step": state.step, "valid_loss": valid_loss, "elapsed_s": time.perf_counter() - started}
        history.append(record)
        on_log(record)
        window["start"] += time.perf_counter() - began  # tokens/s counts training time only

    started = time.perf_counter()
    window = {"loss": 0.0, "tokens": 0, "real": 0, "start": started}  # the current logging window
    trimmed = {"step": state.step, "time": started}  # the last heap trim (memory.py)
    last_train_loss, valid_loss = None, None
    steps_per_epoch = max(1, math.ceil(len(train) / s.batch_size))
    if state.step == 0 and valid:
        validate()  # the base model's validation loss: the curve's starting point
    model.train()
    micro: list[dict] = []
    try:
        while state.step < total:
            batches = iterate_batches(
                train, s.batch_size, pad_id, seed=s.seed, epoch=state.epoch, mode=s.batching, skip=state.batch_in_epoch
            )
            for batch in batches:
                micro.append(batch)
                state.batch_in_epoch += 1
                if len(micro) < s.grad_accum:
                    continue
                loss, tokens, real = backward(micro)
                with interrupts_deferred():  # the update and the record of it happen together (interrupts.py)
                    grad_norm = update()
                    state.examples_seen += sum(b["input_ids"].shape[0] for b in micro)
                    state.tokens_seen += real
                    state.step += 1
                    boundary.update(state=vars(state).copy(), rng=rng_state())
                micro = []
                if trim_due(state.step - trimmed["step"], time.perf_counter() - trimmed["time"]):
                    release_free_heap()  # bound RSS growth from varying batch shapes (memory.py)
                    trimmed.update(step=state.step, time=time.perf_counter())
                window["loss"] += loss * tokens
                window["tokens"] += tokens
                window["real"] += real

                if state.step % s.log_every == 0 or state.step == total:
                    now = time.perf_counter()
                    last_train_loss = window["loss"] / max(window["tokens"], 1)
                    record = {
                        "step": state.step,
                        "epoch": round(state.epoch + state.batch_in_epoch / steps_per_epoch, 4),
                        "loss": last_train_loss,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm,
                        "tokens_per_s": window["real"] / max(now - window["start"], 1e-9),
                        "tokens_seen": state.tokens_seen,
                        "elapsed_s": now - started,
                    }
                    history.append(record)
                    on_log(record)
                    window = {"loss": 0.0, "tokens": 0, "real": 0, "start": time.perf_counter()}
                if (s.eval_every > 0 and state.step % s.eval_every == 0) or state.step == total:
                    validate()
                if on_validate is not None and s.task_eval_every > 0 and state.step % s.task_eval_every == 0:
                    began = time.perf_counter()
                    record = {"step": state.step, **on_validate(state), "elapsed_s": time.perf_counter() - started}
                    history.append(record)
                    on_log(record)
                    model.train()
                    window["start"] += time.perf_counter() - began
                on_step(state, snapshot)
                if state.step >= total:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
    except KeyboardInterrupt:
        if on_interrupt is not None:
            on_interrupt(snapshot)
        raise
    return FitResult(state=state, total_steps=total, train_loss=last_train_loss, valid_loss=valid_loss, history=history,
                     precision=precision)
