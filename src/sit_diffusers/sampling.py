"""The SiT sampling math without diffusers: :class:`SamplerCore`, built from the plain config mapping that
``SiTSampler`` saves (``scheduler_config.json``), integrates the probability-flow ODE or the reverse SDE.

``SiTSampler`` (``scheduling_sit.py``) is the diffusers scheduler around this core: it validates and
saves the config through ``ConfigMixin`` and runs every formula here, so :meth:`SamplerCore.sample` and
``SiTSampler.sample`` are one computation, bit for bit. The light ``sit-generate`` path uses the core
directly, importing torch and the standard library only (this module, ``interpolants``, ``solvers``,
``time_grids``, ``validation``; never diffusers).

Time runs as in the official code: t = 0 noise, t = 1 data, forward in t; the network gets raw SiT time.
``num_inference_steps`` counts solver steps (see ``scheduling_sit`` for the mapping to the official
``--num-sampling-steps``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .interpolants import (
    Interpolant,
    default_eps,
    expand_t_like_x,
    get_interpolant,
    resolve_diffusion_form,
    resolve_path_type,
    resolve_prediction,
    sampling_interval,
)
from .solvers import (
    ODE_ADAPTIVE_SOLVERS,
    ODE_FIXED_SOLVERS,
    ODE_MULTISTEP_SOLVERS,
    SDE_MULTISTEP_SOLVERS,
    SDE_SOLVERS,
    History,
    drive,
    integrate_adaptive,
    integrate_fixed,
    integrate_multistep,
)
from .time_grids import TIME_GRIDS, check_fitted_grid, make_grid
from .validation import InputError, check_choice, check_float, check_int

ModelFn = Callable[[Tensor, Tensor], Tensor]
Generator = torch.Generator | list[torch.Generator] | None
NoiseFn = Callable[[tuple[int, ...], Generator, torch.device, torch.dtype], Tensor]
Callback = Callable[[int, Tensor, Tensor], Tensor | None]

MODES: tuple[str, ...] = ("ode", "sde")
LAST_STEPS: tuple[str, ...] = ("mean", "tweedie", "euler")
SOLVER_ALIASES = {"heun2": "heun", "dpmpp2m": "dpm++2m", "dpm++": "dpm++2m"}
# sample_eps used where the official default (0) is singular and sample_eps is left to default
SBDM_DEFAULT_EPS = 1e-3

#: The config keys of ``SiTSampler`` (``scheduler_config.json``) and their defaults.
DEFAULT_CONFIG: dict[str, Any] = {
    "path_type": "linear",
    "prediction": "velocity",
    "mode": "sde",
    "solver": "euler",
    "diffusion_form": "sigma",
    "diffusion_norm": 1.0,
    "last_step": "mean",
    "last_step_size": 0.04,
    "sample_eps": None,
    "train_eps": None,
    "atol": 1e-6,
    "rtol": 1e-3,
    "reverse": False,
    "vp_sigma_min": 0.1,
    "vp_sigma_max": 20.0,
    "time_grid": "uniform",
    "time_shift": 1.0,
    "time_rho": 7.0,
    "fitted_grid": None,
}

SAMPLER_PRESETS: dict[str, dict[str, Any]] = {
    # official sample.py ODE defaults (train_utils.parse_ode_args): dopri5, atol 1e-6, rtol 1e-3;
    # sample_ode's num_steps=50 output points (the adaptive solver picks its own steps)
    "ode-dopri5": {"config": {"mode": "ode", "solver": "dopri5", "atol": 1e-6, "rtol": 1e-3}, "num_inference_steps": 50},
    "ode-euler": {"config": {"mode": "ode", "solver": "euler"}, "num_inference_steps": 250},
    "ode-heun": {"config": {"mode": "ode", "solver": "heun"}, "num_inference_steps": 125},
    # official sample.py SDE defaults (train_utils.parse_sde_args): Euler-Maruyama, w_t = sigma_t,
    # norm 1, "Mean" last step of size 0.04, --num-sampling-steps 250
    "sde-euler": {
        "config": {
            "mode": "sde", "solver": "euler", "diffusion_form": "sigma", "diffusion_norm": 1.0,
            "last_step": "mean", "last_step_size": 0.04,
        },
        "num_inference_steps": 250,
    },
    "sde-heun": {
        "config": {
            "mode": "sde", "solver": "heun", "diffusion_form": "sigma", "diffusion_norm": 1.0,
            "last_step": "mean", "last_step_size": 0.04,
        },
        "num_inference_steps": 250,
    },
    # SiT-XL/2's FID-50K 2.06 on ImageNet 256 (Ma et al. 2024, arXiv 2401.08740, abstract: "By exploring
    # various diffusion coefficients, which can be tuned separately from learning, SiT achieves an FID-50K
    # score of 2.06"): the reverse SDE with w_t = sigma_t, 250 Euler-Maruyama steps and the 0.04 "Mean"
    # last step (the official sample.py / sample_ddp.py SDE defaults), guidance 1.5 (a pipeline argument).
    "paper-fid": {
        "config": {
            "path_type": "linear", "prediction": "velocity", "mode": "sde", "solver": "euler",
            "diffusion_form": "sigma", "diffusion_norm": 1.0, "last_step": "mean", "last_step_size": 0.04,
        },
        "num_inference_steps": 250,
    },
    # few-step samplers (issue 15); one model call per step, step counts = NFE unless noted
    # Adams-Bashforth 2 (Euler start) and 3 (Heun start: 8 steps are 9 calls)
    "ode-ab2": {"config": {"mode": "ode", "solver": "ab2"}, "num_inference_steps": 8},
    "ode-ab3": {"config": {"mode": "ode", "solver": "ab3"}, "num_inference_steps": 7},
    # ABM4: the AB3 predictor + a 4-point Adams-Moulton corrector (PEC, no extra call); the shipped digits model's
    # saved sampler, there on its fitted grid
    "ode-abm4": {"config": {"mode": "ode", "solver": "abm4"}, "num_inference_steps": 7},
    # DPM-Solver++(2M) (Lu et al. 2022) and UniPC (Zhao et al. 2023) in the path's alpha, sigma; uniform grid
    "ode-dpm++2m": {"config": {"mode": "ode", "solver": "dpm++2m"}, "num_inference_steps": 8},
    "ode-unipc": {"config": {"mode": "ode", "solver": "unipc"}, "num_inference_steps": 8},
    # the best few-step sampler we have, 8 calls: AB3 (Heun start) on the uniform grid here; with a grid fitted
    # to the model (time_grid="fitted", benchmarks/fit_time_grid.py; the shipped digits model's
    # scheduler_config.json carries one) its RMSE to the converged ODE at 8 NFE is 1/2.8 of ODE Euler's on
    # held-out noise (1/4.7 on the batch it was fitted to; model_cards/sit-digits.md)
    "ode-fast": {"config": {"mode": "ode", "solver": "ab3"}, "num_inference_steps": 7},
}


def randn(shape: tuple[int, ...], generator: Generator, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """Standard normal draw, bit-identical to ``diffusers.utils.torch_utils.randn_tensor``: a CPU generator
    with another target device draws on the CPU and moves the result; a list of generators draws row ``i``
    of the batch from ``generator[i]`` (so a sample does not depend on the batch it is in); a list of one
    is that generator."""
    device = torch.device(device)
    rand_device = device
    if generator is not None:
        gen_type = generator[0].device.type if isinstance(generator, list) else generator.device.type
        if gen_type != device.type and gen_type == "cpu":
            rand_device = torch.device("cpu")
        elif gen_type != device.type:
            raise InputError(f"cannot draw a {device} tensor from a generator on {gen_type}: use a CPU generator "
                             f"or one on {device}")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        if len(generator) < shape[0]:
            raise InputError(f"generator is a list of {len(generator)} generators for a batch of {shape[0]}: "
                             "pass one per sample")
        row = (1, *shape[1:])
        draws = [torch.randn(row, generator=generator[i], device=rand_device, dtype=dtype) for i in range(shape[0])]
        return torch.cat(draws, dim=0).to(device)
    return torch.randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


def _replaced(new: Tensor | None, x: Tensor) -> Tensor:
    """What a step callback returned in place of the state ``x`` (``None``: keep ``x``)."""
    return x if new is None else new


@dataclass
class SampleResult:
    """Result of :meth:`SamplerCore.sample`: the final state ``(N, C, H, W)``, the stacked states
    ``(K + 1, N, C, H, W)`` when asked for (else ``None``) and the number of model calls."""

    sample: Tensor
    trajectory: Tensor | None = None
    nfe: int = 0


class SamplerCore:
    """Probability-flow ODE ``dx = v dt`` and reverse SDE ``dx = [v + D_t s] dt + sqrt(2 D_t) dW`` of SiT
    (Ma et al. 2024, Sec. 2.4) from one network output per call, integrated from noise at ``t0`` to data.

    Args:
        config: the ``SiTSampler`` config (the keys of :data:`DEFAULT_CONFIG`, as in
            ``scheduler_config.json``; missing keys take the defaults, keys starting with ``_`` such as
            ``_class_name`` are ignored, any other unknown key is an ``InputError``). Every value is
            validated here; see ``SiTSampler`` for what each means.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        unknown = sorted(k for k in config if not str(k).startswith("_") and k not in DEFAULT_CONFIG)
        if unknown:
            raise InputError(f"unknown sampler config key(s) {unknown}; valid: {sorted(DEFAULT_CONFIG)}")
        cfg = {**DEFAULT_CONFIG, **{k: v for k, v in config.items() if k in DEFAULT_CONFIG}}
        self.config: dict[str, Any] = cfg
        self.path = resolve_path_type(cfg["path_type"])
        self.prediction = resolve_prediction(cfg["prediction"])
        self.mode = check_choice("mode", cfg["mode"], MODES, key=str.lower)
        if self.mode == "ode":
            valid = list(ODE_FIXED_SOLVERS) + list(ODE_MULTISTEP_SOLVERS) + list(ODE_ADAPTIVE_SOLVERS)
        else:
            valid = list(SDE_SOLVERS) + list(SDE_MULTISTEP_SOLVERS)
        self.solver = check_choice(
            f"{self.mode.upper()} solver", cfg["solver"], valid,
            key=lambda n: SOLVER_ALIASES.get(n.lower(), n.lower()),
        )
        self.form = resolve_diffusion_form(cfg["diffusion_form"])
        self.diffusion_norm = check_float("diffusion_norm", cfg["diffusion_norm"], minimum=0.0)
        last_step = cfg["last_step"]
        ls = None if last_step is None or str(last_step).lower() == "none" else last_step
        if ls is not None:
            ls = check_choice("last_step", ls, LAST_STEPS, key=str.lower)
        self.last_step = ls if self.mode == "sde" else None
        if self.last_step is not None:  # the SDE stops at 1 - h, then one last step of size h
            check_float("last_step_size", cfg["last_step_size"], minimum=0.0, maximum=1.0, min_inclusive=False,
                        max_inclusive=False)
        else:
            check_float("last_step_size", cfg["last_step_size"], minimum=0.0, maximum=1.0, max_inclusive=False)
        sample_eps, train_eps = cfg["sample_eps"], cfg["train_eps"]
        for eps_name, eps_value in (("sample_eps", sample_eps), ("train_eps", train_eps)):
            if eps_value is not None:
                check_float(eps_name, eps_value, minimum=0.0, maximum=0.5, max_inclusive=False)
        self.atol = check_float("atol", cfg["atol"], minimum=0.0, min_inclusive=False)
        self.rtol = check_float("rtol", cfg["rtol"], minimum=0.0, min_inclusive=False)
        self.reverse = cfg["reverse"]
        if not isinstance(self.reverse, bool):
            raise InputError(f"reverse must be True or False, got {self.reverse!r}")
        vp_min = check_float("vp_sigma_min", cfg["vp_sigma_min"], minimum=0.0, min_inclusive=False)
        if check_float("vp_sigma_max", cfg["vp_sigma_max"]) <= vp_min:
            raise InputError(f"vp_sigma_max must be > vp_sigma_min ({vp_min}), got {cfg['vp_sigma_max']}")
        if self.reverse and self.mode == "sde":
            raise InputError("reverse=True is for the ODE (data -> noise); the SDE runs noise -> data only")
        if self.reverse and self.is_exponential:
            raise InputError(f"reverse=True needs a solver in t (euler, heun, midpoint, rk4, ab2, ab3, abm4 or an "
                             f"adaptive one): the {self.solver} update divides by sigma_t, which is 0 at the data end")
        if self.mode == "sde" and self.solver in SDE_MULTISTEP_SOLVERS and self.form != "SBDM":
            raise InputError(f"the SDE solver {self.solver!r} integrates SiT's SBDM diffusion D_t = norm * lambda_t "
                             f"exactly (its noise and drift are solved together): use diffusion_form='SBDM', got "
                             f"{cfg['diffusion_form']!r}")
        self.time_grid = check_choice("time_grid", cfg["time_grid"], TIME_GRIDS, key=str.lower)
        self.time_shift = check_float("time_shift", cfg["time_shift"], minimum=0.0, min_inclusive=False)
        self.time_rho = check_float("time_rho", cfg["time_rho"], minimum=0.0, min_inclusive=False)
        if self.is_adaptive and self.time_grid != "uniform":
            raise InputError(f"time_grid={self.time_grid!r} sets the steps of a fixed-step solver; the adaptive "
                             f"{self.solver} chooses its own: use time_grid='uniform'")

        self.interpolant: Interpolant = (
            get_interpolant("vp", sigma_min=vp_min, sigma_max=float(cfg["vp_sigma_max"]))
            if self.path == "vp"
            else get_interpolant(self.path)
        )
        default_train, default_sample = default_eps(self.path, self.prediction)
        eps = default_sample if sample_eps is None else float(sample_eps)
        self.train_eps = default_train if train_eps is None else float(train_eps)
        # Linear/GVP: the score of a velocity model is singular at t = 1 (sigma_1 = 0) and SBDM at t = 0;
        # an SDE Heun step without a last step evaluates at the end, t1 = 1 - sample_eps
        needs_eps = self.path != "vp" and (
            self.prediction != "velocity"
            or (self.mode == "sde" and self.form == "SBDM")
            or (self.mode == "sde" and self.last_step is None and self.solver == "heun")
        )
        if needs_eps and eps <= 0:
            if sample_eps is None:  # the official default 0 gives NaN here
                eps = SBDM_DEFAULT_EPS
            else:
                raise InputError(
                    f"sample_eps={sample_eps} is singular for {self.path}/{self.prediction} {self.mode} "
                    f"{self.solver} (diffusion {self.form}, last step {self.last_step}): the score divides by "
                    "zero at t = 0 or t = 1; use sample_eps > 0 (e.g. 1e-3)"
                )
        self.sample_eps = eps
        lss = float(cfg["last_step_size"]) if self.last_step is not None else 0.0
        self.last_step_size = lss
        self.interval: tuple[float, float] = sampling_interval(
            self.path, self.prediction, eps, sde=self.mode == "sde", diffusion_form=self.form, last_step_size=lss
        )
        if not self.interval[0] < self.interval[1]:
            raise InputError(
                f"sample_eps={eps} and last_step_size={lss} leave no interval to integrate: "
                f"[t0, t1] = [{self.interval[0]}, {self.interval[1]}]"
            )
        fitted = cfg["fitted_grid"]
        if fitted is not None and self.time_grid != "fitted":
            raise InputError(f"fitted_grid is given but time_grid={self.time_grid!r}: set time_grid='fitted' to use "
                             "it, or fitted_grid=None")
        if self.time_grid == "fitted":
            if fitted is None:
                raise InputError("time_grid='fitted' needs fitted_grid (a list of SiT times from t0 to t1, e.g. from "
                                 "sit_diffusers.time_grids.fit_time_grid)")
            fitted = check_fitted_grid("fitted_grid", fitted, *self.interval)
        self.fitted_grid: list[float] | None = fitted

    # ------------------------------------------------------------------------------------------------
    # what the configuration implies
    # ------------------------------------------------------------------------------------------------
    @property
    def is_adaptive(self) -> bool:
        return self.solver in ODE_ADAPTIVE_SOLVERS

    @property
    def is_multistep(self) -> bool:
        """Reuses the drifts of earlier steps (ODE ``ab2``, ``ab3``, ``abm4``, ``dpm++2m``, ``unipc``; SDE
        ``dpm++2m``)."""
        return (self.mode == "ode" and self.solver in ODE_MULTISTEP_SOLVERS) or (
            self.mode == "sde" and self.solver in SDE_MULTISTEP_SOLVERS)

    @property
    def is_exponential(self) -> bool:
        """An exponential integrator in the path's ``alpha_t, sigma_t`` (``dpm++2m``, ``unipc``)."""
        if self.mode == "sde":
            return self.solver in SDE_MULTISTEP_SOLVERS
        return self.solver in ODE_MULTISTEP_SOLVERS and ODE_MULTISTEP_SOLVERS[self.solver].exponential

    @property
    def order(self) -> int:
        """Model calls per solver step (diffusers' ``order``): 1 for Euler, Euler-Maruyama and the multistep
        methods, 2 for Heun / midpoint / stochastic Heun, 4 for RK4; adaptive solvers 1."""
        if self.is_adaptive:
            return 1
        if self.mode == "ode":
            solvers: dict[str, Any] = {**ODE_FIXED_SOLVERS, **ODE_MULTISTEP_SOLVERS}
            return solvers[self.solver].evals
        if self.solver in SDE_MULTISTEP_SOLVERS:
            return 1
        return SDE_SOLVERS[self.solver].evals

    def check_num_inference_steps(self, num_inference_steps: Any) -> int:
        """``num_inference_steps`` as an ``int`` this sampler can run (>= 1; >= 2 for an SDE with a last
        step, whose last entry is the last step; a fitted grid runs any count: other counts than the fitted
        one sample its time warp, :func:`time_grids.warp_grid`); raises ``InputError`` naming the value otherwise."""
        n = check_int("num_inference_steps", num_inference_steps, minimum=1)
        if n < 2 and self.mode == "sde" and self.last_step is not None:
            raise InputError(
                f"num_inference_steps must be >= 2 for an SDE with a last step (the last entry is the "
                f"{self.last_step!r} step), got {n}"
            )
        return n

    def num_model_evaluations(self, num_inference_steps: int, strength: float = 1.0) -> int | None:
        """Network calls of :meth:`sample` (``None`` for adaptive solvers, which choose their steps); with a
        ``strength`` below 1, of the shorter run of :meth:`sampling_grid`."""
        n = self.check_num_inference_steps(num_inference_steps)
        if self.is_adaptive:
            return None
        if strength != 1.0:
            steps = self.sampling_grid(n, strength).shape[0] - 1
        else:
            steps = n - 1 if (self.mode == "sde" and self.last_step is not None) else n
        if self.mode == "ode":
            if self.solver in ODE_MULTISTEP_SOLVERS:
                return ODE_MULTISTEP_SOLVERS[self.solver].evaluations(steps)
            return steps * ODE_FIXED_SOLVERS[self.solver].evals
        return steps * self.order + (self.last_step is not None)

    # ------------------------------------------------------------------------------------------------
    # grid
    # ------------------------------------------------------------------------------------------------
    def time_grid_for(self, n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                      ) -> Tensor:
        """Solver grid of ``n`` steps: ``time_grid`` over ``[t0, t1]`` with ``n + 1`` points (ODE, SDE without a
        last step) or ``n`` points (SDE with a last step, which makes step ``n``); reversed for ``reverse``.
        ``uniform`` is ``linspace(t0, t1, points)`` in ``dtype`` (the official grid, bit for bit)."""
        n = self.check_num_inference_steps(n)
        t0, t1 = self.interval
        points = n if (self.mode == "sde" and self.last_step is not None) else n + 1
        if self.time_grid == "uniform":
            if self.reverse:
                t0, t1 = t1, t0
            return torch.linspace(t0, t1, points, dtype=dtype, device=device)
        grid = make_grid(self.time_grid, t0, t1, points, shift=self.time_shift, rho=self.time_rho,
                         interpolant=self.interpolant, fitted=self.fitted_grid)
        if self.reverse:
            grid = grid.flip(0)
        return grid.to(device=device, dtype=dtype)

    def sampling_grid(self, num_inference_steps: int, strength: float = 1.0,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """The times :meth:`sample` integrates over; ``grid[0]`` is where its input lives.

        ``strength`` in (0, 1] (SDEdit / img2img: the input is data noised to ``grid[0]``) keeps the end of
        the schedule. Fixed-step solvers run the last ``floor(n * strength)`` of their ``n`` solver steps,
        from step ``k = n - floor(n * strength)`` of the full grid (diffusers' img2img rule, ``timesteps[k:]``;
        ``1e-9`` is added before the floor so that ``0.29 * 100`` gives 29); adaptive solvers integrate from
        ``t1 - strength * (t1 - t0)`` (``1 - strength`` on the velocity interval [0, 1]) with ``n`` output
        steps. ``strength=1`` is the full grid, bit for bit."""
        n = self.check_num_inference_steps(num_inference_steps)
        strength = check_float("strength", strength, minimum=0.0, maximum=1.0, min_inclusive=False)
        grid = self.time_grid_for(n, device, dtype)
        if strength == 1.0:
            return grid
        if self.reverse:
            raise InputError(f"strength={strength} is for sampling from a noised image (noise -> data); the reverse "
                             "ODE (data -> noise) always runs the whole interval: use strength=1")
        if self.is_adaptive:
            t0, t1 = self.interval
            return torch.linspace(t1 - strength * (t1 - t0), t1, n + 1, dtype=dtype, device=device)
        run = math.floor(n * strength + 1e-9)
        if run < 1:
            raise InputError(f"strength={strength} with num_inference_steps={n} leaves no solver step to run "
                             "(floor(n * strength) = 0); raise strength or num_inference_steps")
        return grid[n - run:]

    # ------------------------------------------------------------------------------------------------
    # drift assembly: one network output -> ODE / SDE drift
    # ------------------------------------------------------------------------------------------------
    def _vs(self, out: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.interpolant.velocity_and_score(out.to(x.dtype), self.prediction, x, t)

    def diffusion(self, t: Tensor, x: Tensor) -> Tensor:
        """``D_t`` broadcast against ``x``."""
        return self.interpolant.diffusion(expand_t_like_x(t, x), self.form, self.config["diffusion_norm"])

    def coefficients(self, t: float) -> tuple[float, float, float, float]:
        """``(alpha_t, sigma_t, alpha'_t, sigma'_t)`` of the path at ``t``, float64 (exponential integrators)."""
        tt = torch.tensor(float(t), dtype=torch.float64)
        a, da = self.interpolant.alpha(tt)
        s, ds = self.interpolant.sigma(tt)
        # the ends are exact zeros (GVP's cos(pi/2) = 6e-17 would make log(alpha / sigma) finite and huge)
        a, s = (0.0 if abs(float(v)) < 1e-12 else float(v) for v in (a, s))
        return a, s, float(da), float(ds)

    def ode_drift(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Probability-flow velocity from a network output ``out`` at ``(x, t)``."""
        if self.prediction == "velocity":
            return out.to(x.dtype)
        return self._vs(out, x, t)[0]

    def sde_drift(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Reverse-SDE drift ``v + D_t s`` from ONE network output (the exponential SDE solver takes the
        velocity: it solves the ``D_t s`` part itself)."""
        if self.solver in SDE_MULTISTEP_SOLVERS:
            return self.ode_drift(out, x, t)
        return self._reverse_sde_drift(out, x, t)

    def _reverse_sde_drift(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        v, s = self._vs(out, x, t)
        return v + self.diffusion(t, x) * s

    def drift(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """What the solver steps on: :meth:`ode_drift` or :meth:`sde_drift` by ``mode``."""
        return self.ode_drift(out, x, t) if self.mode == "ode" else self.sde_drift(out, x, t)

    def last(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The SDE's last step of size ``h = last_step_size`` at ``t = t1``: ``mean`` ``x + (v + D s) h``,
        ``euler`` ``x + v h``, ``tweedie`` ``(x + sigma^2 s) / alpha``."""
        h = self.config["last_step_size"]
        if self.last_step == "mean":
            return x + self._reverse_sde_drift(out, x, t) * h
        if self.last_step == "euler":
            return x + self.ode_drift(out, x, t) * h
        tt = expand_t_like_x(t, x)  # tweedie: E[x1 | x_t] = (x + sigma^2 s) / alpha
        a, _ = self.interpolant.alpha(tt)
        sig, _ = self.interpolant.sigma(tt)
        return x / a + sig**2 / a * self._vs(out, x, t)[1]

    @staticmethod
    def state_dtype(x: Tensor) -> torch.dtype:
        """The state is kept in at least float32."""
        return torch.promote_types(x.dtype, torch.float32)

    @staticmethod
    def brownian_noise(shape: tuple[int, ...], generator: Generator, device: torch.device | str,
                       dtype: torch.dtype) -> Tensor:
        """Standard normal draw of one Brownian increment (:func:`randn`)."""
        return randn(shape, generator=generator, device=torch.device(device), dtype=dtype)

    # ------------------------------------------------------------------------------------------------
    # one solver step as a stage generator (shared by sample() and the diffusers step loop)
    # ------------------------------------------------------------------------------------------------
    def solver_stages(self, k: int, x: Tensor, grid: Tensor, noise: Tensor | None = None,
                      generator: Generator = None, history: History | None = None,
                      noise_fn: NoiseFn | None = None) -> Any:
        """The stage generator of solver step ``k`` (``grid[k] -> grid[k + 1]``) from ``x``. An SDE step
        draws its Brownian increment here (once per step, with ``noise_fn``, default :meth:`brownian_noise`)
        unless ``noise`` is given; a multistep method reads and extends ``history`` (one per solve)."""
        if self.mode == "ode":
            if self.solver in ODE_MULTISTEP_SOLVERS:
                if history is None:
                    raise ValueError(f"the multistep {self.solver} step needs the solve's history")
                return ODE_MULTISTEP_SOLVERS[self.solver].stages(x, grid[k], grid[k + 1], history, self.coefficients)
            return ODE_FIXED_SOLVERS[self.solver].stages(x, grid[k], grid[k + 1])
        if noise is None:
            noise = (noise_fn or self.brownian_noise)(tuple(x.shape), generator, x.device, x.dtype)
        if self.solver in SDE_MULTISTEP_SOLVERS:
            if history is None:
                raise ValueError(f"the multistep {self.solver} step needs the solve's history")
            return SDE_MULTISTEP_SOLVERS[self.solver](
                lambda tv: self.diffusion(tv, x), x, grid[k], grid[k + 1] - grid[k], noise, history,
                self.coefficients, self.diffusion_norm,
            )
        return SDE_SOLVERS[self.solver].stages(
            lambda tv: self.diffusion(tv, x), x, grid[k], grid[k + 1] - grid[k], noise
        )

    # ------------------------------------------------------------------------------------------------
    # whole trajectory
    # ------------------------------------------------------------------------------------------------
    def sample(
        self,
        model_fn: ModelFn,
        noise: Tensor,
        num_inference_steps: int,
        generator: Generator = None,
        return_trajectory: bool = False,
        callback: Callback | None = None,
        strength: float = 1.0,
        noise_fn: NoiseFn | None = None,
        grid: Tensor | None = None,
    ) -> SampleResult:
        """Integrate from ``noise`` (``(N, C, H, W)`` at ``t0``; data at ``t = 1`` when ``reverse``).

        ``model_fn(x, t)`` takes ``x`` ``(N, C, H, W)`` and ``t`` ``(N,)`` in SiT time and returns the
        network's prediction. ``callback(i, t, x)`` is called after step ``i`` with the state ``x`` reached
        at time ``t``; with a fixed-step solver it may return a tensor that replaces ``x`` (the integration
        continues from it). Adaptive solvers call it at each output grid point after the whole solve, so
        they refuse a replacement. Brownian increments come from ``noise_fn(shape, generator, device,
        dtype)`` (default :meth:`brownian_noise`), once per SDE step in order. ``strength < 1`` (SDEdit)
        integrates over the end of the schedule only (:meth:`sampling_grid`). ``grid`` replaces the time
        grid (a tensor of the same number of times, e.g. a candidate of :func:`time_grids.fit_time_grid`).
        """
        x = noise.to(self.state_dtype(noise))
        nfe = 0

        def model(xx: Tensor, t: Tensor) -> Tensor:
            nonlocal nfe
            nfe += 1
            return model_fn(xx, t).to(xx.dtype)

        full = self.sampling_grid(num_inference_steps, strength, x.device, x.dtype)
        if grid is not None:
            if grid.shape != full.shape:
                raise InputError(f"grid has shape {tuple(grid.shape)}, this run needs {tuple(full.shape)}")
            full = grid.to(device=x.device, dtype=x.dtype)
        grid = full
        if self.mode == "ode":
            def drift(xx: Tensor, t: Tensor) -> Tensor:
                return self.ode_drift(model(xx, t), xx, t)

            if self.is_adaptive:
                traj = integrate_adaptive(drift, x, grid, method=self.solver, atol=self.atol, rtol=self.rtol)
                if callback is not None:
                    for i in range(1, traj.shape[0]):
                        if callback(i - 1, grid[i], traj[i]) is not None:
                            raise InputError(
                                f"the adaptive {self.solver} solver has finished its solve when the callback "
                                "runs, so it cannot continue from replaced latents; use a fixed-step solver "
                                f"({', '.join(ODE_FIXED_SOLVERS)}) to edit the state during sampling"
                            )
                return SampleResult(sample=traj[-1], trajectory=traj if return_trajectory else None, nfe=nfe)
            if self.solver in ODE_MULTISTEP_SOLVERS:
                states = integrate_multistep(ODE_MULTISTEP_SOLVERS[self.solver], drift, x, grid,
                                             self.coefficients, callback)
            else:
                states = integrate_fixed(ODE_FIXED_SOLVERS[self.solver], drift, x, grid, callback)
        else:
            def sde_drift(xx: Tensor, t: Tensor) -> Tensor:
                return self.sde_drift(model(xx, t), xx, t)

            draw = noise_fn or self.brownian_noise
            history = History.new() if self.is_multistep else None
            states = [x]
            n_sde = grid.shape[0] - 1
            for i in range(n_sde):
                w = draw(tuple(x.shape), generator, x.device, x.dtype)
                x, _ = drive(self.solver_stages(i, x, grid, noise=w, history=history), sde_drift)
                if callback is not None:
                    x = _replaced(callback(i, grid[i + 1], x), x)
                states.append(x)
            if self.last_step is not None:
                t1 = grid[-1].expand(x.shape[0])
                x = self.last(model(x, t1), x, t1)
                if callback is not None:
                    x = _replaced(callback(n_sde, grid[-1], x), x)
                states.append(x)
        trajectory = torch.stack(states) if return_trajectory else None
        return SampleResult(sample=states[-1], trajectory=trajectory, nfe=nfe)
