"""`lorafit merge`: adapter + base -> a plain Hugging Face model directory with W + scale * B A baked in."""

from __future__ import annotations

import json
from pathlib import Path

from lorafit.errors import RunDirError
from lorafit.lora import merge_lora, safetensors_os_errors, unload_lora
from lorafit.models.loader import load_target, target_kind
from lorafit.runs.atomic import atomic_directory


def merge_adapter(adapter: str, output: Path, *, overwrite: bool) -> dict:
    """Merge `adapter` (an adapter or run directory) into its base and save to `output` atomically.

    Nothing is written unless the adapter loads, fits its base and merges to finite weights; an
    existing `output` is replaced only with --overwrite.
    """
    if target_kind(adapter) == "model":
        raise RunDirError(f"{adapter}: not an adapter or run directory (no adapter_config.json / recipe.yaml)")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise RunDirError(f"{output}: already exists; pass --overwrite to replace it")
    loaded = load_target(adapter)
    if loaded.spec is None:
        raise RunDirError(f"{adapter}: holds a fully fine-tuned model, which has nothing to merge")
    layers = merge_lora(loaded.model, keep_original=False)
    model = unload_lora(loaded.model)
    with atomic_directory(output) as tmp, safetensors_os_errors():
        model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
    return {
        "adapter": adapter,
        "output": str(output),
        "layers": layers,
        "base": loaded.base.path_or_id,
        "files": sorted(p.name for p in output.iterdir()),
        "config": json.loads((output / "config.json").read_text()).get("architectures"),
    }
