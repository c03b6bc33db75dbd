"""The scheduler: one thread (the main one in `lorafit serve`) that owns the model and runs continuous
batching over a `DecodeBatch`.

    engine = Engine(host, max_batch=32, max_queue=256); engine.start()
    job = engine.submit(prompt_ids, "sql", Sampling(...), sink)     # 404 / 503 raised here, at once
    sink(("tokens", [ids...])) ... sink(("done", "eos" | "length"))  # called from the engine thread
    engine.cancel(job)                                               # client gone, or a stop string hit

Each loop iteration (`run_once`), between two decode steps:
  1. run queued commands (load an adapter into a slot, free a retired slot): the model is only ever
     touched by this thread, so a load never lands in the middle of a forward;
  2. drop cancelled jobs (from the waiting queue, or `DecodeBatch.remove` from the running batch);
  3. admit waiting jobs while the batch has room (`add`: prefills of up to 16 prompts, first tokens sampled);
  4. one `step` for every running row; rows that finished (eos, max_new_tokens) leave the batch.
New tokens go to each job's sink after the prefill (so the first token does not wait for a step)
and after the step. `stats()` (served on /health) counts the engine's time: decode steps and the rows
they carried, prefills and the requests they admitted, each with its seconds.

Adapter slots are pinned per job. `submit` resolves the public name to the adapter's slot and takes a
reference on it; `unload` removes the public name at once (later requests get 404) but the slot is
zeroed and freed only when its last job finishes. Re-loading a name while its old slot is still
pinned installs the new weights in another slot (the host knows it under an internal name `name#k`),
so an admitted request always decodes with the adapter it was admitted with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from lorafit.adapters.decode import Request
from lorafit.serve.protocol import APIError

log = logging.getLogger("lorafit.serve")

Sink = Callable[[tuple], None]


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(eq=False)
class Job:
    """One request inside the engine. Compared and hashed by identity (it is the DecodeBatch row key)."""

    prompt_ids: list[int]
    adapter: str | None  # public name, None = the base
    internal: str | None  # the host's name for the pinned slot
    slot: int
    sampling: Sampling
    sink: Sink
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    sent: int = 0
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False


class Engine:
    """Continuous batching over one AdapterHost; see the module docstring."""

    def __init__(self, host, *, max_batch: int = 32, max_queue: int = 256):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.host, self.max_batch, self.max_queue = host, max_batch, max_queue
        self.batch = host.new_decode_batch()
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._cancelled: set[Job] = set()
        self._commands: deque[tuple[Callable[[], object], Future]] = deque()
        self._names: dict[str, str] = {name: name for name in host.adapters()}  # public -> internal
        self._slots: dict[str, int] = {n: info["slot"] for n, info in host.adapters().items()}  # internal -> slot
        self._refs: dict[str, int] = {}
        self._retiring: set[str] = set()
        self._generation = 0
        self._thread: threading.Thread | None = None
        self._stop = False
        self._counters = {"steps": 0, "step_rows": 0, "step_s": 0.0, "prefills": 0, "prefill_rows": 0, "prefill_s": 0.0}

    # ------------------------------------------------------------------------------------ thread

    def start(self) -> None:
        """Run the scheduler on a new thread (tests, embedding). `lorafit serve` calls `run_forever` on
        the main thread instead: torch's OpenMP kernels run slower from a second Python thread (a
        16-row SmolLM2 step over 8 adapters, 2 threads: 157 ms on the main thread, 222 ms from a
        second one; bench/bench_decode_step.py --in-thread, docs/serving.md)."""
        self._thread = threading.Thread(target=self.run_forever, name="lorafit-engine", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the scheduler to return after its current iteration; safe from a signal handler (no lock)."""
        self._stop = True

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def run_forever(self) -> None:
        """The scheduler loop on the calling thread, until `stop` / `request_stop`."""
        while True:
            with self._lock:
                while not (self._stop or self._waiting or self._commands or self._cancelled or self.batch.rows):
                    self._lock.wait(timeout=0.5)  # a timeout, so that request_stop (no notify) is seen
                if self._stop:
                    return
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - a bug must not leave clients waiting forever
                log.exception("scheduler iteration failed; failing the running requests")
                self._guarded(self._raise, [row.request.key for row in self.batch.rows], reset=True)

    @staticmethod
    def _raise():
        raise RuntimeError("scheduler iteration failed")

    # ------------------------------------------------------------------------------------ client side

    def adapters(self) -> list[str]:
        with self._lock:
            return sorted(self._names)

    def has_adapter(self, name: str) -> bool:
        with self._lock:
            return name in self._names

    def stats(self) -> dict:
        with self._lock:
            counters = {k: round(v, 3) if isinstance(v, float) else v for k, v in self._counters.items()}
            return {"running": len(self.batch.rows), "waiting": len(self._waiting), "max_batch": self.max_batch,
                    "max_queue": self.max_queue} | counters

    def submit(self, prompt_ids: list[int], adapter: str | None, sampling: Sampling, sink: Sink) -> Job:
        """Queue a request on `adapter` (None: the base), pinning its slot. 404 unknown adapter, 503 queue full."""
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise APIError(503, f"server busy: {len(self._waiting)} requests are waiting (--max-queue "
                                    f"{self.max_queue}); retry later", code="queue_full")
            if adapter is None:
                internal, slot = None, 0
            elif adapter in self._names:
                internal = self._names[adapter]
                slot = self._slots[internal]
                self._refs[internal] = self._refs.get(internal, 0) + 1
            else:
                raise APIError(404, f"the model {adapter!r} does not exist", param="model", code="model_not_found")
            job = Job(list(prompt_ids), adapter, internal, slot, sampling, sink)
            self._waiting.append(job)
            self._lock.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """Stop a job (its client went away, or a stop string ended it); its slot reference is released."""
        with self._lock:
            if job.finish_reason is None and not job.cancelled:
                job.cancelled = True
                self._cancelled.add(job)
                self._lock.notify_all()

    def load_adapter(self, name: str, directory: str) -> Future:
        """Install an adapter between two decode steps; the Future fails with LorafitError/APIError."""
        with self._lock:
            if name in self._names:
                raise APIError(400, f"adapter {name!r} is already loaded; unload it first", param="lora_name",
                               code="adapter_exists")
        return self._command(lambda: self._install(name, directory))

    def unload_adapter(self, name: str) -> None:
        """Remove `name` now (new requests get 404); its slot is freed once its running requests finish."""
        with self._lock:
            if name not in self._names:
                raise APIError(404, f"adapter {name!r} is not loaded", param="lora_name", code="model_not_found")
            internal = self._names.pop(name)
            self._retiring.add(internal)
            if not self._refs.get(internal):
                self._command_locked(lambda: self._release(internal))

    # ------------------------------------------------------------------------------------ engine side

    def run_once(self) -> bool:
        """One scheduler iteration (see the module docstring). Returns whether there was anything to do."""
        with self._lock:
            commands, self._commands = list(self._commands), deque()
            cancelled, self._cancelled = self._cancelled, set()
            if cancelled:
                self._waiting = deque(j for j in self._waiting if j not in cancelled)
            room = self.max_batch - len(self.batch.rows)
            admit = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        for fn, future in commands:
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(e)
        finished = []
        if cancelled:
            self.batch.remove(cancelled)
            for job in cancelled:
                if job.finish_reason is None:  # it may have finished just before the cancel arrived
                    job.finish_reason = "cancelled"
                    self._unpin(job)
        if admit:
            requests = [Request(j.prompt_ids, j.slot, j.sampling.max_new_tokens, j.sampling.temperature,
                                j.sampling.top_p, j.sampling.seed, key=j) for j in admit]
            started = time.perf_counter()
            finished += self._guarded(lambda: self.batch.add(requests), admit, reset=False)
            self._count("prefill", len(admit), started)
            self._deliver(finished)  # first tokens out now, not after the next step (time to first token)
            done_at_add, finished = bool(finished), []
        else:
            done_at_add = False
        if self.batch.rows:
            rows, started = len(self.batch.rows), time.perf_counter()
            finished += self._guarded(self.batch.step, [row.request.key for row in self.batch.rows], reset=True)
            self._count("step", rows, started)
        self._deliver(finished)
        return bool(commands or cancelled or admit or done_at_add or finished or self.batch.rows)

    def _count(self, what: str, rows: int, started: float) -> None:
        with self._lock:
            self._counters[what + "s"] += 1
            self._counters[what + "_rows"] += rows
            self._counters[what + "_s"] += time.perf_counter() - started

    def _guarded(self, fn, jobs: list[Job], *, reset: bool) -> list:
        """Run a batch operation; if it raises, fail `jobs` (and with `reset` every running row, on a fresh
        batch): the server lives on. A failed `add` leaves the running batch as it was."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            log.exception("decode failed")
            failed = set(jobs)
            if reset:
                failed |= {row.request.key for row in self.batch.rows}
                self.batch = self.host.new_decode_batch()
            for job in failed:
                job.finish_reason = "error"
                job.sink(("error", f"{type(e).__name__}: {e}"))
                self._unpin(job)
            return []

    def _deliver(self, finished) -> None:
        now = time.perf_counter()
        for row in [*self.batch.rows, *finished]:
            job: Job = row.request.key
            if job.finish_reason == "error":
                continue
            if len(row.tokens) > job.sent:
                job.first_token_at = job.first_token_at or now
                job.tokens = row.tokens
                new, job.sent = row.tokens[job.sent :], len(row.tokens)
                job.sink(("tokens", new))
        for row in finished:
            job = row.request.key
            if job.finish_reason is None:
                job.finish_reason = row.finish_reason
                job.sink(("done", row.finish_reason))
                self._unpin(job)

    def _unpin(self, job: Job) -> None:
        if job.internal is None:
            return
        with self._lock:
            self._refs[job.internal] -= 1
            release = self._refs[job.internal] == 0 and job.internal in self._retiring
        if release:
            self._release(job.internal)

    def _release(self, internal: str) -> None:
        with self._lock:
            if self._refs.get(internal) or internal not in self._retiring:
                return
            self._retiring.discard(internal)
            self._refs.pop(internal, None)
            self._slots.pop(internal, None)
        self.host.unload_adapter(internal)
        log.info("adapter slot of %s freed", internal)

    def _install(self, name: str, directory: str) -> dict:
        with self._lock:
            if name in self._names:
                raise APIError(400, f"adapter {name!r} is already loaded; unload it first", param="lora_name",
                               code="adapter_exists")
            taken = set(self._slots)
            internal = name
            while internal in taken:
                self._generation += 1
                internal = f"{name}#{self._generation}"
        self.host.load_adapter(internal, directory)  # LorafitError if it does not fit this base
        slot = self.host.adapters()[internal]["slot"]
        with self._lock:
            self._slots[internal] = slot
            self._names[name] = internal
        return {"name": name, "slot": slot}

    def _command(self, fn) -> Future:
        with self._lock:
            return self._command_locked(fn)

    def _command_locked(self, fn) -> Future:
        future: Future = Future()
        self._commands.append((fn, future))
        self._lock.notify_all()
        return future

