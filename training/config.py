"""Typed training configuration for ``train_sit.py``: one dataclass, a YAML/JSON file, CLI overrides.

Precedence: dataclass defaults < ``--config file.yaml`` < ``--flag value`` on the command line. Every
field is a flag of the same name (``--global_batch_size 256``); booleans take ``--flag`` / ``--no-flag``;
optional fields accept ``none``; ``dict`` fields take JSON (``--model_overrides '{"depth": 2}'``); ``list``
fields take comma-separated names or a JSON list (``--lora_target_modules to_qkv,to_out``).
Unknown keys in the file and unknown flags are errors (with the closest valid name), never ignored; every
value is checked when the config is built (ranges, finiteness), before any data is read.

The defaults reproduce the paper's SiT-XL/2 ImageNet 256x256 recipe (Ma et al. 2024, arXiv 2401.08740,
official ``train.py``): global batch 256, AdamW lr 1e-4, weight decay 0, constant LR, no gradient
clipping, EMA decay 0.9999, label dropout 0.1, Linear path with velocity prediction, ADM center crop plus
random horizontal flip, latents of ``stabilityai/sd-vae-ft-ema`` scaled by 0.18215.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import json
import math
import os
import sys
import textwrap
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from sit_diffusers.validation import CLIParser, InputError

__all__ = ["TrainConfig", "ConfigError", "parse_config", "config_from_dict", "RESUME_FREE_FIELDS", "config_changes"]


C = TypeVar("C")

DEFAULT_LORA_TARGET_MODULES: tuple[str, ...] = ("to_qkv", "to_out", "ff.linear_1", "ff.linear_2")
"""The attention and MLP projections of every SiT block (``sit_diffusers.lora.DEFAULT_TARGET_MODULES``, kept
here so that the config imports no torch / peft)."""

LORA_EMA_MAX_START = 0.1
"""The most that the zero-update start of the adapters may weigh in their EMA at the end of a LoRA run
(``ema_decay ** max_train_steps``)."""

MAX_SEED = 2**32 - 1
"""Largest ``seed``: per-process seeds are ``seed * processes + rank``, which must stay below 2**64."""


class ConfigError(InputError):
    """A configuration that cannot be used: unknown key, wrong type, or inconsistent values."""


def default_num_workers() -> int:
    """DataLoader workers by default: ``min(4, CPU count)`` (0, the main process, on a 1-CPU machine)."""
    cpus = os.cpu_count() or 1
    return min(4, cpus) if cpus > 1 else 0


@dataclass
class TrainConfig:
    """Train SiT (Ma et al. 2024) with Accelerate. Every field below is a flag of the same name; defaults
    are the paper's SiT-XL/2 ImageNet 256x256 recipe."""

    # ---------------------------------------------------------------- model
    model: str = "SiT-XL/2"
    """Named architecture from ``sit_diffusers.modeling_sit.SIT_CONFIGS`` (SiT-{S,B,L,XL}/{2,4,8})."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """JSON object of ``SiTTransformer2DModel`` arguments over the named config, e.g. '{"depth": 2}'."""
    resolution: int = 256
    """Image side in pixels after the ADM center crop."""
    num_classes: int = 1000
    """Number of classes; dataset labels must lie in [0, num_classes)."""
    class_dropout_prob: float = 0.1
    """Label dropout to the null class, for classifier-free guidance; in [0, 1)."""
    learn_sigma: bool = True
    """Keep the unused learned-sigma output half, as the official checkpoints (layout compatibility)."""

    # ----------------------------------------------------- fine-tuning, LoRA
    pretrained_model_name_or_path: str | None = None
    """A saved SiTPipeline folder or Hub repo id whose transformer training starts from (fine-tuning); its
    architecture must be --model / --model_overrides, --num_classes, --resolution, --learn_sigma. none: train
    from a fresh initialisation."""
    lora_rank: int | None = None
    """Train only LoRA adapters of this rank (>= 1) on --lora_target_modules of the pretrained transformer
    (base frozen; needs --pretrained_model_name_or_path); saved in output_dir/lora. none: train every weight."""
    lora_alpha: float | None = None
    """LoRA scale numerator (> 0): the update is (lora_alpha / lora_rank) B A; none = lora_rank (scale 1)."""
    lora_dropout: float = 0.0
    """Dropout on the input of the LoRA branch during training, in [0, 1)."""
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGET_MODULES))
    """Linear layers that get adapters, comma-separated (peft names: a module name or its end after a dot);
    default: the attention qkv / output and MLP projections of every block."""

    # ------------------------------------------------------------ objective
    path_type: Literal["linear", "gvp", "vp"] = "linear"
    """Interpolant path between noise (t=0) and data (t=1)."""
    prediction: Literal["velocity", "score", "noise"] = "velocity"
    """What the network is trained to predict."""
    loss_weight: Literal["velocity", "likelihood"] | None = None
    """Loss weighting for score/noise models; none for the plain loss."""
    train_eps: float | None = None
    """Time-interval trim for training, in [0, 0.5); none = the objective's default for path/prediction."""
    sample_eps: float | None = None
    """Time-interval trim for sampling, in [0, 0.5); none = the objective's default."""
    time_sampling: Literal["continuous", "discrete"] = "continuous"
    """How training times t are drawn."""
    num_train_timesteps: int = 1000
    """Grid size for time_sampling discrete."""

    # ----------------------------------------------------------------- data
    dataset_name: str | None = "ILSVRC/imagenet-1k"
    """Hub dataset id (ignored when train_data_dir or latents_dir is set)."""
    dataset_config_name: str | None = None
    """Configuration name of the Hub dataset."""
    dataset_split: str = "train"
    """Split to train on."""
    train_data_dir: str | None = None
    """A local folder read with the imagefolder builder (class_name/xxx.png)."""
    latents_dir: str | None = None
    """Precomputed VAE latents from precompute_latents.py; the VAE is then not run during training."""
    streaming: bool = False
    """Stream the dataset instead of downloading it (shuffle buffer; see docs/training.md)."""
    shuffle_buffer_size: int = 10_000
    """Shuffle buffer of --streaming, in examples (>= 1)."""
    image_column: str = "image"
    """Dataset column holding the images."""
    label_column: str = "label"
    """Dataset column holding the integer class labels."""
    random_flip: bool = True
    """Random horizontal flip (a seeded coin per sample)."""
    cache_dir: str | None = None
    """Where datasets/hub downloads are cached (none = their default)."""
    dataloader_num_workers: int = field(default_factory=default_num_workers)
    """DataLoader worker processes (>= 0; 0 reads in the main process); default min(4, CPU count)."""
    max_train_samples: int | None = None
    """Use only the first N examples (>= 1; debugging, ablations on subsets)."""

    # ------------------------------------------------------------------ VAE
    vae: str | None = "stabilityai/sd-vae-ft-ema"
    """Hub id or local folder of an AutoencoderKL; none trains in pixel space."""
    vae_subfolder: str | None = None
    """Subfolder of --vae holding the AutoencoderKL (e.g. vae for a full pipeline repo)."""
    vae_scaling_factor: float = 0.18215
    """Latents are multiplied by it (> 0)."""
    image_channels: int = 3
    """Channels read from each image: 3 (RGB) or 1 (grayscale, pixel space only)."""

    # ---------------------------------------------------------- optimisation
    global_batch_size: int = 256
    """Images per optimiser step summed over processes and accumulation micro-steps."""
    gradient_accumulation_steps: int = 1
    """Micro-steps per optimiser step (global_batch_size must be divisible by processes x this)."""
    max_train_steps: int = 400_000
    """Optimiser steps in total (a resumed run continues up to it)."""
    learning_rate: float = 1e-4
    """AdamW learning rate (> 0)."""
    adam_beta1: float = 0.9
    """AdamW beta1, in [0, 1)."""
    adam_beta2: float = 0.999
    """AdamW beta2, in [0, 1)."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon (> 0)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (>= 0)."""
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    """Learning-rate schedule (diffusers get_scheduler)."""
    lr_warmup_steps: int = 0
    """Warmup steps of the schedule, in [0, max_train_steps]."""
    max_grad_norm: float | None = None
    """Clip the global gradient norm to this (> 0; none = no clipping, as the paper); logged either way."""
    ema_decay: float = 0.9999
    """EMA decay per step, in [0, 1] (with --lora_rank: of the adapter weights only; 0 = no averaging)."""
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    """None takes the value of accelerate launch / its config file."""
    allow_tf32: bool = True
    """Allow TF32 matmuls on Ampere+ GPUs."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more compute; same result)."""
    compile: Literal["none", "full", "regional"] = "none"
    """torch.compile the transformer: full (the whole forward, one graph) or regional (each SiT block, compiled
    once and reused: faster to warm up); none runs eagerly. Same weights and draws either way."""
    attention_backend: str | None = None
    """diffusers attention backend of the transformer while it trains (set_attention_backend), e.g. _native_math;
    none = the model's default (native: torch SDPA picks its kernel). A speed choice: the same attention up to
    float rounding. On CPU with bf16 and short token grids (the digits model's 49 tokens) SDPA's flash
    backward is slow and _native_math trains ~1.3-1.6x faster (docs/training.md#speed)."""
    random_draws: Literal["per-step"] = "per-step"
    """How each step's randomness is drawn: per-step = one generator per (seed, optimiser step, stream) draws the
    whole global batch's posterior eps, noise, times and label drops, and every micro-batch takes its rows
    (docs/training.md#determinism). Checkpoints written before it (per-sample generators) lack this field and
    resume only with --allow_config_change, continuing with these draws."""
    seed: int = 0
    """Seed of the run, in [0, 2**32 - 1]: weights init, data order, every random draw."""

    # ------------------------------------------------------------------ REPA
    repa_encoder: str | None = None
    """REPA (Yu et al. 2024): a transformers vision backbone (Hub id or local folder, loaded with AutoModel) whose
    patch features the hidden state after block --repa_depth is aligned to; none = plain SiT training."""
    repa_depth: int = 8
    """REPA: align the output of this SiT block (1-based, <= the model's depth; the paper: 8 of SiT-XL's 28)."""
    repa_coeff: float = 0.5
    """REPA: weight lambda of the alignment loss added to the SiT loss (> 0)."""
    repa_projector_dim: int = 2048
    """REPA: hidden width of the MLP projector (Linear-SiLU-Linear-SiLU-Linear) from the SiT width to the
    encoder's (>= 1)."""
    repa_projector: Literal["mlp", "conv"] = "mlp"
    """REPA: the projector: mlp (the paper's token-wise MLP, width --repa_projector_dim) or conv (iREPA, Singh et
    al. 2025: one --repa_projector_kernel convolution on the SiT's token grid)."""
    repa_projector_kernel: int = 3
    """REPA: kernel size of the conv projector (odd, 1..7; iREPA's 3)."""
    repa_spatial_norm: Literal["none", "zscore"] = "none"
    """REPA: normalisation of the encoder's patch features: none (REPA) or zscore (iREPA: each channel standardised
    across the image's tokens after removing --repa_zscore_alpha times its mean)."""
    repa_zscore_alpha: float = 0.6
    """REPA: share of the token mean the zscore normalisation removes, in [0, 1] (iREPA's SiT default 0.6)."""
    repa_stop_step: int | None = None
    """REPA: optimiser step after which the alignment term and its cost are gone (HASTE; >= 1); none = never."""
    repa_features_dir: str | None = None
    """REPA: encoder features precomputed by precompute_latents.py --repa_encoder (repa.json), read instead of
    running the encoder; none = --latents_dir when it holds them, else the encoder runs on the images."""

    # --------------------------------------------------------------- outputs
    output_dir: str = "sit-output"
    """Run folder: checkpoints/, logs/, config.json, pipeline/ (lora/ with --lora_rank)."""
    report_to: Literal["tensorboard", "wandb", "all", "none"] = "tensorboard"
    """Tracker for loss, grad norm, lr, throughput and sample grids."""
    tracker_project_name: str = "sit-diffusers"
    """Project name given to the tracker."""
    log_every: int = 100
    """Log the metrics every this many steps (>= 1)."""
    checkpointing_steps: int = 5_000
    """Save a resumable checkpoint every this many steps (>= 1) and at the end."""
    checkpoints_total_limit: int | None = 3
    """Keep only the newest N checkpoints (>= 1; none keeps all)."""
    resume_from_checkpoint: str | None = None
    """latest, a checkpoint-XXXXXXX folder name under output_dir/checkpoints, or a path."""
    allow_config_change: bool = False
    """Resume even though model/objective/data/optimiser/seed/batch settings differ from the checkpoint's."""
    sample_every: int = 10_000
    """Every this many steps, log an EMA sample grid (>= 0; 0 disables)."""
    num_sample_images: int = 16
    """Images in each sample grid (>= 1)."""
    sample_guidance_scale: float = 4.0
    """Classifier-free guidance scale of the sample grids (>= 0; 1 = no guidance)."""
    sample_preset: str = "ode-euler"
    """Sampler preset of the grids and the saved pipeline (sit_diffusers.scheduling_sit.SAMPLER_PRESETS)."""
    sample_num_inference_steps: int = 50
    """Sampler steps of the sample grids (>= 1)."""
    save_pipeline: bool = True
    """At the end, save a full SiTPipeline folder (EMA weights) in output_dir/pipeline; with --lora_rank, the
    EMA adapter in diffusers' LoRA format in output_dir/lora instead."""
    push_to_hub: bool = False
    """Upload the final pipeline (or LoRA) to the Hub (needs --hub_model_id)."""
    hub_model_id: str | None = None
    """Hub repo id (user/name) for --push_to_hub."""

    # ------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        """Every value on its own (ranges, finiteness); checks that need the model registry, the VAE or the
        data are in ``train_sit.check_config`` / ``build_data``."""
        for name in ("resolution", "global_batch_size", "gradient_accumulation_steps", "max_train_steps",
                     "log_every", "checkpointing_steps", "num_train_timesteps", "num_classes",
                     "shuffle_buffer_size", "num_sample_images", "sample_num_inference_steps"):
            _check(_int_at_least, self, name, 1)
        for name in ("dataloader_num_workers", "sample_every", "lr_warmup_steps"):
            _check(_int_at_least, self, name, 0)
        for name in ("max_train_samples", "checkpoints_total_limit"):
            if getattr(self, name) is not None:
                _check(_int_at_least, self, name, 1)
        _check(_int_at_least, self, "seed", 0)
        if self.seed > MAX_SEED:
            raise ConfigError(f"--seed must be <= 2**32 - 1 = {MAX_SEED}, got {self.seed}")
        if self.lr_warmup_steps > self.max_train_steps:
            raise ConfigError(f"--lr_warmup_steps must be <= --max_train_steps ({self.max_train_steps}), "
                              f"got {self.lr_warmup_steps}")
        for name in ("learning_rate", "adam_epsilon", "vae_scaling_factor"):
            _check(_float_in, self, name, 0.0, None, False)
        if self.max_grad_norm is not None:
            _check(_float_in, self, "max_grad_norm", 0.0, None, False)
        for name in ("weight_decay", "sample_guidance_scale"):
            _check(_float_in, self, name, 0.0, None, True)
        for name in ("adam_beta1", "adam_beta2", "class_dropout_prob"):
            _check(_float_in, self, name, 0.0, 1.0, True, False)
        _check(_float_in, self, "ema_decay", 0.0, 1.0, True, True)
        for name in ("train_eps", "sample_eps"):
            if getattr(self, name) is not None:
                _check(_float_in, self, name, 0.0, 0.5, True, False)
        for name in ("output_dir", "image_column", "label_column", "dataset_split", "model", "sample_preset"):
            if not getattr(self, name).strip():
                raise ConfigError(f"--{name} must not be empty")
        if self.image_channels not in (1, 3):
            raise ConfigError(f"--image_channels must be 1 or 3, got {self.image_channels}")
        if self.image_channels == 1 and self.vae is not None and self.latents_dir is None:
            raise ConfigError("--image_channels 1 needs pixel-space training: set --vae none")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("--push_to_hub needs --hub_model_id (user/name)")
        if self.streaming and self.latents_dir is not None:
            raise ConfigError("--streaming reads images; --latents_dir is a local map-style folder: use one")
        if self.attention_backend is not None and not self.attention_backend.strip():
            raise ConfigError("--attention_backend must not be empty (a diffusers backend name; none = the model's "
                              "default)")
        self._check_lora()
        self._check_repa()

    def _check_repa(self) -> None:
        """The REPA flags on their own (the encoder, the depth against the model and the features folder:
        ``train_sit.check_repa``)."""
        if self.repa_encoder is None:
            unused = [flag for flag, given in (
                ("--repa_depth", self.repa_depth != 8), ("--repa_coeff", self.repa_coeff != 0.5),
                ("--repa_projector_dim", self.repa_projector_dim != 2048),
                ("--repa_projector", self.repa_projector != "mlp"),
                ("--repa_projector_kernel", self.repa_projector_kernel != 3),
                ("--repa_spatial_norm", self.repa_spatial_norm != "none"),
                ("--repa_zscore_alpha", self.repa_zscore_alpha != 0.6),
                ("--repa_stop_step", self.repa_stop_step is not None),
                ("--repa_features_dir", self.repa_features_dir is not None)) if given]
            if unused:
                raise ConfigError(f"{', '.join(unused)} set without --repa_encoder: they configure REPA; pass "
                                  "--repa_encoder (a transformers vision model) or drop them")
            return
        if not self.repa_encoder.strip():
            raise ConfigError("--repa_encoder must not be empty (a Hub id or a folder; none turns REPA off)")
        if self.repa_features_dir is not None and not self.repa_features_dir.strip():
            raise ConfigError("--repa_features_dir must not be empty")
        for name in ("repa_depth", "repa_projector_dim"):
            _check(_int_at_least, self, name, 1)
        if self.repa_stop_step is not None:
            _check(_int_at_least, self, "repa_stop_step", 1)
        _check(_float_in, self, "repa_coeff", 0.0, None, False)
        _check(_float_in, self, "repa_zscore_alpha", 0.0, 1.0, True)
        if self.repa_projector == "conv":
            _check(_int_at_least, self, "repa_projector_kernel", 1)
            if self.repa_projector_kernel % 2 == 0 or self.repa_projector_kernel > 7:
                raise ConfigError(f"--repa_projector_kernel must be odd and at most 7 (same padding keeps the token "
                                  f"grid), got {self.repa_projector_kernel}")
            if self.repa_projector_dim != 2048:
                raise ConfigError("--repa_projector_dim sets the MLP's width; --repa_projector conv has none: drop one")
        elif self.repa_projector_kernel != 3:
            raise ConfigError("--repa_projector_kernel sets the conv projector; pass --repa_projector conv or drop it")
        if self.repa_spatial_norm != "zscore" and self.repa_zscore_alpha != 0.6:
            raise ConfigError("--repa_zscore_alpha sets the zscore normalisation; pass --repa_spatial_norm zscore or "
                              "drop it")
        if self.lora_rank is not None:
            raise ConfigError(f"--repa_encoder with --lora_rank {self.lora_rank} is not supported (REPA trains the "
                              "SiT's hidden states; LoRA keeps the base frozen): use one")
        if self.streaming and self.repa_features_dir is not None:
            raise ConfigError("--repa_features_dir rows follow a map-style dataset; --streaming has none: drop one "
                              "(streaming runs the encoder on the images)")

    def _check_lora(self) -> None:
        """The fine-tuning and LoRA flags on their own and together (the pretrained model itself:
        ``train_sit.check_pretrained``)."""
        if self.pretrained_model_name_or_path is not None and not self.pretrained_model_name_or_path.strip():
            raise ConfigError("--pretrained_model_name_or_path must not be empty")
        if self.lora_rank is None:
            unused = [flag for flag, given in (
                ("--lora_alpha", self.lora_alpha is not None), ("--lora_dropout", self.lora_dropout != 0.0),
                ("--lora_target_modules", self.lora_target_modules != list(DEFAULT_LORA_TARGET_MODULES)))
                if given]
            if unused:
                raise ConfigError(f"{', '.join(unused)} set without --lora_rank: they configure LoRA adapters; pass "
                                  "--lora_rank R (with --pretrained_model_name_or_path) or drop them")
            return
        _check(_int_at_least, self, "lora_rank", 1)
        if self.lora_alpha is not None:
            _check(_float_in, self, "lora_alpha", 0.0, None, False)
        _check(_float_in, self, "lora_dropout", 0.0, 1.0, True, False)
        if not self.lora_target_modules:
            raise ConfigError("--lora_target_modules must name at least one module")
        if self.pretrained_model_name_or_path is None:
            raise ConfigError(f"--lora_rank {self.lora_rank} trains adapters on a pretrained transformer: give "
                              "--pretrained_model_name_or_path (a saved SiTPipeline folder or Hub repo id)")
        # The saved adapter is the EMA of the adapters, which starts at their zero update (B = 0): a decay that
        # still weighs that start by more than LORA_EMA_MAX_START at the end would save a silently weak LoRA.
        start = self.ema_decay ** self.max_train_steps
        if start > LORA_EMA_MAX_START:
            ceiling = math.floor(LORA_EMA_MAX_START ** (1.0 / self.max_train_steps) * 1e4) / 1e4
            raise ConfigError(
                f"--ema_decay {self.ema_decay} over --max_train_steps {self.max_train_steps}: the EMA of the LoRA "
                f"adapters (what is saved) would still weigh their zero initial update by {start:.0%}, so the saved "
                f"LoRA would act at a fraction of its strength; pass --ema_decay <= {ceiling:g} (at most "
                f"{LORA_EMA_MAX_START:.0%} of the start left), or 0 to save the trained adapters without averaging")

    # -------------------------------------------------------------- helpers
    @property
    def pixel_space(self) -> bool:
        """True when the model sees images directly (no VAE, no latents)."""
        return self.vae is None and self.latents_dir is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (for checkpoints, trackers and model cards)."""
        return dataclasses.asdict(self)


