"""The claims the CUDA path makes, checked on one GPU in about a minute: one PASS/FAIL line each.

    python benchmarks/gpu_check.py [--quick]

  resume      a run stopped by SIGTERM at step 20 and resumed ends as the uninterrupted run does:
              every logged train loss and the final val loss within RESUME_TOLERANCE (relative)
  no-sync     20 training steps between two read-backs under torch.cuda.set_sync_debug_mode("error")
  throughput  bf16 trainer tokens/s against the nanoGPT-style reference of
              benchmarks/trainer_throughput.py in the same process (target >= 1.0x), and MFU
  memory      over two steps (trainer.probe): the peak of live tensors <= the memory model's tensor
              terms (trainer.cost), and the device's peak (CUDA context + the allocator's reserved
              bytes) <= its whole estimate, whose overhead term covers both; for three cells: a
              small one, a Sophia cell (its Hessian step) and Table 9's largest cell at the micro
              batch the plan gives it on this GPU (narrower, if not even micro batch 1 fits)
  compile     compile=true trains the same first 10 losses and val loss as eager (PASS) and how their
              tokens/s compare

It exits 1 if any line fails; on a machine without CUDA it says so and exits 2. --quick times fewer
steps. Nothing here is specific to a GPU model: peaks and memory come from torch and trainer.cost.GPUS.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

RESUME_TOLERANCE = 1e-3  # relative: bf16 kernels may add in another order after a restart
COMPILE_TOLERANCE = 2e-2  # relative: inductor fuses bf16 ops into other roundings
# Steps over which compiled and eager bf16 losses stay alike step by step; later the roundings have
# moved the two runs apart (an H200 saw one compiled step's loss at 7.2 against 3.1, the next back
# on the eager curve), so from there only the val loss is compared.
COMPILE_STEPS_ALIKE = 10
THROUGHPUT_WIDTH = 1024  # GPT-2 medium's width: a step long enough that kernel launches do not decide it
# One timing of 30 steps (~0.4 s) on an H200 read x0.94-x1.10 for the same code in four runs: rounds
# alternate the two models and the median ratio is the claim.
THROUGHPUT_ROUNDS = 3


def line(ok: bool, claim: str, detail: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'} {claim}: {detail}", flush=True)
    return ok


def small_cell(**overrides):
    from trainer.config import TrainConfig

    return TrainConfig(**{**dict(width=256, depth=4, batch_size=16, seq_len=256, steps=40, warmup_steps=4,
                                 eval_interval=0, eval_batches=4, log_interval=10, checkpoint_interval=10**6,
                                 dataset="embedded", tokenizer="byte", precision="auto"), **overrides})


def where(err: BaseException) -> str:
    """The innermost frames of the project's code that an exception passed through."""
    root = str(Path(__file__).resolve().parents[1])
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename.startswith(root)]
    return " <- ".join(f"{Path(f.filename).relative_to(root)}:{f.lineno} ({f.line})" for f in frames[::-1][:3]) or "?"


def check_resume(work: Path) -> bool:
    from trainer.callbacks import Callback
    from trainer.train import run

    class StopAt(Callback):
        def on_log(self, step: int, metrics: dict) -> None:
            if step == 20:
                os.kill(os.getpid(), signal.SIGTERM)  # the loop checkpoints at this step and exits

    whole = run(small_cell(run_dir=str(work / "whole")))
    try:
        run(small_cell(run_dir=str(work / "cut")), callbacks=[StopAt()])
        return line(False, "resume", "the run was not stopped at step 20")
    except SystemExit:
        pass
    resumed = run(small_cell(run_dir=str(work / "cut")))
    pairs = list(zip([l for _, l in whole.curves["train"]], [l for _, l in resumed.curves["train"]]))
    pairs.append((whole.val_loss, resumed.val_loss))
    worst = max(abs(a - b) / abs(a) for a, b in pairs)
    return line(len(whole.curves["train"]) == len(resumed.curves["train"]) and worst <= RESUME_TOLERANCE,
                "resume", f"stopped at step 20 of 40 and resumed: largest relative difference {worst:.2e} "
                          f"(tolerance {RESUME_TOLERANCE:g}), val loss {whole.val_loss:.5f} vs {resumed.val_loss:.5f}")


