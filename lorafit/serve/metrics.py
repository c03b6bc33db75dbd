"""`GET /metrics`: the server's counters in Prometheus' text format (prometheus-client, the `serve` extra).

    lorafit_requests_total{adapter,status}        finished requests; status: stop, length, error, timeout, disconnected
    lorafit_refused_requests_total{status}        requests answered with an HTTP error before generation (400, 401, 404, 413, 503, ...)
    lorafit_prompt_tokens_total{adapter}          prompt tokens of finished requests
    lorafit_completion_tokens_total{adapter}      tokens sent to clients
    lorafit_time_to_first_token_seconds           histogram, from acceptance (queueing included)
    lorafit_queue_depth                           requests waiting for a place in the batch
    lorafit_running_requests                      rows in the decode batch
    lorafit_loaded_adapters                       adapters offered (and lorafit_adapter_slots_in_use: pinned ones too)
    lorafit_batch_size                            histogram of rows per decode step
    lorafit_step_seconds, lorafit_prefill_seconds histograms of decode-step and prefill times

Adapter labels are adapter names (the base's name for the base), bounded by --max-adapters. Each
Metrics has its own registry, so several servers in one process (tests) do not share counters.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.responses import Response

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("lorafit_requests", "Finished requests by adapter and outcome", ["adapter", "status"],
                                registry=r)
        self.refused = Counter("lorafit_refused_requests", "Requests answered with an HTTP error", ["status"], registry=r)
        self.prompt_tokens = Counter("lorafit_prompt_tokens", "Prompt tokens of finished requests", ["adapter"], registry=r)
        self.completion_tokens = Counter("lorafit_completion_tokens", "Tokens sent to clients", ["adapter"], registry=r)
        self.ttft = Histogram("lorafit_time_to_first_token_seconds", "From acceptance to the first token", buckets=SECONDS,
                              registry=r)
        self.batch_size = Histogram("lorafit_batch_size", "Rows per decode step", buckets=ROWS, registry=r)
        self.step_seconds = Histogram("lorafit_step_seconds", "Decode step time", buckets=SECONDS, registry=r)
        self.prefill_seconds = Histogram("lorafit_prefill_seconds", "Prefill (admission) time", buckets=SECONDS, registry=r)
        self.queue_depth = Gauge("lorafit_queue_depth", "Requests waiting for a place in the batch", registry=r)
        self.running = Gauge("lorafit_running_requests", "Rows in the decode batch", registry=r)
        self.adapters = Gauge("lorafit_loaded_adapters", "Adapters offered", registry=r)
        self.slots = Gauge("lorafit_adapter_slots_in_use", "Adapter slots holding weights", registry=r)

    def watch(self, engine) -> None:
        """Read the gauges from `engine` at each scrape."""
        self.queue_depth.set_function(engine.queue_depth)
        self.running.set_function(lambda: len(engine.batch.rows))
        self.adapters.set_function(lambda: len(engine.adapters()))
        self.slots.set_function(engine.registry.slots_in_use)

    # ------------------------------------------------------------------------------------ events

    def engine_ran(self, what: str, rows: int, seconds: float) -> None:
        """The engine's observer hook: one decode step or prefill of `rows` rows took `seconds`."""
        if what == "step":
            self.batch_size.observe(rows)
            self.step_seconds.observe(seconds)
        else:
            self.prefill_seconds.observe(seconds)

    def request_ended(self, run) -> None:
        """A CompletionRun ended (any outcome)."""
        self.requests.labels(run.picked, run.outcome).inc()
        self.prompt_tokens.labels(run.picked).inc(len(run.prompt_ids))
        self.completion_tokens.labels(run.picked).inc(len(run.text.tokens))
        if run.job.first_token_at is not None:
            self.ttft.observe(run.job.first_token_at - run.job.submitted)

    def request_refused(self, status: int) -> None:
        self.refused.labels(str(status)).inc()

    async def endpoint(self):
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
