"""Many adapters on one base: a stacked multi-adapter linear layer whose rows each pick an adapter slot.

Every adapted linear layer of the base holds all loaded adapters at once, stacked by slot:

    A: (capacity, r_max, d_in)      slot s, rows [:rank_s] = adapter s's lora_A; the rest zero
    B: (capacity, d_out, r_max)     slot s, cols [:rank_s] = scale_s * adapter s's lora_B (scale folded in)
    slot 0 is all zeros: "no adapter", the base model

and a forward over a batch whose row i uses slot idx[i] computes, with the math of `lorafit.lora.layer`,

    h_i = W x_i + b + B[idx_i] (A[idx_i] x_i)                    x_i (T, d_in) -> h_i (T, d_out)

Ranks are zero-padded up to the layer's r_max, so a rank-1 and a rank-16 adapter share one tensor;
padded rows of A and columns of B are exact zeros and add exact zeros. Each slot has its own rank and
scale per layer (PEFT's rank_pattern / alpha_pattern). A DoRA slot (lorafit/lora/dora.py) has a constant
g = m / ||W + s B A||_row (d_out,) at inference, computed when the slot is filled and folded into B; the
rest, (g - 1) * W x, multiplies the base output by the slot's row of `dora_scale` (zero for plain slots),
only when a DoRA slot is in the batch:  h_i = W x_i + b + (g_s - 1) * (W x_i) + (g_s s B_s) A_s x_i.

Two kernels compute the sum (`lora_delta_multi`), tested equal, each needed by "auto":

- "loop": one pair of thin matmuls per slot present in the batch, on that slot's rows (cost ~ rank_s).
  Rows that sit together (a batch sorted by slot) are sliced as views, with no copy.
- "grouped" (SGMV-style): the rows of each slot present gathered into one padded (slots, m, d_in)
  block, then two batched matmuls over the slots present: copies slots x r_max x d_in of A (not
  rows x ...) and the rows of x, and makes 2 calls per layer whatever the number of slots;
- "auto" (the default) picks per forward: loop when a single adapter is present, else grouped.

The slot index reaches the layers through a `SlotRouting` object shared by the layers of one model:
`with routing.use(idx): model(...)` sets it for one forward and restores what was there before, so
nothing leaks between calls. `idx` is (rows,): one adapter per row. A forward that sees k times as many rows as `idx`
has (beam search repeats each row k times with `repeat_interleave`) repeats each slot k times; beam
reordering keeps rows inside their own group, so the slot follows its row. A decoder that drops or
reorders rows passes the matching `idx` at each step (see lorafit/adapters/decode.py).

Memory: slot tensors grow geometrically (capacity doubles, r_max rounds up to a power of two), so
loading the n-th adapter costs the same as the first, amortised; unloading zeroes a slot and the
host reuses it (free list). torch only; never transformers (GPT-2's Conv1D is duck-typed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lorafit.fast.packed import PackedLinear
from lorafit.lora.dora import dora_factor
from lorafit.lora.layer import is_conv1d, is_linear
from lorafit.lora.slot_modules import SlotModules  # noqa: F401  (re-exported: whole modules per slot)

Kernel = Literal["loop", "grouped", "auto"]
DEFAULT_KERNEL: Kernel = "auto"
# "auto": "loop" when one adapter is present (its rows are one slice: two plain matmuls, no copy), else
# "grouped". Measured per SmolLM2 decode step over 8 adapters (bench/bench_decode_step.py, table in
# docs/adapters.md): at 2 rows per adapter loop costs a third more than the bare step while grouped
# costs ~1% (fp32); at 8 rows per adapter they are within noise in fp32 and grouped leads in bf16. (A
# third, bgmv-style "gather" kernel measured there was nowhere faster than grouped, and was dropped.)


# ---------------------------------------------------------------------------------------------- routing


@dataclass
class RoutePlan:
    """Which slot each of `rows` rows uses, for x viewed as (rows, tokens, d).

    `row_slots` (rows,) long; `groups`: (slot, rows) for every non-zero slot present, rows being a
    slice when they sit together, else an index tensor. Built once per forward, shared by all layers.
    """

    rows: int
    row_slots: torch.Tensor
    groups: list[tuple[int, slice | torch.Tensor]]
    _padded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def padded_groups(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the grouped kernel: the slots present (G,) and their rows as two (G, m) indexes, m the
        largest group: `read` pads shorter groups with row 0 (any row: the result is dropped), `write`
        with `rows` (an extra output row the kernel drops)."""
        if self._padded is None:
            row_lists = [torch.arange(self.rows)[r] if isinstance(r, slice) else r for _, r in self.groups]
            m = max(len(r) for r in row_lists)
            write = torch.full((len(row_lists), m), self.rows, dtype=torch.long)
            for g, r in enumerate(row_lists):
                write[g, : len(r)] = r
            read = write.masked_fill(write == self.rows, 0)
            slots = torch.tensor([slot for slot, _ in self.groups], dtype=torch.long)
            device = self.row_slots.device
            self._padded = (slots.to(device), read.to(device), write.to(device))
        return self._padded


