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

Command line: ``python -m sit_diffusers.fid SAMPLES.npz REFERENCE.npz [--extractor digits]`` prints the four
numbers as JSON. Every argument is checked before any image is read (the ``.npz`` headers, the extractor and
its weights); a bad one prints one line ``python -m sit_diffusers.fid: error: ...`` and exits with status 2,
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .atomic import write_file_atomically
from .validation import CLIParser, InputError, NonFiniteError, check_choice, check_int, run_cli

__all__ = [
    "DigitFeatureExtractor",
    "FIDStatistics",
    "FeatureExtractor",
    "Features",
    "InceptionExtractor",
    "Metrics",
    "WeightsNotFoundError",
    "check_npz_images",
    "compute_metrics",
    "extract_features",
    "frechet_distance",
    "inception_score",
    "load_npz_images",
    "make_extractor",
    "npz_array_header",
    "precision_recall",
    "save_npz_images",
]

#: Extractor names of :func:`make_extractor` and ``--extractor``.
EXTRACTORS: tuple[str, ...] = ("inception", "digits")
#: Nearest neighbour of the precision / recall manifolds (ADM, Kynkaenniemi et al.): sets need ``K + 1`` points.
PR_NEIGHBOURS: int = 3
DIGIT_SIZE: tuple[int, int] = (28, 28)


class WeightsNotFoundError(InputError, FileNotFoundError):
    """The FID Inception weights are not given or not on disk (see ``docs/fid.md``)."""


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


def _check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise InputError(
            f"{name} must be uint8 images (N, H, W, 3) or (N, H, W, 1), got {images.dtype} {images.shape}"
        )
    return images


def extract_features(extractor: FeatureExtractor, images: np.ndarray, batch_size: int = 250) -> Features:
    """Run ``extractor`` over ``images`` (N, H, W, C) uint8 in batches; float64 features (and logits)."""
    images = _check_images(images)
    batch_size = check_int("batch_size", batch_size, minimum=1)
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
    def from_file(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", *, name: str = "Inception weights"
    ) -> InceptionExtractor:
        """Load a TorchScript ``.pt`` (``torch.jit.load``) or a pickled ``.pkl`` Inception file.

        Raises:
            WeightsNotFoundError: no file at ``path``; InputError: a file that is not a loadable module.
            ``name`` is how the messages name the file (a CLI passes its flag).
        """
        text = os.fspath(path)
        path = Path(text).expanduser()
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "not found"
            raise WeightsNotFoundError(
                f"{name} {text!r} {what}; see docs/fid.md for the FID Inception file and where to get it"
            )
        try:
            if path.suffix == ".pkl":
                with open(path, "rb") as f:
                    module = pickle.load(f)  # noqa: S301 - user-supplied trusted file, documented above
            else:
                with warnings.catch_warnings():  # the published port is TorchScript; torch deprecates jit.load
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # torch.jit.load / pickle raise many types on a file that is not the model
            first = next((line for line in str(err).splitlines() if line.strip()), "")
            raise InputError(
                f"{name} {text!r} could not be loaded as the FID Inception module ({type(err).__name__}: "
                f"{first}); see docs/fid.md"
            ) from err
        if not isinstance(module, torch.nn.Module):
            raise InputError(
                f"{name} {text!r} holds a {type(module).__name__}, not the FID Inception module; see docs/fid.md"
            )
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
            from .digit_classifier import load_classifier

            classifier = load_classifier()
        self.classifier = classifier.eval()

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> Features:
        images = _check_images(images)
        if images.shape[1:3] != DIGIT_SIZE:
            raise InputError(f"the digit classifier takes 28 x 28 images, got {images.shape[1]} x {images.shape[2]}")
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
        """Mean and unbiased covariance of ``features`` ``(N, D)``, ``N >= 2``, in float64."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise InputError(f"features must have shape (N >= 2, D) for a covariance, got {features.shape}")
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
        raise InputError(f"statistics of different dimension: {mu_a.shape} vs {mu_b.shape}")
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
    k = check_int("k", k, minimum=1)
    block = check_int("block", block, minimum=1)
    if min(len(reference), len(samples)) <= k:
        raise InputError(
            f"precision/recall with k={k} needs more than {k} points per set, got {len(samples)} samples and "
            f"{len(reference)} references"
        )
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

    Both are uint8 image arrays ``(N, H, W, 3)`` (``load_npz_images`` of ADM ``.npz`` files) of at least
    ``PR_NEIGHBOURS + 1 = 4`` images (a covariance needs 2; precision / recall the 3rd nearest neighbour).

    Raises:
        InputError: bad images, sizes or counts (checked before any feature is computed).
        NonFiniteError: the extractor returned NaN / inf features.
    """
    samples = _check_images(samples, "samples")
    reference = _check_images(reference, "reference")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    split_size = check_int("split_size", split_size, minimum=1)
    for name, images in (("samples", samples), ("reference", reference)):
        if len(images) <= PR_NEIGHBOURS:
            raise InputError(
                f"{name} holds {len(images)} image(s); the metrics need at least {PR_NEIGHBOURS + 1} (a covariance "
                f"needs 2, precision / recall the {PR_NEIGHBOURS}rd nearest neighbour)"
            )
    sample_feats = extract_features(extractor, samples, batch_size)
    ref_feats = extract_features(extractor, reference, batch_size)
    for name, feats in (("samples", sample_feats), ("reference", ref_feats)):
        for what, array in (("features", feats.features), ("logits", feats.logits)):
            if array is not None and not np.isfinite(array).all():
                raise NonFiniteError(
                    f"{extractor.name} {what} of the {name} hold NaN/inf; the extractor (its weights) is broken"
                )
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
    write_file_atomically(path, lambda tmp: np.savez(tmp, arr_0=images), suffix=".npz")
    return path


