"""SiT sampling without diffusers: the torch-only half of ``SiTPipeline``, and a pipeline built on it alone.

``import diffusers`` costs ~1.4 s (it imports ``torch._dynamo`` and transformers) and the full
``SiTPipeline`` ~5 s, more than ``sit-generate`` on the embedded digits model may take in all. This module
holds every step of sampling that needs only torch, once, for both pipelines:

* the checks at the door: :func:`check_guidance`, :func:`check_generator`, :func:`check_latents`,
  :func:`check_id2label`, :func:`resolve_num_inference_steps`;
* the initial noise (:func:`sit_diffusers.sampling.randn`, bit for bit diffusers' ``randn_tensor``),
  classifier-free guidance (:func:`guided_model_fn`), the NaN check of the result (:func:`check_sample`) and
  images from ``[-1, 1]`` tensors (:func:`to_images`, what diffusers' ``VaeImageProcessor.postprocess``
  computes);

and :class:`LightPipeline`, which loads a saved pixel-space pipeline folder (``vae`` null, our
transformer and ``SiTSampler``) with torch, safetensors and json only (:class:`~sit_diffusers.network.SiTNetwork`,
:class:`~sit_diffusers.sampling.SamplerCore`) and samples exactly what ``SiTPipeline.from_pretrained(folder)``
samples for the same labels, generators, steps and guidance (tensors equal; ``tests/test_light.py``).
A folder it cannot take (a VAE, other classes or components, unknown keys, missing files) raises
:class:`NotLightError`; ``sit-generate`` then loads the full pipeline, with the same output.

Imports only torch, safetensors, numpy / PIL (for images, on first use) and the package's torch-only modules.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from .labels import IMAGENET_NUM_CLASSES, ClassLabels, LabelResolver, imagenet_id2label, normalize_id2label
from .network import CONFIG_NAME, WEIGHTS_NAME, SiTNetwork
from .remote_code import INDEX_FILE, component_entry, read_model_index
from .sampling import SAMPLER_PRESETS, SamplerCore, randn
from .validation import InputError, check_choice, check_finite_tensor, check_float, check_int

__all__ = [
    "FALLBACK_NUM_INFERENCE_STEPS",
    "MODEL_SAMPLER_KEYS",
    "OUTPUT_TYPES",
    "LightPipeline",
    "LightPipelineOutput",
    "NFECounter",
    "NotLightError",
    "check_generator",
    "check_guidance",
    "check_id2label",
    "check_latents",
    "check_sample",
    "guided_model_fn",
    "resolve_num_inference_steps",
    "sampler_summary",
    "to_images",
]

ModelFn = Callable[[Tensor, Tensor], Tensor]
GeneratorArg = torch.Generator | list[torch.Generator] | None

#: ``output_type`` of the pipelines: PIL images, a float array / tensor in [0, 1], or the final latents.
OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "pt", "latent")

#: SiTSampler config keys that describe the trained model, not the sampling method: set_sampler keeps them.
MODEL_SAMPLER_KEYS: tuple[str, ...] = ("path_type", "prediction", "train_eps", "vp_sigma_min", "vp_sigma_max")

#: Steps when neither the call nor a preset gives them: the official ``sample.py --num-sampling-steps``.
FALLBACK_NUM_INFERENCE_STEPS = 250


#################################################################################
#                    Checks at the door (shared with SiTPipeline)               #
#################################################################################


def check_guidance(
    guidance_scale: Any, guidance_channels: Any, guidance_interval: Any, *, channels: int, has_null: bool
) -> tuple[float, int | None, tuple[float, float]]:
    """``(scale, k or None for all channels, (t_lo, t_hi))`` after checking each; ``InputError`` names the bad
    one. ``k`` must be in ``[1, channels]`` (the transformer's predicted channels); a scale other than 1 needs
    the null class (``has_null``: the transformer was trained with label dropout)."""
    scale = check_float("guidance_scale", guidance_scale, minimum=0.0)
    k = None
    if not (isinstance(guidance_channels, str) and guidance_channels == "all"):
        if isinstance(guidance_channels, str) or isinstance(guidance_channels, bool) or not isinstance(
            guidance_channels, numbers.Integral
        ):
            raise InputError(f"guidance_channels must be 'all' or an int in [1, {channels}], got {guidance_channels!r}")
        k = check_int("guidance_channels", guidance_channels, minimum=1, maximum=channels)
    if isinstance(guidance_interval, (str, bytes)) or not isinstance(guidance_interval, Sequence) \
            or len(guidance_interval) != 2:
        raise InputError(f"guidance_interval must be a pair (lo, hi) with 0 <= lo <= hi <= 1, got {guidance_interval!r}")
    t_lo = check_float("guidance_interval lo", guidance_interval[0], minimum=0.0, maximum=1.0)
    t_hi = check_float("guidance_interval hi", guidance_interval[1], minimum=0.0, maximum=1.0)
    if t_lo > t_hi:
        raise InputError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got {tuple(guidance_interval)!r}")
    if scale != 1.0 and not has_null:
        raise InputError(
            f"guidance_scale={scale} needs the null class, but this transformer was built with "
            "class_dropout_prob=0 (no null-class embedding); use guidance_scale=1.0"
        )
    return scale, k, (t_lo, t_hi)


def check_default_guidance_channels(value: Any, channels: int, has_null: bool) -> Any:
    """A pipeline's saved ``default_guidance_channels``: ``None`` or what ``guidance_channels`` takes
    (:func:`check_guidance`); ``InputError`` prefixed with the setting's name."""
    if value is not None:
        try:
            check_guidance(1.0, value, (0.0, 1.0), channels=channels, has_null=has_null)
        except InputError as err:
            raise InputError(f"default_guidance_channels: {err}") from None
    return value


def check_generator(generator: Any, batch_size: int) -> None:
    """``None``, a ``torch.Generator``, or a list of exactly ``batch_size`` of them (one per image)."""
    if generator is None:
        return
    gens = generator if isinstance(generator, list) else [generator]
    bad = [g for g in gens if not isinstance(g, torch.Generator)]
    if bad:
        raise InputError(f"generator must be a torch.Generator or a list of them, got {type(bad[0]).__name__}")
    if isinstance(generator, list) and len(generator) != batch_size:
        raise InputError(f"got {len(generator)} generators for {batch_size} images; pass one per image")


def check_latents(latents: Any, shape: tuple[int, ...]) -> None:
    """Initial noise given by the caller: a finite floating-point tensor of exactly ``shape``."""
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        raise InputError(f"latents must be a floating-point tensor of shape {shape}, got {type(latents).__name__}"
                         + (f" of dtype {latents.dtype}" if isinstance(latents, torch.Tensor) else ""))
    if tuple(latents.shape) != shape:
        raise InputError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
    check_finite_tensor("latents", latents, "the initial noise given as `latents` must be finite", InputError)


def check_id2label(id2label: Mapping[int | str, str] | None, num_classes: int) -> dict[int, str] | None:
    """Class names ``{id: name}`` normalised (:func:`~sit_diffusers.labels.normalize_id2label`), every id a
    real class of the transformer."""
    table = normalize_id2label(id2label)
    if table is not None and any(not 0 <= k < num_classes for k in table):
        raise InputError(f"id2label has ids outside 0..{num_classes - 1}: {sorted(table)[:8]}")
    return table


def resolve_num_inference_steps(num_inference_steps: Any, saved_default: Any) -> Any:
    """The call's steps, else the pipeline's saved default (the preset's), else 250 (the official default);
    the sampler checks the value."""
    if num_inference_steps is None:
        num_inference_steps = saved_default
    return FALLBACK_NUM_INFERENCE_STEPS if num_inference_steps is None else num_inference_steps


def sampler_summary(config: Mapping[str, Any], steps: int) -> str:
    """``"ode heun, 10 steps"`` (``", diffusion sigma"`` for an SDE) for messages, from a SiTSampler config."""
    grid = config.get("time_grid", "uniform")
    return f"{config['mode']} {config['solver']}, {steps} steps" + (
        f", diffusion {config['diffusion_form']}" if config["mode"] == "sde" else "") + (
        "" if grid == "uniform" else f", {grid} time grid")


def check_sample(sample: Tensor, dtype: torch.dtype, guidance_scale: float, summary: str) -> None:
    """``NonFiniteError`` naming the likely causes when the sampled latents hold NaN/inf (one device sync)."""
    check_finite_tensor(
        "the sampled latents", sample,
        f"likely causes: non-finite transformer weights or a float16 overflow (dtype {dtype}), "
        f"guidance_scale={guidance_scale}, or sampler settings that diverge ({summary}): try more steps or "
        "another preset",
    )


#################################################################################
#                      Guidance, progress, images (shared)                      #
#################################################################################


class NFECounter:
    """Counts transformer evaluations (a guided batch counts once) on a tqdm bar; ``total=None``: unknown."""

    def __init__(self, total: int | None, bar_config: Mapping[str, Any], desc: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, **{"desc": desc, "unit": "nfe", **bar_config})
        self.nfe = 0

    def __call__(self) -> None:
        self.nfe += 1
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def guided_model_fn(
    network: Callable[[Tensor, Tensor, Tensor], Tensor],
    dtype: torch.dtype,
    class_labels: Tensor,
    null_class: int,
    guidance_scale: float,
    guidance_channels: int | None,
    guidance_interval: tuple[float, float],
    counter: Callable[[], None] | None = None,
    current_scale: Callable[[], float] | None = None,
) -> ModelFn:
    """``model_fn(x, t)`` for the sampler: the transformer's prediction in float32, guided (Ho & Salimans 2022)::

        v = v(x, t, null) + s * (v(x, t, y) - v(x, t, null))

    on all channels (``guidance_channels=None``) or the first ``k`` (the later ones keep the conditional
    prediction: the official ``forward_with_cfg`` for ``k = 3``), for ``t_lo <= t <= t_hi`` only (elsewhere,
    and for ``s = 1``, one conditional pass). Arguments already checked (:func:`check_guidance`).

    Args:
        network: ``(x, t, y) -> prediction`` of the transformer; ``x`` is cast to ``dtype`` (its weights'),
            ``t`` stays float32 (the model embeds it in float32: a bf16 t would round 0.333 to 0.334).
        class_labels: ``(N,)`` real classes; ``null_class`` the unconditional one.
        counter: called once per evaluation (a guided batch counts once).
        current_scale: read the scale from it at every evaluation instead of ``guidance_scale`` (a step
            callback may change it; it checks what it returns).
    """
    null = torch.full_like(class_labels, null_class)  # (N,)
    k = guidance_channels
    t_lo, t_hi = guidance_interval

    def predict(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return network(x.to(dtype), t, y).to(torch.float32)  # (N, C, H, W)

    def model_fn(x: Tensor, t: Tensor) -> Tensor:
        n = x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(n)  # (N,)
        if counter is not None:
            counter()
        scale = guidance_scale if current_scale is None else current_scale()
        if scale == 1.0:
            return predict(x, t, class_labels)  # (N, C, H, W)
        inside = (t >= t_lo - 1e-7) & (t <= t_hi + 1e-7)  # (N,)
        if not bool(inside.any()):
            return predict(x, t, class_labels)  # (N, C, H, W)
        both = predict(torch.cat([x, x]), torch.cat([t, t]), torch.cat([class_labels, null]))  # (2N, C, H, W)
        cond, uncond = both.chunk(2)  # (N, C, H, W) each
        mix = uncond + scale * (cond - uncond)  # (N, C, H, W)
        if k is not None:
            mix = torch.cat([mix[:, :k], cond[:, k:]], dim=1)  # (N, C, H, W)
        return torch.where(inside[:, None, None, None], mix, cond)  # (N, C, H, W)

    return model_fn


def to_images(images: Tensor, output_type: Literal["pil", "np", "pt"]) -> Any:
    """Images in ``[-1, 1]`` ``(N, C, H, W)`` -> ``[0, 1]``: a tensor (``"pt"``), an ``(N, H, W, C)`` float32
    array (``"np"``) or PIL images (``"pil"``, ``round(255 x)`` as uint8; one channel gives mode ``L``). The
    numbers of diffusers' ``VaeImageProcessor(do_normalize=True).postprocess`` of ``images.clamp(-1, 1)``."""
    check_choice("output_type", output_type, ("pil", "np", "pt"))
    if output_type == "pil" and images.shape[1] not in (1, 3):
        raise InputError(f"cannot make PIL images from {images.shape[1]} channels; use output_type='pt'")
    images = (images.clamp(-1, 1) * 0.5 + 0.5).clamp(0, 1)  # (N, C, H, W) in [0, 1]
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()  # (N, H, W, C)
    if output_type == "np":
        return array
    import PIL.Image

    pixels = (array * 255).round().astype("uint8")  # (N, H, W, C)
    if pixels.shape[-1] == 1:
        return [PIL.Image.fromarray(p[..., 0]) for p in pixels]  # mode "L"
    return [PIL.Image.fromarray(p) for p in pixels]


#################################################################################
#                         The pipeline without diffusers                         #
#################################################################################


class NotLightError(Exception):
    """The folder is a pipeline the light path does not take (a VAE, other classes, other files): load it with
    ``SiTPipeline.from_pretrained``. Not a user error: the caller falls back to the full pipeline."""


#: ``model_index.json`` entries the light path takes: each component as this package saves it (old saves
#: name the package's module, new ones the repo's code entry, ``remote_code.component_entry``).
_COMPONENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "transformer": ("SiTTransformer2DModel", ("sit_diffusers.modeling_sit", component_entry("transformer"))),
    "scheduler": ("SiTSampler", ("sit_diffusers.scheduling_sit", component_entry("scheduler"))),
}
_PIPELINE_KEYS = ("id2label", "default_num_inference_steps", "default_guidance_scale", "default_guidance_channels")
SCHEDULER_CONFIG_NAME = "scheduler_config.json"


@dataclass(frozen=True)
class LightPipelineConfig:
    """The pipeline's own saved values (``model_index.json``), as ``SiTPipeline.config`` holds them."""

    default_num_inference_steps: Any = None
    default_guidance_scale: Any = None
    default_guidance_channels: Any = None


@dataclass
class LightPipelineOutput:
    """What :meth:`LightPipeline.__call__` returns: as ``SiTPipelineOutput`` (images, NFE, class ids)."""

    images: Any
    nfe: int
    class_labels: list[int]


def _check_index(folder: Path) -> dict[str, Any]:
    """``model_index.json`` of a pipeline the light path takes, else :class:`NotLightError` saying why."""
    index = read_model_index(folder)  # RepoFormatError (an InputError) for a corrupted index
    name = index.get("_class_name")
    class_name = name[1] if isinstance(name, list) else name
    if class_name != "SiTPipeline":
        raise NotLightError(f"{folder / INDEX_FILE} holds a {class_name!r} pipeline")
    for key, value in index.items():
        if key.startswith("_"):
            continue
        if key in _COMPONENTS:
            cls, libraries = _COMPONENTS[key]
            if not (isinstance(value, list) and len(value) == 2 and value[0] in libraries and value[1] == cls):
                raise NotLightError(f"component {key!r} is {value!r}, not this package's {cls}")
        elif key == "vae":
            if value != [None, None]:
                raise NotLightError(f"the pipeline has a VAE ({value!r}); the light path is pixel-space only")
        elif key not in _PIPELINE_KEYS:
            raise NotLightError(f"{folder / INDEX_FILE} has the entry {key!r}, which the light path does not know")
    missing = [c for c in _COMPONENTS if c not in index]
    if missing:
        raise NotLightError(f"{folder / INDEX_FILE} has no {', '.join(missing)}")
    for rel in (f"transformer/{CONFIG_NAME}", f"transformer/{WEIGHTS_NAME}", f"scheduler/{SCHEDULER_CONFIG_NAME}"):
        if not (folder / rel).is_file():
            raise NotLightError(f"{folder / rel} does not exist")
    return index


class LightPipeline:
    """``SiTPipeline`` for saved pixel-space pipelines, on torch alone: the same checks, noise, guidance,
    sampler and images (tensors equal), from :class:`~sit_diffusers.network.SiTNetwork` and
    :class:`~sit_diffusers.sampling.SamplerCore`.

    It has the parts of ``SiTPipeline``'s interface ``sit-generate`` uses: ``transformer`` (``.config``,
    ``.dtype``), ``scheduler`` (``.config``, ``check_num_inference_steps``), ``config``
    (``default_num_inference_steps``, ``default_guidance_scale``, ``default_guidance_channels``),
    ``num_classes``, ``id2label``, ``get_label_ids``, ``set_sampler(preset)``, ``set_progress_bar_config``, ``to(device)`` and ``__call__``
    for one image per label from noise.
    """

    def __init__(self, transformer: SiTNetwork, scheduler: SamplerCore, id2label: Mapping[int | str, str] | None = None,
                 default_num_inference_steps: Any = None, default_guidance_scale: Any = None,
                 default_guidance_channels: Any = None) -> None:
        self.transformer = transformer
        self.scheduler = scheduler
        num_classes = int(transformer.config.num_classes)
        if id2label is None and num_classes == IMAGENET_NUM_CLASSES:
            id2label = imagenet_id2label()
        self._labels = LabelResolver(num_classes, check_id2label(id2label, num_classes))
        cfg = transformer.config
        check_default_guidance_channels(default_guidance_channels, int(cfg.in_channels), cfg.class_dropout_prob > 0)
        self.config = LightPipelineConfig(default_num_inference_steps, default_guidance_scale,
                                          default_guidance_channels)
        self._model_sampler_config = {k: scheduler.config[k] for k in MODEL_SAMPLER_KEYS}
        self._progress_bar_config: dict[str, Any] = {}

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> LightPipeline:
        """Load a folder saved by ``SiTPipeline.save_pretrained`` (or shipped, as the embedded digits model).

        Raises:
            NotLightError: the folder needs the full pipeline (see the module docstring).
            InputError: a config value the full pipeline refuses too (``RepoFormatError`` for the index).
            OSError / RuntimeError: unreadable files, weights that do not fit the config.
        """
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise NotLightError(f"{folder} is not a local folder")
        index = _check_index(folder)
        with open(folder / "scheduler" / SCHEDULER_CONFIG_NAME, encoding="utf-8") as f:
            scheduler = SamplerCore(json.load(f))
        transformer = SiTNetwork.from_folder(folder / "transformer")
        return cls(transformer, scheduler, **{k: index[k] for k in _PIPELINE_KEYS if k in index})

    # ------------------------------------------------------------------ configuration
    @property
    def num_classes(self) -> int:
        """Number of real classes; the null (unconditional) class is ``num_classes``."""
        return int(self.transformer.config.num_classes)

    @property
    def id2label(self) -> dict[int, str]:
        """Class names by id (empty when the pipeline has none)."""
        return dict(self._labels.id2label)

    def get_label_ids(self, label: ClassLabels) -> list[int]:
        """Resolve ints, names or a list of either to class ids (clear error with nearest names)."""
        return self._labels(label)

    @property
    def default_guidance_scale(self) -> float:
        """The saved ``default_guidance_scale``, else 1.0 (no guidance)."""
        value = self.config.default_guidance_scale
        return 1.0 if value is None else float(value)

    def set_sampler(self, preset: str) -> None:
        """Use a named preset of ``SAMPLER_PRESETS``, keeping what the transformer was trained for
        (``MODEL_SAMPLER_KEYS``); the preset's step count becomes the default, as ``SiTPipeline.set_sampler``."""
        check_choice("sampler preset", preset, SAMPLER_PRESETS)
        self.scheduler = SamplerCore({**SAMPLER_PRESETS[preset]["config"], **self._model_sampler_config})
        self.config = LightPipelineConfig(SAMPLER_PRESETS[preset]["num_inference_steps"],
                                          self.config.default_guidance_scale, self.config.default_guidance_channels)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """tqdm arguments of the sampling bar (``disable=True`` hides it)."""
        self._progress_bar_config = dict(kwargs)

    def to(self, device: torch.device | str) -> LightPipeline:
        self.transformer.to(device)
        return self

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        class_labels: ClassLabels,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: GeneratorArg = None,
        output_type: Literal["pil", "np", "pt", "latent"] = "pil",
        guidance_channels: int | Literal["all"] | None = None,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
    ) -> LightPipelineOutput:
        """One image per class label from noise; the arguments mean what they mean for ``SiTPipeline`` and are
        checked by the same functions, in the same order."""
        ids = self.get_label_ids(class_labels)
        batch = len(ids)
        steps = self.scheduler.check_num_inference_steps(
            resolve_num_inference_steps(num_inference_steps, self.config.default_num_inference_steps))
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
        if guidance_channels is None:
            guidance_channels = self.config.default_guidance_channels or "all"
        cfg = self.transformer.config
        scale, k, interval = check_guidance(guidance_scale, guidance_channels, guidance_interval,
                                            channels=int(cfg.in_channels), has_null=cfg.class_dropout_prob > 0)
        check_choice("output_type", output_type, OUTPUT_TYPES)
        check_generator(generator, batch)
        device = self.transformer.device
        total = self.scheduler.num_model_evaluations(steps)

        y = torch.tensor(ids, device=device, dtype=torch.long)  # (N,)
        shape = (batch, int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))
        x0 = randn(shape, generator, device, torch.float32)  # (N, C, S, S) at t = 0
        counter = NFECounter(total, self._progress_bar_config, "SiT sampling")
        model_fn = guided_model_fn(self.transformer, self.transformer.dtype, y, self.num_classes, scale, k, interval,
                                   counter=counter)
        try:
            sample = self.scheduler.sample(model_fn, x0, steps, generator=generator).sample  # (N, C, S, S)
        finally:
            counter.close()
        check_sample(sample, self.transformer.dtype, guidance_scale, sampler_summary(self.scheduler.config, steps))
        images = sample if output_type == "latent" else to_images(sample, output_type)
        return LightPipelineOutput(images=images, nfe=counter.nfe, class_labels=ids)

