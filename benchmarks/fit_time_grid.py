"""Fit a sampler's time grid to one model and save it as its scheduler config (issue 15).

    python benchmarks/fit_time_grid.py --solver ab3 --nfe 8 --initial-grid shifted --shift 2 \\
        --fit-samples 32 --heldout-samples 32 --out fitted_scheduler/          # -> fitted_scheduler/scheduler_config.json
    python benchmarks/fit_time_grid.py --solver unipc --nfe 8 --max-evals 60 --out unipc8.json --report r.json

What it does, on ``--model`` (default: the shipped digits model, ``sit_diffusers.DEFAULT_MODEL``) with class
labels ``i % num_classes`` and classifier-free guidance ``--guidance-scale``:

1. draws a FIT batch (``--fit-samples`` noises from ``--fit-seed``) and a HELD-OUT batch (``--heldout-samples``
   from ``--heldout-seed``, which must differ) and solves the guided probability-flow ODE from each noise with
   our dopri5 at ``--reference-atol`` / ``--reference-rtol`` (the reference; ``--cache`` keeps it on disk);
2. fits the interior times of the ``--solver`` grid at ``--nfe`` model calls to the FIT batch
   (:func:`sit_diffusers.time_grids.fit_time_grid`: Nelder-Mead over the logits of the grid's increments,
   ``--max-evals`` sampler runs at most), from ``--initial-grid`` (``uniform``, ``shifted`` with ``--shift``,
   ``edm`` with ``--rho``, or ``fitted`` with ``--initial-config``: the grid of a saved config);
3. prints the RMSE to the reference (``sqrt(mean over samples and pixels of (x - x_ref)^2)``) on both batches for
   ODE Euler (uniform grid), the initial grid and the fitted grid, at ``--nfe`` and at each ``--compare-nfe``
   (a fitted grid at another NFE samples its monotone time warp, :func:`sit_diffusers.time_grids.warp_grid`);
4. writes the fitted sampler config atomically: ``--out`` ending in ``.json`` is that file; any other
   ``--out`` is a folder that gets ``scheduler_config.json`` (a model's ``scheduler/`` folder, say). The model's
   own sampler keys (path, prediction, train eps) are kept. An existing file is replaced only with
   ``--overwrite``. The step count to run it with is printed (a model's ``model_index.json`` holds it as
   ``default_num_inference_steps``).

Only the FIT batch steers the fit; judge it on the HELD-OUT columns. Every flag is checked before any work: a bad
one prints ``benchmarks/fit_time_grid.py: error: ...`` (naming the flag) and exits 2; ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sit_diffusers import DEFAULT_MODEL
from sit_diffusers.atomic import write_file_atomically
from sit_diffusers.sampling import SamplerCore
from sit_diffusers.solvers import ODE_FIXED_SOLVERS, ODE_MULTISTEP_SOLVERS
from sit_diffusers.time_grids import fit_time_grid
from sit_diffusers.validation import (
    CLIParser,
    InputError,
    check_choice,
    check_float,
    check_int,
    check_seed,
    check_writable_dir,
    run_cli,
)

PROG = "benchmarks/fit_time_grid.py"
SOLVERS = (*ODE_FIXED_SOLVERS, *ODE_MULTISTEP_SOLVERS)
INITIAL_GRIDS = ("uniform", "shifted", "edm", "fitted")
MAX_SAMPLES = 4096



def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                allow_abbrev=False)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="SiTPipeline folder (default: the digits model)")
    p.add_argument("--solver", default="ab3", help=f"ODE solver: {', '.join(SOLVERS)} (default ab3)")
    p.add_argument("--nfe", type=int, default=8, help="model calls of the fitted run (default 8)")
    p.add_argument("--initial-grid", default="shifted", help=f"{', '.join(INITIAL_GRIDS)} (default shifted)")
    p.add_argument("--shift", type=float, default=2.0, help="shift of --initial-grid shifted, > 0 (default 2)")
    p.add_argument("--rho", type=float, default=7.0, help="rho of --initial-grid edm, > 0 (default 7)")
    p.add_argument("--initial-config", type=Path, default=None,
                   help="scheduler_config.json (or its folder) whose fitted_grid starts --initial-grid fitted")
    p.add_argument("--guidance-scale", type=float, default=1.5, help="classifier-free guidance, >= 1 (default 1.5)")
    p.add_argument("--fit-samples", type=int, default=32, help=f"1 .. {MAX_SAMPLES} (default 32)")
    p.add_argument("--fit-seed", type=int, default=0, help="seed of the fit batch (default 0)")
    p.add_argument("--heldout-samples", type=int, default=32, help=f"1 .. {MAX_SAMPLES} (default 32)")
    p.add_argument("--heldout-seed", type=int, default=1, help="seed of the held-out batch, != --fit-seed (default 1)")
    p.add_argument("--max-evals", type=int, default=150, help="sampler runs of the fit, 1 .. 100000 (default 150)")
    p.add_argument("--reference-atol", type=float, default=1e-7, help="dopri5 atol of the reference (default 1e-7)")
    p.add_argument("--reference-rtol", type=float, default=1e-6, help="dopri5 rtol of the reference (default 1e-6)")
    p.add_argument("--compare-nfe", type=int, nargs="*", default=[4, 6, 10],
                   help="other NFE budgets to report (default 4 6 10; none: only --nfe)")
    p.add_argument("--out", type=Path, default=None,
                   help="where the fitted config goes: a .json file, or a folder for scheduler_config.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out config file")
    p.add_argument("--report", type=Path, default=None, help="also write the RMSE table to this JSON file")
    p.add_argument("--cache", type=Path, default=None, help="folder that keeps the reference solutions")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, 1 .. 256 (default 1)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def steps_for(core: SamplerCore, nfe: int) -> int | None:
    """The step count whose run makes exactly ``nfe`` model calls, if any."""
    for steps in range(1, nfe + 1):
        if core.num_model_evaluations(steps) == nfe:
            return steps
    return None


def out_file(out: Path) -> Path:
    return out if out.suffix.lower() == ".json" else out / "scheduler_config.json"


def check_pipeline_folder(flag: str, value: str | Path) -> Path:
    """``value`` as a saved SiTPipeline folder (``model_index.json`` and a scheduler config), else an
    ``InputError`` naming ``flag``."""
    model = Path(value)
    if not (model / "model_index.json").is_file() or not (model / "scheduler" / "scheduler_config.json").is_file():
        raise InputError(f"{flag} {str(value)!r} is not a SiTPipeline folder (needs model_index.json and "
                         "scheduler/scheduler_config.json)")
    return model


def check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Every flag checked (the error names it as typed); returns the resolved settings. Reads only."""
    model = check_pipeline_folder("--model", args.model)
    try:
        base = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"--model {str(args.model)!r}: unreadable scheduler/scheduler_config.json ({err})") from err
    model_keys = {k: base[k] for k in ("path_type", "prediction", "train_eps", "vp_sigma_min", "vp_sigma_max")
                  if k in base}
    solver = check_choice("--solver", args.solver, SOLVERS, key=str.lower)
    nfe = check_int("--nfe", args.nfe, minimum=1, maximum=1000)
    grid_kind = check_choice("--initial-grid", args.initial_grid, INITIAL_GRIDS, key=str.lower)
    shift = check_float("--shift", args.shift, minimum=0.0, min_inclusive=False)
    rho = check_float("--rho", args.rho, minimum=0.0, min_inclusive=False)
    initial: dict[str, Any] = {"time_grid": grid_kind}
    if grid_kind == "shifted":
        initial["time_shift"] = shift
    if grid_kind == "edm":
        initial["time_rho"] = rho
    if grid_kind == "fitted":
        if args.initial_config is None:
            raise InputError("--initial-grid fitted needs --initial-config (a scheduler_config.json with a fitted_grid)")
        path = Path(args.initial_config)
        path = path / "scheduler_config.json" if path.is_dir() else path
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"--initial-config {str(args.initial_config)!r}: not a readable JSON file ({err})") from err
        if not isinstance(saved, dict) or saved.get("fitted_grid") is None:
            raise InputError(f"--initial-config {str(args.initial_config)!r} holds no fitted_grid")
        initial["fitted_grid"] = saved["fitted_grid"]
    elif args.initial_config is not None:
        raise InputError(f"--initial-config is for --initial-grid fitted, got --initial-grid {grid_kind}")
    config = {**model_keys, "mode": "ode", "solver": solver, **initial}
    try:
        core = SamplerCore(config)
    except InputError as err:
        raise InputError(f"--initial-grid {grid_kind} / --initial-config: {err}") from err
    steps = steps_for(core, nfe)
    if steps is None:
        raise InputError(f"--nfe {nfe}: no step count of --solver {solver} makes exactly {nfe} model calls "
                         f"(its runs make {sorted({core.num_model_evaluations(s) for s in range(1, nfe + 2)})[:8]}...)")
    if steps < 2:
        raise InputError(f"--nfe {nfe} gives one {solver} step: nothing to fit (use more calls)")
    compare = [check_int("--compare-nfe", v, minimum=1, maximum=1000) for v in args.compare_nfe]
    euler = SamplerCore({**model_keys, "mode": "ode", "solver": "euler"})
    for v in compare:
        if steps_for(core, v) is None:
            raise InputError(f"--compare-nfe {v}: no step count of --solver {solver} makes exactly {v} model calls")
    guidance = check_float("--guidance-scale", args.guidance_scale, minimum=1.0)
    fit_n = check_int("--fit-samples", args.fit_samples, minimum=1, maximum=MAX_SAMPLES)
    held_n = check_int("--heldout-samples", args.heldout_samples, minimum=1, maximum=MAX_SAMPLES)
    fit_seed = check_seed("--fit-seed", args.fit_seed)
    held_seed = check_seed("--heldout-seed", args.heldout_seed)
    if fit_seed == held_seed:
        raise InputError(f"--heldout-seed {held_seed} equals --fit-seed: the held-out batch must be other noise")
    max_evals = check_int("--max-evals", args.max_evals, minimum=1, maximum=100_000)
    atol = check_float("--reference-atol", args.reference_atol, minimum=0.0, maximum=1e-3, min_inclusive=False)
    rtol = check_float("--reference-rtol", args.reference_rtol, minimum=0.0, maximum=1e-2, min_inclusive=False)
    threads = check_int("--threads", args.threads, minimum=1, maximum=256)
    if args.out is not None:
        target = out_file(Path(args.out))
        check_writable_dir("--out", target.parent, args.out)
        if target.is_dir():
            raise InputError(f"--out {str(args.out)!r}: {str(target)!r} is a folder")
        if target.exists() and not args.overwrite:
            raise InputError(f"--out {str(args.out)!r}: {str(target)!r} exists; pass --overwrite to replace it")
    if args.report is not None:
        if Path(args.report).is_dir():
            raise InputError(f"--report {str(args.report)!r} is a folder; give a .json file")
        check_writable_dir("--report", Path(args.report).parent, args.report)
    if args.cache is not None:
        check_writable_dir("--cache", Path(args.cache))
    return {"model": model, "base": base, "model_keys": model_keys, "config": config, "core": core, "steps": steps,
            "nfe": nfe, "compare": sorted({nfe, *compare}), "euler": euler, "guidance": guidance,
            "batches": {"fit": (fit_n, fit_seed), "held-out": (held_n, held_seed)}, "max_evals": max_evals,
            "tol": (atol, rtol), "threads": threads}


def rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x.double() - ref.double()) ** 2).mean().sqrt())


def reference_batch(pipe: Any, model: Path, model_keys: dict[str, Any], n: int, seed: int, guidance: float,
                    tol: tuple[float, float], cache: Path | None, name: str = "batch",
                    ) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """``(noise (n, C, S, S), guided model_fn, reference (n, C, S, S))`` of one batch: noise seeded by ``seed``,
    labels ``i % num_classes``, the reference our dopri5 at ``tol = (atol, rtol)`` from that noise; kept in
    ``cache`` (keyed by the model's weight files, ``n``, ``seed``, guidance and tolerances) when given."""
    tcfg = pipe.transformer.config
    shape = (int(tcfg.in_channels), int(tcfg.sample_size), int(tcfg.sample_size))
    labels = torch.arange(n) % pipe.num_classes
    noise = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))  # (n, C, S, S)
    fn = pipe.guided_model_fn(labels, guidance)
    weights = sorted((Path(model) / "transformer").glob("*.safetensors"))
    model_tag = "|".join(f"{w.resolve()}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)
    key = hashlib.sha256(f"{model_tag}|{n}|{seed}|{guidance}|{tol}".encode()).hexdigest()[:20]
    cached = Path(cache) / f"reference_{key}.pt" if cache is not None else None
    if cached is not None and cached.is_file():
        return noise, fn, torch.load(cached)
    t0 = time.time()
    ref_core = SamplerCore({**model_keys, "mode": "ode", "solver": "dopri5", "atol": tol[0], "rtol": tol[1]})
    with torch.no_grad():
        out = ref_core.sample(fn, noise, 1)
    print(f"[{name}] reference dopri5: {out.nfe} NFE, {time.time() - t0:.0f} s", flush=True)
    if cached is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        write_file_atomically(cached, lambda p, r=out.sample: torch.save(r, p))
    return noise, fn, out.sample


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    s = check_args(args)
    torch.set_num_threads(s["threads"])
    from sit_diffusers.pipeline_sit import SiTPipeline  # after the checks: diffusers is a slow import
    from sit_diffusers.scheduling_sit import SiTSampler

    pipe = SiTPipeline.from_pretrained(str(s["model"]))
    pipe.set_progress_bar_config(disable=True)
    t_start = time.time()
    batches = {name: reference_batch(pipe, s["model"], s["model_keys"], n, seed, s["guidance"], s["tol"],
                                     args.cache, name)
               for name, (n, seed) in s["batches"].items()}

    core, steps = s["core"], s["steps"]
    fit_noise, fit_fn, fit_ref = batches["fit"]
    runs = [0]

    def run_on_grid(z: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        runs[0] += 1
        with torch.no_grad():
            return core.sample(fit_fn, z, steps, grid=grid).sample

    t0 = time.time()
    grid, before, after = fit_time_grid(run_on_grid, [fit_noise], [fit_ref],
                                        core.sampling_grid(steps, dtype=torch.float64), max_evals=s["max_evals"])
    print(f"fit: {runs[0]} runs of {s['nfe']} NFE in {time.time() - t0:.0f} s; fit-batch RMSE {before:.4f} -> "
          f"{after:.4f}", flush=True)
    fitted_config = {**s["config"], "time_grid": "fitted", "fitted_grid": grid}
    fitted_config.pop("time_shift", None)
    fitted_config.pop("time_rho", None)
    fitted = SamplerCore(fitted_config)

    rows = [("ode euler uniform", s["euler"]), (f"{s['config']['solver']} {s['config']['time_grid']}"
                                                 + (f" {s['config'].get('time_shift', '')}" if s["config"]["time_grid"]
                                                    == "shifted" else ""), core),
            (f"{s['config']['solver']} FITTED", fitted)]
    table: list[dict[str, Any]] = []
    for nfe in s["compare"]:
        euler_held = None
        for label, row_core in rows:
            n_steps = steps_for(row_core, nfe)
            entry: dict[str, Any] = {"nfe": nfe, "row": label, "steps": n_steps}
            for name, (noise, fn, ref) in batches.items():
                with torch.no_grad():
                    out = row_core.sample(fn, noise, n_steps)
                entry[name] = rmse(out.sample, ref)
            if label.startswith("ode euler"):
                euler_held = entry["held-out"]
            entry["held-out / euler"] = entry["held-out"] / euler_held
            table.append(entry)
    print(f"\nRMSE to the dopri5 reference (atol {s['tol'][0]:g}, rtol {s['tol'][1]:g}); model {args.model}, "
          f"guidance {s['guidance']}; fit batch {s['batches']['fit'][0]} samples seed {s['batches']['fit'][1]}, "
          f"held-out {s['batches']['held-out'][0]} samples seed {s['batches']['held-out'][1]}; fitted at "
          f"{s['nfe']} NFE ({steps} steps), other NFE sample its time warp\n")
    print("| NFE | sampler | steps | fit RMSE | held-out RMSE | held-out / Euler |\n|---|---|---|---|---|---|")
    for e in table:
        print(f"| {e['nfe']} | {e['row']} | {e['steps']} | {e['fit']:.4f} | {e['held-out']:.4f} | "
              f"1/{1 / e['held-out / euler']:.2f} |")
    print(f"\nfitted grid ({steps} steps): {[round(v, 6) for v in grid]}  ({time.time() - t_start:.0f} s in all)")

    if args.out is not None:
        sampler = SiTSampler(**{**{k: v for k, v in s["base"].items() if not k.startswith("_")}, **fitted_config})
        text = sampler.to_json_string()
        target = out_file(Path(args.out))
        target.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(target, lambda p: p.write_text(text))
        print(f"wrote {target}: run it with num_inference_steps={steps} ({s['nfe']} NFE)")
    if args.report is not None:
        report = {"command": [PROG, *(sys.argv[1:] if argv is None else argv)], "steps": steps, "grid": grid,
                  "fit_before": before, "fit_after": after, "runs": runs[0], "table": table}
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(args.report, lambda p: p.write_text(json.dumps(report, indent=1) + "\n"))
        print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(PROG, main))
