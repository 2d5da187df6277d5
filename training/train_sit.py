"""Train SiT (Ma et al. 2024, arXiv 2401.08740) with Accelerate.

    accelerate launch training/train_sit.py --config training/configs/sit_xl2_imagenet256.yaml
    python training/train_sit.py --train_data_dir ./my_images --model SiT-S/2 --global_batch_size 32
    python training/train_sit.py --pretrained_model_name_or_path ./my-sit-pipeline --lora_rank 16 ...  # LoRA

The defaults are the paper's recipe (see ``training/config.py``). Read top to bottom:
checks -> data -> models -> resume -> loop (micro-batches, optimiser, EMA, logs, checkpoints, samples) ->
pipeline. Every input is checked before any data is read or any file written (``check_config``,
``resolve_resume``). Determinism: a step reads the stream positions ``[s B, (s + 1) B)`` (``training/data.py``)
and draws its randomness (posterior eps, noise, times, label drops) for the whole global batch from one
generator per ``(seed, step, stream)`` (:class:`StepDraws`); each micro-batch takes its rows. So a run is a
function of ``(config, step)`` only: resuming reproduces the uninterrupted run bit for bit, and the process
count or accumulation split does not change the batches or the draws.

REPA (``--repa_encoder``, Yu et al. 2024): the hidden state after block ``--repa_depth`` (a forward hook,
``training/repa.py``; the plain forward is untouched) goes through a projector and is aligned to a frozen
``transformers`` encoder's patch features (computed on the fly or precomputed); the projector trains with
the SiT (one AdamW, saved in ``model.safetensors`` under ``repa_projector.``), is not EMA'd, and never
reaches the pipeline. After ``--repa_stop_step`` the hook is removed and the encoder is no longer called.

Checkpoints are this trainer's own format, read with ``safetensors`` and ``json`` only (never pickle, so a
checkpoint folder from elsewhere cannot run code): weights and optimiser tensors as safetensors, everything
else as JSON, listed with their sizes and SHA-256 in ``train_state.json``.

Fine-tuning: ``--pretrained_model_name_or_path`` starts from a saved ``SiTPipeline``'s transformer (its
architecture must be the one the flags describe). With ``--lora_rank`` only LoRA adapters train (peft, on
``--lora_target_modules``), the base stays frozen, checkpoints hold the adapters, their EMA and the
optimiser state, and the run ends with ``output_dir/lora/pytorch_lora_weights.safetensors`` in diffusers'
LoRA format (the EMA adapters) for ``SiTPipeline.load_lora_weights``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import hashlib
import inspect
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `training.*` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sit_diffusers.validation import InputError, NonFiniteError, check_writable_dir, run_cli  # noqa: E402
from training.checkpoints import (  # noqa: E402
    CheckpointWriteError,
    Trainables,
    any_process_failed,
    load_checkpoint,
    load_trainable_state,
    nonfinite_keys,
    read_checkpoint,
    resolve_resume,
    save_checkpoint,
    trainable_state,
    unwrap_model,
    validate_checkpoint,
)
from training.config import ConfigError, TrainConfig, parse_config  # noqa: E402
from training.data import (  # noqa: E402
    DataError,
    ImageDataset,
    LatentDataset,
    LatentsMeta,
    StepBatchSampler,
    StreamingBatches,
    check_image_dataset,
    load_image_dataset,
    moments_to_latents,
    sample_seed,
    undecoded_images,
)

__all__ = [
    "train", "main", "check_config", "micro_batch_loss", "save_checkpoint", "resolve_resume",
    "validate_checkpoint", "read_checkpoint", "StepDraws", "update_ema", "CheckpointWriteError",
    "Pretrained", "check_pretrained", "load_pretrained", "add_lora", "AdapterEMA", "save_lora",
]

logger = logging.getLogger("train_sit")

PROG = "train_sit.py"
_TRAINER_SET = {
    "sample_size": "--resolution (and the VAE's downsampling)", "in_channels": "the VAE or --image_channels",
    "num_classes": "--num_classes", "class_dropout_prob": "--class_dropout_prob", "learn_sigma": "--learn_sigma",
}
"""``SiTTransformer2DModel`` arguments the trainer sets from other flags (not allowed in model_overrides)."""


# ===========================================================================
# Checks at the door (no data read, nothing written)
# ===========================================================================


def _closest(value: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(value, valid, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def model_arguments(cfg: TrainConfig) -> dict[str, Any]:
    """The named architecture's arguments with ``model_overrides`` applied (no trainer-set ones)."""
    from sit_diffusers.modeling_sit import SIT_CONFIGS

    return {**SIT_CONFIGS[cfg.model], **cfg.model_overrides}


def check_config(cfg: TrainConfig) -> Pretrained | None:
    """Checks that need the model registry, the objective or the sampler presets; raises ``ConfigError``.

    Runs before the accelerator, the data or any file: model name, ``model_overrides`` keys and values
    (the architecture is built on the meta device), the objective, the sampler preset and, in pixel
    space, the resolution against the patch size; then the pretrained model of a fine-tuning run
    (:func:`check_pretrained`, returned). (The VAE and latents geometry: ``check_geometry``.)
    """
    from sit_diffusers.modeling_sit import SIT_CONFIGS, SiTTransformer2DModel
    from sit_diffusers.scheduling_sit import SAMPLER_PRESETS

    if cfg.model not in SIT_CONFIGS:
        raise ConfigError(f"--model {cfg.model!r} is not a SiT config; choose from {', '.join(SIT_CONFIGS)}"
                          + _closest(cfg.model, list(SIT_CONFIGS)))
    known = [p for p in inspect.signature(SiTTransformer2DModel.__init__).parameters if p != "self"]
    for key, value in cfg.model_overrides.items():
        if key in _TRAINER_SET:
            raise ConfigError(f"--model_overrides key {key!r} is set by the trainer from {_TRAINER_SET[key]}")
        if key not in known:
            valid = [k for k in known if k not in _TRAINER_SET]
            raise ConfigError(f"--model_overrides key {key!r} is not a SiTTransformer2DModel argument; "
                              f"valid keys: {', '.join(valid)}" + _closest(str(key), valid))
        if key == "mlp_ratio":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if not ok:
            kind = "a finite number > 0" if key == "mlp_ratio" else "an integer >= 1"
            raise ConfigError(f"--model_overrides {key} must be {kind}, got {value!r}")
    arch = model_arguments(cfg)
    try:
        with torch.device("meta"):  # builds the architecture without allocating or initialising weights
            SiTTransformer2DModel(**{**arch, "sample_size": arch["patch_size"], "num_classes": cfg.num_classes,
                                     "class_dropout_prob": cfg.class_dropout_prob, "learn_sigma": cfg.learn_sigma})
    except (ValueError, RuntimeError, TypeError) as err:
        raise ConfigError(f"--model {cfg.model} with --model_overrides {json.dumps(cfg.model_overrides)} "
                          f"is not a valid architecture: {err}") from err
    if cfg.sample_preset not in SAMPLER_PRESETS:
        raise ConfigError(f"--sample_preset {cfg.sample_preset!r} is not a sampler preset; choose from "
                          f"{', '.join(SAMPLER_PRESETS)}" + _closest(cfg.sample_preset, list(SAMPLER_PRESETS)))
    try:
        build_objective(cfg)
    except ValueError as err:
        raise ConfigError(f"objective (--path_type {cfg.path_type}, --prediction {cfg.prediction}, "
                          f"--loss_weight {cfg.loss_weight}, --time_sampling {cfg.time_sampling}): {err}") from err
    if cfg.sample_every or cfg.save_pipeline:
        from sit_diffusers.scheduling_sit import SiTSampler

        try:
            SiTSampler.from_preset(cfg.sample_preset, path_type=cfg.path_type, prediction=cfg.prediction,
                                   train_eps=cfg.train_eps, sample_eps=cfg.sample_eps)
        except ValueError as err:
            raise ConfigError(f"--sample_preset {cfg.sample_preset} with --path_type {cfg.path_type} / "
                              f"--prediction {cfg.prediction}: {err}") from err
    if cfg.pixel_space:
        _check_side(cfg, cfg.resolution, "--resolution")
    try:
        check_writable_dir("--output_dir", cfg.output_dir)
    except InputError as err:
        raise ConfigError(str(err)) from None
    check_repa(cfg)
    return check_pretrained(cfg)


def check_compile(cfg: TrainConfig, device: torch.device) -> None:
    """``--compile`` can run here: dynamo supports this Python, and on CPU inductor finds a C++ compiler (the
    first compiled step would otherwise fail after the data was read). Raises ``ConfigError``."""
    if cfg.compile == "none":
        return
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(f"--compile {cfg.compile}: torch.compile is not supported by this Python / torch "
                          f"({sys.version.split()[0]}, torch {torch.__version__}); pass --compile none")
    if device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except Exception as err:  # noqa: BLE001 - any failure to find one means inductor cannot build kernels
            raise ConfigError(f"--compile {cfg.compile} on CPU needs a C++ compiler for inductor (g++, clang++ or "
                              f"$CXX): {err}; install one or pass --compile none") from None


