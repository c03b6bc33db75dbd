"""Several processes, one training run: the process group, each rank's facts, and the few collectives
the loop needs. One process is the special case: `Dist()` (rank 0 of 1), whose collectives return
their input, so `fit` has one code path.

    torchrun (or `lorafit train --nproc N`) -> RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_*
        -> session(): init_process_group(nccl on GPUs, gloo on CPU, timeout 60 s), torch threads
        -> prepare(model): ddp: trainable weights broadcast from rank 0; fsdp: fully_shard per layer + root
        -> per optimizer step: all-reduce the target-token count (before backward), then the trainable
           gradients (ddp; fsdp reduce-scatters its own) and [loss, tokens, examples, stop] (after)

Why gradients are all-reduced by hand in `ddp` mode rather than by DistributedDataParallel:
- LoRA gradients are ~0.1-1% of the weights (SmolLM2-135M, r=8 q/v: 0.46 M floats, 1.8 MB), so one flat
  all-reduce per optimizer step costs little; the overlap of communication with the backward pass,
  DDP's main gain, buys nothing measurable at that size.
- one reduction per optimizer step, not per micro-batch: no `no_sync()` around grad_accum micro-batches.
- a SUM, not DDP's mean: the loss is already divided by the GLOBAL number of target tokens of the step,
  so summed gradients are exactly those of one process on the whole global batch.
- the loss of allowlisted causal LMs (train/loss.py) calls the backbone and the head directly, not
  model.forward; DDP prepares its reducer in its own forward and would be bypassed.
- a trainable parameter without a gradient (an unused head, a layer a model skips) needs neither
  find_unused_parameters (a graph walk every step) nor static_graph (a promise that the set never
  changes): its slot is zero, and it keeps grad None when it got none on every rank, as on one process.
- nothing is broadcast at start-up except the trainable weights: DDP's constructor broadcasts every
  parameter and buffer from rank 0 (the whole frozen base, ~540 MB for SmolLM2) unless init_sync=False;
  here every rank loads the same checkpoint and seeds LoRA alike, and only the LoRA weights (and a new
  head) are broadcast, to be certain all replicas start equal.
"""

from __future__ import annotations

import datetime
import os
import signal
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from lorafit.models.device import compute_device

# A collective that waits longer than this ends every rank with an error (gloo's default is 30 min):
# a rank that died or hangs stops the whole job within about a minute. LORAFIT_DIST_TIMEOUT overrides.
DEFAULT_TIMEOUT_S = 60
BUCKET_BYTES = 64 * 2**20  # the flat gradient all-reduce goes in buckets of at most this (full fine-tuning)


