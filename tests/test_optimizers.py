"""The project's Newton-Schulz iteration (trainer.optim.spectral) under Muon and SSO: bf16 as torch's Muon,
fp32 on CPUs without fast bf16 matmul; and the optimizer-specific settings."""
import pytest
import torch
import torch.optim._muon as torch_muon

import trainer.optim.spectral  # noqa: F401  (read by name below)
from trainer.config import TrainConfig
from trainer.optim.muon import Muon
from trainer.optim.build import build_optimizers
from trainer.parameterization import build_model, param_groups
from trainer.optim.spectral import NS_COEFFICIENTS, newton_schulz

torch.set_num_threads(1)


def test_bf16_iteration_is_torchs_bit_for_bit():
    # torch's own (private) iteration as the oracle: Muon on a GPU computes what it did before.
    grad = torch.randn(96, 256, generator=torch.Generator().manual_seed(0))
    for g in (grad, grad.T):
        assert torch.equal(newton_schulz(g, torch.bfloat16),
                           torch_muon._zeropower_via_newtonschulz(g, NS_COEFFICIENTS, 5, 1e-7))


def test_fp32_iteration_orthogonalises_like_the_bf16_one():
    grad = torch.randn(96, 256, generator=torch.Generator().manual_seed(0))
    for g in (grad, grad.T):
        ours = newton_schulz(g, torch.float32)
        assert ours.dtype == torch.float32 and ours.shape == g.shape
        assert (ours - newton_schulz(g, torch.bfloat16).float()).abs().max() < 0.02  # bf16: ~3 digits
        s = torch.linalg.svdvals(ours)  # what Newton-Schulz is for: singular values near 1
        assert 0.4 < s.min() and s.max() < 1.6


@pytest.mark.parametrize("adjust", ["match_rms_adamw", "original"])
def test_muon_in_bf16_steps_exactly_as_torchs_muon(adjust):
    torch.manual_seed(0)
    start, grads = torch.randn(64, 128), [torch.randn(64, 128) for _ in range(3)]
    params = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    ours = Muon([params[0]], ns_dtype=torch.bfloat16, lr=0.01, weight_decay=0.1, adjust_lr_fn=adjust)
    torchs = torch.optim.Muon([params[1]], lr=0.01, weight_decay=0.1, adjust_lr_fn=adjust)
    for grad in grads:  # three steps: the momentum buffer too
        for p, opt in zip(params, (ours, torchs)):
            p.grad = grad.clone()
            opt.step()
    assert (params[0] - start).abs().max() > 1e-3
    assert torch.equal(params[0], params[1])


@pytest.mark.parametrize("optimizer", ["muon_kimi", "sso"])
@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("auto", torch.float32),
                                              ("bf16", torch.bfloat16)])
def test_newton_schulz_runs_in_the_runs_precision(monkeypatch, optimizer, precision, dtype):
    # on any CPU, AMX or not (it used to be bf16 at every precision on an AMX CPU); the spy calls the
    # real iteration and records its dtype
    seen = []

    def spy(grad, dtype, *args, **kwargs):
        out = newton_schulz(grad, dtype, *args, **kwargs)
        seen.append((dtype, out.dtype))
        return out

    monkeypatch.setattr("trainer.optim.muon.newton_schulz", spy)
    monkeypatch.setattr("trainer.optim.sso.newton_schulz", spy)
    cfg = TrainConfig(optimizer=optimizer, width=64, depth=1, base_width=64, base_depth=1, seq_len=8,
                      precision=precision)
    model = build_model(cfg, 32, torch.Generator().manual_seed(0))
    optimizers = build_optimizers(param_groups(model, cfg), cfg)
    x = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(1))
    model.loss(x, x).backward()
    for opt in optimizers:
        opt.step()
    assert len(seen) >= 2  # one per stack of same-shape hidden matrices at least (n x n; n x 4n)
    assert set(seen) == {(dtype, dtype)}


def test_spectral_is_the_one_newton_schulz():
    # Muon and SSO call the same function object: no copy to drift.
    import trainer.optim.muon
    import trainer.optim.sso
    assert trainer.optim.muon.newton_schulz is trainer.optim.sso.newton_schulz is trainer.optim.spectral.newton_schulz


@pytest.mark.parametrize("setting, optimizer, takers", [
    ("precondition_frequency=5", "adamw", "shampoo, soap"),
    ("hessian_interval=5", "soap", "sophia"),
    ("sophia_rho=0.1", "muon", "sophia"),
    ("matrix_io=True", "sophia", "muon_kimi, muon, shampoo, soap, sso"),
])
def test_a_setting_given_to_another_optimizer_names_its_optimizers(setting, optimizer, takers):
    name, value = setting.split("=")
    cfg = TrainConfig(optimizer=optimizer, **{name: eval(value)})
    with pytest.raises(ValueError, match=f"{name}=.* of {takers} only, not of optimizer={optimizer}"):
        cfg.validate()


