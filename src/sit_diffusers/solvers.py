"""Steps over a drift function: ODE Euler / Heun / midpoint / RK4, adaptive ODE via torchdiffeq,
SDE Euler-Maruyama / Heun. They know nothing of SiT, interpolants or guidance.

Signatures (k-diffusion style, one per kind):

* ``drift(x, t) -> dx/dt`` with ``x`` of shape ``(N, ...)`` and ``t`` of shape ``(N,)``;
* ``diffusion(t) -> D_t`` broadcastable against ``x``, for ``dX = f dt + sqrt(2 D_t) dW``;
* a fixed step maps ``(drift, x, t, t_next)`` to ``x_next``; an SDE step also takes a standard normal
  ``noise`` of the shape of ``x`` (the caller draws it, so Brownian increments can be replayed).

Each solver carries its ``order`` (deterministic convergence order) and ``evals`` (drift calls per step).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch
from torch import Tensor

Drift = Callable[[Tensor, Tensor], Tensor]
Diffusion = Callable[[Tensor], Tensor]


def _vec(t: Tensor, x: Tensor) -> Tensor:
    """Scalar time -> ``(N,)`` vector in the dtype/device of ``x``."""
    return torch.ones(x.shape[0], dtype=x.dtype, device=x.device) * t  # (N,)


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1))) if v.ndim == 1 else v


# ----------------------------------------------------------------------------------------------------------
# ODE steps (Butcher tableaus written out; each equals torchdiffeq's fixed-grid method of the same name)
#
# Each method is written once, as a *stage generator*: it yields every point ``(x_j, t_j)`` where it needs
# the drift, receives ``f(x_j, t_j)`` by ``send`` and returns ``x_next``. ``drive`` feeds it a drift function
# (the ``*_step`` functions below, used by ``integrate_fixed``); ``SiTSampler.step`` feeds it one model
# output per call, so the diffusers step loop and the whole-trajectory sampler do the same arithmetic.
# ----------------------------------------------------------------------------------------------------------

Stages = Generator[tuple[Tensor, Tensor], Tensor, Tensor]


def euler_stages(x: Tensor, t: Tensor, t_next: Tensor) -> Stages:
    """Explicit Euler, order 1: ``x + h f(x, t)``, ``h = t_next - t``."""
    h = t_next - t
    k1 = yield x, t
    return x + h * k1


def heun_stages(x: Tensor, t: Tensor, t_next: Tensor) -> Stages:
    """Heun's method (explicit trapezoid, torchdiffeq ``heun2``), order 2:
    ``k1 = f(x, t)``, ``k2 = f(x + h k1, t + h)``, ``x + h (k1/2 + k2/2)``."""
    h = t_next - t
    k1 = yield x, t
    k2 = yield x + h * k1, t + h
    return x + h * (k1 * 0.5 + k2 * 0.5)


def midpoint_stages(x: Tensor, t: Tensor, t_next: Tensor) -> Stages:
    """Explicit midpoint, order 2: ``x + h f(x + h/2 f(x, t), t + h/2)``."""
    h = t_next - t
    k1 = yield x, t
    k2 = yield x + k1 * (0.5 * h), t + 0.5 * h
    return x + h * k2


def rk4_stages(x: Tensor, t: Tensor, t_next: Tensor) -> Stages:
    """Classical Runge-Kutta 3/8 rule (torchdiffeq ``rk4``), order 4."""
    h = t_next - t
    k1 = yield x, t
    k2 = yield x + h * k1 / 3, t + h / 3
    k3 = yield x + h * (k2 - k1 / 3), t + 2 * h / 3
    k4 = yield x + h * (k1 - k2 + k3), t_next
    return x + h * (k1 + 3 * (k2 + k3) + k4) * 0.125


def drive(stages: Stages, drift: Drift) -> Tensor:
    """Run a stage generator to its end, answering each ``(x_j, t_j)`` with ``drift(x_j, t_j)`` (``t_j``
    as an ``(N,)`` vector); returns what the generator returns."""
    x_j, t_j = next(stages)
    while True:
        try:
            x_j, t_j = stages.send(drift(x_j, _vec(t_j, x_j)))
        except StopIteration as done:
            return done.value


def euler_step(drift: Drift, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """One explicit Euler step (:func:`euler_stages`)."""
    return drive(euler_stages(x, t, t_next), drift)


def heun_step(drift: Drift, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """One Heun step (:func:`heun_stages`)."""
    return drive(heun_stages(x, t, t_next), drift)


def midpoint_step(drift: Drift, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """One explicit midpoint step (:func:`midpoint_stages`)."""
    return drive(midpoint_stages(x, t, t_next), drift)


def rk4_step(drift: Drift, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """One RK4 (3/8 rule) step (:func:`rk4_stages`)."""
    return drive(rk4_stages(x, t, t_next), drift)


@dataclass(frozen=True)
class FixedSolver:
    """A fixed-step ODE method: its stage generator, order and drift evaluations per step."""

    stages: Callable[[Tensor, Tensor, Tensor], Stages]
    order: int
    evals: int

    def step(self, drift: Drift, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        """``x`` at ``t`` -> ``x`` at ``t_next``."""
        return drive(self.stages(x, t, t_next), drift)


ODE_FIXED_SOLVERS: dict[str, FixedSolver] = {
    "euler": FixedSolver(euler_stages, order=1, evals=1),
    "heun": FixedSolver(heun_stages, order=2, evals=2),
    "midpoint": FixedSolver(midpoint_stages, order=2, evals=2),
    "rk4": FixedSolver(rk4_stages, order=4, evals=4),
}
ODE_ADAPTIVE_SOLVERS: dict[str, int] = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}


def integrate_fixed(
    solver: FixedSolver,
    drift: Drift,
    x: Tensor,
    grid: Tensor,
    callback: Callable[[int, Tensor, Tensor], Tensor | None] | None = None,
) -> list[Tensor]:
    """Integrate ``dx/dt = drift(x, t)`` over ``grid`` (``(K+1,)``, either direction) with a fixed method.

    ``callback(i, t, x)`` after step ``i`` may return a tensor that replaces ``x`` for the next step.
    Returns the states at every grid point (``K+1`` tensors, the first is ``x``).
    """
    traj = [x]
    for i in range(grid.shape[0] - 1):
        x = solver.step(drift, x, grid[i], grid[i + 1])
        if callback is not None:
            replaced = callback(i, grid[i + 1], x)
            if replaced is not None:  # the caller continues from its own state (diffusers' callback contract)
                x = replaced
        traj.append(x)
    return traj


def integrate_adaptive(
    drift: Drift,
    x: Tensor | tuple[Tensor, ...],
    grid: Tensor,
    *,
    method: str = "dopri5",
    atol: float = 1e-6,
    rtol: float = 1e-3,
    land_on_end: bool = True,
) -> Tensor | tuple[Tensor, ...]:
    """Adaptive ODE solve with ``torchdiffeq.odeint``, outputs at ``grid`` (``(K+1,)``, either direction).

    ``land_on_end`` forces a step boundary at ``grid[-1]`` (torchdiffeq ``step_t``) so the drift is never
    evaluated past the end of the interval; the official code lets dopri5 overshoot (its VP runs evaluate
    at t > 1, where the VP path is undefined, and fail). ``x`` may be a tuple of tensors (as torchdiffeq).
    """
    from torchdiffeq import odeint

    if method not in ODE_ADAPTIVE_SOLVERS:
        raise ValueError(f"unknown adaptive solver {method!r}; valid: {', '.join(ODE_ADAPTIVE_SOLVERS)}")
    first = x[0] if isinstance(x, tuple) else x

    def func(t: Tensor, state: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
        return drift(state, _vec(t, first))

    n_state = len(x) if isinstance(x, tuple) else 1
    options = {"step_t": grid[-1:]} if land_on_end else None
    return odeint(func, x, grid, method=method, atol=[atol] * n_state, rtol=[rtol] * n_state, options=options)


# ----------------------------------------------------------------------------------------------------------
# SDE steps: dX = f(X, t) dt + sqrt(2 D_t) dW
# ----------------------------------------------------------------------------------------------------------


SDEStages = Generator[tuple[Tensor, Tensor], Tensor, tuple[Tensor, Tensor]]


def euler_maruyama_stages(diffusion: Diffusion, x: Tensor, t: Tensor, dt: Tensor, noise: Tensor) -> SDEStages:
    """Euler-Maruyama (strong order 1/2, weak order 1), one drift call:
    ``mean = x + f(x, t) dt``, ``x_next = mean + sqrt(2 D_t) sqrt(dt) z``. Returns ``(x_next, mean)``."""
    f = yield x, t
    mean = x + f * dt
    return mean + torch.sqrt(2 * _bcast(diffusion(_vec(t, x)), x)) * (noise * torch.sqrt(dt)), mean


def sde_heun_stages(diffusion: Diffusion, x: Tensor, t: Tensor, dt: Tensor, noise: Tensor) -> SDEStages:
    """Stochastic Heun (official ``__Heun_step``), two drift calls: noise first, then a Heun ODE step,
    ``x^ = x + sqrt(2 D_t) sqrt(dt) z``, ``k1 = f(x^, t)``, ``k2 = f(x^ + dt k1, t + dt)``,
    ``x_next = x^ + dt (k1 + k2) / 2``. Returns ``(x_next, x^)``."""
    x_hat = x + torch.sqrt(2 * _bcast(diffusion(_vec(t, x)), x)) * (noise * torch.sqrt(dt))
    k1 = yield x_hat, t
    k2 = yield x_hat + dt * k1, t + dt
    return x_hat + 0.5 * dt * (k1 + k2), x_hat


def euler_maruyama_step(
    drift: Drift, diffusion: Diffusion, x: Tensor, t: Tensor, dt: Tensor, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """One Euler-Maruyama step (:func:`euler_maruyama_stages`); returns ``(x_next, mean)``."""
    return drive(euler_maruyama_stages(diffusion, x, t, dt, noise), drift)


def sde_heun_step(
    drift: Drift, diffusion: Diffusion, x: Tensor, t: Tensor, dt: Tensor, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """One stochastic Heun step (:func:`sde_heun_stages`); returns ``(x_next, x^)``."""
    return drive(sde_heun_stages(diffusion, x, t, dt, noise), drift)


@dataclass(frozen=True)
class SDESolver:
    """A fixed-step SDE method: its stage generator and drift evaluations per step."""

    stages: Callable[[Diffusion, Tensor, Tensor, Tensor, Tensor], SDEStages]
    evals: int

    def step(
        self, drift: Drift, diffusion: Diffusion, x: Tensor, t: Tensor, dt: Tensor, noise: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``x`` at ``t`` -> ``(x at t + dt, intermediate)`` with the standard normal ``noise``."""
        return drive(self.stages(diffusion, x, t, dt, noise), drift)


SDE_SOLVERS: dict[str, SDESolver] = {
    "euler": SDESolver(euler_maruyama_stages, evals=1),
    "heun": SDESolver(sde_heun_stages, evals=2),
}
