"""ODE likelihood: parity with the official likelihood (recorded Hutchinson probes) and closed-form
Gaussian log-densities."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import load_official, official_model

from sit_diffusers.interpolants import GaussianMixture, get_interpolant
from sit_diffusers.likelihood import log_likelihood, rademacher

F64 = torch.float64


def test_parity_with_official_likelihood_replaying_probes():
    """Official: Euler on linspace(0, 1, 10), a fresh Rademacher probe per evaluation (recorded)."""
    model = official_model()
    data = load_official("likelihood")
    y = data["y"].long()
    probes = data["euler.Linear.velocity.hutchinson_eps"]  # (9, N, C, H, W)
    res = log_likelihood(
        lambda x, t: model(x, t, y).sample, data["x"], solver="euler", num_steps=9,
        probe_fn=lambda k, x: probes[k],
    )
    key = "euler.Linear.velocity"
    for name, ours in (("logp", res.logp), ("prior_logp", res.prior_logp), ("delta_logp", res.delta_logp), ("z", res.latent)):
        ref = data[f"{key}.{name}"]
        assert ((ours - ref).norm() / ref.norm()).item() <= 1e-5, name
    assert res.nfe == probes.shape[0]  # one network call per evaluation (official: two)
    torch.testing.assert_close(res.bits_per_dim, -res.logp / (4 * 8 * 8 * math.log(2)))


@pytest.mark.parametrize(("path", "pred"), [("linear", "velocity"), ("gvp", "velocity"), ("vp", "noise"), ("linear", "score")])
def test_gaussian_log_density_closed_form(path, pred):
    gm = GaussianMixture.gaussian(torch.tensor([1.0, -0.5, 0.0, 2.0], dtype=F64), 0.6, get_interpolant(path))
    x = gm.sample(6, (1, 2, 2), generator=torch.Generator().manual_seed(0))
    res = log_likelihood(
        lambda xx, t: gm.predict(pred, xx, t), x, path_type=path, prediction=pred, solver="dopri5",
        num_steps=2, atol=1e-9, rtol=1e-9, divergence="exact",
    )
    exact = gm.log_prob(x)
    rel = ((res.logp - exact).abs() / exact.abs()).max().item()
    assert rel < 0.01, rel
    if path in ("linear", "gvp") and pred == "velocity":  # whole interval, exact prior at t = 0
        torch.testing.assert_close(res.logp, exact, rtol=1e-6, atol=1e-6)


def test_hutchinson_is_exact_for_isotropic_jacobians_and_unbiased_otherwise():
    # isotropic Gaussian: dv/dx = a(t) I, and eps^T (a I) eps = a D for Rademacher eps
    gm = GaussianMixture.gaussian(torch.zeros(4, dtype=F64) + 0.5, 0.7, get_interpolant("linear"))
    x = gm.sample(5, (1, 2, 2), generator=torch.Generator().manual_seed(1))
    fn = lambda xx, t: gm.velocity(xx, t)  # noqa: E731
    kw = {"solver": "heun", "num_steps": 20}
    exact = log_likelihood(fn, x, divergence="exact", **kw)
    hutch = log_likelihood(fn, x, divergence="hutchinson", generator=torch.Generator().manual_seed(2), **kw)
    torch.testing.assert_close(hutch.logp, exact.logp, rtol=1e-10, atol=1e-10)
    # a mixture has non-diagonal Jacobians: single probes scatter, their mean is the exact value
    mix = GaussianMixture(
        torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([[1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 1.0, 0.0]], dtype=F64),
        torch.tensor([0.4, 0.5], dtype=F64), get_interpolant("linear"),
    )
    fn = lambda xx, t: mix.velocity(xx, t)  # noqa: E731
    x = mix.sample(1, (1, 2, 2), generator=torch.Generator().manual_seed(3)).expand(400, -1, -1, -1)
    exact = log_likelihood(fn, x[:1], divergence="exact", **kw).logp
    g = torch.Generator().manual_seed(4)
    est = log_likelihood(fn, x, divergence="hutchinson", generator=g, **kw).logp  # one probe per row
    assert est.std() > 1e-3  # genuinely stochastic
    assert abs(est.mean() - exact[0]).item() < 4 * est.std().item() / math.sqrt(400)
    torch.testing.assert_close(exact, mix.log_prob(x[:1]), rtol=5e-3, atol=5e-3)


def test_rademacher_and_validation():
    r = rademacher((1000,), torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32)
    assert set(r.unique().tolist()) == {-1.0, 1.0} and abs(r.mean().item()) < 0.1
    with pytest.raises(ValueError, match="valid: euler"):
        log_likelihood(lambda x, t: x, torch.zeros(1, 1, 1, 1), solver="leapfrog")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        log_likelihood(lambda x, t: x, torch.zeros(1, 1, 1, 1))
    with pytest.raises(ValueError, match="sample_eps > 0"):
        log_likelihood(lambda x, t: x, torch.zeros(1, 1, 1, 1), prediction="noise", sample_eps=0.0)
