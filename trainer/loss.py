"""Mean cross-entropy of the output layer's logits, x W^T, with its gradients made in the forward pass.

The same value and gradients as ``F.cross_entropy((x @ W.T).float(), targets)`` up to rounding, in
less time and memory: the fp32 logits live one chunk of rows at a time, and each chunk's gradient
(softmax - onehot) / N is made from the log-probabilities and multiplied into dL/dx and dL/dW at once,
so that no chunk is recomputed in backward and log-softmax's own backward pass never runs (the
loss used to recompute each chunk in backward: one more output-layer matmul per step). A chunk's
logits are passed over three times: log-softmax, exp into the gradient's dtype, the gradient's matmuls.
Backward only scales the two stored gradients by the incoming one.

Under autocast the matmuls run in its dtype (as autocast's linear would: x and W are cast), the
softmax in fp32, as ``.float()`` logits do; dL/dW is summed over chunks in fp32.
"""
from __future__ import annotations

from typing import Optional

import torch

MIXED_ADDMM = hasattr(torch.ops.aten.addmm, "dtype_out")  # addmm(..., out_dtype=): CUDA, torch >= 2.8


def _loss_and_grads(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int, want_x: bool,
                    want_w: bool) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    n = targets.numel()
    grad_x = torch.empty_like(x) if want_x else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
    total = x.new_zeros((), dtype=torch.float32)
    for start in range(0, n, rows):
        xs, ts = x[start:start + rows], targets[start:start + rows, None]
        # fp32 log-probs in one kernel (logsumexp and a subtraction were four; on a GPU these passes
        # are most of the loss's time); torch casts bf16 logits to fp32 first: 10 bytes a logit at
        # the peak, within trainer.cost.LOGIT_BYTES (an H200 measured 0.93 of the model's tensors)
        logp = torch.log_softmax(xs @ weight.T, dim=-1, dtype=torch.float32)
        picked = logp.gather(1, ts)
        total -= picked.sum()
        if not (want_x or want_w):
            continue
        # n dL/dlogits = softmax - onehot, in x's dtype: exp in the same pass as the cast, and each
        # target's entry from its fp32 probability, rounded once as the fp32 difference would be
        g = logp.exp_() if x.dtype == torch.float32 else torch.exp(logp, out=torch.empty_like(logp, dtype=x.dtype))
        g.scatter_(1, ts, (picked.exp() - 1).to(g.dtype))
        if want_x:  # the 1/n of the mean in the matmuls' alpha, not a pass of its own
            chunk = grad_x[start:start + rows]
            torch.addmm(chunk, g, weight, beta=0, alpha=1.0 / n, out=chunk)
        if want_w and g.dtype == torch.float32:
            grad_w.addmm_(g.T, xs, alpha=1.0 / n)
        elif want_w and g.is_cuda and MIXED_ADDMM and not torch.compiler.is_compiling():
            # cuBLAS adds the bf16 product into the fp32 sum itself (inductor cannot trace it: fuses)
            torch.addmm(grad_w, g.T, xs, alpha=1.0 / n, out_dtype=torch.float32, out=grad_w)
        elif want_w:
            grad_w.add_(g.T @ xs, alpha=1.0 / n)
    return total / n, grad_x, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        loss, grad_x, grad_w = _loss_and_grads(x, weight, targets, rows, *ctx.needs_input_grad[:2])
        ctx.save_for_backward(grad_x, None if grad_w is None else grad_w.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_x, grad_w = ctx.saved_tensors
        return (None if grad_x is None else grad_x * grad_loss.to(grad_x.dtype),
                None if grad_w is None else grad_w * grad_loss.to(grad_w.dtype), None, None)


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
    """Mean over the N rows of x (N, n) of cross_entropy(x W^T, targets), fp32 logits ``rows`` rows at
    a time. Under autocast the matmuls run in its dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
    with torch.autocast(device, enabled=False):
        if not torch.is_grad_enabled():  # evaluation: the loss alone
            return _loss_and_grads(x, weight, targets, rows, False, False)[0]
        return _LinearCrossEntropy.apply(x, weight, targets, rows)
