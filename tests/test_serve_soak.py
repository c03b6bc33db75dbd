"""A short soak (-m slow): bench/soak_serve.py's mixed load for 40 s against a real `lorafit serve` on a
tiny Llama: good clients (same text every time), adapter churn, clients dropping streams, hostile
requests. Zero failures of well-formed requests, every hostile one a 4xx, resident memory after warm-up
within 5%, and once idle no running rows and no leaked adapter slots."""

import asyncio
import sys
from pathlib import Path

import pytest

pytest.importorskip("httpx", reason="pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="pip install -e '.[serve]'")

from multi_fixtures import make_adapter  # noqa: E402
from test_serve_http import TEMPLATE, start, stop, wait_ready  # noqa: E402
from tiny import tiny_llama, tiny_tokenizer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from soak_serve import soak  # noqa: E402


@pytest.mark.slow
def test_soak(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_llama().save_pretrained(model_dir)
    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE
    tok.save_pretrained(model_dir)
    root = tmp_path / "adapters"
    for i, name in enumerate(("s0", "s1", "c0", "c1")):
        make_adapter(tiny_llama, root / name, 4, ("q_proj", "v_proj"), seed=70 + i)
    proc, port, log = start(["--model", str(model_dir), "--name", "tiny", "--api-key", "k", "--adapter-root", str(root),
                             "--allow-adapter-loading", "--max-request-bytes", "65536", "--precision", "fp32",
                             "--adapter", f"s0={root / 's0'}", "--adapter", f"s1={root / 's1'}"], tmp_path / "soak.log")
    try:
        url = wait_ready(proc, port, log)
        summary = asyncio.run(soak(url, "k", seconds=40, stable=["s0", "s1"], churn_dirs=["c0", "c1"], base="tiny",
                                   pid=proc.pid, good_clients=3))
    finally:
        stop(proc)
    assert summary["failure_count"] == 0, summary["failures"]
    counts = summary["counts"]
    assert counts["good"] >= 20 and counts["churn"] >= 3 and counts["disconnect"] >= 3, counts
    assert sum(v for k, v in counts.items() if k.startswith("hostile_")) >= 20, counts
    assert summary["rss_growth"] is not None and summary["rss_growth"] < 0.05, summary
    assert summary["health"]["running"] == 0 and summary["health"]["waiting"] == 0
    assert summary["leaked_slots"] == 0 and sorted(summary["models_at_end"]) == ["s0", "s1", "tiny"]
