"""The fp32 Newton-Schulz path of Muon on CPUs without fast bf16 matmul."""
import torch
import torch.optim._muon as torch_muon

from trainer.optimizers import Muon, _newton_schulz_fp32

COEFFS = (3.4445, -4.775, 2.0315)


def test_fp32_iteration_matches_torchs_bf16_iteration():
    grad = torch.randn(96, 256, generator=torch.Generator().manual_seed(0))
    for g in (grad, grad.T):
        ours = _newton_schulz_fp32(g, COEFFS, 5, 1e-7)
        torchs = torch_muon._zeropower_via_newtonschulz(g, COEFFS, 5, 1e-7).float()
        assert ours.dtype == torch.float32 and ours.shape == g.shape
        assert (ours - torchs).abs().max() < 0.02  # bf16 keeps ~3 significant digits
        # What Newton-Schulz is for: singular values pulled into roughly [0.5, 1.5].
        s = torch.linalg.svdvals(ours)
        assert 0.4 < s.min() and s.max() < 1.6


def test_fp32_muon_steps_like_torchs_muon():
    torch.manual_seed(0)
    start = torch.randn(64, 128)
    params = {flag: torch.nn.Parameter(start.clone()) for flag in (True, False)}
    grad = torch.randn(64, 128)
    for flag, p in params.items():
        opt = Muon([p], fp32_newton_schulz=flag, lr=0.01, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
        p.grad = grad.clone()
        opt.step()
    moved = (params[False] - start).abs().max()
    assert moved > 1e-3
    assert (params[True] - params[False]).abs().max() < 0.02 * moved
    assert torch_muon._zeropower_via_newtonschulz is not _newton_schulz_fp32  # restored after step
