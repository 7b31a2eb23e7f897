"""The Spectral Sphere Optimizer (SSO) of Xie et al., "Controlled LLM training on spectral sphere"
(arXiv 2601.08393, 2026; the paper's [40]), as Appendix C.7 states its update:

    W <- W - eta (R Phi + lambda W),   R = sqrt(n_out / n_in),
    Phi = argmax <grad, Phi>  s.t.  ||Phi||_2 = 1,  ||W - eta Phi||_2 = ||W||_2 = R.

Per step and matrix (Xie et al.'s Algorithm 1): Nesterov momentum M as Muon's; the top singular
pair (sigma, u, v) of W by power iteration; W retracted onto the sphere, W <- (R / sigma) W; with
Theta = u v^T, the tangent condition <Theta, Phi> = 0 makes Phi = msign(M + mu Theta) for the root
mu of f(mu) = <Theta, msign(M + mu Theta)>, found by bracketing and false position (f rises from -1
to 1).
msign is the project's Newton-Schulz iteration (trainer.optim.spectral), in the dtype Muon uses. The
matrices that share a shape, whatever their group, take each step as one stack: batched power iteration and
batched Newton-Schulz, the root search run for all of them at once on the device, a fixed number of
evaluations with no read-back to the host (each matrix keeps its own bracket and its best Phi).

No maintained library matches C.7: pytorch_optimizer's SpectralSphere solves the same tangent
condition but neither scales the step by R nor retracts W onto the sphere, and runs in bf16 only.
"""
from __future__ import annotations

import math

import torch

from .spectral import newton_schulz, same_shape_stacks, top_singular
from .protocol import closure_loss, with_grads

POWER_STEPS = 10  # per step, warm-started from the last step's v
# f at 0, then per matrix: doubling +-1, +-2, ... until f changes sign, then false position (Illinois).
# Seven reach TOLERANCE: on 32 random (m, theta) of shapes 64x64 to 1024x256, max |f| 8e-4 and median
# 1e-7 after 7 (0.002 after 6); the search that read f back after each evaluation stopped at
# |f| < 1e-3 after 5-6 of them, up to 19.
ROOT_EVALUATIONS = 7
TOLERANCE = 1e-3  # |f(mu)| the search is built to reach: Phi then tangent to within 0.1%


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
        """msign(m + mu theta) at the root of f(mu) = <theta, msign(m + mu theta)>, for a stack
        (k, rows, cols) of unit-norm m and theta: ROOT_EVALUATIONS batched msigns, no host sync."""
        def f(mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            phi = self.msign(torch.addcmul(m, mu[:, None, None], theta))
            return (theta * phi).sum(dim=(-2, -1)), phi

        zero = m.new_zeros(m.shape[0])
        value, best_phi = f(zero)
        best = value.abs()
        # the nearest mu known on each side of the root (f < 0 below, f >= 0 above) and f there
        below, f_below, has_below = zero, value, value < 0
        above, f_above, has_above = zero, value, value >= 0
        side = torch.zeros_like(zero)  # which end moved last: -1 below, 1 above (Illinois)
        for _ in range(ROOT_EVALUATIONS - 1):
            secant = (below * f_above - above * f_below) / (f_above - f_below).clamp(min=1e-30)
            mu = torch.where(has_below & has_above, secant,
                             torch.where(has_below, (2 * below).clamp(min=1.0), (2 * above).clamp(max=-1.0)))
            value, phi = f(mu)
            better = value.abs() < best
            best = torch.where(better, value.abs(), best)
            best_phi = torch.where(better[:, None, None], phi, best_phi)
            low, high = value < 0, value >= 0
            # Illinois: an end that stays while the other moves twice has its f halved
            f_above = torch.where(low & (side < 0), f_above / 2, f_above)
            f_below = torch.where(high & (side > 0), f_below / 2, f_below)
            below, f_below = torch.where(low, mu, below), torch.where(low, value, f_below)
            above, f_above = torch.where(high, mu, above), torch.where(high, value, f_above)
            has_below, has_above = has_below | low, has_above | high
            side = torch.where(low, -1.0, 1.0)
        return best_phi

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        matrices = [(group, p) for group in self.param_groups for p in with_grads(group["params"])]
        for stack in same_shape_stacks(matrices, lambda gp: gp[1].shape):
            momenta = []
            for group, p in stack:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                    state["v"] = torch.nn.functional.normalize(torch.ones(p.shape[1], device=p.device), dim=0)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                momenta.append(p.grad.lerp(buf, group["momentum"]).float())  # Nesterov, as Muon
            weights = [p for _, p in stack]
            sigma, u, v = top_singular(torch.stack(weights), torch.stack([self.state[p]["v"] for p in weights]),
                                       POWER_STEPS)
            m = torch.stack(momenta)
            m = m / m.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-12)
            phi = self.tangent_direction(m, u.unsqueeze(-1) * v.unsqueeze(-2))
            for (group, p), s, v_p, phi_p in zip(stack, sigma, v, phi):
                self.state[p]["v"] = v_p
                n_out, n_in = p.shape[::-1] if group["transposed"] else p.shape
                radius = math.sqrt(n_out / n_in)
                p.mul_(radius / s.clamp(min=1e-12))  # retract onto ||W||_2 = R
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(phi_p.to(p.dtype), alpha=-group["lr"] * radius)
        return loss
