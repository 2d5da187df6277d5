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

import math
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


# ----------------------------------------------------------------------------------------------------------
# Multistep methods: one drift call per step, reusing the drifts of earlier steps.
#
# A multistep stage generator takes ``(x, t, t_next, history, coefficients)`` (the SDE one also ``noise``):
# ``history`` (:class:`History`) holds the earlier steps of the same solve and is extended by the generator;
# ``coefficients(t) -> (alpha_t, sigma_t, alpha'_t, sigma'_t)`` (Python floats, float64) is the path
# ``x_t = alpha_t x1 + sigma_t x0`` the exponential integrators are written in (t = 0 noise, t = 1 data).
# The caller owns the history: one per solve (``SiTSampler.set_timesteps`` makes a new one), so that the
# diffusers step loop and the whole-trajectory sampler do the same arithmetic.
# ----------------------------------------------------------------------------------------------------------

Coefficients = Callable[[float], tuple[float, float, float, float]]


@dataclass
class History:
    """Earlier steps of one multistep solve, oldest first (the last three are kept): the step start
    ``times`` (floats), the ``states`` the steps started from (after a corrector), the ``drifts`` there,
    the data predictions ``data`` (exponential integrators only) and each step's predictor ``orders``."""

    times: list[float]
    states: list[Tensor]
    drifts: list[Tensor]
    data: list[Tensor | None]
    orders: list[int]

    @classmethod
    def new(cls) -> History:
        return cls([], [], [], [], [])

    def __len__(self) -> int:
        return len(self.times)

    def push(self, t: float, x: Tensor, f: Tensor, d: Tensor | None = None) -> None:
        for seq, v in ((self.times, t), (self.states, x), (self.drifts, f), (self.data, d)):
            seq.append(v)
            del seq[:-3]

    def set_order(self, order: int) -> None:
        self.orders.append(order)
        del self.orders[:-3]


def adams_weights(nodes: list[float], t: float, t_next: float) -> list[float]:
    """``w_j = int_t^t_next L_j(s) ds`` for the Lagrange basis ``L_j`` on ``nodes`` (variable-step
    Adams-Bashforth: ``x_next = x + sum_j w_j f(t_j)``; Hairer, Norsett & Wanner, Solving ODEs I, III.5).
    Computed in float64 on times relative to ``t``."""
    tau = [n - t for n in nodes]
    h = t_next - t
    weights = []
    for j, tj in enumerate(tau):
        poly = [1.0]  # coefficients of prod_{m != j} (s - tau_m) / (tau_j - tau_m), lowest degree first
        for m, tm in enumerate(tau):
            if m == j:
                continue
            den = tj - tm
            nxt = [0.0] * (len(poly) + 1)
            for p, c in enumerate(poly):
                nxt[p] -= c * tm / den
                nxt[p + 1] += c / den
            poly = nxt
        weights.append(sum(c * h ** (p + 1) / (p + 1) for p, c in enumerate(poly)))
    return weights


def adams_bashforth_stages(order: int) -> Callable[..., Stages]:
    """Variable-step Adams-Bashforth of ``order`` (2 or 3) on the drift, one evaluation per step:
    ``x_next = x + sum_j w_j f_j`` over the last ``order`` step starts (:func:`adams_weights`).

    Start (the global order needs the first steps' local errors to be O(h^(order+1))): AB2 makes its first
    step with Euler (one step of local error O(h^2) keeps global order 2); AB3 makes its first step with
    Heun (two evaluations, local error O(h^3)), its second with AB2, then AB3. So AB2 costs ``n`` drift
    evaluations for ``n`` steps and AB3 ``n + 1``."""

    def stages(x: Tensor, t: Tensor, t_next: Tensor, history: History, coefficients: Coefficients | None = None
               ) -> Stages:
        tf, tn = float(t), float(t_next)
        if order >= 3 and len(history) == 0:  # Heun start
            h = t_next - t
            k1 = yield x, t
            history.push(tf, x, k1)
            history.set_order(2)
            k2 = yield x + h * k1, t + h
            return x + h * (k1 * 0.5 + k2 * 0.5)
        f = yield x, t
        return adams_bashforth_step(history, order, x, f, tf, tn)

    return stages


def _weighted_sum(x: Tensor, weights: list[float], drifts: list[Tensor]) -> Tensor:
    """``x + sum_j w_j f_j``, accumulated in order."""
    for wj, fj in zip(weights, drifts, strict=True):
        x = x + wj * fj
    return x


def adams_bashforth_step(history: History, order: int, x: Tensor, f: Tensor, tf: float, tn: float) -> Tensor:
    """Record ``(tf, x, f)`` in ``history`` and step from ``x`` at ``tf`` to ``tn`` with Adams-Bashforth of
    order ``min(order, len(history))`` (:func:`adams_weights` over the last step starts)."""
    history.push(tf, x, f)
    q = min(order, len(history))
    history.set_order(q)
    return _weighted_sum(x, adams_weights(history.times[-q:], tf, tn), history.drifts[-q:])


