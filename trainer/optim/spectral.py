"""The spectral primitives the matrix optimizers share: Newton-Schulz orthogonalisation and the top
singular pair of a matrix, each on one matrix or a stack of same-shape matrices (one batched matmul
per product instead of one small matmul per matrix), and the switch that keeps TF32 out of them.
Muon, SSO and Shampoo call these; nothing else holds a copy.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Hashable, Iterable, TypeVar

import torch

# Keller Jordan's quintic coefficients and step count, as torch.optim.Muon uses them.
NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7

T = TypeVar("T")


@contextmanager
def without_tf32():
    """fp32 matmuls in full precision inside (CUDA's TF32 switch off; a CPU has none): the trainer turns
    TF32 on for the model, but a matrix root that keeps eigenvalues down to 1e-6 of the largest, or an
    iteration that squares its matrix, needs fp32's 24 bits, not TF32's 11."""
    matmul = torch.backends.cuda.matmul
    try:
        name, saved, off = "allow_tf32", matmul.allow_tf32, False
    except RuntimeError:  # TF32 was set through fp32_precision, and torch refuses mixing the two APIs
        name, saved, off = "fp32_precision", matmul.fp32_precision, "ieee"
    setattr(matmul, name, off)
    try:
        yield
    finally:
        setattr(matmul, name, saved)


def same_shape_stacks(items: Iterable[T], shape: Callable[[T], Hashable]) -> list[list[T]]:
    """``items`` in lists of equal ``shape(item)``, in first-seen order: each list one batched call."""
    stacks: dict[Hashable, list[T]] = defaultdict(list)
    for item in items:
        stacks[shape(item)].append(item)
    return list(stacks.values())


def newton_schulz(grad: torch.Tensor, dtype: torch.dtype, coefficients=NS_COEFFICIENTS,
                  steps: int = NS_STEPS, eps: float = NS_EPS) -> torch.Tensor:
    """U S' V^T with S' ~ 1 for G = U S V^T: the quintic Newton-Schulz iteration of Muon
    (https://github.com/KellerJordan/Muon, the same operations as torch.optim.Muon's), run in
    ``dtype``: the run's precision (trainer.precision.Precision.newton_schulz_dtype). Returns ``dtype``.
    ``grad`` is one matrix, or a stack (k, rows, cols) orthogonalised each on its own."""
    a, b, c = coefficients
    x = grad.to(dtype)
    transposed = grad.size(-2) > grad.size(-1)
    if transposed:
        x = x.mT
    # spectral norm <= Frobenius norm <= 1
    x = x / (x.norm() if x.ndim == 2 else x.norm(dim=(-2, -1), keepdim=True)).clamp(min=eps)
    mm = torch.addmm if x.ndim == 2 else torch.baddbmm
    with without_tf32():
        for _ in range(steps):
            gram = x @ x.mT
            x = mm(x, mm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if transposed else x


def top_singular(weight: torch.Tensor, v: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sigma, u, v): the largest singular value of ``weight`` and its unit singular vectors, by
    ``steps`` rounds of power iteration on W^T W started from ``v`` (warm-started across steps).
    Batched: ``weight`` (k, rows, cols) and ``v`` (k, cols) give sigma (k,), u (k, rows), v (k, cols)."""
    w = weight.float()
    with without_tf32():
        for _ in range(steps):
            v = torch.nn.functional.normalize((w.mT @ (w @ v.unsqueeze(-1))).squeeze(-1), dim=-1)
        wv = (w @ v.unsqueeze(-1)).squeeze(-1)
    sigma = wv.norm(dim=-1)
    return sigma, wv / sigma.clamp(min=NS_EPS).unsqueeze(-1), v
