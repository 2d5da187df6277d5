"""FID-50K style evaluation: ADM ``.npz`` sample files and the ADM metrics on a pluggable feature extractor.

The metrics follow the ADM evaluation suite (openai/guided-diffusion ``evaluations/evaluator.py``, Dhariwal &
Nichol 2021), which SiT, DiT and ADM report:

* **FID** (Heusel et al. 2017) between Gaussians fitted to two feature sets,
  ``|mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2})``;
* **Inception Score** (Salimans et al. 2016), ``exp E_x KL(p(y|x) || p(y))``, averaged over consecutive splits
  of ``split_size = 5000`` samples;
* **precision / recall** (Kynkaenniemi et al. 2019): the fraction of samples inside the reference manifold,
  and of references inside the sample manifold, each manifold the union of balls reaching every point's
  ``k = 3``-th nearest neighbour.

Features come from a :class:`FeatureExtractor`: any callable ``uint8 images (N, H, W, 3) -> Features``.
Two ship here:

* :class:`InceptionExtractor`: the FID Inception-v3 (the TF "2015-12-05" graph that ADM and the TTUR FID use),
  as the TorchScript port NVIDIA publishes with StyleGAN2-ADA / StyleGAN3 / EDM. Its weights are a file you
  download once (no network at run time); see ``docs/fid.md``.
* :class:`DigitFeatureExtractor`: the project's offline extractor, the embedded digit classifier of
  ``sit_diffusers.evaluation``, for the MNIST-scale model that runs without any download.

Sample files are the ADM format: ``np.savez(path, arr_0=uint8 array (N, H, W, 3))``.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "DigitFeatureExtractor",
    "FIDStatistics",
    "FeatureExtractor",
    "Features",
    "InceptionExtractor",
    "Metrics",
    "compute_metrics",
    "extract_features",
    "frechet_distance",
    "inception_score",
    "load_npz_images",
    "make_extractor",
    "precision_recall",
    "save_npz_images",
]


#################################################################################
#                              Extractor protocol                               #
#################################################################################


@dataclass(frozen=True)
class Features:
    """What an extractor returns for ``N`` images.

    Attributes:
        features: ``(N, D)`` embedding for FID and precision/recall (Inception: pool_3, ``D = 2048``).
        logits: ``(N, K)`` class logits for the Inception Score (log-probabilities are fine: IS applies a
            softmax), or ``None`` when the extractor has no classifier head.
    """

    features: np.ndarray
    logits: np.ndarray | None = None


@runtime_checkable
class FeatureExtractor(Protocol):
    """``uint8`` images ``(N, H, W, 3)`` in ``[0, 255]`` -> :class:`Features`; ``name`` labels the reports."""

    name: str

    def __call__(self, images: np.ndarray) -> Features: ...


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 images (N, H, W, 3) or (N, H, W, 1), got {images.dtype} {images.shape}")
    return images


def extract_features(extractor: FeatureExtractor, images: np.ndarray, batch_size: int = 250) -> Features:
    """Run ``extractor`` over ``images`` (N, H, W, C) uint8 in batches; float64 features (and logits)."""
    images = _check_images(images)
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        out = extractor(images[start : start + batch_size])
        feats.append(np.asarray(out.features, dtype=np.float64))
        if out.logits is not None:
            logits.append(np.asarray(out.logits, dtype=np.float64))
    return Features(
        features=np.concatenate(feats, axis=0),
        logits=np.concatenate(logits, axis=0) if len(logits) == len(feats) else None,
    )


class InceptionExtractor:
    """The FID Inception-v3 as a TorchScript module (the network ADM's TensorFlow suite evaluates).

    Expected interface (NVIDIA's port, ``inception-2015-12-05.pt`` from StyleGAN2-ADA-PyTorch, or the pickled
    ``inception-2015-12-05.pkl`` of StyleGAN3 / EDM): ``module(x, return_features=True)`` -> ``(N, 2048)``
    pool_3 features and ``module(x, no_output_bias=True)`` -> ``(N, 1008)`` softmax probabilities, for
    ``x`` uint8 ``(N, 3, H, W)``; the module resizes to 299 x 299 itself, as the TF graph does.

    Loading a ``.pkl`` unpickles it: only load files from a source you trust.
    """

    name = "inception-v3-fid"

    def __init__(self, module: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.module = module.eval().to(device)
        self.device = torch.device(device)

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> InceptionExtractor:
        """Load a TorchScript ``.pt`` (``torch.jit.load``) or a pickled ``.pkl`` Inception file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found at {path}; see docs/fid.md for the file and where to get it"
            )
        if path.suffix == ".pkl":
            with open(path, "rb") as f:
                module = pickle.load(f)  # noqa: S301 - user-supplied trusted file, documented above
        else:
            with warnings.catch_warnings():  # the published port is TorchScript; torch deprecates jit.load
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        return cls(module, device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> Features:
        images = _check_images(images)
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device)  # (N, 3, H, W)
        features = self.module(x, return_features=True)  # (N, 2048)
        probs = self.module(x, no_output_bias=True)  # (N, 1008), rows sum to 1
        logits = torch.log(probs.double().clamp_min(1e-30))  # softmax(log p) = p
        return Features(features.double().cpu().numpy(), logits.cpu().numpy())


