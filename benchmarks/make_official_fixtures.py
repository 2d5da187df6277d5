"""Extended reference outputs of the official SiT code: ``tests/fixtures/official_sit/extended``.

The public fixtures (``tests/fixtures/official_sit/public``) cover the official ODE ``euler`` / ``heun2`` /
``dopri5`` and the SDE ``Euler`` with the default diffusion on three path/prediction pairs. This script runs
the official ``transport`` package (github willisma/SiT, imported from ``--official-repo``, never copied
here) over the rest of its documented options, and saves what it returns:

* ODE: every path (Linear, GVP, VP) x prediction (velocity, score, noise) with ``euler``, ``heun2`` and
  ``dopri5`` (the official tolerances and tighter / looser ones), plus ``midpoint``, ``rk4``, ``bosh3``,
  ``dopri8`` and ``reverse=True`` runs;
* SDE: ``Euler`` and ``Heun`` on every path x prediction, every diffusion form with ``diffusion_norm != 1``,
  every last step (``None``, ``Mean``, ``Tweedie``, ``Euler``) with a non-default ``last_step_size``; every
  Brownian draw of the official call is recorded (the runs share one seed, so their draws are prefixes of
  one stored ``noise_bank``);
* classifier-free guidance through the official ``SiT.forward_with_cfg`` (read from ``models.py`` with
  ``ast`` and bound to our network; ``models.py`` itself needs timm and is not imported), as ``sample.py``
  calls it: ``sample_fn(cat([z, z]), model.forward_with_cfg, y=cat([y, null]), cfg_scale=s)``;
* the ODE likelihood ``sample_ode_likelihood`` with other solvers, steps and paths (every Hutchinson probe
  recorded; adaptive runs get one fixed probe, see the manifest);
* ``Transport.training_losses`` with non-default ``train_eps`` / ``sample_eps``.

The model is OUR ``SiTTransformer2DModel`` converted from ``public/original_checkpoint.pt`` (it reproduces the
official network to 1e-5, ``tests/test_modeling_sit.py``), called with the official convention
``model(x, t, y)`` and raw ``t`` in [0, 1]; so these fixtures test the sampling / objective / likelihood math
against the official code on one and the same network. ``manifest.json`` states the exact official call of
every tensor; ``SHA256SUMS`` lists every file. The folder is written atomically (``--overwrite`` replaces it).

    git --git-dir=/path/to/SiT/.git archive 947f95b | tar -x -C /tmp/official_sit
    python benchmarks/make_official_fixtures.py --official-repo /tmp/official_sit --overwrite

Needs torch, torchdiffeq and safetensors (all dependencies of this package). One CPU thread; about 15 s.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import importlib.util
import json
import platform
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from sit_diffusers.atomic import check_output_folder, write_folder_atomically
from sit_diffusers.validation import CLIParser, InputError, check_int, run_cli

PROG = "make_official_fixtures"
REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "official_sit"
DEFAULT_OUT = FIXTURES / "extended"
DEFAULT_CHECKPOINT = FIXTURES / "public" / "original_checkpoint.pt"

#: The official files this script runs, with their sha256 at github willisma/SiT commit 947f95b.
OFFICIAL_FILES = {
    "transport/__init__.py": "2e771651550c83bfc419c4964971a10b632aaf818ec1a7e5145d4ca09d649549",
    "transport/transport.py": "8b813dfa9c95b4e128eb22942a40938551edd4601adf3b8b6b29c08fd1ea33d3",
    "transport/integrators.py": "d25a61340e0d36e61a4e6e542df039d560e60d566c451ed39cf8a670647d5e87",
    "transport/path.py": "298ae86a39d84d133cab517ddd25654631446652768c32b3729f6977753e86a1",
    "transport/utils.py": "0c2682c0bbf4f56b99abd56627e0b5704ff910a5df56b37b49a9cfeb9aeb21e0",
    "models.py": "677cfa2cf5a7db122abd014d6d92d7ac5f39745f571773a6adcc26c7d2f33d89",
}
OFFICIAL_COMMIT = "947f95bd3a510e9af441d38c1e9f72e0eee873c5"

SEED = 0  # inputs z, y, x1
NOISE_SEED = 41  # torch.manual_seed before every SDE call: its Brownian draws are a prefix of noise_bank
PROBE_SEED = 51  # torch.manual_seed before every likelihood call (Hutchinson probes)
LOSS_SEED = 61  # torch.manual_seed before every training_losses call (x0, then t)
N = 2  # samples per sampler / likelihood run
N_LOSS = 4  # samples per loss evaluation
LABELS = [3, 8]
LOSS_LABELS = [1, 5, 9, 2]
NULL_CLASS = 10
SHAPE = (4, 8, 8)
PAIRS = [(p, q) for p in ("Linear", "GVP", "VP") for q in ("velocity", "score", "noise")]


# ----------------------------------------------------------------------------------------------------------
# the official code, imported from the given export
# ----------------------------------------------------------------------------------------------------------


class Official:
    """The official ``transport`` package (imported as ``official_sit_transport``) and ``SiT.forward_with_cfg``
    (compiled from the ``models.py`` source: that module imports timm, which this package does not use)."""

    def __init__(self, repo: Path) -> None:
        init = repo / "transport" / "__init__.py"
        spec = importlib.util.spec_from_file_location(
            "official_sit_transport", init, submodule_search_locations=[str(init.parent)]
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = package
        spec.loader.exec_module(package)
        self.package = package
        self.transport_module = sys.modules["official_sit_transport.transport"]
        self.integrators = sys.modules["official_sit_transport.integrators"]
        self.create_transport = package.create_transport
        self.Sampler = package.Sampler
        self.forward_with_cfg = _official_method(repo / "models.py", "SiT", "forward_with_cfg")
        self.file_sha256 = {name: _sha256(repo / name) for name in OFFICIAL_FILES}


def _official_method(path: Path, class_name: str, name: str) -> Callable[..., Any]:
    """The function ``class_name.name`` of the source file ``path``, compiled alone (globals: torch)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return namespace[name]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class OfficialConvention:
    """Our network called as the official ``SiT`` is: ``forward(x, t, y)`` with raw t, returning the first
    ``in_channels`` channels (``learn_sigma``: the official forward drops the sigma half), and the official
    ``forward_with_cfg`` bound to it. Records the time ``t[0]`` of every network call."""

    def __init__(self, model: torch.nn.Module, forward_with_cfg: Callable[..., Any]) -> None:
        self.model = model
        self._forward_with_cfg = forward_with_cfg
        self.calls: list[float] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append(float(t[0]))
        return self.model(x, t, y).sample

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        return self._forward_with_cfg(self, x, t, y, cfg_scale)


