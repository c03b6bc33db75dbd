"""`lorafit serve`: an OpenAI-compatible HTTP server over one base model and many LoRA adapters.

    protocol.py   request/response shapes, OpenAI error JSON
    engine.py     the scheduler (on the main thread in `lorafit serve`): continuous batching over
                  DecodeBatch, adapter slots pinned per request
    text.py       tokens -> text deltas, stop strings
    routing.py    A/B routes (a model name that picks an adapter by weight)
    security.py   API key, adapter-root path checks
    app.py        the FastAPI routes on top of these
"""
