"""Interpolant (path) math of SiT: ``x_t = alpha_t * x1 + sigma_t * x0``.

One time convention, the official SiT code's (Ma et al. 2024, arXiv 2401.08740, Sec. 2): t in [0, 1],
``t = 0`` is Gaussian noise ``x0``, ``t = 1`` is data ``x1``. :func:`to_sit_time` is the one place that
converts other conventions. Everything here is pure tensor math: no models, no sampling loops.

For an interpolant with coefficients ``alpha_t, sigma_t`` (``alpha_0 = 0, sigma_0 = 1``,
``alpha_1 = 1, sigma_1 = 0``) the three predictions a network can make are related, at a point ``x`` of
time ``t`` (paper Eqs. 2-6, official ``transport/path.py``), by

    velocity  v(x, t) = E[alpha'_t x1 + sigma'_t x0 | x_t = x]
    noise     e(x, t) = E[x0 | x_t = x]
    score     s(x, t) = grad log p_t(x) = -e(x, t) / sigma_t
    v = (alpha'_t / alpha_t) x + lambda_t s,   lambda_t = (alpha'_t / alpha_t) sigma_t^2 - sigma_t sigma'_t.

``lambda_t`` is the official ``drift_var``; ``alpha'_t / alpha_t`` is computed in a closed, stable form
per path (``d_log_alpha``) as the official code does. The reverse-time SDE with diffusion ``D_t``
(:meth:`Interpolant.diffusion`) is ``dX = [v + D_t s] dt + sqrt(2 D_t) dW``; the paper writes
``w_t = 2 D_t`` (Eq. 7: ``dX = v dt + 1/2 w_t s dt + sqrt(w_t) dW``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .validation import check_choice

PathType = Literal["linear", "gvp", "vp"]
Prediction = Literal["velocity", "score", "noise"]
DiffusionForm = Literal["constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing"]
TimeConvention = Literal["sit", "noise_at_1", "diffusers"]

PREDICTIONS: tuple[str, ...] = ("velocity", "score", "noise")
DIFFUSION_FORMS: tuple[str, ...] = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
# the official code keys this form as "inccreasing-decreasing" (a typo; its documented name crashes there)
_DIFFUSION_ALIASES = {"sbdm": "SBDM", "inccreasing-decreasing": "increasing-decreasing"}
TIME_CONVENTIONS: tuple[str, ...] = ("sit", "noise_at_1", "diffusers")


def expand_t_like_x(t: Tensor | float, x: Tensor) -> Tensor:
    """Reshape a time ``t`` of shape ``(N,)`` (or a scalar) to broadcast against ``x`` of shape ``(N, ...)``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t
    if t.ndim == x.ndim:
        return t
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))  # (N, 1, ..., 1)


# ----------------------------------------------------------------------------------------------------------
# Time conventions
# ----------------------------------------------------------------------------------------------------------


def to_sit_time(t: Tensor | float, convention: TimeConvention = "sit", num_train_timesteps: int = 1000) -> Tensor:
    """Convert a time of another convention to SiT time (t=0 noise, t=1 data).

    ``"sit"``: identity. ``"noise_at_1"``: rectified-flow / SD3 convention (t=0 data, t=1 noise),
    ``t_sit = 1 - t``. ``"diffusers"``: discrete scheduler timesteps in ``[0, num_train_timesteps]`` with
    the largest the noisiest (``FlowMatchEulerDiscreteScheduler``: ``timestep = 1000 * sigma``),
    ``t_sit = 1 - t / num_train_timesteps``.
    """
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if convention == "sit":
        return t
    if convention == "noise_at_1":
        return 1.0 - t
    if convention == "diffusers":
        return 1.0 - t / num_train_timesteps
    raise ValueError(f"unknown time convention {convention!r}; valid: {', '.join(TIME_CONVENTIONS)}")


