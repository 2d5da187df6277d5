"""Log-likelihood of data under a SiT model by the probability-flow ODE (instantaneous change of variables).

Integrating ``dx/dt = v(x, t)`` from data ``x`` at ``t1`` back to ``z`` at ``t0`` (noise) gives
(Chen et al. 2018, Grathwohl et al. 2019; SiT's ``sample_ode_likelihood``)

    log p_1(x) = log N(z; 0, I) - delta,   delta = int_{t0}^{t1} div v(x_t, t) dt,

with ``log N(z; 0, I) = -D/2 log(2 pi) - |z|^2 / 2`` and ``D = C H W``. The divergence is exact (``D``
backward passes, for small inputs) or Hutchinson's estimate ``eps^T (dv/dx) eps`` with Rademacher ``eps``.
Bits per dimension: ``nll / (D ln 2)`` of the continuous input (for 8-bit images scaled to [-1, 1] add
``log2(127.5)`` to compare with pixel-space numbers, before dequantisation corrections).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .interpolants import (
    default_eps,
    get_interpolant,
    resolve_path_type,
    resolve_prediction,
    sampling_interval,
)
from .solvers import ODE_ADAPTIVE_SOLVERS, integrate_adaptive
from .validation import InputError, check_choice, check_finite_tensor, check_float, check_int

ModelFn = Callable[[Tensor, Tensor], Tensor]
ProbeFn = Callable[[int, Tensor], Tensor]
_FIXED = {"euler": "euler", "heun": "heun2", "heun2": "heun2", "midpoint": "midpoint", "rk4": "rk4"}


@dataclass(frozen=True)
class LikelihoodResult:
    """``logp`` ``(N,)`` = ``log p(x)`` in nats; ``nll = -logp``; ``bits_per_dim = nll / (D ln 2)``;
    ``prior_logp`` ``(N,)`` = ``log N(z; 0, I)``; ``delta_logp`` ``(N,)`` = ``int div v dt`` (so
    ``logp = prior_logp - delta_logp``, the official convention); ``latent`` ``z`` ``(N, C, H, W)``;
    ``nfe`` network calls."""

    logp: Tensor
    nll: Tensor
    bits_per_dim: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    latent: Tensor
    nfe: int


def rademacher(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Entries +-1 with probability 1/2 each."""
    gen_device = generator.device if generator is not None else device
    r = torch.randint(0, 2, shape, generator=generator, device=gen_device).to(device=device, dtype=dtype)
    return r * 2 - 1