def check_no_sync() -> bool:
    import torch

    import trainer.device as device_module
    from trainer.callbacks import Callback
    from trainer.train import run

    steps = 22

    class ErrorOnSync(Callback):  # from each read-back's log line until the next read-back
        def on_log(self, step: int, metrics: dict) -> None:
            if step < steps:  # not into the final evaluation, whose read-backs are its result
                torch.cuda.set_sync_debug_mode("error")

    real_read_back = device_module.StepTimer.read_back

    def read_back(self):
        torch.cuda.set_sync_debug_mode("default")  # the read-back itself syncs, on purpose
        return real_read_back(self)

    device_module.StepTimer.read_back = read_back
    try:
        run(small_cell(steps=steps, log_interval=10**6), callbacks=[ErrorOnSync()])
        return line(True, "no-sync", "steps 2-21 (20 steps) ran under set_sync_debug_mode('error')")
    except RuntimeError as err:
        return line(False, "no-sync", f"a step synced with the host at {where(err)}: {str(err).splitlines()[0][:120]}")
    finally:
        torch.cuda.set_sync_debug_mode("default")
        device_module.StepTimer.read_back = real_read_back


def check_throughput(steps: int) -> bool:
    import torch

    from trainer.cost import flops_per_token
    from trainer.data.tokens import load_tokens
    from trainer_throughput import SHAPE, peaks_of, reference_tokens_per_s, trainer_tokens_per_s

    device = torch.device("cuda")
    vocab = 50304
    tokens = load_tokens("embedded", "byte", None).train
    rounds = []  # alternating, so that the GPU's clocks and neighbours weigh on both alike
    for _ in range(THROUGHPUT_ROUNDS):
        reference = reference_tokens_per_s(THROUGHPUT_WIDTH, vocab, "bf16", steps, tokens, device, compiled=False,
                                           skip_first=True)
        trainer = trainer_tokens_per_s(THROUGHPUT_WIDTH, vocab, "adamw", "bf16", steps, device, compiled=False,
                                       skip_first=True)
        rounds.append((trainer / reference, trainer, reference))
    ratio, trainer, reference = statistics.median(rounds)
    peak = peaks_of(device, None)["bf16"]
    cfg = small_cell(**SHAPE, width=THROUGHPUT_WIDTH, vocab_size=vocab)
    mfu = f", MFU {trainer * flops_per_token(cfg, vocab) / peak:.1%}" if peak else ""
    return line(ratio >= 1.0, "throughput",
                f"bf16 trainer {trainer:,.0f} tok/s, reference {reference:,.0f} tok/s (x{ratio:.2f}, the median of "
                f"{THROUGHPUT_ROUNDS} rounds: {' '.join(f'x{r:.2f}' for r, _, _ in rounds)}; target >= 1.0){mfu}; "
                f"width {THROUGHPUT_WIDTH} depth {SHAPE['depth']} vocab {vocab}, AdamW, {steps} steps a round")