class _TorchProxy:
    """Stands for the ``torch`` module inside one official module (``module.th``): every attribute is
    torch's, except the functions given in ``overrides``."""

    def __init__(self, overrides: dict[str, Callable[..., Any]]) -> None:
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        return self._overrides[name] if name in self._overrides else getattr(torch, name)


@contextlib.contextmanager
def _patched_th(module: Any, **overrides: Callable[..., Any]) -> Iterator[None]:
    """Replace ``module.th`` (the official modules' alias of torch) by a :class:`_TorchProxy`."""
    original = module.th
    module.th = _TorchProxy(overrides)
    try:
        yield
    finally:
        module.th = original


# ----------------------------------------------------------------------------------------------------------
# the runs
# ----------------------------------------------------------------------------------------------------------


def _ct(path: str, pred: str, weight: str | None = None, train_eps: float | None = None,
        sample_eps: float | None = None) -> str:
    return f"create_transport({path!r}, {pred!r}, {weight!r}, {train_eps!r}, {sample_eps!r})"


def ode_specs() -> list[dict[str, Any]]:
    """Official ``sample_ode`` runs: (key, path, prediction, kwargs)."""
    specs = []
    for path, pred in PAIRS:  # whole trajectories for three pairs (every path and prediction once)
        traj = (path, pred) in (("Linear", "velocity"), ("GVP", "noise"), ("VP", "score"))
        specs.append({"method": "euler", "path": path, "pred": pred, "kw": {"num_steps": 7}, "traj": traj})
        specs.append({"method": "heun2", "path": path, "pred": pred, "kw": {"num_steps": 6},
                      "traj": traj or (path, pred) in (("Linear", "noise"), ("GVP", "score"), ("VP", "velocity"))})
        specs.append({"method": "dopri5", "path": path, "pred": pred, "kw": {"num_steps": 5, "atol": 1e-6, "rtol": 1e-3}})
    tight = {"num_steps": 5, "atol": 1e-8, "rtol": 1e-6}
    for path, pred in (("Linear", "velocity"), ("GVP", "noise"), ("VP", "score"), ("Linear", "score")):
        specs.append({"method": "dopri5", "path": path, "pred": pred, "kw": dict(tight), "tag": "dopri5_tight"})
    specs.append({"method": "dopri5", "path": "GVP", "pred": "velocity", "kw": {"num_steps": 5, "atol": 1e-4, "rtol": 1e-2},
                  "tag": "dopri5_loose"})
    specs.append({"method": "midpoint", "path": "GVP", "pred": "velocity", "kw": {"num_steps": 6}, "traj": True})
    specs.append({"method": "rk4", "path": "VP", "pred": "noise", "kw": {"num_steps": 5}, "traj": True})
    specs.append({"method": "rk4", "path": "Linear", "pred": "score", "kw": {"num_steps": 4}, "traj": True})
    specs.append({"method": "bosh3", "path": "Linear", "pred": "velocity", "kw": {"num_steps": 4, "atol": 1e-7, "rtol": 1e-5}})
    specs.append({"method": "dopri8", "path": "GVP", "pred": "score", "kw": {"num_steps": 4, "atol": 1e-7, "rtol": 1e-5}})
    for method, path, pred, steps in (("euler", "Linear", "velocity", 7), ("heun2", "GVP", "score", 6),
                                      ("euler", "Linear", "noise", 7), ("heun2", "VP", "velocity", 6)):
        specs.append({"method": method, "path": path, "pred": pred, "kw": {"num_steps": steps, "reverse": True},
                      "traj": True, "tag": f"{method}_reverse"})
    # non-default eps (create_transport honours sample_eps only when train_eps is given too)
    specs.append({"method": "euler", "path": "GVP", "pred": "noise", "kw": {"num_steps": 6}, "traj": True,
                  "eps": (1e-3, 0.02), "tag": "euler_eps"})
    specs.append({"method": "heun2", "path": "VP", "pred": "velocity", "kw": {"num_steps": 5}, "traj": True,
                  "eps": (1e-5, 0.05), "tag": "heun2_eps"})
    specs.append({"method": "euler", "path": "Linear", "pred": "score", "kw": {"num_steps": 6}, "traj": True,
                  "eps": (None, 0.05), "tag": "euler_eps_ignored"})
    for s in specs:
        s["key"] = f"ode.{s.get('tag', s['method'])}.{s['path']}.{s['pred']}"
    return specs


