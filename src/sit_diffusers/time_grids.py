"""Time grids of the samplers, in SiT time (t = 0 noise, t = 1 data), forward from ``t0`` to ``t1``.

* ``uniform``: ``linspace(t0, t1, n + 1)`` (the official grid).
* ``shifted``: diffusers' flow-matching shift (``FlowMatchEulerDiscreteScheduler(shift=s)``, SD3, Esser et
  al. 2024, arXiv 2403.03206, Sec. 5.3.2) written in SiT time: their ``sigma = 1 - u`` on a uniform ``u``
  becomes ``sigma' = s sigma / (1 + (s - 1) sigma)``, ``t = 1 - sigma'`` (``s > 1`` puts more steps near
  the noise), mapped onto ``[t0, t1]``.
* ``edm``: Karras et al. 2022 (arXiv 2206.00364, Eq. 5): the noise-to-signal ratio ``r = sigma_t / alpha_t``
  of the path spaced as ``(r_max^(1/rho) + i/n (r_min^(1/rho) - r_max^(1/rho)))^rho`` with EDM's
  ``r_max = 80``, ``r_min = 0.002``, each inverted to a time of the path; the end points are ``t0`` and ``t1``.
* ``fitted``: a grid fitted to one model (:func:`fit_time_grid`), stored in the sampler config as the list
  of its ``m + 1`` times. It defines a monotone time warp ``t = w(u)`` of a uniform ``u`` in [0, 1]: the
  fitted times placed at ``u_i = i / m``, joined by the monotone cubic (PCHIP) interpolant of Fritsch &
  Carlson 1980 (SIAM J. Numer. Anal. 17(2); the slopes of Fritsch & Butland 1984, as scipy's
  ``PchipInterpolator``). A run of ``m`` steps uses the fitted times exactly; any other step count samples
  the warp at a uniform ``u`` (:func:`warp_grid`), so it stays strictly increasing from ``t0`` to ``t1``
  and keeps the fitted grid's density of steps.

Torch and the standard library only (``sit-generate`` imports it without diffusers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .interpolants import Interpolant
from .validation import InputError

TIME_GRIDS: tuple[str, ...] = ("uniform", "shifted", "edm", "fitted")
EDM_RATIO_MAX = 80.0
EDM_RATIO_MIN = 0.002


def uniform_grid(t0: float, t1: float, points: int) -> Tensor:
    """``linspace(t0, t1, points)`` in float64."""
    return torch.linspace(t0, t1, points, dtype=torch.float64)


def shifted_grid(t0: float, t1: float, points: int, shift: float) -> Tensor:
    """diffusers' flow shift in SiT time (module docstring), float64; ``shift = 1`` is uniform."""
    sigma = 1.0 - torch.linspace(0.0, 1.0, points, dtype=torch.float64)  # their sigma: 1 noise .. 0 data
    shifted = shift * sigma / (1.0 + (shift - 1.0) * sigma)
    grid = t0 + (t1 - t0) * (1.0 - shifted)
    grid[0], grid[-1] = t0, t1
    return grid


