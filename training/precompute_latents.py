"""Precompute VAE latents for SiT training, across processes with Accelerate.

    accelerate launch training/precompute_latents.py --train_data_dir ./imagenet/train --output_dir ./latents
    accelerate launch training/train_sit.py --latents_dir ./latents ...

For every image the ADM center crop and its mirror image are encoded; the posterior moments
``[mean, logvar]`` of both are stored (``(N, 2, 2C, h, w)``, one ``.npy`` shard per process, rows in
dataset order), so training still draws a fresh posterior sample and a random flip per step, as the
official on-the-fly recipe does, with the VAE gone from the training step. The output folder appears only
when complete (written as ``<output_dir>.tmp`` and renamed); an existing folder is never overwritten.

Everything is checked before the first image is encoded: every value, the output folder, the VAE (loaded)
against ``--resolution``, the data source, its columns and every label against ``--num_classes`` (one pass
over the label column, no image decoded). Bad input exits 2 with one line naming the flag; NaN/inf
moments from the VAE exit 1 with the ``.tmp`` folder removed (nothing written).

REPA (``training/repa.py``): ``--repa_encoder ID_OR_FOLDER`` also stores the patch features of a frozen
``transformers`` vision encoder for the same two views (``shard-RRRRR-repa.npy``, ``(N, 2, T, D)``: the crop's,
then the mirror's, the mirror being exactly the image whose latents are stored as the mirror) and
``repa.json``; training reads them with ``training.repa.WithRepaFeatures`` under ``"repa_features"``, the
mirror's whenever the latents' mirror is drawn. ``--vae none --repa_encoder ...`` stores the features
alone (pixel-space training, e.g. the digits; images read with the encoder's channel count).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `training.*` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sit_diffusers.validation import (  # noqa: E402
    InputError,
    NonFiniteError,
    check_choice,
    check_finite_tensor,
    check_float,
    check_int,
    check_writable_dir,
    run_cli,
)
from training.config import ConfigError, parse_config  # noqa: E402
from training.data import (  # noqa: E402
    DataError,
    LatentsMeta,
    check_image_dataset,
    load_image_dataset,
    preprocess,
    undecoded_images,
)
from training.repa import RepaEncoder, RepaFeaturesMeta, repa_shard_file  # noqa: E402
from training.train_sit import _id2label_from_features, load_vae, vae_downsample  # noqa: E402

PROG = "precompute_latents.py"
DTYPES = ("float32", "float16")


def default_num_workers() -> int:
    """Data-loader workers by default: the machine's CPUs, at most 4."""
    return min(4, os.cpu_count() or 1)


def _opt(default: Any, help: str, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class PrecomputeConfig:
    """Precompute SiT training latents (crop and mirror) with a VAE. Checked on construction (the errors
    name the ``--flag``)."""

    output_dir: str = _opt("sit-latents", "new folder for the latents (must not exist; written as <dir>.tmp)")
    dataset_name: str | None = _opt("ILSVRC/imagenet-1k", "Hub dataset id (ignored with --train_data_dir)")
    dataset_config_name: str | None = _opt(None, "configuration of --dataset_name")
    dataset_split: str = _opt("train", "split of the dataset")
    train_data_dir: str | None = _opt(None, "local imagefolder (class_name/xxx.png); wins over --dataset_name")
    cache_dir: str | None = _opt(None, "datasets cache folder")
    image_column: str = _opt("image", "image column of the dataset")
    label_column: str = _opt("label", "class-id column of the dataset (integers in [0, num_classes))")
    num_classes: int = _opt(1000, "number of classes (>= 1): every label must be in [0, num_classes)")
    max_samples: int | None = _opt(None, "encode only the first N examples (>= 1; none: all)")
    resolution: int = _opt(256, "image side after the ADM center crop; a multiple of the VAE's factor")
    vae: str | None = _opt("stabilityai/sd-vae-ft-ema",
                           "AutoencoderKL: Hub id or local folder; none: no latents, only --repa_encoder features")
    vae_subfolder: str | None = _opt(None, "subfolder of --vae holding the AutoencoderKL")
    vae_scaling_factor: float = _opt(0.18215, "finite > 0; recorded in meta.json (training scales latents by it)")
    batch_size: int = _opt(64, "images per VAE call on each process (>= 1; each is encoded twice: crop, mirror)")
    dataloader_num_workers: int = _opt(None, "data-loader worker processes (>= 0; 0: in the main process); min(4, CPUs)",
                                       factory=default_num_workers)
    dtype: Literal["float32", "float16"] = _opt(
        "float16", "storage precision of the moments (float16 halves the size: ~42 GB for ImageNet-1k at 256 px)"
        " and of the REPA features"
    )
    repa_encoder: str | None = _opt(
        None, "REPA: also store this frozen transformers vision encoder's patch features (AutoModel: Hub id or "
        "folder, e.g. facebook/dinov2-base) of the crop and its mirror; none: no features")
    repa_encoder_dtype: Literal["float32", "bfloat16"] = _opt("float32", "precision the REPA encoder runs in")
    repa_image_size: int | None = _opt(
        None, "REPA encoder input side (a multiple of its patch size; none: its image processor's crop size, "
        "else its config's image_size)")

    def __post_init__(self) -> None:
        for name in ("output_dir", "dataset_split", "image_column", "label_column", "vae", "repa_encoder"):
            value = getattr(self, name)
            if value is None and name in ("vae", "repa_encoder"):
                continue
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"--{name} must be a non-empty string, got {value!r}")
        if self.train_data_dir is None and self.dataset_name is None:
            raise InputError("no data: give --train_data_dir (a local imagefolder) or --dataset_name (a Hub id)")
        check_int("--num_classes", self.num_classes, minimum=1)
        if self.max_samples is not None:
            check_int("--max_samples", self.max_samples, minimum=1)
        check_int("--resolution", self.resolution, minimum=1)
        self.vae_scaling_factor = check_float("--vae_scaling_factor", self.vae_scaling_factor, minimum=0.0,
                                              min_inclusive=False)
        check_int("--batch_size", self.batch_size, minimum=1)
        check_int("--dataloader_num_workers", self.dataloader_num_workers, minimum=0)
        check_choice("--dtype", self.dtype, DTYPES)
        check_choice("--repa_encoder_dtype", self.repa_encoder_dtype, ("float32", "bfloat16"))
        if self.repa_image_size is not None:
            if self.repa_encoder is None:
                raise InputError(f"--repa_image_size {self.repa_image_size} needs --repa_encoder")
            check_int("--repa_image_size", self.repa_image_size, minimum=1)
        if self.vae is None and self.repa_encoder is None:
            raise InputError("--vae none leaves nothing to compute: give a --vae, or --repa_encoder for features only")


