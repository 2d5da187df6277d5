"""Sample N images from a SiTPipeline across processes for FID-50K, resumably; write PNGs, the ADM ``.npz`` and
(optionally) FID / IS / precision / recall.

    accelerate launch training/sample_fid.py --pipeline sit-diffusers/SiT-XL-2-256 --preset paper-fid \\
        --guidance-scale 1.5 --guidance-channels 3 --num-samples 50000 --out samples/SiT-XL-2-256
    python training/sample_fid.py --pipeline ./my-pipeline --num-samples 1000 --out samples/mine \\
        --reference ref.npz --extractor digits

Determinism (the official ``sample_ddp.py`` seeds per process, so its images depend on the GPU count; here
they do not):

* image ``i`` has class ``labels[i]`` (drawn once from ``--seed``, or ``i mod num_classes`` with
  ``--labels balanced``) and its own generator seeded from ``(seed, i)`` for its noise and Brownian
  increments;
* images are cut into fixed batches ``[b * B, (b + 1) * B)`` and batch ``b`` runs on process ``b mod P``: a
  batch has the same content whatever ``P``, so the pixels are identical for any number of processes.

Resume: ``<out>/samples/NNNNNN.png`` is written atomically (temp file + rename) and a batch is skipped when
all its PNGs exist; a batch cut short is sampled again whole (same pixels). ``<out>/run.json`` records the
settings, and a resume with different ones is refused. When every PNG exists, the main process writes
``<out>/samples.npz`` (``arr_0``: uint8 ``(N, H, W, 3)``, grey images repeated to RGB) from the PNGs in
index order, and with ``--reference`` ``<out>/metrics.json`` (``sit_diffusers.fid``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger("sample_fid")

SAMPLES_DIR = "samples"
RUN_FILE = "run.json"
NPZ_FILE = "samples.npz"
METRICS_FILE = "metrics.json"


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SampleConfig:
    """Settings of one sampling run (``--flag`` per field)."""

    pipeline: str = field(metadata={"help": "SiTPipeline folder or Hub repo id"})
    out: str = field(metadata={"help": "output folder (samples/, run.json, samples.npz, metrics.json)"})
    num_samples: int = _opt(50_000, "number of images")
    batch_size: int = _opt(32, "images per batch and process (part of the settings: fixes the batches)")
    seed: int = _opt(0, "global seed: labels and the per-image generators derive from it")
    labels: Literal["random", "balanced"] = _opt("random", "random classes (seeded) or i mod num_classes")
    preset: str | None = _opt(None, "SAMPLER_PRESETS name; default: the pipeline's saved sampler")
    num_inference_steps: int | None = _opt(None, "sampler steps; default: the preset's / pipeline's")
    guidance_scale: float = _opt(1.0, "classifier-free guidance scale (1: off)")
    guidance_channels: str = _opt("all", "'all' or k: guide channels [0, k) (3 = official forward_with_cfg)")
    dtype: Literal["float32", "bfloat16", "float16"] = _opt("float32", "dtype of the transformer and VAE")
    reference: str | None = _opt(None, "ADM .npz of real images: compute FID / IS / precision / recall")
    extractor: Literal["inception", "digits"] = _opt("inception", "feature extractor of the metrics")
    inception_weights: str | None = _opt(None, "FID Inception file (TorchScript .pt or .pkl), docs/fid.md")
    num_threads: int | None = _opt(None, "torch CPU threads per process (fix it for bitwise reproducibility)")
    batch_delay: float = _opt(0.0, "seconds to wait after each batch (lets tests interrupt a run)")

    def sampling_settings(self) -> dict[str, Any]:
        """What determines the pixels; a resume must match it exactly."""
        keys = ("pipeline", "num_samples", "batch_size", "seed", "labels", "preset", "num_inference_steps",
                "guidance_scale", "guidance_channels", "dtype")
        return {k: getattr(self, k) for k in keys}


def parse_args(argv: list[str] | None = None) -> SampleConfig:
    """``--flag`` per :class:`SampleConfig` field, typed from its annotation (``Literal`` -> choices)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    hints = get_type_hints(SampleConfig)
    for f in fields(SampleConfig):
        hint = hints[f.name]
        args = [a for a in get_args(hint) if a is not type(None)]
        kwargs: dict[str, Any] = {"help": f.metadata.get("help")}
        if get_origin(hint) is Literal:
            kwargs["choices"] = list(args)
        else:
            kwargs["type"] = args[0] if args else hint  # X | None -> X
        if f.default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)
    cfg = SampleConfig(**vars(parser.parse_args(argv)))
    if cfg.guidance_channels != "all" and not cfg.guidance_channels.isdigit():
        parser.error(f"--guidance-channels must be 'all' or a positive integer, got {cfg.guidance_channels!r}")
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        parser.error("--num-samples and --batch-size must be positive")
    return cfg


