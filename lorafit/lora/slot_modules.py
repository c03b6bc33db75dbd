"""Modules trained in full by some adapters (PEFT's modules_to_save, e.g. a classification head), one
copy per slot, for the multi-adapter host (lorafit/lora/multi.py routes the rows)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class SlotModules(nn.Module):
    """A module trained in full by some adapters (PEFT's modules_to_save, e.g. a classification head),
    one copy per slot: row i goes through slot idx[i]'s copy, or the base module for slot 0 and for
    adapters that did not train it.

    Outputs of copies whose last dim differs (heads with different label counts) are padded with NaN
    up to the widest; the caller trims each row to its adapter's width.
    """

    def __init__(self, base: nn.Module, routing):  # routing: lorafit.lora.multi.SlotRouting
        super().__init__()
        self.base = base
        self.copies = nn.ModuleDict()  # str(slot) -> module
        object.__setattr__(self, "routing", routing)

    @torch.no_grad()
    def set_slot(self, slot: int, params: dict[str, torch.Tensor]) -> None:
        """A copy of the base module with `params` (names relative to the module) replacing its own;
        a parameter may change shape (a head with another number of labels)."""
        head = copy.deepcopy(self.base)
        own = dict(head.named_parameters())
        unknown = sorted(set(params) - set(own))
        if unknown:
            raise KeyError(unknown[0])
        for name, value in params.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = head.get_submodule(owner_name) if owner_name else head
            setattr(owner, leaf, nn.Parameter(value.to(own[name].dtype).clone(), requires_grad=False))
        self.copies[str(slot)] = head

    def clear_slot(self, slot: int) -> None:
        self.copies.pop(str(slot), None)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        plan = self.routing.plan(x.shape[:1])
        groups = [] if plan is None else [(s, r) for s, r in plan.groups if str(s) in self.copies]
        if not groups:
            return self.base(x, *args, **kwargs)
        parts = [(None, self.base(x, *args, **kwargs))]
        parts += [(rows, self.copies[str(slot)](x[rows], *args, **kwargs)) for slot, rows in groups]
        width = max(p.shape[-1] for _, p in parts)
        out = parts[0][1]
        if out.shape[-1] < width:
            out = F.pad(out, (0, width - out.shape[-1]), value=float("nan"))
        else:
            out = out.clone()
        for rows, part in parts[1:]:
            part = F.pad(part, (0, width - part.shape[-1]), value=float("nan")) if part.shape[-1] < width else part
            out[rows] = part
        return out
