"""lorafit: fine-tune language models with LoRA from YAML recipes.

Importing lorafit changes nothing in the process (no environment variables, no torch settings): the
CLI entry point and `fit` apply what they need where work starts.
"""

__version__ = "0.1.0"
