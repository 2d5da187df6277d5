"""Data for SiT training: datasets loading, ADM preprocessing, a step-indexed sampler, precomputed latents.

Reproducibility contract (what makes exact resume and process-count invariance possible):

* The training stream is a sequence of *positions* ``q = 0, 1, 2, ...``; optimiser step ``s`` consumes
  positions ``[s * B, (s + 1) * B)`` for global batch ``B``. Position ``q`` reads dataset row
  ``perm_e[q mod N]`` with ``e = q // N`` and ``perm_e`` a permutation seeded by ``(seed, e)``.
* The horizontal flip of a sample comes from a generator seeded by ``(seed, q, STREAM_FLIP)``; the VAE
  posterior draw, noise, time and label dropout of step ``s`` come from one generator per
  ``(seed, s, stream)`` that draws the whole global batch, and each process / micro-batch takes its rows
  (``train_sit.StepDraws``). Never from a global RNG.

So the data and randomness of a step depend only on ``(seed, step)``: not on the number of processes, the
accumulation split, the number of workers, or whether the run was resumed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sit_diffusers.validation import InputError

__all__ = [
    "DataError",
    "STREAM_FLIP",
    "STREAM_SAMPLE",
    "adm_center_crop",
    "image_to_tensor",
    "sample_seed",
    "sample_generator",
    "flip_for",
    "load_image_dataset",
    "undecoded_images",
    "check_image_dataset",
    "check_label_range",
    "ImageDataset",
    "LatentDataset",
    "LatentsMeta",
    "StepBatchSampler",
    "StreamingBatches",
    "moments_to_latents",
]

STREAM_FLIP = 1
"""Seed stream for the horizontal-flip coin of a position."""
STREAM_SAMPLE = 2
"""Seed stream of the per-step training draws (VAE posterior, noise, time, label dropout; ``StepDraws``)."""

_MASK64 = (1 << 64) - 1


class DataError(InputError):
    """A dataset that cannot be trained on (empty, unreadable, missing column, labels out of range, ...)."""


# ---------------------------------------------------------------------------
# Per-sample seeds
# ---------------------------------------------------------------------------


def _splitmix64(x: int) -> int:
    """One round of SplitMix64 (Steele et al. 2014): a bijective 64-bit mixer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, position: int, stream: int) -> int:
    """A 63-bit seed for the draws of stream position ``position``; distinct streams are independent."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ position) ^ stream) >> 1


def sample_generator(seed: int, position: int, stream: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`sample_seed`."""
    return torch.Generator().manual_seed(sample_seed(seed, position, stream))


def flip_for(seed: int, position: int) -> bool:
    """The random horizontal-flip coin (probability 1/2) of stream position ``position``."""
    return bool(sample_seed(seed, position, STREAM_FLIP) & 1)


# ---------------------------------------------------------------------------
# Image preprocessing
# ---------------------------------------------------------------------------