@dataclass
class Dist:
    """This process's place in the job. The default is a single process (no process group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    mode: str = "ddp"  # ddp: replicated model, gradients all-reduced; fsdp: FSDP2 fully_shard
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = ""
    threads: int = 0  # torch threads this rank runs (0: left as it was)
    stop_requested: bool = False  # a SIGINT / SIGTERM seen since the last step boundary
    all_reduced_bytes: int = 0  # gradient bytes all-reduced so far by this rank (bench_distributed.py)

    @property
    def main(self) -> bool:
        """Rank 0: the only one that writes files and prints."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world > 1 and self.mode == "fsdp"

    # ---- collectives (no-ops on one process) -----------------------------------------------------
    def sum(self, values: Sequence[float], dtype: torch.dtype = torch.float64) -> list[float]:
        """Element-wise sum of `values` over the ranks (every rank gets the result)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(list(values), dtype=dtype, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the other ranks do (it fills an on-disk cache they then read)."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (pickled; a LoRA checkpoint is a few MB)."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj) -> list:
        """[rank 0's obj, rank 1's obj, ...] on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Sum the trainable gradients over the ranks (ddp). A parameter with no gradient counts as
        zero; it keeps grad None only when no rank produced one (then AdamW skips it, as on one process).
        fsdp: nothing to do, FSDP reduce-scattered the gradients during backward."""
        if self.world == 1 or self.mode == "fsdp" or not params:
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        torch.distributed.all_reduce(has)
        for bucket in _buckets(params, BUCKET_BYTES):
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
            torch.distributed.all_reduce(flat)
            self.all_reduced_bytes += flat.numel() * flat.element_size()
            offset = 0
            for p in bucket:
                n = p.numel()
                p.grad = flat[offset : offset + n].view_as(p).clone()
                offset += n
        for p, got in zip(params, has.tolist(), strict=True):
            if got == 0:
                p.grad = None

    def broadcast_trainable(self, model: nn.Module) -> None:
        """Rank 0's trainable weights on every rank (the frozen base is not sent: each rank loaded it)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    torch.distributed.broadcast(p.data, src=0)

    # ---- ranks' shares ------------------------------------------------------------------------------
    def rank_seed(self, seed: int) -> int:
        """This rank's seed for dropout: rank 0 keeps the run's seed (one process is unchanged), the
        others differ, so the ranks draw different dropout masks."""
        return seed + 1_000_003 * self.rank

    def my_share(self, count: int) -> list[int]:
        """Indices i < count with i % world == rank: this rank's batches of an evaluation."""
        return list(range(self.rank, count, self.world))

    # ---- stopping together ------------------------------------------------------------------------------
    @contextmanager
    def stop_at_step_boundary(self) -> Iterator[None]:
        """Several ranks: SIGINT / SIGTERM only set `stop_requested`; the loop all-reduces it with the
        step's numbers and every rank stops after the same optimizer step, so the checkpoint they write
        together is one consistent state. A second Ctrl-C raises KeyboardInterrupt at once (a Ctrl-C
        reaches every process, and torchrun then sends SIGTERM too: that one waits for the boundary).
        One process: nothing changes (the signal raises KeyboardInterrupt where it lands)."""
        if self.world == 1 or not _main_thread():
            yield
            return

        seen: list[int] = []

        def handler(signum, frame):
            if signum == signal.SIGINT and signal.SIGINT in seen:  # Ctrl-C twice: stop now, no checkpoint
                raise KeyboardInterrupt
            seen.append(signum)
            self.stop_requested = True

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)

    # ---- models -------------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        """The model as this job trains it: moved to this rank's device; ddp: trainable weights made
        equal on every rank; fsdp: FSDP2 units, one per decoder layer, then the root."""
        if self.device.type != "cpu":
            model.to(self.device)
        if self.world == 1:
            return model
        if self.mode == "ddp":
            self.broadcast_trainable(model)
            return model
        from torch.distributed.fsdp import fully_shard

        layers = decoder_layers(model)
        if not layers:
            from lorafit.errors import ModelError

            raise ModelError(f"train.distributed: fsdp shards one unit per decoder layer, and "
                             f"{type(model).__name__} lists none (_no_split_modules); use ddp")
        self.broadcast_trainable(model)
        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
        for unit in (*layers, model):  # each unit reduces its own gradients: a SUM, not FSDP's mean, as
            unit.set_gradient_divide_factor(1.0)  # the loss is already divided by the global token count;
            unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
        return model

    @contextmanager
    def full_trainable(self, model: nn.Module) -> Iterator[None]:
        """fsdp: inside the block the trainable parameters are whole tensors on every rank (gathered
        from their shards, every rank calls this), so saving code reads them as on one process."""
        if not self.sharded:
            yield
            return
        swapped = []
        for name, p in list(model.named_parameters()):
            if p.requires_grad and hasattr(p, "full_tensor"):
                module_name, _, leaf = name.rpartition(".")
                module = model.get_submodule(module_name) if module_name else model
                swapped.append((module, leaf, p))
                module._parameters[leaf] = nn.Parameter(p.detach().full_tensor(), requires_grad=True)
        try:
            yield
        finally:
            for module, leaf, p in swapped:
                module._parameters[leaf] = p


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP shards one by one: modules whose class is named in the model's
    `_no_split_modules` (transformers: LlamaDecoderLayer, GPT2Block, ...)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (fsdp) as the whole tensor; any other tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def load_value(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy the whole tensor `value` into `param`, which may be a DTensor shard (fsdp)."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements)
    param.copy_(value)


def _buckets(params: Sequence[nn.Parameter], limit: int) -> Iterable[list[nn.Parameter]]:
    bucket, size = [], 0
    for p in params:
        bucket.append(p)
        size += p.numel() * p.element_size()
        if size >= limit:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------------- the session


def stop_with_parent() -> None:
    """Linux: SIGTERM this worker when its launcher dies, even by SIGKILL (torchrun starts each worker
    in its own session, so killing the launcher alone would leave the workers training): the ranks then
    stop together after a step, with a checkpoint, as on any SIGTERM."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the launcher died before prctl
            os.kill(os.getpid(), signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def launched_by_torchrun() -> bool:
    """This process is a worker started by torchrun / torch.distributed.run (it sets these)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_share(local_world: int) -> int:
    """Torch threads per rank: the cores this machine gives us // the ranks on this machine (at least
    1); LORAFIT_THREADS sets it instead."""
    return int(os.environ.get("LORAFIT_THREADS") or 0) or max(1, available_cores() // max(local_world, 1))


@contextmanager
def session(mode: str = "ddp", device: str = "auto") -> Iterator[Dist]:
    """The job this process belongs to. Under torchrun: joins the process group (nccl when the ranks
    run on GPUs, else gloo; collectives time out after 60 s), sets its torch threads and device (GPU
    `LOCAL_RANK`), and leaves the group at the end. Otherwise: a single process on
    `compute_device(device)` (a recipe's `device`: auto, cpu or cuda), nothing else to set up."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1 and not torch.distributed.is_initialized():
        yield Dist(mode=mode, device=compute_device(device))
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    gpu = compute_device(device).type == "cuda"
    backend = "nccl" if gpu else "gloo"
    device = torch.device("cuda", local_rank) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    threads = thread_share(local_world)
    torch.set_num_threads(threads)
    stop_with_parent()
    timeout = datetime.timedelta(seconds=float(os.environ.get("LORAFIT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    owned = not torch.distributed.is_initialized()
    if owned:
        torch.distributed.init_process_group(backend, timeout=timeout, device_id=device if gpu else None)
    try:
        yield Dist(rank, world, local_rank, local_world, mode, device, backend, threads)
    finally:
        if owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def describe(dist: Dist, batch_size: int, grad_accum: int) -> str:
    """The log line of a multi-process run: processes, backend, threads, and the global batch."""
    return (
        f"distributed: {dist.world} processes ({dist.mode}, {dist.backend}), {dist.local_world} on this machine, "
        f"{dist.threads} torch thread(s) each (cores {available_cores()} // {dist.local_world}); global batch "
        f"{batch_size * dist.world * grad_accum} = {batch_size} per rank x {dist.world} ranks x {grad_accum} grad_accum"
    )


def is_peer_failure(error: BaseException) -> bool:
    """An error that only says another rank went away (its own error is shown by that rank)."""
    if isinstance(error, getattr(torch.distributed, "DistNetworkError", ())):
        return True
    text = str(error).lower()
    return any(s in text for s in ("connection closed by peer", "connection reset", "broken pipe", "timed out",
                                   "timeout", "socket closed", "nccl communicator was aborted"))


# ---------------------------------------------------------------------------------------------- the launcher


def launch(nproc: int, argv: list[str]) -> int:
    """`lorafit train ... --nproc N`: start N workers `python -m lorafit ARGV` on this machine through
    torch.distributed.run (what `torchrun --standalone --nproc_per_node N -m lorafit ARGV` does), and
    return the job's exit code: 0, or the failing worker's (1, 2, 3, 130). Each worker already printed
    its own error, so torchrun's failure report is not printed again. Each worker gets
    cores // N torch threads (OMP_NUM_THREADS, unless set)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", str(thread_share(nproc)))
    for name in list(logging.root.manager.loggerDict):  # each worker shows its own error; no report on top
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(
        ["--standalone", "--nproc_per_node", str(nproc), "--monitor_interval", "0.1", "-m", "lorafit", *argv]
    )
    from lorafit.runs.interrupts import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # until torchrun's agent installs its own handlers (it passes them on)
            run(args)
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        code = failure.exitcode
        return code if code > 0 else 128 - code  # killed by a signal: 128 + its number, as a shell says
    except (SignalException, KeyboardInterrupt):  # Ctrl-C / SIGTERM to the launcher: workers got SIGTERM
        return 130
    return 0
