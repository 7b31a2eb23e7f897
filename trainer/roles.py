"""Each parameter's role, inferred from shapes, so that the rule table never learns a model's names.

The model is built three times on the meta device (nothing allocated): at the run's width and depth,
at twice the width, and one block deeper. Then:

- the residual blocks are the entries of the module lists that the deeper build has one more of
  (``h.0``, ``h.1``, ... in GPT-2; ``model.layers.N`` in a Hugging Face Llama), and a parameter
  inside one belongs to the block multiplier's branch; its group name writes the index as ``*``;
- a parameter's width-scaling dimensions are those that change with the width:
  both dimensions of a matrix: hidden (inside a block); one: input where it is the fan-out, output
  where it is the fan-in (a Linear's fan-in is its second dimension, an Embedding's its first, a
  Hugging Face Conv1D's its first); a width vector of a norm module: norm (gain 1, bias 0; inside a
  block the hidden-bias column, outside the input-bias one); a Linear's bias: its weight's role;
- a parameter shape cannot decide is ambiguous: one tensor under two names (tied embeddings), a
  matrix of a module of unknown orientation (a custom fused matrix), a tensor of fixed size (a
  scalar gate), a width-by-width matrix outside the blocks. ``model_roles`` names their role by a
  glob of parameter names (a pattern also matches a dotted suffix: ``embed_tokens.weight``); any
  left ambiguous is an error naming them (``AmbiguousRoles``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Callable, Mapping, Optional

import torch.nn as nn

from .rules import HIDDEN, HIDDEN_BIAS, INPUT, OUTPUT


@dataclass(frozen=True)
class Place:
    role: str
    column: str  # the tables' column whose rules apply
    position: str  # whose forward multiplier scales it: "input" | "block" | "output"
    init: str  # "normal" | "zeros" | "ones"


ROLES = ("input", "input bias", "hidden", "hidden bias", "output", "norm")


def place_of(role: str, in_block: bool, is_bias: bool) -> Place:
    """The column, multiplier and init of a role. Norms are vectors like biases: inside a block they
    take the hidden-bias column (their gradient carries the block's alpha_l), outside every branch
    the input-bias one, scaled by alpha_out on their way to the output layer."""
    if role == "norm":
        init = "zeros" if is_bias else "ones"
        return Place("norm", HIDDEN_BIAS, "block", init) if in_block else Place("norm", INPUT, "output", init)
    return {"input": Place("input", INPUT, "input", "normal"),
            "input bias": Place("input bias", INPUT, "input", "zeros"),
            "hidden": Place("hidden", HIDDEN, "block", "normal"),
            "hidden bias": Place("hidden bias", HIDDEN_BIAS, "block", "zeros"),
            "output": Place("output", OUTPUT, "output", "normal")}[role]


class AmbiguousRoles(ValueError):
    """Parameters whose role shape cannot decide, and model_roles does not name."""

    def __init__(self, ambiguous: Mapping[str, str]):
        self.ambiguous = dict(ambiguous)
        lines = "; ".join(f"{name}: {why}" for name, why in self.ambiguous.items())
        super().__init__(f"the role of {len(self.ambiguous)} parameter(s) cannot be told from shapes: {lines}. "
                         f"Name them with model_roles={{pattern: role}} (roles: {', '.join(ROLES)}), "
                         f"e.g. model_roles={{{next(iter(self.ambiguous))}: input}}")


@dataclass
class Layout:
    """What inference found: each parameter's group and place, the blocks and the output layer."""
    places: dict[str, tuple[str, Place]]  # parameter name (as named_parameters gives it) -> (group, place)
    blocks: list[str]  # module names of the residual blocks, in order
    heads: list[str]  # modules owning an output matrix: the output multiplier scales their output
    ambiguous: dict[str, str] = field(default_factory=dict)  # parameter name -> why

    def check(self) -> None:
        if self.ambiguous:
            raise AmbiguousRoles(self.ambiguous)


def fan_in_axis(module: nn.Module) -> Optional[int]:
    """Which dimension of the module's weight is its fan-in; None where the module kind does not say."""
    if isinstance(module, nn.Linear):
        return 1
    if isinstance(module, nn.Embedding) or type(module).__name__ == "Conv1D":  # a lookup; HF's (in, out)
        return 0
    return None


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()


def _shape_role(module: nn.Module, attribute: str, scaling: list[int], ndim: int, in_block: bool,
                weight_role: Callable[[], tuple[Optional[str], str]]) -> tuple[Optional[str], str]:
    """(role, why): the role shapes give, or None and why they cannot."""
    kind = type(module).__name__
    if ndim == 1 and scaling:
        if is_norm(module):
            return "norm", ""
        if attribute == "bias" and fan_in_axis(module) is not None:
            role, why = weight_role()
            bias = {"hidden": "hidden bias", "input": "input bias"}.get(role or "")
            return (bias, "") if bias else (None, f"the bias of a {kind} whose weight is {role or 'ambiguous'}")
        return None, f"a width vector of a {kind}, neither a norm's nor a Linear's bias"
    if ndim == 2 and len(scaling) == 2:
        return ("hidden", "") if in_block else (None, "a width-by-width matrix outside the residual blocks")
    if ndim == 2 and len(scaling) == 1:
        axis = fan_in_axis(module)
        if axis is None:
            return None, f"a matrix of a {kind}: which of its dimensions is the fan-in is unknown"
        role = "output" if scaling[0] == axis else "input"
        return (None, f"an {role} matrix inside a residual block") if in_block else (role, "")
    if not scaling:
        return None, "a tensor whose size does not grow with width (a gate or scale)"
    return None, f"a {ndim}-D tensor"


def _blocks(base: nn.Module, deep: nn.Module) -> list[str]:
    """Module names of the residual blocks: entries of the lists the deeper build has one more of."""
    base_modules = dict(base.named_modules())
    lists = sorted({name.rpartition(".")[0] for name, _ in deep.named_modules()
                    if name not in base_modules and name.rpartition(".")[2].isdigit()
                    and name.rpartition(".")[0] in base_modules})
    return [name for name in base_modules
            if name.rpartition(".")[0] in lists and name.rpartition(".")[2].isdigit()]


def infer_layout(build: Callable[[int, int], nn.Module], width: int, depth: int,
                 roles: Optional[Mapping[str, str]] = None) -> Layout:
    """The layout of the model ``build(width, depth)`` returns (on the meta device), with the roles
    ``roles`` names by pattern ({glob of parameter names: role}) taking precedence over shapes."""
    roles = dict(roles or {})
    unknown = sorted({role for role in roles.values() if role not in ROLES})
    if unknown:
        raise ValueError(f"model_roles: unknown role(s) {unknown}: choose {', '.join(ROLES)}")
    base, wide, deep = build(width, depth), build(2 * width, depth), build(width, depth + 1)
    blocks = _blocks(base, deep)
    if not blocks:
        raise ValueError("the model has no residual blocks: building it one block deeper added no entry to "
                         "any module list (does its factory use depth?)")
    lists = sorted({block.rpartition(".")[0] for block in blocks})
    block_entry = re.compile("^(" + "|".join(re.escape(f"{name}.") if name else "" for name in lists) + r")\d+\.")
    wide_shapes = {name: tuple(p.shape) for name, p in wide.named_parameters(remove_duplicate=False)}
    names_of: dict[int, list[str]] = {}
    for name, p in base.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)

    def shape_role(name: str, p) -> tuple[Optional[str], str]:
        module_name, _, attribute = name.rpartition(".")
        module = base.get_submodule(module_name)
        if name not in wide_shapes or len(wide_shapes[name]) != p.ndim:
            return None, "its name or number of dimensions changes with width"
        scaling = [i for i, (a, b) in enumerate(zip(p.shape, wide_shapes[name])) if a != b]
        weight = getattr(module, "weight", None)
        return _shape_role(module, attribute, scaling, p.ndim, bool(block_entry.match(name)),
                           lambda: shape_role(f"{module_name}.weight", weight) if weight is not None else (None, ""))

    places, heads, ambiguous = {}, [], {}
    for name, p in base.named_parameters():  # each tensor once, under its first name
        names = names_of[id(p)]
        shaped = [shape_role(n, p) for n in names]
        heads += [n.rpartition(".")[0] for n, (role, _) in zip(names, shaped) if role == "output"]
        named = {role for pattern, role in roles.items() for n in names
                 if fnmatchcase(n, pattern) or fnmatchcase(n, "*." + pattern)}
        if len(named) > 1:
            raise ValueError(f"model_roles gives {name} several roles: {sorted(named)}")
        if named:
            role, why = named.pop(), ""
        elif len(names) > 1:
            role, why = None, f"one tensor under the names {', '.join(names)} (tied), as " + \
                " and ".join(r or "ambiguous" for r, _ in shaped)
        else:
            role, why = shaped[0]
        if role is None:
            ambiguous[name] = why
            continue
        in_block = bool(block_entry.match(name))
        places[name] = (block_entry.sub(lambda m: m.group(1) + "*.", name),
                        place_of(role, in_block, name.rpartition(".")[2] == "bias"))
    return Layout(places=places, blocks=blocks, heads=list(dict.fromkeys(heads)), ambiguous=ambiguous)