def time_of_ratio(interpolant: Interpolant, ratio: Tensor, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    """The time whose noise-to-signal ratio ``sigma_t / alpha_t`` is ``ratio`` (decreasing in t), by
    bisection in float64 (60 halvings: below 1e-15 of the interval)."""
    ratio = ratio.to(torch.float64)
    a = torch.full_like(ratio, lo)
    b = torch.full_like(ratio, hi)
    for _ in range(60):
        m = 0.5 * (a + b)
        r = interpolant.sigma(m)[0] / interpolant.alpha(m)[0]
        above = r > ratio  # still too noisy: the time is later
        a = torch.where(above, m, a)
        b = torch.where(above, b, m)
    return 0.5 * (a + b)


def edm_grid(t0: float, t1: float, points: int, rho: float, interpolant: Interpolant) -> Tensor:
    """Karras et al.'s polynomial spacing of ``sigma / alpha`` (module docstring), float64; end points
    ``t0``, ``t1``; interior points clipped into ``(t0, t1)``."""
    i = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    hi, lo = EDM_RATIO_MAX ** (1.0 / rho), EDM_RATIO_MIN ** (1.0 / rho)
    ratios = (hi + i * (lo - hi)) ** rho
    grid = time_of_ratio(interpolant, ratios)
    grid = grid.clamp(t0, t1)
    grid[0], grid[-1] = t0, t1
    return torch.cummax(grid, 0).values


def check_fitted_grid(name: str, grid: Any, t0: float, t1: float, tol: float = 1e-6) -> list[float]:
    """``grid`` as a list of floats: at least 2 finite numbers, strictly increasing, from ``t0`` to ``t1``
    (within ``tol``; the ends are set to ``t0``, ``t1`` exactly); ``InputError`` naming ``name`` otherwise."""
    if isinstance(grid, (str, bytes)) or not isinstance(grid, (Sequence, Tensor)):
        raise InputError(f"{name} must be a list of SiT times from {t0} to {t1}, got {grid!r}")
    values = grid.tolist() if isinstance(grid, Tensor) else list(grid)
    if len(values) < 2:
        raise InputError(f"{name} must hold at least 2 times (one step), got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"{name} must hold finite numbers, got {v!r} in {values!r}")
    values = [float(v) for v in values]
    if abs(values[0] - t0) > tol or abs(values[-1] - t1) > tol:
        raise InputError(f"{name} must run from the sampling interval's t0 = {t0} to t1 = {t1} (SiT time, 0 noise, "
                         f"1 data), got {values[0]} .. {values[-1]}")
    values[0], values[-1] = t0, t1
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise InputError(f"{name} must be strictly increasing, got {values!r}")
    return values


def pchip_slopes(h: Tensor, delta: Tensor) -> Tensor:
    """Knot slopes of the monotone cubic interpolant (Fritsch & Butland 1984, as scipy's
    ``PchipInterpolator``) from the knot spacings ``h`` ``(m,)`` and secants ``delta`` ``(m,)``, all
    ``delta > 0``: interior slopes are weighted harmonic means of the two secants, the end slopes the
    one-sided three-point formula, limited to ``[0, 3 delta]`` (Fritsch & Carlson's monotone region)."""
    m = delta.numel()
    d = torch.empty(m + 1, dtype=torch.float64)
    if m == 1:
        return d.fill_(float(delta[0]))
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]  # (m - 1,)
    d[1:-1] = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])

    def end(h0: Tensor, h1: Tensor, d0: Tensor, d1: Tensor) -> Tensor:
        slope = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        if slope <= 0:
            return torch.zeros((), dtype=torch.float64)
        return torch.minimum(slope, 3 * d0)

    d[0] = end(h[0], h[1], delta[0], delta[1])
    d[-1] = end(h[-1], h[-2], delta[-1], delta[-2])
    return d


def warp_grid(fitted: Sequence[float], points: int) -> Tensor:
    """``points`` times of the fitted time warp (module docstring), float64: the fitted times themselves
    when ``points == len(fitted)``, else the monotone cubic through ``(i / m, fitted[i])`` sampled at
    ``u = linspace(0, 1, points)``. Strictly increasing from ``fitted[0]`` to ``fitted[-1]``."""
    knots_t = torch.tensor([float(v) for v in fitted], dtype=torch.float64)  # (m + 1,)
    m = knots_t.numel() - 1
    if points < 2:
        raise InputError(f"a time grid needs at least 2 points (one step), got {points}")
    if points == m + 1:
        return knots_t.clone()
    h = torch.full((m,), 1.0 / m, dtype=torch.float64)
    delta = torch.diff(knots_t) / h
    slopes = pchip_slopes(h, delta)
    u = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    k = torch.clamp((u * m).floor().long(), 0, m - 1)  # the knot interval of each u
    s = (u - k.double() / m) / h[k]  # position in the interval, 0..1
    h00, h10 = (1 + 2 * s) * (1 - s) ** 2, s * (1 - s) ** 2  # cubic Hermite basis
    h01, h11 = s**2 * (3 - 2 * s), s**2 * (s - 1)
    grid = h00 * knots_t[k] + h10 * h[k] * slopes[k] + h01 * knots_t[k + 1] + h11 * h[k] * slopes[k + 1]
    grid[0], grid[-1] = knots_t[0], knots_t[-1]
    if bool((torch.diff(grid) <= 0).any()):  # a flat spot of the cubic in float64: the linear warp instead
        lin = knots_t[k] + s * (knots_t[k + 1] - knots_t[k])
        lin[0], lin[-1] = knots_t[0], knots_t[-1]
        return lin
    return grid


def make_grid(kind: str, t0: float, t1: float, points: int, *, shift: float = 1.0, rho: float = 7.0,
              interpolant: Interpolant | None = None, fitted: Sequence[float] | None = None) -> Tensor:
    """The forward grid of ``points`` times from ``t0`` to ``t1`` of ``kind`` (:data:`TIME_GRIDS`), float64."""
    if kind == "uniform":
        return uniform_grid(t0, t1, points)
    if kind == "shifted":
        return shifted_grid(t0, t1, points, shift)
    if kind == "edm":
        if interpolant is None:
            raise ValueError("the edm grid needs the interpolant")
        return edm_grid(t0, t1, points, rho, interpolant)
    if kind == "fitted":
        if fitted is None:
            raise InputError("time_grid='fitted' needs fitted_grid")
        return warp_grid(fitted, points)
    raise InputError(f"unknown time_grid {kind!r}; valid: {', '.join(TIME_GRIDS)}")


