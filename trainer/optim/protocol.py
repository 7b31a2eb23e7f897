"""What every hand-written optimizer step here starts with (Muon's, Shampoo's, SSO's): torch's
closure convention and the parameters that have a gradient this step."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch


def closure_loss(closure: Optional[Callable[[], torch.Tensor]]) -> Optional[torch.Tensor]:
    """The loss of ``closure`` evaluated with gradients on (steps run under no_grad), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def with_grads(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [p for p in params if p.grad is not None]
