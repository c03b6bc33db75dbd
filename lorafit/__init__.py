"""lorafit: fine-tune language models with LoRA from YAML recipes."""

from lorafit.fast.memory import limit_onednn_primitive_cache

__version__ = "0.1.0"

# Before any bf16 matmul can run: oneDNN reads its cache size once (memory.py says why).
limit_onednn_primitive_cache()
