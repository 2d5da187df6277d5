"""Few-step sampling: quality per network evaluation (NFE) of every flow sampler, ours and diffusers', side by side.

    python benchmarks/bench_few_step.py                                   # both targets, NFE 4 6 8 10 16 25 50
    python benchmarks/bench_few_step.py --quick                           # 20 digits, 500 points, NFE 4 8
    python benchmarks/bench_few_step.py --targets analytic --json few.json --plot docs/few_step.png
    python benchmarks/bench_few_step.py --rows "ode " unipc --reuse few.json --json few.json   # add rows only

Two targets, each sampled by every row at every NFE budget of ``--nfe`` from the SAME initial noise (and, for
the digits, the same class labels ``i % 10`` and guidance ``--guidance-scale``):

* ``digits``: the shipped class-conditional digits model (``sit_diffusers.DEFAULT_MODEL``, or ``--model``)
  run through ``SiTPipeline``. Columns: (a) RMSE of the final sample against a reference solution of the same
  guided ODE from the same noise (our dopri5 at atol 1e-7, rtol 1e-6; ODE rows only), (b) Frechet distance
  (FD) and conditional accuracy of the images to the 1,000 held-out real digits
  (:mod:`sit_diffusers.evaluation`), beside two reference lines: the FD of the reference solution itself (the
  converged ODE: what an exact ODE solver would score) and the real-vs-real floor. FD mixes the solver's error
  with the model's: a row whose FD is below the converged ODE's is carrying a bias that suits this model, not
  accuracy; such cells are marked ``‡``.
* ``analytic``: a 2-D mixture of 8 Gaussians on a circle (radius 2, std 0.25) whose velocity is exact in closed
  form (:class:`sit_diffusers.interpolants.GaussianMixture`, Linear path), no conditioning. Columns: (a) RMSE
  against the exact flow of the same noise (dopri5 at atol = rtol = 1e-10 in float64), (c) sliced W2 to the
  exact distribution (``--analytic-samples`` fresh exact samples, ``--projections`` random directions); the
  Monte-Carlo floor is the sliced W2 between two exact sample sets of the same size.

RMSE is ``sqrt(mean over samples and coordinates of (x - x_ref)^2)``: the root of the per-sample mean squared
error, averaged over samples (pixel units of [-1, 1] for the digits).

Rows (discovered at run time, so new solvers and presets appear without editing this file):

* ours: every fixed-step ``SiTSampler`` solver of every ``*_SOLVERS`` table of ``sit_diffusers.solvers`` (the ODE
  ones and the SDE ones, the latter with the default SDE settings) and every preset of ``SAMPLER_PRESETS``
  that is not adaptive; rows with one config are merged (``ode-euler`` is the ODE Euler solver). The step
  count for an NFE comes from ``sampler.num_model_evaluations``.
* diffusers (through the scheduler interop of :mod:`sit_diffusers.flow_schedulers`: ``t = 1 - sigma``,
  ``v = -u``): ``FlowMatchEulerDiscreteScheduler`` shift 1 and 3, ``FlowMatchHeunDiscreteScheduler``,
  ``UniPCMultistepScheduler`` and ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M, and its SDE variant) with
  flow sigmas at shift 1 and 3, and what else the installed diffusers offers for flows (``use_flow_sigmas``):
  ``DPMSolverSinglestepScheduler``, ``SASolverScheduler`` (tau 0: its ODE form), ``DEISMultistepScheduler``
  (refused when its schedule does not end at sigma 0; the table says so). The four SiTPipeline accepts run
  through ``pipe(...)``; the others through the pipeline's guided model and ``flow_schedulers.sample_flow``.
  On the analytic target every scheduler's ``step()`` runs on the closed-form velocity through ``sample_flow``.

A row runs at an NFE budget only if some step count makes exactly that many evaluations; otherwise, if one makes
exactly one fewer (Heun-type schedules with ``2 n - 1`` evaluations), that run is shown marked ``†``; else ``-``.

Every flag is checked before any work; a bad one prints ``benchmarks/bench_few_step.py: error: ...`` and exits
with status 2 (``--debug``: the traceback). ``--json`` and ``--plot`` are written atomically.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts, when imported
from bench_sampler import ring_mixture, sliced_w2  # noqa: E402  (the 8-Gaussian ring; sliced W2 by sorting)

from sit_diffusers import DEFAULT_MODEL  # noqa: E402
from sit_diffusers.atomic import write_file_atomically  # noqa: E402
from sit_diffusers.validation import (  # noqa: E402
    MAX_SEED,
    CLIParser,
    InputError,
    check_device,
    check_float,
    check_int,
    check_seed,
    check_writable_dir,
)
from sit_diffusers.validation import run_cli as _run_cli  # noqa: E402

PROG = "benchmarks/bench_few_step.py"
NFE_BUDGETS: tuple[int, ...] = (4, 6, 8, 10, 16, 25, 50)
QUICK_NFE: tuple[int, ...] = (4, 8)
TARGETS: tuple[str, ...] = ("digits", "analytic")
#: Reference solutions: our dopri5 from the same noise (digits: float32 pipeline state; analytic: float64).
DIGITS_REF_TOL: tuple[float, float] = (1e-7, 1e-6)  # (atol, rtol)
ANALYTIC_REF_TOL: tuple[float, float] = (1e-10, 1e-10)
PLOT_SUFFIXES: tuple[str, ...] = (".png", ".pdf", ".svg")
ONE_FEWER = "†"
BIASED = "‡"


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------


def rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``sqrt(mean over samples of the per-sample mean squared error)`` of ``x`` against ``ref`` ``(N, ...)``."""
    return float(((x.double() - ref.double()) ** 2).flatten(1).mean(1).mean().sqrt())


