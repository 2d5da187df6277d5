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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from diffusers.utils import BaseOutput
from torch import Tensor

from .interpolants import Interpolant
from .sampling import (
    DEFAULT_CONFIG,
    LAST_STEPS,
    MODES,
    SAMPLER_PRESETS,
    SBDM_DEFAULT_EPS,
    Generator,
    ModelFn,
    SamplerCore,
    randn,
)
from .solvers import ODE_FIXED_SOLVERS, ODE_MULTISTEP_SOLVERS, History
from .validation import InputError, check_choice, check_int

__all__ = ["SiTSampler", "SiTSamplerOutput", "SAMPLER_PRESETS", "MODES", "LAST_STEPS", "SBDM_DEFAULT_EPS"]


def _check_pair(name: str, value: Any, other_name: str, other: Any) -> None:
    """Two floating-point tensors of one shape (a broadcast between them would silently mix samples)."""
    for n, v in ((name, value), (other_name, other)):
        if not isinstance(v, Tensor) or not v.is_floating_point():
            raise InputError(f"{n} must be a floating-point tensor, got {type(v).__name__}"
                             + (f" of dtype {v.dtype}" if isinstance(v, Tensor) else ""))
    if value.shape != other.shape:
        raise InputError(f"{other_name} has shape {tuple(other.shape)}, {name} {tuple(value.shape)}: they must match")


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
        time_grid: the solver's time grid (:mod:`sit_diffusers.time_grids`): ``"uniform"`` (official),
            ``"shifted"`` (diffusers' flow shift ``time_shift``), ``"edm"`` (Karras' polynomial, ``time_rho``)
            or ``"fitted"`` (``fitted_grid``).
        time_shift: shift of the ``"shifted"`` grid (> 0; > 1 puts more steps near the noise).
        time_rho: exponent of the ``"edm"`` grid (> 0; EDM uses 7).
        fitted_grid: the times of a grid fitted to one model (``time_grids.fit_time_grid``): strictly
            increasing from ``t0`` to ``t1``. Its own step count runs these times exactly; any other
            ``num_inference_steps`` samples the monotone time warp through them (``time_grids.warp_grid``).

    ODE solvers also include the multistep ``"ab2"``, ``"ab3"`` (Adams-Bashforth), ``"abm4"`` (AB3
    predictor with a 4-point Adams-Moulton corrector that reuses the next step's evaluation), ``"dpm++2m"``
    (DPM-Solver++(2M)) and ``"unipc"`` (with the UniC corrector), one model call per step
    (:mod:`sit_diffusers.solvers`); the SDE solver ``"dpm++2m"`` (SDE-DPM-Solver++(2M)) integrates the SBDM
    diffusion with one call per step.
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
        time_grid: str = "uniform",
        time_shift: float = 1.0,
        time_rho: float = 7.0,
        fitted_grid: list[float] | None = None,
    ) -> None:
        # every value is validated (and every formula lives) in the torch-only core
        self._core = SamplerCore({k: v for k, v in self.config.items() if k in DEFAULT_CONFIG})
        if fitted_grid is not None:  # saved as a plain list of floats (the ends set to t0, t1 exactly)
            self.register_to_config(fitted_grid=self._core.fitted_grid)
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
        self._history: History | None = None  # earlier steps of the running solve (multistep solvers)

    @property
    def core(self) -> SamplerCore:
        """The torch-only sampling math (:class:`sit_diffusers.sampling.SamplerCore`) this scheduler runs."""
        return self._core

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
        return self._core.check_num_inference_steps(num_inference_steps)

    @property
    def interpolant(self) -> Interpolant:
        """The path object (``alpha``, ``sigma``, conversions)."""
        return self._core.interpolant

    @property
    def interval(self) -> tuple[float, float]:
        """``(t0, t1)``: the sampler integrates forward from ``t0`` (noise) to ``t1`` (then the last step)."""
        return self._core.interval

    @property
    def is_adaptive(self) -> bool:
        return self._core.is_adaptive

    @property
    def is_multistep(self) -> bool:
        """The solver reuses the model outputs of earlier steps (``ab2``, ``ab3``, ``abm4``, ``dpm++2m``,
        ``unipc``)."""
        return self._core.is_multistep

    @property
    def order(self) -> int:  # type: ignore[override]
        """Entries of ``timesteps`` (model calls) per solver step, diffusers' meaning: 1 for Euler,
        Euler-Maruyama and the multistep methods (``ab3`` and ``abm4`` add one call to their first step), 2 for Heun,
        midpoint and the stochastic Heun, 4 for RK4 (the SDE's last step is one more entry); adaptive
        solvers: 1 (they have no fixed steps)."""
        return self._core.order

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
        It must be the first model call of a solver step. A multistep solver starts there with no history
        (its first steps from there use the lower orders, as :meth:`sample` with ``strength < 1``)."""
        begin_index = check_int("begin_index", begin_index, minimum=0)
        if self.num_inference_steps is not None:
            if begin_index >= len(self.timesteps):
                raise InputError(f"begin_index {begin_index} is past the {len(self.timesteps)} timesteps")
            if self._plan[begin_index][1] != 0:
                raise InputError(
                    f"begin_index {begin_index} falls inside a {self._core.solver} step (stage "
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

        core = self._core
        kwargs = {
            "path_type": core.path, "prediction": core.prediction,
            "train_eps": core.train_eps, "sample_eps": core.sample_eps,
        }
        return SiTObjective(**{**kwargs, **overrides})

    def num_model_evaluations(self, num_inference_steps: int, strength: float = 1.0) -> int | None:
        """Network calls of :meth:`sample` (``None`` for adaptive solvers, which choose their steps); with a
        ``strength`` below 1, of the shorter run of :meth:`sampling_grid`."""
        return self._core.num_model_evaluations(num_inference_steps, strength)

    # ------------------------------------------------------------------------------------------------
    # grid
    # ------------------------------------------------------------------------------------------------
    def sampling_grid(self, num_inference_steps: int, strength: float = 1.0,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """The times :meth:`sample` integrates over; ``grid[0]`` is where its input lives
        (:meth:`SamplerCore.sampling_grid`: ``strength < 1`` keeps the end of the schedule)."""
        return self._core.sampling_grid(num_inference_steps, strength, device, dtype)

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Prepare the step loop. ``timesteps`` are the SiT times of the model calls, in call order: every
        stage of every solver step (Heun: ``t_k`` then ``t_k + h``; RK4 four per step), then for an SDE with
        a last step its time ``t1``. A multistep solver starts a new history. Fixed-step and multistep
        solvers only: an adaptive solver picks its step times from local error estimates while it
        integrates, so there is no list of model-call times to hand out."""
        core = self._core
        if core.is_adaptive:
            raise NotImplementedError(
                f"{core.solver} is adaptive: it chooses its step times from error estimates during the solve, "
                "so there are no fixed timesteps for a step() loop; use sample(), or a fixed-step solver "
                f"({', '.join(list(ODE_FIXED_SOLVERS) + list(ODE_MULTISTEP_SOLVERS))})"
            )
        self.num_inference_steps = core.check_num_inference_steps(num_inference_steps)
        grid = core.time_grid_for(self.num_inference_steps, device, torch.float32)
        dummy = torch.zeros(1, dtype=grid.dtype, device=grid.device)
        times, plan = [], []
        history = History.new()
        for k in range(grid.shape[0] - 1):  # the stage times do not depend on x: run each step on zeros
            stages = core.solver_stages(k, dummy, grid, noise=dummy, history=history)
            j, t_j = 0, next(stages)[1]
            while True:
                times.append(t_j.reshape(()))
                plan.append((k, j))
                try:
                    t_j = stages.send(dummy)[1]
                except StopIteration:
                    break
                j += 1
        if core.mode == "sde" and core.last_step is not None:
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
        self._history = History.new()

    def scale_model_input(
        self, sample: Tensor, timestep: Tensor | float | None = None, generator: Generator = None
    ) -> Tensor:
        """The network's input for the next :meth:`step`: ``sample`` itself (SiT feeds the state unscaled),
        except at the start of a stochastic Heun step, which adds its Brownian increment (drawn from
        ``generator``) before the first evaluation: ``x^ = x + sqrt(2 D_t dt) z``."""
        core = self._core
        if core.mode != "sde" or core.solver != "heun" or self.num_inference_steps is None or timestep is None:
            return sample
        if self._step_index is None:
            self._init_step_index(timestep)
        k, j = self._plan[self._step_index] if self._step_index < len(self._plan) else (-1, -1)
        if j != 0 or k >= self._grid.shape[0] - 1:  # a later stage, or the last step
            return sample
        x = sample.to(core.state_dtype(sample))
        self._stages = core.solver_stages(k, x, self._grid.to(device=x.device, dtype=x.dtype), generator=generator,
                                          noise_fn=self.brownian_noise)
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
        return self._core.interpolant.compute_xt(noise, original_samples, t.to(original_samples.dtype))

    def brownian_noise(
        self, shape: tuple[int, ...], generator: Generator, device: torch.device | str, dtype: torch.dtype
    ) -> Tensor:
        """Standard normal draw of one Brownian increment (every SDE step calls this once, in order;
        :func:`sit_diffusers.sampling.randn`, bit-identical to diffusers' ``randn_tensor``).

        A list of generators draws element ``i`` from ``generator[i]``, so a sample does not depend on the
        batch it is in. Override it to replay recorded noise.
        """
        return randn(shape, generator=generator, device=torch.device(device), dtype=dtype)

    # ------------------------------------------------------------------------------------------------
    # drift assembly: one network output -> ODE / SDE drift (the formulas live in SamplerCore)
    # ------------------------------------------------------------------------------------------------
    def ode_drift(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Probability-flow velocity from a network output ``out`` at ``(x, t)``."""
        return self._core.ode_drift(out, x, t)

    def sde_drift(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Reverse-SDE drift ``v + D_t s`` from ONE network output."""
        return self._core.sde_drift(out, x, t)

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
        (the same stage generators of :mod:`solvers`; multistep solvers keep their history in this
        scheduler, reset by :meth:`set_timesteps`), so the loop and ``sample`` agree to the last bit.
        The state is computed in at least float32 and returned in that dtype."""
        _check_pair("sample", sample, "model_output", model_output)
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps() before step()")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if i >= len(self.timesteps):
            raise RuntimeError("step() called more times than there are timesteps")
        core = self._core
        k, j = self._plan[i]
        x = sample.to(core.state_dtype(sample))
        out = model_output.to(x.dtype)
        grid = self._grid.to(device=x.device, dtype=x.dtype)
        if k == grid.shape[0] - 1:  # the SDE's last step at t1
            prev = core.last(out, x, grid[-1].expand(x.shape[0]))
        else:
            noise_first = core.mode == "sde" and core.solver == "heun"
            if j == 0 and noise_first and self._prepared != i:
                raise RuntimeError(
                    "the stochastic Heun step adds its noise before it evaluates the model: call "
                    "x_in = sampler.scale_model_input(sample, t, generator) and evaluate the model at x_in"
                )
            if j == 0 and not noise_first:
                if self._history is None:
                    self._history = History.new()
                self._stages = core.solver_stages(k, x, grid, generator=generator, history=self._history,
                                                  noise_fn=self.brownian_noise)
                self._pending = next(self._stages)
            if self._stages is None or self._pending is None:
                raise RuntimeError(
                    f"step() at stage {j} of a {core.solver} step whose earlier stages were not stepped; begin "
                    "the loop at a step boundary (set_begin_index)"
                )
            x_j, t_j = self._pending
            tv = torch.ones(x_j.shape[0], dtype=x_j.dtype, device=x_j.device) * t_j  # (N,)
            f = core.drift(out, x_j, tv)
            try:
                self._pending = self._stages.send(f)
                prev = self._pending[0]
            except StopIteration as done:
                prev = done.value if core.mode == "ode" else done.value[0]
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
        The math is :meth:`SamplerCore.sample`.
        """
        out = self._core.sample(model_fn, noise, num_inference_steps, generator=generator,
                                return_trajectory=return_trajectory, callback=callback, strength=strength,
                                noise_fn=self.brownian_noise)
        return SiTSamplerOutput(sample=out.sample, trajectory=out.trajectory, nfe=out.nfe)