def _groups(row_slots: torch.Tensor) -> list[tuple[int, slice | torch.Tensor]]:
    groups = []
    for slot in torch.unique(row_slots).tolist():
        if slot == 0:
            continue
        where = torch.nonzero(row_slots == slot).flatten()
        first, last = int(where[0]), int(where[-1])
        contiguous = last - first + 1 == where.numel()
        groups.append((slot, slice(first, last + 1) if contiguous else where))
    return groups


class SlotRouting:
    """The per-row adapter slot of the forward in progress, for one model's layers."""

    def __init__(self) -> None:
        self._slots: torch.Tensor | None = None
        self._plans: dict[tuple[int, ...], RoutePlan] = {}

    @contextlib.contextmanager
    def use(self, slots: torch.Tensor | None) -> Iterator[None]:
        """Route the forward passes inside the block: `slots` (rows,), long; None = base."""
        saved = self._slots, self._plans
        if slots is not None:
            slots = torch.as_tensor(slots, dtype=torch.long)
            if slots.dim() != 1:
                raise ValueError(f"slot index must be (rows,), got shape {tuple(slots.shape)}")
            if not bool((slots != 0).any()):
                slots = None  # every row on the base: no adapter work at all
        self._slots, self._plans = slots, {}
        try:
            yield
        finally:
            self._slots, self._plans = saved

    @property
    def active(self) -> bool:
        return self._slots is not None

    def plan(self, lead: torch.Size) -> RoutePlan | None:
        """The plan for an input whose leading shape (all but the feature dim) is `lead`."""
        slots = self._slots
        if slots is None:
            return None
        key = tuple(lead)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        # One slot per row; rows repeated k times (beam search) repeat their slot.
        if len(lead) == 0 or lead[0] % slots.shape[0] != 0:
            raise RuntimeError(f"slot index for {slots.shape[0]} rows cannot route an input of shape {key}")
        row_slots = slots.repeat_interleave(lead[0] // slots.shape[0]) if lead[0] != slots.shape[0] else slots
        plan = RoutePlan(lead[0], row_slots, _groups(row_slots))
        self._plans[key] = plan
        return plan


# ---------------------------------------------------------------------------------------------- kernels


def lora_delta_multi(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, ranks: list[int], plan: RoutePlan, kernel: Kernel
) -> torch.Tensor | None:
    """sum of B[s] A[s] x over each row's slot s, for x (rows, T, d_in) -> (rows, T, d_out), or None
    when no row of this layer has an adapter (a slot whose adapter skips this layer has rank 0).

    a (capacity, r_max, d_in), b (capacity, d_out, r_max) with the scale already in b.
    """
    if kernel == "auto":
        kernel = "loop" if len(plan.groups) <= 1 else "grouped"
    if kernel == "grouped":
        return _grouped_delta(x, a, b, plan)
    if kernel != "loop":
        raise ValueError(f"unknown kernel {kernel!r}: expected 'loop', 'grouped' or 'auto'")
    out = None
    for slot, rows in plan.groups:
        rank = ranks[slot]
        if rank == 0:
            continue
        if out is None:
            out = x.new_zeros(x.shape[:-1] + (b.shape[1],))
        # (n, T, d_in) -> (n, T, rank) -> (n, T, d_out), the slot's true rank only.
        delta = F.linear(F.linear(x[rows], a[slot, :rank]), b[slot, :, :rank])
        if isinstance(rows, slice):
            out[rows] += delta
        else:
            out.index_add_(0, rows, delta)
    return out


def _grouped_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, plan: RoutePlan) -> torch.Tensor | None:
    """The grouped kernel (SGMV-style): rows of each slot present gathered into one padded block, then
    two batched matmuls over the G slots present. Copies G x r_max x d_in of A (not rows x ...) and
    rows x T x d_in of x; 2 matmul calls per layer whatever G is."""
    if not plan.groups:
        return None
    slots, read, write = plan.padded_groups()  # (G,), (G, m), (G, m)
    g, m = read.shape
    t = x.shape[1]
    xg = x[read].reshape(g, m * t, x.shape[2])  # (G, m*T, d_in)
    first, last = plan.groups[0][0], plan.groups[-1][0]  # groups come in ascending slot order
    if last - first + 1 == g:  # the slots present are one run (slots are handed out in order): views, no copy
        a_g, b_g = a[first : last + 1], b[first : last + 1]
    else:
        a_g, b_g = a.index_select(0, slots), b.index_select(0, slots)
    low = torch.bmm(xg, a_g.transpose(1, 2))  # (G, m*T, r_max)
    delta = torch.bmm(low, b_g.transpose(1, 2))  # (G, m*T, d_out)
    out = x.new_zeros(plan.rows + 1, t, b.shape[1])
    # Each real row appears once in `write`; padding entries all land on the dropped row `rows`.
    out.index_copy_(0, write.reshape(-1), delta.reshape(g * m, t, b.shape[1]))
    return out[: plan.rows]