# ----------------------------------------------------------------------------------------------------------
# a grid fitted to one model
# ----------------------------------------------------------------------------------------------------------


def grid_from_logits(logits: Tensor, t0: float, t1: float) -> Tensor:
    """``t0 + (t1 - t0) cumsum(softmax(logits))``: any logits give a strictly increasing grid on [t0, t1]."""
    inc = torch.softmax(logits.to(torch.float64), 0)
    grid = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(inc, 0)])
    grid = t0 + (t1 - t0) * grid
    grid[0], grid[-1] = t0, t1
    return grid


def logits_from_grid(grid: Tensor) -> Tensor:
    """Inverse of :func:`grid_from_logits` (up to a constant)."""
    inc = torch.diff(grid.to(torch.float64))
    return torch.log(inc / inc.sum())


def nelder_mead(fn: Callable[[Tensor], float], x0: Tensor, *, max_evals: int = 200, step: float = 0.3
                ) -> tuple[Tensor, float, int]:
    """Minimise ``fn`` from ``x0`` with the Nelder-Mead simplex (Nelder & Mead 1965; the standard
    coefficients reflect 1, expand 2, contract 1/2, shrink 1/2). Returns ``(x, fn(x), evaluations)``."""
    n = x0.numel()
    simplex = [x0.clone()] + [x0 + step * torch.eye(n, dtype=x0.dtype)[i] for i in range(n)]
    values = [fn(p) for p in simplex]
    evals = len(values)
    while evals < max_evals:
        order = sorted(range(n + 1), key=lambda i: values[i])
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        centroid = torch.stack(simplex[:-1]).mean(0)
        reflected = centroid + (centroid - simplex[-1])
        fr = fn(reflected)
        evals += 1
        if fr < values[0]:
            expanded = centroid + 2.0 * (centroid - simplex[-1])
            fe = fn(expanded)
            evals += 1
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            inside = fr >= values[-1]
            contracted = centroid + 0.5 * ((simplex[-1] if inside else reflected) - centroid)
            fc = fn(contracted)
            evals += 1
            if fc < min(fr, values[-1]):
                simplex[-1], values[-1] = contracted, fc
            else:  # shrink towards the best point
                for i in range(1, n + 1):
                    simplex[i] = simplex[0] + 0.5 * (simplex[i] - simplex[0])
                    values[i] = fn(simplex[i])
                evals += n
    best = min(range(n + 1), key=lambda i: values[i])
    return simplex[best], values[best], evals


def fit_time_grid(
    run: Callable[[Tensor, Tensor], Tensor],
    noises: Sequence[Tensor],
    references: Sequence[Tensor],
    initial_grid: Tensor,
    *,
    max_evals: int = 200,
) -> tuple[list[float], float, float]:
    """Fit the interior points of a time grid to one model: minimise the RMSE of ``run(noise, grid)`` (a
    sampler run on the grid, e.g. ``lambda z, g: core.sample(model_fn, z, n, grid=g).sample``) to
    ``references`` (a tight-tolerance dopri5 solution from the same ``noises``) over a few batches.

    The grid is parametrised by the logits of its increments (:func:`grid_from_logits`: every candidate is
    strictly increasing from ``t0`` to ``t1``, which stay fixed) and searched with Nelder-Mead
    (:func:`nelder_mead`, no gradients through the model, so guidance and ``no_grad`` models work), from
    ``initial_grid`` (e.g. the best shifted grid), ``max_evals`` sampler runs at most.
    Returns ``(grid as a list of floats, RMSE of the initial grid, RMSE of the fitted grid)``.
    """
    if len(noises) != len(references) or not noises:
        raise InputError(f"noises and references must be non-empty lists of one length, got {len(noises)} and "
                         f"{len(references)}")
    t0, t1 = float(initial_grid[0]), float(initial_grid[-1])

    def loss(logits: Tensor) -> float:
        grid = grid_from_logits(logits, t0, t1)
        se, count = 0.0, 0
        for z, ref in zip(noises, references, strict=True):
            x = run(z, grid)
            se += float(((x.double() - ref.double()) ** 2).sum())
            count += ref.numel()
        value = math.sqrt(se / count)
        return value if math.isfinite(value) else math.inf

    start = logits_from_grid(initial_grid)
    before = loss(start)
    best, after, _ = nelder_mead(loss, start, max_evals=max_evals)
    if after >= before:
        best, after = start, before
    return grid_from_logits(best, t0, t1).tolist(), before, after
