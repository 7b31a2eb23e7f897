"""Torch optimizers for the parameterization's groups: one optimizer per update kind, one torch
param group per ParamGroup, its "lr" the group's peak lr (schedules scale all lrs by one factor).

Choices: Muon runs Nesterov momentum cfg.momentum (5.1); Muon-Kimi uses torch's RMS matching to
AdamW ("match_rms_adamw", 0.2*sqrt(max(rows, cols))), plain Muon Keller Jordan's "original"
sqrt(max(1, rows/cols)). AdamW uses betas (cfg.adam_beta1, cfg.adam_beta2). SGD runs without
momentum: Table 4 is derived for the plain step -eta(grad + lambda W) (C.3.1) and checked with plain
gradient descent (F.2); momentum would only rescale the effective lr by a constant 1/(1 - beta), but
would change what eta_base means. Lion keeps its authors' betas (0.9, 0.99).
"""
from __future__ import annotations

import torch
import torch.optim._muon as torch_muon
from lion_pytorch import Lion

from .config import TrainConfig
from .parameterization import OPTIMIZERS, ParamGroup, check_names

__all__ = ["OPTIMIZERS", "build_optimizers"]

MUON_LR_ADJUST = {"muon_kimi": "match_rms_adamw", "muon": "original"}
LION_BETAS = (0.9, 0.99)


def cpu_has_fast_bf16() -> bool:
    """AMX tiles make bf16 matmul pay on a CPU; on AVX2 here a bf16 matmul ran ~70x slower than fp32."""
    return "AMX" in torch.backends.cpu.get_cpu_capability()


def _newton_schulz_fp32(grad: torch.Tensor, ns_coefficients, ns_steps: int, eps: float) -> torch.Tensor:
    """torch's quintic Newton-Schulz orthogonalisation (same coefficients and steps), kept in fp32."""
    a, b, c = ns_coefficients
    x = grad.float()
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if transposed else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon, whose Newton-Schulz iteration runs in bf16; on a CPU without fast bf16
    matmul that made a Muon step dominate training, so there the same iteration runs in fp32."""

    def __init__(self, params, fp32_newton_schulz: bool, **kwargs):
        super().__init__(params, **kwargs)
        self.fp32_newton_schulz = fp32_newton_schulz and hasattr(torch_muon, "_zeropower_via_newtonschulz")

    @torch.no_grad()
    def step(self, closure=None):
        if not self.fp32_newton_schulz:
            return super().step(closure)
        bf16_iteration = torch_muon._zeropower_via_newtonschulz
        torch_muon._zeropower_via_newtonschulz = _newton_schulz_fp32
        try:
            return super().step(closure)
        finally:
            torch_muon._zeropower_via_newtonschulz = bf16_iteration


def build_optimizers(groups: list[ParamGroup], cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    check_names(cfg)
    by_update: dict[str, list[dict]] = {}
    for group in groups:
        torch_group = {"params": group.params, "lr": group.lr, "weight_decay": group.weight_decay,
                       "name": group.name}
        if group.eps is not None:
            torch_group["eps"] = group.eps
        by_update.setdefault(group.update, []).append(torch_group)
    return [_optimizer(update, torch_groups, cfg) for update, torch_groups in by_update.items()]


def _optimizer(update: str, torch_groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if update == "muon":
        # torch's Muon defaults to weight_decay=0.1; the paper trains without, so pass lambda_base.
        on_cpu = all(p.device.type == "cpu" for g in torch_groups for p in g["params"])
        return Muon(torch_groups, fp32_newton_schulz=on_cpu and not cpu_has_fast_bf16(),
                    weight_decay=cfg.weight_decay, momentum=cfg.momentum, nesterov=True,
                    adjust_lr_fn=MUON_LR_ADJUST[cfg.optimizer])
    if update == "adamw":
        return torch.optim.AdamW(torch_groups, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay)
    if update == "sgd":
        return torch.optim.SGD(torch_groups, momentum=0.0, weight_decay=cfg.weight_decay)
    if update == "lion":
        return Lion(torch_groups, betas=LION_BETAS, weight_decay=cfg.weight_decay)
    raise ValueError(f"no optimizer for update kind {update!r}")
