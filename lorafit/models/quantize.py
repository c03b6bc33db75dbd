"""A quantized frozen base (QLoRA, Dettmers et al. 2023): the base's linear layers stored in 4 or 8 bits
at load time, the LoRA layers wrapping them unchanged (lora/layer.py calls the quantized module).

    quantize: nf4    bitsandbytes Linear4bit, NormalFloat4 (QLoRA section 3), one fp32 absmax per block
                     of 64 weights (no double quantization): 4.5 bits per weight, 7.1x less than fp32.
                     Forward and the input gradient dequantize the block-wise codes to the compute dtype
                     and run an ordinary matmul in it.
    quantize: int8   bitsandbytes Linear8bitLt with LLM.int8()'s weight format (Dettmers et al. 2022): one
                     int8 row per output with a row scale (absmax / 127), 8 bits per weight (4x less than
                     fp32), run weight-only: the row is dequantized to the compute dtype and multiplied
                     (bitsandbytes' CPU training path; see `_weight_only`).

Why bitsandbytes: its CPU backend runs both layers forward and backward (gradient w.r.t. the input,
which LoRA layers below need) on this machine; bench/bench_quant_layer.py measures them against fp32 /
bf16 nn.Linear (docs/quantization.md). torchao is not installed here, so it was not measured.

Quantized: every nn.Linear except the output head (lm_head; tied to the embeddings in SmolLM2), a
classifier's new head and `modules_to_save` (those are trained in full); embeddings and norms stay
floating point. Those are fp32 after loading, whatever dtype the checkpoint was read in: the model is
read in bf16 (half the peak of an fp32 read) and each linear is quantized from that.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from lorafit.errors import ModelError
from lorafit.fast.memory import release_free_heap

QUANTIZE_KINDS = ("none", "int8", "nf4")
NF4_BLOCKSIZE = 64  # weights per absmax (QLoRA's choice)


def _bitsandbytes():
    # On import its CPU backend logs a warning when the optional `kernels` package is missing: that
    # kernel serves only the inference repacking this module switches off (see quantized_linear).
    bnb_logger = logging.getLogger("bitsandbytes")
    level = bnb_logger.level
    bnb_logger.setLevel(logging.ERROR)
    try:
        import bitsandbytes
    except ImportError as e:  # pragma: no cover - installed with lorafit[quantize]
        raise ModelError("quantize: needs bitsandbytes (pip install 'lorafit[quantize]')") from e
    finally:
        bnb_logger.setLevel(level)
    return bitsandbytes


def quantized_linear(linear: nn.Linear, kind: str, compute_dtype: torch.dtype) -> nn.Module:
    """A frozen bitsandbytes copy of `linear` in `kind` ("nf4" or "int8"); `linear`'s weight is not
    kept (the caller drops it). The new module's own random initialisation is skipped (meta device)."""
    bnb = _bitsandbytes()
    weight = linear.weight.detach()
    bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
    if kind == "nf4":
        module = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False, compute_dtype=compute_dtype,
                                   quant_type="nf4", compress_statistics=False, device="meta")
        module.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4", blocksize=NF4_BLOCKSIZE,
                                          compress_statistics=False, module=module).to(weight.device)
        # bitsandbytes repacks a CPU weight for inference on the first no-grad eval-mode call, a layout
        # its backward does not take; training validates in eval mode between steps, so never repack.
        module.support_avx512bf16_for_cpu = False
    elif kind == "int8":
        module = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=False, has_fp16_weights=False,
                                     threshold=0.0, device="meta")
        module.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False).to(weight.device)
        module.register_forward_pre_hook(_weight_only)
    else:
        raise ValueError(f"unknown quantize kind {kind!r}: expected one of {', '.join(QUANTIZE_KINDS[1:])}")
    module.bias = bias
    return module.train(linear.training)


def _weight_only(module: nn.Module, args: tuple) -> None:
    """Linear8bitLt on CPU multiplies dequantized int8 weights in training mode, but in eval mode rounds the
    activations to fp16 and then int8 (int8 x int8, a warning per call): validation would then compute
    another function than training. The layer has nothing else that depends on the mode, so it always
    runs the training path (also the faster one on CPU: bench/bench_quant_layer.py)."""
    module.training = True


def quantize_base(model: nn.Module, kind: str, compute_dtype: torch.dtype, keep: set[str] = frozenset()) -> list[str]:
    """Replace `model`'s nn.Linear layers (in place) by frozen `kind` copies, except the modules named in
    `keep` and those inside them; then make every remaining floating-point parameter fp32.

    Returns the qualified names of the quantized layers. `kind` "none" does nothing."""
    if kind == "none":
        return []
    names = [name for name, m in model.named_modules()
             if type(m) is nn.Linear and not any(name == k or name.startswith(k + ".") for k in keep)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, quantized_linear(getattr(parent, child), kind, compute_dtype))  # frees the old weight
    for param in model.parameters():
        if param.dtype.is_floating_point and param.dtype != torch.float32:
            param.data = param.data.float()
    for buffer_owner in model.modules():
        for key, buffer in buffer_owner.named_buffers(recurse=False):
            if buffer.dtype.is_floating_point and buffer.dtype != torch.float32:
                buffer_owner._buffers[key] = buffer.float()
    # The replaced weights went back to the C heap, which keeps them resident (fast/memory.py): hand the
    # pages to the OS, or the process keeps the unquantized model's size for the whole run.
    release_free_heap()
    return names


def quantized_kind(model: nn.Module) -> str:
    """What `quantize_base` made of `model`: "nf4", "int8" or "none" (duck typed on the layers' weights)."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) and weight is not None and not weight.dtype.is_floating_point:
            return "nf4" if hasattr(weight, "quant_state") else "int8"
    return "none"


def logical_shape(param: torch.Tensor) -> tuple[int, ...]:
    """The unquantized shape of a (possibly packed nf4) weight."""
    state = getattr(param, "quant_state", None)
    return tuple(state.shape) if state is not None else tuple(param.shape)
