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
     `add` is atomic, so if it fails the jobs are admitted again one by one: only the job that fails
     alone gets an error, the others run as if it had never come;
  4. one `step` for every running row; rows that finished (eos, max_new_tokens) leave the batch.
New tokens go to each job's sink after the prefill (so the first token does not wait for a step)
and after the step. `stats()` (served on /health) counts the engine's time: decode steps and the rows
they carried, prefills and the requests they admitted, each with its seconds.

Adapter slots are pinned per job (serve/registry.py keeps the names, slots and references). `submit`
resolves the public name to the adapter's slot and takes a reference on it; `unload` removes the
public name at once (later requests get 404) but the slot is zeroed and freed only when its last job
finishes. Re-loading a name while its old slot is still pinned installs the new weights in another
slot, so an admitted request always decodes with the adapter it was admitted with.

Loading reads and checks the adapter's files on a worker thread (`AdapterHost.read_adapter`); only
the install into the slot's tensors is a command between two steps, so running streams do not stall
while a file is read.

`observer` (optional; serve/metrics.py) is told each step's and prefill's rows and seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from lorafit.adapters.decode import Request, check_request
from lorafit.serve.protocol import APIError
from lorafit.serve.registry import DEFAULT_MAX_ADAPTERS, AdapterRegistry

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

    def __init__(self, host, *, max_batch: int = 32, max_queue: int = 256, max_adapters: int = DEFAULT_MAX_ADAPTERS,
                 observer=None):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.host, self.max_batch, self.max_queue, self.observer = host, max_batch, max_queue, observer
        self.batch = host.new_decode_batch()
        self.registry = AdapterRegistry({n: info["slot"] for n, info in host.adapters().items()},
                                        max_adapters=max_adapters)
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._cancelled: set[Job] = set()
        self._commands: deque[tuple[Callable[[], object], Future]] = deque()
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorafit-adapter-read")
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
        self._reader.shutdown(wait=False, cancel_futures=True)

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
        return self.registry.names()

    def has_adapter(self, name: str) -> bool:
        return self.registry.has(name)

    def queue_depth(self) -> int:
        with self._lock:
            return len(self._waiting)

    def stats(self) -> dict:
        with self._lock:
            counters = {k: round(v, 3) if isinstance(v, float) else v for k, v in self._counters.items()}
            return {"running": len(self.batch.rows), "waiting": len(self._waiting), "max_batch": self.max_batch,
                    "max_queue": self.max_queue, "slots_in_use": self.registry.slots_in_use()} | counters

    def submit(self, prompt_ids: list[int], adapter: str | None, sampling: Sampling, sink: Sink) -> Job:
        """Queue a request on `adapter` (None: the base), pinning its slot. 404 unknown adapter, 503 queue full."""
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise APIError(503, f"server busy: {len(self._waiting)} requests are waiting (--max-queue "
                                    f"{self.max_queue}); retry later", code="queue_full")
            internal, slot = (None, 0) if adapter is None else self.registry.pin(adapter)
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
        """Load an adapter: read and check its files on a worker thread, then install it between two
        decode steps. APIError 400 at once if the name is taken or --max-adapters are loaded; the Future
        gives {"name", "slot"} or fails with LorafitError (the files do not fit this base)."""
        internal = self.registry.reserve(name)
        future: Future = Future()

        def read() -> None:
            try:
                parts = self.host.read_adapter(internal, directory)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
                self.registry.abandon(name)
                future.set_exception(e)
                return
            self._command(lambda: self._install(name, internal, parts, directory), future)

        self._reader.submit(read)
        return future

    async def load_adapter_async(self, name: str, directory: str) -> dict:
        """`load_adapter` for a coroutine (the HTTP route)."""
        import asyncio

        return await asyncio.wrap_future(self.load_adapter(name, directory))

    def unload_adapter(self, name: str) -> None:
        """Remove `name` now (new requests get 404); its slot is freed once its running requests finish."""
        internal, free_now = self.registry.remove(name)
        if free_now:
            self._command(lambda: self._release(internal))

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
            started = time.perf_counter()
            finished += self._admit(admit)
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

    def _admit(self, jobs: list[Job]) -> list:
        """Prefill `jobs` into the batch; the rows that finished on their first token. A job the decode
        loop refuses (`check_request`) or whose prefill fails gets an error alone."""
        requests = []
        for job in jobs:
            request = Request(job.prompt_ids, job.slot, job.sampling.max_new_tokens, job.sampling.temperature,
                              job.sampling.top_p, job.sampling.seed, key=job)
            try:
                check_request(request, self.batch.vocab_size)
            except ValueError as e:
                self._fail([job], e)
                continue
            requests.append(request)
        try:
            return self.batch.add(requests)
        except Exception:  # noqa: BLE001 - add is atomic: the batch is as before; find the culprit alone
            log.exception("admission of %d requests failed; admitting them one by one", len(requests))
        finished = []
        for request in requests:
            finished += self._guarded(lambda r=request: self.batch.add([r]), [request.key], reset=False)
        return finished

    def _count(self, what: str, rows: int, started: float) -> None:
        seconds = time.perf_counter() - started
        with self._lock:
            self._counters[what + "s"] += 1
            self._counters[what + "_rows"] += rows
            self._counters[what + "_s"] += seconds
        if self.observer is not None:
            self.observer.engine_ran(what, rows, seconds)

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
            self._fail(failed, e)
            return []

    def _fail(self, jobs, error: Exception) -> None:
        for job in jobs:
            job.finish_reason = "error"
            job.sink(("error", f"{type(error).__name__}: {error}"))
            self._unpin(job)

    def _deliver(self, finished) -> None:
        now = time.perf_counter()
        for row in [*self.batch.rows, *finished]:
            job: Job = row.request.key
            if job.finish_reason == "error":
                continue
            if len(row.tokens) > job.sent:
                job.first_token_at = job.first_token_at or now
                new, job.sent = row.tokens[job.sent :], len(row.tokens)
                job.tokens += new  # the job's own list: what was sent, never the row's live one
                job.sink(("tokens", new))
        for row in finished:
            job = row.request.key
            if job.finish_reason is None:
                job.finish_reason = row.finish_reason
                job.sink(("done", row.finish_reason))
                self._unpin(job)

    def _unpin(self, job: Job) -> None:
        if job.internal is not None and self.registry.unpin(job.internal):
            self._release(job.internal)

    def _release(self, internal: str) -> None:
        if self.registry.release(internal):
            self.host.unload_adapter(internal)
            log.info("adapter slot of %s freed", internal)

    def _install(self, name: str, internal: str, parts, directory: str) -> dict:
        try:
            slot = self.host.install_adapter(internal, parts, directory)
        except BaseException:
            self.registry.abandon(name)
            raise
        self.registry.installed(name, internal, slot)
        return {"name": name, "slot": slot}

    def _command(self, fn, future: Future | None = None) -> Future:
        """Run `fn` on the engine thread before the next step; its result (or error) goes to `future`."""
        future = future or Future()
        with self._lock:
            self._commands.append((fn, future))
            self._lock.notify_all()
        return future
