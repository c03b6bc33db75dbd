"""`lorafit serve`: check the options, load the base and adapters once, start the engine, serve HTTP.

    options -> check (routes, adapter root, names, limits; before any model loads) -> AdapterHost.load(base)
            -> load_adapter(name, dir) for each --adapter -> Engine -> build_app (+ /metrics)
            -> uvicorn on a second thread, Engine.run_forever on this (the main) thread
"""

from __future__ import annotations

import ipaddress
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lorafit.errors import AdapterError, LorafitError, ModelError


class ServeError(LorafitError):
    """A bad `lorafit serve` option (route, adapter root, name clash)."""

    exit_code = 2


@dataclass(kw_only=True)
class ServeOptions:
    """Every `lorafit serve` option (built by keyword: `ServeOptions(model=..., max_batch=...)`)."""

    model: str
    adapters: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    max_queue: int = 256
    max_rank: int = 64
    api_key: str | None = None
    adapter_root: Path | None = None
    allow_adapter_loading: bool = False
    routes: list[str] = field(default_factory=list)
    route_seed: int = 0
    precision: str = "auto"
    pack_weights: bool = True
    max_adapters: int = 64
    max_model_len: int | None = None  # None: the model's context (max_position_embeddings)
    max_request_bytes: int = 1 << 20
    request_timeout: float = 600.0


def check_options(opts: ServeOptions):
    """Everything that can be checked before the model loads; returns (base name, {route: Route})."""
    from lorafit.serve.routing import Route, RouteError, parse_route
    from lorafit.serve.security import name_problem

    base = opts.name or opts.model
    if len(opts.adapters) > opts.max_adapters:
        raise ServeError(f"{len(opts.adapters)} --adapter options, more than --max-adapters {opts.max_adapters}")
    for name, directory in opts.adapters.items():
        if name_problem(name):
            raise ServeError(f"--adapter {name}: {name_problem(name)}")
        if name == base:
            raise ServeError(f"--adapter {name}: the base model is already called {base!r}; pick another name")
        if not Path(directory).is_dir():
            raise AdapterError(f"--adapter {name}={directory}: no such directory")
    routes = {}
    for spec in opts.routes:
        try:
            route_name, weights = parse_route(spec)
        except RouteError as e:
            raise ServeError(str(e)) from None
        if name_problem(route_name):
            raise ServeError(f"--route {spec!r}: {name_problem(route_name)}")
        if route_name == base or route_name in opts.adapters or route_name in routes:
            raise ServeError(f"--route {spec!r}: {route_name!r} is already the name of the base, an adapter or a route")
        unknown = [t for t in weights if t != base and t not in opts.adapters]
        if unknown:
            raise ServeError(f"--route {spec!r}: {unknown[0]!r} is not an --adapter name or the base ({base!r})")
        routes[route_name] = Route(route_name, weights, seed=opts.route_seed)
    if opts.allow_adapter_loading and opts.adapter_root is None:
        raise ServeError("--allow-adapter-loading needs --adapter-root DIR: the only directory adapters may come from")
    if opts.adapter_root is not None and not opts.adapter_root.is_dir():
        raise ServeError(f"--adapter-root {opts.adapter_root}: no such directory")
    for option, value in (("--max-batch", opts.max_batch), ("--max-queue", opts.max_queue),
                          ("--max-adapters", opts.max_adapters), ("--max-model-len", opts.max_model_len or 1),
                          ("--max-request-bytes", opts.max_request_bytes)):
        if value < 1:
            raise ServeError(f"{option} must be >= 1, got {value}")
    if not opts.request_timeout > 0:
        raise ServeError(f"--request-timeout must be > 0 seconds, got {opts.request_timeout}")
    return base, routes


def _metrics():
    """/metrics when prometheus-client is installed (the `serve` extra), else None (a warning)."""
    try:
        from lorafit.serve.metrics import Metrics
    except ImportError:
        logging.getLogger("lorafit.serve").warning("prometheus-client is not installed: no /metrics "
                                                   "(pip install -e '.[serve]')")
        return None
    return Metrics()


def _public_bind(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def run_serve(opts: ServeOptions, info=print) -> None:
    """Serve until Ctrl-C / SIGTERM."""
    base, routes = check_options(opts)  # a typo fails in a blink, before torch loads
    import uvicorn

    from lorafit.adapters.host import AdapterHost
    from lorafit.serve.app import ServerConfig, build_app, model_limits
    from lorafit.serve.engine import Engine

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("lorafit.serve").setLevel(logging.INFO)
    host = AdapterHost.load(opts.model, task="generate", max_rank=opts.max_rank, precision=opts.precision,
                            pack_weights=opts.pack_weights)
    for name, directory in opts.adapters.items():
        host.load_adapter(name, directory)
    try:  # warm-up, and a model the decode loop cannot serve fails here, not on the first request
        host.generate(["Hello"], max_new_tokens=2)
    except NotImplementedError as e:
        raise ModelError(f"model {opts.model!r} cannot be served: {e}") from None
    try:
        model_limits(host.model, opts.max_model_len)
    except ValueError as e:
        raise ServeError(str(e)) from None
    metrics = _metrics()
    engine = Engine(host, max_batch=opts.max_batch, max_queue=opts.max_queue, max_adapters=opts.max_adapters,
                    observer=metrics)
    config = ServerConfig(base_name=base, api_key=opts.api_key, adapter_root=opts.adapter_root,
                          allow_adapter_loading=opts.allow_adapter_loading, routes=routes,
                          max_model_len=opts.max_model_len, max_request_bytes=opts.max_request_bytes,
                          request_timeout=opts.request_timeout)
    if metrics is not None:
        metrics.watch(engine)
    app = build_app(engine, config, metrics)
    if _public_bind(opts.host) and not opts.api_key:
        info(f"warning: serving on {opts.host} (reachable from other machines) without --api-key")
    info(f"serving {base} with adapters [{', '.join(opts.adapters) or 'none'}]"
         + (f" and routes [{', '.join(routes)}]" if routes else "")
         + f" on http://{opts.host}:{opts.port}/v1 (max batch {opts.max_batch}, queue {opts.max_queue}, "
           f"{host.precision}, {host.packed_layers} layers packed)")
    server = uvicorn.Server(uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=5))
    serve_http_and_decode(server, engine, opts)


def serve_http_and_decode(server, engine, opts: ServeOptions) -> None:
    """HTTP on a second thread, the engine (all torch work) on this, the main thread: torch's kernels run
    slower from a second Python thread (see `Engine.start`). Ctrl-C / SIGTERM stop both."""
    import signal
    import threading
    import time

    def on_signal(signum, frame):
        server.should_exit = True
        engine.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    http = threading.Thread(target=server.run, name="lorafit-http", daemon=True)
    http.start()
    try:
        while not server.started and http.is_alive():
            time.sleep(0.05)
        if not server.started:  # uvicorn exits when it cannot bind
            raise ServeError(f"could not listen on {opts.host}:{opts.port} (in use, or not an address here)")
        engine.run_forever()
    finally:
        server.should_exit = True
        http.join(timeout=10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
