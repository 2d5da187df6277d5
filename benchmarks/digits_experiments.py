"""The paper's experiments in miniature on the digit SiT: sampler study, guidance study, design-space walk.

    python benchmarks/digits_experiments.py samplers --model src/sit_diffusers/data/sit-digits --device cuda
    python benchmarks/digits_experiments.py guidance --model src/sit_diffusers/data/sit-digits --device cuda
    python benchmarks/digits_experiments.py walk --runs runs/walk-dit runs/walk-sit ... --device cuda
    python benchmarks/digits_experiments.py default --device cpu --num-samples 300   # the shipped settings

Every row: ``--num-samples`` images with balanced labels (``i % 10``), one generator per batch seeded
``--seed + batch``, scored by the shipped digit classifier (:mod:`sit_diffusers.evaluation`): conditional
accuracy and the Frechet distance to the 1,000 held-out digits; the first row of each table is the
real-vs-real floor at the same N. ``--json FILE`` also writes the rows.

* ``samplers`` (paper Fig. 5 / Table 3 in miniature): ODE Euler, Heun, dopri5 and SDE Euler-Maruyama,
  Heun at NFE ~5 .. 250 without guidance, then SDE diffusion forms ``w_t`` and norms at a fixed NFE.
  ``--only REGEX`` keeps the rows whose name matches (``--only 'w=(?!sigma\\))'`` = the diffusion forms).
* ``guidance``: guidance scale and guidance interval (SiT time, t = 0 noise) at the default sampler.
* ``walk`` (paper Sec. 3, Table 1): pipelines trained by ``benchmarks/train_digits.py --variant ...`` with
  the same budget, each sampled with its matching ODE (Heun) and SDE (Euler) sampler.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sit_diffusers.evaluation import (
    QualityRow,
    balanced_labels,
    evaluate_images,
    format_table,
    generate_digits,
    heldout_reference,
    load_classifier,
    real_floor,
)
from sit_diffusers.pipeline_sit import SiTPipeline
from sit_diffusers.scheduling_sit import SiTSampler

ODE_EULER_STEPS = (5, 10, 25, 50, 125, 250)
HEUN_STEPS = (3, 5, 13, 25, 63, 125)  # NFE = 2 n (two model calls per step)
SDE_FORMS = ("sigma", "SBDM", "linear", "decreasing", "increasing-decreasing", "constant")
SDE_NORMS = (0.5, 1.0, 2.0)
GUIDANCE_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
GUIDANCE_INTERVALS = ((0.0, 1.0), (0.0, 0.5), (0.5, 1.0), (0.2, 0.8))


class Bench:
    """Classifier, reference statistics and one pipeline at a time; ``row`` samples and scores."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.classifier = load_classifier()
        self.reference = heldout_reference(self.classifier)
        self.labels = balanced_labels(args.num_samples)
        self.rows: list[QualityRow] = [real_floor(self.classifier, args.num_samples, self.reference)]
        self.extra: list[dict[str, Any]] = [{}]

    def load(self, folder: str | Path) -> SiTPipeline:
        pipe = SiTPipeline.from_pretrained(str(folder)).to(self.args.device)
        pipe.transformer.to(torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def row(self, name: str, pipe: SiTPipeline, scheduler: SiTSampler, steps: int | None,
            guidance_scale: float = 1.0, **kwargs: Any) -> QualityRow | None:
        if self.args.only and not re.search(self.args.only, name):
            return None
        pipe.scheduler = scheduler
        nfe: list[int] = []

        def counting(**kw: Any) -> Any:
            out = SiTPipeline.__call__(pipe, **kw)
            nfe.append(int(out.nfe))
            return out

        if self.args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        images = generate_digits(counting, self.labels, steps, guidance_scale, seed=self.args.seed,
                                 batch_size=self.args.batch_size, **kwargs)
        if self.args.device == "cuda":
            torch.cuda.synchronize()
        spi = (time.perf_counter() - t0) / len(self.labels)
        r = evaluate_images(name, images.cpu(), self.labels, self.classifier, self.reference, spi)
        self.rows.append(r)
        self.extra.append({"nfe": nfe[0] if nfe else None, "guidance_scale": guidance_scale, **kwargs})
        print(f"{name}: nfe {self.extra[-1]['nfe']} acc {r.accuracy:.4f} fd {r.frechet:.3f} {spi * 1e3:.2f} ms/img",
              flush=True)
        return r

    def report(self, title: str) -> None:
        print(f"\n### {title}\n")
        lines = format_table(self.rows).splitlines()
        lines[0] += " NFE |"
        lines[1] += "---|"
        for i, extra in enumerate(self.extra):
            lines[i + 2] += f" {extra.get('nfe') or ''} |"
        print("\n".join(lines), flush=True)
        if self.args.json:
            path = Path(self.args.json)
            old = json.loads(path.read_text()) if path.is_file() else {}
            old[title] = [{**asdict(r), **e} for r, e in zip(self.rows, self.extra, strict=True)]
            path.write_text(json.dumps(old, indent=1))


def sampler_for(pipe: SiTPipeline, preset: str, **overrides: Any) -> SiTSampler:
    """``preset`` with the path / prediction / eps of the pipeline's own sampler (what the model was trained on)."""
    cfg = pipe.scheduler.config
    keep = {k: cfg[k] for k in ("path_type", "prediction", "train_eps", "sample_eps") if k in cfg}
    return SiTSampler.from_preset(preset, **{**keep, **overrides})


def cmd_samplers(b: Bench) -> None:
    pipe = b.load(b.args.model)
    for n in ODE_EULER_STEPS:
        b.row(f"ODE Euler {n}", pipe, sampler_for(pipe, "ode-euler"), n)
    for n in HEUN_STEPS:
        b.row(f"ODE Heun {n}", pipe, sampler_for(pipe, "ode-heun"), n)
    b.row("ODE dopri5 (atol 1e-6, rtol 1e-3)", pipe, sampler_for(pipe, "ode-dopri5"), None)
    b.row("ODE dopri5 (atol 1e-3, rtol 1e-3)", pipe, sampler_for(pipe, "ode-dopri5", atol=1e-3), None)
    for n in ODE_EULER_STEPS:
        b.row(f"SDE Euler {n} (w=sigma)", pipe, sampler_for(pipe, "sde-euler"), n)
    for n in HEUN_STEPS:
        b.row(f"SDE Heun {n} (w=sigma)", pipe, sampler_for(pipe, "sde-heun"), n)
    for form in SDE_FORMS:
        for norm in SDE_NORMS:
            b.row(f"SDE Euler 50 (w={form}, norm {norm})", pipe,
                  sampler_for(pipe, "sde-euler", diffusion_form=form, diffusion_norm=norm), 50)
    # a coefficient that does not vanish at the data end, with 5x smaller steps (Euler-Maruyama stability)
    b.row("SDE Euler 250 (w=constant, norm 1.0)", pipe, sampler_for(pipe, "sde-euler", diffusion_form="constant"), 250)
    b.report("samplers (guidance 1.0)")


def cmd_guidance(b: Bench) -> None:
    pipe = b.load(b.args.model)
    default = pipe.scheduler
    steps = pipe.config.default_num_inference_steps
    for s in GUIDANCE_SCALES:
        b.row(f"cfg {s} on (0, 1)", pipe, default, steps, guidance_scale=s)
    for s in (2.0, 4.0):
        for lo, hi in GUIDANCE_INTERVALS[1:]:
            b.row(f"cfg {s} on ({lo}, {hi})", pipe, default, steps, guidance_scale=s, guidance_interval=(lo, hi))
    b.report(f"guidance ({type(default).__name__} {default.config.mode}/{default.config.solver}, {steps} steps)")


def cmd_walk(b: Bench) -> None:
    for run in b.args.runs:
        pipe = b.load(Path(run) / "pipeline")
        name = json.loads((Path(run) / "training.json").read_text())["variant"] if (Path(run) / "training.json").is_file() else run
        b.row(f"{name}: ODE Heun 25", pipe, sampler_for(pipe, "ode-heun"), 25)
        b.row(f"{name}: SDE Euler 50", pipe, sampler_for(pipe, "sde-euler"), 50)
    b.report("design-space walk (guidance 1.0)")


def cmd_default(b: Bench) -> None:
    from sit_diffusers import DEFAULT_MODEL

    pipe = b.load(b.args.model or DEFAULT_MODEL)
    b.row(f"embedded, default sampler, cfg {b.args.guidance_scale}", pipe, pipe.scheduler, None,
          guidance_scale=b.args.guidance_scale)
    b.report("embedded model at its default settings")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=("samplers", "guidance", "walk", "default"))
    parser.add_argument("--model", default=None, help="pipeline folder (samplers, guidance, default)")
    parser.add_argument("--runs", nargs="*", default=[], help="train_digits.py run folders (walk)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="default experiment only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--only", default=None, metavar="REGEX",
                        help="run only the rows whose name matches (e.g. 'SDE Euler 50 \\(w=' for the diffusion forms)")
    args = parser.parse_args(argv)
    bench = Bench(args)
    {"samplers": cmd_samplers, "guidance": cmd_guidance, "walk": cmd_walk, "default": cmd_default}[args.experiment](bench)


if __name__ == "__main__":
    main()
