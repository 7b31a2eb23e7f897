"""The forward multipliers of Tables 1-6 on a model that does not apply them itself: forward hooks
that scale each residual branch's output by the block multiplier (1/r_L; 1/sqrt(r_L) for k = 1) and
the output layer's by the output multiplier (1/r_n), so the model's code is not edited.

The branches of a block are its children with a usual name (``DEFAULT_BRANCHES``: GPT-2's and HF
Llama's ``attn``/``self_attn`` and ``mlp``, GPT-NeoX's ``attention``, ...), or the modules that
``model_branches`` names by glob, or any module inside a block whose class says
``residual_branch = True`` (the one-line marker). The output layer is the module that owns the output
matrix (trainer.roles). The input multiplier is 1 in every table: no hook.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Sequence

import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from .model import Multipliers
from .roles import Layout

DEFAULT_BRANCHES = ("attn", "self_attn", "attention", "mlp", "feed_forward", "ffn")
MARKER = "residual_branch"


def branches(model: nn.Module, layout: Layout, patterns: Sequence[str] = ()) -> list[list[str]]:
    """The residual branches of each block (module names, in the model's order); ValueError for a
    block without one."""
    modules = list(model.named_modules())
    found = []
    for block in layout.blocks:
        inside = [(name, module) for name, module in modules if name.startswith(block + ".")]
        if patterns:
            mine = [name for name, _ in inside if any(fnmatchcase(name, p) for p in patterns)]
        else:
            mine = [name for name, module in inside
                    if name.count(".") == block.count(".") + 1 and name.rpartition(".")[2] in DEFAULT_BRANCHES
                    or getattr(module, MARKER, False) is True]
        if not mine:
            children = [name for name, _ in inside if name.count(".") == block.count(".") + 1]
            raise ValueError(f"block {block} has no residual branch the block multiplier can scale (children: "
                             f"{', '.join(children)}): name them with model_branches='{block.rpartition('.')[0]}.*.NAME ...'"
                             f" or mark their class with {MARKER} = True")
        found.append(mine)
    return found


def _scale(alpha: float):
    def hook(module, args, output):
        if isinstance(output, tuple):  # (output, attention weights, ...): HF attention modules
            return (output[0] * alpha, *output[1:])
        return output * alpha
    return hook


def attach_multipliers(model: nn.Module, layout: Layout, multipliers: Multipliers,
                       patterns: Sequence[str] = ()) -> list[RemovableHandle]:
    """Registers the hooks (none where a multiplier is 1) and returns their handles."""
    if not layout.heads and multipliers.output != 1.0:
        raise ValueError("the model has no output layer to scale: no matrix whose fan-in grows with width")
    handles = []
    for block in branches(model, layout, patterns):
        for name in block:
            if multipliers.block != 1.0:
                handles.append(model.get_submodule(name).register_forward_hook(_scale(multipliers.block)))
    if multipliers.output != 1.0:
        handles += [model.get_submodule(name).register_forward_hook(_scale(multipliers.output))
                    for name in layout.heads]
    return handles
