"""``sit-generate``: sample class-conditional images from a saved SiT pipeline.

Examples::

    sit-generate --model ./sit-digits --class 3 --class 7 --num-images 8 --out digits.png
    sit-generate --model org/SiT-XL-2-256 --class "golden retriever" --mode sde --steps 250 --cfg 4 --out dogs/

Image ``i`` uses its own generator seeded ``seed + i``, so it does not depend on ``--batch-size`` or on
how many images are requested. ``--out`` ending in ``.png`` writes one grid; anything else is a folder of
``{i:04d}_class{id}.png`` files.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import PIL.Image
import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


#: Without --class, a model with at most this many classes draws one image of each (e.g. the ten digits).
SMALL_LABEL_SET = 16


def _preset_names() -> list[str]:
    from .scheduling_sit import SAMPLER_PRESETS

    return sorted(SAMPLER_PRESETS)


def _default_model() -> str | None:
    import sit_diffusers

    model = getattr(sit_diffusers, "DEFAULT_MODEL", None)
    return None if model is None else str(model)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _guidance_channels(text: str) -> int | str:
    if text == "all":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'all' or a positive int, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``sit-generate`` argument parser (unknown flags are errors: ``parse_args``, not ``parse_known_args``)."""
    parser = argparse.ArgumentParser(
        prog="sit-generate",
        description="Generate class-conditional images with a SiT pipeline (Ma et al. 2024).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", default=_default_model(), help="Hub repo id or local folder of a saved SiTPipeline"
    )
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=None,
        metavar="LABEL",
        help=(
            "class id or name (repeatable); images cycle through them; none: every class of a model with "
            f"at most {SMALL_LABEL_SET} classes, else random classes from --seed"
        ),
    )
    parser.add_argument(
        "--num-images", type=_positive_int, default=None, help="default: one per --class, else 4"
    )
    parser.add_argument(
        "--mode",
        choices=("ode", "sde"),
        default=None,
        help="probability-flow ODE or SDE (default: the model's saved sampler; ode if only --solver is given)",
    )
    parser.add_argument(
        "--solver",
        default=None,
        help="solver of the mode (ode: dopri5, euler, heun; sde: euler, heun); "
        "default: dopri5 for ode, euler for sde",
    )
    parser.add_argument("--preset", default=None, help="a named sampler preset, instead of --mode/--solver")
    parser.add_argument("--steps", type=_positive_int, default=None, help="sampler steps (default: preset's)")
    parser.add_argument(
        "--cfg",
        type=float,
        default=None,
        help=(
            "guidance scale (default: the pipeline's saved default_guidance_scale, else 4.0 as the "
            "official sample.py, or 1.0 if the model has no null class)"
        ),
    )
    parser.add_argument(
        "--guidance-channels", type=_guidance_channels, default="all", help="'all' or 3 (official)"
    )
    parser.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=(0.0, 1.0),
        metavar=("LO", "HI"),
        help="guide only for LO <= t <= HI (SiT time: 0 noise, 1 data)",
    )
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--batch-size", type=_positive_int, default=8)
    parser.add_argument("--out", type=Path, default=Path("samples.png"), help="a .png grid or a folder")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="transformer dtype (sampler and VAE stay float32)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def preset_for(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """``--preset``, or ``f"{mode}-{solver}"`` checked against the sampler presets; ``None`` when no
    sampler flag is given (the pipeline's saved sampler and step count are used)."""
    names = _preset_names()
    if args.preset is not None:
        if args.solver is not None or args.mode is not None:
            parser.error("--preset excludes --mode and --solver")
        if args.preset not in names:
            parser.error(f"unknown --preset {args.preset!r}; choose from {', '.join(names)}")
        return args.preset
    if args.mode is None and args.solver is None:
        return None
    mode = args.mode or "ode"
    solver = args.solver or {"ode": "dopri5", "sde": "euler"}[mode]
    name = f"{mode}-{solver}"
    if name not in names:
        valid = sorted(n.split("-", 1)[1] for n in names if n.startswith(mode + "-"))
        parser.error(f"unknown --solver {solver!r} for --mode {mode}; choose from {', '.join(valid)}")
    return name


def make_grid(images: Sequence[PIL.Image.Image], pad: int = 2) -> PIL.Image.Image:
    """Tile images row-major in a near-square grid (``ceil(sqrt(n))`` columns) with ``pad`` pixel gaps."""
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    w, h = images[0].size
    grid = PIL.Image.new(images[0].mode, (cols * w + (cols - 1) * pad, rows * h + (rows - 1) * pad))
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(image, (c * (w + pad), r * (h + pad)))
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sit-generate``; returns the exit status (argument errors exit with status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("--model is required (a Hub repo id or a folder saved with SiTPipeline.save_pretrained)")
    if not 0.0 <= args.guidance_interval[0] <= args.guidance_interval[1] <= 1.0:
        parser.error("--guidance-interval needs 0 <= LO <= HI <= 1")
    if args.cfg is not None and args.cfg < 0:
        parser.error("--cfg must be >= 0")
    preset = preset_for(args, parser)
    if args.out.suffix and args.out.suffix.lower() != ".png":
        parser.error(f"--out {args.out}: give a .png file (grid) or a folder name without suffix")

    from diffusers.utils import logging as diffusers_logging

    from .hub import PipelineNotFoundError
    from .labels import UnknownClassLabelError
    from .pipeline_sit import SiTPipeline

    if args.quiet:
        diffusers_logging.disable_progress_bar()
    try:
        pipe = SiTPipeline.from_pretrained(args.model)
    except PipelineNotFoundError as err:
        parser.error(f"--model: {err}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe.to(device)
    dtype = DTYPES[args.dtype]
    if pipe.transformer.dtype != dtype:  # the sampler state and the VAE stay float32
        # diffusers <= 0.42 warns on every ModelMixin.to(dtype) ("modules that should be kept in float32: []")
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            pipe.transformer.to(dtype)
        finally:
            diffusers_logging.set_verbosity(level)
    if preset is not None:
        pipe.set_sampler(preset)
    pipe.set_progress_bar_config(disable=args.quiet, desc="sampling", leave=False)

    if args.classes:
        try:
            ids = pipe.get_label_ids(args.classes)
        except UnknownClassLabelError as err:
            parser.error(f"--class: {err}")
    elif args.num_images is None and pipe.num_classes <= SMALL_LABEL_SET:
        ids = list(range(pipe.num_classes))  # a small label set (the digits): one image of each class
    else:
        gen = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(0, pipe.num_classes, (args.num_images or 4,), generator=gen).tolist()
    n = args.num_images or len(ids)
    labels = [ids[i % len(ids)] for i in range(n)]
    has_null = pipe.transformer.config.class_dropout_prob > 0
    saved_cfg = getattr(pipe.config, "default_guidance_scale", None)
    if args.cfg is not None:
        cfg = args.cfg
    elif saved_cfg is not None:
        cfg = float(saved_cfg)  # the scale the model's card recommends, saved with the pipeline
    else:
        cfg = 4.0 if has_null else 1.0  # the official sample.py default

    images: list[PIL.Image.Image] = []
    for start in range(0, n, args.batch_size):
        batch = labels[start : start + args.batch_size]
        gens = [torch.Generator().manual_seed(args.seed + start + j) for j in range(len(batch))]
        out = pipe(
            batch,
            guidance_scale=cfg,
            num_inference_steps=args.steps,
            generator=gens,
            guidance_channels=args.guidance_channels,
            guidance_interval=tuple(args.guidance_interval),
        )
        images.extend(out.images)
        if not args.quiet:
            print(f"{start + len(batch)}/{n} images, {out.nfe} model evaluations per batch", file=sys.stderr)

    if args.out.suffix:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        make_grid(images).save(args.out)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            image.save(args.out / f"{i:04d}_class{label}.png")
    names = pipe.id2label
    summary = ", ".join(
        f"{i} ({names[i].split(',')[0]})" if i in names else str(i) for i in sorted(set(labels))
    )
    sampler = preset or f"saved sampler {pipe.scheduler.config.mode}-{pipe.scheduler.config.solver}"
    print(f"wrote {n} images ({sampler}, cfg {cfg}) to {args.out}; classes: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
