"""`lorafit serve`: an OpenAI-compatible HTTP server over one base model and many LoRA adapters.

    protocol.py    request/response shapes, OpenAI error JSON, SSE framing
    sampling.py    a request's prompt ids and sampling settings, checked at the boundary (400 per field)
    engine.py      the scheduler (on the main thread in `lorafit serve`): continuous batching over
                   DecodeBatch; one request's failure stays that request's
    registry.py    adapter names -> host slots, pinned per running request; --max-adapters
    completion.py  one request's life on the HTTP side: submit, text, JSON or SSE, timeout
    text.py        tokens -> text deltas (incremental), stop strings
    routing.py     A/B routes (a model name that picks an adapter by weight)
    security.py    API key, adapter-root path checks, adapter names
    gate.py        the ASGI layer before every route: API key before the body, body size
    metrics.py     /metrics (Prometheus)
    app.py         the FastAPI routes on top of these
"""