def npz_array_header(
    path: str | os.PathLike, key: str = "arr_0", *, name: str = "path"
) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``key`` in the ``.npz`` at ``path``, from its ``.npy`` header (no data is read).

    Raises:
        InputError: no such file, a folder, not a zip / ``.npz`` archive, no ``key`` in it, or a damaged
            header; ``name`` is how the message names the file (a CLI passes its flag).
    """
    text = os.fspath(path)
    file = Path(text).expanduser()
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise InputError(f"{name} {text!r} {what}; expected an ADM .npz of uint8 (N, H, W, 3) images")
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.namelist()
            if f"{key}.npy" not in members:
                keys = sorted(m.removesuffix(".npy") for m in members)
                raise InputError(
                    f"{name} {text!r} has no {key!r} array (it holds {keys}); expected an ADM .npz of uint8 "
                    "(N, H, W, 3) images"
                )
            with archive.open(f"{key}.npy") as f:
                version = np.lib.format.read_magic(f)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read(f)
    except InputError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        size = file.stat().st_size if file.exists() else 0
        why = "an empty file (0 bytes)" if size == 0 else f"{type(err).__name__}: {err}"
        raise InputError(f"{name} {text!r} is not a readable .npz archive ({why}); expected an ADM .npz "
                         "written by numpy.savez") from err
    return tuple(shape), np.dtype(dtype)


def check_npz_images(
    path: str | os.PathLike, *, name: str = "path", min_count: int = 1, size: tuple[int, int] | None = None
) -> tuple[int, int, int, int]:
    """The shape ``(N, H, W, C)`` of the ADM images in ``path``, from the header only: ``arr_0`` must be uint8
    with ``C`` 1 or 3, ``N >= min_count`` and (if given) ``(H, W) == size``; else an ``InputError``."""
    shape, dtype = npz_array_header(path, name=name)
    text = os.fspath(path)
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
        raise InputError(f"{name} {text!r}: arr_0 is {dtype} {shape}; expected uint8 images (N, H, W, 3) or "
                         "(N, H, W, 1), the ADM format")
    if shape[0] < min_count:
        raise InputError(f"{name} {text!r} holds {shape[0]} image(s); at least {min_count} are needed")
    if size is not None and tuple(shape[1:3]) != tuple(size):
        raise InputError(f"{name} {text!r} holds {shape[1]} x {shape[2]} images; {size[0]} x {size[1]} expected")
    return shape  # type: ignore[return-value]


def load_npz_images(path: str | os.PathLike, *, name: str = "path") -> np.ndarray:
    """Read the ``arr_0`` uint8 ``(N, H, W, 3)`` array of an ADM sample / reference batch.

    Raises ``InputError`` naming ``name`` for a missing, damaged or non-ADM file."""
    check_npz_images(path, name=name)
    try:
        with np.load(path, allow_pickle=False) as data:
            images = data["arr_0"]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise InputError(f"{name} {os.fspath(path)!r}: arr_0 cannot be read ({type(err).__name__}: {err}); the file "
                         "is damaged") from err
    return _check_images(images, f"{name} {os.fspath(path)!r}")


#################################################################################
#                                      CLI                                      #
#################################################################################


def make_extractor(
    name: str, inception_weights: str | os.PathLike | None = None, *, weights_name: str | None = None
) -> FeatureExtractor:
    """``"inception"`` (weights from ``inception_weights`` or ``$SIT_FID_INCEPTION``) or ``"digits"``.

    ``weights_name`` is how messages name ``inception_weights`` (default ``inception_weights``; a CLI
    passes its flag); the environment variable is named as ``SIT_FID_INCEPTION``.
    """
    name = check_choice("extractor", name, EXTRACTORS)
    if name == "digits":
        return DigitFeatureExtractor()
    weights = inception_weights or os.environ.get("SIT_FID_INCEPTION")
    flag = weights_name or "inception_weights"
    if not weights:
        raise WeightsNotFoundError(
            f"the Inception extractor needs its weights: pass {flag} PATH or set SIT_FID_INCEPTION "
            "(docs/fid.md); or use the offline extractor 'digits'"
        )
    return InceptionExtractor.from_file(weights, name=flag if inception_weights else "SIT_FID_INCEPTION")


PROG = "python -m sit_diffusers.fid"



def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog=PROG, description="FID, Inception Score, precision and recall of two ADM .npz files, "
                     "as ADM's evaluator; printed as JSON.", allow_abbrev=False)
    parser.add_argument("samples", metavar="SAMPLES", help="ADM .npz of generated images (arr_0, uint8 NHWC)")
    parser.add_argument("reference", metavar="REFERENCE", help="ADM .npz of real images")
    parser.add_argument("--extractor", default="inception",
                        help=f"feature network: {', '.join(EXTRACTORS)} (default inception; digits: offline, "
                             "28 x 28 images)")
    parser.add_argument("--inception-weights", help="FID Inception file (default: $SIT_FID_INCEPTION)")
    parser.add_argument("--batch-size", type=int, default=250, help="images per extractor call (>= 1)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def run(argv: Sequence[str] | None = None) -> Metrics:
    """The command without the exit-status handling: check every argument, score, print JSON; the metrics.

    Raises ``InputError`` (naming the argument) for anything bad, before any image data is read."""
    args = build_parser().parse_args(argv)
    check_int("--batch-size", args.batch_size, minimum=1)
    extractor_name = check_choice("--extractor", args.extractor, EXTRACTORS)
    if args.inception_weights == "":
        raise InputError("--inception-weights is empty; give the FID Inception file (docs/fid.md)")
    if extractor_name == "digits" and args.inception_weights is not None:
        raise InputError(f"--inception-weights {args.inception_weights!r} applies to --extractor inception; "
                         "drop it or drop --extractor digits")
    size = DIGIT_SIZE if extractor_name == "digits" else None
    for flag, path in (("SAMPLES", args.samples), ("REFERENCE", args.reference)):
        check_npz_images(path, name=flag, min_count=PR_NEIGHBOURS + 1, size=size)
    extractor = make_extractor(extractor_name, args.inception_weights, weights_name="--inception-weights")
    samples = load_npz_images(args.samples, name="SAMPLES")
    reference = load_npz_images(args.reference, name="REFERENCE")
    metrics = compute_metrics(samples, reference, extractor, batch_size=args.batch_size)
    print(json.dumps(metrics.as_dict(), indent=2))
    return metrics


def _cli(argv: Sequence[str]) -> int:
    run(argv)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sit_diffusers.fid SAMPLES.npz REFERENCE.npz``: the four numbers, as ADM's evaluator.

    Returns the exit status: 0, 2 for a bad argument or file (one line on stderr), 1 for NaN features."""
    return run_cli(PROG, _cli, argv)


if __name__ == "__main__":
    sys.exit(main())
