"""Shared fixtures: the real data directory (../shared/data) and an offline hub."""

import os
import signal
from pathlib import Path

import pytest

# Tests never touch the network: transformers and datasets must resolve everything locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A shell starts background jobs (`cmd &`, nohup) with SIGINT ignored, and Python then installs no
# Ctrl-C handler, in this process or the lorafit subprocesses it starts. The Ctrl-C tests need one.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real datasets, read in place from ../shared/data (never copied into the repo)."""
    path = Path(os.environ.get("LORAFIT_DATA", SHARED_DATA))
    if not path.is_dir():
        pytest.skip(f"data directory {path} not found (set LORAFIT_DATA)")
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + tokenizer directory, usable as `model:` in a recipe (see tiny.py)."""
    from tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "llama", "llama")