def check_memory(quick: bool) -> bool:
    import torch

    from sweeper.grid.experiments import compose_sweep, sweep_settings
    from trainer.config import TrainConfig
    from trainer.cost import DEVICE_OVERHEAD, GIB, peak_memory, pick_micro_batch
    from trainer.probe import cuda_peaks

    device = torch.device("cuda")
    capacity = torch.cuda.get_device_properties(device).total_memory
    paper = TrainConfig.from_mapping(sweep_settings(compose_sweep("paper_table9")))
    largest = replace(paper, width=4096, precision="bf16")
    cells = [(small_cell(seq_len=1024, batch_size=8, optimizer="adamw"), 50304, 8, "small"),
             (small_cell(width=512, depth=8, seq_len=1024, batch_size=8, optimizer="sophia"), 50304, 8, "sophia")]
    while pick_micro_batch(largest, 50304, "bf16", capacity) is None and largest.width > 256:
        largest = replace(largest, width=largest.width // 2)  # the largest that fits this GPU
    micro = pick_micro_batch(largest, 50304, "bf16", capacity)
    if quick:  # one micro-batch's worth of rows: the same peak, a quarter of the time at micro 60
        largest = replace(largest, batch_size=micro)
    cells.append((largest, 50304, micro, f"Table 9 width {largest.width} at its planned micro batch"))
    ok = True
    for cfg, vocab, micro, name in cells:
        estimate = peak_memory(cfg, vocab, micro, "bf16", "cuda")
        tensors_bound = estimate.total - DEVICE_OVERHEAD["cuda"]
        what = f"{name} (width {cfg.width} depth {cfg.depth} {cfg.optimizer} micro batch {micro})"
        try:
            tensors, reserved, context = cuda_peaks(cfg, vocab, device, "bf16", micro)
        except torch.cuda.OutOfMemoryError as err:
            ok &= line(False, "memory", f"{what}: ran out of memory ({str(err).splitlines()[0][:120]})")
            continue
        device_total = context + reserved
        ok &= line(tensors <= tensors_bound and device_total <= estimate.total, "memory",
                   f"{what}: tensors {tensors / GIB:.2f} GiB <= model {tensors_bound / GIB:.2f} GiB "
                   f"(x{tensors / tensors_bound:.2f}); on the device {device_total / GIB:.2f} GiB (CUDA context "
                   f"{context / GIB:.2f} + allocator {reserved / GIB:.2f}) <= model with its "
                   f"{DEVICE_OVERHEAD['cuda'] / GIB:.0f} GiB overhead {estimate.total / GIB:.2f} GiB "
                   f"(x{device_total / estimate.total:.2f}); {estimate.total / capacity:.0%} of this GPU")
        torch.cuda.empty_cache()
    return ok


def steady_rate(cfg) -> tuple:
    """A run and its tokens/s after the first step (CUDA's lazy setup, compilation), from the loop's
    own cumulative rate at each logged step (log_interval=1), as trainer_throughput times it."""
    from trainer.train import run
    from trainer_throughput import LoggedRates

    logged = LoggedRates()
    result = run(cfg, callbacks=[logged])
    tokens = cfg.batch_size * cfg.seq_len
    first, last = (tokens * s / logged.rates[s] for s in (1, cfg.steps))
    return result, (cfg.steps - 1) * tokens / (last - first)


def check_compile(steps: int) -> bool:
    from trainer_throughput import SHAPE

    cfg = small_cell(**SHAPE, steps=steps, warmup_steps=1, log_interval=1, optimizer="adamw", vocab_size=50304)
    (eager, eager_rate), (compiled, compiled_rate) = steady_rate(cfg), steady_rate(replace(cfg, compile=True))
    rel = [abs(a - b) / abs(a) for (_, a), (_, b) in zip(eager.curves["train"], compiled.curves["train"])]
    early, val = max(rel[:COMPILE_STEPS_ALIKE]), abs(compiled.val_loss - eager.val_loss) / eager.val_loss
    return line(early <= COMPILE_TOLERANCE and val <= COMPILE_TOLERANCE, "compile",
                f"the first {COMPILE_STEPS_ALIKE} losses within {early:.1e} of eager and the val loss within "
                f"{val:.1e} (tolerance {COMPILE_TOLERANCE:g}; largest step apart {max(rel):.1e} at step "
                f"{rel.index(max(rel)) + 1}); after the first step compiled {compiled_rate:,.0f} tok/s, eager "
                f"{eager_rate:,.0f} (x{compiled_rate / eager_rate:.2f}"
                f"{': compile=true pays here' if compiled_rate > eager_rate else ''})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps, Table 9's cell one micro batch")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check needs CUDA: no CUDA device is visible to torch here (torch "
              f"{torch.__version__}); run it on a machine with one GPU", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # trainer_throughput, beside this file
    print(f"gpu_check on {torch.cuda.get_device_name()} (torch {torch.__version__})", flush=True)
    started = time.perf_counter()
    steps = 10 if args.quick else 30
    results = []
    with tempfile.TemporaryDirectory() as work:
        checks = [("resume", lambda: check_resume(Path(work))), ("no-sync", check_no_sync),
                  ("throughput", lambda: check_throughput(3 * steps)), ("memory", lambda: check_memory(args.quick)),
                  ("compile", lambda: check_compile(steps))]
        for name, check in checks:
            try:
                results.append(check())
            except Exception as err:  # a check that crashes is a failed claim; the others still run
                results.append(line(False, name, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"))
    print(f"{sum(results)} of {len(results)} claims hold ({time.perf_counter() - started:.0f} s)")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
