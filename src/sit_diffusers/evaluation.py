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

Commands::

    python -m sit_diffusers.evaluation train-classifier            # retrains the shipped classifier
    python -m sit_diffusers.evaluation evaluate [--model PATH]     # prints the quality table
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .fid import FIDStatistics, frechet_distance

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

CLASSIFIER_PATH: Path = Path(__file__).resolve().parent / "data" / "digit_classifier.safetensors"

#: Guidance scale at which the embedded digit model (``sit_diffusers.DEFAULT_MODEL``) is measured and
#: recommended, with its saved sampler (ODE Heun, 10 steps = 20 NFE); see ``model_cards/sit-digits.md``.
EMBEDDED_GUIDANCE_SCALE: float = 1.5


# ----------------------------------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------------------------------


class DigitClassifier(nn.Module):
    """Small CNN on ``(N, 1, 28, 28)`` images in [-1, 1]: two conv blocks, a 128-d feature layer, 10 logits.

    ``features(x)`` returns the penultimate activations ``(N, 128)`` used by the Frechet distance.
    """

    feature_dim: int = 128

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 14 -> 7
        )
        self.fc = nn.Linear(32 * 7 * 7, self.feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 28, 28)`` in [-1, 1] -> ``(N, 128)`` penultimate ReLU features."""
        h = self.conv(x)  # (N, 32, 7, 7)
        return F.relu(self.fc(h.flatten(1)))  # (N, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 28, 28)`` -> logits ``(N, 10)``."""
        return self.head(self.dropout(self.features(x)))


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
    """
    from .digits import digits_tensors

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


def load_classifier(path: str | Path = CLASSIFIER_PATH) -> DigitClassifier:
    """The shipped classifier (eval mode, CPU)."""
    from safetensors.torch import load_file

    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


# ----------------------------------------------------------------------------------------------------
# Frechet distance (the formula and its eigh-based square root live in sit_diffusers.fid)
# ----------------------------------------------------------------------------------------------------


def feature_stats(features: torch.Tensor | np.ndarray) -> FIDStatistics:
    """``(N, D)`` features -> mean ``(D,)`` and unbiased covariance ``(D, D)`` in float64 (``N >= 2``)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {f.shape}")
    return FIDStatistics.from_features(f)


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
    """The real-vs-real row: ``n`` training images (balanced, seeded) scored like generated ones."""
    from .digits import digits_tensors

    x, y = digits_tensors("train")
    g = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(y == c).flatten() for c in range(10)]
    idx = torch.cat([p[torch.randperm(len(p), generator=g)][: (n + 9 - c) // 10] for c, p in enumerate(per_class)])
    return evaluate_images(f"real train ({len(idx)}) vs held-out", x[idx], y[idx], classifier, reference)


def balanced_labels(n: int) -> torch.Tensor:
    """``(n,)`` labels ``0, 1, ..., 9, 0, 1, ...``: every class ``n // 10`` or ``n // 10 + 1`` times."""
    return torch.arange(n) % 10


def generate_digits(
    pipeline,
    labels: torch.Tensor,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 250,
    **pipeline_kwargs,
) -> torch.Tensor:
    """Generate one image per label with a :class:`~sit_diffusers.pipeline_sit.SiTPipeline`.

    Returns ``(N, 1, 28, 28)`` float in [-1, 1] (the pipeline's ``output_type="pt"`` images, ``[0, 1]``,
    mapped by ``2 x - 1``). Batch ``b`` uses the generator seeded ``seed + b``.
    """
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


def _cmd_train(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    model, acc = train_classifier(epochs=args.epochs, seed=args.seed, device=args.device)
    print(f"held-out accuracy {acc:.4f}  ({time.perf_counter() - t0:.1f} s on {args.device})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"saved {args.out}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .pipeline_sit import SiTPipeline

    torch.set_num_threads(args.threads) if args.threads else None
    classifier = load_classifier(args.classifier)
    reference = heldout_reference(classifier)
    pipe = SiTPipeline.from_pretrained(args.model) if args.model else _default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    scale = args.guidance_scale if args.guidance_scale is not None else (
        1.0 if args.model else EMBEDDED_GUIDANCE_SCALE)
    labels = balanced_labels(args.num_samples)
    t0 = time.perf_counter()
    images = generate_digits(pipe, labels, args.steps, scale, seed=args.seed)
    spi = (time.perf_counter() - t0) / len(labels)
    rows = [
        real_floor(classifier, args.num_samples, reference),
        evaluate_images(f"SiT ({args.model or 'embedded'}), cfg {scale}", images, labels, classifier, reference, spi),
    ]
    print(format_table(rows))
    if args.json:
        import json

        print(json.dumps([asdict(r) for r in rows]))


def _default_pipeline():
    from . import DEFAULT_MODEL
    from .pipeline_sit import SiTPipeline

    return SiTPipeline.from_pretrained(str(DEFAULT_MODEL))


def main(argv: list[str] | None = None) -> None:
    """``python -m sit_diffusers.evaluation {train-classifier,evaluate}``."""
    parser = argparse.ArgumentParser(prog="python -m sit_diffusers.evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train-classifier", help="train the digit classifier on the training split")
    tr.add_argument("--epochs", type=int, default=8)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--out", type=Path, default=CLASSIFIER_PATH)
    tr.set_defaults(func=_cmd_train)
    ev = sub.add_parser("evaluate", help="conditional accuracy and Frechet distance of a SiT pipeline")
    ev.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    ev.add_argument("--classifier", type=Path, default=CLASSIFIER_PATH)
    ev.add_argument("--num-samples", type=int, default=1000)
    ev.add_argument("--steps", type=int, default=None, help="num_inference_steps (default: the pipeline's)")
    ev.add_argument("--guidance-scale", type=float, default=None,
                    help=f"default: {EMBEDDED_GUIDANCE_SCALE} for the embedded model, else 1.0")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--threads", type=int, default=0)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_cmd_evaluate)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
