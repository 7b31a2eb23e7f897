"""shard=true: a cell's weights, gradients and optimizer states split over its ranks with FSDP2
(``torch.distributed.fsdp.fully_shard``), for a model that one GPU does not hold whole.

Each repeated block (an element of an nn.ModuleList: GPT's ``h``) is its own FSDP unit, gathered
whole while it runs, and the root holds the rest; ``model.loss``, which the step calls instead of
``forward``, gathers like a forward. FSDP averages the gradients over the ranks (reduce-scatter),
so each rank's optimizer updates its shard with the global batch's gradient. The parameters keep
their global shapes (DTensors), so the parameterization's groups, lrs, weight decays, epsilons and
multipliers are the unsharded model's. Only updates that act on each element alone are exact on a
shard (config.SHARDABLE_OPTIMIZERS); the matrix optimizers are refused (TrainConfig.check_ranks).

Checkpoints hold full (gathered) state dicts, written by rank 0 and read by every rank, so a
sharded run resumes on any number of ranks; gathering is a collective, so every rank takes part.
"""
from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0's CPU
SPREAD = StateDictOptions(full_state_dict=True)  # whole tensors in, each rank keeps its shard


def shard_model(model: torch.nn.Module) -> None:
    """Splits ``model`` over the ranks of the default process group, in place."""
    for container in [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]:
        for block in container:
            fully_shard(block)
    fully_shard(model)
    if callable(getattr(model, "loss", None)):  # a model's own loss runs instead of forward (model_factory.loss_function)
        register_fsdp_forward_method(model, "loss")


def full_state(model: torch.nn.Module, optimizers: list) -> tuple[dict, list]:
    """The model's and each optimizer's whole state on rank 0 (empty on the others): a collective."""
    return (get_model_state_dict(model, options=GATHER),
            [get_optimizer_state_dict(model, opt, options=GATHER) for opt in optimizers])


def load_full_state(model: torch.nn.Module, optimizers: list, model_state: dict, optimizer_states: list) -> None:
    set_model_state_dict(model, model_state, options=SPREAD)
    for opt, state in zip(optimizers, optimizer_states):
        set_optimizer_state_dict(model, opt, state, options=SPREAD)
