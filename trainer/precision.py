"""A run's precision as one object: what ``precision`` (resolved: trainer.config.resolve_precision)
means on its device. The training step, the probe, the coordinate check and the throughput benchmark
all take their autocast, TF32 switch and Newton-Schulz dtype from here.

fp32: every matmul in full fp32, the Newton-Schulz iteration of Muon and SSO too. tf32 (CUDA): fp32
matmuls in TF32 for the run, the iteration in fp32 (trainer.optim.spectral turns TF32 off inside it).
bf16: autocast to bf16, and the iteration in bf16, as torch's Muon runs it. The iteration's dtype
follows the precision alone, on every device: before, it was bf16 wherever bf16 matmul is fast (CUDA,
an AMX CPU) at any precision, so the same fp32 cell computed differently on two CPUs. The committed
stores' Muon cells (precision fp32, trained on an AMX CPU) ran bf16 Newton-Schulz: a rerun of one now
differs from its record by bf16 rounding of the orthogonalised update, as a rerun on a CPU without
AMX always did.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Iterator, Optional, Union

import torch

from .config import resolve_precision


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | tf32 | bf16: resolved, never auto
    device_type: str  # cuda | cpu

    @classmethod
    def of(cls, name: str, device: Union[torch.device, str]) -> "Precision":
        """``name`` (auto, fp32, tf32 or bf16) as it runs on ``device``."""
        device_type = torch.device(device).type
        return cls(resolve_precision(name, device_type), device_type)

    def autocast(self) -> ContextManager:
        """Where a forward pass (and the loss) runs: under bf16 autocast at bf16, else as written."""
        if self.name == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return nullcontext()

    @property
    def newton_schulz_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    @contextmanager
    def matmuls(self) -> Iterator[None]:
        """fp32 matmuls in full fp32, or in TF32 under tf32, for the run only: the previous flags come
        back afterwards, so nothing else in the process (another cell, an optimizer's matrix roots
        outside a tf32 run) inherits TF32."""
        if self.device_type != "cuda":
            yield
            return
        flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
        before = [f.allow_tf32 for f in flags]
        for f in flags:
            f.allow_tf32 = self.name == "tf32"
        try:
            yield
        finally:
            for f, value in zip(flags, before):
                f.allow_tf32 = value


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, so no fast bf16 assumed
        return ""


def cpu_has_fast_bf16(cpuinfo: Optional[str] = None) -> bool:
    """AMX tiles make bf16 matmul pay on a CPU (the reference GPT trains ~1.6-1.9x faster in bf16
    there); on AVX2 here a bf16 matmul ran ~70x slower than fp32. Read from the CPU's flags
    (``amx_bf16`` in /proc/cpuinfo, or the ``cpuinfo`` text given): torch's get_cpu_capability()
    says "AVX512" on AMX Xeons."""
    text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    return any("amx_bf16" in line.split(":", 1)[1].split() for line in text.splitlines()
               if line.split(":", 1)[0].strip() == "flags" and ":" in line)
