"""The matrix optimizers' maths over stacks of same-shape matrices (Muon, SSO, Shampoo): the same
steps as one matrix at a time up to rounding, one batched call per shape, SSO's root search with no
host read-back, and no TF32 inside any of them."""
import subprocess
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

import trainer.optim.muon  # noqa: F401  (its newton_schulz is patched by name)
import trainer.optim.shampoo
import trainer.optim.spectral  # noqa: F401  (read by name below)
from trainer.config import TrainConfig
from trainer.optim.build import build_optimizers
from trainer.parameterization import build_model, param_groups
from trainer.optim.spectral import newton_schulz, top_singular
from trainer.optim.sso import ROOT_EVALUATIONS, SSO, TOLERANCE

torch.set_num_threads(1)
TINY = dict(width=32, depth=3, base_width=32, base_depth=3, seq_len=16)


def _model_and_grads(optimizer: str):
    cfg = TrainConfig(optimizer=optimizer, **TINY)
    model = build_model(cfg, 40, torch.Generator().manual_seed(0))
    x = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(1))
    model.loss(x, x.roll(1, dims=1)).backward()
    return cfg, model


def _stepped(optimizer: str, one_matrix_at_a_time: bool, steps: int = 3) -> dict[str, torch.Tensor]:
    """The model's weights after ``steps`` steps; one_matrix_at_a_time puts every matrix in a torch
    param group of its own (same lr and settings), so that no two share a stack."""
    cfg, model = _model_and_grads(optimizer)
    groups = param_groups(model, cfg)
    if one_matrix_at_a_time:
        groups = [type(g)(**{**g.__dict__, "params": [p]}) for g in groups for p in g.params]
    optimizers = build_optimizers(groups, cfg)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    for step in range(steps):
        for n, p in model.named_parameters():
            p.grad = grads[n] * (1 + step)  # the momenta change from step to step
        for opt in optimizers:
            opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("optimizer", ["muon_kimi", "muon", "shampoo", "sso"])
def test_stacked_steps_equal_steps_one_matrix_at_a_time(optimizer):
    # a CPU model at precision auto (fp32): fp32 Newton-Schulz, whose rounding hides nothing compared
    start = _model_and_grads(optimizer)[1].state_dict()
    stacked, single = _stepped(optimizer, False), _stepped(optimizer, True)
    assert max((stacked[n] - start[n]).abs().max().item() for n in start) > 1e-3  # it moved
    for name in stacked:
        torch.testing.assert_close(stacked[name], single[name], rtol=1e-4, atol=1e-5, msg=name)


def test_newton_schulz_of_a_stack_is_each_matrix_on_its_own():
    gen = torch.Generator().manual_seed(0)
    for shape in [(3, 48, 96), (3, 96, 48)]:
        stack = torch.randn(*shape, generator=gen) * torch.tensor([1e-3, 1.0, 50.0])[:, None, None]
        for dtype, tol in [(torch.float32, 1e-5), (torch.bfloat16, 0.02)]:
            together = newton_schulz(stack, dtype)
            for g, t in zip(stack, together):
                torch.testing.assert_close(t.float(), newton_schulz(g, dtype).float(), rtol=tol, atol=tol)
    w, v = torch.randn(4, 20, 12, generator=gen), torch.randn(4, 12, generator=gen)
    sigma, u, v_out = top_singular(w, v, 50)
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(w, 2), rtol=1e-4, atol=0)
    for k in range(4):
        s1, u1, v1 = top_singular(w[k], v[k], 50)
        torch.testing.assert_close((s1, u1, v1), (sigma[k], u[k], v_out[k]), rtol=1e-5, atol=1e-6)


