"""Torch optimizers for the parameterization's groups: one optimizer per update kind, one torch
param group per ParamGroup, its "lr" the group's peak lr (schedules scale all lrs by one factor).

Choices: Muon runs Nesterov momentum cfg.momentum (5.1); Muon-Kimi uses Liu et al.'s RMS matching to
AdamW ("match_rms_adamw", 0.2*sqrt(max(rows, cols))), plain Muon Keller Jordan's "original"
sqrt(max(1, rows/cols)). AdamW uses betas (cfg.adam_beta1, cfg.adam_beta2). SGD runs without
momentum: Table 4 is derived for the plain step -eta(grad + lambda W) (C.3.1) and checked with plain
gradient descent (F.2); momentum would only rescale the effective lr by a constant 1/(1 - beta), but
would change what eta_base means. Lion keeps its authors' betas (0.9, 0.99).

SOAP and Sophia come from pytorch_optimizer, checked against C.6 and C.9: SOAP runs Adam
(cfg.adam_beta1/2, eps) in the eigenbasis of EMAs of G G^T and G^T G, refreshed every
precondition_frequency steps (10, Vyas et al.'s default), with decoupled weight decay; Sophia is
SophiaH fed this module's Gauss-Newton-Bartlett Hessian estimate (Liu et al.'s SophiaG estimator)
every hessian_interval = k steps (10), scaled by gamma = sophia_rho (0.04) and clipped at 1, so that
its step is C.9's clip(m / max(gamma h, eps), 1) with per-group eps, betas (0.965, 0.99) as Liu et al.
Muon (trainer.optim.muon), Shampoo (trainer.optim.shampoo) and SSO (trainer.optim.sso) are written here; Muon's and
SSO's Newton-Schulz iteration is trainer.optim.spectral's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from lion_pytorch import Lion
from pytorch_optimizer import SOAP, SophiaH

from ..config import TrainConfig
from .muon import Muon
from ..parameterization import ParamGroup, optimizer_setting
from ..precision import Precision
from ..rules import OPTIMIZERS
from .shampoo import Shampoo
from .sso import SSO

__all__ = ["OPTIMIZERS", "build_optimizers", "StepInputs", "step_optimizers"]

MUON_LR_ADJUST = {"muon_kimi": "match_rms_adamw", "muon": "original"}
LION_BETAS = (0.9, 0.99)
SOPHIA_BETAS = (0.965, 0.99)




@dataclass
class StepInputs:
    """What an optimizer may need besides gradients to take a step: the model, the step's batch and
    the micro batch it runs through the model in (None: all at once)."""
    model: torch.nn.Module
    x: torch.Tensor
    autocast: Callable
    micro_batch_size: Optional[int] = None


def step_optimizers(optimizers: list[torch.optim.Optimizer], inputs: StepInputs) -> None:
    """One training step of every optimizer. An optimizer with a ``prepare_step(inputs)`` does its
    extra work there first (Sophia's Hessian estimate), before any parameter moves."""
    for opt in optimizers:
        prepare = getattr(opt, "prepare_step", None)
        if prepare is not None:
            prepare(inputs)
    for opt in optimizers:
        opt.step()


class Sophia(SophiaH):
    """SophiaH given, every k steps, gamma times the Gauss-Newton-Bartlett estimate of the Hessian
    diagonal (Liu et al. 2024, Alg. 2): labels sampled from the model's own softmax, h = B g*g with g
    the gradient of the mean loss on them over B tokens. The sampling generator is seeded by (seed,
    step), so a resumed run draws the same labels."""

    def __init__(self, params, rho: float, seed: int, **kwargs):
        super().__init__(params, p=1.0, weight_decouple=True, **kwargs)
        self.rho, self.seed = rho, seed
        self.hessian = None

    def hessian_due(self) -> bool:
        return self.param_groups[0].get("step", 0) % self.update_period == 0

    def prepare_step(self, inputs: StepInputs) -> None:
        if not self.hessian_due():
            return
        step = self.param_groups[0].get("step", 0)
        params = [p for g in self.param_groups for p in g["params"]]
        generator = torch.Generator(device=inputs.x.device).manual_seed(self.seed * 1_000_003 + step)
        parts = inputs.x.split(inputs.micro_batch_size or inputs.x.shape[0])
        grads = [None] * len(params)
        for x in parts:  # the mean loss's gradient over the batch, one micro-batch at a time
            with torch.enable_grad(), inputs.autocast():
                logits = inputs.model(x).float().flatten(0, -2)
                sampled = torch.multinomial(logits.detach().softmax(-1), 1, generator=generator).squeeze(-1)
                loss = torch.nn.functional.cross_entropy(logits, sampled)
            part = torch.autograd.grad(loss / len(parts) if len(parts) > 1 else loss, params, allow_unused=True)
            grads = [g if s is None else (s if g is None else s + g) for s, g in zip(grads, part)]
        tokens = inputs.x.numel()
        self.hessian = [torch.zeros_like(p) if g is None else self.rho * tokens * g * g
                        for p, g in zip(params, grads)]

    @torch.no_grad()
    def step(self, closure=None):
        if self.hessian_due() and self.hessian is None:
            raise RuntimeError("Sophia's Hessian estimate is due: step it through step_optimizers")
        hessian, self.hessian = self.hessian, None
        return super().step(closure, hessian=hessian)


def build_optimizers(groups: list[ParamGroup], cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    by_update: dict[str, list[dict]] = {}
    for group in groups:
        torch_group = {"params": group.params, "lr": group.lr, "weight_decay": group.weight_decay,
                       "name": group.name}
        if group.eps is not None:
            torch_group["eps"] = group.eps
        if group.update == "muon" and group.role != "hidden":
            torch_group["adjust_lr_fn"] = "bare" if cfg.optimizer == "muon" else MUON_LR_ADJUST[cfg.optimizer]
        if group.update == "sso":
            torch_group["transposed"] = group.role == "input"  # nn.Embedding stores W_0 as vocab x n
        by_update.setdefault(group.update, []).append(torch_group)
    return [_optimizer(update, torch_groups, cfg) for update, torch_groups in by_update.items()]


def newton_schulz_dtype(torch_groups: list[dict], cfg: TrainConfig) -> torch.dtype:
    """The dtype of Muon's and SSO's iteration: the run's precision's (trainer.precision)."""
    return Precision.of(cfg.precision, torch_groups[0]["params"][0].device).newton_schulz_dtype


def _optimizer(update: str, torch_groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if update == "muon":
        # torch's Muon defaults to weight_decay=0.1; the paper trains without, so pass lambda_base.
        return Muon(torch_groups, ns_dtype=newton_schulz_dtype(torch_groups, cfg), weight_decay=cfg.weight_decay,
                    momentum=cfg.momentum, nesterov=True, adjust_lr_fn=MUON_LR_ADJUST[cfg.optimizer])
    if update == "adamw":
        # fused: one pass over each tensor (CPU and CUDA), where torch's default loop makes ~8
        fused = all(p.device.type in ("cpu", "cuda") for g in torch_groups for p in g["params"])
        return torch.optim.AdamW(torch_groups, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay, fused=True if fused else None)
    if update == "sgd":
        return torch.optim.SGD(torch_groups, momentum=0.0, weight_decay=cfg.weight_decay)
    if update == "lion":
        return Lion(torch_groups, betas=LION_BETAS, weight_decay=cfg.weight_decay)
    if update == "shampoo":
        return Shampoo(torch_groups, lr=cfg.eta_base, weight_decay=cfg.weight_decay,
                       precondition_frequency=optimizer_setting(cfg, "precondition_frequency"))
    if update == "soap":
        return SOAP(torch_groups, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                    weight_decay=cfg.weight_decay, precondition_frequency=optimizer_setting(cfg, "precondition_frequency"))
    if update == "sophia":
        return Sophia(torch_groups, rho=optimizer_setting(cfg, "sophia_rho"), seed=cfg.seed, betas=SOPHIA_BETAS,
                      eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
                      update_period=optimizer_setting(cfg, "hessian_interval"))
    if update == "sso":
        return SSO(torch_groups, lr=cfg.eta_base, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                   ns_dtype=newton_schulz_dtype(torch_groups, cfg))
    raise ValueError(f"no optimizer for update kind {update!r}")
