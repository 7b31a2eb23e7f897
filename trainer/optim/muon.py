"""Muon (Keller Jordan 2024; Liu et al. 2025 for Muon-Kimi's lr rule), on the project's Newton-Schulz.

Per matrix W with gradient G, as torch.optim.Muon documents its algorithm:

    B <- mu B + (1 - mu) G,   U = G + mu (B - G) (Nesterov) or B,   O = NS(U),
    W <- W (1 - lr lambda) - lr s(W) O,

s the group's ``adjust_lr_fn``: "original" sqrt(max(1, rows/cols)) (Keller Jordan), "match_rms_adamw"
0.2 sqrt(max(rows, cols)) (Liu et al.: the update's RMS 0.2, as AdamW's), "bare" 1 (the paper's U V^T
step for the input and output layers, C.2.2). Written here, not as torch.optim.Muon, because torch's
runs its own bf16-only iteration one matrix at a time and offers no hook for another; this one
orthogonalises the matrices that share a shape (up to transposition: an MLP's W_in^T and W_out),
whatever their group, as one stack, in ``ns_dtype`` (trainer.optim.spectral.newton_schulz). Its groups and
state keep torch's names (``momentum_buffer``), so checkpoints written under torch's class still load.
"""
from __future__ import annotations

import functools
import math

import torch

from .spectral import NS_COEFFICIENTS, NS_EPS, NS_STEPS, newton_schulz, same_shape_stacks
from .protocol import closure_loss, with_grads

LR_ADJUST = ("original", "match_rms_adamw", "bare")


def muon_lr_scale(adjust: str, shape: torch.Size) -> float:
    """The factor s on a matrix's lr under the rule ``adjust`` (LR_ADJUST)."""
    rows, cols = shape[:2]
    if adjust == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust == "bare":
        return 1.0
    return math.sqrt(max(1, rows / cols))


class Muon(torch.optim.Optimizer):
    def __init__(self, params, ns_dtype: torch.dtype, lr: float = 1e-3, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True, ns_coefficients=NS_COEFFICIENTS,
                 eps: float = NS_EPS, ns_steps: int = NS_STEPS, adjust_lr_fn: str = "original"):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                                      adjust_lr_fn=adjust_lr_fn))
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            if group["adjust_lr_fn"] not in LR_ADJUST:
                raise ValueError(f"Muon: adjust_lr_fn {group['adjust_lr_fn']!r} of group {group.get('name')} "
                                 f"is none of {', '.join(LR_ADJUST)}")
            if any(p.ndim != 2 for p in group["params"]):
                raise ValueError(f"Muon updates matrices only; group {group.get('name')} is not 2-D")

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        updates = []
        for group in self.param_groups:
            for p in with_grads(group["params"]):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                updates.append((group, p, p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf))
        # one stack per wide shape (W and W^T share one) and iteration, across the groups
        for stack in same_shape_stacks(updates, lambda gpu: (tuple(sorted(gpu[2].shape)), gpu[0]["ns_coefficients"],
                                                             gpu[0]["ns_steps"], gpu[0]["eps"])):
            group = stack[0][0]
            wide = [u.mT if u.size(0) > u.size(1) else u for _, _, u in stack]
            ns = functools.partial(newton_schulz, dtype=self.ns_dtype, coefficients=group["ns_coefficients"],
                                   steps=group["ns_steps"], eps=group["eps"])
            ortho = ns(wide[0]).unsqueeze(0) if len(wide) == 1 else ns(torch.stack(wide))
            for (group, p, u), o in zip(stack, ortho):
                if group["weight_decay"]:  # a factor of 1 would be a pass over W for nothing
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(o.mT if u.size(0) > u.size(1) else o,
                       alpha=-group["lr"] * muon_lr_scale(group["adjust_lr_fn"], p.shape))
        return loss
