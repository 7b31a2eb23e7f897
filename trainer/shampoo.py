"""Shampoo (Gupta, Koren, Singer 2018) for matrices, as Appendix C.5 states it (Eq. 32-33):

    L <- L + G G^T,   R <- R + G^T G,   W <- W - eta (L^-1/4 G R^-1/4 + lambda W),

the inverse fourth roots recomputed every ``precondition_frequency`` steps (the first step
included; trainer.optimizers defaults to every step).
Roots come from eigh with eigenvalues floored at 1e-6 of the largest: a floor relative to the
statistics keeps the step independent of the gradient's scale, which C.5's reduction to Muon's
U V^T step (and so Table 3) relies on; an absolute eps I would not.

Written here because pytorch_optimizer's Shampoo, which has the same rule, takes its roots by
torch.linalg.svd of L and R, and that failed to converge in fp32 on this CPU for the
rank-deficient statistics of a width-256 model ("too many repeated singular values").
"""
from __future__ import annotations

import torch

from .stepping import closure_loss, with_grads

RELATIVE_FLOOR = 1e-6
# A side longer than this needs a statistic of over 256 MiB and an eigh of hours on a CPU at every
# root: GPT-2's 50 304-token embedding under matrix_io=true.
MAX_SIDE = 8192


def inverse_fourth_root(stat: torch.Tensor) -> torch.Tensor:
    """stat^-1/4 of a symmetric PSD matrix, eigenvalues floored at RELATIVE_FLOOR x the largest."""
    try:
        values, vectors = torch.linalg.eigh(stat)
    except torch.linalg.LinAlgError:  # rare in fp32: fp64 converges
        values, vectors = (t.to(stat.dtype) for t in torch.linalg.eigh(stat.double()))
    values = values.clamp(min=values.max().clamp(min=1e-30) * RELATIVE_FLOOR)
    return (vectors * values.pow(-0.25)) @ vectors.T


class Shampoo(torch.optim.Optimizer):
    def __init__(self, params, lr: float, weight_decay: float, precondition_frequency: int):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay,
                                      precondition_frequency=precondition_frequency))
        for group in self.param_groups:
            if any(p.ndim != 2 for p in group["params"]):
                raise ValueError(f"Shampoo here preconditions matrices only; group {group.get('name')} is not 2-D")
            if any(max(p.shape) > MAX_SIDE for p in group["params"]):
                shape = "x".join(map(str, max((p.shape for p in group["params"]), key=max)))
                raise ValueError(
                    f"Shampoo would hold a statistic per side of group {group.get('name')} ({shape}), and a "
                    f"side over {MAX_SIDE} is out of reach (memory and an eigh per root); with a large "
                    f"vocabulary leave matrix_io=false, so that AdamW updates the input and output weights")

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            for p in with_grads(group["params"]):
                g = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["L"], state["R"] = g.new_zeros(g.shape[0], g.shape[0]), g.new_zeros(g.shape[1], g.shape[1])
                state["L"].addmm_(g, g.T)
                state["R"].addmm_(g.T, g)
                if state["step"] % group["precondition_frequency"] == 0:
                    state["L_root"], state["R_root"] = inverse_fourth_root(state["L"]), inverse_fourth_root(state["R"])
                state["step"] += 1
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_((state["L_root"] @ g @ state["R_root"]).to(p.dtype), alpha=-group["lr"])
        return loss