def sde_specs() -> list[dict[str, Any]]:
    """Official ``sample_sde`` runs (``num_steps`` 8)."""
    specs = []

    def add(tag: str, method: str, path: str, pred: str, form: str, norm: float | str, last: str | None,
            size: float, traj: bool = False) -> None:
        specs.append({
            "key": f"sde.{tag}.{method}.{path}.{pred}", "method": method, "path": path, "pred": pred, "traj": traj,
            "kw": {"sampling_method": method, "diffusion_form": form, "diffusion_norm": norm, "last_step": last,
                   "last_step_size": size, "num_steps": 8},
        })

    # every path x prediction, both samplers, the official default diffusion and last step
    for path, pred in PAIRS:
        for method in ("Euler", "Heun"):
            traj = (path, pred) in (("Linear", "velocity"), ("GVP", "noise"), ("VP", "score"))
            add("default", method, path, pred, "sigma", 1.0, "Mean", 0.04, traj=traj)
    # every diffusion form with a norm != 1, both samplers ("tensor:x": diffusion_norm=torch.tensor(x), which
    # the official "constant" form needs: with a float it returns a float and th.sqrt(2 * diffusion) raises)
    forms = [
        ("constant", "tensor:0.6", "Linear", "velocity"), ("constant", 0.6, "Linear", "velocity"),
        ("SBDM", 0.6, "Linear", "noise"), ("SBDM", 0.6, "VP", "velocity"), ("SBDM", 0.6, "GVP", "score"),
        ("SBDM", 0.6, "Linear", "velocity"),
        ("sigma", 1.7, "GVP", "velocity"), ("linear", 1.7, "VP", "noise"), ("decreasing", 0.6, "Linear", "score"),
        ("decreasing", 1.7, "GVP", "velocity"),
        ("inccreasing-decreasing", 1.7, "GVP", "noise"), ("increasing-decreasing", 1.7, "GVP", "noise"),
    ]
    for form, norm, path, pred in forms:
        tag = f"{form}_{str(norm).replace(':', '')}"
        for method in ("Euler", "Heun"):
            add(tag, method, path, pred, form, norm, "Mean", 0.04)
    # every last step with a non-default size (0.07), both samplers, diffusion "sigma" with norm 1.3
    lasts = [
        (None, "Linear", "velocity"), (None, "GVP", "noise"), (None, "VP", "score"),
        ("Mean", "GVP", "velocity"), ("Mean", "VP", "noise"),
        ("Tweedie", "Linear", "velocity"), ("Tweedie", "VP", "noise"), ("Tweedie", "GVP", "score"),
        ("Euler", "GVP", "score"), ("Euler", "Linear", "noise"), ("Euler", "VP", "velocity"),
    ]
    for last, path, pred in lasts:
        for method in ("Euler", "Heun"):
            add(f"last{last}_0.07", method, path, pred, "sigma", 1.3, last, 0.07)
    # non-default eps: the interval ends at 1 - sample_eps without a last step; SBDM starts at sample_eps
    add("eps_1e-05_0.05", "Euler", "VP", "velocity", "linear", 0.8, None, 0.04)
    specs[-1]["eps"] = (1e-5, 0.05)
    add("eps_0.001_0.03", "Heun", "GVP", "score", "SBDM", 0.8, None, 0.04)
    specs[-1]["eps"] = (1e-3, 0.03)
    return specs


def cfg_specs() -> list[dict[str, Any]]:
    """Guided runs, as ``sample.py``: ``sample_fn(cat([z, z]), forward_with_cfg, y=cat([y, null]), cfg_scale)``."""
    return [
        {"key": "cfg.ode.euler.GVP.noise", "kind": "ode", "path": "GVP", "pred": "noise", "scale": 2.5,
         "kw": {"sampling_method": "euler", "num_steps": 7}},
        {"key": "cfg.ode.heun2.Linear.velocity", "kind": "ode", "path": "Linear", "pred": "velocity", "scale": 4.0,
         "kw": {"sampling_method": "heun2", "num_steps": 6}},
        {"key": "cfg.ode.dopri5.VP.score", "kind": "ode", "path": "VP", "pred": "score", "scale": 1.5,
         "kw": {"sampling_method": "dopri5", "num_steps": 5, "atol": 1e-8, "rtol": 1e-6}},
        {"key": "cfg.sde.Euler.Linear.velocity", "kind": "sde", "path": "Linear", "pred": "velocity", "scale": 1.5,
         "kw": {"sampling_method": "Euler", "diffusion_form": "sigma", "diffusion_norm": 1.0, "last_step": "Mean",
                "last_step_size": 0.04, "num_steps": 8}},
        {"key": "cfg.sde.Heun.VP.score", "kind": "sde", "path": "VP", "pred": "score", "scale": 3.0,
         "kw": {"sampling_method": "Heun", "diffusion_form": "SBDM", "diffusion_norm": 0.5, "last_step": "Tweedie",
                "last_step_size": 0.06, "num_steps": 8}},
    ]


def likelihood_specs() -> list[dict[str, Any]]:
    """Official ``sample_ode_likelihood`` runs; ``probe`` "recorded" (the official draws, in order) or
    "fixed" (adaptive solvers: one stored probe at every evaluation, so that our solve can use it too)."""
    rows = [
        ("heun2", "Linear", "velocity", {"num_steps": 6}, "recorded"),
        ("euler", "GVP", "velocity", {"num_steps": 8}, "recorded"),
        ("heun2", "GVP", "score", {"num_steps": 6}, "recorded"),
        ("euler", "Linear", "noise", {"num_steps": 8}, "recorded"),
        ("rk4", "Linear", "score", {"num_steps": 4}, "recorded"),
        ("euler", "VP", "velocity", {"num_steps": 8}, "recorded"),
        ("heun2", "VP", "score", {"num_steps": 6}, "recorded"),
        ("euler", "VP", "noise", {"num_steps": 8}, "recorded"),
        ("dopri5", "Linear", "velocity", {"num_steps": 5, "atol": 1e-8, "rtol": 1e-6}, "fixed"),
        ("dopri5", "GVP", "noise", {"num_steps": 5, "atol": 1e-8, "rtol": 1e-6}, "fixed"),
    ]
    return [{"key": f"likelihood.{m}.{p}.{q}", "method": m, "path": p, "pred": q,
             "kw": {"atol": 1e-6, "rtol": 1e-3, **kw}, "probe": probe} for m, p, q, kw, probe in rows]


