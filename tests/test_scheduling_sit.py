"""SiTSampler: parity with the official samplers, analytic Gaussian checks, diffusers API, determinism."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import OFFICIAL_FIXTURES, as_model_fn, load_official, official_model, rel_err

from sit_diffusers.interpolants import GaussianMixture, get_interpolant
from sit_diffusers.scheduling_sit import SAMPLER_PRESETS, SiTSampler

F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official():
    """The official fixture network as a model function (records the time of every call)."""
    model = official_model()
    data = load_official("samplers")
    y = data["y"].long()
    calls: list[float] = []
    runs = json.loads((OFFICIAL_FIXTURES / "manifest.json").read_text())["files"]["samplers.safetensors"]["runs"]
    return {"fn": as_model_fn(model, y, calls), "calls": calls, "data": data, "runs": runs,
            "labelled_fn": lambda labels: as_model_fn(model, labels), "y": y}


def replay(tensors: torch.Tensor):
    """A brownian_noise replacement that returns the recorded draws in order."""
    it = iter(tensors)
    return lambda shape, generator, device, dtype: next(it).to(device=device, dtype=dtype)


def gaussian_oracle(path: str, prediction: str, mean: float = 1.5, std: float = 0.5, dim: int = 2):
    interp = get_interpolant(path)
    gm = GaussianMixture.gaussian(torch.full((dim,), mean, dtype=F64), std, interp)
    return gm, (lambda x, t: gm.predict(prediction, x, t))


def exact_flow(gm: GaussianMixture, z: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    """The probability-flow map of Gaussian data is affine: x_t1 = mu_1 + sqrt(V_1 / V_0) (z - mu_0)."""
    interp = gm.interpolant
    m, s = gm.means[0].reshape(1, -1, 1, 1), gm.stds[0]
    ts = torch.tensor([t0, t1], dtype=F64)
    a, _ = interp.alpha(ts)
    sig, _ = interp.sigma(ts)
    var = a**2 * s**2 + sig**2
    return a[1] * m + torch.sqrt(var[1] / var[0]) * (z - a[0] * m)


# ----------------------------------------------------------------------------------------------------------
# parity with the official code (fixture network, recorded noise)
# ----------------------------------------------------------------------------------------------------------

FIXED_RUNS = [
    ("euler", "Linear", "velocity"), ("heun2", "Linear", "velocity"),
    ("euler", "GVP", "velocity"), ("heun2", "GVP", "velocity"),
    ("euler", "VP", "noise"), ("heun2", "VP", "noise"),
]


@pytest.mark.parametrize(("solver", "path", "pred"), FIXED_RUNS)
def test_ode_fixed_step_parity(official, solver, path, pred):
    key = f"ode.{solver}.{path}.{pred}"
    data, run = official["data"], official["runs"][key]
    sampler = SiTSampler(path_type=path, prediction=pred, mode="ode", solver=solver)
    official["calls"].clear()
    out = sampler.sample(official["fn"], data["z"], len(run["t_grid"]) - 1, return_trajectory=True)
    assert rel_err(out.sample, data[f"{key}.final"]) <= 1e-5
    assert rel_err(out.trajectory, data[f"{key}.traj"]) <= 1e-5
    torch.testing.assert_close(torch.tensor(official["calls"]), data[f"{key}.eval_t"], rtol=1e-6, atol=1e-6)
    assert out.nfe == run["nfe"] == sampler.num_model_evaluations(len(run["t_grid"]) - 1)


@pytest.mark.parametrize(("path", "pred"), [("Linear", "velocity"), ("GVP", "velocity"), ("VP", "noise")])
def test_sde_euler_parity_with_one_model_call_per_step(official, path, pred):
    key = f"sde.euler.{path}.{pred}"
    data, run = official["data"], official["runs"][key]
    sampler = SiTSampler(path_type=path, prediction=pred, mode="sde", solver="euler",
                         diffusion_form="sigma", last_step="Mean", last_step_size=0.04)
    sampler.brownian_noise = replay(data[f"{key}.noise"])
    official["calls"].clear()
    n = len(run["t_grid"])  # official --num-sampling-steps N == ours N with a last step
    out = sampler.sample(official["fn"], data["z"], n, return_trajectory=True)
    assert rel_err(out.sample, data[f"{key}.final"]) <= 1e-5
    assert rel_err(out.trajectory[1:], data[f"{key}.traj"]) <= 1e-5  # official list excludes z
    # the official code calls the network twice per step at the same time; we call it once
    official_t = data[f"{key}.eval_t"]
    assert run["nfe"] == 2 * n and out.nfe == n == sampler.num_model_evaluations(n)
    torch.testing.assert_close(torch.tensor(official["calls"]), official_t[::2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(official_t[1::2], official_t[::2])


@pytest.mark.parametrize(("path", "pred"), [("Linear", "velocity"), ("VP", "score")])
def test_ode_dopri5_parity_within_tolerance(official, path, pred):
    key = f"ode.dopri5.{path}.{pred}"
    data = official["data"]
    sampler = SiTSampler(path_type=path, prediction=pred, mode="ode", solver="dopri5", atol=1e-6, rtol=1e-6)
    out = sampler.sample(official["fn"], data["z"], 9, return_trajectory=True)
    assert rel_err(out.sample, data[f"{key}.final"]) <= 1e-5  # solved with rtol 1e-6
    assert rel_err(out.trajectory, data[f"{key}.traj"]) <= 1e-5
    assert abs(out.nfe - data[f"{key}.eval_t"].numel()) <= 12


def test_vp_noise_dopri5_runs_where_the_official_code_fails(official):
    """Official: 'underflow in dt' after evaluating the VP path at t > 1 (undefined there). We land on t1."""
    runs, data = official["runs"], official["data"]
    assert runs["ode.dopri5.VP.noise"]["status"] == "raised"
    sampler = SiTSampler(path_type="vp", prediction="noise", mode="ode", solver="dopri5", rtol=1e-5)
    official["calls"].clear()
    out = sampler.sample(official["fn"], data["z"], 9)
    assert torch.isfinite(out.sample).all()
    assert max(official["calls"]) <= sampler.interval[1] + 1e-7
    ref = SiTSampler(path_type="vp", prediction="noise", mode="ode", solver="rk4").sample(official["fn"], data["z"], 50)
    assert rel_err(out.sample, ref.sample) < 2e-4  # measured 5e-5 (rk4 error; dopri5 rtol 1e-7 agrees to 9e-6)


def test_step_api_equals_sample(official):
    z = official["data"]["z"]
    fn = official["fn"]
    for kw in ({"mode": "ode", "solver": "euler"}, {"mode": "ode", "solver": "heun"},
               {"mode": "sde", "solver": "euler", "path_type": "gvp"}):
        sampler = SiTSampler(**kw)
        ref = sampler.sample(fn, z, 6, generator=torch.Generator().manual_seed(5)).sample
        sampler.set_timesteps(6)
        assert len(sampler.timesteps) == 6 * sampler.order
        g = torch.Generator().manual_seed(5)
        x = z * sampler.init_noise_sigma
        for t in sampler.timesteps:
            out = fn(sampler.scale_model_input(x, t), t.expand(x.shape[0]))
            x = sampler.step(out, t, x, generator=g).prev_sample
        torch.testing.assert_close(x, ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# analytic: Gaussian data with its exact model
# ----------------------------------------------------------------------------------------------------------

COMBOS = [("linear", "velocity"), ("gvp", "velocity"), ("vp", "velocity"), ("linear", "noise"), ("gvp", "score"), ("vp", "noise")]


@pytest.mark.parametrize(("path", "pred"), COMBOS)
@pytest.mark.parametrize(("solver", "steps"), [("euler", 500), ("heun", 40), ("rk4", 10), ("dopri5", 10)])
def test_ode_reaches_gaussian_data(path, pred, solver, steps):
    gm, fn = gaussian_oracle(path, pred)
    sampler = SiTSampler(path_type=path, prediction=pred, mode="ode", solver=solver, atol=1e-8, rtol=1e-8)
    z = torch.randn(1000, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    x = sampler.sample(fn, z, steps).sample.double()
    ref = exact_flow(gm, z.double(), *sampler.interval)
    assert x.mean().item() == pytest.approx(ref.mean().item(), rel=0.01)
    assert x.var().item() == pytest.approx(ref.var().item(), rel=0.01)
    # and the exact flow carries N(0, I) to the data N(1.5, 0.5^2) (up to the eps at the ends)
    assert ref.mean().item() == pytest.approx(1.5, abs=0.05)
    assert ref.std().item() == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk4", 4)])
def test_ode_convergence_order_on_gaussian_flow(solver, order):
    gm, fn = gaussian_oracle("gvp", "velocity")
    z = torch.randn(64, 2, 1, 1, generator=torch.Generator().manual_seed(1), dtype=F64)
    sampler = SiTSampler(path_type="gvp", mode="ode", solver=solver)
    ref = exact_flow(gm, z, *sampler.interval)
    errs = [(sampler.sample(fn, z, n).sample - ref).abs().max().item() for n in (8, 16, 32)]
    for a, b in zip(errs, errs[1:], strict=False):
        assert abs(math.log2(a / b) - order) < 0.35, errs


@pytest.mark.parametrize(
    ("path", "pred", "form", "last_step"),
    [("linear", "velocity", "constant", None), ("linear", "velocity", "sigma", "mean"),
     ("gvp", "velocity", "linear", "mean"), ("linear", "velocity", "decreasing", "mean"),
     ("gvp", "velocity", "increasing-decreasing", "mean"), ("vp", "noise", "SBDM", None),
     ("linear", "score", "sigma", "mean")],
)
def test_sde_reaches_gaussian_data(path, pred, form, last_step):
    """Every diffusion form reaches N(1.5, 0.5^2). A deterministic 0.04 "mean" last step suits forms that
    vanish at t = 1; with D_1 > 0 (constant, VP's SBDM) it shrinks the spread by ~h D / V (8-16%, as in the
    official sampler), so those run to t = 1 - sample_eps instead."""
    gm, fn = gaussian_oracle(path, pred, dim=2)
    sampler = SiTSampler(path_type=path, prediction=pred, mode="sde", solver="euler", diffusion_form=form,
                         last_step=last_step)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5000, 2, 1, 1, generator=g)
    x = sampler.sample(fn, z, 250, generator=g).sample.double()
    assert torch.isfinite(x).all()
    assert x.mean().item() == pytest.approx(1.5, rel=0.01)
    assert x.std().item() == pytest.approx(0.5, rel=0.03)


def test_singular_combinations_are_handled_not_nan():
    """Official: t0 = sample_eps = 0 with SBDM (infinite at t = 0) gives NaN. We start at 1e-3 or raise."""
    sampler = SiTSampler(path_type="linear", prediction="velocity", mode="sde", diffusion_form="SBDM")
    assert sampler.interval[0] == pytest.approx(1e-3)
    gm, fn = gaussian_oracle("linear", "velocity")
    x = sampler.sample(fn, torch.randn(1000, 2, 1, 1, generator=torch.Generator().manual_seed(3)), 500,
                       generator=torch.Generator().manual_seed(4)).sample
    assert torch.isfinite(x).all()
    assert x.mean().item() == pytest.approx(1.5, rel=0.02)
    with pytest.raises(ValueError, match="sample_eps"):
        SiTSampler(path_type="linear", prediction="velocity", mode="sde", diffusion_form="SBDM", sample_eps=0.0)
    with pytest.raises(ValueError, match="sample_eps"):
        SiTSampler(path_type="linear", prediction="noise", mode="ode", sample_eps=0.0)
    # SDE Heun without a last step evaluates the score at t1: 1 - 1e-3 instead of the singular t = 1
    heun = SiTSampler(mode="sde", solver="heun", last_step=None)
    assert heun.interval == pytest.approx((0.0, 1 - 1e-3))
    x = heun.sample(fn, torch.randn(1000, 2, 1, 1, generator=torch.Generator().manual_seed(5)), 100,
                    generator=torch.Generator().manual_seed(6)).sample
    assert torch.isfinite(x).all() and x.mean().item() == pytest.approx(1.5, rel=0.02)
    with pytest.raises(ValueError, match="sample_eps"):
        SiTSampler(mode="sde", solver="heun", last_step=None, sample_eps=0.0)


def test_reverse_ode_inverts_sampling():
    gm, fn = gaussian_oracle("linear", "velocity")
    z = torch.randn(16, 2, 1, 1, generator=torch.Generator().manual_seed(6), dtype=F64)
    fwd = SiTSampler(mode="ode", solver="dopri5", atol=1e-10, rtol=1e-10)
    bwd = SiTSampler(mode="ode", solver="dopri5", atol=1e-10, rtol=1e-10, reverse=True)
    x = fwd.sample(fn, z, 4).sample
    torch.testing.assert_close(bwd.sample(fn, x, 4).sample, z, rtol=1e-7, atol=1e-7)


def test_flipped_time_convention_is_detected():
    """A model fed 1 - t (noise at t = 1) does not produce the data distribution."""
    gm, fn = gaussian_oracle("linear", "velocity")
    z = torch.randn(2000, 2, 1, 1, generator=torch.Generator().manual_seed(7), dtype=F64)
    sampler = SiTSampler(mode="ode", solver="heun")
    good = sampler.sample(fn, z, 20).sample
    flipped = sampler.sample(lambda x, t: fn(x, 1 - t), z, 20).sample
    assert good.mean().item() == pytest.approx(1.5, abs=0.02)
    assert abs(flipped.mean().item() - 1.5) > 0.3 or abs(flipped.std().item() - 0.5) > 0.1


# ----------------------------------------------------------------------------------------------------------
# API, determinism, presets
# ----------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, official):
    sampler = SiTSampler.from_preset("sde-euler", path_type="GVP", diffusion_norm=0.5)
    sampler.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").is_file()
    loaded = SiTSampler.from_pretrained(tmp_path)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(sampler.config)
    z = official["data"]["z"]
    a = sampler.sample(official["fn"], z, 5, generator=torch.Generator().manual_seed(0)).sample
    b = loaded.sample(official["fn"], z, 5, generator=torch.Generator().manual_seed(0)).sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_same_seed_same_sample_and_batch_invariance(official):
    z, y = official["data"]["z"][:3], official["y"][:3]
    fn = official["labelled_fn"](y)
    sampler = SiTSampler.from_preset("sde-euler")
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(3)]  # noqa: E731
    batch = sampler.sample(fn, z, 8, generator=gens()).sample
    again = sampler.sample(fn, z, 8, generator=gens()).sample
    torch.testing.assert_close(batch, again, rtol=0, atol=0)
    other = sampler.sample(fn, z, 8, generator=torch.Generator().manual_seed(1)).sample
    assert rel_err(other, batch) > 1e-3
    for i in range(3):
        fn_i = official["labelled_fn"](y[i : i + 1])
        single = sampler.sample(fn_i, z[i : i + 1], 8, generator=[torch.Generator().manual_seed(100 + i)]).sample
        torch.testing.assert_close(single[0], batch[i], rtol=1e-5, atol=1e-5)


def test_bf16_model_keeps_float32_state():
    gm, fn = gaussian_oracle("linear", "velocity")
    sampler = SiTSampler(mode="ode", solver="euler")
    z = torch.randn(500, 2, 1, 1, generator=torch.Generator().manual_seed(8))
    seen = []

    def bf16_fn(x, t):
        seen.append(x.dtype)
        return fn(x, t).to(torch.bfloat16)

    x = sampler.sample(bf16_fn, z.to(torch.bfloat16), 50).sample
    assert x.dtype == torch.float32 and set(seen) == {torch.float32}
    assert x.mean().item() == pytest.approx(1.5, rel=0.01)


def test_presets_and_evaluation_counts():
    assert {"ode-dopri5", "ode-euler", "ode-heun", "sde-euler", "sde-heun", "paper-fid"} <= set(SAMPLER_PRESETS)
    dop = SAMPLER_PRESETS["ode-dopri5"]
    assert dop["config"]["atol"] == 1e-6 and dop["config"]["rtol"] == 1e-3 and dop["num_inference_steps"] == 50
    fid = SiTSampler.from_preset("paper-fid")
    assert (fid.config.mode, fid.config.solver, fid.config.diffusion_form, fid.config.last_step) == ("sde", "euler", "sigma", "mean")
    assert SAMPLER_PRESETS["paper-fid"]["num_inference_steps"] == 250
    assert fid.num_model_evaluations(250) == 250
    assert SiTSampler.from_preset("ode-dopri5").num_model_evaluations(50) is None
    assert SiTSampler.from_preset("ode-heun").num_model_evaluations(10) == 20
    assert SiTSampler.from_preset("sde-heun").num_model_evaluations(10) == 19
    assert SiTSampler.from_preset("sde-euler", last_step=None).num_model_evaluations(10) == 10
    gm, fn = gaussian_oracle("linear", "velocity")
    z = torch.randn(4, 2, 1, 1)
    for name in ("ode-euler", "ode-heun", "sde-euler", "sde-heun"):
        s = SiTSampler.from_preset(name)
        assert s.sample(fn, z, 7).nfe == s.num_model_evaluations(7)
    with pytest.raises(ValueError, match="valid: ode-dopri5"):
        SiTSampler.from_preset("fast")


def test_names_and_combinations_are_validated():
    with pytest.raises(ValueError, match=r"valid: euler, heun, midpoint, rk4, ab2, ab3, abm4, dpm\+\+2m, unipc, dopri5"):
        SiTSampler(mode="ode", solver="dpm")
    with pytest.raises(ValueError, match="valid: euler, heun"):
        SiTSampler(mode="sde", solver="dopri5")
    with pytest.raises(ValueError, match="valid: ode, sde"):
        SiTSampler(mode="flow")
    with pytest.raises(ValueError, match="valid: mean, tweedie, euler"):
        SiTSampler(last_step="median")
    with pytest.raises(ValueError, match="reverse"):
        SiTSampler(mode="sde", reverse=True)
    with pytest.raises(NotImplementedError, match="use sample"):
        SiTSampler(mode="ode", solver="dopri5").set_timesteps(10)
    # official spellings resolve
    s = SiTSampler(path_type="VP", mode="SDE", solver="Euler", last_step="Tweedie", diffusion_form="inccreasing-decreasing")
    assert s.interval == pytest.approx((0.0, 0.96))


@pytest.mark.parametrize("last_step", ["mean", "tweedie", "euler", None])
def test_last_steps_reach_data(last_step):
    gm, fn = gaussian_oracle("gvp", "velocity")
    sampler = SiTSampler(path_type="gvp", mode="sde", last_step=last_step, last_step_size=0.04)
    g = torch.Generator().manual_seed(9)
    x = sampler.sample(fn, torch.randn(5000, 2, 1, 1, generator=g), 100, generator=g).sample
    assert x.mean().item() == pytest.approx(1.5, rel=0.02)
    assert x.std().item() == pytest.approx(0.5, rel=0.05)


def test_add_noise_is_the_interpolant():
    sampler = SiTSampler(path_type="gvp")
    x1, x0 = torch.randn(2, 3, 4, 2, 2).unbind(0)
    t = torch.tensor([0.0, 0.5, 1.0])
    xt = sampler.add_noise(x1, x0, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[2], x1[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(xt[1], math.sqrt(0.5) * (x1[1] + x0[1]))


def test_every_configuration_gives_finite_samples():
    """No NaN anywhere in the design space (the official code gives NaN for SBDM from t = 0)."""
    from sit_diffusers.interpolants import DIFFUSION_FORMS

    z = torch.randn(8, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    for path in ("linear", "gvp", "vp"):
        for pred in ("velocity", "score", "noise"):
            gm, fn = gaussian_oracle(path, pred)
            for solver in ("euler", "heun", "rk4", "dopri5"):
                for reverse in (False, True):
                    s = SiTSampler(path_type=path, prediction=pred, mode="ode", solver=solver, reverse=reverse)
                    assert torch.isfinite(s.sample(fn, z, 4).sample).all(), (path, pred, solver, reverse)
            for solver in ("euler", "heun"):
                for form in DIFFUSION_FORMS:
                    for last in ("mean", "tweedie", "euler", None):
                        s = SiTSampler(path_type=path, prediction=pred, mode="sde", solver=solver,
                                       diffusion_form=form, last_step=last)
                        x = s.sample(fn, z, 4, generator=torch.Generator().manual_seed(1)).sample
                        assert torch.isfinite(x).all(), (path, pred, solver, form, last)


# ----------------------------------------------------------------------------------------------------------
# the diffusers step contract: every fixed-step solver, begin index, index_for_timestep
# ----------------------------------------------------------------------------------------------------------

STEP_SOLVERS = [
    {"mode": "ode", "solver": "euler"}, {"mode": "ode", "solver": "heun"}, {"mode": "ode", "solver": "midpoint"},
    {"mode": "ode", "solver": "rk4"}, {"mode": "sde", "solver": "euler"}, {"mode": "sde", "solver": "heun"},
    {"mode": "sde", "solver": "euler", "last_step": None}, {"mode": "sde", "solver": "heun", "last_step": "tweedie"},
    {"mode": "ode", "solver": "heun", "path_type": "vp", "prediction": "noise"},
]


def _step_loop(sampler: SiTSampler, fn, x, seed: int, timesteps=None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    for t in sampler.timesteps if timesteps is None else timesteps:
        x_in = sampler.scale_model_input(x, t, generator=g)
        x = sampler.step(fn(x_in, t.expand(x.shape[0])), t, x, generator=g).prev_sample
    return x


@pytest.mark.parametrize("kw", STEP_SOLVERS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_every_fixed_step_solver_steps_exactly_like_sample(official, kw):
    z, fn = official["data"]["z"], official["fn"]
    sampler = SiTSampler(**kw)
    ref = sampler.sample(fn, z, 5, generator=torch.Generator().manual_seed(3))
    sampler.set_timesteps(5)
    assert len(sampler.timesteps) == ref.nfe  # one entry per model call
    assert torch.equal(_step_loop(sampler, fn, z, 3), ref.sample)  # the same arithmetic, bit for bit


@pytest.mark.parametrize("kw", STEP_SOLVERS[:6], ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_add_noise_then_step_from_begin_index_equals_the_full_loop_from_there(official, kw):
    """img2img / SDEdit: starting the loop at timesteps[b] from a given state is the full loop whose state at
    index b is that state; with set_begin_index and with the index found from the first timestep."""
    z, fn = official["data"]["z"], official["fn"]
    sampler = SiTSampler(**kw)
    sampler.set_timesteps(6)
    b = 2 * sampler.order  # the start of solver step 2
    x_b = sampler.add_noise(torch.randn_like(z), z, sampler.timesteps[b])  # data ~ N(0, I) noised to t_b
    # the full loop, its state replaced by x_b just before entry b
    g = torch.Generator().manual_seed(1)
    x = z
    for i, t in enumerate(sampler.timesteps):
        if i == b:
            x, g = x_b, torch.Generator().manual_seed(1)
        x_in = sampler.scale_model_input(x, t, generator=g)
        x = sampler.step(fn(x_in, t.expand(x.shape[0])), t, x, generator=g).prev_sample
    sampler.set_timesteps(6)
    sampler.set_begin_index(b)
    assert sampler.begin_index == b
    assert torch.equal(_step_loop(sampler, fn, x_b, 1, sampler.timesteps[b:]), x)
    sampler.set_timesteps(6)  # no begin index: found from the first timestep given
    assert torch.equal(_step_loop(sampler, fn, x_b, 1, sampler.timesteps[b:]), x)
    assert sampler.step_index == len(sampler.timesteps)


def test_step_contract_errors_are_clear():
    sampler = SiTSampler(mode="ode", solver="heun")
    sampler.set_timesteps(4)
    assert sampler.index_for_timestep(sampler.timesteps[2]) == 2  # t_1 ends step 0 and starts step 1: the start
    with pytest.raises(ValueError, match="timestep 0.123 is not in this sampler's timesteps"):
        sampler.index_for_timestep(0.123)
    with pytest.raises(ValueError, match="begin_index 3 falls inside a heun step"):
        sampler.set_begin_index(3)
    with pytest.raises(ValueError, match="begin_index 99 is past the 8 timesteps"):
        sampler.set_begin_index(99)
    with pytest.raises(NotImplementedError, match="dopri5 is adaptive: it chooses its step times"):
        SiTSampler(mode="ode", solver="dopri5").set_timesteps(4)
    heun = SiTSampler(mode="sde", solver="heun")
    heun.set_timesteps(4)
    x = torch.zeros(1, 2, 2, 2)
    with pytest.raises(RuntimeError, match="scale_model_input"):  # its noise comes before the model call
        heun.step(x, heun.timesteps[0], x)


def test_compatibles_are_the_flow_matching_schedulers():
    names = {cls.__name__ for cls in SiTSampler().compatibles}
    assert {"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"} <= names
