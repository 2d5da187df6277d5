"""Typed training configuration for ``train_sit.py``: one dataclass, a YAML/JSON file, CLI overrides.

Precedence: dataclass defaults < ``--config file.yaml`` < ``--flag value`` on the command line. Every
field is a flag of the same name (``--global_batch_size 256``); booleans take ``--flag`` / ``--no-flag``;
optional fields accept ``none``; ``dict`` fields take JSON (``--model_overrides '{"depth": 2}'``).
Unknown keys in the file and unknown flags are errors (with the closest valid name), never ignored.

The defaults reproduce the paper's SiT-XL/2 ImageNet 256x256 recipe (Ma et al. 2024, arXiv 2401.08740,
official ``train.py``): global batch 256, AdamW lr 1e-4, weight decay 0, constant LR, no gradient
clipping, EMA decay 0.9999, label dropout 0.1, Linear path with velocity prediction, ADM center crop plus
random horizontal flip, latents of ``stabilityai/sd-vae-ft-ema`` scaled by 0.18215.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

__all__ = ["TrainConfig", "ConfigError", "parse_config", "config_from_dict"]


C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration that cannot be used: unknown key, wrong type, or inconsistent values."""


@dataclass
class TrainConfig:
    """Everything ``train_sit.py`` reads. Field names are the CLI flags."""

    # ---------------------------------------------------------------- model
    model: str = "SiT-XL/2"
    """Named architecture from ``sit_diffusers.modeling_sit.SIT_CONFIGS``."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra ``SiTTransformer2DModel`` arguments over the named config (e.g. a tiny model for tests)."""
    resolution: int = 256
    """Image side in pixels after the ADM center crop."""
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    """Label dropout to the null class, for classifier-free guidance."""
    learn_sigma: bool = True
    """Keep the unused learned-sigma output half, as the official checkpoints (layout compatibility)."""

    # ------------------------------------------------------------ objective
    path_type: Literal["linear", "gvp", "vp"] = "linear"
    prediction: Literal["velocity", "score", "noise"] = "velocity"
    loss_weight: Literal["velocity", "likelihood"] | None = None
    train_eps: float | None = None
    """Time-interval trim for training; ``None`` = the objective's default for the path/prediction."""
    sample_eps: float | None = None
    time_sampling: Literal["continuous", "discrete"] = "continuous"
    num_train_timesteps: int = 1000
    """Grid size for ``time_sampling: discrete``."""

    # ----------------------------------------------------------------- data
    dataset_name: str | None = "ILSVRC/imagenet-1k"
    """Hub dataset id (ignored when ``train_data_dir`` or ``latents_dir`` is set)."""
    dataset_config_name: str | None = None
    dataset_split: str = "train"
    train_data_dir: str | None = None
    """A local folder read with the ``imagefolder`` builder (``class_name/xxx.png``)."""
    latents_dir: str | None = None
    """Precomputed VAE latents from ``precompute_latents.py``; the VAE is then not run during training."""
    streaming: bool = False
    """Stream the dataset instead of downloading it (shuffle buffer; see ``docs/training.md``)."""
    shuffle_buffer_size: int = 10_000
    image_column: str = "image"
    label_column: str = "label"
    random_flip: bool = True
    cache_dir: str | None = None
    dataloader_num_workers: int = 4
    max_train_samples: int | None = None
    """Use only the first N examples (debugging, ablations on subsets)."""

    # ------------------------------------------------------------------ VAE
    vae: str | None = "stabilityai/sd-vae-ft-ema"
    """Hub id or local folder of an ``AutoencoderKL``; ``none`` trains in pixel space."""
    vae_subfolder: str | None = None
    vae_scaling_factor: float = 0.18215
    image_channels: int = 3
    """Channels read from each image: 3 (RGB) or 1 (grayscale, pixel space only)."""

    # ---------------------------------------------------------- optimisation
    global_batch_size: int = 256
    """Images per optimiser step summed over processes and accumulation micro-steps."""
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 400_000
    learning_rate: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    lr_warmup_steps: int = 0
    max_grad_norm: float | None = None
    """Clip the global gradient norm (the paper does not clip); the norm is logged either way."""
    ema_decay: float = 0.9999
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    """``None`` takes the value of ``accelerate launch`` / its config file."""
    allow_tf32: bool = True
    gradient_checkpointing: bool = False
    torch_compile: bool = False
    seed: int = 0

    # --------------------------------------------------------------- outputs
    output_dir: str = "sit-output"
    report_to: Literal["tensorboard", "wandb", "all", "none"] = "tensorboard"
    tracker_project_name: str = "sit-diffusers"
    log_every: int = 100
    checkpointing_steps: int = 50_000
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    """``latest`` or a ``checkpoint-XXXXXXX`` folder."""
    sample_every: int = 10_000
    """Every this many steps, log an EMA sample grid (0 disables)."""
    num_sample_images: int = 16
    sample_guidance_scale: float = 4.0
    sample_preset: str = "ode-euler"
    sample_num_inference_steps: int = 50
    save_pipeline: bool = True
    """At the end, save a full ``SiTPipeline`` folder (EMA weights) in ``output_dir/pipeline``."""
    push_to_hub: bool = False
    hub_model_id: str | None = None

    # ------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        positive = ("resolution", "global_batch_size", "gradient_accumulation_steps", "max_train_steps",
                    "log_every", "checkpointing_steps", "num_train_timesteps")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ConfigError(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")
        if self.image_channels not in (1, 3):
            raise ConfigError(f"image_channels must be 1 or 3, got {self.image_channels}")
        if self.image_channels == 1 and self.vae is not None:
            raise ConfigError("image_channels 1 needs pixel-space training: set vae to none")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ConfigError("checkpoints_total_limit must be >= 1 (or none)")
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("push_to_hub needs hub_model_id")

    # -------------------------------------------------------------- helpers
    @property
    def pixel_space(self) -> bool:
        """True when the model sees images directly (no VAE, no latents)."""
        return self.vae is None and self.latents_dir is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (for checkpoints, trackers and model cards)."""
        return dataclasses.asdict(self)


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
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{name} cannot be none")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name} must be a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError as err:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from err
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{name} must be a number, got {value!r}") from err
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return str(value)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{name} must be a JSON object, got {value!r}") from err
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"unsupported type {tp} for {name}")  # pragma: no cover - guards new fields


def _unknown_key_error(cls: type, key: str, where: str) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=3)
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
        raise ConfigError(f"config file {path} does not exist")
    text = file.read_text()
    if file.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    elif file.suffix == ".json":
        data = json.loads(text)
    else:
        raise ConfigError(f"config file must be .yaml, .yml or .json, got {path}")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value")
    return data


class _Parser(argparse.ArgumentParser):
    """argparse that raises ``ConfigError`` (with a close-match hint) instead of exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(message)


def _build_parser(cls: type) -> _Parser:
    parser = _Parser(
        description=cls.__doc__, allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help=f"YAML or JSON file with {cls.__name__} fields")
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(_field_types(cls)[f.name])
        if tp is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(f"--{f.name}", type=str, metavar=f.name.upper())
    return parser


def parse_config(argv: Sequence[str] | None = None, cls: type[C] = TrainConfig) -> C:
    """Parse ``argv`` (``sys.argv[1:]`` by default): optional ``--config FILE`` then field overrides."""
    parser = _build_parser(cls)
    args, extra = parser.parse_known_args(argv)
    if extra:
        flag = extra[0].split("=")[0]
        names = [f"--{f.name}" for f in dataclasses.fields(cls)]
        close = difflib.get_close_matches(flag, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unrecognized arguments: {' '.join(extra)}{hint}")
    cli = vars(args)
    values = _read_config_file(cli.pop("config")) if "config" in cli else {}
    where = "config file"
    for key in values:
        if key not in {f.name for f in dataclasses.fields(cls)}:
            raise _unknown_key_error(cls, key, where)
    values.update(cli)
    return config_from_dict(values, where="command line", cls=cls)
