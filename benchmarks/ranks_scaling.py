"""Throughput of one cell on 1 and on N ranks (trainer.distributed), and the sharded variant.

    python benchmarks/ranks_scaling.py [--ranks 2] [--width 128] [--depth 2] [--steps 20]
        [--batch 16] [--seq 128] [--threads 1] [--optimizer adamw]

Trains the same cell (the embedded data, fp32) as one process, as --ranks data-parallel ranks, and
as --ranks ranks with shard=true (where the optimizer allows it), every process with --threads
torch threads. It prints each run's tokens/s (rank 0's steps, without start-up), the speed-up and
the scaling efficiency = speed-up / ranks: the figure `python -m sweeper plan --scaling-efficiency`
takes. The three runs go one after the other in one invocation, so they share the machine's load.
A CPU's ranks share its memory bandwidth and cores: a CPU figure is a floor, not a GPU's.
"""
from __future__ import annotations

import argparse

from trainer.config import SHARDABLE_OPTIMIZERS, TrainConfig
from trainer.train import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--optimizer", default="adamw")
    args = parser.parse_args()
    base = TrainConfig(width=args.width, depth=args.depth, steps=args.steps, warmup_steps=1, batch_size=args.batch,
                       seq_len=args.seq, eval_interval=0, eval_batches=1, threads=args.threads, device="cpu",
                       precision="fp32", optimizer=args.optimizer, print_steps=False, micro_batch_size=0)
    runs = [("1 process", base), (f"{args.ranks} ranks", TrainConfig(**{**base.to_dict(), "gpus_per_cell": args.ranks}))]
    if args.optimizer in SHARDABLE_OPTIMIZERS:
        runs.append((f"{args.ranks} ranks, shard=true",
                     TrainConfig(**{**base.to_dict(), "gpus_per_cell": args.ranks, "shard": True})))
    print(f"width {args.width} depth {args.depth}, batch {args.batch} x {args.seq} tokens, {args.steps} steps, "
          f"{args.optimizer}, {args.threads} thread(s) per process")
    one = None
    for name, cfg in runs:
        rate = run(cfg).tokens_per_s
        one = one or rate
        ranks = cfg.gpus_per_cell
        print(f"{name:>24}: {rate:>10,.0f} tok/s  speed-up {rate / one:5.2f}  efficiency {rate / one / ranks:5.2f}")


if __name__ == "__main__":
    main()
