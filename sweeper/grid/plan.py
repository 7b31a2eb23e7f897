"""``python -m sweeper plan``: what every cell of a sweep will cost on a GPU, before anything runs.

    python -m sweeper plan experiment=paper_table9 [sweep overrides] [--gpu H100 | --gpu-memory-gb G
        --gpu-tflops T] [--mfu 0.4] [--gpus-per-cell N [--nodes-per-cell M] [--scaling-efficiency 0.9]] [--json]

The grid is expanded as the sweep expands it (the experiment's grid, replaced by command-line axes);
each cell's figures come from trainer.cost. Nothing trains, nothing is submitted.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf

from trainer.config import CONF_DIR, SHARDABLE_OPTIMIZERS, TrainConfig
from trainer.cost import GPUS, MFU, SCALING_EFFICIENCY, CellCost, Gpu
from trainer.cost import cell_cost as trainer_cell_cost
from trainer.data.tokenizer import vocab_size_of

from .app_config import SweepAppConfig
from .argv import prepare
from .cells import cell_config
from .expand import GridError, expand


@dataclass(frozen=True)
class Device:
    name: str
    memory_gb: float
    tflops: float


def grid_configs(overrides: list[str], conf_dir: Path = CONF_DIR) -> list[TrainConfig]:
    """The sweep's cells as trainer configs, as ``python sweep.py -m OVERRIDES`` would run them."""
    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()}
    selected = [o for o in overrides if o.split("=", 1)[0] in groups]
    with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
        app = compose("sweep", overrides=selected, return_hydra_config=True)
        params = OmegaConf.to_container(app.hydra.sweeper.params or {}, resolve=True)
        grid = [f"{k}={v}" for k, v in params.items()] + [o for o in overrides if o not in selected]
        cells = expand(grid)
        base = compose("sweep", overrides=selected + list(cells[0].overrides))  # as the sweeper's first cell
    parser = OverridesParser.create()
    return [cell_config(base, cell, parser) for cell in cells]


def cell_cost(cfg: TrainConfig, device: Device, mfu: float, efficiency: float) -> CellCost:
    return trainer_cell_cost(cfg, cfg.model_vocab(vocab_size_of(cfg.dataset, cfg.tokenizer)),
                             Gpu(device.memory_gb, device.tflops), mfu, efficiency)