def adams_bashforth_moulton_stages(corrector_points: int = 4) -> Callable[..., Stages]:
    """Variable-step Adams-Bashforth-Moulton predictor-corrector in PEC mode, one evaluation per step
    (Hairer, Norsett & Wanner, Solving ODEs I, Sec. III.1, variable-step Adams methods, and III.8 on
    predictor-corrector modes), reusing the next step's evaluation as the UniC corrector of UniPC does (Zhao
    et al. 2023, arXiv 2302.04867) instead of paying for one:

    * P: the previous step predicted ``x_k`` with Adams-Bashforth 3 (:func:`adams_bashforth_stages`, the same
      Heun start and AB2 second step);
    * E: step ``k`` evaluates ``f_k = f(x_k, t_k)`` at that prediction, as any AB step does;
    * C: ``x_k`` is replaced by the variable-step Adams-Moulton value ``x_{k-1} + sum_j w_j f_j`` over the
      last ``corrector_points`` nodes up to and including ``t_k`` (fewer at the start; :func:`adams_weights`
      on ``[t_{k-1}, t_k]``);
    * no second E: ``f_k`` is moved to the corrected state along the path's linear part, holding the data
      prediction ``x1^`` fixed, ``f_k += (sigma'_k / sigma_k) (x_k^C - x_k^P)`` (``v = (sigma' x + (alpha'
      sigma - alpha sigma') x1^) / sigma``; Linear: ``-(x_k^C - x_k^P) / (1 - t_k)``). This is what UniPC gets
      by reusing the data prediction rather than the velocity; without it the stiff ``-x / (1 - t)`` part
      of the velocity near the data makes plain PEC worse than AB3 at few steps. Skipped where ``sigma_k = 0``
      or no path is given;
    * the AB3 step to ``t_{k+1}`` starts from ``x_k^C`` with ``f_{k-2}, f_{k-1}, f_k``.

    The cost is AB3's (``n + 1`` evaluations for ``n`` steps); the last state is not corrected. The
    steady-state local error is O(h^5) with 4 corrector points (a PEC pair has order min(p, p* + 1)), but
    the Heun start step's O(h^3) local error keeps the global order at 3; the gain is the corrector's
    error constant (AM4 ``-19/720`` against AB3's ``3/8``). A callback's replacement of ``x_k`` is corrected
    away (only ``f_k`` sees it), as with ``unipc``."""
    predictor = adams_bashforth_stages(3)

    def stages(x: Tensor, t: Tensor, t_next: Tensor, history: History, coefficients: Coefficients | None = None
               ) -> Stages:
        if len(history) == 0:
            return (yield from predictor(x, t, t_next, history, coefficients))
        tf, tn = float(t), float(t_next)
        f = yield x, t
        q = min(corrector_points - 1, len(history))  # earlier nodes of the corrector
        w = adams_weights([*history.times[-q:], tf], history.times[-1], tf)
        x_pred, x = x, _weighted_sum(history.states[-1], w, [*history.drifts[-q:], f])
        if coefficients is not None:
            _, s_t, _, ds_t = coefficients(tf)
            if s_t > 0:
                f = f + (x - x_pred) * (ds_t / s_t)
        return adams_bashforth_step(history, 3, x, f, tf, tn)

    return stages


def data_prediction(x: Tensor, v: Tensor, coefficients: Coefficients, t: float) -> Tensor:
    """The data prediction ``x1^ = E[x1 | x_t]`` from the velocity ``v = alpha' x1^ + sigma' x0^`` and
    ``x = alpha x1^ + sigma x0^``: ``x1^ = (sigma' x - sigma v) / (alpha sigma' - sigma alpha')``
    (Linear: ``x + (1 - t) v``; the denominator is ``-alpha sigma lambda'``, never 0 inside the path)."""
    a, s, da, ds = coefficients(t)
    den = a * ds - s * da
    return x * (ds / den) + v * (-s / den)


def _lam(coefficients: Coefficients, t: float) -> float:
    """``lambda_t = log(alpha_t / sigma_t)`` (-inf at alpha = 0, +inf at sigma = 0)."""
    a, s, _, _ = coefficients(t)
    if a <= 0:
        return -math.inf
    if s <= 0:
        return math.inf
    return math.log(a) - math.log(s)


def _ratio(h: float, h_prev: float) -> float | None:
    """``h / h_prev`` when both log-SNR steps are finite (else ``None``: use the first-order update)."""
    if not (math.isfinite(h) and math.isfinite(h_prev)) or h_prev == 0:
        return None
    return h / h_prev


