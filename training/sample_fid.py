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

Checks at the door: every flag, the pipeline, the ``--reference`` file (its ``arr_0`` header) and the
Inception weights are checked before the first image is sampled; a bad one exits 2 with one line.

Resume: ``<out>/samples/NNNNNN.png`` is written atomically (temp file + rename) and a batch is skipped when
all its PNGs exist and decode to the right size; a batch cut short, or with a corrupt or wrong-size PNG
(logged with its path), is sampled again whole (same pixels). ``<out>/run.json`` identifies the run by
content: the sha256 of the transformer's and VAE's configs and weights, the full scheduler config and the
sampling settings. It is written with the first batch's PNGs, so a run that fails before that locks
nothing; a resume over existing PNGs with other weights or settings is refused (the ``.npz`` never mixes
two models). NaN/inf images stop the run with exit status 1 before anything of their batch is written.
When every PNG exists, the main process writes ``<out>/samples.npz`` (``arr_0``: uint8 ``(N, H, W, 3)``,
grey images repeated to RGB) from the PNGs in index order, and with ``--reference`` ``<out>/metrics.json``
(``sit_diffusers.fid``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import numpy as np
import torch
from PIL import Image

from sit_diffusers.atomic import write_file_atomically
from sit_diffusers.validation import (
    CLIParser,
    InputError,
    NonFiniteError,
    check_choice,
    check_finite_tensor,
    check_float,
    check_int,
    check_seed,
    check_writable_dir,
    run_cli,
)

logger = logging.getLogger("sample_fid")

PROG = "sample_fid.py"
SAMPLES_DIR = "samples"
RUN_FILE = "run.json"
NPZ_FILE = "samples.npz"
METRICS_FILE = "metrics.json"
RUN_FILE_FORMAT = 2
"""Version of ``run.json``: 2 identifies a run by a hash of the weights (1 recorded the pipeline path)."""
DIGITS_SIZE = (28, 28)
"""Image size the ``digits`` extractor takes."""


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _sampler_presets() -> dict[str, Any]:
    from sit_diffusers.scheduling_sit import SAMPLER_PRESETS

    return SAMPLER_PRESETS


@dataclass(frozen=True)
class SampleConfig:
    """Settings of one sampling run (``--flag`` per field); checked on construction (:class:`InputError`,
    naming the flag)."""

    pipeline: str = field(metadata={"help": "SiTPipeline folder or Hub repo id"})
    out: str = field(metadata={"help": "output folder (samples/, run.json, samples.npz, metrics.json)"})
    num_samples: int = _opt(50_000, "number of images (>= 1)")
    batch_size: int = _opt(32, "images per batch and process (>= 1; part of the settings: fixes the batches)")
    seed: int = _opt(0, "global seed in [0, 2**64): labels and the per-image generators derive from it")
    labels: Literal["random", "balanced"] = _opt("random", "random classes (seeded) or i mod num_classes")
    preset: str | None = _opt(None, "SAMPLER_PRESETS name; default: the pipeline's saved sampler")
    num_inference_steps: int | None = _opt(None, "sampler steps (>= 1); default: the preset's / pipeline's")
    guidance_scale: float = _opt(1.0, "classifier-free guidance scale, finite >= 0 (1: off)")
    guidance_channels: str = _opt("default", "'all' or k >= 1: guide channels [0, k) (3 = official forward_with_cfg); "
                                  "'default': the pipeline's saved default_guidance_channels (3 for converted "
                                  "official checkpoints), else all")
    dtype: Literal["float32", "bfloat16", "float16"] = _opt("float32", "dtype of the transformer and VAE")
    reference: str | None = _opt(None, "ADM .npz of real images: compute FID / IS / precision / recall")
    extractor: Literal["inception", "digits"] = _opt("inception", "feature extractor of the metrics")
    inception_weights: str | None = _opt(
        None, "FID Inception file (TorchScript .pt or .pkl), default $SIT_FID_INCEPTION; docs/fid.md"
    )
    num_threads: int | None = _opt(None, "torch CPU threads per process, >= 1 (fix it for bitwise reproducibility)")
    batch_delay: float = _opt(0.0, "seconds (>= 0) to wait after each batch (lets tests interrupt a run)")

    def __post_init__(self) -> None:
        for name in ("pipeline", "out"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{_flag(name)} must be a non-empty path or repo id, got {value!r}")
        check_int("--num-samples", self.num_samples, minimum=1)
        check_int("--batch-size", self.batch_size, minimum=1)
        check_seed("--seed", self.seed)
        check_choice("--labels", self.labels, get_args(get_type_hints(SampleConfig)["labels"]))
        if self.preset is not None:
            check_choice("--preset", self.preset, _sampler_presets())
        if self.num_inference_steps is not None:
            check_int("--num-inference-steps", self.num_inference_steps, minimum=1)
        object.__setattr__(self, "guidance_scale", check_float("--guidance-scale", self.guidance_scale, minimum=0.0))
        object.__setattr__(self, "guidance_channels", _check_guidance_channels(self.guidance_channels))
        check_choice("--dtype", self.dtype, ("float32", "bfloat16", "float16"))
        check_choice("--extractor", self.extractor, ("inception", "digits"))
        if self.num_threads is not None:
            check_int("--num-threads", self.num_threads, minimum=1)
        object.__setattr__(self, "batch_delay", check_float("--batch-delay", self.batch_delay, minimum=0.0))

    @property
    def channels(self) -> int | Literal["all"] | None:
        """``guidance_channels`` as the pipeline takes it (``None``: the pipeline's saved default)."""
        if self.guidance_channels == "default":
            return None
        return "all" if self.guidance_channels == "all" else int(self.guidance_channels)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_guidance_channels(value: Any) -> str:
    """``'default'``, ``'all'`` or a positive integer (given as int or digit string), as a string."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text in ("all", "default") or (text is not None and text.isdigit() and int(text) >= 1):
        return text if text in ("all", "default") else str(int(text))
    raise InputError(f"--guidance-channels must be 'default', 'all' or an integer >= 1, got {value!r}")



def build_parser() -> argparse.ArgumentParser:
    """``--flag`` per :class:`SampleConfig` field, typed from its annotation (``Literal`` -> choices)."""
    parser = CLIParser(prog=PROG, description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
            kwargs.update(required=True, default=argparse.SUPPRESS, help=f"{kwargs['help']} (required)")
        else:
            kwargs["default"] = f.default
        parser.add_argument(_flag(f.name), dest=f.name, **kwargs)
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> SampleConfig:
    """The checked :class:`SampleConfig` of ``argv``; a bad flag or value raises :class:`InputError`."""
    values = vars(build_parser().parse_args(argv))
    values.pop("debug")
    return SampleConfig(**values)


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
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    write_file_atomically(path, lambda tmp: pil.save(tmp, format="PNG"))


def png_problem(path: Path, geometry: tuple[int, int, int]) -> str | None:
    """Why the PNG at ``path`` is not a finished image of ``geometry`` ``(H, W, C)`` (``None``: it is).

    It must decode completely (a torn or overwritten file fails here), be ``W x H`` and grey (``C = 1``) or
    RGB (``C = 3``)."""
    height, width, channels = geometry
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as pil:
            if pil.format != "PNG":
                return f"not a PNG ({pil.format})"
            if pil.size != (width, height):
                return f"{pil.size[0]} x {pil.size[1]} pixels, expected {width} x {height}"
            if pil.mode != mode:
                return f"mode {pil.mode}, expected {mode}"
            pil.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        return f"unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    return None


def batch_is_done(folder: Path, indices: range, geometry: tuple[int, int, int]) -> bool:
    """Every PNG of the batch exists and is sound; a bad one is logged with its path (and then sampled again
    with its whole batch: same pixels as an uninterrupted run)."""
    for i in indices:
        path = png_path(folder, i)
        if not path.is_file():
            return False
        problem = png_problem(path, geometry)
        if problem is not None:
            logger.warning("corrupt sample %s: %s; sampling its batch %d..%d again",
                           path, problem, indices.start, indices.stop - 1)
            return False
    return True


def to_uint8(images: np.ndarray) -> np.ndarray:
    """``[0, 1]`` float ``(N, H, W, C)`` -> uint8 by ``floor(255 x + 0.5)``, which is the official
    ``clamp(127.5 y + 128, 0, 255).to(uint8)`` for ``y = 2 x - 1`` in [-1, 1]."""
    return np.clip(np.floor(np.asarray(images, dtype=np.float64) * 255.0 + 0.5), 0, 255).astype(np.uint8)


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
# Checks at the door: files, the pipeline, the run identity
# ===========================================================================


def check_reference(cfg: SampleConfig) -> tuple[int, int, int, int] | None:
    """``--reference``: a readable ADM ``.npz`` whose ``arr_0`` is uint8 ``(N, H, W, 3 or 1)`` with enough
    images for the metrics (28 x 28 for ``--extractor digits``), from its header only; its shape."""
    if cfg.reference is None:
        return None
    from sit_diffusers.fid import DIGIT_SIZE, PR_NEIGHBOURS, check_npz_images

    size = DIGIT_SIZE if cfg.extractor == "digits" else None
    return check_npz_images(cfg.reference, name="--reference", min_count=PR_NEIGHBOURS + 1, size=size)


def inception_weights_path(cfg: SampleConfig) -> str | None:
    """The Inception file the metrics will use (``--inception-weights`` or ``$SIT_FID_INCEPTION``), checked
    to exist; ``None`` when no Inception is needed."""
    if cfg.reference is None or cfg.extractor != "inception":
        return None
    weights = cfg.inception_weights or os.environ.get("SIT_FID_INCEPTION")
    if not weights:
        raise InputError("--reference with --extractor inception needs the FID Inception file: pass "
                         "--inception-weights PATH or set SIT_FID_INCEPTION (docs/fid.md), or use --extractor digits")
    where = "--inception-weights" if cfg.inception_weights else "SIT_FID_INCEPTION"
    if not Path(weights).is_file():
        raise InputError(f"{where} {weights!r} does not exist; see docs/fid.md for the file and where to get it")
    if not os.access(weights, os.R_OK):
        raise InputError(f"{where} {weights!r} is not readable")
    return weights


def check_files(cfg: SampleConfig) -> tuple[int, int, int, int] | None:
    """Everything on disk that can be checked before the pipeline loads; returns the reference's shape."""
    check_writable_dir("--out", cfg.out)
    shape = check_reference(cfg)
    inception_weights_path(cfg)
    if cfg.pipeline and Path(cfg.pipeline).expanduser().is_file():
        raise InputError(f"--pipeline {cfg.pipeline!r} is a file; pass a saved pipeline folder or a Hub repo id")
    return shape


def check_enough_samples(cfg: SampleConfig) -> None:
    """With ``--reference``: enough samples for the metrics (a covariance, the k-th nearest neighbour)."""
    from sit_diffusers.fid import PR_NEIGHBOURS

    if cfg.num_samples <= PR_NEIGHBOURS:
        raise InputError(f"--num-samples {cfg.num_samples} with --reference: the metrics need at least "
                         f"{PR_NEIGHBOURS + 1} images (precision / recall use the {PR_NEIGHBOURS}rd nearest neighbour)")


def load_pipeline(cfg: SampleConfig):
    """The pipeline on the CPU, as saved (float32), with ``--preset`` applied; a bad ``--pipeline`` raises
    :class:`InputError`."""
    from diffusers.utils import logging as diffusers_logging

    from sit_diffusers.hub import PipelineNotFoundError
    from sit_diffusers.pipeline_sit import SiTPipeline

    bar = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components" would garble a one-line error
    try:
        pipe = SiTPipeline.from_pretrained(cfg.pipeline)
    except (PipelineNotFoundError, OSError, ValueError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"--pipeline {cfg.pipeline!r} could not be loaded: {first}") from err
    finally:
        if bar:
            diffusers_logging.enable_progress_bar()
    if cfg.preset is not None:
        pipe.set_sampler(cfg.preset)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_geometry(pipe) -> tuple[int, int, int]:
    """``(H, W, C)`` of the pipeline's images: the transformer's latent size times the VAE's factor."""
    cfg = pipe.transformer.config
    if getattr(pipe, "vae", None) is None:
        return cfg.sample_size, cfg.sample_size, cfg.in_channels
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return cfg.sample_size * factor, cfg.sample_size * factor, pipe.vae.config.out_channels


def check_against_pipeline(cfg: SampleConfig, pipe, reference_shape: tuple[int, ...] | None) -> None:
    """The flags that depend on the model: guidance channels and null class, image size vs reference."""
    tcfg = pipe.transformer.config
    height, width, channels = image_geometry(pipe)
    if channels not in (1, 3):
        raise InputError(f"--pipeline {cfg.pipeline!r} makes {channels}-channel images; sample_fid.py writes "
                         "grey or RGB PNGs")
    if cfg.channels not in (None, "all") and cfg.channels > tcfg.in_channels:
        raise InputError(f"--guidance-channels {cfg.channels} exceeds the {tcfg.in_channels} channels of the "
                         f"transformer of --pipeline {cfg.pipeline!r}; use 1..{tcfg.in_channels} or 'all'")
    if cfg.guidance_scale != 1.0 and tcfg.class_dropout_prob <= 0:
        raise InputError(f"--guidance-scale {cfg.guidance_scale} needs the null class, but the transformer of "
                         f"--pipeline {cfg.pipeline!r} has none (class_dropout_prob=0); use --guidance-scale 1")
    if reference_shape is not None and tuple(reference_shape[1:3]) != (height, width):
        raise InputError(f"--reference {cfg.reference!r} holds {reference_shape[1]} x {reference_shape[2]} "
                         f"images but --pipeline {cfg.pipeline!r} makes {height} x {width} images")


def weights_sha256(pipe) -> str:
    """sha256 of the transformer's and VAE's configs (``_``-keys dropped) and state-dict tensors (key order,
    name, dtype, shape, raw bytes): what the pixels depend on besides the settings. One pass over the
    weights (5 s for SiT-XL/2 on one core of the shared 2-core CPU machine)."""
    digest = hashlib.sha256()
    for name in ("transformer", "vae"):
        module = getattr(pipe, name, None)
        if module is None:
            digest.update(f"{name}: none\n".encode())
            continue
        config = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}
        digest.update(f"{name}: {json.dumps(config, sort_keys=True, default=str)}\n".encode())
        for key, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{key} {t.dtype} {tuple(t.shape)}\n".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def resolved_steps(cfg: SampleConfig, pipe) -> int:
    """The step count the sampler will use: ``--num-inference-steps``, else the preset's / pipeline's."""
    from sit_diffusers.pipeline_sit import FALLBACK_NUM_INFERENCE_STEPS

    if cfg.num_inference_steps is not None:
        return cfg.num_inference_steps
    saved = pipe.config.default_num_inference_steps
    return FALLBACK_NUM_INFERENCE_STEPS if saved is None else int(saved)


def run_identity(cfg: SampleConfig, pipe) -> dict[str, Any]:
    """What determines the pixels (a resume must match it exactly): the weights' hash, the full scheduler
    config and the sampling settings. The pipeline's path is not part of it (a moved folder or a Hub cache
    is the same model)."""
    scheduler = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    identity = {
        "weights_sha256": weights_sha256(pipe),
        "num_classes": pipe.num_classes,
        "num_samples": cfg.num_samples,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "labels": cfg.labels,
        "preset": cfg.preset,
        "scheduler": scheduler,
        "num_inference_steps": resolved_steps(cfg, pipe),
        "guidance_scale": cfg.guidance_scale,
        "guidance_channels": (str(pipe.default_guidance_channels) if cfg.guidance_channels == "default"
                              else cfg.guidance_channels),  # what runs: a saved default is resolved
        "dtype": cfg.dtype,
    }
    return json.loads(json.dumps(identity, default=str))  # as it reads back from run.json (tuples -> lists)


def check_resume(out: Path, identity: dict[str, Any]) -> None:
    """Refuse to add samples to ``out`` when its PNGs were made by other weights or settings.

    A ``run.json`` with no PNG beside it locks nothing (its run failed before its first batch)."""
    folder, path = out / SAMPLES_DIR, out / RUN_FILE
    done = sum(1 for _ in folder.glob("*.png")) if folder.is_dir() else 0
    if done == 0:
        if path.is_file():
            logger.info("%s has no samples yet: its settings are replaced by this run's", path)
        return
    if not path.is_file():
        raise InputError(f"--out {str(out)!r} holds {done} PNGs but no {RUN_FILE}, so which model made them is "
                         "unknown; use another --out (or delete those samples)")
    try:
        previous = json.loads(path.read_text()).get("identity")
    except (OSError, ValueError, AttributeError) as err:
        raise InputError(f"--out {str(out)!r}: {path} is unreadable ({type(err).__name__}); use another --out") \
            from err
    if previous is None:
        raise InputError(f"--out {str(out)!r} holds {done} PNGs of an older sample_fid.py whose {RUN_FILE} has no "
                         "weights hash; use another --out")
    if previous == identity:
        return
    if previous.get("weights_sha256") != identity["weights_sha256"]:
        raise InputError(
            f"--out {str(out)!r} holds {done} PNGs of other weights (sha256 {previous.get('weights_sha256')} in "
            f"{RUN_FILE}, {identity['weights_sha256']} for --pipeline now); resuming would mix two models in "
            "one .npz: use another --out"
        )
    diff = "; ".join(f"{k}: {previous.get(k)!r} -> {v!r}" for k, v in identity.items() if previous.get(k) != v)
    raise InputError(f"--out {str(out)!r} holds {done} PNGs made with other settings (was -> now: {diff}); "
                     "use another --out, or the same settings to resume")


def write_run_file(out: Path, cfg: SampleConfig, identity: dict[str, Any]) -> None:
    """``run.json`` (atomically; every process writes the same content): the identity plus, for people, the
    pipeline as given."""
    record = {"format": RUN_FILE_FORMAT, "identity": identity, "pipeline": cfg.pipeline}
    write_file_atomically(out / RUN_FILE, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def reference_extractor(cfg: SampleConfig):
    """The feature extractor for ``--reference``, built before sampling so that a bad file fails early."""
    from sit_diffusers.fid import make_extractor

    weights = inception_weights_path(cfg)
    try:
        return make_extractor(cfg.extractor, weights)
    except Exception as err:  # torch.jit.load / pickle raise many types on a file that is not the model
        where = "--inception-weights" if cfg.inception_weights else "SIT_FID_INCEPTION"
        first = str(err).splitlines()[0] if str(err) else ""
        raise InputError(f"{where} {weights!r} could not be loaded ({type(err).__name__}: {first})") from err


# ===========================================================================
# Sampling and evaluation
# ===========================================================================


def sample_batch(pipe, cfg: SampleConfig, indices: range, labels: list[int], steps: int) -> np.ndarray:
    """Images ``indices`` as uint8 ``(n, H, W, C)``: one generator per image, seeded by ``image_seed``.

    Raises :class:`NonFiniteError` when the pipeline's images hold NaN/inf (nothing is written then)."""
    generators = [torch.Generator().manual_seed(image_seed(cfg.seed, i)) for i in indices]
    where = f"images {indices.start}..{indices.stop - 1}"
    try:
        out = pipe(
            class_labels=[labels[i] for i in indices],
            guidance_scale=cfg.guidance_scale,
            guidance_channels=cfg.channels,
            num_inference_steps=steps,
            generator=generators,
            output_type="np",
        )
    except NonFiniteError as err:
        raise NonFiniteError(f"{where}: {err}; nothing of this batch was written") from err
    images = np.asarray(out.images)  # (n, H, W, C) in [0, 1]
    check_finite_tensor(where, torch.from_numpy(images),
                        f"nothing of this batch was written (with --dtype {cfg.dtype}: try float32)")
    return to_uint8(images)  # (n, H, W, C)


def evaluate(samples: np.ndarray, cfg: SampleConfig, extractor) -> dict[str, Any]:
    """FID / IS / precision / recall of ``samples`` against the ``--reference`` images."""
    from sit_diffusers.fid import compute_metrics, load_npz_images

    metrics = compute_metrics(samples, load_npz_images(cfg.reference), extractor)
    return {**metrics.as_dict(), "reference": cfg.reference}


def run(cfg: SampleConfig) -> dict[str, Any]:
    """Check everything, sample what is missing (this process's batches), then on the main process write the
    ``.npz`` and metrics. Returns ``{"generated": n_batches_this_process, "skipped": ..., "npz": path,
    "metrics": ...}``. Bad input raises :class:`InputError` before anything is written."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, parse_flag_from_env

    reference_shape = check_files(cfg)
    # PartialState (unlike Accelerator) does not read ACCELERATE_USE_CPU; without it CPU processes never join
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    out = Path(cfg.out)
    folder = out / SAMPLES_DIR
    with state.main_process_first():  # a Hub id is downloaded once, then read from the cache
        pipe = load_pipeline(cfg)
    check_against_pipeline(cfg, pipe, reference_shape)
    geometry = image_geometry(pipe)

    # The main process hashes the weights, checks the folder and loads the extractor; every process learns
    # the outcome, so that a refusal stops them all with the same message.
    extractor, verdict = None, [None]
    if state.is_main_process:
        identity = run_identity(cfg, pipe)
        try:
            if cfg.reference:
                extractor = reference_extractor(cfg)
                check_enough_samples(cfg)
            check_resume(out, identity)
            verdict = [(identity, None)]
        except InputError as err:
            verdict = [(identity, str(err))]
        if verdict[0][1] is None and folder.is_dir():
            removed = remove_stale_temp_files(folder)
            if removed:
                logger.info("removed %d unfinished PNGs of an interrupted run", removed)
    broadcast_object_list(verdict)
    identity, refusal = verdict[0]
    if refusal is not None:
        raise InputError(refusal)

    pipe.to(state.device)
    if cfg.dtype != "float32":
        pipe.to(dtype=getattr(torch, cfg.dtype))
    steps = identity["num_inference_steps"]
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        labels = class_labels(cfg, pipe.num_classes)
        mine = [r for b, r in enumerate(batch_ranges(cfg.num_samples, cfg.batch_size))
                if b % state.num_processes == state.process_index]
        todo = [r for r in mine if not (folder.is_dir() and batch_is_done(folder, r, geometry))]
        logger.info("process %d/%d: %d batches to sample, %d already done",
                    state.process_index, state.num_processes, len(todo), len(mine) - len(todo))
        run_file_written = False
        for indices in todo:
            images = sample_batch(pipe, cfg, indices, labels, steps)  # (n, H, W, C)
            if images.shape[1:] != geometry:
                raise RuntimeError(f"the pipeline made images {images.shape[1:]}, expected {geometry}")
            if not run_file_written:  # the folder is claimed by its first finished batch, not before
                folder.mkdir(parents=True, exist_ok=True)
                write_run_file(out, cfg, identity)
                run_file_written = True
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


def _cli(argv: Sequence[str]) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run(cfg)
    if "metrics" in result:
        print(json.dumps(result["metrics"], indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: 0 on success, 2 (one line on stderr) for bad input, 1 for NaN/inf images."""
    return run_cli(PROG, _cli, argv)


if __name__ == "__main__":
    sys.exit(main())
