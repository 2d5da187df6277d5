"""diffusers' flow-matching schedulers driving a SiT model, through the one time converter.

The rectified-flow schedulers of diffusers (the SD3 / Flux convention) write the Linear path as
``x = (1 - sigma) x_data + sigma noise`` with ``sigma`` running from 1 (noise) to 0 (data); their network
predicts ``u = dx / dsigma = noise - x_data`` and their ``timesteps`` are ``sigma * num_train_timesteps``.
SiT's Linear path is ``x_t = t x1 + (1 - t) x0`` (t = 0 noise, t = 1 data): the same path with

    t = 1 - sigma   (interpolants.to_sit_time(sigma, "noise_at_1")),     v = dx / dt = -u.

So a SiT transformer trained on the Linear path to predict the velocity *is* a rectified-flow model up to
those two signs, and a scheduler that integrates ``dx / dsigma = u`` integrates SiT's probability-flow ODE
with no approximation besides its own discretisation. Any other path (GVP, VP: their ``x_t`` is not
``(1 - sigma) x_data + sigma noise``) or prediction (score, noise: singular at the noise end, where these
schedulers start) is refused with an :class:`~sit_diffusers.validation.InputError`.

Supported (:data:`FLOW_SCHEDULERS`): ``FlowMatchEulerDiscreteScheduler``, ``FlowMatchHeunDiscreteScheduler``
and the multistep solvers with flow sigmas, ``UniPCMultistepScheduler`` and ``DPMSolverMultistepScheduler``
(``use_flow_sigmas=True, prediction_type="flow_prediction"``, ``flow_shift``). Every schedule is checked
after ``set_timesteps``: sigmas in [0, 1], non-increasing, ending at 0 (the data). That check is why
``DEISMultistepScheduler`` is not offered: with ``use_flow_sigmas`` it repeats its last sigma (``1 / n``) as
the end instead of 0, so its samples keep 10% noise at 10 steps.

The model is evaluated at the scheduler's own ``sigmas[i]`` for entry ``i`` of ``timesteps`` (the sigma its
update assumes), not at the timestep: UniPC and DPM-Solver round their timesteps to integers
(``int(1000 sigma)``), which would put up to 1/1000 of time error into every evaluation.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from torch import Tensor

from .interpolants import to_sit_time
from .validation import InputError, check_float, check_int

ModelFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, Tensor, Tensor], "Tensor | None"]

#: The diffusers schedulers SiTPipeline accepts, and whether they need the flow config
#: (``use_flow_sigmas=True, prediction_type="flow_prediction"``; the FlowMatch ones are flow schedulers as built).
FLOW_SCHEDULERS: dict[str, bool] = {
    "FlowMatchEulerDiscreteScheduler": False,
    "FlowMatchHeunDiscreteScheduler": False,
    "UniPCMultistepScheduler": True,
    "DPMSolverMultistepScheduler": True,
}
_CLASSES: tuple[type, ...] = (
    FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, UniPCMultistepScheduler,
    DPMSolverMultistepScheduler,
)


def is_flow_scheduler(scheduler: Any) -> bool:
    """Whether ``scheduler`` is one of the diffusers classes of :data:`FLOW_SCHEDULERS` (config not checked)."""
    return isinstance(scheduler, _CLASSES)


def check_flow_scheduler(scheduler: Any, path_type: str = "linear", prediction: str = "velocity") -> None:
    """Refuse, with an ``InputError`` that names the problem, a scheduler that would not integrate the
    probability-flow ODE of a SiT model trained on ``path_type`` to predict ``prediction``.

    ``path_type`` / ``prediction`` are what the transformer was trained for (the pipeline keeps them from
    the last ``SiTSampler`` it held). Only the Linear path with a velocity model converts exactly.
    """
    name = type(scheduler).__name__
    if not is_flow_scheduler(scheduler):
        raise InputError(
            f"scheduler must be a SiTSampler or one of the flow-matching schedulers {', '.join(FLOW_SCHEDULERS)}, "
            f"got {name}"
        )
    if (path_type, prediction) != ("linear", "velocity"):
        raise InputError(
            f"{name} integrates the rectified-flow ODE of the Linear path with a velocity model; this "
            f"transformer was trained for path_type={path_type!r}, prediction={prediction!r}, which has no "
            "exact conversion to it: keep a SiTSampler (pipe.set_sampler('ode-heun'))"
        )
    cfg = scheduler.config
    if FLOW_SCHEDULERS[name] and not (cfg.get("use_flow_sigmas") and cfg.get("prediction_type") == "flow_prediction"):
        raise InputError(
            f"{name} must be built with use_flow_sigmas=True and prediction_type='flow_prediction' to sample a "
            f"SiT velocity model (got use_flow_sigmas={cfg.get('use_flow_sigmas')}, "
            f"prediction_type={cfg.get('prediction_type')!r}); e.g. "
            f"{name}(use_flow_sigmas=True, prediction_type='flow_prediction')"
        )
    if name == "DPMSolverMultistepScheduler" and cfg.get("algorithm_type") not in ("dpmsolver++", "sde-dpmsolver++"):
        raise InputError(
            f"DPMSolverMultistepScheduler algorithm_type={cfg.get('algorithm_type')!r} has no flow_prediction "
            "form; use 'dpmsolver++' or 'sde-dpmsolver++'"
        )
    if cfg.get("use_dynamic_shifting"):
        raise InputError(
            f"{name} has use_dynamic_shifting=True, which needs a resolution-dependent `mu` that SiT does not "
            "define; set use_dynamic_shifting=False and choose the shift (`shift` / `flow_shift`) instead"
        )
    if cfg.get("invert_sigmas"):
        raise InputError(f"{name} has invert_sigmas=True (sigma 0 = noise), the opposite convention; set it False")


def check_sigmas(sigmas: Any, scheduler: Any) -> list[float]:
    """``sigmas`` for ``set_timesteps``: a non-empty sequence of finite numbers in (0, 1], strictly decreasing
    (noise first), for a scheduler whose ``set_timesteps`` takes them."""
    name = type(scheduler).__name__
    if "sigmas" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise InputError(f"sigmas: {name}.set_timesteps takes no custom sigmas; leave sigmas=None")
    if isinstance(sigmas, Tensor):
        sigmas = sigmas.detach().cpu().reshape(-1).tolist()
    if isinstance(sigmas, (str, bytes)) or not isinstance(sigmas, Sequence) or len(sigmas) == 0:
        raise InputError(f"sigmas must be a non-empty sequence of numbers in (0, 1], got {sigmas!r}")
    values = [check_float(f"sigmas[{i}]", s, minimum=0.0, maximum=1.0, min_inclusive=False) for i, s in enumerate(sigmas)]
    for i in range(1, len(values)):
        if values[i] >= values[i - 1]:
            raise InputError(f"sigmas must decrease strictly (noise first): sigmas[{i}]={values[i]} >= "
                             f"sigmas[{i - 1}]={values[i - 1]}")
    return values


@dataclass
class FlowPlan:
    """One run of a flow scheduler: its schedule after ``set_timesteps`` and where the run begins.

    Attributes:
        num_inference_steps, sigmas_arg: what ``set_timesteps`` was given (it is called again to restart).
        begin_index: first entry of ``timesteps`` the run uses (diffusers' ``set_begin_index``).
        timesteps: the scheduler's ``timesteps`` ``(M,)``.
        sigmas: its ``sigmas`` ``(M + 1,)``: ``sigmas[i]`` is the noise level of entry ``i``, the last one 0.
    """

    num_inference_steps: int
    sigmas_arg: list[float] | None
    begin_index: int
    timesteps: Tensor
    sigmas: Tensor

    @property
    def nfe(self) -> int:
        """Model evaluations of the run: one per entry of ``timesteps`` from ``begin_index``."""
        return len(self.timesteps) - self.begin_index

    @property
    def start_time(self) -> float:
        """SiT time of the run's first evaluation: ``1 - sigmas[begin_index]``."""
        return float(to_sit_time(self.sigmas[self.begin_index], "noise_at_1"))

    def sit_time(self, i: int) -> Tensor:
        """SiT time of entry ``i`` (0-d float32): ``to_sit_time(sigmas[i], "noise_at_1")``."""
        return to_sit_time(self.sigmas[i].to(torch.float32), "noise_at_1")


def _set_timesteps(scheduler: Any, num_inference_steps: int, sigmas: list[float] | None,
                   device: torch.device | str | None) -> None:
    if sigmas is None:
        scheduler.set_timesteps(num_inference_steps, device=device)
    else:
        scheduler.set_timesteps(device=device, sigmas=sigmas)


def plan_flow(scheduler: Any, num_inference_steps: int, sigmas: list[float] | None = None, strength: float = 1.0,
              device: torch.device | str | None = None) -> FlowPlan:
    """Run ``set_timesteps`` and check the schedule; for ``strength < 1`` begin as diffusers' img2img does:
    the last ``floor(n * strength)`` of the ``n`` steps, from entry ``(n - floor(n * strength)) * order``."""
    n = check_int("num_inference_steps", num_inference_steps, minimum=1)
    _set_timesteps(scheduler, n, sigmas, device)
    name = type(scheduler).__name__
    timesteps = scheduler.timesteps
    table = scheduler.sigmas.detach().to("cpu", torch.float64)
    if len(timesteps) == 0 or table.shape[0] != len(timesteps) + 1:
        raise InputError(f"{name} made {len(timesteps)} timesteps and {table.shape[0]} sigmas; expected one sigma "
                         "per timestep and a final one")
    ok = bool(torch.isfinite(table).all()) and bool(((table >= 0) & (table <= 1)).all())
    if not ok or bool((table[1:] > table[:-1]).any()):
        raise InputError(
            f"{name} made sigmas {[round(v, 4) for v in table.tolist()[:6]]}... that are not a flow-matching schedule "
            "(non-increasing values in [0, 1]); check its config (e.g. use_karras_sigmas overrides use_flow_sigmas "
            "in DPMSolverMultistepScheduler)"
        )
    if float(table[-1]) != 0.0:
        raise InputError(
            f"{name}'s schedule ends at sigma={float(table[-1]):.4g} (SiT t={1 - float(table[-1]):.4g}), not at the "
            "data (sigma 0): its samples would keep that much noise; use final_sigmas_type='zero'"
        )
    begin = 0
    if strength != 1.0:
        run = math.floor(n * strength + 1e-9)  # diffusers: int(n * strength); 1e-9 keeps 0.29 * 100 at 29
        if run < 1:
            raise InputError(f"strength={strength} with num_inference_steps={n} leaves no step to run "
                             f"(floor(n * strength) = 0); raise strength or num_inference_steps")
        begin = (n - run) * int(getattr(scheduler, "order", 1))
    return FlowPlan(n, sigmas, begin, timesteps, scheduler.sigmas.detach().to("cpu", torch.float32))


def sample_flow(
    scheduler: Any,
    plan: FlowPlan,
    model_fn: ModelFn,
    x: Tensor,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Integrate from ``x`` (the state at ``plan.start_time``) to data with a diffusers flow scheduler.

    Each entry ``i`` of ``timesteps`` from ``plan.begin_index`` evaluates ``v = model_fn(x, t_i)`` at the SiT time
    ``t_i = 1 - sigmas[i]`` and steps with ``u = -v``. ``callback(k, t, x)`` runs after every completed step
    (Heun: after its corrector, i.e. every second entry, and after the final Euler entry), with the SiT time ``t``
    the state has reached; when it returns a tensor the run continues from it, and the scheduler is restarted at
    the next entry (``set_timesteps`` + ``set_begin_index``), so a multistep solver does not mix the model outputs
    of the replaced trajectory into the new one (UniPC's corrector would otherwise overwrite the replacement).
    Returns the final state in float32.
    """
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    kwargs = {"generator": generator} if takes_generator else {}
    _set_timesteps(scheduler, plan.num_inference_steps, plan.sigmas_arg, x.device)  # a clean solver state
    scheduler.set_begin_index(plan.begin_index)
    last = len(plan.timesteps) - 1
    k = 0
    for i in range(plan.begin_index, last + 1):
        t = plan.sit_time(i).to(x.device)
        v = model_fn(x, t.expand(x.shape[0]))  # (N, C, H, W) SiT velocity
        x = scheduler.step(-v.to(x.dtype), scheduler.timesteps[i], x, **kwargs).prev_sample
        done = i == last or getattr(scheduler, "state_in_first_order", True)
        if callback is not None and done:
            new = callback(k, plan.sit_time(i + 1), x)
            if new is not None:
                x = new
                if i < last:  # restart the solver's state at the next entry
                    _set_timesteps(scheduler, plan.num_inference_steps, plan.sigmas_arg, x.device)
                    scheduler.set_begin_index(i + 1)
        k += int(done)
    return x


def num_flow_steps(scheduler: Any, plan: FlowPlan) -> int:
    """Completed solver steps (``callback`` calls) of the run: Heun's two entries count as one step."""
    if isinstance(scheduler, FlowMatchHeunDiscreteScheduler):
        return (plan.nfe + 1) // 2
    return plan.nfe


def describe(scheduler: Any) -> str:
    """``"UniPCMultistepScheduler (shift 3.0)"``: the class and its shift, for messages."""
    cfg = scheduler.config
    shift = cfg.get("shift", cfg.get("flow_shift"))
    return type(scheduler).__name__ + (f" (shift {shift})" if shift is not None else "")
