"""The spectral primitives the matrix optimizers share: Newton-Schulz orthogonalisation and the top
singular pair of a matrix. Muon and SSO both call these; nothing else holds a copy.
"""
from __future__ import annotations

import torch

# Keller Jordan's quintic coefficients and step count, as torch.optim.Muon uses them.
NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7


def newton_schulz(grad: torch.Tensor, dtype: torch.dtype, coefficients=NS_COEFFICIENTS,
                  steps: int = NS_STEPS, eps: float = NS_EPS) -> torch.Tensor:
    """U S' V^T with S' ~ 1 for G = U S V^T: the quintic Newton-Schulz iteration of Muon
    (https://github.com/KellerJordan/Muon, the same operations as torch.optim.Muon's), run in
    ``dtype``: bf16 where matmuls are fast in it (GPUs, CPUs with AMX), fp32 elsewhere, where a
    bf16 matmul ran ~70x slower (trainer.optimizers.newton_schulz_dtype). Returns ``dtype``."""
    a, b, c = coefficients
    x = grad.to(dtype)
    transposed = grad.size(0) > grad.size(1)
    if transposed:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if transposed else x


def top_singular(weight: torch.Tensor, v: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sigma, u, v): the largest singular value of ``weight`` and its unit singular vectors, by
    ``steps`` rounds of power iteration on W^T W started from ``v`` (warm-started across steps)."""
    w = weight.float()
    for _ in range(steps):
        v = torch.nn.functional.normalize(w.T @ (w @ v), dim=0)
    wv = w @ v
    sigma = wv.norm()
    return sigma, wv / sigma.clamp(min=NS_EPS), v