# ----------------------------------------------------------------------------------------------------------
# Rows: discovered from SiTSampler's solver tables and presets, and diffusers' flow schedulers
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One sampler of the table. ``make(model_config)`` builds a fresh scheduler (``model_config``: what the
    model was trained for, the pipeline's ``model_sampler_config``); ``kind`` is ``"ode"`` (deterministic: RMSE
    against the reference is defined) or ``"sde"``; ``in_pipeline``: ``SiTPipeline`` accepts it as its
    scheduler (else it runs through the guided model and ``sample_flow``); ``targets``: where it runs (a
    sampler config saved for one model, e.g. a fitted grid, runs on the digits only)."""

    name: str
    family: str  # "ours" | "diffusers"
    kind: str  # "ode" | "sde"
    make: Callable[[dict[str, Any]], Any]
    in_pipeline: bool = True
    targets: tuple[str, ...] = ("digits", "analytic")
    fit_per_nfe: bool = False  # analytic only: a grid fitted at each NFE on another batch (fitted_rows)


def config_rows(paths: Sequence[Path]) -> list[Row]:
    """One digits row per saved ``SiTSampler`` config (``scheduler_config.json``, e.g. a model's own sampler or
    a grid fitted to it); an unreadable file, an invalid config or an adaptive solver is an ``InputError``."""
    from sit_diffusers.scheduling_sit import SiTSampler

    rows = []
    for path in paths:
        try:
            cfg = json.loads(Path(path).read_text())
            sampler = SiTSampler.from_config(cfg)
        except (OSError, ValueError, TypeError) as err:  # InputError is a ValueError
            raise InputError(f"--sampler-config {str(path)!r} is not a readable SiTSampler config ({err})") from err
        if sampler.is_adaptive:
            raise InputError(f"--sampler-config {str(path)!r} has the adaptive solver {sampler.config.solver!r}, "
                             "which makes no fixed NFE; give a fixed-step sampler")
        c = sampler.config
        grid = c.get("time_grid", "uniform")
        label = f"{c.mode} {c.solver}, {grid} grid" + (
            f" fitted at {len(c.fitted_grid) - 1} steps" if grid == "fitted" and c.get("fitted_grid") else "")
        rows.append(Row(f"ours {label}: {Path(path).parent.name}/{Path(path).name}", "ours", c.mode,
                        lambda model, sampler=sampler: SiTSampler.from_config(sampler.config, **model),
                        targets=("digits",)))
    return rows


#: Parameters of a non-uniform time grid crossed with every ODE solver (``--grids``); a grid not listed
#: here runs with the sampler's defaults. Shift 3 is the shift of the diffusers rows.
GRID_PARAMETERS: dict[str, dict[str, Any]] = {"shifted": {"time_shift": 3.0}}


def available_grids() -> list[str]:
    """The non-uniform time grids ``SiTSampler`` offers (``sit_diffusers.time_grids.TIME_GRIDS`` without
    ``uniform``, the default, and ``fitted``, which needs a grid fitted to one model); ``[]`` without them."""
    try:
        from sit_diffusers.time_grids import TIME_GRIDS
    except ImportError:
        return []
    return [g for g in TIME_GRIDS if g not in ("uniform", "fitted")]


def _grid_label(grid: str) -> str:
    params = GRID_PARAMETERS.get(grid, {})
    return f"{grid} grid" + "".join(f" {k.removeprefix('time_')} {v:g}" for k, v in params.items())


def _sit_rows(grids: Sequence[str]) -> list[Row]:
    from sit_diffusers import solvers
    from sit_diffusers.scheduling_sit import SAMPLER_PRESETS, SiTSampler

    configs: list[tuple[str, dict[str, Any]]] = []
    ode_solvers = []
    for table in sorted(n for n in dir(solvers) if n.endswith("_SOLVERS") and n != "ODE_ADAPTIVE_SOLVERS"):
        entries = getattr(solvers, table)
        if not isinstance(entries, dict):
            continue
        mode = "sde" if table.startswith("SDE") else "ode"
        configs += [(f"{mode} {name}", {"mode": mode, "solver": name}) for name in entries]
        ode_solvers += [name for name in entries if mode == "ode"]
    for grid in grids:
        configs += [(f"ode {name}, {_grid_label(grid)}",
                     {"mode": "ode", "solver": name, "time_grid": grid, **GRID_PARAMETERS.get(grid, {})})
                    for name in ode_solvers]
    configs += [(f"preset {name}", dict(p["config"])) for name, p in SAMPLER_PRESETS.items()]
    merged: dict[str, tuple[list[str], dict[str, Any], str]] = {}  # resolved config -> names, config, mode
    for name, cfg in configs:
        try:
            sampler = SiTSampler(**cfg)
        except (InputError, TypeError, ValueError):
            continue  # a table entry SiTSampler does not take in this mode
        if sampler.is_adaptive:
            continue
        key = json.dumps({k: v for k, v in sampler.config.items() if not k.startswith("_")}, sort_keys=True,
                         default=str)
        merged.setdefault(key, ([], cfg, sampler.config.mode))[0].append(name)
    rows = []
    for names, cfg, mode in merged.values():
        solver_names = [n for n in names if not n.startswith("preset ")]
        presets = [n.removeprefix("preset ") for n in names if n.startswith("preset ")]
        title = solver_names[0] if solver_names else f"preset {presets[0]}"
        extra = presets if solver_names else presets[1:]
        name = "ours " + title + (f" ({', '.join(extra)})" if extra else "")
        rows.append(Row(name, "ours", mode, lambda model, cfg=cfg: SiTSampler(**{**cfg, **model})))
    return rows


def _diffusers_rows() -> list[Row]:
    import diffusers

    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    specs: list[tuple[str, str, str, dict[str, Any], bool]] = [
        ("FlowMatchEuler shift 1", "FlowMatchEulerDiscreteScheduler", "ode", {"shift": 1.0}, True),
        ("FlowMatchEuler shift 3", "FlowMatchEulerDiscreteScheduler", "ode", {"shift": 3.0}, True),
        ("FlowMatchHeun", "FlowMatchHeunDiscreteScheduler", "ode", {}, True),
        ("UniPC bh2 shift 1", "UniPCMultistepScheduler", "ode", {**flow, "flow_shift": 1.0}, True),
        ("UniPC bh2 shift 3", "UniPCMultistepScheduler", "ode", {**flow, "flow_shift": 3.0}, True),
        ("DPM-Solver++ 2M shift 1", "DPMSolverMultistepScheduler", "ode", {**flow, "flow_shift": 1.0}, True),
        ("DPM-Solver++ 2M shift 3", "DPMSolverMultistepScheduler", "ode", {**flow, "flow_shift": 3.0}, True),
        ("SDE-DPM-Solver++ 2M shift 1", "DPMSolverMultistepScheduler", "sde",
         {**flow, "flow_shift": 1.0, "algorithm_type": "sde-dpmsolver++"}, True),
        ("DPM-Solver++ 2S singlestep shift 1", "DPMSolverSinglestepScheduler", "ode", {**flow, "flow_shift": 1.0},
         False),
        ("SA-Solver tau 0 shift 1", "SASolverScheduler", "ode",
         {**flow, "flow_shift": 1.0, "tau_func": lambda t: 0.0}, False),
        ("DEIS 2 shift 1", "DEISMultistepScheduler", "ode", {**flow, "flow_shift": 1.0}, False),
    ]
    rows = []
    for label, cls_name, kind, kwargs, in_pipe in specs:
        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            continue

        def make(model: dict[str, Any], cls=cls, kwargs=kwargs) -> Any:
            return cls(**kwargs)

        rows.append(Row(f"diffusers {label}", "diffusers", kind, make, in_pipe))
    return rows


FIT_SEED_OFFSET = 10  # the fit batch of a fitted-grid row: noise seed --seed + 10, never the benchmark's
FIT_POINTS = 1000
FIT_EVALS = 150


def fitted_rows(solvers: Sequence[str]) -> list[Row]:
    """One analytic row per ODE solver whose time grid is fitted at each NFE (``time_grids.fit_time_grid``,
    Nelder-Mead, :data:`FIT_EVALS` runs) to the exact flow on a separate batch of :data:`FIT_POINTS` points
    (noise seed ``--seed + 10``), then run on the benchmark's noise: the per-model fitted grid of issue 15,
    with the analytic target as the model."""
    from sit_diffusers.scheduling_sit import SiTSampler

    return [Row(f"ours ode {s}, grid fitted per NFE (on another batch)", "ours", "ode",
                lambda cfg, s=s: SiTSampler(**{**cfg, "mode": "ode", "solver": s}), targets=("analytic",),
                fit_per_nfe=True) for s in solvers]


def discover_rows(grids: Sequence[str] = ()) -> list[Row]:
    """Every row, ours first; ``grids``: the non-uniform time grids to cross with every ODE solver."""
    return _sit_rows(grids) + _diffusers_rows()


def select_rows(rows: list[Row], patterns: Sequence[str] | None) -> list[Row]:
    """Rows whose name contains one of ``patterns`` (case-insensitive; ``None``: all). A pattern that
    matches no row is an ``InputError`` that lists the rows."""
    if not patterns:
        return rows
    for p in patterns:
        if not any(p.lower() in r.name.lower() for r in rows):
            raise InputError(f"--rows {p!r} matches no row; rows: {', '.join(r.name for r in rows)}")
    return [r for r in rows if any(p.lower() in r.name.lower() for p in patterns)]


def _nfe_of(scheduler: Any, steps: int) -> int | None:
    """Model evaluations of ``steps`` steps (``None``: not a valid step count for it)."""
    from sit_diffusers.flow_schedulers import plan_flow
    from sit_diffusers.scheduling_sit import SiTSampler

    try:
        if isinstance(scheduler, SiTSampler):
            return scheduler.num_model_evaluations(steps)
        return plan_flow(scheduler, steps).nfe
    except (InputError, ValueError, RuntimeError, IndexError):
        return None


def refusal(row: Row) -> str | None:
    """Why the scheduler interop refuses a diffusers row's schedule (``None``: it runs), e.g. a schedule that
    does not end at sigma 0 (``flow_schedulers.plan_flow``'s check)."""
    from sit_diffusers.flow_schedulers import plan_flow

    if row.family != "diffusers":
        return None
    try:
        plan_flow(row.make({}), 10)
    except InputError as err:
        return str(err)
    return None


def steps_for(scheduler: Any, budget: int) -> tuple[int, int] | None:
    """``(steps, nfe)``: the step count that makes exactly ``budget`` model evaluations, else one that makes
    ``budget - 1`` (marked in the table), else ``None``."""
    found: dict[int, int] = {}
    for steps in range(1, budget + 1):
        nfe = _nfe_of(scheduler, steps)
        if nfe is not None and nfe in (budget, budget - 1):
            found.setdefault(nfe, steps)
        if nfe is not None and nfe > budget:
            break
    for nfe in (budget, budget - 1):
        if nfe in found:
            return found[nfe], nfe
    return None


# ----------------------------------------------------------------------------------------------------------
# The analytic target: exact velocity in closed form
# ----------------------------------------------------------------------------------------------------------


def analytic_target(num_samples: int, seed: int, projections: int, tol: tuple[float, float] = ANALYTIC_REF_TOL
                    ) -> dict[str, Any]:
    """The 8-Gaussian ring, its noise ``(N, 2, 1, 1)`` (float64), the exact-flow reference from it, two sets of
    exact samples and the reference lines (Monte-Carlo floor of the sliced W2; the reference's W2)."""
    from sit_diffusers.scheduling_sit import SiTSampler

    gm = ring_mixture("linear")
    noise = torch.randn(num_samples, 2, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = gm.sample(num_samples, (2,), generator=torch.Generator().manual_seed(seed + 1))  # (N, 2)
    exact2 = gm.sample(num_samples, (2,), generator=torch.Generator().manual_seed(seed + 2))
    sampler = SiTSampler(mode="ode", solver="dopri5", atol=tol[0], rtol=tol[1])
    out = sampler.sample(gm.velocity, noise, 1)
    return {
        "mixture": gm, "noise": noise, "exact": exact, "reference": out.sample.flatten(1), "reference_nfe": out.nfe,
        "floor_w2": sliced_w2(exact, exact2, projections, seed),
        "reference_w2": sliced_w2(out.sample.flatten(1), exact, projections, seed),
    }


def run_analytic(row: Row, budget: int, target: dict[str, Any], seed: int, projections: int) -> dict[str, Any] | None:
    from sit_diffusers.flow_schedulers import plan_flow, sample_flow
    from sit_diffusers.scheduling_sit import SiTSampler

    scheduler = row.make({})
    plan = steps_for(scheduler, budget)
    if plan is None:
        return None
    steps, nfe = plan
    gen = torch.Generator().manual_seed(seed + 3)  # Brownian increments of the stochastic rows
    velocity = target["mixture"].velocity
    t0 = time.perf_counter()
    if row.fit_per_nfe:
        scheduler = _fit_grid(scheduler, steps, target)
    if isinstance(scheduler, SiTSampler):
        out = scheduler.sample(velocity, target["noise"], steps, generator=gen)
        x, made = out.sample, out.nfe
    else:
        flow_plan = plan_flow(scheduler, steps)
        x, made = sample_flow(scheduler, flow_plan, velocity, target["noise"], generator=gen), flow_plan.nfe
    seconds = time.perf_counter() - t0
    if made != nfe:
        raise RuntimeError(f"{row.name} made {made} evaluations at {steps} steps, expected {nfe}")
    x = x.flatten(1)  # (N, 2)
    return {
        "row": row.name, "target": "analytic", "budget": budget, "steps": steps, "nfe": nfe, "seconds": seconds,
        "rmse": rmse(x, target["reference"]) if row.kind == "ode" else None,
        "w2": sliced_w2(x, target["exact"], projections, seed),
    }


def _fit_grid(sampler: Any, steps: int, target: dict[str, Any]) -> Any:
    """``sampler`` with a time grid of ``steps`` steps fitted to the exact flow on the target's fit batch."""
    from sit_diffusers.scheduling_sit import SiTSampler
    from sit_diffusers.time_grids import fit_time_grid

    fit = target["fit"]
    core = sampler.core
    grid, _, _ = fit_time_grid(lambda z, g: core.sample(target["mixture"].velocity, z, steps, grid=g).sample,
                               [fit["noise"]], [fit["reference"].reshape(fit["noise"].shape)],
                               core.sampling_grid(steps, dtype=torch.float64), max_evals=FIT_EVALS)
    return SiTSampler(**{**{k: v for k, v in sampler.config.items() if not k.startswith("_")},
                         "time_grid": "fitted", "fitted_grid": grid})


# ----------------------------------------------------------------------------------------------------------
# The digits target: the shipped model through SiTPipeline
# ----------------------------------------------------------------------------------------------------------


class DigitsTarget:
    """The pipeline, the classifier, the labels and a per-batch source of the same noise for every row."""

    def __init__(self, model: Path, num_samples: int, guidance: float, seed: int, batch_size: int,
                 device: str) -> None:
        from sit_diffusers.evaluation import balanced_labels, heldout_reference, load_classifier, real_floor
        from sit_diffusers.pipeline_sit import SiTPipeline

        self.pipe = SiTPipeline.from_pretrained(str(model)).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.model_config = self.pipe.model_sampler_config
        self.classifier = load_classifier()
        self.heldout = heldout_reference(self.classifier)
        self.floor = real_floor(self.classifier, num_samples, self.heldout)
        self.labels = balanced_labels(num_samples)
        self.guidance, self.seed, self.batch_size, self.device = guidance, seed, batch_size, device
        cfg = self.pipe.transformer.config
        self.shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    def batches(self):
        """``(labels, noise, generator)`` per batch: batch ``b``'s generator is seeded ``seed + b``, draws the
        noise first and is then handed to the sampler (SDE increments), as the pipeline itself does."""
        for b, i in enumerate(range(0, len(self.labels), self.batch_size)):
            labels = self.labels[i: i + self.batch_size]
            gen = torch.Generator().manual_seed(self.seed + b)
            noise = torch.randn(len(labels), *self.shape, generator=gen)  # (n, C, S, S)
            yield labels, noise.to(self.device), gen

    def sample(self, scheduler: Any, steps: int, in_pipeline: bool) -> tuple[torch.Tensor, int]:
        """Final latents ``(N, C, S, S)`` (pixel space, unclamped) and the NFE of one batch."""
        from sit_diffusers.flow_schedulers import plan_flow, sample_flow

        out, nfe = [], 0
        for labels, noise, gen in self.batches():
            if in_pipeline:
                self.pipe.scheduler = scheduler
                res = self.pipe(class_labels=labels.tolist(), guidance_scale=self.guidance, num_inference_steps=steps,
                                generator=gen, latents=noise, output_type="latent")
                x, nfe = res.images, res.nfe
            else:
                model_fn = self.pipe.guided_model_fn(labels.to(self.device), self.guidance)
                plan = plan_flow(scheduler, steps, device=self.device)
                with torch.no_grad():
                    x = sample_flow(scheduler, plan, model_fn, noise, generator=gen)
                nfe = plan.nfe
            out.append(x.float().cpu())
        return torch.cat(out), nfe

    def score(self, latents: torch.Tensor) -> tuple[float, float]:
        """``(FD, conditional accuracy)`` of the images of ``latents`` to the held-out digits."""
        from sit_diffusers.evaluation import evaluate_images

        images = self.pipe.decode(latents, "pt") * 2.0 - 1.0  # (N, 1, 28, 28) in [-1, 1], as generate_digits
        r = evaluate_images("", images.cpu(), self.labels, self.classifier, self.heldout)
        return r.frechet, r.accuracy

    def reference(self, tol: tuple[float, float] = DIGITS_REF_TOL) -> dict[str, Any]:
        from sit_diffusers.scheduling_sit import SiTSampler

        t0 = time.perf_counter()
        sampler = SiTSampler(mode="ode", solver="dopri5", atol=tol[0], rtol=tol[1], **self.model_config)
        latents, nfe = self.sample(sampler, 1, True)
        fd, acc = self.score(latents)
        return {"latents": latents, "nfe": nfe, "frechet": fd, "accuracy": acc,
                "seconds": time.perf_counter() - t0}


def run_digits(row: Row, budget: int, target: DigitsTarget, reference: torch.Tensor) -> dict[str, Any] | None:
    scheduler = row.make(target.model_config)
    plan = steps_for(scheduler, budget)
    if plan is None:
        return None
    steps, nfe = plan
    t0 = time.perf_counter()
    latents, made = target.sample(scheduler, steps, row.in_pipeline)
    seconds = time.perf_counter() - t0
    if made != nfe:
        raise RuntimeError(f"{row.name} made {made} evaluations at {steps} steps, expected {nfe}")
    fd, acc = target.score(latents)
    return {
        "row": row.name, "target": "digits", "budget": budget, "steps": steps, "nfe": nfe, "seconds": seconds,
        "rmse": rmse(latents, reference) if row.kind == "ode" else None, "frechet": fd, "accuracy": acc,
    }


# ----------------------------------------------------------------------------------------------------------
# Tables and plot
# ----------------------------------------------------------------------------------------------------------


def _fmt(metric: str, value: float) -> str:
    if metric == "accuracy":
        return f"{value:.3f}"
    if metric == "frechet":
        return f"{value:.2f}" if value < 1000 else f"{value:.0f}"
    return f"{value:.3g}"


def metric_table(results: list[dict[str, Any]], rows: list[Row], budgets: Sequence[int], metric: str,
                 mark_below: float | None = None, ode_only: bool = False, best: str = "min") -> str:
    """Markdown table ``row x NFE`` of one metric; ``-``: the row cannot make that NFE; the best value of each
    column is bold; ``†``: one fewer NFE; ``‡``: below ``mark_below`` (FD under the converged ODE's)."""
    cell: dict[tuple[str, int], dict[str, Any]] = {(r["row"], r["budget"]): r for r in results}
    lines = ["| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    columns_best = {}
    for b in budgets:
        vals = [cell[(r.name, b)][metric] for r in rows if (r.name, b) in cell and cell[(r.name, b)][metric] is not None]
        if vals:
            columns_best[b] = min(vals) if best == "min" else max(vals)
    for r in rows:
        if ode_only and r.kind != "ode":
            continue
        if not any((r.name, b) in cell for b in budgets):
            continue
        cells = []
        for b in budgets:
            res = cell.get((r.name, b))
            if res is None or res[metric] is None:
                cells.append("-")
                continue
            v = res[metric]
            text = _fmt(metric, v)
            if v == columns_best.get(b):
                text = f"**{text}**"
            if res["nfe"] != b:
                text += ONE_FEWER
            if mark_below is not None and v < mark_below:
                text += BIASED
            cells.append(text)
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(payload: dict[str, Any], rows: list[Row], budgets: Sequence[int]) -> str:
    out = [f"`{payload['command']}` (torch {payload['torch']}, {payload['device']}, {payload['threads']} thread(s))"]
    digits = [r for r in payload["results"] if r["target"] == "digits"]
    analytic = [r for r in payload["results"] if r["target"] == "analytic"]
    if "digits" in payload:
        d = payload["digits"]
        out += [
            f"\n### Digits: {d['model']}, N = {d['num_samples']}, guidance {d['guidance_scale']}, seed {d['seed']}",
            f"Reference: ODE dopri5 atol {d['reference_tol'][0]:g} rtol {d['reference_tol'][1]:g} from the same "
            f"noise ({d['reference_nfe']} NFE): FD {d['reference_frechet']:.2f}, accuracy "
            f"{d['reference_accuracy']:.4f}. Real floor (N training digits vs held-out): FD {d['floor_frechet']:.2f}, "
            f"accuracy {d['floor_accuracy']:.4f}.",
            "\nRMSE to the reference (ODE rows; pixel units of [-1, 1]):\n",
            metric_table(digits, rows, budgets, "rmse", ode_only=True),
            f"\nFD to the held-out digits ({BIASED}: below the converged ODE's {d['reference_frechet']:.2f}: "
            "a bias that suits this model, not accuracy):\n",
            metric_table(digits, rows, budgets, "frechet", mark_below=d["reference_frechet"]),
            "\nConditional accuracy:\n",
            metric_table(digits, rows, budgets, "accuracy", best="max"),
        ]
    if "analytic" in payload:
        a = payload["analytic"]
        out += [
            f"\n### Analytic: 2-D ring of 8 Gaussians (Linear path, exact velocity), N = {a['num_samples']}, "
            f"seed {a['seed']}, {a['projections']} projections",
            f"Reference: ODE dopri5 atol {a['reference_tol'][0]:g} rtol {a['reference_tol'][1]:g} in float64 "
            f"({a['reference_nfe']} NFE). Sliced W2 Monte-Carlo floor (two exact sets of N): {a['floor_w2']:.4f}; "
            f"the reference's own W2 to the exact samples: {a['reference_w2']:.4f}.",
            "\nRMSE to the reference (ODE rows):\n",
            metric_table(analytic, rows, budgets, "rmse", ode_only=True),
            "\nSliced W2 to the exact distribution:\n",
            metric_table(analytic, rows, budgets, "w2"),
        ]
    out.append(f"\n`-`: the row cannot make that NFE; {ONE_FEWER}: one fewer NFE (a 2 n - 1 schedule); bold: best "
               "of the column.")
    if payload.get("skipped"):
        out.append("Rows not run: " + "; ".join(f"{k}: {v}" for k, v in payload["skipped"].items()))
    return "\n".join(out)


def plot(payload: dict[str, Any], rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if "digits" in payload:
        d = payload["digits"]
        panels += [("digits", "rmse", "digits: RMSE to the dopri5 reference", []),
                   ("digits", "frechet", "digits: FD to held-out digits",
                    [(d["reference_frechet"], "converged ODE"), (d["floor_frechet"], "real floor")])]
    if "analytic" in payload:
        a = payload["analytic"]
        panels += [("analytic", "rmse", "8-Gaussian ring: RMSE to the exact flow", []),
                   ("analytic", "w2", "8-Gaussian ring: sliced W2 to the exact distribution",
                    [(a["floor_w2"], "Monte-Carlo floor (two exact sets)"),
                     (a["reference_w2"], "exact flow of this noise (ODE rows' limit)")])]
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ncol = 3 if len(panels) <= 2 else 5
    shown = {res["row"] for res in payload["results"]}
    entries = sum(r.name in shown for r in rows) + sum(len(p[3]) for p in panels)
    legend_h = 0.16 * math.ceil(entries / ncol) + 0.15  # inches below the axes
    fig_h = 4.4 + legend_h
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), fig_h), squeeze=False)
    cmap = plt.get_cmap("tab20")
    markers = "osD^v<>ph"  # 9 markers x 20 colours: no two of the first 180 rows look alike
    budgets = payload["settings"]["budgets"]
    for ax, (target, metric, title, lines) in zip(axes[0], panels, strict=True):
        for i, r in enumerate(rows):
            pts = sorted((res["nfe"], res[metric]) for res in payload["results"]
                         if res["row"] == r.name and res["target"] == target and res[metric] is not None)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=markers[i % len(markers)], ms=3.5, lw=1.1,
                        color=cmap(i % 20), ls="-" if r.family == "ours" else "--", label=r.name)
        for (value, label), style in zip(lines, (":", "-."), strict=False):
            ax.axhline(value, color="k", lw=1.0, ls=style, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(budgets)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("NFE (network evaluations)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_h / fig_h, 1, 1))
    write_file_atomically(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:], dpi=110), suffix=path.suffix)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                     allow_abbrev=False)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), metavar="TARGET",
                        help=f"any of {', '.join(TARGETS)} (default both)")
    parser.add_argument("--nfe", type=int, nargs="+", default=None,
                        help=f"NFE budgets, each in 1 .. 1000 (default {' '.join(map(str, NFE_BUDGETS))}; "
                             f"--quick: {' '.join(map(str, QUICK_NFE))})")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="digits per row, 10 .. 4000 (default 500; --quick: 20)")
    parser.add_argument("--analytic-samples", type=int, default=None,
                        help="points per row on the analytic target, 10 .. 1000000 (default 4000; --quick: 500)")
    parser.add_argument("--projections", type=int, default=500, help="sliced-W2 directions, 1 .. 100000 "
                        "(default 500)")
    parser.add_argument("--grids", nargs="+", default=None, metavar="GRID",
                        help="non-uniform SiTSampler time grids to cross with every ODE solver (default: all the "
                             "sampler offers, e.g. shifted edm; 'none': only the uniform grid and the presets)")
    parser.add_argument("--sampler-config", nargs="+", type=Path, default=[], metavar="JSON",
                        help="also run these saved SiTSampler configs (scheduler_config.json, e.g. a grid fitted to "
                             "the model) on the digits")
    parser.add_argument("--fit-analytic", nargs="+", default=[], metavar="SOLVER",
                        help="also run these ODE solvers on the analytic target with a time grid fitted at each NFE "
                             f"on another batch ({FIT_POINTS} points, noise seed --seed + {FIT_SEED_OFFSET})")
    parser.add_argument("--rows", nargs="+", default=None, metavar="PATTERN",
                        help="run only the rows whose name contains one of these (case-insensitive)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: NFE 4 8, 20 digits, 500 points")
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help="saved SiTPipeline folder of a 1-channel 28 x 28 digits model (default: the shipped one)")
    parser.add_argument("--guidance-scale", type=float, default=1.5, help="finite >= 0 (default 1.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--batch-size", type=int, default=250, help="digits per pipeline call, >= 1 (default 250)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, >= 1 (default 1)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write every result to this JSON file")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="a --json file of an earlier run with the same settings: its rows are copied, not rerun")
    parser.add_argument("--plot", type=Path, default=None,
                        help="write a log-log figure of error vs NFE here (.png, .pdf or .svg; needs matplotlib)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def _check_output(flag: str, path: Path) -> None:
    if path.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a folder; give a file name")
    check_writable_dir(flag, path.parent, path)


def _check_model(flag: str, value: str) -> Path:
    folder = Path(value)
    index = folder / "model_index.json"
    if not index.is_file():
        raise InputError(f"{flag} {value!r} is not a saved SiTPipeline folder (no model_index.json in it)")
    cfg_file = folder / "transformer" / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
        vae = json.loads(index.read_text()).get("vae", [None, None])
    except (OSError, ValueError) as err:
        raise InputError(f"{flag} {value!r}: cannot read {cfg_file.name} / model_index.json ({err})") from err
    got = (cfg.get("in_channels"), cfg.get("sample_size"), vae[0] if isinstance(vae, list) and vae else vae)
    if got != (1, 28, None):
        raise InputError(f"{flag} {value!r} makes {got[0]}-channel {got[1]} x {got[1]} images"
                         + (" through a VAE" if got[2] else "") + "; the digit classifier scores 1-channel 28 x 28 "
                         "pixel-space images")
    return folder


def run(argv: Sequence[str]) -> None:
    args = build_parser().parse_args(argv)
    targets = []
    for t in args.targets:
        if t not in TARGETS:
            raise InputError(f"--targets {t!r} is not a target; choose from {', '.join(TARGETS)}")
        if t not in targets:
            targets.append(t)
    budgets = list(QUICK_NFE if args.quick else NFE_BUDGETS) if args.nfe is None else args.nfe
    budgets = [check_int("--nfe", v, minimum=1, maximum=1000) for v in budgets]
    if len(set(budgets)) != len(budgets):
        raise InputError(f"--nfe {' '.join(map(str, budgets))} repeats a budget; give each once")
    budgets = sorted(budgets)
    n_digits = args.num_samples if args.num_samples is not None else (20 if args.quick else 500)
    n_digits = check_int("--num-samples", n_digits, minimum=10, maximum=4000)
    n_points = args.analytic_samples if args.analytic_samples is not None else (500 if args.quick else 4000)
    n_points = check_int("--analytic-samples", n_points, minimum=10, maximum=1_000_000)
    projections = check_int("--projections", args.projections, minimum=1, maximum=100_000)
    scale = check_float("--guidance-scale", args.guidance_scale, minimum=0.0)
    seed = check_int("--seed", check_seed("--seed", args.seed), maximum=MAX_SEED - 1 - n_digits)  # seed + b
    batch = check_int("--batch-size", args.batch_size, minimum=1)
    threads = check_int("--threads", args.threads, minimum=1)
    device = str(check_device("--device", args.device))
    model = _check_model("--model", args.model) if "digits" in targets else Path(args.model)
    if args.json is not None:
        _check_output("--json", args.json)
    if args.plot is not None:
        if args.plot.suffix.lower() not in PLOT_SUFFIXES:
            raise InputError(f"--plot {str(args.plot)!r} must end in {', '.join(PLOT_SUFFIXES)}")
        _check_output("--plot", args.plot)
        if importlib.util.find_spec("matplotlib") is None:
            raise InputError(f"--plot {str(args.plot)!r} needs matplotlib, which is not installed "
                             "(pip install matplotlib), or leave --plot out")
    offered = available_grids()
    if args.grids is None:
        grids = offered
    elif args.grids == ["none"]:
        grids = []
    else:
        grids = []
        for g in args.grids:
            if g not in offered:
                raise InputError(f"--grids {g!r} is not a time grid of SiTSampler; choose from "
                                 f"{', '.join(offered + ['none'])}")
            grids.append(g)
    from sit_diffusers.solvers import ODE_FIXED_SOLVERS, ODE_MULTISTEP_SOLVERS

    fit_solvers = []
    for name in args.fit_analytic:
        if name not in (*ODE_FIXED_SOLVERS, *ODE_MULTISTEP_SOLVERS):
            raise InputError(f"--fit-analytic {name!r} is not a fixed-step ODE solver; choose from "
                             f"{', '.join([*ODE_FIXED_SOLVERS, *ODE_MULTISTEP_SOLVERS])}")
        if name not in fit_solvers:
            fit_solvers.append(name)
    if fit_solvers and "analytic" not in targets:
        raise InputError("--fit-analytic needs --targets analytic")
    rows = select_rows(discover_rows(grids) + config_rows(args.sampler_config) + fitted_rows(fit_solvers), args.rows)
    settings = {"budgets": budgets, "grids": grids, "guidance_scale": scale, "seed": seed, "num_samples": n_digits,
                "analytic_samples": n_points, "projections": projections, "model": str(model)}
    reused: list[dict[str, Any]] = []
    old: dict[str, Any] = {}
    if args.reuse is not None:
        try:
            old = json.loads(args.reuse.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"--reuse {str(args.reuse)!r} is not a readable JSON file ({err})") from err
        def same(a: Any) -> bool:  # the grids only add rows: results of the same row name stay valid
            return isinstance(a, dict) and {k: v for k, v in a.items() if k != "grids"} == {
                k: v for k, v in settings.items() if k != "grids"}

        if not isinstance(old, dict) or not same(old.get("settings")):
            raise InputError(f"--reuse {str(args.reuse)!r} was made with other settings "
                             f"({old.get('settings') if isinstance(old, dict) else None}); this run: {settings}")
        reused = [r for r in old.get("results", []) if r.get("target") in targets]

    # ---- the work
    torch.set_num_threads(threads)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # DPMSolverSinglestep's notes on lower_order_final
    command = "python " + " ".join([PROG, *map(shlex.quote, argv)])
    payload: dict[str, Any] = {"command": command, "torch": torch.__version__, "device": device, "threads": threads,
                               "settings": settings, "rows": [r.name for r in rows], "results": [], "skipped": {}}
    done = {(r["target"], r["row"], r["budget"]) for r in reused}
    payload["results"] += [r for r in reused if r["row"] in payload["rows"]]

    def run_row(target: str, row: Row, fn: Callable[[int], dict[str, Any] | None]) -> None:
        reason = refusal(row)
        if reason is not None:
            payload["skipped"][row.name] = reason
            print(f"[{target}] {row.name}: refused: {reason}", file=sys.stderr, flush=True)
            return
        for b in budgets:
            if (target, row.name, b) in done:
                continue
            res = fn(b)
            if res is not None:
                payload["results"].append(res)
                extra = "" if res["rmse"] is None else f" rmse {res['rmse']:.4g}"
                score = f" fd {res['frechet']:.2f} acc {res['accuracy']:.3f}" if target == "digits" else \
                    f" w2 {res['w2']:.4f}"
                print(f"[{target}] {row.name} NFE {res['nfe']} ({res['steps']} steps):{extra}{score} "
                      f"{res['seconds']:.1f} s", file=sys.stderr, flush=True)
        save()  # after every row: an interrupted run can be finished with --reuse

    def save() -> None:
        if args.json is not None:
            text = json.dumps(payload, indent=1)
            write_file_atomically(args.json, lambda tmp: tmp.write_text(text))

    if "analytic" in targets:
        t0 = time.perf_counter()
        a = analytic_target(n_points, seed, projections)
        if fit_solvers:
            a["fit"] = analytic_target(FIT_POINTS, seed + FIT_SEED_OFFSET, projections)
        payload["analytic"] = {"num_samples": n_points, "seed": seed, "projections": projections,
                               "reference_tol": list(ANALYTIC_REF_TOL), "reference_nfe": a["reference_nfe"],
                               "floor_w2": a["floor_w2"], "reference_w2": a["reference_w2"]}
        for row in (r for r in rows if "analytic" in r.targets):
            run_row("analytic", row, lambda b, row=row: run_analytic(row, b, a, seed, projections))
        payload["analytic"]["seconds"] = time.perf_counter() - t0
    if "digits" in targets:
        t0 = time.perf_counter()
        old_digits = old.get("digits") if reused else None
        pending = [row for row in rows if "digits" in row.targets and refusal(row) is None and any(
            ("digits", row.name, b) not in done and steps_for(row.make({}), b) is not None for b in budgets)]
        if old_digits is not None and not pending:  # nothing to run: the earlier run's header, no reference
            payload["digits"] = old_digits
            for row in rows:
                reason = refusal(row)
                if reason is not None:
                    payload["skipped"][row.name] = reason
        else:
            d = DigitsTarget(model, n_digits, scale, seed, batch, device)
            ref = d.reference()
            print(f"[digits] reference dopri5: {ref['nfe']} NFE, fd {ref['frechet']:.2f}, {ref['seconds']:.0f} s",
                  file=sys.stderr, flush=True)
            payload["digits"] = {"model": str(model), "num_samples": n_digits, "guidance_scale": scale, "seed": seed,
                                 "reference_tol": list(DIGITS_REF_TOL), "reference_nfe": ref["nfe"],
                                 "reference_frechet": ref["frechet"], "reference_accuracy": ref["accuracy"],
                                 "floor_frechet": d.floor.frechet, "floor_accuracy": d.floor.accuracy}
            for row in (r for r in rows if "digits" in r.targets):
                run_row("digits", row, lambda b, row=row: run_digits(row, b, d, ref["latents"]))
            payload["digits"]["seconds"] = time.perf_counter() - t0

    print(report(payload, rows, budgets))
    save()
    if args.plot is not None:
        plot(payload, rows, args.plot)


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0; 2 for a bad flag (one line on stderr, ``--debug`` for the traceback)."""
    return _run_cli(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