def adm_center_crop(image: Image.Image, size: int) -> Image.Image:
    """ADM center crop (Dhariwal & Nichol 2021, guided-diffusion ``center_crop_arr``), as SiT/DiT train.

    Halve with a box filter while the short side is at least ``2 * size``, resize (bicubic) so the short
    side is ``size``, then take the central ``size x size`` square.
    """
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left = (image.size[0] - size) // 2
    top = (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def image_to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """PIL image -> float32 tensor in [-1, 1] of shape ``(channels, H, W)`` (``x / 127.5 - 1``)."""
    mode = "L" if channels == 1 else "RGB"
    arr = np.asarray(image.convert(mode), dtype=np.float32)  # (H, W) or (H, W, 3)
    if arr.ndim == 2:
        arr = arr[:, :, None]  # (H, W, 1)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0  # (C, H, W)


def preprocess(image: Any, size: int, channels: int, flip: bool) -> torch.Tensor:
    """Decode (if needed), ADM-crop, optionally mirror, scale to [-1, 1]: ``(channels, size, size)``."""
    if not isinstance(image, Image.Image):
        if isinstance(image, dict) and image.get("bytes") is not None:
            image = Image.open(io.BytesIO(image["bytes"]))
        elif isinstance(image, dict) and image.get("path"):
            image = Image.open(image["path"])
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        else:
            raise DataError(f"cannot read an image from a value of type {type(image).__name__}")
    image = adm_center_crop(image.convert("L" if channels == 1 else "RGB"), size)
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return image_to_tensor(image, channels)  # (C, size, size)


# ---------------------------------------------------------------------------
# Loading and checking a `datasets` dataset
# ---------------------------------------------------------------------------


def undecoded_images(dataset: Any, image_column: str) -> Any:
    """``dataset`` with its ``datasets.Image`` column left undecoded (``{"bytes", "path"}``), for
    :func:`preprocess` to open with PIL as the official ``ImageFolder`` loader does: ``datasets`` would apply
    ``ImageOps.exif_transpose`` when decoding, which the official training never does."""
    import datasets

    feature = (getattr(dataset, "features", None) or {}).get(image_column)
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def load_image_dataset(
    dataset_name: str | None,
    train_data_dir: str | None,
    *,
    dataset_config_name: str | None = None,
    split: str = "train",
    streaming: bool = False,
    cache_dir: str | None = None,
) -> Any:
    """A ``datasets.Dataset`` (or ``IterableDataset`` with ``streaming``) from a local folder or the Hub.

    ``train_data_dir`` (an ``imagefolder``: one sub-folder per class) wins over ``dataset_name``.
    Raises :class:`DataError` with the cause when the data cannot be loaded.
    """
    import datasets

    try:
        if train_data_dir is not None:
            if not Path(train_data_dir).is_dir():
                raise DataError(f"train_data_dir {train_data_dir} is not a directory")
            return datasets.load_dataset(
                "imagefolder", data_dir=train_data_dir, split=split, streaming=streaming, cache_dir=cache_dir
            )
        if dataset_name is None:
            raise DataError("no data: set dataset_name, train_data_dir or latents_dir")
        return datasets.load_dataset(
            dataset_name, dataset_config_name, split=split, streaming=streaming, cache_dir=cache_dir
        )
    except DataError:
        raise
    except Exception as err:  # datasets raises many types (FileNotFoundError, DataFilesNotFoundError, ...)
        source = train_data_dir if train_data_dir is not None else dataset_name
        raise DataError(f"could not load the training data from {source}: {type(err).__name__}: {err}") from err


def check_image_dataset(dataset: Any, image_column: str, label_column: str, num_classes: int) -> None:
    """Fail early, with a clear message, on data that would only break mid-training.

    Checks the columns exist, the dataset is not empty, its first example decodes to an image, and its
    labels lie in ``[0, num_classes)`` (:func:`check_label_range`).
    """
    columns = list(dataset.column_names or []) if getattr(dataset, "column_names", None) is not None else None
    if columns is not None:
        for kind, name in (("image", image_column), ("label", label_column)):
            if name not in columns:
                raise DataError(f"{kind} column {name!r} not in the dataset; its columns are {columns}")
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise DataError("the training dataset is empty")
    try:
        first = next(iter(dataset))
    except StopIteration:
        raise DataError("the training dataset is empty") from None
    except Exception as err:
        raise DataError(f"could not read the first training example: {type(err).__name__}: {err}") from err
    for kind, name in (("image", image_column), ("label", label_column)):
        if name not in first:
            raise DataError(f"{kind} column {name!r} not in the dataset; its columns are {sorted(first)}")
    try:
        preprocess(first[image_column], 8, 3, False)
    except Exception as err:
        raise DataError(f"the first training image is unreadable: {type(err).__name__}: {err}") from err
    check_label_range(dataset, label_column, num_classes, first)


def check_label_range(dataset: Any, label_column: str, num_classes: int, first: dict[str, Any] | None = None) -> None:
    """Every label of ``dataset`` is an integer in ``[0, num_classes)``, else :class:`DataError` naming one.

    A ``ClassLabel`` column is checked by its ``num_classes``; other columns by a full scan (the label column
    only: no image is decoded). A stream without a ``ClassLabel`` is checked on its first example here and
    on every batch during training.
    """
    feature = (getattr(dataset, "features", None) or {}).get(label_column)
    declared = getattr(feature, "num_classes", None)
    if declared is not None:
        if declared > num_classes:
            raise DataError(f"the dataset's {label_column!r} column has {declared} classes (ClassLabel) but "
                            f"--num_classes is {num_classes}; set --num_classes {declared}")
        return
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        if getattr(dataset, "column_names", None) is not None:
            values = dataset[label_column]  # one column: images are not decoded
        else:
            values = (row[label_column] for row in dataset)  # an indexable of rows (in-process data)
    else:
        values = [] if first is None else [first[label_column]]
    for index, value in enumerate(values):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = value.item()
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise DataError(f"label {value!r} of example {index} (column {label_column!r}) is not an integer class")
        if not 0 <= value < num_classes:
            raise DataError(f"label {int(value)} of example {index} (column {label_column!r}) is outside "
                            f"[0, --num_classes {num_classes})")


# ---------------------------------------------------------------------------
# Map-style datasets keyed by (position, row)
# ---------------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """Rows of an image dataset, preprocessed for stream position ``q``: ``(q, row) -> example``.

    Returns ``{"pixels": (C, size, size) in [-1, 1], "label": int, "position": q}``; the flip is
    :func:`flip_for` ``(seed, q)`` when ``random_flip``.
    """

    def __init__(
        self, dataset: Any, image_column: str, label_column: str, size: int, channels: int,
        seed: int, random_flip: bool,
    ) -> None:
        self.dataset = dataset
        self.image_column = image_column
        self.label_column = label_column
        self.size = size
        self.channels = channels
        self.seed = seed
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.dataset)

    def example(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        """Preprocess one decoded row for stream position ``position``."""
        flip = self.random_flip and flip_for(self.seed, position)
        return {
            "pixels": preprocess(row[self.image_column], self.size, self.channels, flip),  # (C, H, W)
            "label": int(row[self.label_column]),
            "position": position,
        }

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        position, index = key
        try:
            row = self.dataset[int(index)]
        except Exception as err:
            raise DataError(f"could not read training example {index}: {type(err).__name__}: {err}") from err
        return self.example(row, position)


@dataclass(frozen=True)
class LatentsMeta:
    """``meta.json`` of a precomputed-latents folder."""

    num_examples: int
    latent_shape: tuple[int, int, int]
    """``(C, h, w)`` of one latent; the stored moments have ``2C`` channels (mean, log-variance)."""
    resolution: int
    vae: str
    vae_scaling_factor: float
    dtype: str
    shards: tuple[str, ...]
    id2label: dict[int, str] | None = None

    @staticmethod
    def read(folder: str | Path) -> LatentsMeta:
        path = Path(folder) / "meta.json"
        if not path.is_file():
            raise DataError(f"{folder} is not a precomputed-latents folder (no meta.json)")
        try:
            data = json.loads(path.read_text())
            id2label = data.get("id2label")
            meta = LatentsMeta(
                num_examples=int(data["num_examples"]),
                latent_shape=tuple(int(n) for n in data["latent_shape"]),
                resolution=int(data["resolution"]),
                vae=str(data["vae"]),
                vae_scaling_factor=float(data["vae_scaling_factor"]),
                dtype=str(data["dtype"]),
                shards=tuple(str(name) for name in data["shards"]),
                id2label={int(k): v for k, v in id2label.items()} if id2label else None,
            )
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{path} is not a valid latents meta.json ({type(err).__name__}: {err})") from None
        if len(meta.latent_shape) != 3:
            raise DataError(f"{path}: latent_shape must be (C, h, w), got {list(meta.latent_shape)}")
        return meta

    def write(self, folder: str | Path) -> None:
        data = {
            "num_examples": self.num_examples, "latent_shape": list(self.latent_shape),
            "resolution": self.resolution, "vae": self.vae, "vae_scaling_factor": self.vae_scaling_factor,
            "dtype": self.dtype, "shards": list(self.shards),
            "id2label": {str(k): v for k, v in self.id2label.items()} if self.id2label else None,
        }
        (Path(folder) / "meta.json").write_text(json.dumps(data, indent=2))


class LatentDataset(torch.utils.data.Dataset):
    """Precomputed VAE posterior moments, memory-mapped: ``(q, row) -> example``.

    Each row stores the moments of the crop and of its mirror image, ``(2, 2C, h, w)``; the example for
    position ``q`` picks the mirror when :func:`flip_for` ``(seed, q)`` (and ``random_flip``), exactly the
    coin :class:`ImageDataset` tosses, so both paths see the same views.
    Returns ``{"moments": (2C, h, w) float32, "label": int, "position": q}``.
    """

    def __init__(self, folder: str | Path, seed: int, random_flip: bool) -> None:
        self.folder = Path(folder)
        self.meta = LatentsMeta.read(folder)
        self.seed = seed
        self.random_flip = random_flip
        self._moments: list[np.ndarray] | None = None
        self._labels: np.ndarray | None = None
        self._offsets: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by "spawn" get the folder, not the maps: the main process reads
        # ``labels`` (which opens the shards) before the workers start, and a pickled memmap is a full copy.
        return {**self.__dict__, "_moments": None, "_labels": None, "_offsets": None}

    def _open(self) -> None:
        # Opened lazily so the object pickles cheaply into DataLoader workers.
        moments = [np.load(self.folder / f"{s}-moments.npy", mmap_mode="r") for s in self.meta.shards]
        labels = [np.load(self.folder / f"{s}-labels.npy") for s in self.meta.shards]
        self._moments = moments
        self._labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self._offsets = np.cumsum([0] + [len(m) for m in moments])
        if self._offsets[-1] != self.meta.num_examples:
            raise DataError(f"{self.folder}: shards hold {self._offsets[-1]} rows, meta.json says "
                            f"{self.meta.num_examples}")

    def __len__(self) -> int:
        return self.meta.num_examples

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._open()
        return self._labels

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        if self._moments is None:
            self._open()
        position, index = key
        shard = int(np.searchsorted(self._offsets, index, side="right") - 1)
        flip = int(self.random_flip and flip_for(self.seed, position))
        row = np.array(self._moments[shard][index - self._offsets[shard], flip], dtype=np.float32)  # copy
        return {"moments": torch.from_numpy(row), "label": int(self._labels[index]), "position": position}


def moments_to_latents(moments: torch.Tensor, eps: torch.Tensor | None, scaling_factor: float) -> torch.Tensor:
    """Draw from the VAE posterior ``N(mean, exp(logvar))`` and scale: ``(mean + std * eps) * scaling``.

    ``moments`` (N, 2C, h, w) is ``[mean, logvar]`` along channels (``latent_dist.parameters`` of
    diffusers' ``AutoencoderKL``; logvar clamped to [-30, 20] as there); ``eps`` (N, C, h, w) standard
    normal, or ``None`` for the posterior mean. Returns (N, C, h, w).
    """
    mean, logvar = moments.float().chunk(2, dim=1)  # (N, C, h, w) each
    if eps is None:
        return mean * scaling_factor
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))  # (N, C, h, w)
    return (mean + std * eps) * scaling_factor  # (N, C, h, w)


# ---------------------------------------------------------------------------
# Step-indexed sampling
# ---------------------------------------------------------------------------


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this process's micro-batches of ``(position, row)`` keys, from ``start_step`` on.

    Step ``s`` covers positions ``s * B + k`` for ``k < B`` (``B`` = global batch); micro-step ``m`` of
    process ``r`` takes ``k`` in ``[(m * P + r) * b, (m * P + r + 1) * b)`` with ``b = B / (A * P)``. Row of
    position ``q``: ``perm_e[q mod N]``, ``e = q // N``, ``perm_e = randperm(N, seed=(seed, e))``.
    """

    def __init__(
        self, num_rows: int, global_batch_size: int, num_processes: int, process_index: int,
        accumulation_steps: int, seed: int, start_step: int, max_steps: int,
    ) -> None:
        if global_batch_size % (num_processes * accumulation_steps):
            raise DataError(
                f"global_batch_size {global_batch_size} is not divisible by num_processes ({num_processes}) "
                f"x gradient_accumulation_steps ({accumulation_steps})"
            )
        self.num_rows = num_rows
        self.global_batch_size = global_batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.accumulation_steps = accumulation_steps
        self.micro_batch_size = global_batch_size // (num_processes * accumulation_steps)
        self.seed = seed
        self.start_step = start_step
        self.max_steps = max_steps
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    def row(self, position: int) -> int:
        """Dataset row read at stream position ``position``."""
        epoch, offset = divmod(position, self.num_rows)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, 0))
            self._perm = torch.randperm(self.num_rows, generator=g)
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def positions(self, step: int, micro_step: int) -> range:
        """Stream positions of this process's micro-batch ``micro_step`` of optimiser step ``step``."""
        b = self.micro_batch_size
        start = step * self.global_batch_size + (micro_step * self.num_processes + self.process_index) * b
        return range(start, start + b)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.max_steps):
            for micro in range(self.accumulation_steps):
                yield [(q, self.row(q)) for q in self.positions(step, micro)]

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step) * self.accumulation_steps