def _si(x: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def render(costs: list[CellCost], device: Device, mfu: float, efficiency: float) -> str:
    gpus = costs[0].gpus
    cfg0 = costs[0].config
    per_cell = (f", {gpus} GPUs per cell ({cfg0.gpus_per_cell} x {cfg0.nodes_per_cell} nodes) at scaling "
                f"efficiency {efficiency:g}: peak GB per GPU, hours per cell on its GPUs" if gpus > 1 else "")
    lines = [f"plan on {device.name} ({device.memory_gb:g} GB, {device.tflops:g} TFLOP/s bf16) at MFU {mfu:g}"
             + per_cell,
             f"{'width':>6} {'depth':>5} {'lr':>6} {'params':>8} {'non-emb':>8} {'FLOP/tok':>9} "
             f"{'FLOP/run':>9} {'micro':>5} {'ckpt':>4} {'peak GB':>8} {'hours':>7}"]
    for c in costs:
        cfg = c.config
        micro = str(c.micro_batch_size) if c.micro_batch_size else "-"
        lines.append(f"{cfg.width:>6} {cfg.depth:>5} {cfg.lr:>6g} {_si(c.params):>8} {_si(c.params_non_embedding):>8} "
                     f"{_si(c.flops_per_token):>9} {_si(c.flops):>9} {micro:>5} "
                     f"{'yes' if cfg.activation_checkpointing else 'no':>4} {c.peak_memory_gb:>8.1f} {c.hours:>7.2f}"
                     + (f"  sharded {c.sharded_memory_gb:.1f} GB/GPU" if gpus > 1 else "")
                     + ("  needs shard=true" if c.needs_shard else "")
                     + (f"  does not fit even at micro batch 1: needs {c.advice}" if c.advice else ""))
    largest = max(costs, key=lambda c: c.hours)
    unfit = [c for c in costs if c.advice]
    shard = [c for c in costs if c.needs_shard]
    lines.append(f"total: {len(costs)} cells, {sum(c.gpu_hours for c in costs):.1f} GPU-hours; largest cell "
                 f"width={largest.config.width} depth={largest.config.depth} ({largest.hours:.2f} h, "
                 f"{largest.peak_memory_gb:.1f} GB at micro batch {largest.micro_batch_size or 1})")
    if shard:
        lines.append(f"{len(shard)} cells fit only sharded over their {gpus} GPUs (shard=true): "
                     + ", ".join(f"width={c.config.width} depth={c.config.depth}" for c in shard))
        refused = sorted({c.config.optimizer for c in shard} - set(SHARDABLE_OPTIMIZERS))
        if refused:
            lines.append(f"  but optimizer={','.join(refused)} refuses shard=true (its update needs whole "
                         f"matrices): those cells need {'|'.join(SHARDABLE_OPTIMIZERS)}, or bigger GPUs")
    lines.append(f"{len(unfit)} cells do not fit" if unfit else "every cell fits" + (" sharded" if shard else ""))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeper plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="the sweep's overrides, as for sweep.py -m")
    parser.add_argument("--gpu", choices=sorted(GPUS), default=None, help="a GPU by name (default: H100)")
    parser.add_argument("--gpu-memory-gb", type=float, default=None)
    parser.add_argument("--gpu-tflops", type=float, default=None, help="dense bf16 peak")
    parser.add_argument("--mfu", type=float, default=MFU, help="model FLOPs utilisation (default: %(default)s)")
    parser.add_argument("--gpus-per-cell", type=int, default=None,
                        help="GPUs per node of each cell (data-parallel ranks; default: gpus_per_cell's)")
    parser.add_argument("--nodes-per-cell", type=int, default=None, help="nodes of each cell (default: nodes_per_cell's)")
    parser.add_argument("--scaling-efficiency", type=float, default=SCALING_EFFICIENCY,
                        help="throughput per GPU of a cell on several GPUs against one (default: %(default)s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for flag, value in (("--gpus-per-cell", args.gpus_per_cell), ("--nodes-per-cell", args.nodes_per_cell)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: give 1 or more")
    if not 0 < args.scaling_efficiency <= 1:
        parser.error(f"--scaling-efficiency {args.scaling_efficiency:g}: give a fraction in (0, 1]")
    if args.gpu and (args.gpu_memory_gb or args.gpu_tflops):
        parser.error("give --gpu NAME or --gpu-memory-gb/--gpu-tflops, not both")
    if (args.gpu_memory_gb is None) != (args.gpu_tflops is None):
        parser.error("--gpu-memory-gb and --gpu-tflops go together")
    if args.gpu_memory_gb is not None:
        device = Device("custom GPU", args.gpu_memory_gb, args.gpu_tflops)
    else:
        gpu = GPUS[args.gpu or "H100"]
        device = Device(args.gpu or "H100", gpu.memory_gb, gpu.tflops)

    known = set(SweepAppConfig.__dataclass_fields__) | {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    try:
        configs = grid_configs(prepare(args.overrides, known))
        ranks = {k: v for k, v in (("gpus_per_cell", args.gpus_per_cell), ("nodes_per_cell", args.nodes_per_cell))
                 if v is not None}
        configs = [replace(cfg, **ranks) for cfg in configs]
        for cfg in configs:
            cfg.check_ranks()
        costs = [cell_cost(cfg, device, args.mfu, args.scaling_efficiency) for cfg in configs]
    except (ValueError, GridError, HydraException) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if args.json:
        cfg0 = configs[0]
        print(json.dumps({"cells": [c.to_json() for c in costs],
                          "total_gpu_hours": sum(c.gpu_hours for c in costs),
                          "gpus_per_cell": cfg0.gpus_per_cell, "nodes_per_cell": cfg0.nodes_per_cell,
                          "scaling_efficiency": args.scaling_efficiency,
                          "cells_needing_shard": [{"width": c.config.width, "depth": c.config.depth,
                                                   "lr": c.config.lr} for c in costs if c.needs_shard]},
                         indent=1))
    else:
        print(render(costs, device, args.mfu, args.scaling_efficiency))
    return 0
