"""LoRALinear: a frozen linear weight plus a trainable low-rank update (Hu et al. 2021, eq. 3).

    h = W x + b + scale * B (A (dropout(x)))        scale = alpha / rank   (or alpha / sqrt(rank), rsLoRA)

Shapes: x (..., d_in); W (d_out, d_in); A (rank, d_in); B (d_out, rank); h (..., d_out).

The layer keeps the wrapped module's own key names (`weight`, `bias` are the very same Parameter
objects), so a model with LoRA layers still has `...q_proj.weight` in its state dict and the merged
model saves exactly like the original. GPT-2's `Conv1D` stores its weight transposed, (d_in, d_out);
`transposed=True` handles it, and A/B keep PEFT's orientation either way.

All the low-rank math lives in `lora_delta_output` and `lora_delta_weight`, so a stacked multi-adapter
variant can reuse it. Two options of this one layer (no subclasses):

- `dora=True`: DoRA's magnitude vector `lora_magnitude_vector` (d_out,) beside A and B, the math in
  lorafit/lora/dora.py;
- `init`: besides the random inits, pissa / pissa_niter_K / olora take A and B from W and leave the
  residual W - scale * B A in `weight` (lorafit/lora/inits.py); the initial factors are kept (outside the
  state dict) so the saved adapter can be converted to apply to the original W.

A quantized frozen base (models/quantize.py: bitsandbytes `Linear4bit` nf4 / `Linear8bitLt` int8, both
nn.Linear subclasses whose weight holds packed integers) is wrapped the same way: the base path calls
the wrapped module itself (it dequantizes), the shapes come from its in/out features, and A/B are fp32.
Such a layer cannot be merged (the adapter is merged into the full-precision base instead), and takes
neither DoRA nor an init that factors W (both need W itself).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lorafit.fast.dropout import FastDropout
from lorafit.lora.dora import dora_delta_output, dora_factor, dora_merged_weight, dora_weight_norm
from lorafit.lora.inits import base_factors, init_problem, random_factors, uses_base_weight

# "kaiming", "gaussian", "pissa", "pissa_niter_K" (K an integer) or "olora"; see lorafit/lora/inits.py.
InitKind = str


def lora_scale(rank: int, alpha: float, rslora: bool) -> float:
    """alpha / rank (paper, section 4.1), or alpha / sqrt(rank) for rank-stabilised LoRA (Kalajdzievski 2023)."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def lora_delta_output(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * x A^T B^T for x (..., d_in), a (rank, d_in), b (d_out, rank) -> (..., d_out).

    Two thin matmuls (d_in -> rank -> d_out) instead of forming the d_out x d_in product.
    """
    return F.linear(F.linear(x, a), b) * scale


def lora_delta_weight(a: torch.Tensor, b: torch.Tensor, scale: float, transposed: bool) -> torch.Tensor:
    """The dense update scale * B A in fp32: (d_out, d_in), or (d_in, d_out) for a transposed weight."""
    delta = (b.float() @ a.float()) * scale
    return delta.T if transposed else delta


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' GPT-2 `Conv1D` (a linear layer with weight (d_in, d_out)).

    Checked by duck typing so this package never imports transformers.
    """
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put `new` where the submodule named `path` (e.g. "model.layers.0.self_attn.q_proj") is."""
    parent_name, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def is_quantized(module: nn.Module) -> bool:
    """True for a linear whose weight is stored as integers (bitsandbytes Linear4bit / Linear8bitLt),
    duck typed so this package never imports bitsandbytes."""
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) and weight is not None and not weight.dtype.is_floating_point


def weight_numel(param: torch.Tensor) -> int:
    """Weights a parameter stands for: a packed nf4 weight (bitsandbytes Params4bit) holds two per byte,
    its own shape is the packed one and its quant_state keeps the real one."""
    state = getattr(param, "quant_state", None)
    return int(torch.Size(state.shape).numel()) if state is not None else param.numel()


def is_linear(module: nn.Module) -> bool:
    """Layers LoRA can wrap: nn.Linear and GPT-2 Conv1D."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


