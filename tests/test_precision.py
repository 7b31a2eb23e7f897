"""precision=auto reads the CPU's flags: bf16 on a CPU with AMX, fp32 elsewhere."""
from __future__ import annotations

import torch

from trainer.optimizers import cpu_has_fast_bf16
from trainer.train import resolve_precision

# /proc/cpuinfo lines of a Sapphire Rapids Xeon (AMX; torch's get_cpu_capability() says "AVX512" there)
# and of an AVX2 machine, trimmed.
AMX = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
       "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8\n\n")
AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx2 fma\n\n"
# avx512_bf16 alone (Cooper Lake, Zen 4) has no tiles: not taken as fast bf16
AVX512_BF16 = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16\n"


def test_auto_precision_is_bf16_exactly_on_a_cpu_with_amx():
    cpu = torch.device("cpu")
    assert cpu_has_fast_bf16(AMX) and resolve_precision("auto", cpu, AMX) == "bf16"
    assert not cpu_has_fast_bf16(AVX2) and resolve_precision("auto", cpu, AVX2) == "fp32"
    assert not cpu_has_fast_bf16(AVX512_BF16) and not cpu_has_fast_bf16("")
    assert resolve_precision("fp32", cpu, AMX) == "fp32"