def loss_specs() -> list[dict[str, Any]]:
    """``training_losses`` with non-default eps (the official ``create_transport`` honours ``train_eps`` for
    VP and for Linear/GVP score/noise models, and forces 0 for Linear/GVP velocity)."""
    specs = []
    for path in ("Linear", "GVP"):
        for pred in ("score", "noise"):
            for weight in (None, "velocity", "likelihood"):
                specs.append((path, pred, weight, 0.05, 0.02))
        specs.append((path, "velocity", None, 0.05, 0.02))  # ignored by the official code (forced to 0)
    for pred in ("velocity", "score", "noise"):
        for weight in ((None,) if pred == "velocity" else (None, "velocity", "likelihood")):
            specs.append(("VP", pred, weight, 0.01, 0.02))
    return [{"key": f"loss.{p}.{q}.{w or 'none'}.train_eps{te}", "path": p, "pred": q, "weight": w, "train_eps": te,
             "sample_eps": se} for p, q, w, te, se in specs]


# ----------------------------------------------------------------------------------------------------------
# running the official calls
# ----------------------------------------------------------------------------------------------------------


def _status(result: Any) -> str:
    tensors = result if isinstance(result, (list, tuple)) else [result]
    return "ok" if all(torch.isfinite(r).all() for r in tensors) else "nonfinite"


def _norm(value: float | str) -> tuple[float | torch.Tensor, str]:
    """The official ``diffusion_norm`` argument and how the manifest writes it."""
    if isinstance(value, str) and value.startswith("tensor:"):
        x = float(value.split(":", 1)[1])
        return torch.tensor(x), f"torch.tensor({x})"
    return float(value), repr(float(value))


