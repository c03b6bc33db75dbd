"""Activation checkpointing (`train.gradient_checkpointing: true`): keep only each decoder layer's input
in the forward pass and recompute the layer's activations when the backward pass reaches it.

Memory: a layer's saved activations (for SmolLM2 ~30 tensors of tokens x hidden or tokens x intermediate)
shrink to one tokens x hidden input per layer; the price is a second forward of every layer (~1/3 more
compute per step). The recompute is exact, i.e. it gives the same loss and gradients:
- non-reentrant torch.utils.checkpoint (through transformers' `activation_checkpointing_enable`), which
  restores the CPU RNG state before recomputing, so LoRA dropout and attention dropout draw the very
  masks of the forward pass, and re-enters the forward's autocast state;
- the torch-function modes active during the forward (fast/attention.py: packed attention, cheap
  attention dropout; fast/precision.py: bf16 patches) are entered again around the recompute: the
  backward pass runs outside the `with` blocks that set them, and without packed attention the
  recompute would let a packed row's examples attend to each other.
"""

from __future__ import annotations

import contextlib

from torch import nn
from torch.overrides import _get_current_function_mode_stack

from lorafit.errors import RecipeError


@contextlib.contextmanager
def _modes_entered(modes: list) -> contextlib.AbstractContextManager:
    with contextlib.ExitStack() as stack:
        for mode in modes:  # outermost first, as they were entered
            stack.enter_context(mode)
        yield


def _replay_forward_modes() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """checkpoint's `context_fn`, called in the forward: (context for the forward, for the recompute)."""
    modes = list(_get_current_function_mode_stack())
    return contextlib.nullcontext(), _modes_entered(modes)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute every decoder / encoder layer of a transformers `model` in the backward pass (training
    mode only; evaluation is unchanged). RecipeError for a model class without checkpointing support."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise RecipeError(f"train.gradient_checkpointing: {type(model).__name__} does not support "
                          "activation checkpointing; set it to false")
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False, "preserve_rng_state": True,
                                         "context_fn": _replay_forward_modes})
