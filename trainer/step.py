"""One training step, as the loop, the probe, the coordinate check and the throughput benchmark run
it: forward/backward in micro-batches summing into .grad, gradient clipping, every optimizer's step,
gradients cleared.

Each micro-batch's mean loss is weighted by its share of the batch (all micro-batches hold the same
number of tokens), so the summed gradient is the gradient of the batch's mean loss, and clipping and
the optimizer step that follow see exactly what one big batch gives them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .optim.build import StepInputs, step_optimizers
from .precision import Precision


def forward_backward(loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, micro_batch_size: int,
                     autocast: Callable) -> torch.Tensor:
    """Backward of the batch's mean loss into the parameters' .grad; returns that loss, detached
    and on the device (reading it back is the caller's choice: a host sync)."""
    parts = x.shape[0] // micro_batch_size
    total = None
    for xs, ys in zip(x.split(micro_batch_size), y.split(micro_batch_size)):
        with autocast():
            loss = loss_fn(xs, ys)
        (loss / parts if parts > 1 else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total / parts if parts > 1 else total


@dataclass
class TrainingStep:
    """``step(x, y)``: one step on the batch (x, y), returning its mean loss on the device. Its two
    halves, ``gradients`` and ``update``, are there for a caller that times them apart."""
    model: torch.nn.Module
    optimizers: list[torch.optim.Optimizer]
    precision: Precision
    micro_batch_size: int
    grad_clip: float
    loss_fn: Callable  # model.loss, or its compiled version
    # Several ranks (trainer.distributed): sync(model, loss) averages .grad and the loss over them
    # before clipping, so the step sees the global batch's gradient.
    sync: Optional[Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]] = None

    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's gradient in .grad, clipped to norm grad_clip (0: not clipped); returns the loss."""
        loss = forward_backward(self.loss_fn, x, y, self.micro_batch_size, self.precision.autocast)
        if self.sync is not None:
            loss = self.sync(self.model, loss)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        return loss

    def update(self, x: torch.Tensor) -> None:
        """Every optimizer's step from the gradients in .grad, which are cleared afterwards."""
        step_optimizers(self.optimizers, StepInputs(self.model, x, self.precision.autocast, self.micro_batch_size))
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.gradients(x, y)
        self.update(x)
        return loss