class _Crops(torch.utils.data.Dataset):
    """Row ``i`` -> (ADM crop in [-1, 1] (C, S, S), label); C = 3 (VAE) or the REPA encoder's channels."""

    def __init__(self, dataset: Any, cfg: PrecomputeConfig, channels: int = 3) -> None:
        self.dataset, self.cfg, self.channels = dataset, cfg, channels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.dataset[index]
        pixels = preprocess(row[self.cfg.image_column], self.cfg.resolution, self.channels, flip=False)  # (C, S, S)
        return pixels, int(row[self.cfg.label_column])


# ---------------------------------------------------------------------------
# Checks at the door
# ---------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_output_dir(cfg: PrecomputeConfig) -> tuple[Path, Path]:
    """``--output_dir`` is new and can be created; returns it and its ``.tmp`` sibling."""
    out, tmp = Path(cfg.output_dir), Path(f"{cfg.output_dir}.tmp")
    if out.exists():
        raise ConfigError(f"--output_dir {cfg.output_dir!r} already exists; choose a new --output_dir "
                          "(nothing was overwritten)")
    check_writable_dir("--output_dir", out)
    if tmp.exists() and not tmp.is_dir():
        raise InputError(f"--output_dir {cfg.output_dir!r}: {str(tmp)!r} (its work folder) is a file")
    return out, tmp


def load_checked_vae(cfg: PrecomputeConfig, device: torch.device) -> tuple[Any, tuple[int, int, int] | None]:
    """The VAE (a clear error naming ``--vae`` when it cannot be loaded, e.g. offline and not cached) and
    the latent shape ``(C, h, w)`` of a ``--resolution`` image; ``(None, None)`` with ``--vae none``."""
    if cfg.vae is None:
        return None, None
    local = Path(cfg.vae).expanduser()
    if cfg.vae.startswith((".", "/", "~")) and not local.is_dir():
        raise InputError(f"--vae {cfg.vae!r} is not an existing folder (a local AutoencoderKL or a Hub id 'org/name')")
    if cfg.vae_subfolder and local.is_dir() and not (local / cfg.vae_subfolder).is_dir():
        raise InputError(f"--vae_subfolder {cfg.vae_subfolder!r} is not a folder of --vae {cfg.vae!r}")
    try:
        vae = load_vae(cfg.vae, cfg.vae_subfolder, device)
    except Exception as err:  # diffusers raises OSError, ValueError, EnvironmentError, ... for a bad reference
        cause = err.__cause__ or err
        sub = f" (--vae_subfolder {cfg.vae_subfolder!r})" if cfg.vae_subfolder else ""
        raise InputError(f"--vae {cfg.vae!r}{sub} could not be loaded as an AutoencoderKL (offline and not "
                         f"cached, misspelled, or not a VAE folder): {_first_line(cause)}") from err
    factor = vae_downsample(vae.config)
    if cfg.resolution % factor:
        raise ConfigError(f"--resolution {cfg.resolution} is not divisible by {factor}, the downsampling factor "
                          f"of --vae {cfg.vae!r}")
    side = cfg.resolution // factor
    return vae, (vae.config.latent_channels, side, side)