class StreamingBatches:
    """Micro-batches from a streamed ``datasets.IterableDataset``, shuffled with a buffer and sharded.

    Each process reads its own shard (``split_dataset_by_node``); positions follow the same formula as
    :class:`StepBatchSampler`, so flips and per-sample draws are seeded the same way. On resume the
    already-consumed examples of this process are skipped (re-read, not re-trained on). The shuffle is
    approximate (a buffer), and with several processes each sees its own shard, so unlike the map-style
    path the batches depend on the process count.
    """

    def __init__(
        self, dataset: Any, example_fn: Any, global_batch_size: int, num_processes: int, process_index: int,
        accumulation_steps: int, seed: int, start_step: int, max_steps: int, buffer_size: int,
    ) -> None:
        from datasets.distributed import split_dataset_by_node

        self.positions_of = StepBatchSampler(
            1, global_batch_size, num_processes, process_index, accumulation_steps, seed, start_step, max_steps
        )
        dataset = split_dataset_by_node(dataset, rank=process_index, world_size=num_processes)
        self.dataset = dataset.shuffle(seed=seed, buffer_size=buffer_size)
        self.example_fn = example_fn
        self.start_step = start_step
        self.max_steps = max_steps
        self.accumulation_steps = accumulation_steps

    def _rows(self) -> Iterator[dict[str, Any]]:
        epoch = 0
        while True:
            self.dataset.set_epoch(epoch)
            empty = True
            for row in self.dataset:
                empty = False
                yield row
            if empty:
                raise DataError("the streamed dataset shard of this process is empty")
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        b = self.positions_of.micro_batch_size
        rows = self._rows()
        for _ in range(self.start_step * self.accumulation_steps * b):
            next(rows)
        for step in range(self.start_step, self.max_steps):
            for micro in range(self.accumulation_steps):
                examples = [self.example_fn(next(rows), q) for q in self.positions_of.positions(step, micro)]
                yield torch.utils.data.default_collate(examples)

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step) * self.accumulation_steps


def collate(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of examples into a batch (``torch`` default collation)."""
    return torch.utils.data.default_collate(list(examples))