def _int_at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"--{name} must be >= {minimum}, got {value}")


def _float_in(name: str, value: float, low: float | None, high: float | None, low_in: bool = True,
              high_in: bool = True) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"--{name} must be a finite number, got {value}")
    if low is not None and (value < low or (value == low and not low_in)):
        raise ConfigError(f"--{name} must be {'>=' if low_in else '>'} {low:g}, got {value}")
    if high is not None and (value > high or (value == high and not high_in)):
        raise ConfigError(f"--{name} must be {'<=' if high_in else '<'} {high:g}, got {value}")


def _check(rule: Any, cfg: Any, name: str, *bounds: Any) -> None:
    rule(name, getattr(cfg, name), *bounds)


# ---------------------------------------------------------------------------
# Resume: which fields may differ from the checkpoint's
# ---------------------------------------------------------------------------

RESUME_FREE_FIELDS = frozenset({
    # where and how often things are written or logged
    "output_dir", "resume_from_checkpoint", "allow_config_change", "log_every", "checkpointing_steps",
    "checkpoints_total_limit", "report_to", "tracker_project_name", "sample_every", "num_sample_images",
    "sample_guidance_scale", "sample_preset", "sample_num_inference_steps", "save_pipeline", "push_to_hub",
    "hub_model_id",
    # how long (see config_changes for schedules that depend on it)
    "max_train_steps",
    # speed and memory only: the same samples, draws and updates
    "dataloader_num_workers", "cache_dir", "gradient_checkpointing", "compile", "attention_backend",
    "allow_tf32",
    "gradient_accumulation_steps",
})
"""Fields a resumed run may change freely. Every other field (model, objective, data, VAE, optimiser, EMA,
precision, seed, global batch) must match the checkpoint unless ``--allow_config_change``."""

