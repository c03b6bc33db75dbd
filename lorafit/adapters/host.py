"""AdapterHost: one base model in memory, many LoRA adapters loaded into slots, mixed in every batch.

    host = AdapterHost.load("smollm2-135m")                  # the base, once
    host.load_adapter("sql", "runs/wikisql/adapter")          # slot 1 (no base reload)
    host.load_adapter("e2e", "runs/e2e/adapter")              # slot 2
    outs = host.generate(["q1", "q2", "q3"], adapter=["sql", None, "e2e"], max_new_tokens=32)
    host.unload_adapter("sql")                                # slot 1 zeroed, free for the next load

Adapted layers of the base are swapped for `MultiLoRALinear` the first time an adapter targets them;
modules an adapter trains in full (a classification head) become `SlotModules`, one copy per slot.
Every call routes each row to its adapter's slot (`SlotRouting.use`), so rows of different
adapters, of different ranks and target sets, and base rows (adapter None) share one forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lorafit.adapters.attention_kinds import check_decodable
from lorafit.adapters.decode import DecodeBatch, Request
from lorafit.adapters.files import AdapterParts, BaseShape, read_adapter
from lorafit.adapters.packing import pack_linears, unpack_linears
from lorafit.errors import AdapterError, ModelError
from lorafit.fast.precision import resolve_precision
from lorafit.lora.multi import DEFAULT_KERNEL, Kernel, MultiLoRALinear, SlotModules, SlotRouting
from lorafit.models import ModelRef, load_base, resolve_model
from lorafit.models.device import compute_device

DEFAULT_MAX_RANK = 64
PRECISIONS = ("fp32", "bf16", "auto")


def cast_base(model: nn.Module, precision: str | None) -> str:
    """Put the base's weights in `precision` ("auto": bf16 where the hardware multiplies bf16 natively,
    as for training; None: leave them as they are); returns the precision the weights are in. Only
    parameters are cast: buffers such as rotary `inv_freq` stay fp32, so positions keep their
    precision. Tied weights stay tied (one Parameter)."""
    if precision is not None and precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    params = [p for p in model.parameters() if p.is_floating_point()]
    if precision is not None and params:
        dtype = torch.bfloat16 if resolve_precision(precision, params[0].device) == "bf16" else torch.float32
        for p in params:
            p.data = p.data.to(dtype)
    return "bf16" if params and params[0].dtype == torch.bfloat16 else "fp32"


@dataclass(frozen=True)
class Generation:
    """One generated completion: the text, its new token ids, which adapter made it and why it stopped."""

    text: str
    tokens: list[int]
    adapter: str | None
    prompt_tokens: int
    finish_reason: str  # "eos" or "length"


@dataclass
class _Slot:
    parts: AdapterParts
    slot: int
    directory: str


def _is_causal_lm(ref: ModelRef) -> bool:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(ref.path_or_id)
    except (OSError, ValueError) as e:
        raise ModelError(f"model {ref.name!r}: cannot read its config: {str(e).splitlines()[0]}") from None
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or []))


class AdapterHost:
    """A base model with adapters in slots; see the module docstring."""

    def __init__(self, model: nn.Module, tokenizer, *, causal: bool, max_rank: int = DEFAULT_MAX_RANK,
                 capacity: int = 8, kernel: Kernel = DEFAULT_KERNEL, name: str = "base",
                 precision: str | None = None, pack_weights: bool = False) -> None:
        """Wrap a loaded `model`, in `precision` (None: as it is; see `cast_base`). Adapters are kept
        in fp32 whatever the base's precision (see `MultiLoRALinear`). `pack_weights`: swap the base's
        linear layers for oneDNN-packed ones (lorafit/adapters/packing.py; faster on CPU, fp32 results
        differ from F.linear's in the last bits); the model is then for this host's inference only."""
        if causal:
            check_decodable(model.config)  # refuse an attention kind the decode loop lacks now, not at the first request
        self.model, self.tokenizer, self.causal, self.name = model.eval(), tokenizer, causal, name
        self.precision = cast_base(model, precision)
        self.max_rank, self.kernel = max_rank, kernel
        self.routing = SlotRouting()
        self.base = BaseShape.of(model)  # before any wrapping: the modules adapters may name
        self.packed_layers = pack_linears(model) if pack_weights else 0
        self._capacity = max(2, capacity)
        self._layers: dict[str, MultiLoRALinear] = {}
        self._saved: dict[str, SlotModules] = {}
        self._slots: dict[str, _Slot] = {}
        self._free: list[int] = []
        self._next_slot = 1  # slot 0 is the base

    @classmethod
    def load(cls, base_model: str, *, task: str | None = None, max_rank: int = DEFAULT_MAX_RANK,
             kernel: Kernel = DEFAULT_KERNEL, precision: str = "auto", pack_weights: bool = True,
             device: str | None = None) -> AdapterHost:
        """Load `base_model` (alias, directory or HF id) once. `task` "generate" or "classify"; by
        default a causal LM checkpoint is for generation and anything else an encoder for classification.
        `precision`: "fp32", "bf16" or "auto" (bf16 on hardware with native bf16 matmuls, like training).
        `pack_weights`: see `__init__` (on by default here: the host owns the model it loads; a GPU
        host keeps plain weights). `device`: see `compute_device` (None: $LORAFIT_DEVICE, else auto)."""
        ref = resolve_model(base_model)
        if task is None:
            task = "generate" if _is_causal_lm(ref) else "classify"
        if task not in ("generate", "classify"):
            raise ModelError(f"task must be 'generate' or 'classify', got {task!r}")
        # A classifier base gets a placeholder 2-label head: every adapter brings its own.
        model, tokenizer = load_base(ref, 0 if task == "generate" else 2)
        model.to(compute_device(device))  # before casting and packing: both depend on the device
        return cls(model, tokenizer, causal=task == "generate", max_rank=max_rank, kernel=kernel, name=ref.name,
                   precision=precision, pack_weights=pack_weights)

    # ------------------------------------------------------------------------------------------ adapters

    def adapters(self) -> dict[str, dict]:
        """The loaded adapters: name -> slot, rank, directory, adapted layer count, head width."""
        return {
            name: {"slot": s.slot, "rank": s.parts.spec.rank, "directory": s.directory,
                   "layers": len(s.parts.lora), "num_labels": s.parts.num_labels}
            for name, s in self._slots.items()
        }

    def load_adapter(self, name: str, directory: str | Path) -> None:
        """Read, check and install an adapter in a free slot. Nothing changes if any check fails."""
        self.install_adapter(name, self.read_adapter(name, directory), directory)

    def read_adapter(self, name: str, directory: str | Path) -> AdapterParts:
        """Read and check an adapter against this base without touching the model: safe on any thread
        while the model runs (a server reads here, off its decode loop, then installs between steps)."""
        if not isinstance(name, str) or not name:
            raise AdapterError(f"adapter name must be a non-empty string, got {name!r}")
        if name in self._slots:
            raise AdapterError(f"adapter {name!r} is already loaded (from {self._slots[name].directory}); unload it first")
        parts = read_adapter(name, directory, self.base, self.max_rank)
        if self.causal and parts.task_type == "SEQ_CLS":
            raise AdapterError(f"adapter {name!r}: a sequence-classification adapter on a generation host")
        if not self.causal and parts.num_labels is None:
            raise AdapterError(f"adapter {name!r}: no classification head; this host classifies")
        return parts

    def install_adapter(self, name: str, parts: AdapterParts, directory: str | Path) -> int:
        """Put adapter `parts` (from `read_adapter`) in a free slot; returns the slot. Touches the model:
        call it where no forward runs."""
        if name in self._slots:
            raise AdapterError(f"adapter {name!r} is already loaded (from {self._slots[name].directory}); unload it first")
        slot = self._free.pop() if self._free else self._take_new_slot()
        for module, (a, b) in parts.lora.items():
            self._layer(module).set_slot(slot, a, b, parts.scales[module], parts.magnitudes.get(module))
        for module, params in parts.saved.items():
            self._saved_module(module).set_slot(slot, params)
        self._slots[name] = _Slot(parts, slot, str(directory))
        return slot

    def unload_adapter(self, name: str) -> None:
        """Zero the adapter's slot everywhere and free it for the next load."""
        entry = self._slots.pop(self._known(name), None)
        for module in entry.parts.lora:
            self._layers[module].clear_slot(entry.slot)
        for module in entry.parts.saved:
            self._saved[module].clear_slot(entry.slot)
        self._free.append(entry.slot)

    def _take_new_slot(self) -> int:
        slot = self._next_slot
        self._next_slot += 1
        if slot >= self._capacity:
            self._capacity *= 2  # geometric: each layer reallocates log2(n) times over n loads
            for layer in self._layers.values():
                layer.reserve(self._capacity, 1)
        return slot

    def _layer(self, path: str) -> MultiLoRALinear:
        """The stacked layer at `path`, wrapping the base's linear there on first use."""
        if path not in self._layers:
            parent_name, _, child = path.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            layer = MultiLoRALinear(getattr(parent, child), self.routing, self._capacity, self.kernel,
                                    lora_dtype=torch.float32)
            setattr(parent, child, layer)
            self._layers[path] = layer
        return self._layers[path]

    def _saved_module(self, path: str) -> SlotModules:
        if path not in self._saved:
            parent_name, _, child = path.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            wrapper = SlotModules(unpack_linears(getattr(parent, child)), self.routing)  # it deep-copies its module
            setattr(parent, child, wrapper)
            self._saved[path] = wrapper
        return self._saved[path]

    def _known(self, name: str) -> str:
        if name not in self._slots:
            loaded = ", ".join(sorted(self._slots)) or "none"
            raise AdapterError(f"adapter {name!r} is not loaded (loaded: {loaded})")
        return name

    def slots_for(self, adapter: str | None | Sequence[str | None], rows: int) -> tuple[list[str | None], torch.Tensor]:
        """Per-row adapter names and slot ids (rows,); one name (or None) applies to every row."""
        names = [adapter] * rows if adapter is None or isinstance(adapter, str) else list(adapter)
        if len(names) != rows:
            raise AdapterError(f"adapter: {len(names)} names for {rows} rows")
        slots = [0 if n is None else self._slots[self._known(n)].slot for n in names]
        return names, torch.tensor(slots, dtype=torch.long)

    # ------------------------------------------------------------------------------------------ inference

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, adapter) -> torch.Tensor:
        """The model's logits with each row on its adapter: (rows, T, vocab) or (rows, labels)."""
        _, slots = self.slots_for(adapter, input_ids.shape[0])
        with self.routing.use(slots):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def generate(self, prompts: Sequence[str], adapter=None, *, max_new_tokens: int | Sequence[int] = 64,
                 temperature: float | Sequence[float] = 0.0, top_p: float | Sequence[float] = 1.0,
                 seed: int | None | Sequence[int | None] = None, batch_size: int = 64) -> list[Generation]:
        """Continue each prompt with its own adapter (None: the base); greedy unless temperature > 0.

        Settings are one value for all rows or one per row. Results come back in the prompts' order.
        """
        if not self.causal:
            raise ModelError(f"model {self.name!r} was loaded for classification; generate needs a causal LM")
        n = len(prompts)
        names, slots = self.slots_for(adapter, n)

        def per_row(value, what):
            values = list(value) if isinstance(value, list | tuple) else [value] * n
            if len(values) != n:
                raise ValueError(f"{what}: {len(values)} values for {n} prompts")
            return values

        settings = zip(per_row(max_new_tokens, "max_new_tokens"), per_row(temperature, "temperature"),
                       per_row(top_p, "top_p"), per_row(seed, "seed"), strict=True)
        encoded = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        requests = [
            Request(ids, int(slots[i]), int(m), float(t), float(p), s, key=i)
            for i, (ids, (m, t, p, s)) in enumerate(zip(encoded, settings, strict=True))
        ]
        rows = self.decode(requests, batch_size)
        return [
            Generation(self.tokenizer.decode(row.tokens, skip_special_tokens=True), row.tokens, names[row.request.key],
                       len(row.request.prompt_ids), row.finish_reason)
            for row in rows
        ]

    def new_decode_batch(self) -> DecodeBatch:
        """An empty DecodeBatch on this host's model and routing, stopping at the tokenizer's and the
        generation config's eos ids, padding with the pad token (else the first eos)."""
        eos = self.tokenizer.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos_ids += [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos_ids[0]
        return DecodeBatch(self.model, self.routing, eos_ids, pad)

    def decode(self, requests: Sequence[Request], batch_size: int = 64, on_done=None, should_stop=None) -> list:
        """Decode requests (token ids, slots set) in batches of up to `batch_size`, refilling the batch as
        rows finish; `on_done(row)` is called as each one ends. Rows come back in the requests' order.
        `should_stop(row)`: asked after each new token of a running row; True ends it at once (finish
        reason "stop": a stop string in its text). Request keys must then be unique."""
        batch = self.new_decode_batch()
        # Longest prompts first: prompts of similar length share a batch, so less padding.
        waiting = sorted(requests, key=lambda r: -len(r.prompt_ids))[::-1]
        done = []

        def finish(rows):
            done.extend(rows)
            for row in rows:
                if on_done is not None:
                    on_done(row)

        while waiting or batch.rows:
            room = batch_size - len(batch.rows)
            # Refill only when a good part of the batch is free: each add prefills (16 prompts per forward).
            if waiting and (not batch.rows or room >= max(1, batch_size // 4)):
                take = [waiting.pop() for _ in range(min(room, len(waiting)))]
                finish(batch.add(take))
            finish(batch.step())
            if should_stop is not None:
                stopped = batch.remove([row.request.key for row in batch.rows if should_stop(row)])
                for row in stopped:
                    row.finish_reason = "stop"
                finish(stopped)
        order = {id(r): i for i, r in enumerate(requests)}
        return sorted(done, key=lambda row: order[id(row.request)])

    @torch.no_grad()
    def classify(self, texts: Sequence[str] | Sequence[tuple[str, str]], adapter, *, batch_size: int = 64,
                 max_length: int = 512) -> list[dict]:
        """Score each text (or text pair) with its own adapter's head: label id and logits per row."""
        if self.causal:
            raise ModelError(f"model {self.name!r} was loaded for generation; classify needs an encoder host")
        names, slots = self.slots_for(adapter, len(texts))
        if any(n is None for n in names):
            raise AdapterError("classify: every row needs an adapter (the base has no trained head)")
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            pairs = isinstance(chunk[0], tuple | list)
            enc = self.tokenizer(
                [t[0] for t in chunk] if pairs else chunk, [t[1] for t in chunk] if pairs else None,
                padding=True, truncation=True, max_length=max_length, return_tensors="pt",
            )
            with self.routing.use(slots[start : start + batch_size]):
                logits = self.model(**enc).logits  # (rows, widest head), NaN past a row's own width
            for i, row in enumerate(logits):
                name = names[start + i]
                row = row[: self._slots[name].parts.num_labels].tolist()
                label = max(range(len(row)), key=row.__getitem__) if len(row) > 1 else None
                out.append({"adapter": name, "label": label, "logits": row})
        return out
