"""The one seam through which a model enters the trainer: ``model=package.module:factory``.

The factory is called as ``factory(width=, depth=, vocab_size=, seq_len=, **model_args)`` and returns a
``torch.nn.Module`` whose forward maps token ids (B, T) to logits (B, T, vocab). The project's GPT-2
(``trainer.model:gpt2``, the default) enters here like any other model. Besides model_args, a factory
receives the trainer settings its signature names:

- ``head_dim``, ``layernorm``, ``attention_scale``: the shape settings of the same name (a factory
  that does not name one refuses a value other than its default, rather than ignore it);
- ``multipliers``: a ``trainer.model.Multipliers``; a factory naming it applies the input, block and
  output multipliers itself (the one-line marker for a model that folds them into its own arithmetic,
  as GPT-2 does), and no hooks are attached (trainer.hooks).

A model may define ``loss(idx, targets)`` (the mean cross-entropy, as GPT-2's chunked one); otherwise
the loss is the cross-entropy of its logits (``loss_function``).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TrainConfig
from .model import Multipliers

# Trainer settings a factory receives when its signature names them.
SHAPE_SETTINGS = ("head_dim", "layernorm", "attention_scale")


def load_factory(path: str) -> Callable[..., nn.Module]:
    """The callable ``package.module:factory`` names, importable from the working directory or the
    environment; ValueError saying what is wrong otherwise."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"model={path!r}: give package.module:factory (e.g. trainer.hf_models:llama)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model={path!r}: cannot import {module_name} ({err})") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"model={path!r}: {module_name} has no callable {attribute!r}")
    return factory


def takes_multipliers(cfg: TrainConfig) -> bool:
    """Whether cfg's model applies the multipliers itself (its factory names ``multipliers``)."""
    return "multipliers" in inspect.signature(load_factory(cfg.model)).parameters


def factory_arguments(cfg: TrainConfig, vocab_size: int, width: int, depth: int,
                      multipliers: Multipliers) -> dict:
    """The keyword arguments cfg's factory is called with, at the given width and depth."""
    factory = load_factory(cfg.model)
    names = inspect.signature(factory).parameters
    model_args = dict(cfg.model_args or {})
    arguments = {"width": width, "depth": depth, "vocab_size": vocab_size, "seq_len": cfg.seq_len}
    clash = sorted(set(model_args) & (set(arguments) | set(SHAPE_SETTINGS) | {"multipliers"}))
    if clash:
        raise ValueError(f"model_args may not set {', '.join(clash)}: they are the trainer's settings")
    for name in SHAPE_SETTINGS:
        if name in names:
            arguments[name] = getattr(cfg, name)
        elif getattr(cfg, name) != getattr(TrainConfig, name):
            raise ValueError(f"{name}={getattr(cfg, name)!r}: model={cfg.model} does not take {name} "
                             f"(its factory has no such argument); leave it at its default")
    if "multipliers" in names:
        arguments["multipliers"] = multipliers
    return {**arguments, **model_args}


def make_model(cfg: TrainConfig, vocab_size: int, multipliers: Multipliers, width: Optional[int] = None,
               depth: Optional[int] = None) -> nn.Module:
    """cfg's model (at another width or depth where given), built on the current default device."""
    arguments = factory_arguments(cfg, vocab_size, width or cfg.width, depth or cfg.depth, multipliers)
    try:
        model = load_factory(cfg.model)(**arguments)
    except TypeError as err:
        raise ValueError(f"model={cfg.model}: its factory cannot be called with "
                         f"{', '.join(sorted(arguments))} ({err})") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={cfg.model}: its factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def meta_model(cfg: TrainConfig, vocab_size: int, width: Optional[int] = None,
               depth: Optional[int] = None) -> nn.Module:
    """cfg's model on the meta device: shapes only, nothing allocated."""
    with torch.device("meta"):
        return make_model(cfg, vocab_size, Multipliers(), width, depth)


def loss_function(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The model's own ``loss(idx, targets)`` where it has one, else the mean cross-entropy of its
    logits (computed in fp32)."""
    own = getattr(model, "loss", None)
    if callable(own):
        return own

    def cross_entropy(idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = model(idx)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    return cross_entropy