def _ddim(x: Tensor, d: Tensor, coefficients: Coefficients, t: float, t_next: float, eta: float = 0.0
          ) -> tuple[Tensor, float]:
    """First-order exponential-integrator step in data prediction (DDIM; DPM-Solver++(1), Lu et al. 2022,
    arXiv 2211.01095, Eq. 9; with ``eta`` the stochastic SDE-DPM-Solver++(1)'s mean):
    ``x_next = (sigma_n / sigma) e^{-eta h} x + alpha_n (1 - e^{-(1 + eta) h}) d`` with
    ``e^{-h} = alpha sigma_n / (sigma alpha_n)``. Written as ``c_x x + c_d d`` so that it stays finite at
    ``alpha = 0`` (t = 0) and ``sigma_n = 0`` (t = 1). Returns ``(mean, 1 - e^{-(1 + eta) h})``."""
    a, s, _, _ = coefficients(t)
    a_n, s_n, _, _ = coefficients(t_next)
    e_h = a * s_n / (s * a_n)  # e^{-h}
    c_x = s_n / s * e_h**eta
    one_minus = 1.0 - e_h ** (1.0 + eta)
    return x * c_x + d * (a_n * one_minus), one_minus


def dpm_solver_2m_stages(corrector: bool = False) -> Callable[..., Stages]:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2) in data prediction, written in the
    path's ``alpha_t, sigma_t`` (SiT time; ``lambda = log(alpha / sigma)`` grows towards the data):
    ``x_next = DDIM(x, D)`` with ``D = d_k + (h / (2 h_prev)) (d_k - d_{k-1})``, where
    ``d = x1^`` is the data prediction converted from the velocity (:func:`data_prediction`),
    ``h = lambda_next - lambda``. The first step, and a step whose ``h`` or ``h_prev`` is infinite (from
    ``alpha = 0`` at t = 0, or into ``sigma = 0`` at t = 1), uses the first-order update (diffusers'
    ``lower_order_final``, forced here by the math).

    ``corrector=True`` adds the UniC corrector of UniPC (Zhao et al. 2023, arXiv 2302.04867, Algorithm 2,
    ``B(h) = e^{-h} - 1``, "bh2"; the predictor UniP-2 with bh2 is this DPM-Solver++(2M) update): at the
    start of step k the state ``x_k`` predicted by step k-1 is corrected with the model output at ``x_k``
    itself, which the step evaluates anyway, so the number of evaluations is unchanged (one per step). The
    corrector has the order of step k-1's predictor; the last state is not corrected (no evaluation there)."""

    def stages(x: Tensor, t: Tensor, t_next: Tensor, history: History, coefficients: Coefficients) -> Stages:
        tf, tn = float(t), float(t_next)
        v = yield x, t
        d = data_prediction(x, v, coefficients, tf)
        if corrector and len(history) > 0:
            x = _unic(x, d, history, coefficients, tf)
        history.push(tf, x, v, d)
        mean, one_minus = _ddim(x, d, coefficients, tf, tn)
        r = _ratio(_lam(coefficients, tn) - _lam(coefficients, tf),
                   _lam(coefficients, tf) - _lam(coefficients, history.times[-2])) if len(history) > 1 else None
        history.set_order(1 if r is None else 2)
        if r is None:
            return mean
        a_n = coefficients(tn)[0]
        return mean + (d - history.data[-2]) * (a_n * one_minus * 0.5 * r)

    return stages


def _unic(x: Tensor, d: Tensor, history: History, coefficients: Coefficients, t: float) -> Tensor:
    """UniC (Zhao et al. 2023, Algorithm 2 / diffusers ``multistep_uni_c_bh_update``, bh2, data
    prediction): re-do step k-1 (``t_{k-1} -> t``) from its start ``x_{k-1}`` with the new data prediction
    ``d`` at ``t`` as an extra node. Order 1: ``rho = 1/2`` (trapezoid in ``d``); order 2: ``rho`` solves
    ``[[1, 1], [r, 1]] rho = [b_1, b_2]``, ``b_i = i! h phi_{i+1}(h) / B(h)``."""
    t0, x0, d0 = history.times[-1], history.states[-1], history.data[-1]
    assert d0 is not None
    a_t = coefficients(t)[0]
    lam_t, lam_0 = _lam(coefficients, t), _lam(coefficients, t0)
    h = lam_t - lam_0
    base, one_minus = _ddim(x0, d0, coefficients, t0, t)
    b_h = -one_minus  # B(h) = e^{-h} - 1
    order = history.orders[-1] if history.orders else 1
    if order >= 2 and len(history) > 1 and math.isfinite(h):
        lam_m = _lam(coefficients, history.times[-2])
        r = (lam_m - lam_0) / h
        if math.isfinite(r) and r != 1:
            hh = -h
            phi1 = math.expm1(hh)
            b1 = (phi1 / hh - 1) / b_h
            b2 = ((phi1 / hh - 1) / hh - 0.5) * 2 / b_h
            rho0 = (b1 - b2) / (1 - r)
            rho1 = b1 - rho0
            d_m = history.data[-2]
            assert d_m is not None
            return base - ((d_m - d0) * (rho0 / r) + (d - d0) * rho1) * (a_t * b_h)
    return base - (d - d0) * (a_t * b_h * 0.5)