class OfficialRuns:
    """Runs every official call on the fixture network and collects tensors + manifest entries."""

    def __init__(self, official: Official, model: torch.nn.Module) -> None:
        self.off = official
        self.net = OfficialConvention(model, official.forward_with_cfg)
        g = torch.Generator().manual_seed(SEED)
        self.z = torch.randn(N, *SHAPE, generator=g)  # (N, C, H, W) initial noise
        self.x1 = torch.randn(N, *SHAPE, generator=g) * 0.7 + 0.2  # data for the likelihood
        self.loss_x1 = torch.randn(N_LOSS, *SHAPE, generator=g) * 0.7 + 0.2
        self.y = torch.tensor(LABELS)
        self.loss_y = torch.tensor(LOSS_LABELS)
        self.probe = (torch.randint(0, 2, (N, *SHAPE), generator=g) * 2 - 1).to(torch.int8)
        self.tensors: dict[str, dict[str, torch.Tensor]] = {n: {} for n in ("inputs", "ode", "sde", "cfg", "likelihood",
                                                                             "losses")}
        self.runs: dict[str, dict[str, Any]] = {n: {} for n in ("ode", "sde", "cfg", "likelihood", "losses")}
        self.noise_draws: list[torch.Tensor] = []  # the longest recorded draw sequence (seed NOISE_SEED)

    # -- helpers -------------------------------------------------------------------------------------
    def _interval(self, transport: Any, **kw: Any) -> list[float]:
        return [float(v) for v in transport.check_interval(transport.train_eps, transport.sample_eps, eval=True, **kw)]

    @staticmethod
    def _eps(transport: Any, given: tuple[float | None, float | None]) -> dict[str, Any]:
        """What ``create_transport`` was given and what it kept (it forces 0 for Linear/GVP velocity and
        ignores ``sample_eps`` when ``train_eps`` is None)."""
        return {"train_eps_given": given[0], "sample_eps_given": given[1], "train_eps": float(transport.train_eps),
                "sample_eps": float(transport.sample_eps)}

    def _recording_randn(self, draws: list[torch.Tensor]) -> Callable[..., torch.Tensor]:
        def randn(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = torch.randn(*args, **kwargs)
            draws.append(out.clone())
            return out

        return randn

    def _put(self, file: str, key: str, name: str, value: torch.Tensor) -> str:
        full = f"{key}.{name}"
        self.tensors[file][full] = value.detach().clone().contiguous()
        return full

    # -- ODE -----------------------------------------------------------------------------------------
    def ode(self, spec: dict[str, Any]) -> None:
        kw = {"sampling_method": spec["method"], "atol": 1e-6, "rtol": 1e-3, "reverse": False, **spec["kw"]}
        eps = spec.get("eps", (None, None))
        transport = self.off.create_transport(spec["path"], spec["pred"], None, *eps)
        entry: dict[str, Any] = {
            "call": f"Sampler({_ct(spec['path'], spec['pred'], None, *eps)}).sample_ode("
                    + ", ".join(f"{k}={v!r}" for k, v in kw.items())
                    + f")({'x1' if kw['reverse'] else 'z'}, model.forward, y=y)",
            "path_type": spec["path"], "prediction": spec["pred"], "official_kwargs": kw,
            **self._eps(transport, eps), "interval": self._interval(transport, sde=False, reverse=kw["reverse"]),
        }
        start = self.x1 if kw["reverse"] else self.z
        self.net.calls.clear()
        try:
            with torch.no_grad():
                traj = self.off.Sampler(transport).sample_ode(**kw)(start, self.net.forward, y=self.y)
        except Exception as err:  # the official code fails for some settings: record how
            entry.update(status="raised", error=f"{type(err).__name__}: {err}", nfe_before_error=len(self.net.calls),
                         max_eval_t=max(self.net.calls, default=None), tensors={})
            self.runs["ode"][spec["key"]] = entry
            return
        entry["status"] = _status(traj)
        entry["nfe"] = len(self.net.calls)
        tensors = {"final": self._put("ode", spec["key"], "final", traj[-1]),
                   "eval_t": self._put("ode", spec["key"], "eval_t", torch.tensor(self.net.calls))}
        if spec.get("traj"):
            tensors["traj"] = self._put("ode", spec["key"], "traj", traj)
        entry["tensors"] = tensors
        self.runs["ode"][spec["key"]] = entry

    # -- SDE -----------------------------------------------------------------------------------------
    def sde(self, spec: dict[str, Any]) -> None:
        kw = dict(spec["kw"])
        norm, norm_text = _norm(kw["diffusion_norm"])
        kw_text = {**kw, "diffusion_norm": norm_text}
        eps = spec.get("eps", (None, None))
        transport = self.off.create_transport(spec["path"], spec["pred"], None, *eps)
        size = kw["last_step_size"] if kw["last_step"] is not None else 0.0
        entry: dict[str, Any] = {
            "call": f"torch.manual_seed({NOISE_SEED}); "
                    f"Sampler({_ct(spec['path'], spec['pred'], None, *eps)}).sample_sde("
                    + ", ".join(f"{k}={v if k == 'diffusion_norm' else repr(v)}" for k, v in kw_text.items())
                    + ")(z, model.forward, y=y)",
            "path_type": spec["path"], "prediction": spec["pred"],
            "official_kwargs": {**kw, "diffusion_norm": float(norm)},
            "diffusion_norm_is_tensor": isinstance(norm, torch.Tensor), **self._eps(transport, eps),
            "interval": self._interval(transport, sde=True, diffusion_form=kw["diffusion_form"], last_step_size=size),
        }
        draws: list[torch.Tensor] = []
        self.net.calls.clear()
        torch.manual_seed(NOISE_SEED)
        try:
            with torch.no_grad(), _patched_th(self.off.integrators, randn=self._recording_randn(draws)):
                xs = self.off.Sampler(transport).sample_sde(**{**kw, "diffusion_norm": norm})(self.z, self.net.forward,
                                                                                                y=self.y)
        except Exception as err:
            entry.update(status="raised", error=f"{type(err).__name__}: {err}", nfe_before_error=len(self.net.calls),
                         tensors={})
            self.runs["sde"][spec["key"]] = entry
            return
        self._check_prefix(draws)
        entry.update(
            status=_status(xs), nfe=len(self.net.calls), noise=f"inputs: noise_bank[:{len(draws)}]",
            noise_draws=len(draws),
        )
        tensors = {"final": self._put("sde", spec["key"], "final", xs[-1]),
                   "eval_t": self._put("sde", spec["key"], "eval_t", torch.tensor(self.net.calls))}
        if spec.get("traj"):
            tensors["traj"] = self._put("sde", spec["key"], "traj", torch.stack(xs))
        entry["tensors"] = tensors
        self.runs["sde"][spec["key"]] = entry

    def _check_prefix(self, draws: list[torch.Tensor]) -> None:
        """Every SDE call starts from the same seed, so its draws are a prefix of one sequence."""
        common = min(len(draws), len(self.noise_draws))
        for a, b in zip(draws[:common], self.noise_draws[:common], strict=True):
            if not torch.equal(a, b):
                raise RuntimeError("the official SDE draws are not a prefix of one sequence: something else "
                                   "consumed the global RNG")
        if len(draws) > len(self.noise_draws):
            self.noise_draws = [d.clone() for d in draws]

    # -- guidance ------------------------------------------------------------------------------------
    def cfg(self, spec: dict[str, Any]) -> None:
        kw = dict(spec["kw"])
        transport = self.off.create_transport(spec["path"], spec["pred"], None, None, None)
        sampler = self.off.Sampler(transport)
        zz = torch.cat([self.z, self.z])  # (2N, C, H, W)
        yy = torch.cat([self.y, torch.full_like(self.y, NULL_CLASS)])
        entry: dict[str, Any] = {
            "call": f"Sampler({_ct(spec['path'], spec['pred'])}).sample_{spec['kind']}("
                    + ", ".join(f"{k}={v!r}" for k, v in kw.items())
                    + f")(cat([z, z]), model.forward_with_cfg, y=cat([y, null]), cfg_scale={spec['scale']})",
            "kind": spec["kind"], "path_type": spec["path"], "prediction": spec["pred"], "official_kwargs": kw,
            "cfg_scale": spec["scale"], "guidance_channels": 3, "null_class": NULL_CLASS,
            "note": "as sample.py: final[:N] are the guided samples (it keeps samples.chunk(2)[0]); "
                    "forward_with_cfg guides channels 0..2 only and evaluates the network on the first half twice",
        }
        draws: list[torch.Tensor] = []
        self.net.calls.clear()
        with torch.no_grad():
            if spec["kind"] == "ode":
                kw = {"atol": 1e-6, "rtol": 1e-3, **kw}
                entry["official_kwargs"] = kw
                out = sampler.sample_ode(**kw)(zz, self.net.forward_with_cfg, y=yy, cfg_scale=spec["scale"])
            else:
                torch.manual_seed(NOISE_SEED)
                with _patched_th(self.off.integrators, randn=self._recording_randn(draws)):
                    out = sampler.sample_sde(**kw)(zz, self.net.forward_with_cfg, y=yy, cfg_scale=spec["scale"])
        entry.update(status=_status(out), nfe=len(self.net.calls))
        tensors = {"final": self._put("cfg", spec["key"], "final", out[-1][:N]),
                   "eval_t": self._put("cfg", spec["key"], "eval_t", torch.tensor(self.net.calls))}
        if draws:
            tensors["noise"] = self._put("cfg", spec["key"], "noise", torch.stack([d[:N] for d in draws]))
            entry["noise_note"] = ("the first N rows of each Brownian draw (the state is 2N; the second half never "
                                   "reaches the guided half: forward_with_cfg evaluates x[:N] only)")
        entry["tensors"] = tensors
        self.runs["cfg"][spec["key"]] = entry

    # -- likelihood ----------------------------------------------------------------------------------
    def likelihood(self, spec: dict[str, Any]) -> None:
        kw = {"sampling_method": spec["method"], **spec["kw"]}
        transport = self.off.create_transport(spec["path"], spec["pred"], None, None, None)
        entry: dict[str, Any] = {
            "call": f"torch.manual_seed({PROBE_SEED}); Sampler({_ct(spec['path'], spec['pred'])}).sample_ode_likelihood("
                    + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ")(x1, model.forward, y=y) -> (logp, z)",
            "path_type": spec["path"], "prediction": spec["pred"], "official_kwargs": kw, "probe": spec["probe"],
            "interval_s": self._interval(transport, sde=False),
            "note": "ODE time s runs over linspace(*interval_s, num_steps); the model is called at t = 1 - s. "
                    "prior_logp = transport.prior_logp(z); delta_logp = prior_logp - logp.",
        }
        draws: list[torch.Tensor] = []
        fixed = self.probe.to(torch.float32)

        def randint(*args: Any, **kwargs: Any) -> torch.Tensor:
            if spec["probe"] == "fixed":  # what randint(2, ...) would give for the stored probe
                out = ((fixed + 1) / 2).to(dtype=kwargs.get("dtype"), device=kwargs.get("device"))
            else:
                out = torch.randint(*args, **kwargs)
            draws.append(out.clone())
            return out

        if spec["probe"] == "fixed":
            entry["probe_note"] = ("torch.randint in transport.transport returned (probe + 1) / 2 at every "
                                   "evaluation (the official eps = randint * 2 - 1 is then inputs: probe)")
        self.net.calls.clear()
        torch.manual_seed(PROBE_SEED)
        try:
            with torch.no_grad(), _patched_th(self.off.transport_module, randint=randint):
                logp, z = self.off.Sampler(transport).sample_ode_likelihood(**kw)(self.x1, self.net.forward, y=self.y)
        except Exception as err:
            entry.update(status="raised", error=f"{type(err).__name__}: {err}", tensors={})
            self.runs["likelihood"][spec["key"]] = entry
            return
        prior = transport.prior_logp(z)
        entry.update(status=_status([logp, z]), model_calls=len(self.net.calls), function_evals=len(draws))
        tensors = {
            "logp": self._put("likelihood", spec["key"], "logp", logp),
            "prior_logp": self._put("likelihood", spec["key"], "prior_logp", prior),
            "delta_logp": self._put("likelihood", spec["key"], "delta_logp", prior - logp),
            "z": self._put("likelihood", spec["key"], "z", z),
            "eval_t": self._put("likelihood", spec["key"], "eval_t", torch.tensor(self.net.calls)),
        }
        if spec["probe"] == "recorded":
            eps = torch.stack(draws) * 2 - 1  # (evals, N, C, H, W), the official eps
            tensors["hutchinson_eps"] = self._put("likelihood", spec["key"], "hutchinson_eps", eps.to(torch.int8))
        entry["tensors"] = tensors
        self.runs["likelihood"][spec["key"]] = entry

    # -- training objective --------------------------------------------------------------------------
    def loss(self, spec: dict[str, Any]) -> None:
        transport = self.off.create_transport(spec["path"], spec["pred"], spec["weight"], spec["train_eps"],
                                              spec["sample_eps"])
        drawn: dict[str, torch.Tensor] = {}
        original = transport.sample

        def sample(x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            t, x0, x1 = original(x1)
            drawn.update(t=t, x0=x0)
            return t, x0, x1

        transport.sample = sample
        torch.manual_seed(LOSS_SEED)
        with torch.no_grad():
            terms = transport.training_losses(self.net.forward, self.loss_x1, dict(y=self.loss_y))
        if "loss_x0" in self.tensors["inputs"]:
            if not torch.equal(self.tensors["inputs"]["loss_x0"], drawn["x0"]):
                raise RuntimeError("the official x0 draws differ between loss calls with one seed")
        else:
            self.tensors["inputs"]["loss_x0"] = drawn["x0"].clone()
        key = spec["key"]
        self.runs["losses"][key] = {
            "call": f"torch.manual_seed({LOSS_SEED}); "
                    + _ct(spec["path"], spec["pred"], spec["weight"], spec["train_eps"], spec["sample_eps"])
                    + ".training_losses(model.forward, loss_x1, dict(y=loss_y))",
            "path_type": spec["path"], "prediction": spec["pred"], "loss_weight": spec["weight"],
            "train_eps_given": spec["train_eps"], "sample_eps_given": spec["sample_eps"],
            "train_eps": float(transport.train_eps), "sample_eps": float(transport.sample_eps),
            "train_interval": [float(v) for v in transport.check_interval(transport.train_eps, transport.sample_eps)],
            "status": _status(terms["loss"]),
            "tensors": {"t": self._put("losses", key, "t", drawn["t"]), "x0": "inputs: loss_x0",
                        "x1": "inputs: loss_x1", "pred": self._put("losses", key, "pred", terms["pred"]),
                        "loss": self._put("losses", key, "loss", terms["loss"])},
        }

    # -- everything ----------------------------------------------------------------------------------
    def run_all(self) -> None:
        for spec in ode_specs():
            self.ode(spec)
        for spec in sde_specs():
            self.sde(spec)
        for spec in cfg_specs():
            self.cfg(spec)
        for spec in likelihood_specs():
            self.likelihood(spec)
        for spec in loss_specs():
            self.loss(spec)
        inputs = self.tensors["inputs"]
        inputs.update(z=self.z, y=self.y.float(), x1=self.x1, loss_x1=self.loss_x1, loss_y=self.loss_y.float(),
                      probe=self.probe, noise_bank=torch.stack(self.noise_draws))


# ----------------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------------

README = """# Extended reference outputs of the official SiT code

Made by `python benchmarks/make_official_fixtures.py --official-repo <export of github willisma/SiT>` (the
command, seed and versions are in `manifest.json`). They extend `../public` to the options of the official
`transport` package that the public set does not exercise; `tests/test_official_extended.py` holds our code
to them. `SHA256SUMS` lists every file here and the test checks it before reading anything.

How they were made: the official `transport/` code of commit {commit} (unmodified; the sha256 of each
file is in the manifest) is run with **our** `SiTTransformer2DModel`, converted from `../public/original_checkpoint.pt`,
as its model: `model(x, t, y)` with raw `t` in [0, 1], returning the first `in_channels` channels as the
official `SiT.forward` does for `learn_sigma` models. Our network equals the official one to 1e-5
(`tests/test_modeling_sit.py`); using it on both sides makes these files a test of the sampling, likelihood
and objective math alone. Guidance uses the official `SiT.forward_with_cfg`, compiled from the official
`models.py` source and bound to our network (the module itself needs timm). One CPU thread, no grad.

| file | what |
|---|---|
| `inputs.safetensors` | `z` (initial noise, N = 2), `y` (labels as float), `x1` (likelihood data), `loss_x1`, `loss_y`, `loss_x0` (the official x0 draw of every loss call), `probe` (int8 Rademacher probe of the adaptive likelihood runs), `noise_bank` (the Brownian draws of the SDE runs, in order: each run's draws are a prefix of it) |
| `ode.safetensors` | `sample_ode` for every path x prediction with euler / heun2 / dopri5, tighter and looser dopri5 tolerances, midpoint / rk4 / bosh3 / dopri8, reverse runs, non-default `sample_eps`: `final`, `eval_t` (time of each network call), `traj` (the whole `odeint` output) for most fixed-step runs |
| `sde.safetensors` | `sample_sde` Euler and Heun: every path x prediction (default diffusion), every diffusion form with norm != 1, every last step with size 0.07, non-default `sample_eps`: `final`, `eval_t`, `traj` for three of the default runs |
| `cfg.safetensors` | guided ODE / SDE runs through `forward_with_cfg`: `final` (the guided half), `eval_t`, `noise` (first half of each Brownian draw) |
| `likelihood.safetensors` | `sample_ode_likelihood`: `logp`, `prior_logp`, `delta_logp`, `z`, `eval_t`, `hutchinson_eps` (int8) |
| `losses.safetensors` | `training_losses` with non-default `train_eps` / `sample_eps`: `t`, `pred`, `loss` |

Runs where the official code raises or returns NaN/inf are kept in the manifest with `status` `raised` /
`nonfinite` (no tensors, or the non-finite ones): they document where the official sampler fails.

Counting steps: a fixed-step official run with `num_steps = K` grid points takes `K - 1` steps; an SDE run
with a last step makes `K - 1` stochastic steps and the last step (`sample_sde` returns `K` states, `z` not
included). The official SDE evaluates the network twice per drift (drift and score), so `eval_t` repeats.
"""


def build_manifest(gen: OfficialRuns, official: Official, checkpoint: Path) -> dict[str, Any]:
    import safetensors
    import torchdiffeq

    return {
        "set": "extended",
        "command": "python benchmarks/make_official_fixtures.py --official-repo <export> --overwrite",
        "seeds": {"inputs": SEED, "sde_noise": NOISE_SEED, "likelihood_probes": PROBE_SEED, "losses": LOSS_SEED},
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__, "torchdiffeq": torchdiffeq.__version__,
            "safetensors": safetensors.__version__, "torch_num_threads": torch.get_num_threads(),
            "official_sit_commit": OFFICIAL_COMMIT,
        },
        "official_files_sha256": official.file_sha256,
        "official_files_match_commit": official.file_sha256 == OFFICIAL_FILES,
        "model": {
            "what": "sit_diffusers.conversion.load_official_checkpoint(checkpoint, num_heads=4).eval(), called as "
                    "the official SiT: forward(x, t, y) = model(x, t, y).sample (first in_channels channels)",
            "checkpoint": "tests/fixtures/official_sit/public/original_checkpoint.pt"
            if checkpoint.resolve() == DEFAULT_CHECKPOINT.resolve() else str(checkpoint),
            "checkpoint_sha256": _sha256(checkpoint),
            "forward_with_cfg": "the official SiT.forward_with_cfg function (models.py), compiled from its source and "
                                "bound to the model above",
        },
        "conventions": {
            "time": "t in [0, 1]; t = 0 noise x0, t = 1 data x1; x_t = alpha_t x1 + sigma_t x0; the model gets raw t",
            "labels": "stored as float32 holding integers (cast with .long()); null class = 10",
            "dtypes": "float32 except hutchinson_eps and probe (int8, +-1)",
        },
        "inputs": {"N": N, "labels": LABELS, "loss_labels": LOSS_LABELS, "null_class": NULL_CLASS,
                   "z": "randn(N, 4, 8, 8) from torch.Generator().manual_seed(0), then x1, loss_x1 (randn * 0.7 + 0.2) "
                        "and probe from the same generator",
                   "noise_bank": f"the Brownian draws th.randn(x.size()) of the longest SDE call after "
                                 f"torch.manual_seed({NOISE_SEED}), in order"},
        "files": {
            "ode.safetensors": {"description": "Sampler.sample_ode, model.eval(), torch.no_grad(); traj = the odeint "
                                               "output at linspace(*interval, num_steps) (reverse: the official "
                                               "interval is already mirrored, 1 - t0 -> 1 - t1)",
                                "runs": gen.runs["ode"]},
            "sde.safetensors": {"description": "Sampler.sample_sde, model.eval(), torch.no_grad(); Brownian draws "
                                               "recorded by replacing the integrators module's torch alias (th.randn) "
                                               "with a recorder during the call",
                                "returned": "num_steps states (z not included): x after each of the num_steps - 1 "
                                            "steps over linspace(*interval, num_steps)[:-1], then the last step at "
                                            "interval[1] (last_step None: x repeated)",
                                "model_calls": "2 per sde_drift (drift, then score, at the same x and t); 1 for an "
                                               "Euler or Tweedie last step, 0 for None",
                                "runs": gen.runs["sde"]},
            "cfg.safetensors": {"description": "guided sampling as sample.py", "runs": gen.runs["cfg"]},
            "likelihood.safetensors": {"description": "Sampler.sample_ode_likelihood under torch.no_grad() (as "
                                                      "sample.py; its drift enables grad)",
                                       "runs": gen.runs["likelihood"]},
            "losses.safetensors": {"description": "Transport.training_losses, model.eval(), torch.no_grad(); "
                                                  "Transport.sample wrapped to record the (t, x0) it drew",
                                   "runs": gen.runs["losses"]},
        },
    }


def write_fixtures(folder: Path, gen: OfficialRuns, manifest: dict[str, Any]) -> None:
    """Write the safetensors files, manifest.json, README.md and SHA256SUMS into ``folder``."""
    from safetensors.torch import save_file

    names = []
    for name, tensors in gen.tensors.items():
        save_file(tensors, str(folder / f"{name}.safetensors"))
        names.append(f"{name}.safetensors")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (folder / "README.md").write_text(README.format(commit=OFFICIAL_COMMIT[:7]))
    names += ["manifest.json", "README.md"]
    for name in names:
        (folder / name).chmod(0o644)
    lines = [f"{_sha256(folder / n)}  {n}" for n in sorted(names)]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                  allow_abbrev=False)
    p.add_argument("--official-repo", type=Path, required=True,
                   help="folder of an export of github willisma/SiT (with transport/ and models.py)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUT,
                   help="folder to write (default tests/fixtures/official_sit/extended); replaced atomically")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists and is not empty")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="official-format checkpoint of the fixture network (default: the public one)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, >= 1 (default 1)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def check_export(repo: Path, files: Sequence[str]) -> None:
    """``--official-repo`` must be a folder holding ``files`` (an export of willisma/SiT); shared by the three
    fixture generators. ``InputError`` names the folder and the missing files."""
    if not repo.is_dir():
        raise InputError(f"--official-repo {str(repo)!r} is not a folder; give an export of github willisma/SiT "
                         "(git archive <commit> | tar -x -C <folder>)")
    missing = [name for name in files if not (repo / name).is_file()]
    if missing:
        raise InputError(f"--official-repo {str(repo)!r} is not an export of github willisma/SiT: missing "
                         f"{', '.join(missing)}")


