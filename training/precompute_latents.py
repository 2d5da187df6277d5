"""Precompute VAE latents for SiT training, across processes with Accelerate.

    accelerate launch training/precompute_latents.py --train_data_dir ./imagenet/train --output_dir ./latents
    accelerate launch training/train_sit.py --latents_dir ./latents ...

For every image the ADM center crop and its mirror image are encoded; the posterior moments
``[mean, logvar]`` of both are stored (``(N, 2, 2C, h, w)``, one ``.npy`` shard per process, rows in
dataset order), so training still draws a fresh posterior sample and a random flip per step, as the
official on-the-fly recipe does, with the VAE gone from the training step. The output folder appears only
when complete (written as ``<output_dir>.tmp`` and renamed); an existing folder is never overwritten.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `training.*` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import ConfigError, parse_config  # noqa: E402
from training.data import DataError, LatentsMeta, check_image_dataset, load_image_dataset, preprocess  # noqa: E402
from training.train_sit import _id2label_from_features, load_vae, vae_downsample  # noqa: E402


@dataclass
class PrecomputeConfig:
    """Precompute SiT training latents (crop and mirror) with a VAE."""

    output_dir: str = "sit-latents"
    dataset_name: str | None = "ILSVRC/imagenet-1k"
    dataset_config_name: str | None = None
    dataset_split: str = "train"
    train_data_dir: str | None = None
    cache_dir: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    num_classes: int = 1000
    max_samples: int | None = None
    resolution: int = 256
    vae: str = "stabilityai/sd-vae-ft-ema"
    vae_subfolder: str | None = None
    vae_scaling_factor: float = 0.18215
    """Recorded in ``meta.json`` (training applies it to the sampled latents)."""
    batch_size: int = 64
    """Images per VAE call on each process (each is encoded twice: crop and mirror)."""
    dataloader_num_workers: int = 4
    dtype: Literal["float32", "float16"] = "float16"
    """Storage precision of the moments (float16 halves the size: ~42 GB for ImageNet-1k at 256 px)."""


class _Crops(torch.utils.data.Dataset):
    """Row ``i`` -> (ADM crop in [-1, 1] (3, S, S), label)."""

    def __init__(self, dataset: Any, cfg: PrecomputeConfig) -> None:
        self.dataset, self.cfg = dataset, cfg

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.dataset[index]
        pixels = preprocess(row[self.cfg.image_column], self.cfg.resolution, 3, flip=False)  # (3, S, S)
        return pixels, int(row[self.cfg.label_column])


def precompute(cfg: PrecomputeConfig, dataset: Any | None = None) -> Path:
    """Encode the dataset (``dataset`` in-process, else the configured source) into ``cfg.output_dir``."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    out = Path(cfg.output_dir)
    tmp = Path(f"{cfg.output_dir}.tmp")
    if out.exists():
        raise ConfigError(f"{out} already exists; choose a new output_dir (nothing was overwritten)")
    if dataset is None:
        dataset = load_image_dataset(cfg.dataset_name, cfg.train_data_dir, dataset_config_name=cfg.dataset_config_name,
                                     split=cfg.dataset_split, cache_dir=cfg.cache_dir)
    if cfg.max_samples is not None:
        dataset = dataset.select(range(min(cfg.max_samples, len(dataset))))
    check_image_dataset(dataset, cfg.image_column, cfg.label_column, cfg.num_classes)
    vae = load_vae(cfg.vae, cfg.vae_subfolder, accelerator.device)
    factor = vae_downsample(vae.config)
    if cfg.resolution % factor:
        raise ConfigError(f"resolution {cfg.resolution} is not divisible by the VAE factor {factor}")
    latent_shape = (vae.config.latent_channels, cfg.resolution // factor, cfg.resolution // factor)

    # Contiguous shards in dataset order: concatenating shards 0..P-1 gives rows 0..N-1.
    n, p, r = len(dataset), accelerator.num_processes, accelerator.process_index
    lo, hi = r * n // p, (r + 1) * n // p
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    shard = f"shard-{r:05d}"
    c, h, w = latent_shape
    moments_file = np.lib.format.open_memmap(tmp / f"{shard}-moments.npy", mode="w+", dtype=np.dtype(cfg.dtype),
                                             shape=(hi - lo, 2, 2 * c, h, w))
    labels = np.zeros(hi - lo, dtype=np.int64)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(_Crops(dataset, cfg), range(lo, hi)),
                                         batch_size=cfg.batch_size, num_workers=cfg.dataloader_num_workers)
    from tqdm.auto import tqdm

    start = 0
    with torch.no_grad():
        for pixels, y in tqdm(loader, disable=not accelerator.is_local_main_process, desc="encoding"):
            pixels = pixels.to(accelerator.device)  # (b, 3, S, S)
            both = torch.cat([pixels, pixels.flip(-1)])  # (2b, 3, S, S): crops, then mirrors
            params = vae.encode(both).latent_dist.parameters  # (2b, 2C, h, w)
            b = pixels.shape[0]
            stacked = torch.stack([params[:b], params[b:]], dim=1)  # (b, 2, 2C, h, w)
            moments_file[start:start + b] = stacked.float().cpu().numpy().astype(cfg.dtype)
            labels[start:start + b] = y.numpy()
            start += b
    moments_file.flush()
    del moments_file
    np.save(tmp / f"{shard}-labels.npy", labels)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        LatentsMeta(
            num_examples=n, latent_shape=latent_shape, resolution=cfg.resolution, vae=cfg.vae,
            vae_scaling_factor=cfg.vae_scaling_factor, dtype=cfg.dtype,
            shards=tuple(f"shard-{i:05d}" for i in range(p)),
            id2label=_id2label_from_features(dataset, cfg.label_column),
        ).write(tmp)
        tmp.rename(out)
    accelerator.wait_for_everyone()
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry: ``--flag value`` overrides of :class:`PrecomputeConfig` (or ``--config file.yaml``)."""
    try:
        precompute(parse_config(argv, cls=PrecomputeConfig))
    except (ConfigError, DataError) as err:
        print(f"precompute_latents.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