class LoRALinear(nn.Module):
    """A linear layer with a frozen weight and a trainable rank-`rank` update.

    Build it with `LoRALinear.wrap(module, ...)`; `unwrap()` gives the original module back
    (with whatever merge has been applied to its weight).
    """

    def __init__(
        self,
        weight: nn.Parameter,
        bias: nn.Parameter | None,
        *,
        transposed: bool,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        rslora: bool = False,
        init: InitKind = "kaiming",
        dora: bool = False,
        quantized: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"rank must be > 0, got {rank}")
        if quantized is not None and (dora or uses_base_weight(init)):
            raise ValueError("a quantized base layer takes neither DoRA nor a pissa/olora init (both need W itself)")
        self.weight = weight
        self.bias = bias
        self.transposed = transposed
        if quantized is not None:  # the weight holds packed integers: the shape is the module's
            d_in, d_out = quantized.in_features, quantized.out_features
        else:
            d_in, d_out = (weight.shape[0], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[0])
        self.in_features, self.out_features = d_in, d_out
        self.rank, self.alpha, self.rslora = rank, alpha, rslora
        self.scale = lora_scale(rank, alpha, rslora)
        # Outside the module tree (no state-dict keys, no train/eval switching): the base path's module.
        object.__setattr__(self, "_quantized", quantized)
        factory = {"device": weight.device, "dtype": torch.float32 if quantized is not None else weight.dtype}
        # nn.Linear submodules so the keys read `lora_A.weight` / `lora_B.weight`, as in PEFT's files.
        self.lora_A = nn.Linear(d_in, rank, bias=False, **factory)  # A: (rank, d_in)
        self.lora_B = nn.Linear(rank, d_out, bias=False, **factory)  # B: (d_out, rank)
        # A cheaper mask than nn.Dropout on CPU (fast/dropout.py); same probability up to 1/65536.
        self.lora_dropout = FastDropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False  # True: behave as the base layer (to compare base vs adapted outputs)
        self._weight_before_merge: torch.Tensor | None = None
        self._original: nn.Module | None = None
        # (A0, B0) of an init that factors W (pissa, olora): what the saved adapter is converted with.
        self.initial_factors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.init = init
        self.reset_lora_parameters(init)
        self.dora = dora
        if dora:
            # m starts at ||W + s B A||_row, so the DoRA factor is 1 before training (lorafit/lora/dora.py).
            norm = dora_weight_norm(self.oriented_weight().detach(), self.lora_A.weight, self.lora_B.weight, self.scale)
            self.lora_magnitude_vector = nn.Parameter(norm.detach().clone())  # (d_out,), PEFT's key name

    @classmethod
    def wrap(cls, module: nn.Module, **kwargs) -> LoRALinear:
        """Wrap an nn.Linear or Conv1D, sharing its weight and bias Parameters."""
        if not is_linear(module):
            raise TypeError(f"cannot wrap {type(module).__name__}: only nn.Linear and Conv1D")
        quantized = module if is_quantized(module) else None
        layer = cls(module.weight, module.bias, transposed=is_conv1d(module), quantized=quantized, **kwargs)
        # Kept outside the module tree (no state-dict keys) so `unwrap` can restore the original class.
        object.__setattr__(layer, "_original", module)
        return layer

    def unwrap(self) -> nn.Module:
        """The original module, holding the (possibly merged) weight."""
        return self._original

    @torch.no_grad()
    def reset_lora_parameters(self, init: InitKind = "kaiming") -> None:
        """Set A and B by `init` (lorafit/lora/inits.py).

        kaiming / gaussian: A random, B zero, so the untrained adapter is the identity.
        pissa / pissa_niter_K / olora: A and B from W's SVD / QR, and `weight` becomes the residual
        W - scale * B A (in place: the base model's Parameter), so the model's output is unchanged.
        """
        problem = init_problem(init)
        if problem:
            raise ValueError(f"init {problem}")
        if not uses_base_weight(init):
            a, b = random_factors(init, self.rank, self.in_features, self.out_features, self.lora_A.weight)
            self.lora_A.weight.copy_(a)
            self.lora_B.weight.copy_(b)
            return
        if self.initial_factors is not None:
            raise ValueError("the base weight already holds a residual; this layer was initialised from W once")
        weight = self.oriented_weight()
        a, b = base_factors(init, weight, self.rank, self.scale)
        residual = weight.float() - self.scale * (b @ a)  # (d_out, d_in)
        self.weight.data.copy_((residual.T if self.transposed else residual).to(self.weight.dtype))
        self.lora_A.weight.copy_(a)
        self.lora_B.weight.copy_(b)
        self.initial_factors = (a.clone(), b.clone())

    def oriented_weight(self) -> torch.Tensor:
        """W as (d_out, d_in), whatever the storage (Conv1D keeps it (d_in, d_out))."""
        return self.weight.T if self.transposed else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._quantized is not None:
            out = self._quantized(x)  # dequantizes W (blockwise) and multiplies; no gradient to W
        else:  # Base path: W stored (d_out, d_in), or (d_in, d_out) for Conv1D.
            weight = self.weight.T if self.transposed else self.weight
            out = F.linear(x, weight, self.bias)
        if self.merged:
            return out
        if self.disabled:
            if self.initial_factors is not None:  # weight holds W - s B0 A0: add it back to give the base's W x
                a0, b0 = self.initial_factors
                out = out + lora_delta_output(x, a0.to(x), b0.to(x), self.scale)
            return out
        dropped = self.lora_dropout(x)
        if not self.dora:
            return out + lora_delta_output(dropped, self.lora_A.weight, self.lora_B.weight, self.scale)
        factor = dora_factor(self.lora_magnitude_vector, weight, self.lora_A.weight, self.lora_B.weight, self.scale)
        low_rank = F.linear(F.linear(dropped, self.lora_A.weight), self.lora_B.weight)  # B A x, (..., d_out)
        if dropped is x:  # no dropout (or eval): W x is the base output without its bias
            base = out if self.bias is None else out - self.bias
        else:  # with dropout, DoRA's rescaling of W x sees the dropped input, as in PEFT
            base = F.linear(dropped, weight)
        return out + dora_delta_output(base, low_rank, factor, self.scale)

    def delta_weight(self) -> torch.Tensor:
        """W' - W in fp32, in the wrapped weight's orientation: scale * B A, or for DoRA
        m / ||W + scale B A||_row * (W + scale B A) - W."""
        if not self.dora:
            return lora_delta_weight(self.lora_A.weight, self.lora_B.weight, self.scale, self.transposed)
        weight = self.oriented_weight()
        merged = dora_merged_weight(weight, self.lora_A.weight, self.lora_B.weight, self.scale, self.lora_magnitude_vector)
        delta = merged - weight.float()
        return delta.T if self.transposed else delta

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha}, rslora={self.rslora}, dora={self.dora}, init={self.init}, "
            f"transposed={self.transposed}, merged={self.merged}"
        )
