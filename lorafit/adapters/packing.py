"""An inference host's frozen linear layers swapped for oneDNN-packed ones, and back where a copy is needed.

`pack_linears(model)` replaces every nn.Linear and GPT-2 Conv1D in `model` by a
`lorafit.fast.packed.PackedLinear` (same bias Parameter, weight reordered once; the plain weight is
dropped unless another module shares it: a tied LM head's packed copy is the one extra, 113 MB in
fp32 for SmolLM2-135M; bench/bench_host_memory.py measures it). `MultiLoRALinear` wraps a PackedLinear as it wraps a plain
linear. `unpack_linears(module)` turns the PackedLinear layers of one module back into plain ones,
for `SlotModules`, which deep-copies the module it wraps (a oneDNN tensor cannot be copied).
"""

from __future__ import annotations

from torch import nn

from lorafit.fast.packed import PackedLinear, can_pack
from lorafit.lora.layer import is_conv1d, is_linear, replace_module

# Conv1D layers packed (weight transposed to (d_out, d_in)) are remembered, so unpacking gives a
# Conv1D back with its (d_in, d_out) weight: an adapter's saved copy of it has that orientation.
_FROM_CONV1D = "_lorafit_from_conv1d"


def pack_linears(model: nn.Module) -> int:
    """Swap each packable nn.Linear / Conv1D of `model` for a PackedLinear; returns how many were swapped.

    Layers oneDNN cannot take (another device or dtype, or a torch built without oneDNN) stay as they are.
    """
    found = [(path, m) for path, m in model.named_modules() if path and is_linear(m)]
    count = 0
    for path, module in found:
        conv1d = is_conv1d(module)
        weight = module.weight.T.contiguous() if conv1d else module.weight  # (d_out, d_in)
        if not can_pack(weight):
            continue
        packed = PackedLinear(weight, module.bias)
        if conv1d:
            setattr(packed, _FROM_CONV1D, True)
        replace_module(model, path, packed)
        count += 1
    if count:
        # transformers maps a safetensors checkpoint into memory; every page packing read stays resident
        # (as file cache counted in RSS) while any tensor still points into the mapping. The parameters
        # left (embeddings, norms) get memory of their own, so the mapping goes with the plain weights.
        for param in model.parameters():
            param.data = param.data.clone()
    return count


def unpack_linears(module: nn.Module) -> nn.Module:
    """`module` with every PackedLinear in it (itself included) replaced by a plain layer of its values."""

    def plain(packed: PackedLinear) -> nn.Module:
        linear = packed.unpacked()
        if not getattr(packed, _FROM_CONV1D, False):
            return linear
        from transformers.pytorch_utils import Conv1D

        conv = Conv1D(packed.out_features, packed.in_features).to(device=packed.device, dtype=packed.dtype)
        conv.weight = nn.Parameter(linear.weight.T.contiguous(), requires_grad=False)
        conv.bias = linear.bias if linear.bias is not None else conv.bias
        return conv.requires_grad_(False)

    if isinstance(module, PackedLinear):
        return plain(module)
    for path, child in list(module.named_modules()):
        if path and isinstance(child, PackedLinear):
            replace_module(module, path, plain(child))
    return module
