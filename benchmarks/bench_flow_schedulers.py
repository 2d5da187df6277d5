"""diffusers' flow-matching schedulers in SiTPipeline vs our own samplers, on the embedded digit model.

    python benchmarks/bench_flow_schedulers.py                       # N = 1000, NFE 10 and 20, guidance 1.5
    python benchmarks/bench_flow_schedulers.py --num-samples 200 --nfe 20 --threads 2 --json rows.json

Every row samples the same ``--num-samples`` class-balanced labels (``i % 10``) from the same initial noise
(batch ``b`` seeded ``--seed + b``, drawn before any step) at the saved guidance scale, and scores them with
the shipped digit classifier (``sit_diffusers.evaluation``): conditional accuracy and the Frechet distance to
the 1,000 held-out digits. Rows at one NFE: our ``SiTSampler`` ODE Euler and Heun, then
``FlowMatchEulerDiscreteScheduler``, ``FlowMatchHeunDiscreteScheduler`` (2n - 1 evaluations, so one fewer),
``UniPCMultistepScheduler`` and ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M), the last two with
``use_flow_sigmas=True, prediction_type="flow_prediction"``; all at shift 1 and their default sigmas. The
table gives each row's accuracy minus that of our ODE Heun at the same NFE (the embedded model's own sampler).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from sit_diffusers import DEFAULT_MODEL
from sit_diffusers.atomic import write_file_atomically
from sit_diffusers.evaluation import (
    EMBEDDED_GUIDANCE_SCALE,
    balanced_labels,
    evaluate_images,
    generate_digits,
    heldout_reference,
    load_classifier,
    real_floor,
)
from sit_diffusers.pipeline_sit import SiTPipeline
from sit_diffusers.scheduling_sit import SiTSampler
from sit_diffusers.validation import (
    CLIParser,
    InputError,
    check_device,
    check_float,
    check_int,
    check_seed,
    check_writable_dir,
)
from sit_diffusers.validation import run_cli as _run_cli

PROG = "benchmarks/bench_flow_schedulers.py"


def schedulers(nfe: int) -> list[tuple[str, Any, int]]:
    """``(row name, scheduler, num_inference_steps)`` for one NFE budget."""
    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    return [
        ("SiTSampler ODE Euler", SiTSampler.from_preset("ode-euler"), nfe),
        ("SiTSampler ODE Heun", SiTSampler.from_preset("ode-heun"), nfe // 2),
        ("FlowMatchEulerDiscreteScheduler", FlowMatchEulerDiscreteScheduler(), nfe),
        ("FlowMatchHeunDiscreteScheduler", FlowMatchHeunDiscreteScheduler(), (nfe + 1) // 2),
        ("UniPCMultistepScheduler (bh2, order 2)", UniPCMultistepScheduler(**flow), nfe),
        ("DPMSolverMultistepScheduler (DPM-Solver++ 2M)", DPMSolverMultistepScheduler(**flow), nfe),
    ]



def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--num-samples", type=int, default=1000, help="images per row, 10 .. 4000 (default 1000)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20],
                        help="model-evaluation budgets, each an even number >= 2 (default 10 20)")
    parser.add_argument("--guidance-scale", type=float, default=EMBEDDED_GUIDANCE_SCALE,
                        help=f"finite >= 0 (default {EMBEDDED_GUIDANCE_SCALE}, the saved scale)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first batch (default 0)")
    parser.add_argument("--batch-size", type=int, default=250, help="images per pipeline call, >= 1 (default 250)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, >= 1 (default 1)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def run(argv: Sequence[str]) -> None:
    args = build_parser().parse_args(argv)
    n = check_int("--num-samples", args.num_samples, minimum=10, maximum=4000)
    budgets = [check_int("--nfe", v, minimum=2) for v in args.nfe]
    odd = [v for v in budgets if v % 2]
    if odd:
        raise InputError(f"--nfe {odd[0]} is odd; Heun makes 2 evaluations per step, so give even budgets")
    scale = check_float("--guidance-scale", args.guidance_scale, minimum=0.0)
    seed = check_seed("--seed", args.seed)
    batch = check_int("--batch-size", args.batch_size, minimum=1)
    threads = check_int("--threads", args.threads, minimum=1)
    device = str(check_device("--device", args.device))
    if args.json is not None:
        if args.json.is_dir():
            raise InputError(f"--json {str(args.json)!r} is a folder; give a file name")
        check_writable_dir("--json", args.json.parent, args.json)

    torch.set_num_threads(threads)
    command = "python " + " ".join([PROG, *map(shlex.quote, argv)])
    classifier = load_classifier()
    reference = heldout_reference(classifier)
    labels = balanced_labels(n)
    pipe = SiTPipeline.from_pretrained(str(DEFAULT_MODEL)).to(device)
    pipe.set_progress_bar_config(disable=True)
    floor = real_floor(classifier, n, reference)
    rows: list[dict[str, Any]] = []
    for budget in budgets:
        for name, scheduler, steps in schedulers(budget):
            pipe.scheduler = scheduler
            nfe: list[int] = []

            def call(nfe: list[int] = nfe, **kw: Any) -> Any:
                out = pipe(**kw)
                nfe.append(int(out.nfe))
                return out

            t0 = time.perf_counter()
            images = generate_digits(call, labels, steps, scale, seed=seed, batch_size=batch)
            spi = (time.perf_counter() - t0) / n
            r = evaluate_images(name, images.cpu(), labels, classifier, reference, spi)
            rows.append({"name": name, "budget": budget, "steps": steps, "nfe": nfe[0], "accuracy": r.accuracy,
                         "frechet": r.frechet, "seconds_per_image": spi})
            print(f"{name} ({steps} steps): nfe {nfe[0]} acc {r.accuracy:.4f} fd {r.frechet:.2f} "
                  f"{spi * 1e3:.1f} ms/img", file=sys.stderr, flush=True)

    print(f"\n`{command}` (N = {n} per row, guidance {scale}, seed {seed}, torch {torch.__version__}, {device})\n")
    print("| sampler | steps | NFE | cond. accuracy | vs our Heun (points) | Frechet distance |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| real digits (train vs held-out floor) | | | {floor.accuracy:.4f} | | {floor.frechet:.2f} |")
    for budget in budgets:
        group = [r for r in rows if r["budget"] == budget]
        ref = next(r for r in group if r["name"] == "SiTSampler ODE Heun")["accuracy"]
        for r in group:
            delta = "" if r["name"] == "SiTSampler ODE Heun" else f"{100 * (r['accuracy'] - ref):+.1f}"
            print(f"| {r['name']} | {r['steps']} | {r['nfe']} | {r['accuracy']:.4f} | {delta} | {r['frechet']:.2f} |")
    if args.json is not None:
        payload = json.dumps({"command": command, "num_samples": n, "guidance_scale": scale, "rows": rows,
                              "floor": {"accuracy": floor.accuracy, "frechet": floor.frechet}}, indent=1)
        write_file_atomically(args.json, lambda tmp: tmp.write_text(payload))


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0; 2 for a bad flag (one line on stderr, ``--debug`` for the traceback)."""
    return _run_cli(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
