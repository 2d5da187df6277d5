"""The "quality per NFE" table of the digits model card: every fixed-step ODE preset and the saved sampler at a
fixed NFE, each with its RMSE to the dopri5 solution of the same guided ODE from the same noise (the held-out
batch of ``fit_time_grid.py``: labels ``i % 10``, noise seed ``--seed``), and the FD / conditional accuracy of
``sit_diffusers.evaluation`` on ``--num-samples`` balanced labels.

    python benchmarks/digits_nfe_table.py --cache runs/refs --json runs/digits_nfe.json   # ~10 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_time_grid import check_pipeline_folder, reference_batch, rmse  # noqa: E402

from sit_diffusers import DEFAULT_MODEL  # noqa: E402
from sit_diffusers.atomic import write_file_atomically  # noqa: E402
from sit_diffusers.validation import CLIParser, check_float, check_int, check_writable_dir, run_cli  # noqa: E402

PROG = "digits_nfe_table.py"
# (row name, sampler config over the model's path keys, steps); None: the saved sampler
ROWS: list[tuple[str, dict[str, Any] | None, int]] = [
    ("ode-euler", {"mode": "ode", "solver": "euler"}, 8),
    ("ode-heun", {"mode": "ode", "solver": "heun"}, 4),
    ("ode-ab2", {"mode": "ode", "solver": "ab2"}, 8),
    ("ode-ab3 = ode-fast (uniform grid)", {"mode": "ode", "solver": "ab3"}, 7),
    ("abm4 (uniform grid)", {"mode": "ode", "solver": "abm4"}, 7),
    ("ode-dpm++2m", {"mode": "ode", "solver": "dpm++2m"}, 8),
    ("ode-unipc", {"mode": "ode", "solver": "unipc"}, 8),
    ("saved sampler", None, 7),
    ("saved sampler, warp sampled", None, 3),
    ("saved sampler, warp sampled", None, 5),
    ("saved sampler, warp sampled", None, 9),
    ("old saved: ode-heun 10 steps", {"mode": "ode", "solver": "heun"}, 10),
]


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                allow_abbrev=False)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="SiTPipeline folder (default: the digits model)")
    p.add_argument("--rmse-samples", type=int, default=32, help="samples of the RMSE batch, 1 .. 4096 (default 32)")
    p.add_argument("--seed", type=int, default=1, help="noise seed of the RMSE batch (default 1, the held-out batch)")
    p.add_argument("--num-samples", type=int, default=200, help="images per row for FD / accuracy, 10 .. 4000")
    p.add_argument("--guidance-scale", type=float, default=1.5, help="classifier-free guidance, >= 1 (default 1.5)")
    p.add_argument("--cache", type=Path, default=None, help="folder that keeps the reference solutions")
    p.add_argument("--json", type=Path, default=None, help="write the table to this JSON file")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, 1 .. 256 (default 1)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    model = check_pipeline_folder("--model", args.model)
    n_rmse = check_int("--rmse-samples", args.rmse_samples, minimum=1, maximum=4096)
    seed = check_int("--seed", args.seed, minimum=0, maximum=2**63 - 1)
    n_fd = check_int("--num-samples", args.num_samples, minimum=10, maximum=4000)
    guidance = check_float("--guidance-scale", args.guidance_scale, minimum=1.0)
    threads = check_int("--threads", args.threads, minimum=1, maximum=256)
    for flag, path in (("--cache", args.cache), ("--json", None if args.json is None else Path(args.json).parent)):
        if path is not None:
            check_writable_dir(flag, Path(path))
    torch.set_num_threads(threads)
    from sit_diffusers.evaluation import (
        balanced_labels,
        evaluate_images,
        generate_digits,
        heldout_reference,
        load_classifier,
        real_floor,
    )
    from sit_diffusers.pipeline_sit import SiTPipeline
    from sit_diffusers.sampling import SamplerCore
    from sit_diffusers.scheduling_sit import SiTSampler

    pipe = SiTPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    model_keys = dict(pipe.model_sampler_config)
    saved = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    noise, fn, ref = reference_batch(pipe, model, model_keys, n_rmse, seed, guidance, (1e-7, 1e-6), args.cache)
    classifier = load_classifier()
    reference = heldout_reference(classifier)
    labels = balanced_labels(n_fd)
    floor = real_floor(classifier, n_fd, reference).frechet
    rows = []
    print(f"| sampler | steps | NFE | RMSE to reference ({n_rmse} samples, seed {seed}) | FD (N = {n_fd}) | "
          "cond. accuracy |\n|---|---|---|---|---|---|", flush=True)
    for name, cfg, steps in ROWS:
        config = saved if cfg is None else {**model_keys, **cfg}
        t0 = time.time()
        with torch.no_grad():
            out = SamplerCore(config).sample(fn, noise, steps)
        pipe.scheduler = SiTSampler(**config)
        with torch.inference_mode():
            images = generate_digits(pipe, labels, steps, guidance, seed=0, batch_size=200)
        q = evaluate_images(name, images, labels, classifier, reference)
        row = {"name": name, "steps": steps, "nfe": out.nfe, "rmse": rmse(out.sample, ref), "fd": q.frechet,
               "accuracy": q.accuracy, "seconds": time.time() - t0}
        rows.append(row)
        print(f"| {name} | {steps} | {out.nfe} | {row['rmse']:.3f} | {q.frechet:.2f} | {100 * q.accuracy:.1f}% |",
              flush=True)
    print(f"\nreal-vs-real FD floor at N = {n_fd}: {floor:.2f}")
    if args.json is not None:
        text = json.dumps({"floor_fd": floor, "rows": rows}, indent=1) + "\n"
        write_file_atomically(Path(args.json), lambda p: p.write_text(text))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