def standard_normal_logp(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per sample ``(N,)``: ``-D/2 log(2 pi) - |z|^2 / 2``."""
    d = z[0].numel()
    return -d / 2.0 * math.log(2 * math.pi) - (z**2).flatten(1).sum(1) / 2.0


def _exact_divergence(v: Tensor, x: Tensor) -> Tensor:
    """``sum_i d v_i / d x_i`` per sample by ``D`` backward passes. ``v`` and ``x`` ``(N, ...)``."""
    vf = v.flatten(1)  # (N, D)
    div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(vf.shape[1]):
        (g,) = torch.autograd.grad(vf[:, i].sum(), x, retain_graph=True)
        div = div + g.flatten(1)[:, i]
    return div


def log_likelihood(
    model_fn: ModelFn,
    x: Tensor,
    *,
    path_type: str = "linear",
    prediction: str = "velocity",
    solver: str = "dopri5",
    num_steps: int = 50,
    atol: float = 1e-6,
    rtol: float = 1e-3,
    sample_eps: float | None = None,
    divergence: Literal["hutchinson", "exact"] = "hutchinson",
    generator: torch.Generator | None = None,
    probe_fn: ProbeFn | None = None,
) -> LikelihoodResult:
    """``log p(x)`` of data ``x`` ``(N, C, H, W)`` under the model's probability-flow ODE.

    Args:
        model_fn: ``(x, t) -> prediction`` (``prediction`` as configured), t ``(N,)`` in SiT time.
        path_type, prediction, sample_eps: the model's interpolant and output (``sample_eps=None``: the
            official default); the ODE runs over the official sampling interval, from ``t1`` to ``t0``.
        solver: ``"euler"``, ``"heun"``, ``"midpoint"``, ``"rk4"`` (``num_steps`` steps) or an adaptive
            torchdiffeq method (``atol``, ``rtol``).
        divergence: ``"hutchinson"`` (one probe per solve, drawn from ``generator``, unless ``probe_fn``)
            or ``"exact"``.
        probe_fn: ``probe_fn(k, x) -> eps`` for drift evaluation ``k`` (0, 1, ...); lets a caller resample
            per evaluation (the official code draws a fresh probe at every evaluation) or replay probes.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("log_likelihood differentiates the model: call it outside torch.inference_mode()")
    path_type, prediction = resolve_path_type(path_type), resolve_prediction(prediction)
    check_choice("solver", solver, list(_FIXED) + list(ODE_ADAPTIVE_SOLVERS))
    check_choice("divergence", divergence, ("hutchinson", "exact"))
    check_int("num_steps", num_steps, minimum=1)
    check_float("atol", atol, minimum=0.0, min_inclusive=False)
    check_float("rtol", rtol, minimum=0.0, min_inclusive=False)
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise InputError(f"x must be a floating-point torch tensor (N, ...) of data, got {type(x).__name__} "
                         f"of dtype {getattr(x, 'dtype', None)} and shape {tuple(getattr(x, 'shape', ()))}")
    check_finite_tensor("x", x, "the data whose likelihood is asked must be finite", InputError)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    interp = get_interpolant(path_type)
    eps = default_eps(path_type, prediction)[1] if sample_eps is None else check_float(
        "sample_eps", sample_eps, minimum=0.0, maximum=0.5, max_inclusive=False)
    if prediction != "velocity" and path_type != "vp" and eps <= 0:
        raise InputError(f"{path_type}/{prediction} needs sample_eps > 0 (the ends are singular), got {eps}")
    t0, t1 = sampling_interval(path_type, prediction, eps, sde=False)
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = x.detach().to(dtype)
    fixed_probe = rademacher(tuple(x.shape), generator, x.device, dtype) if divergence == "hutchinson" else None
    calls = 0

    def drift(state: tuple[Tensor, Tensor], t: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal calls
        k = calls
        calls += 1
        xs = state[0]
        with torch.enable_grad():
            xr = xs.detach().requires_grad_(True)
            out = model_fn(xr, t.to(dtype)).to(dtype)
            v = out if prediction == "velocity" else interp.velocity_and_score(out, prediction, xr, t)[0]
            if divergence == "exact":
                div = _exact_divergence(v, xr)
            else:
                probe = probe_fn(k, xr).to(dtype) if probe_fn is not None else fixed_probe
                (g,) = torch.autograd.grad((v * probe).sum(), xr)
                div = (g * probe).flatten(1).sum(1)  # (N,)
        return v.detach(), div.detach()

    # data -> noise on the official grid: sample_ode_likelihood integrates s over linspace(t0, t1) and calls
    # the model at t = 1 - s (for VP that starts at the data, t = 1). A VP noise model's score -e / sigma_t is
    # singular at t = 1 (the official code returns NaN): it starts at 1 - sample_eps instead.
    if path_type == "vp" and prediction == "noise":
        grid = torch.linspace(t1, t0, num_steps + 1, dtype=dtype, device=x.device)
    else:
        grid = 1 - torch.linspace(t0, t1, num_steps + 1, dtype=dtype, device=x.device)
    state0 = (x, torch.zeros(x.shape[0], dtype=dtype, device=x.device))
    if solver in ODE_ADAPTIVE_SOLVERS:
        xs, deltas = integrate_adaptive(drift, state0, grid, method=solver, atol=atol, rtol=rtol)
    elif solver in _FIXED:
        from torchdiffeq import odeint

        def func(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            return drift(state, torch.ones(x.shape[0], dtype=dtype, device=x.device) * t)

        xs, deltas = odeint(func, state0, grid, method=_FIXED[solver])
    z = xs[-1]
    delta = -deltas[-1]  # int_{t0}^{t1} div v dt (we integrated t1 -> t0)
    prior = standard_normal_logp(z)
    logp = check_finite_tensor("log p(x)", prior - delta, "the model's output or the ODE solve diverged "
                               "(check the weights, path_type/prediction and the solver tolerances)")
    d = x[0].numel()
    return LikelihoodResult(
        logp=logp, nll=-logp, bits_per_dim=-logp / (d * math.log(2)), prior_logp=prior,
        delta_logp=delta, latent=z, nfe=calls,
    )
