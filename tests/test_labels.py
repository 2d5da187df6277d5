"""Class-label resolution and the packaged ImageNet-1k names."""

from __future__ import annotations

import pytest
import torch

from sit_diffusers.labels import (
    LabelResolver,
    UnknownClassLabelError,
    imagenet_id2label,
    imagenet_synsets,
    normalize_id2label,
    resolve_class_labels,
)


@pytest.fixture(scope="module")
def imagenet() -> LabelResolver:
    return LabelResolver(1000, imagenet_id2label())


def test_imagenet_table_is_the_standard_index_order() -> None:
    names, synsets = imagenet_id2label(), imagenet_synsets()
    assert len(names) == len(synsets) == len(set(synsets)) == 1000
    # Anchors of the ILSVRC-2012 index order (first, last, and the classes of the official sample.py).
    assert (synsets[0], names[0]) == ("n01440764", "tench, Tinca tinca")
    assert synsets[999] == "n15075141" and names[999].startswith("toilet tissue")
    assert names[207] == "golden retriever"
    assert names[88] == "macaw" and names[279] == "Arctic fox, white fox, Alopex lagopus"
    assert all(isinstance(n, str) and n.strip() == n and n for n in names.values())


def test_ints_names_synonyms_and_decimal_strings(imagenet: LabelResolver) -> None:
    assert imagenet(["golden retriever", 207, "207", " Golden_Retriever "]) == [207] * 4
    assert imagenet("Tinca tinca") == [0]  # a synonym, and a bare string is one label (not characters)
    assert imagenet("toilet paper") == [999]
    assert imagenet(torch.tensor([1, 2])) == [1, 2]
    assert imagenet(torch.tensor(5)) == [5]
    # The full label is preferred over an ambiguous synonym: "maillot" alone names two classes.
    assert imagenet("maillot, tank suit") == [639]


def test_errors_name_the_nearest_valid_names(imagenet: LabelResolver) -> None:
    with pytest.raises(UnknownClassLabelError, match="golden retriever"):
        imagenet("golden retreiver")
    with pytest.raises(UnknownClassLabelError, match=r"ambiguous.*134.*517"):
        imagenet("crane")
    with pytest.raises(UnknownClassLabelError, match="out of range"):
        imagenet(1000)  # the null class is not a label
    with pytest.raises(UnknownClassLabelError, match="out of range"):
        imagenet(-1)
    with pytest.raises(UnknownClassLabelError, match="bool"):
        imagenet(True)
    with pytest.raises(UnknownClassLabelError, match="no class labels"):
        imagenet([])


def test_without_names_only_ids_are_accepted() -> None:
    assert resolve_class_labels([0, "9"], num_classes=10) == [0, 9]
    with pytest.raises(UnknownClassLabelError, match="no id2label"):
        resolve_class_labels("cat", num_classes=10)


def test_json_style_string_keys_are_normalized() -> None:
    id2label = normalize_id2label({"1": "b", "0": "a, alpha"})
    assert id2label == {0: "a, alpha", 1: "b"} and list(id2label) == [0, 1]
    assert resolve_class_labels(["alpha", "B"], 2, {"1": "b", "0": "a, alpha"}) == [0, 1]
