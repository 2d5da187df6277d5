"""SiTObjective: parity with the official training losses, optimality of the exact model, time sampling."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import OFFICIAL_FIXTURES, as_model_fn, load_official, official_model, rel_err

from sit_diffusers.interpolants import GaussianMixture, get_interpolant
from sit_diffusers.losses import SiTObjective

F64 = torch.float64


@pytest.fixture(scope="module")
def official():
    data = load_official("transport_losses")
    combos = json.loads((OFFICIAL_FIXTURES / "manifest.json").read_text())["files"]["transport_losses.safetensors"]
    return {"fn": as_model_fn(official_model(), data["y"].long()), "data": data, "combos": combos["combos"],
            "seed": combos["loss_seed"]}


COMBOS = [
    (p, pred, w)
    for p in ("Linear", "GVP", "VP")
    for pred in ("velocity", "score", "noise")
    for w in ((None,) if pred == "velocity" else (None, "velocity", "likelihood"))
]


@pytest.mark.parametrize(("path", "pred", "weight"), COMBOS)
def test_loss_parity_with_official(official, path, pred, weight):
    key = f"{path}.{pred}.{weight or 'none'}"
    data = official["data"]
    assert key in official["combos"]
    objective = SiTObjective(path, pred, weight)
    terms = objective.terms(official["fn"], data["x1"], t=data[f"{key}.t"], noise=data["x0"])
    assert terms.loss.shape == (4,)
    assert rel_err(terms.loss, data[f"{key}.loss"]) <= 1e-5
    assert rel_err(terms.pred, data[f"{key}.pred"]) <= 1e-5


@pytest.mark.parametrize(("path", "pred"), [("Linear", "velocity"), ("GVP", "score"), ("VP", "noise")])
def test_time_and_noise_draws_follow_the_official_rng_order(official, path, pred):
    """Seeded like the official run (global RNG), we draw the same x0 and then the same t."""
    data = official["data"]
    key = f"{path}.{pred}.none"
    torch.manual_seed(official["seed"])
    terms = SiTObjective(path, pred).terms(official["fn"], data["x1"])
    torch.testing.assert_close(terms.t, data[f"{key}.t"], rtol=0, atol=0)
    torch.testing.assert_close(terms.noise, data["x0"], rtol=0, atol=0)
    assert rel_err(terms.loss, data[f"{key}.loss"]) <= 1e-5


def _perturbation_correlation(objective: SiTObjective, model_fn, x1: torch.Tensor, g: torch.Generator) -> float:
    """L(d) = L0 + 2 d B + d^2 A along the direction c = 1 (common random numbers); the exact model is the
    minimiser, so B / sqrt(A L0) -> 0 as 1/sqrt(N)."""
    noise = torch.randn(x1.shape, generator=g, dtype=F64)
    t = objective.sample_time(x1.shape[0], generator=g).to(F64)
    losses = {d: objective.loss(lambda x, tt, d=d: model_fn(x, tt) + d, x1, t=t, noise=noise).mean().item() for d in (-0.1, 0.0, 0.1)}
    b = (losses[0.1] - losses[-0.1]) / (4 * 0.1)
    a = (losses[0.1] + losses[-0.1] - 2 * losses[0.0]) / (2 * 0.1**2)
    return b / (a * losses[0.0]) ** 0.5


@pytest.mark.parametrize("path", ["linear", "gvp", "vp"])
@pytest.mark.parametrize("pred", ["velocity", "score", "noise"])
def test_exact_model_minimises_the_objective(path, pred):
    """The regression target of each prediction is the conditional expectation the sampler assumes."""
    gm = GaussianMixture(
        torch.tensor([0.4, 0.6], dtype=F64),
        torch.tensor([[-1.0, 1.0], [1.5, 0.5]], dtype=F64),
        torch.tensor([0.3, 0.6], dtype=F64),
        get_interpolant(path),
    )
    g = torch.Generator().manual_seed(0)
    x1 = gm.sample(20000, (2, 1, 1), generator=g)
    weight = None if pred == "velocity" else "likelihood" if path == "gvp" else None
    objective = SiTObjective(path, pred, weight)
    exact = lambda x, t: gm.predict(pred, x, t)  # noqa: E731
    assert abs(_perturbation_correlation(objective, exact, x1, g)) < 0.02  # measured < 0.006; means off by 0.1: > 0.05
    # negative control: the same model fed a flipped time has a clearly larger loss
    flipped = lambda x, t: gm.predict(pred, x, (1 - t).clamp(1e-3, 1 - 1e-3))  # noqa: E731
    noise = torch.randn(x1.shape, generator=g, dtype=F64)
    t = objective.sample_time(x1.shape[0], generator=g).to(F64)
    good = objective.loss(exact, x1, t=t, noise=noise).mean()
    bad = objective.loss(flipped, x1, t=t, noise=noise).mean()
    assert bad > 1.2 * good


def test_discrete_and_continuous_time_sampling():
    g = torch.Generator().manual_seed(1)
    disc = SiTObjective("linear", "noise", time="discrete", num_train_timesteps=5)
    t = disc.sample_time(4000, generator=g)
    grid = torch.linspace(1e-3, 1 - 1e-3, 5)
    assert torch.isclose(t[:, None], grid[None], atol=1e-6).any(1).all()
    assert len(torch.unique(t)) == 5
    cont = SiTObjective("vp", "velocity")
    t = cont.sample_time(4000, generator=g)
    assert t.min() >= 0.0 and t.max() <= 1 - 1e-5 and len(torch.unique(t)) > 3990
    assert t.mean().item() == pytest.approx(0.5, abs=0.02)


def test_loss_weights_closed_forms():
    vp = SiTObjective("vp", "noise", "velocity")
    xt = torch.zeros(3, 1, 2, 2, dtype=F64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    beta = 0.1 + (1 - t) * 19.9
    sigma = torch.sqrt(1 - torch.exp(2 * (-0.25 * (1 - t) ** 2 * 19.9 - 0.5 * (1 - t) * 0.1)))
    torch.testing.assert_close(vp.weight(xt, t).flatten(), (beta / 2 / sigma) ** 2)
    lik = SiTObjective("vp", "score", "likelihood")
    torch.testing.assert_close(lik.weight(xt, t).flatten(), beta / 2 / sigma**2)
    assert SiTObjective("linear", "noise").weight(xt, t) == 1.0


def test_target_gives_zero_loss_and_generator_determinism():
    x1 = torch.randn(6, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    for pred in ("velocity", "score", "noise"):
        obj = SiTObjective("gvp", pred)
        terms = obj.terms(lambda x, t: torch.zeros_like(x), x1, generator=torch.Generator().manual_seed(3))
        target = terms.target
        oracle = obj.loss(lambda x, t, target=target: target, x1, t=terms.t, noise=terms.noise)
        torch.testing.assert_close(oracle, torch.zeros(6), atol=1e-10, rtol=0)
        again = obj.terms(lambda x, t: torch.zeros_like(x), x1, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(again.loss, terms.loss, rtol=0, atol=0)


def test_validation():
    with pytest.raises(ValueError, match="velocity loss is unweighted"):
        SiTObjective("linear", "velocity", "likelihood")
    with pytest.raises(ValueError, match="valid: none, velocity, likelihood"):
        SiTObjective("linear", "noise", "snr")
    with pytest.raises(ValueError, match="valid: velocity, score, noise"):
        SiTObjective("linear", "x0")
    with pytest.raises(ValueError, match="valid: continuous, discrete"):
        SiTObjective(time="uniform")
    # official defaults, honoured overrides
    assert (SiTObjective("vp", "velocity").train_eps, SiTObjective("vp", "velocity").sample_eps) == (1e-5, 1e-3)
    assert SiTObjective("linear", "velocity", train_eps=0.01).interval == (0.0, 1.0)
    assert SiTObjective("linear", "score", train_eps=0.01).interval == pytest.approx((0.01, 0.99))
