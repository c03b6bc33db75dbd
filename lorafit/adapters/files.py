"""Reading one adapter directory for the host, and every check that must pass before it takes a slot.

An adapter is split into what the stacked layers need:

    lora   {module path: (A (rank, d_in), B (d_out, rank))}       the low-rank pairs, PEFT orientation
    scales {module path: alpha / rank}                            per layer (rank_pattern / alpha_pattern)
    magnitudes {module path: m (d_out,)}                          DoRA's magnitude vectors (DoRA adapters)
    saved  {module path: {param name: tensor}}                    modules trained in full (heads)

and refused with one AdapterError line naming it when: the file is unreadable or uses a PEFT feature
lorafit does not implement; its rank is above the host's max_rank; a key names no module of the base
(an adapter for another model must not be silently served as the base); a lora pair is incomplete or
has the wrong shape (its layer's rank from rank_pattern); it was saved unconverted from a pissa / olora
init (it needs its own residual base); it trains biases (they would change the base rows too); or the base identity
lorafit recorded when training it differs from this base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lorafit.errors import AdapterError
from lorafit.lora import LoraSpec, lora_scale, read_adapter_config, read_adapter_tensors, spec_from_config
from lorafit.lora.inits import uses_base_weight
from lorafit.lora.layer import is_linear
from lorafit.models import model_identity
from lorafit.models.base import identity_mismatch

PREFIX = "base_model.model."
CLASSIFIER_HEADS = ("classifier", "score")  # PEFT adds these to modules_to_save for SEQ_CLS adapters


@dataclass
class AdapterParts:
    """One adapter read from disk and checked against the base, ready to install in a slot."""

    name: str
    source: str
    spec: LoraSpec
    task_type: str | None
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    magnitudes: dict[str, torch.Tensor] = field(default_factory=dict)
    saved: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    num_labels: int | None = None  # width of the classification head, for SEQ_CLS adapters


@dataclass(frozen=True)
class ModuleShape:
    """One module of the base: its class name, and (d_out, d_in) if it is a linear layer (else None)."""

    kind: str
    linear: tuple[int, int] | None

    @classmethod
    def of(cls, module: nn.Module) -> ModuleShape:
        if not is_linear(module):
            return cls(type(module).__name__, None)
        w = module.weight
        return cls(type(module).__name__, (w.shape[0], w.shape[1]) if isinstance(module, nn.Linear) else (w.shape[1], w.shape[0]))


@dataclass
class BaseShape:
    """What the checks need to know about the base before wrapping: its module paths (each with its
    class name and, for a linear layer, (d_out, d_in)) and parameter shapes. No tensors: holding the
    modules themselves would keep weights alive that the host replaces (packed weights)."""

    config: object
    modules: dict[str, ModuleShape]
    params: list[tuple[str, torch.Size]]

    @classmethod
    def of(cls, model: nn.Module) -> BaseShape:
        modules = {path: ModuleShape.of(m) for path, m in model.named_modules()}
        return cls(model.config, modules, [(n, p.shape) for n, p in model.named_parameters()])

    def identity(self, replaced: dict[str, torch.Size]) -> dict:
        """`model_identity` of this base with some parameter shapes replaced (an adapter's own head)."""
        params = [(n, torch.empty(replaced.get(n, s), device="meta")) for n, s in self.params]
        view = _ParamView(self.config, params)
        return model_identity(view)


class _ParamView:
    """Just what `model_identity` reads: `.config`, `.named_parameters()` and `.modules()` (none: the
    host's base is never quantized, and a quantized base is recorded but not compared anyway)."""

    def __init__(self, config, params):
        self.config, self._params = config, params

    def named_parameters(self):
        return iter(self._params)

    def modules(self):
        return iter(())


def _saved_root(path: str, spec: LoraSpec, task_type: str | None, modules: dict[str, ModuleShape]) -> str | None:
    """The module trained in full that parameter `path` belongs to, or None."""
    names = tuple(spec.modules_to_save) + (CLASSIFIER_HEADS if task_type == "SEQ_CLS" else ())
    parts = path.split(".")
    for cut in range(1, len(parts)):  # outermost first: `classifier` before `classifier.out_proj`
        module = ".".join(parts[:cut])
        if module in modules and any(module == n or module.endswith("." + n) for n in names):
            return module
    return None


def read_adapter(name: str, directory: str | Path, base: BaseShape, max_rank: int) -> AdapterParts:
    """Read and check one adapter directory against `base`; AdapterError (one line, naming it) if it does not fit."""
    source = f"adapter {name!r} ({directory})"
    try:
        config = read_adapter_config(directory)
        spec = spec_from_config(config, source=str(Path(directory) / "adapter_config.json"))
        tensors, metadata = read_adapter_tensors(directory)
    except AdapterError as e:
        raise AdapterError(f"adapter {name!r}: {e}") from None
    top_rank = max([spec.rank, *spec.rank_pattern.values()])
    if top_rank > max_rank:
        raise AdapterError(f"{source}: rank {top_rank} is above this host's max_rank {max_rank}")
    if uses_base_weight(spec.init):
        raise AdapterError(f"{source}: init_lora_weights={spec.init!r} (unconverted) needs its own residual base "
                           "weights; not servable on a shared base (lorafit saves such adapters converted)")
    if spec.bias != "none":
        raise AdapterError(f"{source}: trains biases (bias={spec.bias!r}), which would change the base rows; not servable")
    task_type = config.get("task_type")
    parts = AdapterParts(name, source, spec, task_type)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            raise AdapterError(f"{source}: key {key!r} is not in PEFT's format (expected {PREFIX}<module>...)")
        path = key[len(PREFIX) :]
        module, _, leaf = path.rpartition(".")
        owner, _, kind = module.rpartition(".")
        if leaf == "weight" and kind in ("lora_A", "lora_B"):
            layer = base.modules.get(owner)
            if layer is None or layer.linear is None:
                what = "no module" if layer is None else f"a {layer.kind}, not a linear layer"
                raise AdapterError(f"{source}: key {key!r} names {what} of this base model (adapter for another model?)")
            pairs.setdefault(owner, {})[kind] = value
            continue
        if leaf == "lora_magnitude_vector" and spec.variant == "dora":
            layer = base.modules.get(module)
            if layer is None or layer.linear is None or value.shape != (layer.linear[0],):
                raise AdapterError(f"{source}: key {key!r} does not fit a linear layer of this base model")
            parts.magnitudes[module] = value
            continue
        root = _saved_root(path, spec, task_type, base.modules)
        if root is None:
            raise AdapterError(f"{source}: key {key!r} matches no module of this base model (adapter for another model?)")
        parts.saved.setdefault(root, {})[path[len(root) + 1 :]] = value
    if not pairs and not parts.saved:
        raise AdapterError(f"{source}: holds no LoRA weights")
    for module, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(pair)).pop()
            raise AdapterError(f"{source}: {module} has no {missing}.weight")
        a, b = pair["lora_A"], pair["lora_B"]  # (rank, d_in), (d_out, rank)
        d_out, d_in = base.modules[module].linear
        rank = spec.rank_for(module)
        if a.shape != (rank, d_in) or b.shape != (d_out, rank):
            raise AdapterError(
                f"{source}: {module} lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit rank "
                f"{rank} on a ({d_out} x {d_in}) layer of this base model"
            )
        if spec.variant == "dora" and module not in parts.magnitudes:
            raise AdapterError(f"{source}: {module} has no lora_magnitude_vector (use_dora is true)")
        parts.lora[module] = (a, b)
        parts.scales[module] = lora_scale(rank, spec.alpha_for(module), spec.rslora)
    _check_saved_shapes(parts, base)
    _check_identity(parts, base, metadata)
    if task_type == "SEQ_CLS":
        heads = [t for m, ps in parts.saved.items() for n, t in ps.items() if n.endswith("weight")]
        if not heads:
            raise AdapterError(f"{source}: a sequence-classification adapter without its head (modules_to_save)")
        parts.num_labels = int(metadata.get("lorafit_num_labels") or heads[-1].shape[0])
    return parts


