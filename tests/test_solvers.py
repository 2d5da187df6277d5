"""Solvers on analytic problems: convergence order, agreement with torchdiffeq, SDE moments."""

from __future__ import annotations

import math

import pytest
import torch
from torchdiffeq import odeint

from sit_diffusers.solvers import (
    ODE_FIXED_SOLVERS,
    SDE_SOLVERS,
    euler_maruyama_step,
    euler_step,
    integrate_adaptive,
    integrate_fixed,
)

F64 = torch.float64


def _drift(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx/dt = -x + cos(t) (broadcast t (N,) over x (N, D))."""
    return -x + torch.cos(t)[:, None]


def _exact(x0: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    """Solution of dx/dt = -x + cos t: x(t) = (sin t + cos t)/2 + C e^{-t}."""
    c = (x0 - (math.sin(t0) + math.cos(t0)) / 2) * math.exp(t0)
    return (math.sin(t1) + math.cos(t1)) / 2 + c * math.exp(-t1)


@pytest.mark.parametrize("name", list(ODE_FIXED_SOLVERS))
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_fixed_solver_convergence_order(name, direction):
    solver = ODE_FIXED_SOLVERS[name]
    t0, t1 = (0.0, 1.0) if direction == "forward" else (1.0, 0.0)
    x0 = torch.tensor([[0.5], [-1.0]], dtype=F64)
    errs = []
    for n in (8, 16, 32):
        grid = torch.linspace(t0, t1, n + 1, dtype=F64)
        x = integrate_fixed(solver, _drift, x0, grid)[-1]
        errs.append((x - _exact(x0, t0, t1)).abs().max().item())
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    for r in rates:
        assert abs(r - solver.order) < 0.25, (name, rates)


@pytest.mark.parametrize(("name", "tdq"), [("euler", "euler"), ("heun", "heun2"), ("midpoint", "midpoint"), ("rk4", "rk4")])
def test_fixed_solvers_equal_torchdiffeq(name, tdq):
    """Each fixed method is the torchdiffeq method of the same tableau (independent implementation)."""
    x0 = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    grid = torch.linspace(0.0, 1.0, 7, dtype=F64)
    ours = torch.stack(integrate_fixed(ODE_FIXED_SOLVERS[name], _drift, x0, grid))

    def f(t, x):
        return _drift(x, torch.ones(x.shape[0], dtype=F64) * t)

    ref = odeint(f, x0, grid, method=tdq)
    torch.testing.assert_close(ours, ref, rtol=1e-13, atol=1e-13)


def test_adaptive_solver_accuracy_and_landing_on_end():
    x0 = torch.tensor([[0.5], [-1.0]], dtype=F64)
    grid = torch.linspace(0.0, 1.0, 5, dtype=F64)
    seen: list[float] = []

    def drift(x, t):
        seen.append(t.max().item())
        return _drift(x, t)

    out = integrate_adaptive(drift, x0, grid, method="dopri5", atol=1e-10, rtol=1e-10)
    assert out.shape == (5, 2, 1)
    for k, t in enumerate(grid.tolist()):
        torch.testing.assert_close(out[k], _exact(x0, 0.0, t), rtol=1e-8, atol=1e-8)
    assert max(seen) <= 1.0  # never evaluated past the end of the interval
    with pytest.raises(ValueError, match="valid: dopri5"):
        integrate_adaptive(drift, x0, grid, method="rk45")


@pytest.mark.parametrize("name", list(SDE_SOLVERS))
def test_sde_solver_ornstein_uhlenbeck_moments(name):
    """dX = -X dt + sqrt(2 D) dW with D = 1/2: X_T ~ N(x0 e^{-T}, (1 - e^{-2T})/2)."""
    n, steps, t_end = 20000, 100, 1.0
    g = torch.Generator().manual_seed(0)
    x = torch.full((n, 1), 2.0, dtype=F64)
    grid = torch.linspace(0.0, t_end, steps + 1, dtype=F64)
    solver = SDE_SOLVERS[name]
    for i in range(steps):
        w = torch.randn(x.shape, generator=g, dtype=F64)
        x, _ = solver.step(lambda y, t: -y, lambda t: torch.full_like(t, 0.5), x, grid[i], grid[i + 1] - grid[i], w)
    mean, var = x.mean().item(), x.var().item()
    assert mean == pytest.approx(2.0 * math.exp(-t_end), rel=0.03)
    assert var == pytest.approx((1 - math.exp(-2 * t_end)) / 2, rel=0.04)


def test_euler_maruyama_without_noise_is_euler():
    x = torch.randn(4, 3, dtype=F64)
    t, t_next = torch.tensor(0.2, dtype=F64), torch.tensor(0.3, dtype=F64)
    x_next, mean = euler_maruyama_step(_drift, lambda tt: torch.zeros_like(tt), x, t, t_next - t, torch.randn_like(x))
    torch.testing.assert_close(x_next, euler_step(_drift, x, t, t_next))
    torch.testing.assert_close(mean, x_next)
