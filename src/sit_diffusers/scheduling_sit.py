"""``SiTSampler``: the SiT samplers (probability-flow ODE and reverse SDE) as a diffusers scheduler.

Time runs as in the official code (t = 0 noise, t = 1 data, forward in t); the network gets raw SiT time.
Two entries:

* the diffusers loop for every fixed-step solver (ODE ``euler`` / ``heun`` / ``midpoint`` / ``rk4``, SDE
  ``euler`` / ``heun``; adaptive solvers have no fixed timesteps)::

      sampler.set_timesteps(n)                         # sampler.set_begin_index(k) to start at timesteps[k]
      for t in sampler.timesteps:                      # SiT times of the model calls (every solver stage)
          x_in = sampler.scale_model_input(x, t, generator=g)   # x itself, except stochastic Heun's noise
          out = model(x_in, t.expand(len(x)), y).sample         # velocity / score / noise, as configured
          x = sampler.step(out, t, x, generator=g).prev_sample

  It does the arithmetic of :meth:`SiTSampler.sample` (the same stage generators), bit for bit.

* :meth:`SiTSampler.sample` for every solver, adaptive ones included, which takes ``model_fn(x, t)``.

``num_inference_steps`` counts solver steps; the mapping to the official ``--num-sampling-steps N``
(whose grid is ``linspace(t0, t1, N)``):

* ODE, fixed-step solvers: official ``N`` = ours ``N - 1`` (N grid points are N - 1 steps);
  adaptive solvers: ``num_inference_steps`` only sets the output grid of the trajectory, the final
  sample does not depend on it (the solver picks its own steps), so ours ``N`` = official ``N``.
* SDE with a last step (``mean`` / ``tweedie`` / ``euler``): official ``N`` = ours ``N``
  (``N - 1`` stochastic steps on ``linspace(t0, 1 - last_step_size, N)`` + the last step);
  without a last step: official ``N`` = ours ``N - 1``.

The SDE evaluates the network once per Euler-Maruyama step (the official code calls it twice, once for
the drift and once for the score, for the same numbers), so ``sde-euler`` at 250 steps is 250 network
evaluations (official: 500).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
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
    SDE_SOLVERS,
    integrate_adaptive,
    integrate_fixed,
)
from .validation import InputError, check_choice, check_float, check_int

ModelFn = Callable[[Tensor, Tensor], Tensor]
Generator = torch.Generator | list[torch.Generator] | None

MODES: tuple[str, ...] = ("ode", "sde")
LAST_STEPS: tuple[str, ...] = ("mean", "tweedie", "euler")
_SOLVER_ALIASES = {"heun2": "heun"}
# sample_eps used where the official default (0) is singular and sample_eps is left to default
SBDM_DEFAULT_EPS = 1e-3

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
}


def _check_pair(name: str, value: Any, other_name: str, other: Any) -> None:
    """Two floating-point tensors of one shape (a broadcast between them would silently mix samples)."""
    for n, v in ((name, value), (other_name, other)):
        if not isinstance(v, Tensor) or not v.is_floating_point():
            raise InputError(f"{n} must be a floating-point tensor, got {type(v).__name__}"
                             + (f" of dtype {v.dtype}" if isinstance(v, Tensor) else ""))
    if value.shape != other.shape:
        raise InputError(f"{other_name} has shape {tuple(other.shape)}, {name} {tuple(value.shape)}: they must match")


def _replaced(new: Tensor | None, x: Tensor) -> Tensor:
    """What a step callback returned in place of the state ``x`` (``None``: keep ``x``)."""
    return x if new is None else new


@dataclass
class SiTSamplerOutput(BaseOutput):
    """Result of :meth:`SiTSampler.sample`.

    Args:
        sample: final state ``(N, C, H, W)`` (data at t = 1; noise at t = 0 when ``reverse``).
        trajectory: ``(K + 1, N, C, H, W)`` states after each step, the initial noise first (``None``
            unless ``return_trajectory``). For adaptive solvers the states at the output grid.
        nfe: number of ``model_fn`` calls made.
    """

    sample: Tensor
    trajectory: Tensor | None = None
    nfe: int = 0


class SiTSampler(SchedulerMixin, ConfigMixin):
    """Samplers of SiT (Ma et al. 2024, Sec. 2.4): the probability-flow ODE ``dx = v dt`` and the reverse
    SDE ``dx = [v + D_t s] dt + sqrt(2 D_t) dW`` (``w_t = 2 D_t``), integrated from noise at ``t0`` to data.

    Args:
        path_type: ``"linear"``, ``"gvp"`` or ``"vp"`` (the interpolant the model was trained with).
        prediction: what the network predicts, ``"velocity"``, ``"score"`` or ``"noise"``.
        mode: ``"ode"`` or ``"sde"``.
        solver: ODE ``"euler"``, ``"heun"`` (``"heun2"``), ``"midpoint"``, ``"rk4"`` or the adaptive
            torchdiffeq ``"dopri5"``, ``"dopri8"``, ``"bosh3"``, ``"fehlberg2"``, ``"adaptive_heun"``;
            SDE ``"euler"`` (Euler-Maruyama) or ``"heun"``.
        diffusion_form: SDE diffusion ``D_t`` (:meth:`Interpolant.diffusion`): ``"constant"``, ``"SBDM"``,
            ``"sigma"``, ``"linear"``, ``"decreasing"``, ``"increasing-decreasing"``.
        diffusion_norm: scale of ``D_t``.
        last_step: SDE only: ``"mean"`` (``x + (v + D s) h``), ``"tweedie"`` (``(x + sigma^2 s) / alpha``),
            ``"euler"`` (``x + v h``) or ``None`` (stop at ``1 - sample_eps``); ``h = last_step_size``.
        last_step_size: size ``h`` of the last step; the SDE ends at ``1 - h``.
        sample_eps: distance kept from singular ends; ``None``: the official default per path and
            prediction (VP 1e-3, Linear/GVP score/noise 1e-3, Linear/GVP velocity 0).
        train_eps: the training-time epsilon of the model (``None``: official default); only used by
            :meth:`objective`, which builds the matching training objective.
        atol, rtol: tolerances of adaptive ODE solvers.
        reverse: ODE only: integrate from data (t = 1) to noise (t = 0), for inversion.
        vp_sigma_min, vp_sigma_max: the VP path's beta range.
    """

    config_name = "scheduler_config.json"
    # diffusers schedulers with an exact conversion to this sampler: the rectified-flow ODE of the Linear
    # path with a velocity model (their sigma = 1 - t, their velocity = minus ours; interpolants.to_sit_time)
    _compatibles = ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"]

    @register_to_config
    def __init__(
        self,
        path_type: str = "linear",
        prediction: str = "velocity",
        mode: str = "sde",
        solver: str = "euler",
        diffusion_form: str = "sigma",
        diffusion_norm: float = 1.0,
        last_step: str | None = "mean",
        last_step_size: float = 0.04,
        sample_eps: float | None = None,
        train_eps: float | None = None,
        atol: float = 1e-6,
        rtol: float = 1e-3,
        reverse: bool = False,
        vp_sigma_min: float = 0.1,
        vp_sigma_max: float = 20.0,
    ) -> None:
        self._path = resolve_path_type(path_type)
        self._prediction = resolve_prediction(prediction)
        self._mode = check_choice("mode", mode, MODES, key=str.lower)
        valid = list(ODE_FIXED_SOLVERS) + list(ODE_ADAPTIVE_SOLVERS) if self._mode == "ode" else list(SDE_SOLVERS)
        self._solver = check_choice(
            f"{self._mode.upper()} solver", solver, valid, key=lambda n: _SOLVER_ALIASES.get(n.lower(), n.lower())
        )
        self._form = resolve_diffusion_form(diffusion_form)
        check_float("diffusion_norm", diffusion_norm, minimum=0.0)
        ls = None if last_step is None or str(last_step).lower() == "none" else last_step
        if ls is not None:
            ls = check_choice("last_step", ls, LAST_STEPS, key=str.lower)
        self._last_step = ls if self._mode == "sde" else None
        if self._last_step is not None:  # the SDE stops at 1 - h, then one last step of size h
            check_float("last_step_size", last_step_size, minimum=0.0, maximum=1.0, min_inclusive=False,
                        max_inclusive=False)
        else:
            check_float("last_step_size", last_step_size, minimum=0.0, maximum=1.0, max_inclusive=False)
        for eps_name, eps_value in (("sample_eps", sample_eps), ("train_eps", train_eps)):
            if eps_value is not None:
                check_float(eps_name, eps_value, minimum=0.0, maximum=0.5, max_inclusive=False)
        check_float("atol", atol, minimum=0.0, min_inclusive=False)
        check_float("rtol", rtol, minimum=0.0, min_inclusive=False)
        if not isinstance(reverse, bool):
            raise InputError(f"reverse must be True or False, got {reverse!r}")
        check_float("vp_sigma_min", vp_sigma_min, minimum=0.0, min_inclusive=False)
        if check_float("vp_sigma_max", vp_sigma_max) <= vp_sigma_min:
            raise InputError(f"vp_sigma_max must be > vp_sigma_min ({vp_sigma_min}), got {vp_sigma_max}")
        if reverse and self._mode == "sde":
            raise InputError("reverse=True is for the ODE (data -> noise); the SDE runs noise -> data only")

        self._interp: Interpolant = (
            get_interpolant("vp", sigma_min=vp_sigma_min, sigma_max=vp_sigma_max)
            if self._path == "vp"
            else get_interpolant(self._path)
        )
        default_train, default_sample = default_eps(self._path, self._prediction)
        eps = default_sample if sample_eps is None else float(sample_eps)
        self._train_eps = default_train if train_eps is None else float(train_eps)
        # Linear/GVP: the score of a velocity model is singular at t = 1 (sigma_1 = 0) and SBDM at t = 0;
        # an SDE Heun step without a last step evaluates at the end, t1 = 1 - sample_eps
        needs_eps = self._path != "vp" and (
            self._prediction != "velocity"
            or (self._mode == "sde" and self._form == "SBDM")
            or (self._mode == "sde" and self._last_step is None and self._solver == "heun")
        )
        if needs_eps and eps <= 0:
            if sample_eps is None:  # the official default 0 gives NaN here
                eps = SBDM_DEFAULT_EPS
            else:
                raise InputError(
                    f"sample_eps={sample_eps} is singular for {self._path}/{self._prediction} {self._mode} "
                    f"{self._solver} (diffusion {self._form}, last step {self._last_step}): the score divides by "
                    "zero at t = 0 or t = 1; use sample_eps > 0 (e.g. 1e-3)"
                )
        self._sample_eps = eps
        lss = float(last_step_size) if self._last_step is not None else 0.0
        self._interval = sampling_interval(
            self._path, self._prediction, eps, sde=self._mode == "sde", diffusion_form=self._form, last_step_size=lss
        )
        if not self._interval[0] < self._interval[1]:
            raise InputError(
                f"sample_eps={eps} and last_step_size={lss} leave no interval to integrate: "
                f"[t0, t1] = [{self._interval[0]}, {self._interval[1]}]"
            )
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0)
        self._grid = torch.empty(0)
        self._plan: list[tuple[int, int]] = []  # timesteps[i] is stage plan[i][1] of solver step plan[i][0]
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._stages: Any = None  # the running stage generator of the current solver step
        self._pending: tuple[Tensor, Tensor] | None = None  # its next evaluation point (x_j, t_j)
        self._prepared: int | None = None  # step index whose noise scale_model_input added (stochastic Heun)

    # ------------------------------------------------------------------------------------------------
    # construction helpers
    # ------------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SiTSampler:
        """Sampler from a named preset of :data:`SAMPLER_PRESETS`; ``overrides`` replace config values.

        The preset's default step count is ``SAMPLER_PRESETS[name]["num_inference_steps"]``.
        """
        check_choice("preset", name, SAMPLER_PRESETS)
        unknown = sorted(set(overrides) - set(inspect.signature(cls.__init__).parameters) - {"self"})
        if unknown:
            raise InputError(f"unknown SiTSampler argument(s) {unknown}; valid: {sorted(cls.config_keys())}")
        return cls(**{**SAMPLER_PRESETS[name]["config"], **overrides})

    @classmethod
    def config_keys(cls) -> list[str]:
        """The constructor's arguments (the keys of ``scheduler_config.json``)."""
        return [k for k in inspect.signature(cls.__init__).parameters if k != "self"]

    def check_num_inference_steps(self, num_inference_steps: Any) -> int:
        """``num_inference_steps`` as an ``int`` this sampler can run (>= 1; >= 2 for an SDE with a last
        step, whose last entry is the last step); raises ``InputError`` naming the value otherwise."""
        n = check_int("num_inference_steps", num_inference_steps, minimum=1)
        if n < 2 and self._mode == "sde" and self._last_step is not None:
            raise InputError(
                f"num_inference_steps must be >= 2 for an SDE with a last step (the last entry is the "
                f"{self._last_step!r} step), got {n}"
            )
        return n

    @property
    def interpolant(self) -> Interpolant:
        """The path object (``alpha``, ``sigma``, conversions)."""
        return self._interp

    @property
    def interval(self) -> tuple[float, float]:
        """``(t0, t1)``: the sampler integrates forward from ``t0`` (noise) to ``t1`` (then the last step)."""
        return self._interval

    @property
    def is_adaptive(self) -> bool:
        return self._solver in ODE_ADAPTIVE_SOLVERS

    @property
    def order(self) -> int:  # type: ignore[override]
        """Entries of ``timesteps`` (model calls) per solver step, diffusers' meaning: 1 for Euler and
        Euler-Maruyama, 2 for Heun, midpoint and the stochastic Heun, 4 for RK4 (the SDE's last step is one
        more entry); adaptive solvers: 1 (they have no fixed steps)."""
        if self.is_adaptive:
            return 1
        if self._mode == "ode":
            return ODE_FIXED_SOLVERS[self._solver].evals
        return SDE_SOLVERS[self._solver].evals

    @property
    def step_index(self) -> int | None:
        """Index in ``timesteps`` of the next :meth:`step` (``None`` until the first call)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First index of ``timesteps`` the loop uses, set by :meth:`set_begin_index` (``None``: found from
        the first ``timestep`` given to :meth:`step`)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the step loop at ``timesteps[begin_index]`` (diffusers' img2img / SDEdit contract: noise the
        data to ``timesteps[begin_index]`` with :meth:`add_noise`, then step over ``timesteps[begin_index:]``).
        It must be the first model call of a solver step."""
        begin_index = check_int("begin_index", begin_index, minimum=0)
        if self.num_inference_steps is not None:
            if begin_index >= len(self.timesteps):
                raise InputError(f"begin_index {begin_index} is past the {len(self.timesteps)} timesteps")
            if self._plan[begin_index][1] != 0:
                raise InputError(
                    f"begin_index {begin_index} falls inside a {self._solver} step (stage "
                    f"{self._plan[begin_index][1]}); start at a step boundary, e.g. a multiple of {self.order}"
                )
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: Tensor | float, schedule_timesteps: Tensor | None = None) -> int:
        """Index of ``timestep`` in ``timesteps`` (diffusers' rule: where a time appears twice, as the end of
        one step and the start of the next, the later entry, i.e. the start of a step)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        t = torch.as_tensor(timestep, dtype=schedule.dtype).to(schedule.device).reshape(-1)
        if t.numel() != 1 and not bool((t == t[0]).all()):
            raise InputError(f"timestep must be one time for the whole batch, got {t.tolist()[:8]}")
        indices = (schedule == t[0]).nonzero().flatten()
        if len(indices) == 0:
            nearest = schedule[(schedule - t[0]).abs().argmin()].item() if len(schedule) else None
            raise InputError(
                f"timestep {timestep if isinstance(timestep, (int, float)) else t[0].item()} is not in this "
                f"sampler's timesteps (nearest {nearest}); pass an entry of "
                "sampler.timesteps, in SiT time (0 noise, 1 data)"
            )
        return int(indices[1 if len(indices) > 1 else 0])

    def _init_step_index(self, timestep: Tensor | float) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def objective(self, **overrides: Any) -> Any:
        """The training objective matching this sampler's path, prediction and ``train_eps``."""
        from .losses import SiTObjective

        kwargs = {
            "path_type": self._path, "prediction": self._prediction,
            "train_eps": self._train_eps, "sample_eps": self._sample_eps,
        }
        return SiTObjective(**{**kwargs, **overrides})

    def num_model_evaluations(self, num_inference_steps: int, strength: float = 1.0) -> int | None:
        """Network calls of :meth:`sample` (``None`` for adaptive solvers, which choose their steps); with a
        ``strength`` below 1, of the shorter run of :meth:`sampling_grid`."""
        n = self.check_num_inference_steps(num_inference_steps)
        if self.is_adaptive:
            return None
        if strength != 1.0:
            steps = self.sampling_grid(n, strength).shape[0] - 1
            if self._mode == "ode":
                return steps * ODE_FIXED_SOLVERS[self._solver].evals
            return steps * SDE_SOLVERS[self._solver].evals + (self._last_step is not None)
        if self._mode == "ode":
            return n * ODE_FIXED_SOLVERS[self._solver].evals
        evals = SDE_SOLVERS[self._solver].evals
        if self._last_step is None:
            return n * evals
        return (n - 1) * evals + 1

    # ------------------------------------------------------------------------------------------------
    # grid
    # ------------------------------------------------------------------------------------------------
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
        grid = self._time_grid(n, device, dtype)
        if strength == 1.0:
            return grid
        if self.config.reverse:
            raise InputError(f"strength={strength} is for sampling from a noised image (noise -> data); the reverse "
                             "ODE (data -> noise) always runs the whole interval: use strength=1")
        if self.is_adaptive:
            t0, t1 = self._interval
            return torch.linspace(t1 - strength * (t1 - t0), t1, n + 1, dtype=dtype, device=device)
        run = math.floor(n * strength + 1e-9)
        if run < 1:
            raise InputError(f"strength={strength} with num_inference_steps={n} leaves no solver step to run "
                             "(floor(n * strength) = 0); raise strength or num_inference_steps")
        return grid[n - run:]

    def _time_grid(self, n: int, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        """Solver grid: ODE ``linspace(t0, t1, n + 1)`` (reversed for ``reverse``); SDE
        ``linspace(t0, t1, n)`` with a last step (it makes step ``n``), else ``linspace(t0, t1, n + 1)``."""
        n = self.check_num_inference_steps(n)
        t0, t1 = self._interval
        if self._mode == "sde" and self._last_step is not None:
            points = n
        else:
            points = n + 1
        if self.config.reverse:
            t0, t1 = t1, t0
        return torch.linspace(t0, t1, points, dtype=dtype, device=device)

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Prepare the step loop. ``timesteps`` are the SiT times of the model calls, in call order: every
        stage of every solver step (Heun: ``t_k`` then ``t_k + h``; RK4 four per step), then for an SDE with
        a last step its time ``t1``. Fixed-step solvers only: an adaptive solver picks its step times from
        local error estimates while it integrates, so there is no list of model-call times to hand out."""
        if self.is_adaptive:
            raise NotImplementedError(
                f"{self._solver} is adaptive: it chooses its step times from error estimates during the solve, "
                "so there are no fixed timesteps for a step() loop; use sample(), or a fixed-step solver "
                f"({', '.join(ODE_FIXED_SOLVERS)})"
            )
        self.num_inference_steps = self.check_num_inference_steps(num_inference_steps)
        grid = self._time_grid(self.num_inference_steps, device, torch.float32)
        dummy = torch.zeros(1, dtype=grid.dtype, device=grid.device)
        times, plan = [], []
        for k in range(grid.shape[0] - 1):  # the stage times do not depend on x: run each step on zeros
            stages = self._solver_stages(k, dummy, grid, noise=dummy)
            j, t_j = 0, next(stages)[1]
            while True:
                times.append(t_j.reshape(()))
                plan.append((k, j))
                try:
                    t_j = stages.send(dummy)[1]
                except StopIteration:
                    break
                j += 1
        if self._mode == "sde" and self._last_step is not None:
            times.append(grid[-1])
            plan.append((grid.shape[0] - 1, 0))
        self._grid = grid
        self.timesteps = torch.stack(times)
        self._plan = plan
        self._step_index = None
        self._begin_index = None
        self._stages = None
        self._pending = None
        self._prepared = None

    def _solver_stages(self, k: int, x: Tensor, grid: Tensor, noise: Tensor | None = None,
                       generator: Generator = None) -> Any:
        """The stage generator of solver step ``k`` (``grid[k] -> grid[k + 1]``) from ``x``; an SDE step draws
        its Brownian increment here (once per step, as :meth:`sample`) unless ``noise`` is given."""
        if self._mode == "ode":
            return ODE_FIXED_SOLVERS[self._solver].stages(x, grid[k], grid[k + 1])
        if noise is None:
            noise = self.brownian_noise(tuple(x.shape), generator, x.device, x.dtype)
        return SDE_SOLVERS[self._solver].stages(
            lambda tv: self._diffusion(tv, x), x, grid[k], grid[k + 1] - grid[k], noise
        )

    def scale_model_input(
        self, sample: Tensor, timestep: Tensor | float | None = None, generator: Generator = None
    ) -> Tensor:
        """The network's input for the next :meth:`step`: ``sample`` itself (SiT feeds the state unscaled),
        except at the start of a stochastic Heun step, which adds its Brownian increment (drawn from
        ``generator``) before the first evaluation: ``x^ = x + sqrt(2 D_t dt) z``."""
        if self._mode != "sde" or self._solver != "heun" or self.num_inference_steps is None or timestep is None:
            return sample
        if self._step_index is None:
            self._init_step_index(timestep)
        k, j = self._plan[self._step_index] if self._step_index < len(self._plan) else (-1, -1)
        if j != 0 or k >= self._grid.shape[0] - 1:  # a later stage, or the last step
            return sample
        x = sample.to(self._state_dtype(sample))
        self._stages = self._solver_stages(k, x, self._grid.to(device=x.device, dtype=x.dtype), generator=generator)
        self._pending = next(self._stages)
        self._prepared = self._step_index
        return self._pending[0]

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor | float) -> Tensor:
        """The interpolant ``x_t = alpha_t x1 + sigma_t x0`` (``timesteps`` in SiT time: ``(N,)``, or one time for
        the whole batch as a scalar or ``(1,)``, as diffusers passes ``timesteps[:1]``)."""
        _check_pair("original_samples", original_samples, "noise", noise)
        t = torch.as_tensor(timesteps, device=original_samples.device)
        if t.ndim == 0 or t.shape == (1,):
            t = t.reshape(()).expand(original_samples.shape[0])
        if t.shape != (original_samples.shape[0],):
            raise InputError(f"timesteps has shape {tuple(t.shape)}; expected a scalar, (1,) or "
                             f"({original_samples.shape[0]},), one SiT time per sample")
        if not bool(((t >= 0) & (t <= 1)).all()):  # also refuses NaN
            raise InputError(f"timesteps must be SiT times in [0, 1] (0 noise, 1 data), got {t.tolist()[:8]}; "
                             "convert other conventions with sit_diffusers.interpolants.to_sit_time")
        return self._interp.compute_xt(noise, original_samples, t.to(original_samples.dtype))

    def brownian_noise(
        self, shape: tuple[int, ...], generator: Generator, device: torch.device | str, dtype: torch.dtype
    ) -> Tensor:
        """Standard normal draw of one Brownian increment (every SDE step calls this once, in order).

        A list of generators draws element ``i`` from ``generator[i]``, so a sample does not depend on the
        batch it is in. Override it to replay recorded noise.
        """
        return randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)

    # ------------------------------------------------------------------------------------------------
    # drift assembly: one network output -> ODE / SDE drift
    # ------------------------------------------------------------------------------------------------
    def _vs(self, out: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._interp.velocity_and_score(out.to(x.dtype), self._prediction, x, t)

    def _diffusion(self, t: Tensor, x: Tensor) -> Tensor:
        return self._interp.diffusion(expand_t_like_x(t, x), self._form, self.config.diffusion_norm)

    def ode_drift(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Probability-flow velocity from a network output ``out`` at ``(x, t)``."""
        if self._prediction == "velocity":
            return out.to(x.dtype)
        return self._vs(out, x, t)[0]

    def sde_drift(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Reverse-SDE drift ``v + D_t s`` from ONE network output."""
        v, s = self._vs(out, x, t)
        return v + self._diffusion(t, x) * s

    def _last(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        h = self.config.last_step_size
        if self._last_step == "mean":
            return x + self.sde_drift(out, x, t) * h
        if self._last_step == "euler":
            return x + self.ode_drift(out, x, t) * h
        tt = expand_t_like_x(t, x)  # tweedie: E[x1 | x_t] = (x + sigma^2 s) / alpha
        a, _ = self._interp.alpha(tt)
        sig, _ = self._interp.sigma(tt)
        return x / a + sig**2 / a * self._vs(out, x, t)[1]

    @staticmethod
    def _state_dtype(x: Tensor) -> torch.dtype:
        return torch.promote_types(x.dtype, torch.float32)

    # ------------------------------------------------------------------------------------------------
    # diffusers step API
    # ------------------------------------------------------------------------------------------------
    def step(
        self,
        model_output: Tensor,
        timestep: Tensor | float,
        sample: Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor]:
        """Advance one entry of ``timesteps``; ``model_output`` is the network's output at
        ``(scale_model_input(sample, timestep), timestep)``. The position in ``timesteps`` comes from
        ``timestep`` on the first call (or from :meth:`set_begin_index`), then advances by one per call.

        ``prev_sample`` is the next model input: the state after the step, or inside a multi-stage step
        (Heun, midpoint, RK4) the next stage's evaluation point. The arithmetic is that of :meth:`sample`
        (the same stage generators of :mod:`solvers`), so the loop and ``sample`` agree to the last bit.
        The state is computed in at least float32 and returned in that dtype."""
        _check_pair("sample", sample, "model_output", model_output)
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps() before step()")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if i >= len(self.timesteps):
            raise RuntimeError("step() called more times than there are timesteps")
        k, j = self._plan[i]
        x = sample.to(self._state_dtype(sample))
        out = model_output.to(x.dtype)
        grid = self._grid.to(device=x.device, dtype=x.dtype)
        if k == grid.shape[0] - 1:  # the SDE's last step at t1
            prev = self._last(out, x, grid[-1].expand(x.shape[0]))
        else:
            noise_first = self._mode == "sde" and self._solver == "heun"
            if j == 0 and noise_first and self._prepared != i:
                raise RuntimeError(
                    "the stochastic Heun step adds its noise before it evaluates the model: call "
                    "x_in = sampler.scale_model_input(sample, t, generator) and evaluate the model at x_in"
                )
            if j == 0 and not noise_first:
                self._stages = self._solver_stages(k, x, grid, generator=generator)
                self._pending = next(self._stages)
            if self._stages is None or self._pending is None:
                raise RuntimeError(
                    f"step() at stage {j} of a {self._solver} step whose earlier stages were not stepped; begin "
                    "the loop at a step boundary (set_begin_index)"
                )
            x_j, t_j = self._pending
            tv = torch.ones(x_j.shape[0], dtype=x_j.dtype, device=x_j.device) * t_j  # (N,)
            f = self.ode_drift(out, x_j, tv) if self._mode == "ode" else self.sde_drift(out, x_j, tv)
            try:
                self._pending = self._stages.send(f)
                prev = self._pending[0]
            except StopIteration as done:
                prev = done.value if self._mode == "ode" else done.value[0]
                self._stages, self._pending = None, None
        self._step_index += 1
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

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
        callback: Callable[[int, Tensor, Tensor], Tensor | None] | None = None,
        strength: float = 1.0,
    ) -> SiTSamplerOutput:
        """Integrate from ``noise`` (``(N, C, H, W)`` at ``t0``; data at ``t = 1`` when ``reverse``).

        ``model_fn(x, t)`` takes ``x`` ``(N, C, H, W)`` and ``t`` ``(N,)`` in SiT time and returns the
        network's prediction. ``callback(i, t, x)`` is called after step ``i`` with the state ``x`` reached
        at time ``t``; with a fixed-step solver it may return a tensor that replaces ``x`` (the integration
        continues from it). Adaptive solvers call it at each output grid point after the whole solve, so
        they refuse a replacement. Brownian increments come from :meth:`brownian_noise` with ``generator``.
        ``strength < 1`` (SDEdit) integrates over the end of the schedule only (:meth:`sampling_grid`):
        ``noise`` is then the state at ``sampling_grid(num_inference_steps, strength)[0]``.
        """
        x = noise.to(self._state_dtype(noise))
        nfe = 0

        def model(xx: Tensor, t: Tensor) -> Tensor:
            nonlocal nfe
            nfe += 1
            return model_fn(xx, t).to(xx.dtype)

        grid = self.sampling_grid(num_inference_steps, strength, x.device, x.dtype)
        if self._mode == "ode":
            def drift(xx: Tensor, t: Tensor) -> Tensor:
                return self.ode_drift(model(xx, t), xx, t)

            if self.is_adaptive:
                traj = integrate_adaptive(
                    drift, x, grid, method=self._solver, atol=self.config.atol, rtol=self.config.rtol
                )
                if callback is not None:
                    for i in range(1, traj.shape[0]):
                        if callback(i - 1, grid[i], traj[i]) is not None:
                            raise InputError(
                                f"the adaptive {self._solver} solver has finished its solve when the callback "
                                "runs, so it cannot continue from replaced latents; use a fixed-step solver "
                                f"({', '.join(ODE_FIXED_SOLVERS)}) to edit the state during sampling"
                            )
                final = traj[-1]
                trajectory = traj if return_trajectory else None
                return SiTSamplerOutput(sample=final, trajectory=trajectory, nfe=nfe)
            states = integrate_fixed(ODE_FIXED_SOLVERS[self._solver], drift, x, grid, callback)
        else:
            solver = SDE_SOLVERS[self._solver]

            def sde_drift(xx: Tensor, t: Tensor) -> Tensor:
                return self.sde_drift(model(xx, t), xx, t)

            def diffusion(t: Tensor) -> Tensor:
                return self._diffusion(t, x)

            states = [x]
            n_sde = grid.shape[0] - 1
            for i in range(n_sde):
                w = self.brownian_noise(tuple(x.shape), generator, x.device, x.dtype)
                x, _ = solver.step(sde_drift, diffusion, x, grid[i], grid[i + 1] - grid[i], w)
                if callback is not None:
                    x = _replaced(callback(i, grid[i + 1], x), x)
                states.append(x)
            if self._last_step is not None:
                t1 = grid[-1].expand(x.shape[0])
                x = self._last(model(x, t1), x, t1)
                if callback is not None:
                    x = _replaced(callback(n_sde, grid[-1], x), x)
                states.append(x)
        trajectory = torch.stack(states) if return_trajectory else None
        return SiTSamplerOutput(sample=states[-1], trajectory=trajectory, nfe=nfe)