def _check_saved_shapes(parts: AdapterParts, base: BaseShape) -> None:
    """A saved module's parameters must exist in the base module; only a head's output size may differ."""
    shapes = dict(base.params)
    for module, params in parts.saved.items():
        for name, value in params.items():
            full = f"{module}.{name}"
            if full not in shapes:
                raise AdapterError(f"{parts.source}: key {full!r} matches no parameter of this base model")
            own = shapes[full]
            if len(own) != value.dim() or tuple(own[1:]) != tuple(value.shape[1:]):
                raise AdapterError(
                    f"{parts.source}: {full} has shape {tuple(value.shape)}, this base model has {tuple(own)}"
                )


def _check_identity(parts: AdapterParts, base: BaseShape, metadata: dict) -> None:
    """Refuse a base whose identity differs from the one recorded when the adapter was trained
    (as lorafit/loading.py does; the adapter's own head shapes count as the base's)."""
    recorded = metadata.get("lorafit_base_identity")
    if not recorded:
        return  # saved by PEFT: the shape checks above are all there is
    try:
        expected = json.loads(recorded)
    except json.JSONDecodeError:
        raise AdapterError(f"{parts.source}: lorafit_base_identity in its header is not valid JSON") from None
    heads = {f"{m}.{n}": t.shape for m, ps in parts.saved.items() for n, t in ps.items()}
    actual = base.identity(heads)
    mismatch = identity_mismatch(expected, actual)
    if mismatch:
        raise AdapterError(f"{parts.source}: trained on another base model ({mismatch})")
