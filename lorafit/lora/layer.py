"""LoRALinear: a frozen linear weight plus a trainable low-rank update (Hu et al. 2021, eq. 3).

    h = W x + b + scale * B (A (dropout(x)))        scale = alpha / rank   (or alpha / sqrt(rank), rsLoRA)

Shapes: x (..., d_in); W (d_out, d_in); A (rank, d_in); B (d_out, rank); h (..., d_out).

The layer keeps the wrapped module's own key names (`weight`, `bias` are the very same Parameter
objects), so a model with LoRA layers still has `...q_proj.weight` in its state dict and the merged
model saves exactly like the original. GPT-2's `Conv1D` stores its weight transposed, (d_in, d_out);
`transposed=True` handles it, and A/B keep PEFT's orientation either way.

All the low-rank math lives in `lora_delta_output` and `lora_delta_weight`, so a stacked multi-adapter
variant can reuse it.

A quantized frozen base (models/quantize.py: bitsandbytes `Linear4bit` nf4 / `Linear8bitLt` int8, both
nn.Linear subclasses whose weight holds packed integers) is wrapped the same way: the base path calls
the wrapped module itself (it dequantizes), the shapes come from its in/out features, and A/B are fp32.
Such a layer cannot be merged (the adapter is merged into the full-precision base instead).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lorafit.fast.dropout import FastDropout

InitKind = Literal["kaiming", "gaussian"]


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
        quantized: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"rank must be > 0, got {rank}")
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
        self.reset_lora_parameters(init)

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
        """A random, B zero: the product BA starts at zero, so the untrained adapter is the identity.

        kaiming: A ~ kaiming_uniform(a=sqrt(5)), nn.Linear's default (as in PEFT and loralib).
        gaussian: A ~ N(0, 1/rank) (PEFT's `init_lora_weights="gaussian"`).
        """
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        elif init == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1 / self.rank)
        else:
            raise ValueError(f"unknown init {init!r}: expected 'kaiming' or 'gaussian'")
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._quantized is not None:
            out = self._quantized(x)  # dequantizes W (blockwise) and multiplies; no gradient to W
        else:  # Base path: W stored (d_out, d_in), or (d_in, d_out) for Conv1D.
            weight = self.weight.T if self.transposed else self.weight
            out = F.linear(x, weight, self.bias)
        if self.merged or self.disabled:
            return out
        return out + lora_delta_output(self.lora_dropout(x), self.lora_A.weight, self.lora_B.weight, self.scale)

    def delta_weight(self) -> torch.Tensor:
        """scale * B A in fp32, in the wrapped weight's orientation."""
        return lora_delta_weight(self.lora_A.weight, self.lora_B.weight, self.scale, self.transposed)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha}, rslora={self.rslora}, transposed={self.transposed}, merged={self.merged}"
        )