@pytest.mark.parametrize("transposed, radius", [(False, 2.0), (True, 0.5)])  # R = sqrt(n_out / n_in)
def test_sso_keeps_each_matrix_on_its_spectral_sphere(transposed, radius):
    from trainer.optim.sso import SSO

    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(128, 32, generator=gen) * 0.02)  # stored as W (or W^T: n_out = 32)
    opt = SSO([p], lr=0.02, momentum=0.95, weight_decay=0.0, ns_dtype=torch.float32, transposed=transposed)
    for _ in range(5):
        before = p.detach().clone()
        p.grad = torch.randn(128, 32, generator=gen)
        opt.step()
        # retracted to R (from 0.34 at the start), then a step of size lr*R tangent to the top
        # singular pair; power iteration's estimate and the next singular values allow a few %
        assert abs(torch.linalg.matrix_norm(p.detach(), 2).item() - radius) < 0.1 * radius
        assert (p.detach() - before * radius / torch.linalg.matrix_norm(before, 2)).abs().max() > 1e-3


def test_shampoo_refuses_a_gpt2_vocabulary_under_matrix_io_and_takes_a_byte_one():
    cfg = TrainConfig(optimizer="shampoo", matrix_io=True, width=32, depth=1)
    for vocab, refused in [(50304, True), (256, False)]:
        model = build_model(cfg, vocab)
        if refused:
            with pytest.raises(ValueError, match=r"\(50304x32\).*leave matrix_io=false"):
                build_optimizers(param_groups(model, cfg), cfg)
        else:
            assert build_optimizers(param_groups(model, cfg), cfg)


@pytest.mark.parametrize("optimizer", ["muon_kimi", "muon"])
def test_muon_steps_a_model_as_torchs_documented_muon_per_matrix(optimizer):
    # The oracle: torch.optim.Muon through its public API, one matrix at a time, with its documented
    # lr rules; the paper's bare U V^T step (matrix_io, C.2.2) as "original" with lr / sqrt(max(1, r/c)).
    # Ours stacks same-shape matrices across groups (W_in^T with W_out): equal up to bf16 rounding.
    cfg = TrainConfig(optimizer=optimizer, matrix_io=True, weight_decay=0.1, width=64, depth=2, base_width=64,
                      base_depth=2, seq_len=8, precision="bf16")  # torch's Muon iterates in bf16 only
    model = build_model(cfg, 48, torch.Generator().manual_seed(0))
    (muon,) = [o for o in build_optimizers(param_groups(model, cfg), cfg) if isinstance(o, Muon)]
    assert {g["adjust_lr_fn"] for g in muon.param_groups} == (
        {"original", "bare"} if optimizer == "muon" else {"match_rms_adamw"})
    pairs = []
    for group in muon.param_groups:
        for p in group["params"]:
            copy = torch.nn.Parameter(p.detach().clone())
            adjust, lr = group["adjust_lr_fn"], group["lr"]
            if adjust == "bare":
                adjust, lr = "original", lr / max(1, p.shape[0] / p.shape[1]) ** 0.5
            pairs.append((p, copy, torch.optim.Muon([copy], lr=lr, weight_decay=group["weight_decay"] * group["lr"] / lr,
                                                    momentum=group["momentum"], nesterov=True, adjust_lr_fn=adjust)))
    gen = torch.Generator().manual_seed(1)
    start = [p.detach().clone() for p, _, _ in pairs]
    for _ in range(3):  # the momentum buffer too
        for p, copy, _ in pairs:
            p.grad = torch.randn(p.shape, generator=gen)
            copy.grad = p.grad.clone()
        muon.step()
        for _, _, theirs in pairs:
            theirs.step()
    for (p, copy, _), p0 in zip(pairs, start):
        moved = (copy - p0).abs().max()
        assert moved > 1e-4
        assert (p - copy).abs().max() <= 0.02 * moved  # bf16 rounding of stacked vs single matmuls


def test_muon_is_the_projects_own_and_refuses_unknown_lr_rules():
    # torch.optim.Muon neither defines "bare" nor lets another iteration in: ours subclasses its public base only
    assert torch.optim.Muon not in Muon.__mro__
    p = torch.nn.Parameter(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="adjust_lr_fn 'rms'.*original, match_rms_adamw, bare"):
        Muon([p], ns_dtype=torch.float32, adjust_lr_fn="rms")
    with pytest.raises(ValueError, match="matrices only"):
        Muon([torch.nn.Parameter(torch.zeros(4))], ns_dtype=torch.float32)
