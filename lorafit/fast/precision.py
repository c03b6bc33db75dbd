"""Training precision: choosing fp32 or bf16, and the bf16 autocast context the loop runs under.

bf16 here is torch autocast (matmuls in bf16; weights, LoRA gradients and optimizer state in fp32) with
two changes, both measured in docs/performance.md:
- attention runs in fp32 on CPU (`AutocastPatches`, torch 2.13's bf16 CPU attention kernels are slower);
- frozen weights are cast to bf16 once per run (`FrozenWeightCasts`) instead of on every forward call:
  autocast re-casts a weight that does not require grad each time a layer runs, and for a LoRA run
  nearly every weight is frozen. The copies are the very tensors autocast would make, so results
  are bitwise the same. They stay alive for the whole run (2 bytes per frozen weight); autograd keeps
  each layer's bf16 weight for the backward pass anyway, so a step's peak grows by far less than
  that (an ad-hoc check on SmolLM2-135M: +40-50 MB peak RSS; bench numbers in docs/performance.md).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 natively: a GPU with bf16, or a CPU with AVX512-BF16 or AMX.
    Elsewhere bf16 matmuls are emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu" and hasattr(torch.cpu, "get_capabilities"):
        caps = torch.cpu.get_capabilities()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The recipe's `precision` as the loop runs it: "auto" becomes bf16 where the hardware has bf16
    matmuls, fp32 elsewhere. Measured on 2-core AVX512-BF16 CPUs (docs/performance.md): bf16 trains
    E2E/SmolLM2 2.24x and SST-2/MiniLM 1.87x faster than fp32 (bench_train, held-out loss within
    5e-4), and on a 1,000-step SST-2 run keeps the held-out loss to +0.0001 (bench_precision)."""
    if precision == "auto":
        return "bf16" if has_native_bf16(device) else "fp32"
    return precision


class FrozenWeightCasts:
    """Low-precision copies of frozen weights, made once and reused while the weight is unchanged.

    Keyed by the weight tensor itself and its in-place version counter, so a merge (an in-place
    add) makes the next call cast afresh. Only plain fp32 tensors that do not require grad are
    cached (Parameters: the model's own weights); trainable weights (LoRA A/B, heads, full fine-tuning)
    keep autocast's own handling.
    """

    def __init__(self) -> None:
        self._copies: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def cacheable(self, weight: object) -> bool:
        # Parameters only: a weight made on the fly (bitsandbytes dequantizes int8 rows into a new tensor
        # at every call) would be cached under a new identity each time, keeping every copy alive.
        return (
            isinstance(weight, torch.nn.Parameter)
            and weight.dtype == torch.float32
            and not weight.requires_grad
            and weight._base is None  # a view (e.g. W.T) is a new object per call: nothing to reuse
        )

    def get(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`weight.to(dtype)`, from the cache when `weight` has not changed since it was cast."""
        hit = self._copies.get(id(weight))
        if hit is not None and hit[0] is weight and hit[1] == weight._version and hit[2].dtype == dtype:
            return hit[2]
        copy = weight.detach().to(dtype)
        self._copies[id(weight)] = (weight, weight._version, copy)
        return copy

    def __len__(self) -> int:
        return len(self._copies)


# The cache of the innermost autocast_context, for code that multiplies by a weight without F.linear.
_active_casts: contextvars.ContextVar[FrozenWeightCasts | None] = contextvars.ContextVar("casts", default=None)


def autocast_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` in `dtype` for a matmul, from the active run's cache when it is a frozen weight
    (for code that multiplies by a weight directly instead of calling F.linear)."""
    if weight.dtype == dtype:
        return weight
    casts = _active_casts.get()
    if casts is not None and casts.cacheable(weight):
        return casts.get(weight, dtype)
    return weight.to(dtype)


class AutocastPatches(TorchFunctionMode):
    """Within bf16 autocast: `F.linear` takes frozen weights from `casts`, and on CPU
    `scaled_dot_product_attention` runs in fp32 with its output cast back to bf16.

    On CPU (torch 2.13) the bf16 SDPA kernels are slower than the fp32 ones: 2-4x in the backward pass
    at SmolLM2's shapes, ~18% of a bf16 training step, while attention is ~2% of the step's FLOPs.
    Every other op keeps autocast's policy.
    """

    def __init__(self, device_type: str, casts: FrozenWeightCasts | None, attention_in_fp32: bool) -> None:
        super().__init__()
        self.device_type = device_type
        self.casts = casts
        self.attention_in_fp32 = attention_in_fp32

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and self.casts is not None and torch.is_autocast_enabled(self.device_type):
            args, kwargs = self._with_cached_weight(args, kwargs)
            return func(*args, **kwargs)
        if func is F.scaled_dot_product_attention and self.attention_in_fp32:
            return self._attention_in_fp32(func, args, kwargs)
        return func(*args, **kwargs)

    def _with_cached_weight(self, args: tuple, kwargs: dict) -> tuple[list, dict]:
        # F.linear(input, weight, bias=None), positional or by keyword.
        args = list(args)
        kwargs = dict(kwargs)
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if self.casts.cacheable(weight) and weight.device.type == self.device_type:
            cast = self.casts.get(weight, torch.get_autocast_dtype(self.device_type))
            if len(args) > 1:
                args[1] = cast
            else:
                kwargs["weight"] = cast
        return args, kwargs

    def _attention_in_fp32(self, func, args, kwargs):
        def fp32(t):
            return t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

        dtype = torch.get_autocast_dtype(self.device_type)
        with torch.autocast(self.device_type, enabled=False):
            out = func(*[fp32(a) for a in args], **{k: fp32(v) for k, v in kwargs.items()})
        return out.to(dtype)


@contextlib.contextmanager
def autocast_context(precision: str, device: torch.device, casts: FrozenWeightCasts | None = None):
    """bf16 autocast on CPU or GPU when asked or when "auto" resolves to it, with `AutocastPatches`
    (frozen weights from `casts` when given; attention in fp32 on CPU); fp32 otherwise (a no-op).

    Pass the same `casts` to every step of a run so each frozen weight is cast once.
    """
    bf16 = resolve_precision(precision, device) == "bf16"
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        if not (bf16 and (casts is not None or device.type == "cpu")):
            yield
            return
        token = _active_casts.set(casts)
        try:
            with AutocastPatches(device.type, casts, attention_in_fp32=device.type == "cpu"):
                yield
        finally:
            _active_casts.reset(token)