def check_official_repo(repo: Path) -> Path:
    """The export must hold the official files this script runs (names them when not)."""
    check_export(repo, list(OFFICIAL_FILES))
    try:
        _official_method(repo / "models.py", "SiT", "forward_with_cfg")
    except (StopIteration, SyntaxError) as err:
        raise InputError(f"--official-repo {str(repo)!r}: models.py has no readable SiT.forward_with_cfg "
                         f"({type(err).__name__})") from err
    return repo.resolve()


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    repo = check_official_repo(args.official_repo)
    check_int("--threads", args.threads, minimum=1)
    if not args.checkpoint.is_file():
        raise InputError(f"--checkpoint {str(args.checkpoint)!r} is not a file; give an official-format checkpoint "
                         f"of the fixture network (default {DEFAULT_CHECKPOINT.relative_to(REPO_ROOT)})")
    out = check_output_folder(args.output, overwrite=args.overwrite, keep=[repo, args.checkpoint], name="--output",
                              overwrite_name="--overwrite")
    torch.set_num_threads(args.threads)

    from sit_diffusers.conversion import load_official_checkpoint

    official = Official(repo)
    if official.file_sha256 != OFFICIAL_FILES:
        print(f"{PROG}: warning: the official files differ from commit {OFFICIAL_COMMIT[:7]} (sha256 in the "
              "manifest)", file=sys.stderr)
    model = load_official_checkpoint(args.checkpoint, num_heads=4)
    gen = OfficialRuns(official, model)
    gen.run_all()
    manifest = build_manifest(gen, official, args.checkpoint)
    write_folder_atomically(out, lambda tmp: write_fixtures(tmp, gen, manifest))
    total = sum(p.stat().st_size for p in out.iterdir())
    counts = {k: len(v) for k, v in gen.runs.items()}
    print(f"wrote {out} ({total / 1e3:.0f} kB): {counts}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0; 2 for a bad flag or input (one line on stderr, ``--debug`` for the traceback)."""
    from sit_diffusers.conversion import ConversionError

    return run_cli(PROG, run, argv, user_errors=(ConversionError,))


if __name__ == "__main__":
    sys.exit(main())
