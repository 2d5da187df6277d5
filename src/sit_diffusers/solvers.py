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

from collections.abc import Callable
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
# ----------------------------------------------------------------------------------------------------------


def euler_step(drift: Drift, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """Explicit Euler, order 1: ``x + h f(x, t)``, ``h = t_next - t``."""
    h = t_next - t
    return x + h * drift(x, _vec(t, x))


def heun_step(drift: Drift, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """Heun's method (explicit trapezoid, torchdiffeq ``heun2``), order 2:
    ``k1 = f(x, t)``, ``k2 = f(x + h k1, t + h)``, ``x + h (k1/2 + k2/2)``."""
    h = t_next - t
    k1 = drift(x, _vec(t, x))
    k2 = drift(x + h * k1, _vec(t + h, x))
    return x + h * (k1 * 0.5 + k2 * 0.5)


def midpoint_step(drift: Drift, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """Explicit midpoint, order 2: ``x + h f(x + h/2 f(x, t), t + h/2)``."""
    h = t_next - t
    k1 = drift(x, _vec(t, x))
    return x + h * drift(x + k1 * (0.5 * h), _vec(t + 0.5 * h, x))


def rk4_step(drift: Drift, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """Classical Runge-Kutta 3/8 rule (torchdiffeq ``rk4``), order 4."""
    h = t_next - t
    k1 = drift(x, _vec(t, x))
    k2 = drift(x + h * k1 / 3, _vec(t + h / 3, x))
    k3 = drift(x + h * (k2 - k1 / 3), _vec(t + 2 * h / 3, x))
    k4 = drift(x + h * (k1 - k2 + k3), _vec(t_next, x))
    return x + h * (k1 + 3 * (k2 + k3) + k4) * 0.125


@dataclass(frozen=True)
class FixedSolver:
    """A fixed-step ODE method: its step function, order and drift evaluations per step."""

    step: Callable[[Drift, Tensor, Tensor, Tensor], Tensor]
    order: int
    evals: int


ODE_FIXED_SOLVERS: dict[str, FixedSolver] = {
    "euler": FixedSolver(euler_step, order=1, evals=1),
    "heun": FixedSolver(heun_step, order=2, evals=2),
    "midpoint": FixedSolver(midpoint_step, order=2, evals=2),
    "rk4": FixedSolver(rk4_step, order=4, evals=4),
}
# torchdiffeq adaptive methods and their orders
ODE_ADAPTIVE_SOLVERS: dict[str, int] = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}


def integrate_fixed(
    solver: FixedSolver,
    drift: Drift,
    x: Tensor,
    grid: Tensor,
    callback: Callable[[int, Tensor, Tensor], None] | None = None,
) -> list[Tensor]:
    """Integrate ``dx/dt = drift(x, t)`` over ``grid`` (``(K+1,)``, either direction) with a fixed method.

    Returns the states at every grid point (``K+1`` tensors, the first is ``x``).
    """
    traj = [x]
    for i in range(grid.shape[0] - 1):
        x = solver.step(drift, x, grid[i], grid[i + 1])
        if callback is not None:
            callback(i, grid[i + 1], x)
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


def euler_maruyama_step(
    drift: Drift, diffusion: Diffusion, x: Tensor, t: Tensor, dt: Tensor, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """Euler-Maruyama (strong order 1/2, weak order 1), one drift call:
    ``mean = x + f(x, t) dt``, ``x_next = mean + sqrt(2 D_t) sqrt(dt) z``. Returns ``(x_next, mean)``."""
    tv = _vec(t, x)
    mean = x + drift(x, tv) * dt
    return mean + torch.sqrt(2 * _bcast(diffusion(tv), x)) * (noise * torch.sqrt(dt)), mean


def sde_heun_step(
    drift: Drift, diffusion: Diffusion, x: Tensor, t: Tensor, dt: Tensor, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """Stochastic Heun (official ``__Heun_step``), two drift calls: noise first, then a Heun ODE step,
    ``x^ = x + sqrt(2 D_t) sqrt(dt) z``, ``k1 = f(x^, t)``, ``k2 = f(x^ + dt k1, t + dt)``,
    ``x_next = x^ + dt (k1 + k2) / 2``. Returns ``(x_next, x^)``."""
    tv = _vec(t, x)
    x_hat = x + torch.sqrt(2 * _bcast(diffusion(tv), x)) * (noise * torch.sqrt(dt))
    k1 = drift(x_hat, tv)
    k2 = drift(x_hat + dt * k1, tv + dt)
    return x_hat + 0.5 * dt * (k1 + k2), x_hat


@dataclass(frozen=True)
class SDESolver:
    """A fixed-step SDE method: step function and drift evaluations per step."""

    step: Callable[[Drift, Diffusion, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
    evals: int


SDE_SOLVERS: dict[str, SDESolver] = {
    "euler": SDESolver(euler_maruyama_step, evals=1),
    "heun": SDESolver(sde_heun_step, evals=2),
}
