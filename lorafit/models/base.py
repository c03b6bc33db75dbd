"""Loading a base model and its tokenizer from a resolved `ModelRef` (resolve.py), and the identity an
adapter records of its base.

    load_base(ref, num_labels): load_tokenizer(ref), then load_causal_lm(ref) (num_labels 0) or
                                load_classifier(ref, n)

Padding: tokenizers come back with a pad token (the eos token where there is none) and right padding,
for training; batched generation switches to left padding itself (eval/generate.py). SmolLM2 pads with
`<|im_end|>` (id 2), which is also its eos: loss masks must come from the data (prompt and padding
masked explicitly, as data/ does), never from `labels == pad_token_id`.

transformers is imported inside the functions that use it: it takes about a second to import, and a
bad recipe or missing data should be reported before that.
"""

from __future__ import annotations

import hashlib
import warnings

import torch

from lorafit.errors import ModelError
from lorafit.models.aliases import ALIASES
from lorafit.models.quantize import logical_shape, quantized_kind
from lorafit.models.quiet import quiet_transformers
from lorafit.models.resolve import ModelRef, first_line

# Freshly initialised sequence-classification heads (top-level children of the model): DeBERTa's
# `pooler` (dense + activation on [CLS]) belongs to its head, not to the pretrained encoder (BERT's
# pooler sits inside `bert.` and is pretrained), so it is trained in full and saved with the adapter.
HEAD_MODULES = ("classifier", "score", "pre_classifier", "pooler")


def load_tokenizer(ref: ModelRef):
    """AutoTokenizer with a pad token (falls back to eos) and right padding (for training)."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(ref.path_or_id)
    except (OSError, ValueError) as e:
        raise ModelError(f"model {ref.name!r}: cannot load a tokenizer from {ref.path_or_id}: {first_line(e)}") from e
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
        raise ModelError(f"model {ref.name!r}: cannot read its config from {ref.path_or_id}: {first_line(e)}") from e


def config_dict(ref: ModelRef) -> dict:
    """The model's config.json as a dict (no weights read)."""
    return _load_config(ref).to_dict()


def _set_pad_token_id(config, tokenizer) -> None:
    """The tokenizer's pad id wins (batches are padded with it; sequence classifiers on decoder models
    find each row's last real token by it); without a tokenizer, keep the config's or use eos."""
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    elif getattr(config, "pad_token_id", None) is None:
        eos = getattr(config, "eos_token_id", None)
        config.pad_token_id = eos[0] if isinstance(eos, list) else eos


def _from_pretrained(auto_class, ref: ModelRef, config, dtype: torch.dtype | str):
    """Load with transformers quiet; return (model, names of freshly initialised parameters)."""
    try:
        with quiet_transformers():
            model, info = auto_class.from_pretrained(ref.path_or_id, config=config, dtype=dtype, output_loading_info=True)
    except ValueError as e:  # "Unrecognized configuration class ... for this kind of AutoModel"
        raise ModelError(f"model {ref.name!r} ({config.model_type}) cannot be loaded as "
                         f"{auto_class.__name__.removeprefix('AutoModelFor')}: {first_line(e)}") from e
    except OSError as e:
        raise ModelError(f"model {ref.name!r}: cannot load weights from {ref.path_or_id}: {first_line(e)}") from e
    return model, sorted(info["missing_keys"])


def load_causal_lm(ref: ModelRef, dtype: torch.dtype | str = torch.float32, tokenizer=None):
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


def load_classifier(ref: ModelRef, num_labels: int, dtype: torch.dtype | str = torch.float32, tokenizer=None):
    """AutoModelForSequenceClassification with a new, randomly initialised head of `num_labels` outputs.

    num_labels == 1 is regression (MSE on one score); > 1 single-label classification (cross-entropy).
    Only the head (HEAD_MODULES: `classifier`, `score`, `pre_classifier`, DeBERTa's `pooler`) is expected to be new: any
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


def load_base(ref: ModelRef, num_labels: int = 0, dtype: torch.dtype | str = torch.float32):
    """(model, tokenizer) for `ref`: a causal LM when `num_labels` is 0 (as `Task.num_labels` is for
    generation tasks), else a sequence classifier with a new head of `num_labels` outputs."""
    tokenizer = load_tokenizer(ref)
    if num_labels == 0:
        return load_causal_lm(ref, dtype=dtype, tokenizer=tokenizer), tokenizer
    return load_classifier(ref, num_labels=num_labels, dtype=dtype, tokenizer=tokenizer), tokenizer


def model_identity(model) -> dict:
    """What identifies a base for adapter metadata: sizes from the config and a fingerprint.

    The fingerprint hashes parameter names and shapes only (no weight reads, so it is instant).
    LoRA parameters and wrapper prefixes (DDP's `module.`, torch.compile's `_orig_mod.`) are left out,
    so a base gives the same identity before and after `add_lora`. A quantized base (models/quantize.py)
    has its weights' unquantized shapes, so the same fingerprint, and adds "quantize": "nf4" / "int8":
    what the adapter was trained under, which `identity_mismatch` does not compare (the adapter applies
    to the full-precision base).
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    shapes = []
    for name, param in model.named_parameters():
        parts = [p for p in name.split(".") if p != "_orig_mod"]
        if parts and parts[0] == "module":
            parts = parts[1:]
        if not any(p.startswith("lora_") for p in parts):
            shapes.append(f"{'.'.join(parts)}:{'x'.join(map(str, logical_shape(param)))}")
    fingerprint = hashlib.sha256("\n".join(sorted(shapes)).encode()).hexdigest()[:16]
    identity = {
        "model_type": getattr(config, "model_type", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "fingerprint": fingerprint,
    }
    kind = quantized_kind(model)
    return identity if kind == "none" else {**identity, "quantize": kind}


# Recorded in an identity but not compared: how the base was stored while training, not which base.
NOT_COMPARED = ("quantize",)


def identity_mismatch(expected: dict, actual: dict) -> str | None:
    """How two `model_identity` dicts differ, as "key: adapter has X, base has Y", or None.

    Sizes first (they say what differs); the fingerprint catches the rest (same sizes, other layout)."""
    keys = sorted((set(expected) | set(actual)) - set(NOT_COMPARED), key=lambda k: (k == "fingerprint", k))
    diffs = [k for k in keys if expected.get(k) != actual.get(k)]
    if not diffs:
        return None
    key = diffs[0]
    return f"{key}: adapter has {expected.get(key)!r}, base has {actual.get(key)!r}"
