"""SiT training objective: interpolate data and noise, regress the network's prediction.

With ``x0 ~ N(0, I)`` noise, ``x1`` data, ``t`` drawn on the training interval and
``x_t = alpha_t x1 + sigma_t x0`` (Ma et al. 2024, Sec. 2.2-2.3, official ``Transport.training_losses``):

    velocity:  L = mean_CHW (v_theta(x_t, t) - (alpha'_t x1 + sigma'_t x0))^2
    noise:     L = mean_CHW  w_t (e_theta(x_t, t) - x0)^2
    score:     L = mean_CHW  w_t (sigma_t s_theta(x_t, t) + x0)^2

with weights ``w_t``: ``none`` 1; ``velocity`` ``(lambda_t / sigma_t)^2``; ``likelihood``
``lambda_t / sigma_t^2``, where ``lambda_t = (alpha'_t/alpha_t) sigma_t^2 - sigma_t sigma'_t``
(:meth:`Interpolant.score_weight`; the official ``drift_var``). Weights apply to score and noise models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .interpolants import (
    Interpolant,
    default_eps,
    expand_t_like_x,
    get_interpolant,
    resolve_path_type,
    resolve_prediction,
    training_interval,
)
from .validation import InputError, check_choice, check_float, check_int

LossWeight = Literal["none", "velocity", "likelihood"]
TimeSampling = Literal["continuous", "discrete"]
LOSS_WEIGHTS: tuple[str, ...] = ("none", "velocity", "likelihood")
TIME_SAMPLINGS: tuple[str, ...] = ("continuous", "discrete")
ModelFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ObjectiveTerms:
    """Everything one loss evaluation used: per-sample ``loss`` ``(N,)``, the network output ``pred``,
    time ``t`` ``(N,)``, ``noise`` ``x0``, input ``xt`` and regression ``target`` (all ``(N, C, H, W)``;
    the target of a score model is ``-x0 / sigma_t``)."""

    loss: Tensor
    pred: Tensor
    t: Tensor
    noise: Tensor
    xt: Tensor
    target: Tensor


class SiTObjective:
    """The SiT objective for one (path, prediction, weighting, time sampling) combination.

    Args:
        path_type: ``"linear"``, ``"gvp"`` or ``"vp"``.
        prediction: ``"velocity"``, ``"score"`` or ``"noise"``.
        loss_weight: ``None``/``"none"``, ``"velocity"`` or ``"likelihood"`` (score and noise models only).
        train_eps, sample_eps: ``None`` gives the official default per combination (VP 1e-5 / 1e-3,
            Linear/GVP score/noise 1e-3 / 1e-3, Linear/GVP velocity 0 / 0). Unlike the official code, values
            given for a Linear/GVP velocity model are honoured (it silently forces 0 there).
        time: ``"continuous"`` (uniform on the training interval, as the official code) or ``"discrete"``
            (DiT-style: uniform over ``num_train_timesteps`` equally spaced points of that interval, the
            paper's first ablation, Table 2).
        num_train_timesteps: grid size for ``time="discrete"``.
    """

    def __init__(
        self,
        path_type: str = "linear",
        prediction: str = "velocity",
        loss_weight: str | None = None,
        train_eps: float | None = None,
        sample_eps: float | None = None,
        time: str = "continuous",
        num_train_timesteps: int = 1000,
    ) -> None:
        self.path_type = resolve_path_type(path_type)
        self.prediction = resolve_prediction(prediction)
        weight = "none" if loss_weight is None else check_choice("loss_weight", loss_weight, LOSS_WEIGHTS,
                                                                  key=str.lower)
        if self.prediction == "velocity" and weight != "none":
            raise InputError(
                f"loss_weight {loss_weight!r} applies to score and noise models; a velocity loss is unweighted"
            )
        self.loss_weight = weight
        self.time = check_choice("time sampling", time, TIME_SAMPLINGS)
        self.num_train_timesteps = check_int("num_train_timesteps", num_train_timesteps, minimum=1)
        if time == "discrete" and num_train_timesteps < 2:
            raise InputError(f"discrete time needs num_train_timesteps >= 2, got {num_train_timesteps}")
        d_train, d_sample = default_eps(self.path_type, self.prediction)
        for eps_name, eps_value in (("train_eps", train_eps), ("sample_eps", sample_eps)):
            if eps_value is not None:
                check_float(eps_name, eps_value, minimum=0.0, maximum=0.5, max_inclusive=False)
        self.train_eps = d_train if train_eps is None else float(train_eps)
        self.sample_eps = d_sample if sample_eps is None else float(sample_eps)
        self.interpolant: Interpolant = get_interpolant(self.path_type)
        self.interval = training_interval(self.path_type, self.prediction, self.train_eps)

    def __repr__(self) -> str:
        return (
            f"SiTObjective(path_type={self.path_type!r}, prediction={self.prediction!r}, "
            f"loss_weight={self.loss_weight!r}, train_eps={self.train_eps}, time={self.time!r}, "
            f"interval={self.interval})"
        )

    def sample_time(
        self, n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """``n`` training times ``(n,)`` float32: ``t = u (t1 - t0) + t0``, ``u ~ U[0, 1)`` (continuous),
        or ``t0 + (t1 - t0) k / (T - 1)``, ``k ~ U{0..T-1}`` (discrete)."""
        t0, t1 = self.interval
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if self.time == "continuous":
            u = torch.rand((n,), generator=generator, device=gen_device)
            t = u * (t1 - t0) + t0
        else:
            k = torch.randint(0, self.num_train_timesteps, (n,), generator=generator, device=gen_device)
            t = t0 + (t1 - t0) * k.to(torch.float32) / (self.num_train_timesteps - 1)
        return t.to(device) if device is not None else t

    def weight(self, xt: Tensor, t: Tensor) -> Tensor | float:
        """Loss weight ``w_t`` broadcast to ``xt`` (1 for ``none``)."""
        if self.loss_weight == "none":
            return 1.0
        tt = expand_t_like_x(t, xt)  # (N, 1, 1, 1)
        lam = self.interpolant.score_weight(tt)
        sigma, _ = self.interpolant.sigma(tt)
        if self.loss_weight == "velocity":
            return (lam / sigma) ** 2
        return lam / sigma**2

    def terms(
        self,
        model_fn: ModelFn,
        x1: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> ObjectiveTerms:
        """Loss and its ingredients. Draws ``noise`` then ``t`` when not given (the official order: with the
        global RNG seeded as the official code, the same ``x0`` and ``t`` come out)."""
        if noise is None:
            noise = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)  # (N, C, H, W)
        if t is None:
            t = self.sample_time(x1.shape[0], generator=generator)
        t = t.to(device=x1.device, dtype=x1.dtype)  # (N,)
        xt = self.interpolant.compute_xt(noise, x1, t)  # (N, C, H, W)
        pred = model_fn(xt, t)
        tt = expand_t_like_x(t, xt)
        if self.prediction == "velocity":
            target = self.interpolant.velocity_target(noise, x1, t)
            loss = ((pred - target) ** 2).mean(dim=tuple(range(1, xt.ndim)))
        else:
            w = self.weight(xt, t)
            if self.prediction == "noise":
                target = noise
                sq = (pred - noise) ** 2
            else:
                sigma, _ = self.interpolant.sigma(tt)
                target = -noise / sigma
                sq = (pred * sigma + noise) ** 2
            loss = (w * sq).mean(dim=tuple(range(1, xt.ndim)))
        return ObjectiveTerms(loss=loss, pred=pred, t=t, noise=noise, xt=xt, target=target)

    def loss(
        self,
        model_fn: ModelFn,
        x1: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sample loss ``(N,)``; ``model_fn(x_t, t)`` returns the prediction for ``x_t`` ``(N, C, H, W)``
        and ``t`` ``(N,)``. ``t`` and ``noise`` are drawn (from ``generator``) when not given."""
        return self.terms(model_fn, x1, t=t, noise=noise, generator=generator).loss