def check_attention_backend(cfg: TrainConfig, device: torch.device, mixed_precision: str,
                            pretrained: Pretrained | None) -> None:
    """``--attention_backend`` names a diffusers backend that runs here: its package requirements, then one tiny
    attention forward and backward on ``device`` in the run's precision with the model's head width (an
    unavailable kernel would otherwise fail the first step, after the data was read). Raises ``ConfigError``."""
    if cfg.attention_backend is None:
        return
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    try:  # a private helper of diffusers (the package a backend needs); the probe below tries the kernel anyway
        from diffusers.models.attention_dispatch import _check_attention_backend_requirements as requirements
    except ImportError:
        requirements = None

    names = [b.value for b in AttentionBackendName]
    name = cfg.attention_backend
    if name not in names:
        raise ConfigError(f"--attention_backend {name!r} is not a diffusers attention backend; choose from "
                          f"{', '.join(names)}, or none for the model's default" + _closest(name, names))
    arch = pretrained.config if pretrained is not None else model_arguments(cfg)
    heads, head_dim = arch["num_heads"], arch["hidden_size"] // arch["num_heads"]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)
    try:
        if requirements is not None:
            requirements(AttentionBackendName(name))
        probe = torch.Generator(device).manual_seed(0)  # the run's global RNG stays untouched
        q, k, v = (torch.randn(2, 4, heads, head_dim, device=device, dtype=dtype, generator=probe, requires_grad=True)
                   for _ in range(3))  # (N, T, H, Dh)
        dispatch_attention_fn(q, k, v, backend=AttentionBackendName(name)).float().sum().backward()
    except Exception as err:  # noqa: BLE001 - any failure means the training step would fail the same way
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--attention_backend {name} cannot train on {device.type} in {dtype} with head width "
                          f"{head_dim}: {message}; pass another backend (e.g. _native_math) or none") from None


def set_model_attention_backend(model: torch.nn.Module, name: str) -> None:
    """``model.set_attention_backend(name)`` for this model alone. diffusers (>= 0.37) also makes ``name`` the
    process-wide active backend, which would leak into every later model of the process (the EMA copy that draws
    the sample grids, a pipeline loaded after ``train()`` returns); the previous active backend is put back."""
    try:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry as registry
        previous = registry.get_active_backend()[0]
    except (ImportError, AttributeError, KeyError):  # a diffusers without the registry: nothing global to keep
        registry = previous = None
    try:
        model.set_attention_backend(name)
    finally:
        if registry is not None:
            registry.set_active_backend(previous)


RUNS_FILE = "runs.jsonl"
"""In ``output_dir``: one JSON line per start of the run (the first and every resume). ``config.json`` holds the
newest start's config; this file keeps every part's, so a run trained in several processes (say across
sessions, with a speed flag changed on resume) records what each part ran with and from which step."""


def record_start(cfg: TrainConfig, start_step: int, accelerator: Any) -> None:
    """Append this start to :data:`RUNS_FILE` (main process; after every check passed, before the first step)."""
    line = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "from_step": start_step,
            "processes": accelerator.num_processes, "device": accelerator.device.type,
            "mixed_precision": accelerator.mixed_precision, "torch": torch.__version__, "config": cfg.to_dict()}
    with open(Path(cfg.output_dir) / RUNS_FILE, "a") as f:
        f.write(json.dumps(line) + "\n")


def read_starts(output_dir: str | Path) -> list[dict[str, Any]]:
    """The starts recorded in ``output_dir`` (:data:`RUNS_FILE`), oldest first; [] when there is none."""
    path = Path(output_dir) / RUNS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_side(cfg: TrainConfig, side: int, what: str) -> None:
    patch = model_arguments(cfg)["patch_size"]
    if side % patch:
        raise ConfigError(f"{what} {side} is not divisible by the patch size {patch} of --model {cfg.model}")


