"""lorafit: fine-tune language models with LoRA from YAML recipes."""

__version__ = "0.1.0"