@dataclass(frozen=True)
class MultistepSolver:
    """A multistep ODE method: its stage generator (which reads and extends a :class:`History`), order,
    drift evaluations per step and extra evaluations of its start, and whether it needs the path
    (exponential integrators)."""

    stages: Callable[..., Stages]
    order: int
    evals: int
    start_evals: int = 0
    exponential: bool = False

    def evaluations(self, steps: int) -> int:
        """Drift calls of ``steps`` steps from an empty history."""
        return steps * self.evals + (self.start_evals if steps > 0 else 0)


ODE_MULTISTEP_SOLVERS: dict[str, MultistepSolver] = {
    "ab2": MultistepSolver(adams_bashforth_stages(2), order=2, evals=1),
    "ab3": MultistepSolver(adams_bashforth_stages(3), order=3, evals=1, start_evals=1),
    "abm4": MultistepSolver(adams_bashforth_moulton_stages(4), order=3, evals=1, start_evals=1),
    "dpm++2m": MultistepSolver(dpm_solver_2m_stages(), order=2, evals=1, exponential=True),
    "unipc": MultistepSolver(dpm_solver_2m_stages(corrector=True), order=3, evals=1, exponential=True),
}


def integrate_multistep(
    solver: MultistepSolver,
    drift: Drift,
    x: Tensor,
    grid: Tensor,
    coefficients: Coefficients | None = None,
    callback: Callable[[int, Tensor, Tensor], Tensor | None] | None = None,
) -> list[Tensor]:
    """:func:`integrate_fixed` for a multistep method (one history for the whole solve)."""
    history = History.new()
    traj = [x]
    for i in range(grid.shape[0] - 1):
        x = drive(solver.stages(x, grid[i], grid[i + 1], history, coefficients), drift)
        if callback is not None:
            replaced = callback(i, grid[i + 1], x)
            if replaced is not None:
                x = replaced
        traj.append(x)
    return traj


def sde_dpm_solver_2m_stages(diffusion: Diffusion, x: Tensor, t: Tensor, dt: Tensor, noise: Tensor,
                             history: History, coefficients: Coefficients, eta: float) -> SDEStages:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Appendix; diffusers' ``sde-dpmsolver++``,
    midpoint form) for ``dX = [v + D_t s] dt + sqrt(2 D_t) dW`` with ``D_t = eta lambda_t`` (SiT's SBDM
    diffusion of norm ``eta``; ``lambda_t = sigma_t^2 d/dt log(alpha_t / sigma_t)``). With the data
    prediction ``d`` held fixed over the step the SDE is linear and solved exactly:
    ``x_next = (sigma_n / sigma) e^{-eta h} x + alpha_n (1 - e^{-(1+eta) h}) D + sigma_n sqrt(1 - e^{-2 eta h}) z``
    (derivation: ``y = x - alpha d`` obeys ``dy = (sigma'/sigma - eta lambda') y dt + sqrt(2 D_t) dW``); ``D``
    is the 2M combination of :func:`dpm_solver_2m_stages`. One evaluation per step; ``eta = 1`` is diffusers'
    SDE update, ``eta = 0`` DPM-Solver++(2M). Returns ``(x_next, mean)``."""
    tf, tn = float(t), float(t + dt)
    v = yield x, t
    d = data_prediction(x, v, coefficients, tf)
    history.push(tf, x, v, d)
    mean, one_minus = _ddim(x, d, coefficients, tf, tn, eta)
    r = _ratio(_lam(coefficients, tn) - _lam(coefficients, tf),
               _lam(coefficients, tf) - _lam(coefficients, history.times[-2])) if len(history) > 1 else None
    history.set_order(1 if r is None else 2)
    a, s, _, _ = coefficients(tf)
    a_n, s_n, _, _ = coefficients(tn)
    if r is not None:
        mean = mean + (d - history.data[-2]) * (a_n * one_minus * 0.5 * r)
    e_h = a * s_n / (s * a_n)
    std = s_n * math.sqrt(max(0.0, 1.0 - e_h ** (2 * eta)))
    return mean + noise * std, mean


SDE_MULTISTEP_SOLVERS: dict[str, Callable[..., SDEStages]] = {"dpm++2m": sde_dpm_solver_2m_stages}