def check_geometry(cfg: TrainConfig, vae_config: Any | None) -> None:
    """Resolution against the VAE factor and the patch size, or against the precomputed latents' ``meta.json``
    (only the metadata is read)."""
    if cfg.latents_dir is not None:
        try:
            meta = LatentsMeta.read(cfg.latents_dir)
        except DataError as err:
            raise ConfigError(f"--latents_dir {cfg.latents_dir!r}: {err}") from None
        if meta.resolution != cfg.resolution:
            raise ConfigError(f"--resolution {cfg.resolution}: the latents in {cfg.latents_dir} were computed at "
                              f"{meta.resolution} px")
        if meta.vae_scaling_factor != cfg.vae_scaling_factor:
            raise ConfigError(f"--vae_scaling_factor {cfg.vae_scaling_factor}: the latents in {cfg.latents_dir} "
                              f"were made for {meta.vae_scaling_factor}")
        _check_side(cfg, meta.latent_shape[1], f"--resolution {cfg.resolution} gives a latent side")
    elif vae_config is not None:
        factor = vae_downsample(vae_config)
        if cfg.resolution % factor:
            raise ConfigError(f"--resolution {cfg.resolution} is not divisible by the VAE's downsampling factor "
                              f"{factor}")
        _check_side(cfg, cfg.resolution // factor, f"--resolution {cfg.resolution} gives a latent side")


# ===========================================================================
# Fine-tuning and LoRA: the pretrained model, the adapters, their EMA
# ===========================================================================


@dataclass
class Pretrained:
    """The saved pipeline a fine-tuning run starts from (checked, not loaded: :func:`load_pretrained`)."""

    folder: Path
    """The local pipeline folder (a Hub repo id resolved to its snapshot)."""
    config: dict[str, Any]
    """Its ``transformer/config.json``."""
    fingerprint: str | None
    """LoRA runs: SHA-256 over its transformer's ``.safetensors`` files, the base a checkpoint was trained on."""


_ARCH_KEYS = ("depth", "hidden_size", "num_heads", "patch_size", "mlp_ratio")


def _read_json_file(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: {path.parent.name}/{path.name} is missing (not a saved SiTPipeline)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{where}: {path.parent.name}/{path.name} is unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {path.parent.name}/{path.name} is not a JSON object")
    return data


def _model_flags(config: dict[str, Any], model: str) -> str:
    """The ``--model`` / ``--model_overrides`` that describe the architecture of a transformer config: the
    named config with the fewest overrides, then the closest width (``model``, the one given, on a tie)."""
    from sit_diffusers.modeling_sit import SIT_CONFIGS

    arch = {k: config.get(k) for k in ("depth", "hidden_size", "num_heads", "patch_size")}
    names = [model, *(n for n in SIT_CONFIGS if n != model)] if model in SIT_CONFIGS else list(SIT_CONFIGS)
    name = min(names, key=lambda n: (sum(SIT_CONFIGS[n][k] != v for k, v in arch.items()),
                                     abs(SIT_CONFIGS[n]["hidden_size"] - (arch["hidden_size"] or 0))))
    overrides = {k: v for k, v in arch.items() if SIT_CONFIGS[name][k] != v}
    if config.get("mlp_ratio", 4.0) != 4.0:
        overrides["mlp_ratio"] = config["mlp_ratio"]
    return f"--model {name}" + (f" --model_overrides '{json.dumps(overrides)}'" if overrides else "")


def _fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def check_pretrained(cfg: TrainConfig) -> Pretrained | None:
    """``--pretrained_model_name_or_path`` resolved (a Hub id is downloaded) and checked against the flags
    before anything else is read: a ``SiTTransformer2DModel`` with ``.safetensors`` weights (pickle is never
    loaded) whose architecture is ``--model`` / ``--model_overrides``, whose ``num_classes``, ``learn_sigma``
    and null class match ``--num_classes``, ``--learn_sigma``, ``--class_dropout_prob``, whose sampler was
    trained for ``--path_type`` / ``--prediction``, and, with ``--lora_rank``, where every
    ``--lora_target_modules`` name is a Linear layer. ``None`` without the flag. Raises ``ConfigError``."""
    ref = cfg.pretrained_model_name_or_path
    if ref is None:
        return None
    from sit_diffusers.hub import resolve_pretrained_folder

    where = f"--pretrained_model_name_or_path {ref!r}"
    try:
        folder = resolve_pretrained_folder(ref)
    except (InputError, OSError) as err:
        raise ConfigError(f"{where}: {err}") from None
    config = _read_json_file(folder / "transformer" / "config.json", where)
    if config.get("_class_name") != "SiTTransformer2DModel":
        raise ConfigError(f"{where}: its transformer is a {config.get('_class_name')!r}, not a SiTTransformer2DModel")
    weights = sorted((folder / "transformer").glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in (folder / "transformer").iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        raise ConfigError(f"{where}: its transformer has no .safetensors weights"
                          + (f" (only {', '.join(pickles)}: pickle files are never loaded)" if pickles else ""))
    arch = {"mlp_ratio": 4.0, **model_arguments(cfg)}
    diffs = [f"{k} {arch.get(k)} vs {config.get(k)}" for k in _ARCH_KEYS if arch.get(k) != config.get(k)]
    if diffs:
        raise ConfigError(f"--model {cfg.model} with --model_overrides {json.dumps(cfg.model_overrides)} is not the "
                          f"architecture of {where} ({'; '.join(diffs)}): pass {_model_flags(config, cfg.model)}")
    if config.get("num_classes") != cfg.num_classes:
        raise ConfigError(f"--num_classes {cfg.num_classes}: the transformer of {where} has "
                          f"{config.get('num_classes')} classes (pass --num_classes {config.get('num_classes')})")
    if config.get("learn_sigma") != cfg.learn_sigma:
        raise ConfigError(f"--learn_sigma {cfg.learn_sigma}: the transformer of {where} has learn_sigma "
                          f"{config.get('learn_sigma')} (pass --{'' if config.get('learn_sigma') else 'no-'}learn_sigma)")
    if cfg.class_dropout_prob > 0 and not (config.get("class_dropout_prob") or 0) > 0:
        raise ConfigError(f"--class_dropout_prob {cfg.class_dropout_prob} drops labels to the null class, but the "
                          f"transformer of {where} has none (class_dropout_prob 0): pass --class_dropout_prob 0")
    sampler_file = folder / "scheduler" / "scheduler_config.json"
    if sampler_file.is_file():
        sampler = _read_json_file(sampler_file, where)
        for key, value in (("path_type", cfg.path_type), ("prediction", cfg.prediction)):
            if sampler.get("_class_name") == "SiTSampler" and sampler.get(key, value) != value:
                raise ConfigError(f"--{key} {value}: the model of {where} was trained for {key} "
                                  f"{sampler[key]!r} (its sampler says so); pass --{key} {sampler[key]}")
    if cfg.lora_rank is not None:
        _check_lora_targets(cfg, config)
    return Pretrained(folder=folder, config=config,
                      fingerprint=_fingerprint(weights) if cfg.lora_rank is not None else None)


def _check_lora_targets(cfg: TrainConfig, config: dict[str, Any]) -> None:
    """peft is installed and every ``--lora_target_modules`` name is a Linear layer of the architecture."""
    from diffusers.utils import USE_PEFT_BACKEND

    from sit_diffusers.lora import check_target_modules
    from sit_diffusers.modeling_sit import SiTTransformer2DModel

    if not USE_PEFT_BACKEND:
        raise ConfigError(f"--lora_rank {cfg.lora_rank} needs peft>=0.18: pip install 'sit-diffusers[training]'")
    known = set(inspect.signature(SiTTransformer2DModel.__init__).parameters) - {"self"}
    with torch.device("meta"):
        model = SiTTransformer2DModel(**{k: v for k, v in config.items() if k in known})
    try:
        check_target_modules(model, cfg.lora_target_modules, name="--lora_target_modules")
    except InputError as err:
        raise ConfigError(str(err)) from None


def model_geometry(cfg: TrainConfig, vae_config: Any | None) -> tuple[int, int, str]:
    """``(channels, side, how)`` of what the model is fed: the precomputed latents, the VAE's latents of
    ``--resolution`` images, or the images themselves (pixel space); ``how`` says which, with its flags."""
    if cfg.latents_dir is not None:
        c, h, _ = LatentsMeta.read(cfg.latents_dir).latent_shape
        return c, h, f"the latents of --latents_dir {cfg.latents_dir}"
    if vae_config is not None:
        return (vae_config.latent_channels, cfg.resolution // vae_downsample(vae_config),
                f"--vae {cfg.vae} latents of --resolution {cfg.resolution} images")
    return cfg.image_channels, cfg.resolution, (f"pixel space: --resolution {cfg.resolution}, --image_channels "
                                                f"{cfg.image_channels}")


def check_pretrained_geometry(cfg: TrainConfig, pretrained: Pretrained, vae_config: Any | None) -> None:
    """The pretrained transformer takes what the run feeds it: channels and side (after ``check_geometry``)."""
    channels, side, how = model_geometry(cfg, vae_config)
    want_c, want_s = pretrained.config.get("in_channels"), pretrained.config.get("sample_size")
    if (channels, side) != (want_c, want_s):
        raise ConfigError(f"--pretrained_model_name_or_path {cfg.pretrained_model_name_or_path!r} takes {want_c}-channel "
                          f"{want_s} x {want_s} inputs, but this run feeds it {channels}-channel {side} x {side} "
                          f"({how}); set the resolution, VAE or channels it was trained with")


def load_pretrained(pretrained: Pretrained, ref: str) -> Any:
    """The pretrained ``SiTTransformer2DModel`` in float32 (safetensors only); ``ConfigError`` if it cannot be
    loaded or holds NaN/inf."""
    from sit_diffusers.modeling_sit import SiTTransformer2DModel

    where = f"--pretrained_model_name_or_path {ref!r}"
    try:
        with warnings.catch_warnings():  # newer diffusers warn that torch_dtype is now dtype; older ones know only it
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            model = SiTTransformer2DModel.from_pretrained(pretrained.folder, subfolder="transformer",
                                                          torch_dtype=torch.float32, use_safetensors=True)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ConfigError(f"{where}: its transformer could not be loaded ({type(err).__name__}: {first})") from None
    bad = nonfinite_keys(model.state_dict())
    if bad:
        raise ConfigError(f"{where}: {len(bad)} weight tensor(s) of its transformer hold NaN/inf (e.g. {bad[0]})")
    return model


def add_lora(cfg: TrainConfig, model: Any) -> None:
    """Freeze ``model`` and add the adapter ``"default"`` (``--lora_rank``, ``--lora_alpha``,
    ``--lora_dropout`` on ``--lora_target_modules``; A drawn from ``--seed``, B zero). Afterwards exactly the
    adapter weights train; anything else is a bug and raises."""
    from sit_diffusers.lora import lora_config

    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model.add_adapter(lora_config(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen_adapters = [n for n, p in model.named_parameters() if ".lora_" in n and not p.requires_grad]
    if not trainable or frozen_adapters or any(".lora_" not in n for n in trainable):
        raise RuntimeError(f"LoRA setup: the trainable parameters must be exactly the adapters; trainable "
                           f"{trainable[:3]}..., frozen adapters {frozen_adapters[:3]}")


class AdapterEMA:
    """EMA of the adapter weights of a LoRA run (``update_ema`` on them only).

    The base is frozen, so its average would be itself: no second copy of the (possibly billion-parameter)
    base is kept. ``state_dict`` / ``load_state_dict`` are by the adapter parameter names
    (:func:`~training.checkpoints.trainable_state`); :meth:`applied` puts the averages into the model for
    sampling and saving, and restores the trained weights after.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.shadow = {name: p.detach().clone() for name, p in trainable_state(model).items()}

    def parameters(self) -> list[torch.Tensor]:
        return list(self.shadow.values())

    def to(self, device: torch.device) -> AdapterEMA:
        self.shadow = {name: t.to(device) for name, t in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise RuntimeError(f"EMA adapter names differ: missing {sorted(set(self.shadow) - set(state))[:3]}, "
                               f"unexpected {sorted(set(state) - set(self.shadow))[:3]}")
        for name, value in state.items():
            if value.shape != self.shadow[name].shape:
                raise RuntimeError(f"EMA {name} has shape {tuple(value.shape)}, the model's is "
                                   f"{tuple(self.shadow[name].shape)}")
            self.shadow[name].copy_(value)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Any:
        """``model`` with the averaged adapters, in eval mode (no LoRA or label dropout), then restored."""
        trained = {name: t.clone() for name, t in trainable_state(model).items()}
        was_training = model.training
        load_trainable_state(model, self.shadow)
        model.eval()
        try:
            yield model
        finally:
            load_trainable_state(model, trained)
            model.train(was_training)


# ===========================================================================
# REPA: the encoder or its precomputed features, the projector, the alignment term
# ===========================================================================


def repa_features_dir(cfg: TrainConfig) -> str | None:
    """The folder of precomputed REPA features the run reads: ``--repa_features_dir``, else ``--latents_dir``
    when it holds them (``repa.json``); ``None``: the encoder runs on the images of each batch."""
    from training.repa import REPA_META_FILE

    if cfg.repa_encoder is None:
        return None
    if cfg.repa_features_dir is not None:
        return cfg.repa_features_dir
    if cfg.latents_dir is not None and (Path(cfg.latents_dir) / REPA_META_FILE).is_file():
        return cfg.latents_dir
    return None


def check_repa(cfg: TrainConfig) -> None:
    """REPA checks that need the model registry or the features' ``repa.json`` (the encoder itself is loaded
    in :func:`train`'s checks, before any data): ``--repa_depth`` within the model's blocks, features for a
    latents run (which has no images to encode), features made by ``--repa_encoder`` at ``--resolution``."""
    if cfg.repa_encoder is None:
        return
    from training.repa import RepaFeaturesMeta, check_repa_depth

    try:
        check_repa_depth(cfg.repa_depth, num_blocks=model_arguments(cfg)["depth"], flag="--repa_depth")
    except InputError as err:
        raise ConfigError(f"{err} (--model {cfg.model})") from None
    folder = repa_features_dir(cfg)
    if folder is None:
        if cfg.latents_dir is not None:
            raise ConfigError(f"--repa_encoder with --latents_dir {cfg.latents_dir}: the latents hold no REPA features "
                              "(no repa.json) and a latents run has no images to encode; precompute them with "
                              "precompute_latents.py --repa_encoder ..., or give --repa_features_dir")
        return
    flag = "--repa_features_dir" if cfg.repa_features_dir is not None else "--latents_dir"
    try:
        meta = RepaFeaturesMeta.read(folder)
    except DataError as err:
        raise ConfigError(f"{flag} {folder}: {err}") from None
    if meta.encoder != cfg.repa_encoder:
        raise ConfigError(f"{flag} {folder}: its REPA features come from encoder {meta.encoder!r}, not --repa_encoder "
                          f"{cfg.repa_encoder!r}")
    if meta.resolution != cfg.resolution:
        raise ConfigError(f"{flag} {folder}: its REPA features were computed at {meta.resolution} px, not --resolution "
                          f"{cfg.resolution}")


def _check_repa_resume(resume: Path | None, cfg: TrainConfig) -> None:
    """A checkpoint with a REPA projector and a run without one (or the reverse) hold different trainables."""
    if resume is None:
        return
    saved = json.loads((resume / "train_state.json").read_text())["config"]
    if (saved.get("repa_encoder") is None) != (cfg.repa_encoder is None):
        held = "holds a REPA projector" if saved.get("repa_encoder") is not None else "holds no REPA projector"
        runs = "trains one (--repa_encoder)" if cfg.repa_encoder is not None else "trains none"
        raise ConfigError(f"--resume_from_checkpoint {resume} {held}, but this run {runs}: they cannot be resumed "
                          "into each other (not even with --allow_config_change); to end the alignment early keep "
                          "the REPA flags and set --repa_stop_step")
    if cfg.repa_encoder is None:
        return

    def projector(config: dict[str, Any]) -> str:
        kind = config.get("repa_projector", "mlp")
        if kind == "conv":
            return f"a conv projector (kernel {config.get('repa_projector_kernel', 3)})"
        return f"an MLP projector (width {config.get('repa_projector_dim', 2048)})"

    if projector(saved) != projector(cfg.to_dict()):
        raise ConfigError(f"--resume_from_checkpoint {resume} holds {projector(saved)}, but this run trains "
                          f"{projector(cfg.to_dict())}: they cannot be resumed into each other (not even with "
                          "--allow_config_change); use the checkpoint's --repa_projector flags or another --output_dir")


def _labels_of(data: DataSource, cfg: TrainConfig) -> np.ndarray:
    """The labels of a map-style data source in row order (a column read: no image decoded)."""
    inner = data.dataset
    if isinstance(inner, LatentDataset):
        return np.asarray(inner.labels)
    rows = inner.dataset
    if getattr(rows, "column_names", None) is not None:
        return np.asarray(rows[cfg.label_column])
    return np.asarray([int(row[cfg.label_column]) for row in rows])


@dataclass
class Repa:
    """The REPA parts of a run: the frozen encoder (``None`` with precomputed features), the projector (trained,
    saved with the model, not EMA'd, never in the pipeline) and the hook that exposes block ``depth``'s output
    while the alignment is on (steps ``< stop_step``)."""

    encoder: Any | None
    projector: torch.nn.Module
    depth: int
    coeff: float
    stop_step: int | None
    grid: tuple[int, int]
    zscore_alpha: float | None = None
    capture: Any | None = None

    def active(self, step: int) -> bool:
        """Whether optimiser step ``step`` (0-based) aligns: it is one of the first ``stop_step``."""
        return self.stop_step is None or step < self.stop_step

    def attach(self, transformer: Any) -> None:
        from training.repa import attach_hidden_capture

        if self.capture is None:
            self.capture = attach_hidden_capture(transformer, self.depth)

    def stop(self) -> None:
        """Remove the hook and drop the encoder: the forward is the plain one and nothing of REPA runs."""
        if self.capture is not None:
            self.capture.remove()
            self.capture = None
        self.encoder = None

    def loss(self, accelerator: Any, batch: dict[str, Any]) -> torch.Tensor:
        """``mean_tokens -cos(y*, h_phi(h))`` of the micro-batch whose forward just ran (a scalar)."""
        from training.repa import repa_loss, repa_targets

        hidden = self.capture.pop()  # (n, T, D_sit)
        with torch.no_grad():
            target = repa_targets(batch, self.grid, encoder=self.encoder,
                                  zscore_alpha=self.zscore_alpha).to(hidden.device)  # (n, T, D_enc)
        with accelerator.autocast():
            projected = self.projector(hidden)  # (n, T, D_enc)
        return repa_loss(projected, target)


class _WithProjector(torch.nn.Module):
    """What a REPA run's ``model.safetensors`` holds: the SiT's state dict and the projector's under
    ``repa_projector.`` (checkpoints only; the pipeline gets the SiT's EMA alone)."""

    PREFIX = "repa_projector."

    def __init__(self, transformer: torch.nn.Module, projector: torch.nn.Module) -> None:
        super().__init__()
        self.transformer, self.projector = transformer, projector

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {**self.transformer.state_dict(),
                **{self.PREFIX + k: v for k, v in self.projector.state_dict().items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True, assign: bool = False) -> Any:
        mine = {k[len(self.PREFIX):]: v for k, v in state.items() if k.startswith(self.PREFIX)}
        if not mine:
            raise RuntimeError("no repa_projector.* weights: the checkpoint was trained without REPA")
        self.projector.load_state_dict(mine, strict=strict)
        return self.transformer.load_state_dict({k: v for k, v in state.items() if not k.startswith(self.PREFIX)},
                                                strict=strict)


def _allreduce_grads(accelerator: Any, params: list[torch.Tensor]) -> None:
    """Average the gradients of ``params`` (not in DDP: the projector) over the processes, as DDP does the SiT's."""
    grads = [p.grad for p in params if p.grad is not None]
    if accelerator.num_processes == 1 or not grads:
        return
    flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def make_optimizer(cfg: TrainConfig, params: list[torch.Tensor], device: torch.device) -> tuple[Any, str]:
    """AdamW over ``params``: the fused kernel on CUDA and CPU (:data:`FUSED_ADAMW_DEVICES`), torch's default
    (foreach) elsewhere; returns ``(optimizer, "fused" | "default")``. Both compute AdamW's update, equal to
    float rounding (3e-8 after 23 steps on the digits model); the choice is logged."""
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                  weight_decay=cfg.weight_decay)
    if device.type in FUSED_ADAMW_DEVICES:
        return torch.optim.AdamW(params, fused=True, **kwargs), "fused"
    return torch.optim.AdamW(params, **kwargs), "default"


FUSED_ADAMW_DEVICES = ("cuda", "cpu")
"""Devices where :func:`make_optimizer` uses ``AdamW(fused=True)``: on this CPU it takes 31 ms per step of the 4.2M
parameter digits model vs 94 ms for the foreach kernel (1 thread; docs/training.md#throughput)."""


# ===========================================================================
# Setup helpers
# ===========================================================================


def make_accelerator(cfg: TrainConfig) -> Any:
    """An ``Accelerator`` for the run; checks the batch split before anything is written."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    report_to = None if cfg.report_to == "none" else cfg.report_to
    try:
        accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision,
            log_with=report_to,
            project_config=ProjectConfiguration(project_dir=cfg.output_dir,
                                                logging_dir=str(Path(cfg.output_dir) / "logs")),
        )
    except RuntimeError as err:  # e.g. an FSDP config on a machine without an accelerator device
        if "no available devices" not in str(err):
            raise
        raise ConfigError(f"accelerate could not set up this launch's distribution on {_cpu_or_devices()}: {err} "
                          "(FSDP needs an accelerator device; on CPU launch DDP: accelerate launch --multi_gpu "
                          "--num_processes N with ACCELERATE_USE_CPU=1)") from None
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if world != accelerator.num_processes:  # e.g. FSDP on CPU: accelerate falls back to one process per rank
        raise ConfigError(
            f"launched as {world} processes (WORLD_SIZE) but accelerate formed a group of {accelerator.num_processes} "
            f"({accelerator.distributed_type.value}): each process would train alone into the same --output_dir. "
            "accelerate runs FSDP only on an accelerator (CUDA, XPU, NPU, ...); on CPU launch DDP instead "
            "(accelerate launch --multi_gpu --num_processes N with ACCELERATE_USE_CPU=1)")
    split = accelerator.num_processes * cfg.gradient_accumulation_steps
    if cfg.global_batch_size % split:
        raise ConfigError(
            f"--global_batch_size {cfg.global_batch_size} is not divisible by the number of processes "
            f"({accelerator.num_processes}) x --gradient_accumulation_steps ({cfg.gradient_accumulation_steps})"
        )
    return accelerator


def _cpu_or_devices() -> str:
    return f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "a CPU-only machine"


def load_vae(name: str, subfolder: str | None, device: torch.device) -> Any:
    """A frozen ``AutoencoderKL`` in float32, eval mode (Hub id or local folder)."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(name, subfolder=subfolder)
    except Exception as err:
        hint = ""
        if not Path(name).expanduser().exists():  # a Hub id: say when the cause is offline mode, not the repo
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:
                hint = (" (HF_HUB_OFFLINE=1 and it is not in the local Hub cache: download it once online, or "
                        "give a local AutoencoderKL folder)")
        raise ConfigError(f"--vae {name!r} could not be loaded{hint}: {type(err).__name__}: {err}") from err
    vae.requires_grad_(False)
    return vae.eval().to(device)


def set_vae_scaling(vae: Any, scaling_factor: float) -> None:
    """Make ``vae.config.scaling_factor`` the training one, so the saved pipeline decodes consistently."""
    if getattr(vae.config, "scaling_factor", None) != scaling_factor:
        logger.warning("VAE scaling_factor %s replaced by the configured %s", vae.config.scaling_factor, scaling_factor)
        vae.register_to_config(scaling_factor=scaling_factor)


def vae_downsample(vae_config: Any) -> int:
    """Spatial downsampling factor of an ``AutoencoderKL`` (8 for the SD VAE)."""
    return 2 ** (len(vae_config.block_out_channels) - 1)


@dataclass
class DataSource:
    """What the loop reads: a map-style dataset (or a stream) plus the shape of what the model sees."""

    dataset: Any
    """``ImageDataset`` / ``LatentDataset`` (map-style) or a ``datasets.IterableDataset`` (streaming)."""
    kind: str
    """``"pixels"`` (images in [-1, 1]) or ``"moments"`` (precomputed VAE posterior moments)."""
    model_channels: int
    model_size: int
    num_examples: int | None
    id2label: dict[int, str] | None
    vae_name: str | None


def _id2label_from_features(dataset: Any, label_column: str) -> dict[int, str] | None:
    features = getattr(dataset, "features", None) or {}
    names = getattr(features.get(label_column), "names", None)
    return dict(enumerate(names)) if names else None


def build_data(cfg: TrainConfig, dataset: Any | None, vae_config: Any | None) -> DataSource:
    """Load and check the training data: precomputed latents, an in-memory dataset, a folder or the Hub.

    The first data read of a run: everything that needs only the config, the model registry, the VAE or
    the checkpoint has been checked before (``check_config``, ``check_geometry``, ``resolve_resume``).
    """
    if cfg.latents_dir is not None:
        latents = LatentDataset(cfg.latents_dir, seed=cfg.seed, random_flip=cfg.random_flip)
        meta = latents.meta
        if meta.num_examples == 0:
            raise DataError(f"the precomputed latents in {cfg.latents_dir} are empty")
        labels = latents.labels  # (N,) int
        if int(labels.min()) < 0 or int(labels.max()) >= cfg.num_classes:
            bad = int(np.flatnonzero((labels < 0) | (labels >= cfg.num_classes))[0])
            raise DataError(f"label {int(labels[bad])} of latent row {bad} in {cfg.latents_dir} is outside "
                            f"[0, --num_classes {cfg.num_classes})")
        c, h, _ = meta.latent_shape
        return DataSource(latents, "moments", c, h, meta.num_examples, meta.id2label, meta.vae)

    if dataset is None:
        dataset = load_image_dataset(
            cfg.dataset_name, cfg.train_data_dir, dataset_config_name=cfg.dataset_config_name,
            split=cfg.dataset_split, streaming=cfg.streaming, cache_dir=cfg.cache_dir,
        )
    if cfg.max_train_samples is not None:
        dataset = dataset.take(cfg.max_train_samples) if cfg.streaming else dataset.select(
            range(min(cfg.max_train_samples, len(dataset))))
    dataset = undecoded_images(dataset, cfg.image_column)  # PIL decodes, without EXIF rotation (official)
    check_image_dataset(dataset, cfg.image_column, cfg.label_column, cfg.num_classes)
    id2label = _id2label_from_features(dataset, cfg.label_column)
    if vae_config is None:
        channels, size = cfg.image_channels, cfg.resolution
    else:
        channels, size = vae_config.latent_channels, cfg.resolution // vae_downsample(vae_config)
    if cfg.streaming:
        return DataSource(dataset, "pixels", channels, size, None, id2label, cfg.vae)
    images = ImageDataset(dataset, cfg.image_column, cfg.label_column, cfg.resolution, cfg.image_channels,
                          seed=cfg.seed, random_flip=cfg.random_flip)
    return DataSource(images, "pixels", channels, size, len(dataset), id2label, cfg.vae)


def add_repa_features(cfg: TrainConfig, data: DataSource) -> DataSource:
    """With precomputed REPA features, each example also gets ``"repa_features"`` (the mirror's when its pixels or
    latents are mirrored); the features are checked against the data first (rows, labels row by row, encoder,
    resolution). Other runs: ``data`` unchanged."""
    folder = repa_features_dir(cfg)
    if folder is None:
        return data
    from training.repa import RepaFeatureStore, WithRepaFeatures

    flag = "--repa_features_dir" if cfg.repa_features_dir is not None else "--latents_dir"
    store = RepaFeatureStore(folder, flag=flag)
    store.check(num_rows=data.num_examples, resolution=cfg.resolution, encoder=cfg.repa_encoder,
                labels=_labels_of(data, cfg))
    dataset = WithRepaFeatures(data.dataset, store, seed=cfg.seed, random_flip=cfg.random_flip)
    return dataclasses.replace(data, dataset=dataset)


def make_batches(cfg: TrainConfig, data: DataSource, accelerator: Any, start_step: int) -> Any:
    """Iterator over this process's micro-batches from ``start_step`` to ``max_train_steps``."""
    common = dict(global_batch_size=cfg.global_batch_size, num_processes=accelerator.num_processes,
                  process_index=accelerator.process_index, accumulation_steps=cfg.gradient_accumulation_steps,
                  seed=cfg.seed, start_step=start_step, max_steps=cfg.max_train_steps)
    if data.num_examples is None:  # streaming
        example_fn = ImageDataset(None, cfg.image_column, cfg.label_column, cfg.resolution, cfg.image_channels,
                                  seed=cfg.seed, random_flip=cfg.random_flip).example
        return iter(StreamingBatches(data.dataset, example_fn, buffer_size=cfg.shuffle_buffer_size, **common))
    sampler = StepBatchSampler(data.num_examples, **common)
    # The loader's own generator: creating the iterator (after a resume, where the first run created it before
    # step 1) must not draw from the global RNG that LoRA dropout uses, or a resumed run would drift.
    loader = torch.utils.data.DataLoader(
        data.dataset, batch_sampler=sampler, num_workers=cfg.dataloader_num_workers,
        pin_memory=accelerator.device.type == "cuda", persistent_workers=False,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return iter(loader)


def build_model(cfg: TrainConfig, in_channels: int, sample_size: int, pretrained: Any | None = None) -> Any:
    """A freshly initialised ``SiTTransformer2DModel`` (same weights on every process: seeded), or the
    ``pretrained`` one (:func:`load_pretrained`, whose geometry ``check_pretrained_geometry`` checked)."""
    from sit_diffusers.modeling_sit import SiTTransformer2DModel

    if pretrained is not None:
        return pretrained

    kwargs = dict(sample_size=sample_size, in_channels=in_channels, num_classes=cfg.num_classes,
                  class_dropout_prob=cfg.class_dropout_prob, learn_sigma=cfg.learn_sigma)
    kwargs.update(cfg.model_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        try:
            return SiTTransformer2DModel.from_name(cfg.model, **kwargs)
        except KeyError as err:
            raise ConfigError(str(err)) from err


def build_objective(cfg: TrainConfig) -> Any:
    """``SiTObjective`` from the objective fields of the config."""
    from sit_diffusers.losses import SiTObjective

    return SiTObjective(
        path_type=cfg.path_type, prediction=cfg.prediction, loss_weight=cfg.loss_weight,
        train_eps=cfg.train_eps, sample_eps=cfg.sample_eps, time=cfg.time_sampling,
        num_train_timesteps=cfg.num_train_timesteps,
    )


@torch.no_grad()
def update_ema(ema_params: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * param`` for every parameter (official ``update_ema``)."""
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, params, alpha=1.0 - decay)


# ===========================================================================
# Per-step randomness
# ===========================================================================

STREAM_POSTERIOR, STREAM_NOISE, STREAM_TIME, STREAM_DROP = 3, 4, 5, 6
"""Seed streams of the per-step draws (``training/data.py`` uses 0 for the epoch permutations, 1 for the flip
coins and 2 for the per-sample generators of the earlier scheme)."""


class StepDraws:
    """The random draws of the optimiser steps, the same for any process split, accumulation or resume.

    For step ``s`` and each stream one generator on ``device``, seeded by ``sample_seed(seed, s, stream)``,
    draws the rows of the whole global batch ``B``: the VAE posterior eps ``(B, C, h, w)`` (latent runs only),
    the noise ``x0`` ``(B, C, h, w)``, the times ``t`` ``(B,)`` and the label-dropout coins ``(B,)``. The
    micro-batch holding stream positions ``[s B + k, s B + k + n)`` takes rows ``[k, k + n)``. Every process
    draws all ``B`` rows (a few randn calls, cheap beside the model); the last step's draws are kept, so the
    accumulation micro-steps of a step draw once. The draws depend on the device type (a CUDA generator is
    not a CPU one), not on the number of devices.
    """

    def __init__(self, cfg: TrainConfig, objective: Any, shape: tuple[int, int, int], posterior: bool,
                 device: torch.device) -> None:
        self.seed, self.batch, self.drop_prob = cfg.seed, cfg.global_batch_size, cfg.class_dropout_prob
        self.objective, self.shape, self.posterior, self.device = objective, shape, posterior, device
        self._step: int | None = None
        self._rows: tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _generator(self, step: int, stream: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(sample_seed(self.seed, step, stream))

    def draw(self, step: int) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(posterior_eps (B, C, h, w) or None, noise (B, C, h, w), t (B,) float32, drop (B,) int64)`` of
        optimiser step ``step`` (0-based), on the device."""
        b, dev = self.batch, self.device
        eps = (torch.randn((b, *self.shape), generator=self._generator(step, STREAM_POSTERIOR), device=dev)
               if self.posterior else None)  # (B, C, h, w)
        noise = torch.randn((b, *self.shape), generator=self._generator(step, STREAM_NOISE), device=dev)  # (B, C, h, w)
        t = self.objective.sample_time(b, generator=self._generator(step, STREAM_TIME)).float()  # (B,)
        coins = torch.rand((b,), generator=self._generator(step, STREAM_DROP), device=dev)  # (B,)
        return eps, noise, t, (coins < self.drop_prob).long()

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
        """The rows of the micro-batch at stream ``positions`` (n,) (consecutive, inside one step)."""
        first, n = int(positions[0]), len(positions)
        step, k = divmod(first, self.batch)
        if int(positions[-1]) != first + n - 1 or k + n > self.batch:
            raise ValueError(f"positions {first}..{int(positions[-1])} are not {n} consecutive positions of one "
                             f"step of global batch {self.batch}")
        if step != self._step:
            self._rows, self._step = self.draw(step), step
        return tuple(None if rows is None else rows[k:k + n] for rows in self._rows)  # type: ignore[return-value]


def micro_batch_loss(
    cfg: TrainConfig, objective: Any, model: Any, batch: dict[str, Any], vae: Any | None,
    shape: tuple[int, int, int], device: torch.device, draws: StepDraws | None = None,
) -> torch.Tensor:
    """Mean SiT loss of one micro-batch (a scalar), the same whatever the process split.

    ``batch`` holds ``"pixels"`` (n, 3|1, H, W) in [-1, 1] or ``"moments"`` (n, 2C, h, w), plus ``"label"``
    and ``"position"`` (n,). Images are encoded by ``vae`` when given; moments become latents by a seeded
    posterior draw, ``x1 = (mean + std * eps) * scaling``; then ``x_t = alpha_t x1 + sigma_t x0`` at the
    seeded ``(t, x0)`` and the model is called with the seeded label-dropout mask. The draws are the
    micro-batch's rows of its step's :class:`StepDraws` (``draws``, which keeps a step's draws across its
    micro-steps; a fresh one when ``None``).
    """
    labels_cpu = batch["label"]  # (n,) on the CPU: checked without a device sync
    if labels_cpu.numel() and (int(labels_cpu.min()) < 0 or int(labels_cpu.max()) >= cfg.num_classes):
        bad = int(((labels_cpu < 0) | (labels_cpu >= cfg.num_classes)).nonzero()[0, 0])
        raise DataError(f"label {int(labels_cpu[bad])} at stream position {int(batch['position'][bad])} "
                        f"(optimiser step {int(batch['position'][bad]) // cfg.global_batch_size + 1}) is outside "
                        f"[0, --num_classes {cfg.num_classes})")
    posterior = "moments" in batch or vae is not None
    if draws is None:
        draws = StepDraws(cfg, objective, shape, posterior, device)
    elif draws.posterior != posterior:
        raise ValueError(f"draws made for posterior={draws.posterior}, the batch needs posterior={posterior}")
    eps, noise, t, drop = draws(batch["position"])
    with torch.no_grad():
        if "moments" in batch:
            moments = batch["moments"].to(device)  # (n, 2C, h, w)
        elif vae is not None:
            moments = vae.encode(batch["pixels"].to(device)).latent_dist.parameters  # (n, 2C, h, w)
        if posterior:
            x1 = moments_to_latents(moments, eps, cfg.vae_scaling_factor)  # (n, C, h, w)
        else:
            x1 = batch["pixels"].to(device)  # (n, C, H, W) in [-1, 1]
    labels = batch["label"].to(device)  # (n,)

    def model_fn(x_t: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
        return model(x_t, t_, labels, force_drop_ids=drop).sample  # (n, C, h, w)

    return objective.loss(model_fn, x1, t=t, noise=noise).mean()


# ===========================================================================
# Samples, pipeline, model card
# ===========================================================================


def make_pipeline(cfg: TrainConfig, transformer: Any, vae: Any | None, id2label: dict[int, str] | None) -> Any:
    """``SiTPipeline`` around ``transformer`` with a sampler matching the training objective."""
    from sit_diffusers.pipeline_sit import SiTPipeline
    from sit_diffusers.scheduling_sit import SiTSampler

    scheduler = SiTSampler.from_preset(cfg.sample_preset, path_type=cfg.path_type, prediction=cfg.prediction,
                                       train_eps=cfg.train_eps, sample_eps=cfg.sample_eps)
    return SiTPipeline(transformer=transformer, scheduler=scheduler, vae=vae, id2label=id2label)


@torch.no_grad()
def log_samples(cfg: TrainConfig, accelerator: Any, ema_model: Any, vae: Any | None, step: int) -> None:
    """A grid from the EMA model (fixed labels and seed) written to the trackers; main process only."""
    pipe = make_pipeline(cfg, ema_model, vae, None)
    pipe.set_progress_bar_config(disable=True)
    labels = [i % cfg.num_classes for i in range(cfg.num_sample_images)]
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    guidance = cfg.sample_guidance_scale if cfg.class_dropout_prob > 0 else 1.0
    images = pipe(class_labels=labels, guidance_scale=guidance,
                  num_inference_steps=cfg.sample_num_inference_steps, generator=generator,
                  output_type="np").images  # (N, H, W, C) in [0, 1]
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("samples", images, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"samples": [wandb.Image(img) for img in images]}, step=step)


MODEL_CARD = """# {name}

SiT (Scalable Interpolant Transformers, Ma et al. 2024, arXiv 2401.08740) trained with
`training/train_sit.py` of sit-diffusers: {steps} optimiser steps at global batch {batch}
({images} images seen), on {data}. Weights: the EMA (decay {ema}) of the trained model.
Objective: {path} path, {prediction} prediction; {space}.

Reproduce with `accelerate launch training/train_sit.py --config config.yaml` (the file beside this card).

```python
from sit_diffusers.pipeline_sit import SiTPipeline
pipe = SiTPipeline.from_pretrained("<this folder>")
images = pipe(class_labels=[0, 1], guidance_scale={cfg_scale}).images
```
"""
"""Body of the saved pipeline's ``README.md``; the front matter is ``huggingface_hub.ModelCardData`` (see
:func:`training_card`)."""


def training_card(cfg: TrainConfig, step: int, data_name: str, vae: Any | None) -> Any:
    """The saved pipeline's model card: ``ModelCardData`` (library, pipeline tag, tags, the Hub dataset when
    the run read one) over :data:`MODEL_CARD`, built and checked by
    ``sit_diffusers.model_card.build_model_card``.

    No ``base_model``: training starts from a random initialisation. ``datasets`` only when the data came from
    the Hub id ``--dataset_name`` (a local folder or precomputed latents name no Hub dataset). ``vae``: the
    pipeline's VAE (``None``: pixel space).
    """
    from huggingface_hub import ModelCardData
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from sit_diffusers.model_card import PIPELINE_TAG, build_model_card

    datasets = None
    if cfg.dataset_name is not None and data_name == cfg.dataset_name:
        try:
            validate_repo_id(cfg.dataset_name)
            datasets = [cfg.dataset_name]
        except HFValidationError:
            pass
    data = ModelCardData(library_name="diffusers", pipeline_tag=PIPELINE_TAG, datasets=datasets,
                         tags=["sit", "diffusers", "class-conditional", "image-generation"])
    space = f"latents of {cfg.vae} scaled by {cfg.vae_scaling_factor}" if vae is not None else "pixel space"
    body = MODEL_CARD.format(
        name=cfg.hub_model_id or f"{cfg.model} ({cfg.resolution}px)", steps=step, batch=cfg.global_batch_size,
        images=step * cfg.global_batch_size, data=data_name, ema=cfg.ema_decay, path=cfg.path_type,
        prediction=cfg.prediction, space=space, cfg_scale=cfg.sample_guidance_scale)
    return build_model_card(data, body)


def save_pipeline(cfg: TrainConfig, ema_state: dict[str, torch.Tensor], model_config: dict[str, Any], vae: Any,
                  id2label: dict[int, str] | None, step: int, data_name: str) -> Path:
    """Save ``output_dir/pipeline``: EMA transformer, VAE, scheduler preset, ``id2label``, card, config."""
    import yaml

    from sit_diffusers.modeling_sit import SiTTransformer2DModel

    bad = nonfinite_keys(ema_state)
    if bad:
        raise NonFiniteError(f"refusing to save the pipeline: {len(bad)} EMA weight tensor(s) hold NaN/inf "
                             f"(e.g. {bad[0]})")
    transformer = SiTTransformer2DModel.from_config(model_config)
    transformer.load_state_dict(ema_state)
    out = Path(cfg.output_dir) / "pipeline"
    tmp = Path(cfg.output_dir) / ".tmp-pipeline"
    shutil.rmtree(tmp, ignore_errors=True)
    make_pipeline(cfg, transformer.eval(), vae, id2label).save_pretrained(str(tmp))
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (tmp / "README.md").write_text(str(training_card(cfg, step, data_name, vae)), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    if cfg.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(cfg.hub_model_id, exist_ok=True)
        api.upload_folder(repo_id=cfg.hub_model_id, folder_path=str(out), commit_message=f"SiT step {step}")
    return out


LORA_CARD = """# {name}

A LoRA adapter (rank {rank}, alpha {alpha}, on {targets}) for the SiT pipeline `{base}`, trained with
`training/train_sit.py --lora_rank {rank}` of sit-diffusers: {steps} optimiser steps at global batch {batch}
({images} images seen), on {data}; the base weights were frozen. Weights: the EMA (decay {ema}) of the
adapters, in diffusers' LoRA format.

Reproduce with `accelerate launch training/train_sit.py --config config.yaml` (the file beside this card).

```python
from sit_diffusers.pipeline_sit import SiTPipeline
pipe = SiTPipeline.from_pretrained("{base}")
pipe.load_lora_weights("<this folder>")
images = pipe(class_labels=[0, 1], guidance_scale={cfg_scale}).images
```
"""
"""Body of the LoRA folder's ``README.md`` (front matter: ``ModelCardData``, see :func:`save_lora`)."""


def save_lora(cfg: TrainConfig, model: Any, ema: AdapterEMA, step: int, data_name: str) -> Path:
    """Save ``output_dir/lora``: ``pytorch_lora_weights.safetensors`` (the EMA adapters in diffusers' LoRA
    format, their ``LoraConfig`` in the header), ``README.md`` and ``config.yaml``, written as one folder
    atomically. ``model`` is the unwrapped transformer with its adapter ``"default"``."""
    import yaml
    from huggingface_hub import ModelCardData
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from sit_diffusers.atomic import write_folder_atomically
    from sit_diffusers.lora import SiTLoraLoaderMixin, transformer_lora_layers
    from sit_diffusers.model_card import PIPELINE_TAG, build_model_card

    with ema.applied(model):
        layers, metadata = transformer_lora_layers(model)
        layers = {k: v.detach().float().cpu().clone() for k, v in layers.items()}
    bad = nonfinite_keys(layers)
    if bad:
        raise NonFiniteError(f"refusing to save the LoRA: {len(bad)} EMA adapter tensor(s) hold NaN/inf (e.g. {bad[0]})")
    base = cfg.pretrained_model_name_or_path
    try:
        validate_repo_id(base)
        base_model = None if Path(base).expanduser().exists() else base
    except HFValidationError:
        base_model = None
    relation = {"base_model_relation": "adapter"} if base_model else {}
    data = ModelCardData(library_name="diffusers", pipeline_tag=PIPELINE_TAG, base_model=base_model,
                         tags=["sit", "diffusers", "lora", "class-conditional", "image-generation"], **relation)
    body = LORA_CARD.format(
        name=cfg.hub_model_id or f"LoRA of {base}", rank=cfg.lora_rank,
        alpha=cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank, targets=", ".join(cfg.lora_target_modules),
        base=base, steps=step, batch=cfg.global_batch_size, images=step * cfg.global_batch_size, data=data_name,
        ema=cfg.ema_decay, cfg_scale=cfg.sample_guidance_scale)
    card = build_model_card(data, body)

    def write(folder: Path) -> None:
        SiTLoraLoaderMixin.save_lora_weights(folder, transformer_lora_layers=layers,
                                             transformer_lora_adapter_metadata=metadata)
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        (folder / "README.md").write_text(str(card), encoding="utf-8")

    out = write_folder_atomically(Path(cfg.output_dir) / "lora", write)
    if cfg.push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(cfg.hub_model_id, exist_ok=True)
        api.upload_folder(repo_id=cfg.hub_model_id, folder_path=str(out), commit_message=f"SiT LoRA step {step}")
    return out


# ===========================================================================
# Training
# ===========================================================================


def _together(accelerator: Any, work: Any) -> Any:
    """``work()`` on every process; when it fails on any, every process raises (none waits forever in a
    collective for one that has stopped)."""
    error: Exception | None = None
    result = None
    try:
        result = work()
    except (InputError, OSError) as err:
        error = err
    if any_process_failed(accelerator, error):
        raise error if error is not None else ConfigError("another process stopped on bad input (see its message)")
    return result


def _nonfinite_error(cfg: TrainConfig, step: int, loss: float, grad_norm: float | None,
                     last_checkpoint: str | None, what: list[str] | None = None) -> NonFiniteError:
    what = list(what or [])
    if not math.isfinite(loss):
        what.append(f"loss {loss}")
    if grad_norm is not None and not math.isfinite(grad_norm):
        what.append(f"gradient norm {grad_norm}")
    if not what:
        what.append("loss or gradient norm on another process")
    kept = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
            else "no checkpoint was written")
    clip = f"--max_grad_norm {cfg.max_grad_norm}" if cfg.max_grad_norm is not None else "no --max_grad_norm"
    return NonFiniteError(
        f"non-finite {' and '.join(what)} at optimiser step {step}: training stopped before applying "
        f"that step and saved nothing after it ({kept}). Likely causes: --learning_rate {cfg.learning_rate} too "
        f"high ({clip}), or NaN/inf in the data. Fix it, then continue with --resume_from_checkpoint latest "
        "--allow_config_change"
    )


def train(cfg: TrainConfig, dataset: Any | None = None) -> Path:
    """Train SiT as configured; ``dataset`` (a ``datasets.Dataset``) replaces the configured data source.

    Returns ``output_dir``. Raises ``ConfigError`` / ``DataError`` on bad input before reading data or
    writing anything, ``NonFiniteError`` at the first step with a NaN/inf loss or gradient norm (nothing
    is saved after the last good checkpoint), ``CheckpointWriteError`` when a checkpoint cannot be written.
    """
    from accelerate.utils import DistributedType

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)

    # ---- checks (no data read, nothing written before they all pass)
    pretrained = check_config(cfg)
    lora = cfg.lora_rank is not None
    accelerator = make_accelerator(cfg)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp and lora:
        raise ConfigError("--lora_rank under FSDP is not supported (peft adapters in sharded modules); the frozen "
                          "base fits where the adapters train: use DDP or a single process")
    if fsdp and cfg.repa_encoder is not None:
        raise ConfigError("--repa_encoder under FSDP is not supported (the projector and its checkpoint are not "
                          "sharded); use DDP or a single process")
    device = accelerator.device
    check_compile(cfg, device)
    check_attention_backend(cfg, device, accelerator.mixed_precision, pretrained)
    torch.backends.cuda.matmul.allow_tf32 = cfg.allow_tf32
    torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    base_model = pretrained.fingerprint if lora else None

    def checks_and_data() -> tuple[Path | None, Any, Any, DataSource, Any]:
        resume = resolve_resume(cfg, fsdp=fsdp, base_model=base_model)
        _check_repa_resume(resume, cfg)
        encoder = None
        if cfg.repa_encoder is not None and repa_features_dir(cfg) is None:
            from training.repa import RepaEncoder

            dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
            encoder = RepaEncoder.from_pretrained(cfg.repa_encoder, dtype=dtype, device=device, flag="--repa_encoder")
        vae = None
        if cfg.vae is not None and cfg.latents_dir is None:
            vae = load_vae(cfg.vae, cfg.vae_subfolder, device)
            set_vae_scaling(vae, cfg.vae_scaling_factor)
        check_geometry(cfg, vae.config if vae is not None else None)
        base = None
        if pretrained is not None:
            check_pretrained_geometry(cfg, pretrained, vae.config if vae is not None else None)
            base = load_pretrained(pretrained, cfg.pretrained_model_name_or_path)
        # ---- data (the first read)
        data = build_data(cfg, dataset, vae.config if vae is not None else None)
        return resume, vae, base, add_repa_features(cfg, data), encoder

    resume, vae, base, data, encoder = _together(accelerator, checks_and_data)

    # ---- models, objective, optimiser
    model = build_model(cfg, data.model_channels, data.model_size, pretrained=base)
    model_config = dict(model.config)
    if lora:  # base frozen, adapters train; their EMA only (the base's would be itself)
        add_lora(cfg, model)
        ema_model = AdapterEMA(model)
    else:
        ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    repa = None
    if cfg.repa_encoder is not None:  # the projector: seeded on its own, so the global RNG is untouched
        from training.repa import RepaFeatureStore, build_projector

        width = encoder.hidden_size if encoder is not None else RepaFeatureStore(repa_features_dir(cfg)).dim
        side = data.model_size // model.config.patch_size
        projector = build_projector(cfg.repa_projector, model.config.hidden_size, width,
                                    projector_dim=cfg.repa_projector_dim, kernel_size=cfg.repa_projector_kernel,
                                    grid=(side, side), generator=torch.Generator().manual_seed(cfg.seed))
        projector = projector.to(device).train()
        zscore = cfg.repa_zscore_alpha if cfg.repa_spatial_norm == "zscore" else None
        repa = Repa(encoder, projector, cfg.repa_depth, cfg.repa_coeff, cfg.repa_stop_step, (side, side), zscore)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.attention_backend is not None:  # training only: the saved pipeline keeps the model's default
        set_model_attention_backend(model, cfg.attention_backend)
    if cfg.compile == "full":
        model.compile()  # in place: the state dict keys stay those of the plain model
    elif cfg.compile == "regional":
        model.compile_repeated_blocks()  # each SiTBlock: one compiled graph reused for every block
    model.train()  # the label dropout coin is ours (force_drop_ids); else only LoRA's dropout differs
    objective = build_objective(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]  # every weight, or the adapters
    projector_params = list(repa.projector.parameters()) if repa is not None else []
    if not fsdp:
        model.to(device)
    optimizer, adamw = make_optimizer(cfg, trainable + projector_params, device)
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_train_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if fsdp:  # the EMA is sharded like the model, so the update below stays shard-local
        ema_model = accelerator.prepare(ema_model)
    else:
        ema_model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    ema_params = list(ema_model.parameters())  # the SiT's only: the projector is not averaged (as REPA)
    saved_model = model if repa is None else _WithProjector(unwrap_model(accelerator, model), repa.projector)
    parts = Trainables(saved_model, ema_model, optimizer, lr_scheduler, fsdp, lora=lora, base_model=base_model)

    # ---- resume (model, EMA, optimiser, LR schedule, loss scaler, RNG states; the data position is the step)
    torch.manual_seed(cfg.seed * accelerator.num_processes + accelerator.process_index)  # per-process seed
    start_step = 0
    last_checkpoint = None
    if resume is not None:
        start_step = load_checkpoint(resume, accelerator, parts)
        last_checkpoint = resume.name
        logger.info("resumed from %s at step %d", resume, start_step)

    if accelerator.is_main_process:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        record_start(cfg, start_step, accelerator)
    if cfg.report_to != "none":
        accelerator.init_trackers(cfg.tracker_project_name, config={
            k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in cfg.to_dict().items()})
    n_params = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    logger.info("SiT parameters: %s (trained: %s); examples: %s; processes: %d; micro-batch: %d; AdamW: %s; "
                "compile: %s; attention: %s", f"{n_params:,}", f"{sum(p.numel() for p in params):,}",
                data.num_examples, accelerator.num_processes,
                cfg.global_batch_size // (accelerator.num_processes * cfg.gradient_accumulation_steps), adamw,
                cfg.compile, cfg.attention_backend or "the model's default")
    if repa is not None:
        logger.info("REPA: block %d of %d -> %s projector (%s parameters) -> %s (width %d, %s, targets %s), coeff "
                    "%s, until step %s", repa.depth, model_config["depth"], cfg.repa_projector,
                    f"{sum(p.numel() for p in projector_params):,}", cfg.repa_encoder, repa.projector.encoder_dim,
                    "on the fly" if repa.encoder is not None else f"precomputed in {repa_features_dir(cfg)}",
                    "raw" if repa.zscore_alpha is None else f"spatially z-scored, alpha {repa.zscore_alpha}",
                    cfg.repa_coeff, cfg.repa_stop_step or "the end")

    # ---- loop
    decode_vae = vae  # what sample grids and the final pipeline decode with (loaded once, main process)
    if vae is None and accelerator.is_main_process and (cfg.sample_every or (cfg.save_pipeline and not lora)):
        decode_vae = _vae_for_pipeline(cfg, data, device)
    batches = make_batches(cfg, data, accelerator, start_step)
    shape = (data.model_channels, data.model_size, data.model_size)
    draws = StepDraws(cfg, objective, shape, posterior=data.kind == "moments" or vae is not None, device=device)
    accum = cfg.gradient_accumulation_steps
    check_grad = accelerator.scaler is None  # fp16: an inf gradient is an overflow the loss scaler skips
    running_loss = torch.zeros((), device=device)
    running_align = torch.zeros((), device=device)
    log_steps, tic = 0, time.perf_counter()
    from tqdm.auto import tqdm

    progress = tqdm(range(start_step, cfg.max_train_steps), initial=start_step, total=cfg.max_train_steps,
                    disable=not accelerator.is_local_main_process, desc="steps")
    for step in progress:
        aligning = repa is not None and repa.active(step)
        if aligning:
            repa.attach(model)
        elif repa is not None and (repa.capture is not None or repa.encoder is not None):
            repa.stop()  # from here on: the plain forward, no encoder, no projector gradient
            logger.info("REPA stopped after step %d (--repa_stop_step)", step)
        step_loss = torch.zeros((), device=device)
        step_align = torch.zeros((), device=device)
        for micro in range(accum):  # gradients are all-reduced on the last micro-step only
            batch = next(batches)
            with contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model):
                loss = micro_batch_loss(cfg, objective, model, batch, vae, shape, device, draws)
                total = loss
                if aligning:
                    align = repa.loss(accelerator, batch)
                    total = loss + repa.coeff * align
                    step_align += align.detach() / accum
                accelerator.backward(total / accum)
            step_loss += loss.detach() / accum
        if aligning:
            _allreduce_grads(accelerator, projector_params)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
        grad_norm = accelerator.clip_grad_norm_(params + projector_params, max_norm)
        done = step + 1
        # One sync per step: stop before a NaN/inf step touches the weights, the EMA or a checkpoint.
        grad_bad = (~torch.isfinite(torch.as_tensor(grad_norm, device=device)) if check_grad and grad_norm is not None
                    else torch.zeros((), dtype=torch.bool, device=device))
        bad = torch.stack([~torch.isfinite(step_loss), grad_bad, ~torch.isfinite(step_align)]).float()  # (3,)
        if accelerator.num_processes > 1:
            bad = accelerator.reduce(bad, reduction="sum")  # the same decision on every process
        if bool(bad.any()):
            raise _nonfinite_error(cfg, done, float(step_loss), None if grad_norm is None else float(grad_norm),
                                   last_checkpoint, what=["REPA loss"] if bool(bad[2]) else None)
        try:
            optimizer.step()
        except RuntimeError as err:  # AdamW's step size lr / (1 - beta1^t) beyond float32: a huge learning rate
            if "overflow" not in str(err):
                raise
            raise _nonfinite_error(cfg, done, float(step_loss), None if grad_norm is None else float(grad_norm),
                                   last_checkpoint, what=["AdamW step size (beyond float32)"]) from err
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        update_ema(ema_params, params, cfg.ema_decay)
        running_loss += step_loss
        running_align += step_align
        log_steps += 1

        if done % cfg.log_every == 0 or done == cfg.max_train_steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - tic
            avg_loss = accelerator.reduce(running_loss / log_steps, reduction="mean").item()
            logs = {"loss": avg_loss, "grad_norm": float(grad_norm), "lr": lr_scheduler.get_last_lr()[0],
                    "images_per_sec": log_steps * cfg.global_batch_size / elapsed}
            postfix = {"loss": f"{avg_loss:.4f}"}
            if repa is not None:  # the mean over the logged steps that aligned (0 after the stop step)
                logs["repa_loss"] = accelerator.reduce(running_align / log_steps, reduction="mean").item()
                logs["loss_total"] = avg_loss + cfg.repa_coeff * logs["repa_loss"]
                postfix["repa"] = f"{logs['repa_loss']:.4f}"
            accelerator.log(logs, step=done)
            progress.set_postfix(**postfix, img_s=f"{logs['images_per_sec']:.1f}")
            logger.debug("step %d: %s", done, logs)
            running_loss.zero_()
            running_align.zero_()
            log_steps, tic = 0, time.perf_counter()
        if done % cfg.checkpointing_steps == 0 or done == cfg.max_train_steps:
            last_checkpoint = save_checkpoint(cfg, accelerator, done, parts).name
        if cfg.sample_every and done % cfg.sample_every == 0 and not fsdp:
            if accelerator.is_main_process and lora:
                with ema_model.applied(unwrap_model(accelerator, model)) as net:
                    log_samples(cfg, accelerator, net, decode_vae, done)
            elif accelerator.is_main_process:
                log_samples(cfg, accelerator, ema_model, decode_vae, done)
            accelerator.wait_for_everyone()

    # ---- final pipeline (EMA weights), or the LoRA (EMA adapters)
    final_step = max(start_step, cfg.max_train_steps)
    source = cfg.latents_dir or cfg.train_data_dir or (cfg.dataset_name if dataset is None else "an in-memory dataset")
    if cfg.save_pipeline and lora:
        if accelerator.is_main_process:
            out = save_lora(cfg, unwrap_model(accelerator, model), ema_model, final_step, str(source))
            logger.info("saved the LoRA to %s", out)
    elif cfg.save_pipeline:
        ema_state = accelerator.get_state_dict(ema_model) if fsdp else ema_model.state_dict()
        if accelerator.is_main_process:
            out = save_pipeline(cfg, {k: v.cpu() for k, v in ema_state.items()}, model_config, decode_vae,
                                data.id2label, final_step, str(source))
            logger.info("saved the pipeline to %s", out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return Path(cfg.output_dir)


def _vae_for_pipeline(cfg: TrainConfig, data: DataSource, device: torch.device) -> Any | None:
    """The VAE the pipeline decodes with: none in pixel space, else the one the latents came from."""
    if data.kind == "moments" and data.vae_name is not None:
        vae = load_vae(data.vae_name, cfg.vae_subfolder, device)
        set_vae_scaling(vae, cfg.vae_scaling_factor)
        return vae
    return None


def _cli(argv: list[str]) -> None:
    train(parse_config(argv, prog=PROG))


def main(argv: list[str] | None = None) -> int:
    """CLI entry: parse the config (file + flags) and train. Bad input: one line on stderr and exit status 2
    (``--debug`` shows the traceback); a NaN/inf step: status 1."""
    return run_cli(PROG, _cli, argv, user_errors=(ConfigError, DataError, CheckpointWriteError))


if __name__ == "__main__":
    raise SystemExit(main())