def load_checked_encoder(cfg: PrecomputeConfig, device: torch.device) -> RepaEncoder | None:
    """The frozen REPA encoder of ``--repa_encoder`` (None without it); errors name the flag. With a VAE the
    images are RGB, so a 1-channel encoder is refused."""
    if cfg.repa_encoder is None:
        return None
    encoder = RepaEncoder.from_pretrained(cfg.repa_encoder, dtype=cfg.repa_encoder_dtype, device=device,
                                          image_size=cfg.repa_image_size, flag="--repa_encoder")
    if cfg.vae is not None and encoder.num_channels != 3:
        raise InputError(f"--repa_encoder {cfg.repa_encoder!r} takes {encoder.num_channels}-channel images; the "
                         f"VAE's images are RGB (use a 3-channel encoder, or --vae none for features only)")
    return encoder


def load_checked_dataset(cfg: PrecomputeConfig) -> Any:
    """The configured data source, loaded; errors name the flag of the source."""
    if cfg.train_data_dir is not None:
        flag, source = "--train_data_dir", cfg.train_data_dir
        if not Path(source).is_dir():
            raise DataError(f"--train_data_dir {source!r} is not a folder")
    else:
        flag, source = "--dataset_name", cfg.dataset_name
    try:
        dataset = load_image_dataset(cfg.dataset_name, cfg.train_data_dir,
                                     dataset_config_name=cfg.dataset_config_name, split=cfg.dataset_split,
                                     cache_dir=cfg.cache_dir)
        return undecoded_images(dataset, cfg.image_column)  # PIL decodes, without EXIF rotation (official)
    except DataError as err:
        raise DataError(f"{flag} {source!r} (--dataset_split {cfg.dataset_split!r}): {_first_line(err)}") from err


def check_dataset(dataset: Any, cfg: PrecomputeConfig) -> None:
    """Columns present (named by their flag), not empty, first image decodes, every label in
    ``[0, --num_classes)`` (``check_image_dataset``: the ``ClassLabel`` feature, else a scan of the label
    column)."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        for flag, name in (("--image_column", cfg.image_column), ("--label_column", cfg.label_column)):
            if name not in columns:
                raise DataError(f"{flag} {name!r} is not a column of the dataset; its columns are {list(columns)}")
    check_image_dataset(dataset, cfg.image_column, cfg.label_column, cfg.num_classes)


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def precompute(cfg: PrecomputeConfig, dataset: Any | None = None) -> Path:
    """Encode the dataset (``dataset`` in-process, else the configured source) into ``cfg.output_dir``.

    Raises :class:`InputError` / ``ConfigError`` / ``DataError`` before any file is written when an input is
    unusable, and :class:`NonFiniteError` (with the ``.tmp`` folder removed) when the VAE gives NaN/inf."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    out, tmp = check_output_dir(cfg)
    vae, latent_shape = load_checked_vae(cfg, accelerator.device)
    encoder = load_checked_encoder(cfg, accelerator.device)
    if dataset is None:
        dataset = load_checked_dataset(cfg)
    if cfg.max_samples is not None:
        dataset = dataset.select(range(min(cfg.max_samples, len(dataset))))
    check_dataset(dataset, cfg)

    # Contiguous shards in dataset order: concatenating shards 0..P-1 gives rows 0..N-1.
    n, p, r = len(dataset), accelerator.num_processes, accelerator.process_index
    lo, hi = r * n // p, (r + 1) * n // p
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        _encode_shard(cfg, vae, dataset, tmp, r, lo, hi, latent_shape, accelerator, encoder)
    except NonFiniteError:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing of a run with NaN/inf latents or features is kept
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shards = tuple(f"shard-{i:05d}" for i in range(p))
        if vae is not None:
            LatentsMeta(
                num_examples=n, latent_shape=latent_shape, resolution=cfg.resolution, vae=cfg.vae,
                vae_scaling_factor=cfg.vae_scaling_factor, dtype=cfg.dtype, shards=shards,
                id2label=_id2label_from_features(dataset, cfg.label_column),
            ).write(tmp)
        if encoder is not None:
            RepaFeaturesMeta(
                encoder=cfg.repa_encoder, image_size=encoder.image_size, grid=encoder.grid,
                dim=encoder.hidden_size, dtype=cfg.dtype, num_examples=n, shards=shards,
                resolution=cfg.resolution, image_channels=3 if vae is not None else encoder.num_channels,
            ).write(tmp)
        tmp.rename(out)
    accelerator.wait_for_everyone()
    return out


