"""Shampoo (Gupta, Koren, Singer 2018) for matrices, as Appendix C.5 states it (Eq. 32-33):

    L <- L + G G^T,   R <- R + G^T G,   W <- W - eta (L^-1/4 G R^-1/4 + lambda W),

the inverse fourth roots recomputed every ``precondition_frequency`` steps (the first step
included; trainer.optim.build defaults to every step). The matrices that share a shape (and a root
schedule), whatever their group, are stepped as one stack: batched eigh for their roots, batched matmuls for their steps; in full fp32
(no TF32 on CUDA), as the floor below needs.
Roots come from eigh with eigenvalues floored at 1e-6 of the largest: a floor relative to the
statistics keeps the step independent of the gradient's scale, which C.5's reduction to Muon's
U V^T step (and so Table 3) relies on; an absolute eps I would not.

Written here because pytorch_optimizer's Shampoo, which has the same rule, takes its roots by
torch.linalg.svd of L and R, and that failed to converge in fp32 on this CPU for the
rank-deficient statistics of a width-256 model ("too many repeated singular values").
"""
from __future__ import annotations

import torch

from .spectral import same_shape_stacks, without_tf32
from .protocol import closure_loss, with_grads

RELATIVE_FLOOR = 1e-6
# A side longer than this needs a statistic of over 256 MiB and an eigh of hours on a CPU at every
# root: GPT-2's 50 304-token embedding under matrix_io=true.
MAX_SIDE = 8192


def inverse_fourth_root(stat: torch.Tensor) -> torch.Tensor:
    """stat^-1/4 of a symmetric PSD matrix, or of each of a stack (k, n, n), eigenvalues floored at
    RELATIVE_FLOOR x the largest (of each matrix)."""
    try:
        values, vectors = torch.linalg.eigh(stat)
    except torch.linalg.LinAlgError:  # rare in fp32: fp64 converges
        values, vectors = (t.to(stat.dtype) for t in torch.linalg.eigh(stat.double()))
    values = values.clamp(min=values.amax(dim=-1, keepdim=True).clamp(min=1e-30) * RELATIVE_FLOOR)
    return (vectors * values.pow(-0.25).unsqueeze(-2)) @ vectors.mT


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
    @without_tf32()
    def step(self, closure=None):
        loss = closure_loss(closure)
        matrices = [(group, p) for group in self.param_groups for p in with_grads(group["params"])]
        # stacked by shape, and by when their roots are due, across the groups
        for stack in same_shape_stacks(matrices, lambda gp: (gp[1].shape, gp[0]["precondition_frequency"],
                                                             self.state[gp[1]].get("step", 0))):
            grads, states = [p.grad.float() for _, p in stack], [self.state[p] for _, p in stack]
            for g, state in zip(grads, states):
                if not state:
                    state["step"] = 0
                    state["L"], state["R"] = g.new_zeros(g.shape[0], g.shape[0]), g.new_zeros(g.shape[1], g.shape[1])
                state["L"].addmm_(g, g.T)
                state["R"].addmm_(g.T, g)
            roots = {}  # the stacks of roots made this step: used as they are, not stacked again
            if states[0]["step"] % stack[0][0]["precondition_frequency"] == 0:
                for side in ("L", "R"):
                    roots[side] = inverse_fourth_root(torch.stack([state[side] for state in states]))
                    for state, root in zip(states, roots[side]):
                        state[side + "_root"] = root
            left, right = (roots[side] if side in roots else torch.stack([s[side + "_root"] for s in states])
                           for side in ("L", "R"))
            steps = left @ torch.stack(grads) @ right
            for (group, p), state, update in zip(stack, states, steps):
                state["step"] += 1
                if group["weight_decay"]:  # a factor of 1 would be a pass over W for nothing
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-group["lr"])
        return loss