# ===========================================================================
# Seeds, labels, batches, files
# ===========================================================================


def image_seed(seed: int, index: int) -> int:
    """The generator seed of image ``index``: a SeedSequence hash of ``(seed, index)`` (no overlap between
    runs of neighbouring ``seed``s, unlike ``seed + index``)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


def class_labels(cfg: SampleConfig, num_classes: int) -> list[int]:
    """One class per image, the same list in every process."""
    if cfg.labels == "balanced":
        return [i % num_classes for i in range(cfg.num_samples)]
    g = torch.Generator().manual_seed(cfg.seed)
    return torch.randint(num_classes, (cfg.num_samples,), generator=g).tolist()


def batch_ranges(num_samples: int, batch_size: int) -> list[range]:
    """Fixed batches ``[b * B, min((b + 1) * B, N))``."""
    return [range(s, min(s + batch_size, num_samples)) for s in range(0, num_samples, batch_size)]


def png_path(folder: Path, index: int) -> Path:
    return folder / f"{index:06d}.png"


def write_png(path: Path, image: np.ndarray) -> None:
    """Save ``image`` uint8 ``(H, W, 3)`` or ``(H, W, 1)`` atomically: a temp file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    pil.save(tmp, format="PNG")
    os.replace(tmp, path)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """``[0, 1]`` float ``(N, H, W, C)`` -> uint8 by ``floor(255 x + 0.5)``, which is the official
    ``clamp(127.5 y + 128, 0, 255).to(uint8)`` for ``y = 2 x - 1`` in [-1, 1]."""
    return np.clip(np.floor(np.asarray(images, dtype=np.float64) * 255.0 + 0.5), 0, 255).astype(np.uint8)


def check_run_file(out: Path, cfg: SampleConfig) -> None:
    """Write ``run.json`` on the first run; refuse to resume a folder sampled with other settings."""
    path = out / RUN_FILE
    settings = cfg.sampling_settings()
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != settings:
            diff = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
            raise SystemExit(
                f"{out} holds samples made with other settings (was, now): {diff}. Use another --out."
            )
    else:
        path.write_text(json.dumps(settings, indent=2) + "\n")


def remove_stale_temp_files(folder: Path) -> int:
    """Delete temp PNGs left by a killed run; returns how many."""
    stale = list(folder.glob(".*.png.tmp*"))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def assemble_npz(folder: Path, num_samples: int, out_path: Path) -> np.ndarray:
    """Read PNGs ``0 .. N-1`` in order into uint8 ``(N, H, W, 3)`` and save the ADM ``.npz``."""
    from sit_diffusers.fid import save_npz_images

    missing = [i for i in range(num_samples) if not png_path(folder, i).is_file()]
    if missing:
        raise RuntimeError(f"{len(missing)} images missing, e.g. {missing[:5]}: run the command again to resume")
    images = []
    for i in range(num_samples):
        with Image.open(png_path(folder, i)) as pil:
            images.append(np.asarray(pil.convert("RGB"), dtype=np.uint8))  # (H, W, 3)
    array = np.stack(images)  # (N, H, W, 3)
    save_npz_images(out_path, array)
    return array


# ===========================================================================
# Sampling and evaluation
# ===========================================================================


def load_pipeline(cfg: SampleConfig, device: torch.device):
    from sit_diffusers.pipeline_sit import SiTPipeline

    pipe = SiTPipeline.from_pretrained(cfg.pipeline)
    if cfg.preset is not None:
        pipe.set_sampler(cfg.preset)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    if cfg.dtype != "float32":
        pipe.to(dtype=getattr(torch, cfg.dtype))
    return pipe