class DigitFeatureExtractor:
    """The offline extractor: the embedded digit classifier (``sit_diffusers.evaluation.DigitClassifier``).

    It plays Inception's part for the MNIST-scale model and needs no download (its weights ship with the
    package): ``features`` are the classifier's penultimate activations ``(N, 128)``, ``logits`` its 10 class
    logits. Images must be 28 x 28; RGB is converted to grey (ITU-R 601 luma, as PIL's ``convert("L")``).
    """

    name = "digit-classifier"

    def __init__(self, classifier: torch.nn.Module | None = None) -> None:
        if classifier is None:
            from .evaluation import load_classifier

            classifier = load_classifier()
        self.classifier = classifier.eval()

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> Features:
        images = _check_images(images)
        if images.shape[1:3] != (28, 28):
            raise ValueError(f"the digit classifier takes 28 x 28 images, got {images.shape[1:3]}")
        if images.shape[-1] == 3:
            grey = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (N, 28, 28)
            images = np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None]
        x = torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0  # (N, 1, 28, 28)
        feats = self.classifier.features(x)  # (N, 128)
        logits = self.classifier.head(feats)  # (N, 10), eval mode: dropout is the identity
        return Features(feats.double().numpy(), logits.double().numpy())


#################################################################################
#                                    Metrics                                    #
#################################################################################


@dataclass(frozen=True)
class FIDStatistics:
    """Mean ``(D,)`` and covariance ``(D, D)`` of a feature set (ADM's reference ``.npz`` holds ``mu, sigma``)."""

    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray) -> FIDStatistics:
        features = np.asarray(features, dtype=np.float64)
        return cls(features.mean(axis=0), np.cov(features, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped)."""
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(a: FIDStatistics, b: FIDStatistics) -> float:
    """Frechet distance of ``N(mu_a, S_a)`` and ``N(mu_b, S_b)``:
    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2})``.

    ``tr((S_a S_b)^{1/2}) = tr((S_a^{1/2} S_b S_a^{1/2})^{1/2})``: the second matrix is symmetric PSD, so the
    trace is the sum of square roots of its (clipped) eigenvalues -- no complex ``sqrtm`` round trip.
    """
    mu_a, mu_b = np.atleast_1d(a.mu), np.atleast_1d(b.mu)
    s_a, s_b = np.atleast_2d(a.sigma), np.atleast_2d(b.sigma)
    if mu_a.shape != mu_b.shape or s_a.shape != s_b.shape:
        raise ValueError(f"statistics of different dimension: {mu_a.shape} vs {mu_b.shape}")
    root_a = _psd_sqrt(s_a)
    middle = root_a @ s_b @ root_a
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean)


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """``exp(mean_x KL(p(y|x) || p(y)))`` per split of ``split_size`` rows, averaged over splits (as ADM).

    ``p(y|x) = softmax(logits)``; ``p(y)`` is the mean of ``p(y|x)`` over the split.
    """
    logits = np.asarray(logits, dtype=np.float64)
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))  # log softmax (N, K)
    p = np.exp(log_p)
    scores = []
    for start in range(0, len(p), split_size):
        part, log_part = p[start : start + split_size], log_p[start : start + split_size]
        log_marginal = np.log(part.mean(axis=0, keepdims=True))  # (1, K)
        kl = np.sum(part * (log_part - log_marginal), axis=1)  # (n,), 0 * log 0 -> 0 as p * finite
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``|x_i - y_j|^2`` for ``x`` (n, D), ``y`` (m, D) -> (n, m), clipped at 0."""
    d = (x * x).sum(1)[:, None] - 2 * x @ y.T + (y * y).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _row_blocks(n: int, block: int) -> Iterator[slice]:
    for start in range(0, n, block):
        yield slice(start, min(start + block, n))


def _knn_radii(features: np.ndarray, k: int, block: int) -> np.ndarray:
    """Squared distance of every point to its ``k``-th nearest neighbour (itself excluded) -> (n,)."""
    radii = np.empty(len(features))
    for rows in _row_blocks(len(features), block):
        d = _squared_distances(features[rows], features)  # (b, n), includes the 0 self-distance
        radii[rows] = np.partition(d, k, axis=1)[:, k]
    return radii


def _inside_fraction(points: np.ndarray, centers: np.ndarray, radii: np.ndarray, block: int) -> float:
    """Fraction of ``points`` inside at least one ball ``|p - c_j|^2 <= r_j``."""
    inside = 0
    for rows in _row_blocks(len(points), block):
        inside += int(np.any(_squared_distances(points[rows], centers) <= radii[None, :], axis=1).sum())
    return inside / len(points)