def from_sit_time(t: Tensor | float, convention: TimeConvention = "sit", num_train_timesteps: int = 1000) -> Tensor:
    """Inverse of :func:`to_sit_time`: SiT time -> ``convention``."""
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if convention == "sit":
        return t
    if convention == "noise_at_1":
        return 1.0 - t
    if convention == "diffusers":
        return (1.0 - t) * num_train_timesteps
    raise ValueError(f"unknown time convention {convention!r}; valid: {', '.join(TIME_CONVENTIONS)}")


# ----------------------------------------------------------------------------------------------------------
# Interpolants
# ----------------------------------------------------------------------------------------------------------


class Interpolant:
    """Base class: a path ``x_t = alpha_t x1 + sigma_t x0``.

    Subclasses give ``alpha(t) -> (alpha_t, alpha'_t)`` and ``sigma(t) -> (sigma_t, sigma'_t)`` and may
    override ``d_log_alpha`` and ``score_weight`` with stable closed forms. Coefficient methods are
    elementwise on a time tensor of any shape; methods taking ``x`` broadcast ``t`` of shape ``(N,)``.
    """

    name: str = "interpolant"

    # --- coefficients (elementwise in t) ---------------------------------------------------------------
    def alpha(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, d alpha_t / dt)``, the data coefficient and its derivative."""
        raise NotImplementedError

    def sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(sigma_t, d sigma_t / dt)``, the noise coefficient and its derivative."""
        raise NotImplementedError

    def d_log_alpha(self, t: Tensor) -> Tensor:
        """``alpha'_t / alpha_t`` (generic ratio; paths override it with a stable closed form)."""
        a, da = self.alpha(t)
        return da / a

    def score_weight(self, t: Tensor) -> Tensor:
        """``lambda_t = (alpha'_t / alpha_t) sigma_t^2 - sigma_t sigma'_t``, so that
        ``v = (alpha'_t/alpha_t) x + lambda_t s`` (official ``compute_drift(...)[1]``, "drift_var")."""
        s, ds = self.sigma(t)
        return self.d_log_alpha(t) * s**2 - s * ds

    # --- path ----------------------------------------------------------------------------------------
    def compute_xt(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """``x_t = alpha_t x1 + sigma_t x0``; ``x0`` noise, ``x1`` data, both ``(N, C, H, W)``, t ``(N,)``."""
        tt = expand_t_like_x(t, x1)  # (N, 1, 1, 1)
        a, _ = self.alpha(tt)
        s, _ = self.sigma(tt)
        return a * x1 + s * x0  # (N, C, H, W)

    def velocity_target(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """Conditional velocity ``u_t = alpha'_t x1 + sigma'_t x0`` (the regression target)."""
        tt = expand_t_like_x(t, x1)
        _, da = self.alpha(tt)
        _, ds = self.sigma(tt)
        return da * x1 + ds * x0  # (N, C, H, W)

    # --- conversions between predictions -------------------------------------------------------------
    def velocity_from_score(self, score: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``v = (alpha'/alpha) x + lambda_t s``."""
        tt = expand_t_like_x(t, x)
        return self.d_log_alpha(tt) * x + self.score_weight(tt) * score

    def score_from_velocity(self, velocity: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``s = (r v - x) / (sigma^2 - r sigma' sigma)`` with ``r = alpha / alpha'`` (inverse of the above)."""
        tt = expand_t_like_x(t, x)
        a, da = self.alpha(tt)
        s, ds = self.sigma(tt)
        r = a / da
        var = s**2 - r * ds * s
        return (r * velocity - x) / var

    def noise_from_velocity(self, velocity: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``e = (r v - x) / (r sigma' - sigma)`` with ``r = alpha / alpha'``."""
        tt = expand_t_like_x(t, x)
        a, da = self.alpha(tt)
        s, ds = self.sigma(tt)
        r = a / da
        return (r * velocity - x) / (r * ds - s)

    def score_from_noise(self, noise: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``s = -e / sigma_t``."""
        s, _ = self.sigma(expand_t_like_x(t, x))
        return noise / -s

    def noise_from_score(self, score: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``e = -sigma_t s``."""
        s, _ = self.sigma(expand_t_like_x(t, x))
        return -s * score

    def velocity_from_noise(self, noise: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``v = (alpha'/alpha) x - lambda_t e / sigma_t``."""
        return self.velocity_from_score(self.score_from_noise(noise, x, t), x, t)

    def convert(self, pred: Tensor, source: Prediction, target: Prediction, x: Tensor, t: Tensor) -> Tensor:
        """Convert a prediction of kind ``source`` at ``(x, t)`` into kind ``target``."""
        for kind in (source, target):
            if kind not in PREDICTIONS:
                raise ValueError(f"unknown prediction {kind!r}; valid: {', '.join(PREDICTIONS)}")
        if source == target:
            return pred
        table: dict[tuple[str, str], Callable[[Tensor, Tensor, Tensor], Tensor]] = {
            ("score", "velocity"): self.velocity_from_score,
            ("velocity", "score"): self.score_from_velocity,
            ("velocity", "noise"): self.noise_from_velocity,
            ("noise", "score"): self.score_from_noise,
            ("score", "noise"): self.noise_from_score,
            ("noise", "velocity"): self.velocity_from_noise,
        }
        return table[(source, target)](pred, x, t)

    def velocity_and_score(self, pred: Tensor, prediction: Prediction, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Probability-flow velocity and score from ONE network output (as the official formulas).

        velocity model: ``v = out``, ``s = score_from_velocity(out)``; score model: ``s = out``,
        ``v = (alpha'/alpha) x + lambda_t s``; noise model: ``s = -out / sigma_t``, v as for score.
        """
        if prediction == "velocity":
            return pred, self.score_from_velocity(pred, x, t)
        if prediction == "score":
            return self.velocity_from_score(pred, x, t), pred
        if prediction == "noise":
            score = self.score_from_noise(pred, x, t)
            return self.velocity_from_score(score, x, t), score
        raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")

    # --- SDE diffusion -------------------------------------------------------------------------------
    def diffusion(self, t: Tensor, form: DiffusionForm | str = "sigma", norm: float = 1.0) -> Tensor:
        """Diffusion ``D_t`` of the sampling SDE ``dX = [v + D_t s] dt + sqrt(2 D_t) dW`` (``w_t = 2 D_t``).

        Forms (official ``compute_diffusion``, SiT paper Sec. 3.4 / Table 6):
        ``constant``: ``norm``; ``SBDM``: ``norm * lambda_t`` (the score-based diffusion model's choice);
        ``sigma``: ``norm * sigma_t``; ``linear``: ``norm * (1 - t)``;
        ``decreasing``: ``0.25 (norm cos(pi t) + 1)^2``; ``increasing-decreasing``: ``norm sin(pi t)^2``.
        """
        form = resolve_diffusion_form(form)
        if form == "constant":
            return torch.full_like(t, norm)
        if form == "SBDM":
            return norm * self.score_weight(t)
        if form == "sigma":
            return norm * self.sigma(t)[0]
        if form == "linear":
            return norm * (1 - t)
        if form == "decreasing":
            return 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2
        return norm * torch.sin(math.pi * t) ** 2  # increasing-decreasing


@dataclass(frozen=True)
class Linear(Interpolant):
    """Linear interpolant (rectified flow): ``alpha_t = t``, ``sigma_t = 1 - t``; ``alpha'/alpha = 1/t``."""

    name = "linear"

    def alpha(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return t, torch.ones_like(t)

    def sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return 1 - t, -torch.ones_like(t)

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return 1 / t


@dataclass(frozen=True)
class GVP(Interpolant):
    """Generalised variance-preserving interpolant: ``alpha_t = sin(pi t/2)``, ``sigma_t = cos(pi t/2)``;
    ``alpha'/alpha = pi / (2 tan(pi t/2))``."""

    name = "gvp"

    def alpha(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sin(t * math.pi / 2), math.pi / 2 * torch.cos(t * math.pi / 2)

    def sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.cos(t * math.pi / 2), -math.pi / 2 * torch.sin(t * math.pi / 2)

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return math.pi / (2 * torch.tan(t * math.pi / 2))


@dataclass(frozen=True)
class VP(Interpolant):
    """Variance-preserving (SBDM-VP) interpolant in SiT time, ``s = 1 - t`` the diffusion time:

    ``log alpha_t = -1/4 s^2 (sigma_max - sigma_min) - 1/2 s sigma_min``, ``sigma_t = sqrt(1 - alpha_t^2)``,
    ``alpha'/alpha = beta_t / 2`` and ``lambda_t = beta_t / 2`` with
    ``beta_t = sigma_min + s (sigma_max - sigma_min)`` (the VP-SDE's beta; ``sigma_min/max`` keep the
    official argument names). ``alpha_0 = exp(-5.025) ~ 0.0066`` for the defaults, not exactly 0.
    """

    sigma_min: float = 0.1
    sigma_max: float = 20.0
    name = "vp"

    def _log_mean(self, t: Tensor) -> Tensor:
        return -0.25 * ((1 - t) ** 2) * (self.sigma_max - self.sigma_min) - 0.5 * (1 - t) * self.sigma_min

    def _d_log_mean(self, t: Tensor) -> Tensor:
        return 0.5 * (1 - t) * (self.sigma_max - self.sigma_min) + 0.5 * self.sigma_min

    def alpha(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a = torch.exp(self._log_mean(t))
        return a, a * self._d_log_mean(t)

    def sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a2 = torch.exp(2 * self._log_mean(t))
        s = torch.sqrt(1 - a2)
        return s, a2 * (2 * self._d_log_mean(t)) / (-2 * s)

    def d_log_alpha(self, t: Tensor) -> Tensor:
        return self._d_log_mean(t)

    def score_weight(self, t: Tensor) -> Tensor:
        beta = self.sigma_min + (1 - t) * (self.sigma_max - self.sigma_min)
        return beta / 2


@dataclass(frozen=True)
class Custom(Interpolant):
    """Interpolant from two differentiable elementwise callables ``alpha_fn(t)``, ``sigma_fn(t)``.

    Derivatives come from forward-mode autodiff (``torch.func.jvp`` with a unit tangent), so
    ``alpha'_t`` and ``sigma'_t`` are exact for any composition of torch ops. Boundary conditions
    (``alpha_0 = 0, sigma_0 = 1, alpha_1 = 1, sigma_1 = 0``) are the caller's responsibility.
    """

    alpha_fn: Callable[[Tensor], Tensor]
    sigma_fn: Callable[[Tensor], Tensor]
    name = "custom"

    @staticmethod
    def _value_and_derivative(fn: Callable[[Tensor], Tensor], t: Tensor) -> tuple[Tensor, Tensor]:
        value, deriv = torch.func.jvp(fn, (t,), (torch.ones_like(t),))
        return value, deriv

    def alpha(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._value_and_derivative(self.alpha_fn, t)

    def sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self._value_and_derivative(self.sigma_fn, t)


INTERPOLANTS: dict[str, type[Interpolant]] = {"linear": Linear, "gvp": GVP, "vp": VP}


def resolve_path_type(name: str) -> str:
    """Canonical path name (case-insensitive: the official ``"Linear"``, ``"GVP"``, ``"VP"`` work)."""
    return check_choice("path_type", name, INTERPOLANTS, key=str.lower)


def resolve_prediction(name: str) -> str:
    """Canonical prediction name; unknown names raise with the valid ones."""
    return check_choice("prediction", name, PREDICTIONS, key=str.lower)


def resolve_diffusion_form(name: str) -> str:
    """Canonical diffusion form; accepts ``"sbdm"`` and the official typo ``"inccreasing-decreasing"``."""
    return check_choice(
        "diffusion_form", name, DIFFUSION_FORMS, key=lambda n: _DIFFUSION_ALIASES.get(n.lower(), n.lower())
    )


def get_interpolant(name: str, **kwargs: float) -> Interpolant:
    """Interpolant by name: ``"linear"``, ``"gvp"``, ``"vp"`` (``VP`` takes ``sigma_min``, ``sigma_max``)."""
    return INTERPOLANTS[resolve_path_type(name)](**kwargs)


# ----------------------------------------------------------------------------------------------------------
# Time intervals (official create_transport / check_interval)
# ----------------------------------------------------------------------------------------------------------


def default_eps(path_type: str, prediction: str) -> tuple[float, float]:
    """Official ``(train_eps, sample_eps)`` defaults per combination (``create_transport``).

    VP: ``(1e-5, 1e-3)``; Linear/GVP with a score or noise model: ``(1e-3, 1e-3)``; Linear/GVP with a
    velocity model: ``(0, 0)`` (stable everywhere).
    """
    path_type, prediction = resolve_path_type(path_type), resolve_prediction(prediction)
    if path_type == "vp":
        return 1e-5, 1e-3
    if prediction != "velocity":
        return 1e-3, 1e-3
    return 0.0, 0.0


def training_interval(path_type: str, prediction: str, train_eps: float) -> tuple[float, float]:
    """Interval ``[t0, t1]`` that training times are drawn from (official ``check_interval``, eval=False).

    VP: ``[0, 1 - eps]``; Linear/GVP score or noise: ``[eps, 1 - eps]``; Linear/GVP velocity: ``[0, 1]``.
    """
    path_type, prediction = resolve_path_type(path_type), resolve_prediction(prediction)
    if path_type == "vp":
        return 0.0, 1.0 - train_eps
    if prediction != "velocity":
        return train_eps, 1.0 - train_eps
    return 0.0, 1.0


def sampling_interval(
    path_type: str,
    prediction: str,
    sample_eps: float,
    *,
    sde: bool = False,
    diffusion_form: str = "sigma",
    last_step_size: float = 0.0,
) -> tuple[float, float]:
    """Interval ``[t0, t1]`` a sampler integrates over, forward in time (official ``check_interval``).

    ``t1 = 1 - last_step_size`` for an SDE with a last step, else ``1 - sample_eps``; ``t0 = sample_eps``
    for Linear/GVP score/noise models and for the SBDM diffusion (singular at t = 0 there), else 0.
    Linear/GVP velocity ODEs use ``[0, 1]``.
    """
    path_type, prediction = resolve_path_type(path_type), resolve_prediction(prediction)
    form = resolve_diffusion_form(diffusion_form)
    end = 1.0 - sample_eps if (not sde or last_step_size == 0) else 1.0 - last_step_size
    if path_type == "vp":
        return 0.0, end
    if prediction != "velocity" or sde:
        start = sample_eps if (form == "SBDM" and sde) or prediction != "velocity" else 0.0
        return start, end
    return 0.0, 1.0


# ----------------------------------------------------------------------------------------------------------
# Exact predictions for Gaussian-mixture data (an oracle "model" for tests and benchmarks)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianMixture:
    """Data ``x1 ~ sum_k pi_k N(m_k, s_k^2 I)`` in ``D`` dims; its exact velocity, score and noise.

    Under ``x_t = alpha_t x1 + sigma_t x0`` component ``k`` gives ``x_t ~ N(alpha m_k, V_k I)`` with
    ``V_k = alpha^2 s_k^2 + sigma^2``, responsibilities ``r_k(x) ∝ pi_k N(x; alpha m_k, V_k I)`` and

        E[x0 | x, k] = sigma (x - alpha m_k) / V_k,   E[x1 | x, k] = m_k + alpha s_k^2 (x - alpha m_k) / V_k,
        v = sum_k r_k (alpha' E[x1|x,k] + sigma' E[x0|x,k]),   e = sum_k r_k E[x0|x,k],
        s = -sum_k r_k (x - alpha m_k) / V_k.

    Computed in float64. ``x`` is ``(N, C, H, W)`` (any trailing shape) with ``C*H*W = D``.
    """

    weights: Tensor  # (K,)
    means: Tensor  # (K, D)
    stds: Tensor  # (K,)
    interpolant: Interpolant

    @classmethod
    def gaussian(cls, mean: Tensor, std: float, interpolant: Interpolant) -> GaussianMixture:
        """A single Gaussian ``N(mean, std^2 I)``."""
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        return cls(torch.ones(1, dtype=torch.float64), mean, torch.tensor([float(std)], dtype=torch.float64), interpolant)

    def _posterior(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        n = x.shape[0]
        xf = x.reshape(n, -1).to(torch.float64)  # (N, D)
        tt = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1)
        tt = tt.expand(n).reshape(n, 1, 1)  # (N, 1, 1)
        a, da = self.interpolant.alpha(tt)
        s, ds = self.interpolant.sigma(tt)
        means = self.means.to(xf)[None]  # (1, K, D)
        var = a**2 * self.stds.to(xf)[None, :, None] ** 2 + s**2  # (N, K, 1)
        diff = xf[:, None, :] - a * means  # (N, K, D)
        d = xf.shape[1]
        logits = (
            torch.log(self.weights.to(xf))[None]
            - 0.5 * d * torch.log(2 * math.pi * var[..., 0])
            - 0.5 * (diff**2).sum(-1) / var[..., 0]
        )  # (N, K)
        resp = torch.softmax(logits, dim=1)[..., None]  # (N, K, 1)
        return xf, diff, var, resp, torch.cat([a, da, s, ds], -1), logits

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact probability-flow velocity ``E[alpha' x1 + sigma' x0 | x_t = x]``."""
        _, diff, var, resp, c, _ = self._posterior(x, t)
        a, da, s, ds = c[..., 0:1], c[..., 1:2], c[..., 2:3], c[..., 3:4]
        means = self.means.to(diff)[None]
        e1 = means + a * self.stds.to(diff)[None, :, None] ** 2 * diff / var  # (N, K, D)
        e0 = s * diff / var
        return (resp * (da * e1 + ds * e0)).sum(1).reshape(x.shape).to(x.dtype)

    def noise(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact noise prediction ``E[x0 | x_t = x]``."""
        _, diff, var, resp, c, _ = self._posterior(x, t)
        return (resp * c[..., 2:3] * diff / var).sum(1).reshape(x.shape).to(x.dtype)

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """Exact score ``grad log p_t(x)``."""
        _, diff, var, resp, _, _ = self._posterior(x, t)
        return (-(resp * diff / var)).sum(1).reshape(x.shape).to(x.dtype)

    def predict(self, prediction: Prediction, x: Tensor, t: Tensor) -> Tensor:
        """The exact network output for a model trained to predict ``prediction``."""
        return {"velocity": self.velocity, "score": self.score, "noise": self.noise}[resolve_prediction(prediction)](x, t)

    def log_prob(self, x: Tensor, t: float | Tensor = 1.0) -> Tensor:
        """``log p_t(x)`` (float64, shape ``(N,)``); ``t = 1`` is the data density."""
        _, _, _, _, _, logits = self._posterior(x, torch.as_tensor(t, dtype=torch.float64))
        return torch.logsumexp(logits, dim=1)

    def sample(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """``n`` data samples of trailing shape ``shape`` (float64)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (N,)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x = self.means[k] + self.stds[k, None] * z  # (N, D)
        return x.reshape(n, *shape)
