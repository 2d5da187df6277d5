"""``sit-generate``: sample class-conditional images from a saved SiT pipeline.

Examples::

    sit-generate --model ./sit-digits --class 3 --class 7 --num-images 8 --out digits.png
    sit-generate --model org/SiT-XL-2-256 --class "golden retriever" --mode sde --steps 250 --cfg 4 --out dogs/

Image ``i`` uses its own generator seeded ``seed + i``, so it does not depend on ``--batch-size`` or on
how many images are requested. ``--out`` ending in ``.png`` writes one grid; anything else is a folder of
``{i:04d}_class{id}.png`` files. Every flag is checked before the model is sampled; existing images are
never overwritten without ``--overwrite``; a user error exits with status 2 and one line (``--debug``: with
the traceback), non-finite samples with status 1, and in both cases nothing is written.

A saved pixel-space pipeline folder (the embedded digits model among them) is sampled by
:class:`~sit_diffusers.light.LightPipeline`, which imports torch but not diffusers (the whole job then takes
under 3 s on a 2-core CPU, where importing diffusers alone takes 1.4 s); anything else (a VAE, a Hub repo id,
other components) loads the full ``SiTPipeline``. Both print the same line and write the same PNG bytes;
``--full-pipeline`` forces the full one (for benchmarks).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .atomic import write_file_atomically
from .validation import (
    MAX_SEED,
    InputError,
    check_device,
    check_writable_dir,
    run_cli,
)

if TYPE_CHECKING:
    import PIL.Image

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: Without --class, a model with at most this many classes draws one image of each (e.g. the ten digits).
SMALL_LABEL_SET = 16

#: Work refused without --allow-large-runs: more images, or more sampler steps, than this (a typo such as
#: ``--num-images 100000`` would otherwise run for days). The paper samples with 250 steps.
MAX_IMAGES = 1000
MAX_STEPS = 1000

PROG = "sit-generate"


def _presets() -> dict[str, dict[str, Any]]:
    from .sampling import SAMPLER_PRESETS  # torch only: --help imports no diffusers

    return SAMPLER_PRESETS


def _solvers(mode: str) -> list[str]:
    """The ``--solver`` names of ``--mode``: the solvers of the presets named ``{mode}-{solver}`` (so a
    preset such as ``ode-fast``, an AB3 sampler, is not offered as a solver called ``fast``)."""
    return sorted(spec["config"]["solver"] for name, spec in _presets().items()
                  if name == f"{mode}-{spec['config']['solver']}")


def _preset_summary() -> str:
    """``name (N steps, what)`` for every preset, for ``--help``."""
    parts = []
    for name, spec in _presets().items():
        cfg = spec["config"]
        steps = spec["num_inference_steps"]
        kind = f"{cfg['mode']} {cfg['solver']}"
        count = f"{steps} output points, adaptive steps" if cfg["solver"] in ("dopri5", "dopri8") else f"{steps} steps"
        parts.append(f"{name} ({kind}, {count})")
    return "; ".join(parts)


def _default_model() -> str | None:
    import sit_diffusers

    model = getattr(sit_diffusers, "DEFAULT_MODEL", None)
    return None if model is None else str(model)


def _int_type(minimum: int, maximum: int | None = None):
    """argparse type: an integer (``2.7`` is refused, not truncated) in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _finite_float(text: str) -> float:
    """argparse type: a finite float (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


_finite_float.__name__ = "number"


def _guidance_channels(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'all' or a positive int, got {text!r}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: X)`` only where the help text does not already say what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``sit-generate`` argument parser (unknown flags are errors: ``parse_args``, not ``parse_known_args``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate class-conditional images with a SiT pipeline (Ma et al. 2024).",
        formatter_class=_HelpFormatter,
        epilog=f"sampler presets: {_preset_summary()}.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--model", default=_default_model(),
        help="Hub repo id or local folder of a saved SiTPipeline (default: the embedded digit model)",
    )
    parser.add_argument(
        "--class",
        dest="classes",
        action="append",
        default=None,
        metavar="LABEL",
        help=(
            "class id or name (repeatable); images cycle through them (default: every class of a model with "
            f"at most {SMALL_LABEL_SET} classes, else random classes from --seed)"
        ),
    )
    parser.add_argument(
        "--num-images", type=_int_type(1), default=None,
        help=f"images to draw (default: one per --class, else 4; at most {MAX_IMAGES} without --allow-large-runs)",
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
        help=f"solver of the mode (ode: {', '.join(_solvers('ode'))}; sde: {', '.join(_solvers('sde'))}); "
        "default: dopri5 for ode, euler for sde",
    )
    parser.add_argument(
        "--preset", default=None,
        help=f"a named sampler preset instead of --mode/--solver, one of {', '.join(_presets())} "
        "(default: the model's saved sampler; steps of each below)",
    )
    parser.add_argument(
        "--steps", type=_int_type(1), default=None,
        help=f"sampler steps (default: the preset's, else the saved pipeline's; at most {MAX_STEPS} without "
        "--allow-large-runs)",
    )
    parser.add_argument(
        "--cfg",
        type=_finite_float,
        default=None,
        help=(
            "guidance scale >= 0 (default: the pipeline's saved default_guidance_scale, else 4.0 as the "
            "official sample.py, or 1.0 if the model has no null class)"
        ),
    )
    parser.add_argument(
        "--guidance-channels", type=_guidance_channels, default=None,
        help="'all', or k to guide only the first k channels (3: the official forward_with_cfg); default: the "
             "model's saved default_guidance_channels (3 for converted official checkpoints), else 'all'",
    )
    parser.add_argument(
        "--guidance-interval",
        type=_finite_float,
        nargs=2,
        default=(0.0, 1.0),
        metavar=("LO", "HI"),
        help="guide only for LO <= t <= HI (SiT time: 0 noise, 1 data)",
    )
    parser.add_argument(
        "--seed", type=_int_type(0, MAX_SEED), default=0,
        help="image i uses its own generator seeded seed + i",
    )
    parser.add_argument("--batch-size", type=_int_type(1), default=8, help="images per pipeline call")
    parser.add_argument(
        "--out", type=Path, default=Path("samples.png"),
        help="a .png file (one grid) or a folder (one 0000_class<id>.png per image)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing images at --out (default: refuse)"
    )
    parser.add_argument(
        "--allow-large-runs", action="store_true",
        help=f"lift the limits of {MAX_IMAGES} images and {MAX_STEPS} steps",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="transformer dtype (sampler and VAE stay float32)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--full-pipeline", action="store_true",
        help="always load the diffusers SiTPipeline (default: a saved pixel-space folder such as the embedded "
        "model is sampled without importing diffusers; same images either way)",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def preset_for(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """``--preset``, or ``f"{mode}-{solver}"`` checked against the sampler presets; ``None`` when no
    sampler flag is given (the pipeline's saved sampler and step count are used)."""
    import difflib

    names = list(_presets())
    if args.preset is not None:
        if args.solver is not None or args.mode is not None:
            parser.error("--preset excludes --mode and --solver")
        if args.preset not in names:
            close = difflib.get_close_matches(args.preset, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            parser.error(f"unknown --preset {args.preset!r}; choose from {', '.join(names)}{hint}")
        return args.preset
    if args.mode is None and args.solver is None:
        return None
    mode = args.mode or "ode"
    solver = args.solver or {"ode": "dopri5", "sde": "euler"}[mode]
    name = f"{mode}-{solver}"
    if name not in names:
        parser.error(f"unknown --solver {solver!r} for --mode {mode}; choose from {', '.join(_solvers(mode))}")
    return name


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """Every check that needs no model, before anything is loaded; returns the preset (or ``None``)."""
    if args.model is None:
        parser.error("--model is required (a Hub repo id or a folder saved with SiTPipeline.save_pretrained)")
    lo, hi = args.guidance_interval
    if not 0.0 <= lo <= hi <= 1.0:
        parser.error(f"--guidance-interval {lo} {hi}: needs 0 <= LO <= HI <= 1")
    if args.cfg is not None and args.cfg < 0:
        parser.error(f"--cfg must be >= 0, got {args.cfg}")
    preset = preset_for(args, parser)
    if not args.allow_large_runs:
        if args.num_images is not None and args.num_images > MAX_IMAGES:
            parser.error(f"--num-images {args.num_images} is over the limit of {MAX_IMAGES}; "
                         "pass --allow-large-runs to draw that many")
        if args.steps is not None and args.steps > MAX_STEPS:
            parser.error(f"--steps {args.steps} is over the limit of {MAX_STEPS}; pass --allow-large-runs")
    if args.out.suffix and args.out.suffix.lower() != ".png":
        parser.error(f"--out {args.out}: give a .png file (grid) or a folder name without suffix")
    if args.out.suffix:
        if args.out.is_dir():
            parser.error(f"--out {args.out} is a folder; give a .png file name or a folder name without suffix")
        if args.out.exists() and not args.overwrite:
            parser.error(f"--out {args.out} exists; pass --overwrite to replace it")
        folder = args.out.parent
    else:
        if args.out.exists() and not args.out.is_dir():
            parser.error(f"--out {args.out} exists and is not a folder")
        folder = args.out
    try:
        check_writable_dir("--out", folder)
    except InputError as err:
        parser.error(str(err))
    if args.device is not None:
        try:
            check_device("--device", args.device)
        except InputError as err:
            parser.error(str(err))
    return preset


def make_grid(images: Sequence[PIL.Image.Image], pad: int = 2) -> PIL.Image.Image:
    """Tile images row-major in a near-square grid (``ceil(sqrt(n))`` columns) with ``pad`` pixel gaps."""
    import PIL.Image

    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    w, h = images[0].size
    grid = PIL.Image.new(images[0].mode, (cols * w + (cols - 1) * pad, rows * h + (rows - 1) * pad))
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(image, (c * (w + pad), r * (h + pad)))
    return grid


def load_pipeline(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    """``--model`` as a :class:`~sit_diffusers.light.LightPipeline` where the folder allows it (no diffusers
    import), else as a ``SiTPipeline`` (``--full-pipeline``: always). A folder the light loader refuses, or
    cannot read, goes to the full loader, which loads it or reports the problem in its own words."""
    if not args.full_pipeline and Path(args.model).expanduser().is_dir():
        from .light import LightPipeline, NotLightError

        try:
            return LightPipeline.from_folder(args.model)
        except (NotLightError, OSError, ValueError, KeyError, TypeError, RuntimeError):
            pass
    from diffusers.utils import logging as diffusers_logging

    from .hub import PipelineNotFoundError
    from .pipeline_sit import SiTPipeline

    if args.quiet:
        diffusers_logging.disable_progress_bar()
    try:
        return SiTPipeline.from_pretrained(args.model)
    except PipelineNotFoundError as err:
        parser.error(f"--model: {err}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        if args.debug:
            raise
        raise InputError(
            f"--model {args.model}: could not load a SiTPipeline from it ({type(err).__name__}: {err})"
        ) from err


def _cast_transformer(pipe: Any, dtype: torch.dtype) -> None:
    """The transformer in ``dtype`` (a diffusers model without the warning diffusers <= 0.42 prints on every
    ``ModelMixin.to(dtype)``: "modules that should be kept in float32: []")."""
    from .light import LightPipeline

    if isinstance(pipe, LightPipeline):
        pipe.transformer.to(dtype)
        return
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        pipe.transformer.to(dtype)
    finally:
        diffusers_logging.set_verbosity(level)


def _generate(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    preset = check_args(args, parser)

    pipe = load_pipeline(args, parser)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if preset is not None:
        pipe.set_sampler(preset)

    # ---- checks that need the model, still before any sampling or writing
    channels = int(pipe.transformer.config.in_channels)
    if args.guidance_channels not in (None, "all") and args.guidance_channels > channels:
        raise InputError(f"--guidance-channels {args.guidance_channels}: this model has {channels} channels")
    if args.steps is not None:
        try:
            pipe.scheduler.check_num_inference_steps(args.steps)
        except InputError as err:
            raise InputError(f"--steps: {err}") from None
    if args.classes:
        ids = pipe.get_label_ids(args.classes)  # UnknownClassLabelError names the nearest classes
    elif args.num_images is None and pipe.num_classes <= SMALL_LABEL_SET:
        ids = list(range(pipe.num_classes))  # a small label set (the digits): one image of each class
    else:
        gen = torch.Generator().manual_seed(args.seed)
        ids = torch.randint(0, pipe.num_classes, (args.num_images or 4,), generator=gen).tolist()
    n = args.num_images or len(ids)
    if not args.allow_large_runs and n > MAX_IMAGES:
        raise InputError(f"{n} images (one per --class) is over the limit of {MAX_IMAGES}; "
                         "pass --allow-large-runs")
    if args.seed + n - 1 > MAX_SEED:
        raise InputError(f"--seed {args.seed}: image {n - 1} would use seed {args.seed + n - 1} > {MAX_SEED}")
    labels = [ids[i % len(ids)] for i in range(n)]
    has_null = pipe.transformer.config.class_dropout_prob > 0
    saved_cfg = getattr(pipe.config, "default_guidance_scale", None)
    if args.cfg is not None:
        cfg = args.cfg
        if cfg != 1.0 and not has_null:
            raise InputError(f"--cfg {cfg}: this model has no null class (class_dropout_prob=0); use --cfg 1")
    elif saved_cfg is not None:
        cfg = float(saved_cfg)  # the scale the model's card recommends, saved with the pipeline
    else:
        cfg = 4.0 if has_null else 1.0  # the official sample.py default
    if args.out.suffix:
        targets = [args.out]
    else:
        targets = [args.out / f"{i:04d}_class{label}.png" for i, label in enumerate(labels)]
        existing = [p for p in targets if p.exists()]
        if existing and not args.overwrite:
            raise InputError(f"--out {args.out}: {len(existing)} of the images exist already "
                             f"(e.g. {existing[0].name}); pass --overwrite to replace them")

    pipe.to(device)
    dtype = DTYPES[args.dtype]
    if pipe.transformer.dtype != dtype:  # the sampler state and the VAE stay float32
        _cast_transformer(pipe, dtype)
    pipe.set_progress_bar_config(disable=args.quiet, desc="sampling", leave=False)

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
        )  # NonFiniteError on NaN/inf samples: nothing is written
        images.extend(out.images)
        if not args.quiet:
            print(f"{start + len(batch)}/{n} images, {out.nfe} model evaluations per batch", file=sys.stderr)

    if args.out.suffix:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomically(args.out, lambda tmp: make_grid(images).save(tmp, format="PNG"))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        for image, path in zip(images, targets, strict=True):
            write_file_atomically(path, lambda tmp, image=image: image.save(tmp, format="PNG"))
    names = pipe.id2label
    summary = ", ".join(
        f"{i} ({names[i].split(',')[0]})" if i in names else str(i) for i in sorted(set(labels))
    )
    saved = pipe.scheduler.config
    grid = saved.get("time_grid", "uniform")
    sampler = preset or f"saved sampler {saved['mode']}-{saved['solver']}" + (
        "" if grid == "uniform" else f" on a {grid} time grid")
    print(f"wrote {n} images ({sampler}, cfg {cfg}) to {args.out}; classes: {summary}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sit-generate``; returns the exit status: 0, 2 for a user error (one line on stderr),
    1 for non-finite samples (nothing written), 130 when interrupted. (A model that cannot be found is a
    parser error of :func:`load_pipeline`; importing ``sit_diffusers.hub`` here would cost 0.5 s.)"""
    return run_cli(PROG, _generate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
