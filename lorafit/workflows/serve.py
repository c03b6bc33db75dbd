"""`lorafit serve`: check the options, load the base and adapters once, start the engine, serve HTTP.

    options -> check (routes, adapter root, names; before any model loads) -> AdapterHost.load(base)
            -> load_adapter(name, dir) for each --adapter -> Engine -> build_app
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


@dataclass
class ServeOptions:
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


def check_options(opts: ServeOptions):
    """Everything that can be checked before the model loads; returns (base name, {route: Route})."""
    from lorafit.serve.routing import Route, RouteError, parse_route

    base = opts.name or opts.model
    for name, directory in opts.adapters.items():
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
    if opts.max_batch < 1 or opts.max_queue < 1:
        raise ServeError("--max-batch and --max-queue must be >= 1")
    return base, routes


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
    from lorafit.serve.app import ServerConfig, build_app
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
    engine = Engine(host, max_batch=opts.max_batch, max_queue=opts.max_queue)
    config = ServerConfig(base, opts.api_key, opts.adapter_root, opts.allow_adapter_loading, routes)
    app = build_app(engine, config)
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