def precision_recall(
    reference: np.ndarray, samples: np.ndarray, k: int = 3, block: int = 10000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019; ADM's ``ManifoldEstimator``, ``k = 3``).

    precision = fraction of ``samples`` inside the reference manifold; recall = fraction of ``reference``
    inside the sample manifold. Each manifold is the union of balls around its points with radius the
    distance to the ``k``-th nearest other point.
    """
    reference = np.asarray(reference, dtype=np.float64)
    samples = np.asarray(samples, dtype=np.float64)
    if min(len(reference), len(samples)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set")
    ref_radii = _knn_radii(reference, k, block)
    sample_radii = _knn_radii(samples, k, block)
    precision = _inside_fraction(samples, reference, ref_radii, block)
    recall = _inside_fraction(reference, samples, sample_radii, block)
    return precision, recall


@dataclass(frozen=True)
class Metrics:
    """One evaluation: which extractor, how many images, and the four ADM numbers."""

    extractor: str
    num_samples: int
    num_reference: int
    fid: float
    inception_score: float | None
    precision: float
    recall: float

    def as_dict(self) -> dict[str, float | int | str | None]:
        return dict(self.__dict__)


def compute_metrics(
    samples: np.ndarray,
    reference: np.ndarray,
    extractor: FeatureExtractor,
    batch_size: int = 250,
    split_size: int = 5000,
) -> Metrics:
    """FID, IS (if the extractor has logits), precision and recall of ``samples`` against ``reference``.

    Both are uint8 image arrays ``(N, H, W, 3)`` (``load_npz_images`` of ADM ``.npz`` files).
    """
    sample_feats = extract_features(extractor, samples, batch_size)
    ref_feats = extract_features(extractor, reference, batch_size)
    fid = frechet_distance(
        FIDStatistics.from_features(sample_feats.features), FIDStatistics.from_features(ref_feats.features)
    )
    score = inception_score(sample_feats.logits, split_size) if sample_feats.logits is not None else None
    precision, recall = precision_recall(ref_feats.features, sample_feats.features)
    return Metrics(extractor.name, len(samples), len(reference), fid, score, precision, recall)


#################################################################################
#                                  ADM .npz I/O                                 #
#################################################################################


def save_npz_images(path: str | os.PathLike, images: np.ndarray) -> Path:
    """Write ``images`` uint8 ``(N, H, W, 3)`` as ADM's ``arr_0``, atomically (temp file + rename)."""
    images = _check_images(images)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
    np.savez(tmp, arr_0=images)
    os.replace(tmp, path)
    return path


def load_npz_images(path: str | os.PathLike) -> np.ndarray:
    """Read the ``arr_0`` uint8 ``(N, H, W, 3)`` array of an ADM sample / reference batch."""
    with np.load(path) as data:
        return _check_images(data["arr_0"])


#################################################################################
#                                      CLI                                      #
#################################################################################


def make_extractor(name: str, inception_weights: str | os.PathLike | None = None) -> FeatureExtractor:
    """``"inception"`` (weights from ``inception_weights`` or ``$SIT_FID_INCEPTION``) or ``"digits"``."""
    if name == "digits":
        return DigitFeatureExtractor()
    if name != "inception":
        raise ValueError(f"unknown extractor {name!r}; valid: 'inception', 'digits'")
    weights = inception_weights or os.environ.get("SIT_FID_INCEPTION")
    if not weights:
        raise FileNotFoundError(
            "the Inception extractor needs its weights: pass inception_weights / --inception-weights or set "
            "SIT_FID_INCEPTION (docs/fid.md); or use the offline extractor 'digits'"
        )
    return InceptionExtractor.from_file(weights)


def main(argv: list[str] | None = None) -> Metrics:
    """``python -m sit_diffusers.fid SAMPLES.npz REFERENCE.npz``: the four numbers, as ADM's evaluator."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m sit_diffusers.fid", description=main.__doc__)
    parser.add_argument("samples", help="ADM .npz of generated images (arr_0, uint8 NHWC)")
    parser.add_argument("reference", help="ADM .npz of real images")
    parser.add_argument("--extractor", choices=["inception", "digits"], default="inception")
    parser.add_argument("--inception-weights", help="FID Inception file (default: $SIT_FID_INCEPTION)")
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args(argv)
    try:
        extractor = make_extractor(args.extractor, args.inception_weights)
    except FileNotFoundError as err:
        parser.error(str(err))
    metrics = compute_metrics(load_npz_images(args.samples), load_npz_images(args.reference), extractor,
                              batch_size=args.batch_size)
    print(json.dumps(metrics.as_dict(), indent=2))
    return metrics


if __name__ == "__main__":
    main()