def _store(rows: str, values: torch.Tensor, dtype: str) -> np.ndarray:
    """``values`` in the storage ``dtype``; an overflow is reported by name (NonFiniteError)."""
    with np.errstate(over="ignore"):  # an overflow is reported below, by name
        stored = values.float().cpu().numpy().astype(dtype)
    check_finite_tensor(f"{rows} in {dtype}", torch.from_numpy(stored),
                        "they overflow the storage dtype: use --dtype float32")
    return stored


def _encode_shard(cfg: PrecomputeConfig, vae: Any, dataset: Any, tmp: Path, rank: int, lo: int, hi: int,
                  latent_shape: tuple[int, int, int] | None, accelerator: Any,
                  encoder: RepaEncoder | None = None) -> None:
    """Rows ``[lo, hi)`` -> ``shard-RRRRR-moments.npy`` ``(hi - lo, 2, 2C, h, w)`` (with a VAE),
    ``shard-RRRRR-repa.npy`` ``(hi - lo, 2, T, D)`` (with a REPA encoder) and ``-labels.npy``; index 1 of
    axis 1 is the mirror image ``pixels.flip(-1)`` for both."""
    from tqdm.auto import tqdm

    shard = f"shard-{rank:05d}"
    moments_file = features_file = None
    if vae is not None:
        c, h, w = latent_shape
        moments_file = np.lib.format.open_memmap(tmp / f"{shard}-moments.npy", mode="w+",
                                                 dtype=np.dtype(cfg.dtype), shape=(hi - lo, 2, 2 * c, h, w))
    if encoder is not None:
        tokens = encoder.grid[0] * encoder.grid[1]
        features_file = np.lib.format.open_memmap(tmp / repa_shard_file(shard), mode="w+", dtype=np.dtype(cfg.dtype),
                                                  shape=(hi - lo, 2, tokens, encoder.hidden_size))
    labels = np.zeros(hi - lo, dtype=np.int64)
    channels = 3 if vae is not None else encoder.num_channels
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(_Crops(dataset, cfg, channels), range(lo, hi)),
                                         batch_size=cfg.batch_size, num_workers=cfg.dataloader_num_workers)
    start = 0
    with torch.no_grad():
        for pixels, y in tqdm(loader, disable=not accelerator.is_local_main_process, desc="encoding"):
            pixels = pixels.to(accelerator.device)  # (b, C, S, S)
            both = torch.cat([pixels, pixels.flip(-1)])  # (2b, C, S, S): crops, then mirrors
            b = pixels.shape[0]
            if vae is not None:
                params = vae.encode(both).latent_dist.parameters  # (2b, 2C, h, w)
                rows = f"VAE moments of rows {lo + start}..{lo + start + b - 1}"
                check_finite_tensor(rows, params, f"--vae {cfg.vae!r} gives NaN/inf on these images")
                stacked = torch.stack([params[:b], params[b:]], dim=1)  # (b, 2, 2C, h, w)
                moments_file[start:start + b] = _store(rows, stacked, cfg.dtype)
            if encoder is not None:
                feats = encoder(both)  # (2b, T, D)
                rows = f"REPA features of rows {lo + start}..{lo + start + b - 1}"
                check_finite_tensor(rows, feats, f"--repa_encoder {cfg.repa_encoder!r} gives NaN/inf on these images")
                stacked = torch.stack([feats[:b], feats[b:]], dim=1)  # (b, 2, T, D)
                features_file[start:start + b] = _store(rows, stacked, cfg.dtype)
            labels[start:start + b] = y.numpy()
            start += b
    for memmap in (moments_file, features_file):
        if memmap is not None:
            memmap.flush()
    del moments_file, features_file
    np.save(tmp / f"{shard}-labels.npy", labels)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``--help`` of the command line: every :class:`PrecomputeConfig` field with its help and default
    (values are converted and checked by ``training.config.parse_config`` and the dataclass)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of the fields below (default: none)")
    for f in fields(PrecomputeConfig):
        default = f.default_factory() if f.default is MISSING else f.default
        shown = "none" if default is None else default
        parser.add_argument(f"--{f.name}", metavar=f.name.upper(),
                            help=f"{f.metadata['help']} (default: {shown})")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (default: off)")
    return parser


def _cli(argv: Sequence[str]) -> int:
    args = list(argv)
    if "-h" in args or "--help" in args:
        build_parser().print_help()
        return 0
    precompute(parse_config([a for a in args if a != "--debug"], cls=PrecomputeConfig))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: ``--flag value`` overrides of :class:`PrecomputeConfig` (or ``--config file.yaml``).
    Returns 0, 2 for bad input (one line on stderr), 1 for NaN/inf latents."""
    return run_cli(PROG, _cli, argv, user_errors=(ConfigError, DataError))


if __name__ == "__main__":
    sys.exit(main())
