"""What the server lets a client do: the API key check and where adapters may be loaded from.

- `--api-key KEY` (or LORAFIT_API_KEY): every request but /health needs `Authorization: Bearer KEY`
  (checked by `gate.Gate` before the body is read); compared in constant time. /health stays open
  for load balancers and says nothing about adapters.
- Adapter and route names are a safe charset and length (`name_problem`): never a path like `../x`.
- Loading adapters over HTTP is off unless `--allow-adapter-loading`, and then only from directories
  under `--adapter-root`: the path (relative to the root, or absolute) is resolved with every symlink
  followed, must stay under the resolved root (no `..` or symlink escapes), and must hold a safetensors
  adapter (adapter_config.json + adapter_model.safetensors, themselves not links out of the root).
  Pickle files (adapter_model.bin) are never read.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path

from lorafit.serve.protocol import APIError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def check_api_key(expected: str | None, authorization: str | None) -> None:
    """401 unless `authorization` is `Bearer <expected>` (no key configured: everything passes)."""
    if not expected:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise APIError(401, "missing API key: send the header 'Authorization: Bearer <key>'", code="invalid_api_key")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise APIError(401, "incorrect API key", code="invalid_api_key")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def adapter_dir_under(root: Path | None, given: str) -> Path:
    """The real adapter directory `given` names under `root`; APIError 400/403 if it may not be loaded."""
    if root is None:
        raise APIError(403, "adapter loading needs --adapter-root DIR (the directory adapters may come from)",
                       param="lora_path", code="adapter_root_not_set")
    real_root = root.resolve(strict=True)
    candidate = Path(given).expanduser()
    if not candidate.is_absolute():
        candidate = real_root / candidate
    try:
        real = candidate.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        raise APIError(400, f"lora_path {given!r}: no such directory under the adapter root", param="lora_path") from None
    if not _inside(real, real_root):
        raise APIError(403, f"lora_path {given!r} is outside the adapter root", param="lora_path",
                       code="path_outside_adapter_root")
    if not real.is_dir():
        raise APIError(400, f"lora_path {given!r} is not a directory", param="lora_path")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        file = real / name
        if not file.is_file():
            other = " (only safetensors adapters are loaded; adapter_model.bin is not)" if name == WEIGHTS_NAME else ""
            raise APIError(400, f"lora_path {given!r} has no {name}{other}", param="lora_path")
        if not _inside(file.resolve(strict=True), real_root):
            raise APIError(403, f"lora_path {given!r}: {name} links outside the adapter root", param="lora_path",
                           code="path_outside_adapter_root")
    return real


# Adapter (and route) names travel in URLs, log lines and metric labels: letters, digits and . _ -,
# starting with a letter or digit (so never "..", never a path), at most this long.
MAX_NAME_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def name_problem(name: str) -> str | None:
    """Why `name` may not be an adapter or route name (None: it may)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return (f"{name!r} is not a valid name: letters, digits, '.', '_' and '-', starting with a letter "
                "or digit")
    if len(name) > MAX_NAME_LENGTH:
        return f"{name[:20]!r}... is {len(name)} characters long; names are at most {MAX_NAME_LENGTH}"
    return None


def check_adapter_name(name: str, param: str = "lora_name") -> None:
    """400 naming `param` unless `name` is a valid adapter name (see `name_problem`)."""
    problem = name_problem(name)
    if problem:
        raise APIError(400, f"{param}: {problem}", param=param, code="invalid_name")
