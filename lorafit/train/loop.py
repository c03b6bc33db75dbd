"""The training loop: plain torch, readable top to bottom.

    for each optimizer step:
        for each micro-batch of the step (grad_accum of them):
            loss_sum(micro-batch) / target tokens in the whole step  -> backward
        clip grad norm -> AdamW step -> schedule step
        log / validate / evaluate the task / checkpoint when due

`fit` is that loop; `Training` holds everything that changes while it runs (optimizer, scheduler, position in
the data, the logging window, the state at the last step boundary), so the loop itself is a screen long. Only
trainable parameters (LoRA A/B, a head, chosen biases) are given to the optimizer, so AdamW keeps moments for
~0.1-1% of the weights. Batch order depends only on (seed, epoch), and checkpoints hold the optimizer,
scheduler, RNG states and the data position, so a resumed run continues the very same sequence of updates.

Several processes (train/distributed.py) run this same loop: each rank reads its part of every global batch,
a micro-batch's loss is divided by the whole step's target tokens over all ranks, and the gradients are summed
over the ranks before the update, so N ranks with batch b take the steps one process takes with batch N*b.
One process is `Dist()`, whose collectives return their input.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from lorafit.data.batches import (
    Encoded,
    batches_per_epoch,
    count_examples,
    count_target_tokens,
    iterate_batches,
    length_sorted_batches,
    resolve_batching,
)
from lorafit.errors import DataError, DivergedError
from lorafit.fast.attention import FastAttentionDropout
from lorafit.fast.dropout import use_fast_dropout
from lorafit.fast.memory import limit_onednn_primitive_cache, release_free_heap, trim_due
from lorafit.fast.options import FastOptions
from lorafit.fast.precision import FrozenWeightCasts, autocast_context, resolve_precision
from lorafit.recipe.schema import TrainConfig
from lorafit.rng import rng_state, seed_everything, set_rng_state
from lorafit.runs.interrupts import interrupts_deferred
from lorafit.train.best import BestTracker
from lorafit.train.distributed import Dist, full_value, load_value
from lorafit.train.loraplus import parameter_groups

LossFn = Callable[[nn.Module, dict], torch.Tensor]
Snapshot = Callable[[], dict]


@dataclass
class TrainState:
    """Where training is: the optimizer step done last and the next batch to read."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0  # real (non-pad) input tokens
    examples_seen: int = 0  # examples (a packed row counts the examples joined in it)


@dataclass
class FitResult:
    state: TrainState
    total_steps: int
    train_loss: float | None  # mean per-token loss over the last logging window
    valid_loss: float | None
    history: list[dict] = field(default_factory=list)
    precision: str = "fp32"  # what the loop ran ("auto" resolved)
    best: dict | None = None  # train.best_metric's best evaluation (train/best.py); None: never evaluated
    stopped: str | None = None  # why training ended before total_steps ("early stopping", "pruned"), else None


@dataclass
class LogWindow:
    """Sums over the optimizer steps since the last training-loss record."""

    start: float
    loss: float = 0.0  # sum of per-step mean losses weighted by their target tokens
    tokens: int = 0  # target tokens
    real: int = 0  # real input tokens (for tokens/s)


def total_optimizer_steps(num_examples: int, config: TrainConfig, world: int = 1) -> int:
    """max_steps if set, else ceil(epochs * batches per epoch (per rank) / grad_accum), at least 1."""
    if config.max_steps is not None:
        return config.max_steps
    per_epoch = batches_per_epoch(num_examples, config.batch_size, world)
    return max(1, math.ceil(config.epochs * per_epoch / config.grad_accum))


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