def _round_up_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# ---------------------------------------------------------------------------------------------- the layer


class MultiLoRALinear(nn.Module):
    """A frozen linear (or GPT-2 Conv1D) weight plus stacked adapters, one slot per adapter.

    Keeps the wrapped module's `weight` / `bias` Parameters under their own names (as LoRALinear
    does), so the base's parameter names, and hence its identity, are unchanged. A and B are buffers.
    It also wraps a `PackedLinear` (an inference host's oneDNN-packed weight), which computes W x + b.
    """

    def __init__(self, module: nn.Module, routing: SlotRouting, capacity: int = 8, kernel: Kernel = DEFAULT_KERNEL,
                 lora_dtype: torch.dtype | None = None):
        super().__init__()
        # A PackedLinear base (lorafit.fast.packed, an inference host's frozen weights reordered for
        # oneDNN) computes W x + b itself; it has no weight Parameter to keep.
        packed = module if isinstance(module, PackedLinear) else None
        if packed is None and not is_linear(module):
            raise TypeError(f"cannot wrap {type(module).__name__}: only nn.Linear, Conv1D and PackedLinear")
        object.__setattr__(self, "_packed", packed)
        self.transposed = is_conv1d(module)
        if packed is not None:
            self.in_features, self.out_features = packed.in_features, packed.out_features
            device, dtype = packed.device, packed.dtype
        else:
            self.weight = w = module.weight  # registered before bias, as in the wrapped module
            self.in_features, self.out_features = (w.shape[0], w.shape[1]) if self.transposed else (w.shape[1], w.shape[0])
            device, dtype = w.device, w.dtype
        self.bias = module.bias
        self.kernel: Kernel = kernel
        object.__setattr__(self, "routing", routing)  # shared, not a submodule
        object.__setattr__(self, "_original", module)
        self.ranks: list[int] = [0] * capacity  # true rank per slot; 0 = slot unused in this layer
        # A bf16 base keeps its adapters in fp32 (lora_dtype): the thin LoRA matmuls are faster in fp32
        # on CPU and the delta is added in the base's dtype (docs/adapters.md, "Precision").
        factory = {"device": device, "dtype": lora_dtype or dtype}
        self.register_buffer("lora_A", torch.zeros(capacity, 1, self.in_features, **factory), persistent=False)
        self.register_buffer("lora_B", torch.zeros(capacity, self.out_features, 1, **factory), persistent=False)
        # DoRA: g - 1 per slot and output feature (zero for plain LoRA slots); see the module docstring.
        self.register_buffer("dora_scale", torch.zeros(capacity, self.out_features, **factory), persistent=False)
        self.dora_slots: set[int] = set()

    @property
    def capacity(self) -> int:
        return self.lora_A.shape[0]

    @property
    def r_max(self) -> int:
        return self.lora_A.shape[1]

    def unwrap(self) -> nn.Module:
        return self._original

    @torch.no_grad()
    def reserve(self, capacity: int, rank: int) -> None:
        """Grow to at least `capacity` slots and rank `rank` (capacity doubles, r_max rounds to 2^k)."""
        new_cap = self.capacity
        while new_cap < capacity:
            new_cap *= 2
        new_r = max(self.r_max, _round_up_pow2(rank))
        if (new_cap, new_r) == (self.capacity, self.r_max):
            return
        a = self.lora_A.new_zeros(new_cap, new_r, self.in_features)
        b = self.lora_B.new_zeros(new_cap, self.out_features, new_r)
        a[: self.capacity, : self.r_max] = self.lora_A
        b[: self.capacity, :, : self.r_max] = self.lora_B
        dora = self.dora_scale.new_zeros(new_cap, self.out_features)
        dora[: self.capacity] = self.dora_scale
        self.lora_A, self.lora_B, self.dora_scale = a, b, dora
        self.ranks += [0] * (new_cap - len(self.ranks))

    @torch.no_grad()
    def set_slot(self, slot: int, a: torch.Tensor, b: torch.Tensor, scale: float,
                 magnitude: torch.Tensor | None = None) -> None:
        """Put one adapter in `slot`: a (rank, d_in), b (d_out, rank) in PEFT's orientation; `magnitude`
        (d_out,): DoRA's m (None: plain LoRA)."""
        rank = a.shape[0]
        if a.shape != (rank, self.in_features) or b.shape != (self.out_features, rank):
            raise ValueError(
                f"lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit a layer with d_in "
                f"{self.in_features}, d_out {self.out_features}"
            )
        if magnitude is not None and magnitude.shape != (self.out_features,):
            raise ValueError(f"lora_magnitude_vector {tuple(magnitude.shape)} does not fit a layer with d_out {self.out_features}")
        self.reserve(slot + 1, rank)
        self.clear_slot(slot)
        self.lora_A[slot, :rank] = a.to(self.lora_A.dtype)
        # The scale (and DoRA's g) is folded into B in fp32 before the cast: no extra multiply in the forward.
        b_scaled = b.float() * scale
        if magnitude is not None:
            # g = m / ||W + s B A||_row over the weights this host holds (lorafit/lora/dora.py).
            factor = dora_factor(magnitude.float(), self.dense_weight(), a.float(), b.float(), scale)
            b_scaled = factor.unsqueeze(1) * b_scaled
            self.dora_scale[slot] = (factor - 1).to(self.dora_scale.dtype)
            self.dora_slots.add(slot)
        self.lora_B[slot, :, :rank] = b_scaled.to(self.lora_B.dtype)
        self.ranks[slot] = rank

    def dense_weight(self) -> torch.Tensor:
        """W as (d_out, d_in) fp32 (a packed weight unpacked for the moment)."""
        if self._packed is not None:
            return self._packed.packed.to_dense().float()
        return (self.weight.T if self.transposed else self.weight).float()

    @torch.no_grad()
    def clear_slot(self, slot: int) -> None:
        if slot < self.capacity:
            self.lora_A[slot].zero_()
            self.lora_B[slot].zero_()
            self.dora_scale[slot].zero_()
            self.dora_slots.discard(slot)
            self.ranks[slot] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is not None:
            out = self._packed(x)
        else:
            weight = self.weight.T if self.transposed else self.weight  # (d_out, d_in)
            out = F.linear(x, weight, self.bias)
        plan = self.routing.plan(x.shape[:-1])
        if plan is None:
            return out
        x3 = x.reshape(plan.rows, -1, x.shape[-1]).to(self.lora_A.dtype)  # (rows, T, d_in)
        delta = lora_delta_multi(x3, self.lora_A, self.lora_B, self.ranks, plan, self.kernel)
        if self.dora_slots and any(slot in self.dora_slots for slot, _ in plan.groups):
            # (g - 1) * W x for DoRA rows; plain rows and base rows have g - 1 = 0.
            base = out if self.bias is None else out - self.bias
            base3 = base.reshape(plan.rows, -1, base.shape[-1]).to(self.dora_scale.dtype)  # (rows, T, d_out)
            rescale = self.dora_scale.index_select(0, plan.row_slots).unsqueeze(1) * base3
            delta = rescale if delta is None else delta + rescale
        if delta is None:
            return out
        return out + delta.view(out.shape).to(out.dtype)

    def extra_repr(self) -> str:
        used = sum(r > 0 for r in self.ranks)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, slots={used}/{self.capacity}, "
            f"r_max={self.r_max}, transposed={self.transposed}, kernel={self.kernel}, packed={self._packed is not None}"
        )
