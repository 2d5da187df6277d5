"""Interpolant math: boundary values, derivatives, conversions, diffusion forms, time convention."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import OFFICIAL_FIXTURES

from sit_diffusers.interpolants import (
    GVP,
    VP,
    Custom,
    GaussianMixture,
    Linear,
    default_eps,
    from_sit_time,
    get_interpolant,
    sampling_interval,
    to_sit_time,
    training_interval,
)

F64 = torch.float64
PATHS = [Linear(), GVP(), VP()]
IDS = ["linear", "gvp", "vp"]


@pytest.mark.parametrize("interp", PATHS, ids=IDS)
def test_boundary_values(interp):
    """t = 0 is noise (alpha 0, sigma 1), t = 1 is data (alpha 1, sigma 0); VP's alpha_0 = exp(-5.025)."""
    t = torch.tensor([0.0, 1.0], dtype=F64)
    a, _ = interp.alpha(t)
    s, _ = interp.sigma(t)
    a0 = math.exp(-0.25 * 19.9 - 0.05) if interp.name == "vp" else 0.0
    torch.testing.assert_close(a, torch.tensor([a0, 1.0], dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(s, torch.tensor([math.sqrt(1 - a0**2), 0.0], dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("interp", PATHS, ids=IDS)
def test_derivatives_match_finite_differences(interp):
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    h = 1e-6
    for fn in (interp.alpha, interp.sigma):
        _, d = fn(t)
        fd = (fn(t + h)[0] - fn(t - h)[0]) / (2 * h)
        torch.testing.assert_close(d, fd, rtol=1e-7, atol=1e-8)
    a, da = interp.alpha(t)
    s, ds = interp.sigma(t)
    # the stable closed forms equal the generic definitions
    torch.testing.assert_close(interp.d_log_alpha(t), da / a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(interp.score_weight(t), (da / a) * s**2 - s * ds, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("interp", PATHS, ids=IDS)
def test_velocity_target_is_time_derivative_of_xt(interp):
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(2, 3, 4, 4, generator=g, dtype=F64).unbind(0)
    x0, x1 = x0[None].expand(5, -1, -1, -1), x1[None].expand(5, -1, -1, -1)
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=F64)
    h = 1e-6
    fd = (interp.compute_xt(x0, x1, t + h) - interp.compute_xt(x0, x1, t - h)) / (2 * h)
    torch.testing.assert_close(interp.velocity_target(x0, x1, t), fd, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("interp", PATHS, ids=IDS)
def test_conversions_are_inverse_float64(interp):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, 3, 3, generator=g, dtype=F64)
    pred = torch.randn(6, 2, 3, 3, generator=g, dtype=F64)
    t = torch.tensor([0.02, 0.2, 0.4, 0.6, 0.8, 0.98], dtype=F64)
    kinds = ("velocity", "score", "noise")
    for src in kinds:
        for dst in kinds:
            back = interp.convert(interp.convert(pred, src, dst, x, t), dst, src, x, t)
            torch.testing.assert_close(back, pred, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("interp", PATHS, ids=IDS)
def test_conversions_agree_with_exact_gaussian_mixture_predictions(interp):
    """Independent derivation: the closed-form posterior means of a mixture satisfy the conversion formulas."""
    gm = GaussianMixture(
        torch.tensor([0.3, 0.7], dtype=F64),
        torch.tensor([[-1.0, 0.5, 2.0, 0.0], [1.5, -0.5, 0.0, 1.0]], dtype=F64),
        torch.tensor([0.4, 0.8], dtype=F64),
        interp,
    )
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 1, 2, 2, generator=g, dtype=F64)
    t = torch.linspace(0.05, 0.95, 8, dtype=F64)
    v, s, e = gm.velocity(x, t), gm.score(x, t), gm.noise(x, t)
    torch.testing.assert_close(interp.convert(v, "velocity", "score", x, t), s, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(interp.convert(v, "velocity", "noise", x, t), e, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(interp.convert(s, "score", "velocity", x, t), v, rtol=1e-8, atol=1e-10)
    # and the score is the gradient of the log-density
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gm.log_prob(xr, t).sum(), xr)
    torch.testing.assert_close(grad, s, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    ("closed", "custom"),
    [
        (Linear(), Custom(lambda t: t, lambda t: 1 - t)),
        (GVP(), Custom(lambda t: torch.sin(t * math.pi / 2), lambda t: torch.cos(t * math.pi / 2))),
    ],
    ids=["linear", "gvp"],
)
def test_custom_interpolant_matches_closed_forms(closed, custom):
    t = torch.linspace(0.01, 0.99, 33, dtype=F64)
    for a, b in zip(closed.alpha(t) + closed.sigma(t), custom.alpha(t) + custom.sigma(t), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(custom.score_weight(t), closed.score_weight(t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(custom.diffusion(t, "SBDM"), closed.diffusion(t, "SBDM"), rtol=1e-10, atol=1e-12)
    x = torch.randn(33, 2, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    v = torch.randn_like(x)
    torch.testing.assert_close(custom.score_from_velocity(v, x, t), closed.score_from_velocity(v, x, t), rtol=1e-9, atol=1e-9)


def test_custom_interpolant_cosine_vp_like_path():
    """A path not in the registry: derivatives come from autodiff and match hand-derived ones."""
    c = Custom(lambda t: t**2, lambda t: 1 - t**2)
    t = torch.tensor([0.25, 0.5], dtype=F64)
    torch.testing.assert_close(c.alpha(t)[1], 2 * t)
    torch.testing.assert_close(c.sigma(t)[1], -2 * t)


def test_diffusion_forms():
    interp = Linear()
    t = torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=F64)
    n = 0.7
    torch.testing.assert_close(interp.diffusion(t, "constant", n), torch.full_like(t, n))
    torch.testing.assert_close(interp.diffusion(t, "sigma", n), n * (1 - t))
    torch.testing.assert_close(interp.diffusion(t, "linear", n), n * (1 - t))
    torch.testing.assert_close(interp.diffusion(t, "decreasing", n), 0.25 * (n * torch.cos(math.pi * t) + 1) ** 2)
    inc = n * torch.sin(math.pi * t) ** 2
    torch.testing.assert_close(interp.diffusion(t, "increasing-decreasing", n), inc)
    # the official key (typo) is accepted as an alias
    torch.testing.assert_close(interp.diffusion(t, "inccreasing-decreasing", n), inc)
    tt = t[1:]
    torch.testing.assert_close(interp.diffusion(tt, "SBDM", n), n * ((1 - tt) ** 2 / tt + (1 - tt)))
    vp = VP()
    torch.testing.assert_close(vp.diffusion(t, "SBDM"), (0.1 + (1 - t) * 19.9) / 2)
    with pytest.raises(ValueError, match="valid: constant, SBDM, sigma"):
        interp.diffusion(t, "cosine")


def test_get_interpolant_and_names():
    assert isinstance(get_interpolant("linear"), Linear)
    assert isinstance(get_interpolant("GVP"), GVP)  # the official spelling
    vp = get_interpolant("vp", sigma_min=0.2, sigma_max=10.0)
    assert isinstance(vp, VP) and vp.sigma_min == 0.2 and vp.sigma_max == 10.0
    with pytest.raises(ValueError, match="valid: linear, gvp, vp"):
        get_interpolant("cosine")


def test_time_convention_round_trip_and_direction():
    t = torch.linspace(0, 1, 11, dtype=F64)
    for conv in ("sit", "noise_at_1", "diffusers"):
        torch.testing.assert_close(to_sit_time(from_sit_time(t, conv), conv), t)
    # diffusers' flow-matching timestep 1000 is pure noise, i.e. SiT t = 0
    assert to_sit_time(torch.tensor(1000.0), "diffusers").item() == 0.0
    assert to_sit_time(torch.tensor(0.0), "noise_at_1").item() == 1.0
    with pytest.raises(ValueError, match="valid: sit, noise_at_1, diffusers"):
        to_sit_time(t, "edm")
    # x_t at SiT t = 0 is the noise, at t = 1 the data: a flipped convention fails here
    x0, x1 = torch.randn(2, 2, 1, 2, 2, dtype=F64).unbind(0)
    for interp in (Linear(), GVP()):
        torch.testing.assert_close(interp.compute_xt(x0, x1, torch.zeros(2, dtype=F64)), x0)
        torch.testing.assert_close(interp.compute_xt(x0, x1, torch.ones(2, dtype=F64)), x1, atol=1e-15, rtol=0)


def test_intervals_and_eps_match_official_manifest():
    """create_transport's eps defaults and check_interval's training interval, per combination."""
    manifest = json.loads((OFFICIAL_FIXTURES / "manifest.json").read_text())
    combos = manifest["files"]["transport_losses.safetensors"]["combos"]
    assert len(combos) == 21
    for key, c in combos.items():
        path, pred, _ = key.split(".")
        train_eps, sample_eps = default_eps(path, pred)
        assert (train_eps, sample_eps) == (pytest.approx(c["train_eps"]), pytest.approx(c["sample_eps"])), key
        assert training_interval(path, pred, train_eps) == pytest.approx(tuple(c["train_interval"])), key


def test_sampling_intervals_match_official_runs():
    runs = json.loads((OFFICIAL_FIXTURES / "manifest.json").read_text())["files"]["samplers.safetensors"]["runs"]
    checked = 0
    for key, run in runs.items():
        if "interval" not in run or key.startswith("ode_cfg"):
            continue
        kind, _, path, pred = key.split(".")
        sde = kind == "sde"
        iv = sampling_interval(path, pred, default_eps(path, pred)[1], sde=sde, last_step_size=0.04 if sde else 0.0)
        assert iv == pytest.approx(tuple(run["interval"])), key
        checked += 1
    assert checked >= 10
