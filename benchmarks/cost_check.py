"""The cost model (trainer.cost) against measured CPU runs: peak memory and time of a few small cells.

    python benchmarks/cost_check.py [--threads 2]

Each cell trains a few fp32 steps in its own process. Memory: the tensors' peak over two training
steps (trainer.probe.measured_peak_bytes: torch's profiler, what tests/test_memory_model.py checks),
and the process's peak RSS (getrusage) over its RSS before the model was built (tensors plus the
data, the C allocator's slack and libraries), each against trainer.cost.peak_memory (device overhead
0). Time:
seconds per step against trainer.cost's FLOPs per step over this CPU's measured fp32 matmul peak at
--mfu. Prints measured, estimated and their ratio per cell.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CELLS = [dict(width=256, depth=4, optimizer="adamw"), dict(width=512, depth=4, optimizer="muon_kimi"),
         dict(width=256, depth=12, optimizer="muon_kimi"), dict(width=128, depth=8, batch_size=64, optimizer="adamw")]
BASE = dict(batch_size=16, seq_len=256, steps=6, warmup_steps=1, eval_interval=0, eval_batches=1,
            precision="fp32", log_interval=100)


def child(settings: dict) -> None:
    import torch

    from trainer.config import TrainConfig
    from trainer.data.tokens import load_tokens
    from trainer.probe import measured_peak_bytes
    from trainer.train import run

    cfg = TrainConfig(**settings)
    load_tokens(cfg.dataset, cfg.tokenizer, cfg.data_dir)
    torch.randn(8, 8) @ torch.randn(8, 8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = run(cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tensors = measured_peak_bytes(cfg, 256, torch.device("cpu"), "fp32", cfg.batch_size)  # after: RSS is a max
    print(json.dumps({"peak_bytes": peak - before, "tensor_bytes": tensors,
                      "step_s": cfg.batch_size * cfg.seq_len / result.tokens_per_s}))


def matmul_peak_flops(n: int = 1024, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mfu", type=float, default=0.5, help="share of the matmul peak a CPU step reaches")
    args = parser.parse_args()
    import torch

    from trainer.config import TrainConfig
    from trainer.cost import GIB, flops_per_token, peak_memory

    torch.set_num_threads(args.threads)
    peak = matmul_peak_flops()
    print(f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s ({args.threads} threads), assumed MFU {args.mfu}")
    for cell in CELLS:
        settings = {**BASE, **cell, "threads": args.threads}
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(settings)], check=True,
                             capture_output=True, text=True).stdout
        measured = json.loads(out.strip().splitlines()[-1])
        cfg = TrainConfig(**settings)
        memory = peak_memory(cfg, 256, cfg.batch_size, "fp32", "cpu").total
        step_s = flops_per_token(cfg, 256) * cfg.batch_size * cfg.seq_len / (peak * args.mfu)
        print(f"width {cfg.width:>4} depth {cfg.depth:>2} batch {cfg.batch_size:>2} {cfg.optimizer:>9}: "
              f"memory {memory / GIB:.3f} GiB estimated, tensors {measured['tensor_bytes'] / GIB:.3f} "
              f"(x{measured['tensor_bytes'] / memory:.2f}), RSS {measured['peak_bytes'] / GIB:.3f} "
              f"(x{measured['peak_bytes'] / memory:.2f}); step {measured['step_s']:.3f} s measured, "
              f"{step_s:.3f} estimated (x{measured['step_s'] / step_s:.2f})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(json.loads(sys.argv[2]))
    else:
        main()