LEGACY_VALUES: dict[str, Any] = {"random_draws": "per-sample"}
"""What a checkpoint's config that lacks these fields was trained with (instead of today's default):
``random_draws`` came with the per-step draws; before, every sample had its own generator."""


def config_changes(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """``--name: saved -> now`` for each guarded field where ``cfg`` differs from a checkpoint's ``saved``.

    ``max_train_steps`` is guarded when the LR schedule depends on it (linear, cosine)."""
    now = cfg.to_dict()
    guarded = set(now) - RESUME_FREE_FIELDS
    if cfg.lr_scheduler in ("linear", "cosine") or saved.get("lr_scheduler") in ("linear", "cosine"):
        guarded.add("max_train_steps")
    defaults = {f.name: _default_value(f) for f in dataclasses.fields(TrainConfig)} | LEGACY_VALUES
    changes = []
    for name in sorted(guarded):
        old = saved.get(name, defaults[name])  # a field newer than the checkpoint: its default
        if old != now[name]:
            why = (" (a checkpoint from before the per-step draws: it continues with them only with "
                   "--allow_config_change)" if name == "random_draws" else "")
            changes.append(f"--{name}: {old!r} -> {now[name]!r}{why}")
    return changes


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _convert(cls: type, name: str, value: Any) -> Any:
    """Check/convert one value (from YAML or the CLI) to the type of field ``name`` of ``cls``."""
    tp, optional = _unwrap_optional(_field_types(cls)[name])
    flag = f"--{name}"
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{flag} cannot be none")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{flag} must be one of {list(choices)}, got {value!r}{hint}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{flag} must be a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{flag} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError as err:
            raise ConfigError(f"{flag} must be an integer, got {value!r}") from err
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{flag} must be a number, got {value!r}")
        try:
            number = float(value)
        except ValueError as err:
            raise ConfigError(f"{flag} must be a number, got {value!r}") from err
        if not math.isfinite(number):  # float("nan") and YAML .inf parse: refuse them here
            raise ConfigError(f"{flag} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{flag} must be a string, got {value!r}")
        return str(value)
    if origin is list or tp is list:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{flag} must be a JSON list or comma-separated names, got {value!r}") from err
            else:
                value = [part.strip() for part in text.split(",")]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"{flag} must be a list of non-empty names (comma-separated on the command line), "
                              f"got {value!r}")
        return [v.strip() for v in value]
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{flag} must be a JSON object, got {value!r}") from err
        if not isinstance(value, dict):
            raise ConfigError(f"{flag} must be a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"unsupported type {tp} for {name}")  # pragma: no cover - guards new fields


def _unknown_key_error(cls: type, key: str, where: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(str(key), names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r} in {where}{hint}")


def config_from_dict(values: dict[str, Any], where: str = "config", cls: type[C] = TrainConfig) -> C:
    """Build a ``cls`` config (``TrainConfig`` by default) from a mapping; unknown keys raise."""
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise _unknown_key_error(cls, key, where)
    return cls(**{key: _convert(cls, key, value) for key, value in values.items()})


def _read_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config file {path} does not exist")
    try:
        text = file.read_text()
        if file.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif file.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"--config file must be .yaml, .yml or .json, got {path}")
    except ConfigError:
        raise
    except Exception as err:  # yaml.YAMLError, JSONDecodeError, UnicodeDecodeError, OSError
        raise ConfigError(f"--config file {path} cannot be read: {type(err).__name__}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"--config file {path} must hold a mapping of field: value")
    return data


class _Parser(CLIParser):
    """The shared CLI parser raising ``ConfigError`` (with a close-match hint) instead of exiting."""

    error_class = ConfigError


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (read from its source), one line each."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.replace("``", "").split())
    return docs


def _default_value(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _default_text(f: dataclasses.Field) -> str:
    value = _default_value(f)
    if value is None:
        return "none"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _build_parser(cls: type, prog: str | None = None) -> _Parser:
    docs = field_docs(cls)
    parser = _Parser(
        prog=prog, usage="%(prog)s [--config FILE] [--FIELD VALUE ...] [--debug]",
        description=" ".join((cls.__doc__ or "").split()), allow_abbrev=False, argument_default=argparse.SUPPRESS,
        epilog="Booleans take --FIELD / --no-FIELD; optional fields accept none; precedence: defaults < --config "
               "file < flags.",
    )
    parser.add_argument("--config", metavar="FILE", help=f"YAML or JSON file of {cls.__name__} fields; "
                        "flags given on the command line override it")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its one-line message")
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(_field_types(cls)[f.name])
        text = docs.get(f.name, "")
        if typing.get_origin(tp) is Literal:
            text += f" Choices: {', '.join(map(str, typing.get_args(tp)))}{', none' if optional else ''}."
        text = f"{text} (default: {_default_text(f)})".strip().replace("%", "%%")
        if tp is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(f"--{f.name}", type=str, metavar=f.name.upper(), help=text)
    return parser


def _join_dash_values(cls: type, argv: Sequence[str]) -> list[str]:
    """``--flag -1e-4`` -> ``--flag=-1e-4``: argparse takes a value starting with ``-`` that is not a plain
    negative number (``-1e-4``, ``-inf``) for a flag, and the bad value would go unnamed."""
    valued = {"--config"} | {f"--{f.name}" for f in dataclasses.fields(cls)
                             if _unwrap_optional(_field_types(cls)[f.name])[0] is not bool}
    out: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in valued and i + 1 < len(tokens) and tokens[i + 1].startswith("-") \
                and not tokens[i + 1].startswith("--"):
            out.append(f"{token}={tokens[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def parse_config(argv: Sequence[str] | None = None, cls: type[C] = TrainConfig, prog: str | None = None) -> C:
    """Parse ``argv`` (``sys.argv[1:]`` by default): optional ``--config FILE`` then field overrides.

    ``--debug`` is accepted (and ignored here) for ``sit_diffusers.validation.run_cli``; ``--help`` prints
    every flag with its default and exits."""
    parser = _build_parser(cls, prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(_join_dash_values(cls, argv))
    if extra:
        flag = extra[0].split("=")[0]
        names = [f"--{f.name}" for f in dataclasses.fields(cls)]
        close = difflib.get_close_matches(flag, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unrecognized arguments: {' '.join(extra)}{hint}")
    cli = vars(args)
    cli.pop("debug", None)
    values = _read_config_file(cli.pop("config")) if "config" in cli else {}
    where = "config file"
    for key in values:
        if key not in {f.name for f in dataclasses.fields(cls)}:
            raise _unknown_key_error(cls, key, where)
    values.update(cli)
    return config_from_dict(values, where="command line", cls=cls)
