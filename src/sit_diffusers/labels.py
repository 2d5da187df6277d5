"""Class labels: ImageNet-1k names shipped with the package and name -> id resolution.

A label is an ``int`` id, a decimal string (``"207"``), or a class name. ``id2label`` maps ids to names in the
ImageNet style ``"toilet tissue, toilet paper, bathroom tissue"``: every comma-separated synonym resolves to
its id, compared case-insensitively with runs of spaces/underscores collapsed. A string is always one label
(never split into characters). Unknown names, ambiguous synonyms (ImageNet has two ``"crane"`` classes) and
ids out of range raise :class:`UnknownClassLabelError` (a ``ValueError``) naming the nearest valid names.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import Union

import torch

from .validation import InputError

ClassLabel = Union[int, str]
ClassLabels = Union[ClassLabel, Sequence[ClassLabel], torch.Tensor]

IMAGENET_NUM_CLASSES = 1000


class UnknownClassLabelError(InputError):
    """A class label that is not a valid id, or a name that matches no class (or several)."""


@lru_cache(maxsize=1)
def _imagenet_document() -> dict:
    text = resources.files("sit_diffusers").joinpath("data/imagenet_classes.json").read_text(encoding="utf-8")
    return json.loads(text)


def imagenet_id2label() -> dict[int, str]:
    """The 1000 ImageNet-1k class names, ``{0: "tench, Tinca tinca", ..., 999: "toilet tissue, ..."}``.

    Derived from the WordNet lemmas of the ILSVRC-2012 synsets in class-index order (see
    ``sit_diffusers/data/make_imagenet_classes.py``). A fresh dict on every call.
    """
    return dict(enumerate(_imagenet_document()["labels"]))


def imagenet_synsets() -> list[str]:
    """The 1000 WordNet synset ids (``"n01440764"``, ...) in class-index order."""
    return list(_imagenet_document()["synsets"])


def normalize_name(name: str) -> str:
    """Canonical form used for matching: lower case, ``_``/whitespace runs -> one space, stripped."""
    return re.sub(r"[\s_]+", " ", name).strip().lower()


def normalize_id2label(id2label: Mapping[int | str, str] | None) -> dict[int, str] | None:
    """Return ``id2label`` with integer keys (json stores them as strings), sorted by id."""
    if id2label is None:
        return None
    return {int(k): str(v) for k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))}


class LabelResolver:
    """Resolve ints / names to class ids for a model with ``num_classes`` classes.

    Args:
        num_classes: valid ids are ``0 .. num_classes - 1`` (the null class ``num_classes`` is not a label).
        id2label: optional names; without it only integer labels are accepted.
    """

    def __init__(self, num_classes: int, id2label: Mapping[int | str, str] | None = None) -> None:
        self.num_classes = int(num_classes)
        self.id2label: dict[int, str] = normalize_id2label(id2label) or {}
        full: dict[str, set[int]] = {}
        synonyms: dict[str, set[int]] = {}
        for idx, label in self.id2label.items():
            full.setdefault(normalize_name(label), set()).add(idx)
            for part in label.split(","):
                if part.strip():
                    synonyms.setdefault(normalize_name(part), set()).add(idx)
        self._full = full
        self._synonyms = synonyms

    @property
    def names(self) -> list[str]:
        """Every accepted (normalized) name: full labels and their synonyms."""
        return sorted(set(self._full) | set(self._synonyms))

    def suggest(self, name: str, n: int = 5) -> list[str]:
        """Up to ``n`` valid names closest to ``name`` (difflib ratio), original spelling."""
        key = normalize_name(name)
        originals: dict[str, str] = {}
        for label in self.id2label.values():
            for part in label.split(","):
                originals.setdefault(normalize_name(part), part.strip())
        close = difflib.get_close_matches(key, list(originals), n=n, cutoff=0.5)
        if len(close) < n:  # substring hits ("retriever" -> "golden retriever") after the fuzzy ones
            close += [k for k in originals if key and key in k and k not in close][: n - len(close)]
        return [originals[k] for k in close]

    def resolve_one(self, label: ClassLabel) -> int:
        """One label -> id. ``bool`` is rejected; decimal strings are ids; other strings are names."""
        if isinstance(label, bool):
            raise UnknownClassLabelError(
                f"class label {label!r} is a bool, expected an int id or a class name"
            )
        if isinstance(label, torch.Tensor):
            if label.numel() != 1 or label.is_floating_point() and label != label.round():
                raise UnknownClassLabelError(f"class label tensor {label!r} is not one integer")
            label = int(label.item())
        if isinstance(label, int):
            return self._check_id(label)
        if isinstance(label, str):
            text = label.strip()
            if re.fullmatch(r"[+-]?\d+", text):
                return self._check_id(int(text))
            return self._resolve_name(text)
        if hasattr(label, "__index__"):  # numpy integers
            return self._check_id(int(label.__index__()))
        raise UnknownClassLabelError(
            f"class label {label!r} has type {type(label).__name__}, expected int or str"
        )

    def __call__(self, labels: ClassLabels) -> list[int]:
        """Labels -> list of ids. A single int/str gives a one-element list (a str is never split)."""
        if isinstance(labels, torch.Tensor):
            labels = labels.reshape(-1).tolist() if labels.ndim else [labels]
        elif isinstance(labels, (str, int)) or not isinstance(labels, Iterable):
            labels = [labels]  # type: ignore[list-item]
        ids = [self.resolve_one(label) for label in labels]  # type: ignore[union-attr]
        if not ids:
            raise UnknownClassLabelError("no class labels given")
        return ids

    def _check_id(self, idx: int) -> int:
        if not 0 <= idx < self.num_classes:
            raise UnknownClassLabelError(
                f"class id {idx} is out of range: this model has {self.num_classes} classes "
                f"(ids 0..{self.num_classes - 1}; the null class {self.num_classes} is used only for guidance)"
            )
        return idx

    def _resolve_name(self, name: str) -> int:
        key = normalize_name(name)
        if not self.id2label:
            raise UnknownClassLabelError(
                f"class name {name!r} given, but this pipeline has no id2label; pass integer ids "
                f"0..{self.num_classes - 1}"
            )
        for table in (self._full, self._synonyms):
            ids = table.get(key)
            if ids and len(ids) == 1:
                return self._check_id(next(iter(ids)))
            if ids:
                options = "; ".join(f"{i} = {self.id2label[i]!r}" for i in sorted(ids))
                raise UnknownClassLabelError(f"class name {name!r} is ambiguous, use an id: {options}")
        nearest = self.suggest(name)
        hint = f" Nearest names: {', '.join(repr(s) for s in nearest)}." if nearest else ""
        raise UnknownClassLabelError(f"unknown class name {name!r}.{hint}")


def resolve_class_labels(
    labels: ClassLabels, num_classes: int, id2label: Mapping[int | str, str] | None = None
) -> list[int]:
    """Convenience wrapper: ``LabelResolver(num_classes, id2label)(labels)``."""
    return LabelResolver(num_classes, id2label)(labels)
