"""The Spectral Sphere Optimizer (SSO) of Xie et al., "Controlled LLM training on spectral sphere"
(arXiv 2601.08393, 2026; the paper's [40]), as Appendix C.7 states its update:

    W <- W - eta (R Phi + lambda W),   R = sqrt(n_out / n_in),
    Phi = argmax <grad, Phi>  s.t.  ||Phi||_2 = 1,  ||W - eta Phi||_2 = ||W||_2 = R.

Per step and matrix (Xie et al.'s Algorithm 1): Nesterov momentum M as Muon's; the top singular
pair (sigma, u, v) of W by power iteration; W retracted onto the sphere, W <- (R / sigma) W; with
Theta = u v^T, the tangent condition <Theta, Phi> = 0 makes Phi = msign(M + mu Theta) for the root
mu of f(mu) = <Theta, msign(M + mu Theta)>, found by bracketing and false position (f rises from -1
to 1).
msign is the project's Newton-Schulz iteration (trainer.spectral), in the dtype Muon uses.

No maintained library matches C.7: pytorch_optimizer's SpectralSphere solves the same tangent
condition but neither scales the step by R nor retracts W onto the sphere, and runs in bf16 only.
"""
from __future__ import annotations

import math

import torch

from .spectral import newton_schulz, top_singular
from .stepping import closure_loss, with_grads

POWER_STEPS = 10  # per step, warm-started from the last step's v
BRACKET_DOUBLINGS = 10  # f(+-mu) is searched for a sign change out to |mu| = 2^10 ||M||_F
ROOT_STEPS = 8
TOLERANCE = 1e-3  # |f(mu)| below this ends the search: Phi is then tangent to within 0.1%


class SSO(torch.optim.Optimizer):
    """SSO on 2-D parameters. A group's ``transposed`` marks a weight stored as W^T (nn.Embedding
    keeps the input layer's W_0 as vocab x n), so that R = sqrt(n_out / n_in) is W's own."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float, ns_dtype: torch.dtype,
                 transposed: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, transposed=transposed))
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            if any(p.ndim != 2 for p in group["params"]):
                raise ValueError(f"SSO updates matrices only; group {group.get('name')} is not 2-D")

    def msign(self, x: torch.Tensor) -> torch.Tensor:
        return newton_schulz(x, self.ns_dtype).float()

    def tangent_direction(self, m: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """msign(m + mu theta) at the root of f(mu) = <theta, msign(m + mu theta)>; m has unit norm."""
        def f(mu: float) -> tuple[float, torch.Tensor]:
            phi = self.msign(m + mu * theta)
            return float((theta * phi).sum()), phi

        f0, phi = f(0.0)
        if abs(f0) < TOLERANCE:
            return phi
        step = 1.0 if f0 < 0 else -1.0
        low = (0.0, f0, phi)
        for _ in range(BRACKET_DOUBLINGS):
            value, phi = f(step)
            if (value < 0) != (f0 < 0):
                break
            low, step = (step, value, phi), 2 * step
        else:
            return low[2]  # no sign change: the closest direction found
        (a, fa), (b, fb) = sorted([(low[0], low[1]), (step, value)])  # f(a) < 0 < f(b)
        best = min(((low[1], low[2]), (value, phi)), key=lambda t: abs(t[0]))
        side = 0
        for _ in range(ROOT_STEPS):  # false position, Illinois variant: f is smooth and monotone
            if abs(best[0]) < TOLERANCE:
                break
            mid = (a * fb - b * fa) / (fb - fa)
            value, phi = f(mid)
            best = min(best, (value, phi), key=lambda t: abs(t[0]))
            if value < 0:
                a, fa, fb = mid, value, fb / 2 if side < 0 else fb
                side = -1
            else:
                b, fb, fa = mid, value, fa / 2 if side > 0 else fa
                side = 1
        return best[1]

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            beta = group["momentum"]
            for p in with_grads(group["params"]):
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                    state["v"] = torch.nn.functional.normalize(torch.ones(p.shape[1], device=p.device), dim=0)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - beta)
                m = p.grad.lerp(buf, beta).float()  # Nesterov, as Muon
                n_out, n_in = p.shape[::-1] if group["transposed"] else p.shape
                radius = math.sqrt(n_out / n_in)
                sigma, u, state["v"] = top_singular(p, state["v"], POWER_STEPS)
                p.mul_(radius / sigma.clamp(min=1e-12))  # retract onto ||W||_2 = R
                phi = self.tangent_direction(m / m.norm().clamp(min=1e-12), torch.outer(u, state["v"]))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(phi.to(p.dtype), alpha=-group["lr"] * radius)
        return loss
