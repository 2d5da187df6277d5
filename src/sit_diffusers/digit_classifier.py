"""The digit classifier: a small CNN on 28 x 28 grey digits and its shipped weights.

It is the feature network of two metrics, so it lives apart from both: :mod:`sit_diffusers.evaluation`
(conditional accuracy, Frechet distance, and the command that trains it) and :mod:`sit_diffusers.fid`
(``DigitFeatureExtractor``, the offline extractor of the ADM metrics). Each imports it; neither imports the
other's classifier, so the two modules do not import each other.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .validation import InputError

__all__ = ["CLASSIFIER_PATH", "DigitClassifier", "load_classifier"]

#: The shipped weights (trained by ``python -m sit_diffusers.evaluation train-classifier``).
CLASSIFIER_PATH: Path = Path(__file__).resolve().parent / "data" / "digit_classifier.safetensors"


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


def load_classifier(path: str | os.PathLike = CLASSIFIER_PATH, *, name: str = "path") -> DigitClassifier:
    """A :class:`DigitClassifier` (eval mode, CPU) from a ``.safetensors`` file (default: the shipped one).

    Raises:
        InputError: ``path`` is missing, not a file, not a safetensors file, or does not hold this
            classifier's tensors; ``name`` is how the message names it (a CLI passes its flag).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    text = os.fspath(path)
    file = Path(text).expanduser()
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise InputError(f"{name} {text!r} {what}; expected the digit classifier's .safetensors file")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise InputError(f"{name} {text!r} is not a readable .safetensors file ({first})") from err
    model = DigitClassifier()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing / unexpected keys, wrong shapes
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        first = first if len(first) <= 160 else first[:157] + "..."
        raise InputError(f"{name} {text!r} does not hold the digit classifier's weights ({first})") from err
    return model.eval()