class _Calls(TorchFunctionMode):
    """Records each torch function called inside, with whether TF32 was on for CUDA matmuls then."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append((getattr(func, "__name__", str(func)), torch.backends.cuda.matmul.allow_tf32))
        return func(*args, **(kwargs or {}))


MATMULS = {"matmul", "__matmul__", "mm", "bmm", "addmm", "addmm_", "baddbmm", "eigh", "mv"}


@pytest.mark.parametrize("optimizer", ["muon_kimi", "shampoo", "sso"])
def test_matrix_roots_run_without_tf32_and_leave_the_setting_as_it_was(optimizer):
    # The trainer turns TF32 on for CUDA (the flag is a plain switch on a CPU build too).
    cfg, model = _model_and_grads(optimizer)
    optimizers = [o for o in build_optimizers(param_groups(model, cfg), cfg)
                  if not isinstance(o, torch.optim.AdamW)]
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with _Calls() as seen:
            for opt in optimizers:
                opt.step()
        assert torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    matmuls = [tf32 for name, tf32 in seen.calls if name in MATMULS]
    assert matmuls and not any(matmuls)


def test_without_tf32_works_where_the_process_used_torchs_newer_tf32_setting():
    # torch refuses to read allow_tf32 once fp32_precision was set: a fresh process, not this one.
    code = ("import torch; from trainer.optim.spectral import without_tf32\n"
            "torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
            "with without_tf32(): inside = torch.backends.cuda.matmul.fp32_precision\n"
            "print(inside, torch.backends.cuda.matmul.fp32_precision)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["ieee", "tf32"]


@pytest.mark.parametrize("optimizer, module, function, calls", [
    # depth 3: 12 square attention matrices, 3 W_in (4n x n) and 3 W_out (n x 4n)
    ("muon_kimi", "trainer.optim.muon", "newton_schulz", 2),  # W_in^T stacked with W_out
    ("shampoo", "trainer.optim.shampoo", "inverse_fourth_root", 3 * 2),  # a stack per shape, L and R
    ("sso", "trainer.optim.sso", "newton_schulz", 3 * ROOT_EVALUATIONS),  # every evaluation of the root search
])
def test_same_shape_matrices_take_one_batched_call(monkeypatch, optimizer, module, function, calls):
    real = getattr(sys.modules[module], function)
    seen = []
    monkeypatch.setattr(f"{module}.{function}", lambda x, *a, **k: seen.append(x.shape) or real(x, *a, **k))
    cfg, model = _model_and_grads(optimizer)
    for opt in build_optimizers(param_groups(model, cfg), cfg):
        opt.step()
    assert len(seen) == calls


def test_sso_root_search_reads_nothing_back_and_finds_a_tangent_direction(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    shape = (4, 64, 96)
    m = torch.randn(*shape, generator=gen) + torch.randn(4, 64, 1, generator=gen) @ torch.randn(4, 1, 96, generator=gen)
    m = m / m.norm(dim=(-2, -1), keepdim=True)
    sigma, u, v = top_singular(torch.randn(*shape, generator=gen), torch.ones(4, 96) / 96 ** 0.5, 30)
    theta = u.unsqueeze(-1) * v.unsqueeze(-2)
    opt = SSO([torch.nn.Parameter(torch.zeros(64, 96))], lr=0.1, momentum=0.9, weight_decay=0.0,
              ns_dtype=torch.float32)

    def host_sync(self, *args):
        raise AssertionError("a tensor was read back to the host")

    for method in ("__float__", "__bool__", "item", "tolist", "__int__"):
        monkeypatch.setattr(torch.Tensor, method, host_sync)
    phi = opt.tangent_direction(m, theta)
    monkeypatch.undo()
    for k in range(4):
        # tangent: <theta, phi> ~ 0; and phi is msign(m + mu theta) for that root mu (bisection here)
        assert abs((theta[k] * phi[k]).sum().item()) < TOLERANCE
        lo, hi = -64.0, 64.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if (theta[k] * opt.msign(m[k] + mid * theta[k])).sum().item() < 0:
                lo = mid
            else:
                hi = mid
        torch.testing.assert_close(phi[k], opt.msign(m[k] + lo * theta[k]), rtol=0, atol=2e-3)