@torch.no_grad()
def validation_loss(
    model: nn.Module, encoded: Sequence[Encoded], loss_fn: LossFn, batch_size: int, pad_id: int, precision: str,
    casts: FrozenWeightCasts | None = None, dist: Dist = Dist(),
) -> float | None:
    """Mean per-target-token loss over `encoded` in eval mode (dropout off); `casts`: the run's
    bf16 weight copies (fast/precision.py), reused rather than made again.

    Several ranks: the batches one process would make are dealt out (batch i to rank i % ranks), each
    example once, and the loss and token sums added up over the ranks: the one-process number. fsdp
    ranks must run their forward passes together, so one with a batch fewer runs its first again,
    uncounted."""
    if not encoded:
        return None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    batches = [batch for _, batch in length_sorted_batches(encoded, batch_size, pad_id)]
    mine = [batches[i] for i in dist.my_share(len(batches))]
    rounds = -(-len(batches) // dist.world) if dist.sharded else len(mine)
    total, tokens = 0.0, 0
    for i in range(rounds):
        batch = {k: v.to(device) for k, v in (mine[i] if i < len(mine) else batches[0]).items()}
        with autocast_context(precision, device, casts):
            loss = loss_fn(model, batch).item()
        if i < len(mine):
            total += loss
            tokens += count_target_tokens(batch)
    total, tokens = dist.sum([total, tokens])
    model.train(was_training)
    return total / max(tokens, 1)


class Training:
    """The mutable state of one `fit` call and the steps that change it."""

    def __init__(self, model: nn.Module, config: TrainConfig, *, total: int, seed: int, precision: str,
                 batching: str, loss_fn: LossFn, pad_id: int, fast: FastOptions, dist: Dist) -> None:
        self.model, self.config, self.total, self.seed, self.dist = model, config, total, seed, dist
        self.batching, self.loss_fn, self.pad_id, self.fast = batching, loss_fn, pad_id, fast
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        # One bf16 copy per frozen weight; not under fsdp, whose whole weights exist only during a forward.
        self.casts = FrozenWeightCasts() if self.precision == "bf16" and not dist.sharded else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        # One group, or LoRA+'s groups (B at lr x ratio) when train.loraplus_lr_ratio is set.
        self.optimizer = torch.optim.AdamW(parameter_groups(model, self.params, config), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_multiplier(step, config.warmup_steps, total, config.schedule)
        )
        self.state = TrainState()
        self.history: list[dict] = []
        self.train_loss: float | None = None
        self.valid_loss: float | None = None
        self.started = time.perf_counter()
        self.window = LogWindow(start=self.started)
        self.last_trim = (0, self.started)  # (step, time) of the last heap trim (fast/memory.py)
        # The state at the last optimizer-step boundary: what a checkpoint must hold even when Ctrl-C
        # arrives halfway through the micro-batches of the next step.
        self.boundary = {"state": vars(self.state).copy(), "rng": rng_state()}
        self.stop = False  # all ranks stop after this step (a signal reached one of them)
        self.best = BestTracker.from_config(config)  # early stopping, keep_best, the caller's stop (train/best.py)

    def restore(self, snapshot: dict) -> None:
        """Continue exactly where `snapshot` (see `snapshot`) stopped."""
        trainable = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in snapshot["trainable"].items():
                load_value(trainable[name], value)
        if self.dist.sharded:  # optimizer moments are sharded like their parameters
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, snapshot["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(snapshot["optimizer"])
        self.scheduler.load_state_dict(snapshot["scheduler"])
        self.state = TrainState(**snapshot["state"])
        self.history = list(snapshot.get("history", []))
        self.best.load(snapshot.get("best"))
        rng = snapshot.get("rng_by_rank", [snapshot["rng"]])[self.dist.rank]
        set_rng_state(rng)
        self.boundary = {"state": vars(self.state).copy(), "rng": rng}
        self.last_trim = (self.state.step, self.started)

    def snapshot(self) -> dict:
        """The full resumable state at the last step boundary (weights, optimizer, RNG, data position).
        Several ranks: every rank calls it at the same step (it gathers each rank's RNG state, and
        fsdp's shards); the weights and optimizer are the same on every rank (ddp) or gathered whole."""
        if self.dist.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            optimizer = get_optimizer_state_dict(self.model, self.optimizer,
                                                 options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            optimizer = self.optimizer.state_dict()
        snapshot = {
            "trainable": {n: full_value(p.detach()).clone() for n, p in self.model.named_parameters() if p.requires_grad},
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "state": dict(self.boundary["state"]),
            "rng": self.boundary["rng"],
            "history": list(self.history),
            "best": self.best.state(),
        }
        if self.dist.world > 1:  # each rank draws its own dropout masks
            snapshot["rng_by_rank"] = self.dist.gather_objects(self.boundary["rng"])
            snapshot["world_size"] = self.dist.world
        return snapshot

    def step_batches(self, train: Sequence[Encoded]) -> Iterator[list[dict]]:
        """The grad_accum micro-batches of each optimizer step until the last step, epoch after epoch
        (a step may span the end of an epoch); the data position advances as batches are read."""
        micro: list[dict] = []
        while self.state.step < self.total:
            for batch in iterate_batches(
                train, self.config.batch_size, self.pad_id, seed=self.seed, epoch=self.state.epoch,
                mode=self.batching, skip=self.state.batch_in_epoch,
                window=self.fast.bucket_window_batches, pad_to_multiple=self.fast.pad_to_multiple,
                shard=(self.dist.rank, self.dist.world),
            ):
                micro.append(batch)
                self.state.batch_in_epoch += 1
                if len(micro) == self.config.grad_accum:
                    yield micro
                    micro = []
                    if self.state.step >= self.total:
                        return
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    def backward(self, micro: list[dict]) -> tuple[float, int, int, int]:
        """Accumulate gradients over one step's micro-batches (this rank's parts of them) and sum them
        over the ranks. Returns the step's (mean token loss, target tokens, real input tokens, examples),
        all over every rank; a non-finite loss stops training before any weight changes."""
        # Every rank divides by the step's target tokens summed over all ranks and micro-batches.
        step_tokens = int(self.dist.sum([sum(count_target_tokens(b) for b in micro)], torch.int64)[0])
        step_loss, real_tokens = 0.0, 0
        attention = FastAttentionDropout if self.fast.attention_dropout else nullcontext
        for b in micro:
            b = {k: v.to(self.device) for k, v in b.items()}
            # The attention mode outside autocast: under bf16 the attention reaches it already in fp32.
            with attention(), autocast_context(self.precision, self.device, self.casts):
                loss = self.loss_fn(self.model, b) / max(step_tokens, 1)
            loss.backward()
            step_loss += loss.item()
            real_tokens += int(b["attention_mask"].sum())
        self.dist.sum_gradients(self.params)
        examples = sum(count_examples(b) for b in micro)
        step_loss, real_tokens, examples, stop = self.dist.sum([step_loss, real_tokens, examples, self.dist.stop_requested])
        self.stop = stop > 0
        if not math.isfinite(step_loss):
            raise DivergedError(
                f"training loss became {step_loss} at step {self.state.step + 1}; the adapter was not saved "
                "and the last good checkpoint is kept (try a lower train.lr)"
            )
        return step_loss, step_tokens, int(real_tokens), int(examples)

    def update(self, loss: float, tokens: int, real: int, examples: int) -> float:
        """Clip, AdamW step, schedule step, and the record of it, as one uninterruptible unit; returns
        the gradient norm before clipping."""
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        with interrupts_deferred():  # the update and the record of it happen together (runs/interrupts.py)
            grad_norm = float(full_value(torch.nn.utils.clip_grad_norm_(self.params, max_norm)))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.examples_seen += examples
            self.state.tokens_seen += real
            self.state.step += 1
            self.boundary = {"state": vars(self.state).copy(), "rng": rng_state()}
        self.window.loss += loss * tokens
        self.window.tokens += tokens
        self.window.real += real
        return grad_norm

    def trim_heap_if_due(self) -> None:
        """Hand freed heap pages back to the OS now and then (fast/memory.py says why)."""
        steps, at = self.last_trim
        now = time.perf_counter()
        if trim_due(self.state.step - steps, now - at, self.fast.trim_every_steps, self.fast.trim_min_seconds):
            release_free_heap()
            self.last_trim = (self.state.step, time.perf_counter())

    def due(self, every: int) -> bool:
        return every > 0 and self.state.step % every == 0

    def train_record(self, grad_norm: float, steps_per_epoch: int) -> dict:
        """The training-loss record of the window that ends now; starts the next window."""
        now = time.perf_counter()
        self.train_loss = self.window.loss / max(self.window.tokens, 1)
        record = {
            "step": self.state.step,
            "epoch": round(self.state.epoch + self.state.batch_in_epoch / steps_per_epoch, 4),
            "loss": self.train_loss,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "tokens_per_s": self.window.real / max(now - self.window.start, 1e-9),
            "tokens_seen": self.state.tokens_seen,
            "elapsed_s": now - self.started,
        }
        self.window = LogWindow(start=time.perf_counter())
        return self.record(record)

    def timed_record(self, measure: Callable[[], dict]) -> dict:
        """A record of what `measure` returns (validation, task metrics), its time left out of tokens/s."""
        began = time.perf_counter()
        values = measure()
        self.model.train()
        self.window.start += time.perf_counter() - began
        return self.record({"step": self.state.step, **values, "elapsed_s": time.perf_counter() - self.started})

    def validate(self, valid: Sequence[Encoded]) -> dict:
        self.valid_loss = validation_loss(self.model, valid, self.loss_fn, self.config.batch_size, self.pad_id,
                                          self.precision, self.casts, self.dist)
        return {"valid_loss": self.valid_loss}

    def record(self, record: dict) -> dict:
        self.history.append(record)
        return record

    def result(self) -> FitResult:
        return FitResult(self.state, self.total, self.train_loss, self.valid_loss, self.history, self.precision,
                         self.best.summary(), self.best.stopped if self.state.step < self.total else None)


def fit(
    model: nn.Module, train: Sequence[Encoded], valid: Sequence[Encoded], config: TrainConfig, *,
    seed: int, precision: str, loss_fn: LossFn, pad_id: int, fast: FastOptions = FastOptions(),
    on_log: Callable[[dict], None] = lambda record: None,
    on_step: Callable[[TrainState, Snapshot], None] = lambda state, snapshot: None,
    on_task_eval: Callable[[TrainState], dict] | None = None, task_eval_every: int = 0,
    on_interrupt: Callable[[Snapshot], None] | None = None, resume: dict | None = None, dist: Dist = Dist(),
    on_evaluation: Callable[[dict], bool] | None = None,
) -> FitResult:
    """Train `model`'s trainable parameters on `train` as `config` (the recipe's train section) says.

    on_log(record): every `log_every` steps and after each validation, a flat dict (step, epoch, loss,
    lr, grad_norm, tokens_per_s, elapsed_s, ...). on_step(state, snapshot): after every optimizer step;
    `snapshot()` returns the full resumable state, so the caller decides when to checkpoint.
    on_task_eval(state): task metrics every `task_eval_every` steps, logged with the step.
    on_interrupt(snapshot): on Ctrl-C, with the state of the last completed step, before the
    KeyboardInterrupt propagates. resume: a snapshot returned earlier; training continues exactly there.
    dist: this process's rank in a multi-process job (every rank calls fit; the callbacks run on every
    rank, in step, so a snapshot is taken by all of them together); a signal to any rank stops every
    rank after the same step. on_evaluation(record): after each evaluation; True ends training after
    this step (a pruned sweep trial), as early stopping does; keep_best restores the best's weights.
    """
    limit_onednn_primitive_cache(fast.onednn_primitive_cache)  # before the run's first bf16 matmul
    kind = "generation" if train and train[0].labels is not None else "classification"
    run = Training(model, config, total=total_optimizer_steps(len(train), config, dist.world), seed=seed,
                   precision=precision, batching=resolve_batching(config.batching, kind, model), loss_fn=loss_fn,
                   pad_id=pad_id, fast=fast, dist=dist)
    if resume is not None:
        run.restore(resume)
    else:
        seed_everything(dist.rank_seed(seed))
    if fast.model_dropout:
        use_fast_dropout(model)
    steps_per_epoch = batches_per_epoch(len(train), config.batch_size, dist.world)
    if steps_per_epoch == 0:
        raise DataError(f"{len(train)} training example(s) for {dist.world} processes: each rank needs at least one")
    if run.state.step == 0 and valid:
        on_log(run.timed_record(lambda: run.validate(valid)))  # the base model's loss: the curve's start
    model.train()
    with dist.stop_at_step_boundary():  # several ranks: a signal stops them all after the same step
        try:
            for micro in run.step_batches(train):
                grad_norm = run.update(*run.backward(micro))
                run.trim_heap_if_due()
                if run.due(config.log_every) or run.state.step == run.total:
                    on_log(run.train_record(grad_norm, steps_per_epoch))
                if run.due(config.eval_every) or run.state.step == run.total:
                    on_log(run.best.evaluated(run.timed_record(lambda: run.validate(valid)), model, on_evaluation))
                if on_task_eval is not None and run.due(task_eval_every):
                    on_log(run.best.evaluated(run.timed_record(lambda: on_task_eval(run.state)), model, on_evaluation))
                on_step(run.state, run.snapshot)
                if run.stop:  # every rank saw the same all-reduced request: all stop after this step
                    raise KeyboardInterrupt
                if run.best.stopped:  # early stopping, or on_evaluation asked to stop
                    break
        except KeyboardInterrupt:
            # Several ranks save together only when they agreed to stop (a second signal stops at once).
            if on_interrupt is not None and (dist.world == 1 or run.stop):
                on_interrupt(run.snapshot)
            raise
    run.best.restore_into(model, run.state.step)
    return run.result()