def sample_batch(pipe, cfg: SampleConfig, indices: range, labels: list[int]) -> np.ndarray:
    """Images ``indices`` as uint8 ``(n, H, W, C)``: one generator per image, seeded by ``image_seed``."""
    generators = [torch.Generator().manual_seed(image_seed(cfg.seed, i)) for i in indices]
    channels: int | str = int(cfg.guidance_channels) if cfg.guidance_channels != "all" else "all"
    out = pipe(
        class_labels=[labels[i] for i in indices],
        guidance_scale=cfg.guidance_scale,
        guidance_channels=channels,
        num_inference_steps=cfg.num_inference_steps,
        generator=generators,
        output_type="np",
    )
    return to_uint8(out.images)  # (n, H, W, C)


def reference_extractor(cfg: SampleConfig):
    """The feature extractor for ``--reference``, built before sampling so that a missing file fails early."""
    from sit_diffusers.fid import make_extractor

    if not Path(cfg.reference).is_file():
        raise SystemExit(f"--reference {cfg.reference} does not exist")
    try:
        return make_extractor(cfg.extractor, cfg.inception_weights)
    except FileNotFoundError as err:
        raise SystemExit(f"--reference: {err}") from None


def evaluate(samples: np.ndarray, cfg: SampleConfig, extractor) -> dict[str, Any]:
    """FID / IS / precision / recall of ``samples`` against the ``--reference`` images."""
    from sit_diffusers.fid import compute_metrics, load_npz_images

    metrics = compute_metrics(samples, load_npz_images(cfg.reference), extractor)
    return {**metrics.as_dict(), "reference": cfg.reference}


def run(cfg: SampleConfig) -> dict[str, Any]:
    """Sample what is missing (this process's batches), then on the main process write the ``.npz`` and
    metrics. Returns ``{"generated": n_batches_this_process, "skipped": ..., "npz": path, "metrics": ...}``."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # PartialState (unlike Accelerator) does not read ACCELERATE_USE_CPU; without it CPU processes never join
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    out = Path(cfg.out)
    folder = out / SAMPLES_DIR
    extractor = None
    if state.is_main_process:
        if cfg.reference:
            extractor = reference_extractor(cfg)
        folder.mkdir(parents=True, exist_ok=True)
        check_run_file(out, cfg)
        removed = remove_stale_temp_files(folder)
        if removed:
            logger.info("removed %d unfinished PNGs of an interrupted run", removed)
    state.wait_for_everyone()

    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        with state.main_process_first():  # a Hub id is downloaded once, then read from the cache
            pipe = load_pipeline(cfg, state.device)
        labels = class_labels(cfg, pipe.num_classes)
        mine = [r for b, r in enumerate(batch_ranges(cfg.num_samples, cfg.batch_size))
                if b % state.num_processes == state.process_index]
        todo = [r for r in mine if not all(png_path(folder, i).is_file() for i in r)]
        logger.info("process %d/%d: %d batches to sample, %d already done",
                    state.process_index, state.num_processes, len(todo), len(mine) - len(todo))
        for indices in todo:
            images = sample_batch(pipe, cfg, indices, labels)  # (n, H, W, C)
            for i, image in zip(indices, images, strict=True):
                write_png(png_path(folder, i), image)
            if cfg.batch_delay:
                time.sleep(cfg.batch_delay)
    finally:
        torch.set_num_threads(threads)
    state.wait_for_everyone()

    result: dict[str, Any] = {"generated": len(todo), "skipped": len(mine) - len(todo)}
    if state.is_main_process:
        samples = assemble_npz(folder, cfg.num_samples, out / NPZ_FILE)
        result["npz"] = str(out / NPZ_FILE)
        logger.info("wrote %s %s", out / NPZ_FILE, samples.shape)
        if cfg.reference:
            metrics = evaluate(samples, cfg, extractor)
            (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
            result["metrics"] = metrics
            logger.info("metrics: %s", metrics)
    state.wait_for_everyone()
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    result = run(cfg)
    if "metrics" in result:
        print(json.dumps(result["metrics"], indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
