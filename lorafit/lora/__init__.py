"""The LoRA core: layer, injection, merging and PEFT-format adapter files (torch + safetensors only)."""

from lorafit.lora.adapter import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    adapter_tensors,
    load_adapter_tensors,
    read_adapter_config,
    read_adapter_tensors,
    safetensors_os_errors,
    save_adapter,
    spec_from_config,
)
from lorafit.lora.inject import (
    ALL_LINEAR,
    InjectionReport,
    LoraSpec,
    add_lora,
    count_parameters,
    mark_all_trainable,
)
from lorafit.lora.layer import LoRALinear, lora_delta_output, lora_delta_weight, lora_scale
from lorafit.lora.merge import lora_disabled, lora_layers, merge_lora, unload_lora, unmerge_lora

__all__ = [
    "ALL_LINEAR",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "InjectionReport",
    "LoRALinear",
    "LoraSpec",
    "adapter_tensors",
    "add_lora",
    "count_parameters",
    "load_adapter_tensors",
    "lora_delta_output",
    "lora_delta_weight",
    "lora_disabled",
    "lora_layers",
    "lora_scale",
    "mark_all_trainable",
    "merge_lora",
    "read_adapter_config",
    "read_adapter_tensors",
    "safetensors_os_errors",
    "save_adapter",
    "spec_from_config",
    "unload_lora",
    "unmerge_lora",
]
