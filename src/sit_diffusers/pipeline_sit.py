"""SiTPipeline: class-conditional sampling with a SiT transformer, a SiTSampler and an optional VAE.

The pipeline does labels, noise, classifier-free guidance, the progress bar and decoding; the transformer
only predicts and the sampler only steps (design.md). Time convention: t = 0 noise, t = 1 data.

Guidance (Ho & Salimans 2022) on the model prediction ``v`` (velocity, score or noise alike)::

    v_guided = v(x, t, null) + s * (v(x, t, y) - v(x, t, null))

on all channels (``guidance_channels="all"``) or only the first ``k`` (``guidance_channels=3`` is the
official SiT/DiT ``forward_with_cfg``, whose later channels keep the conditional prediction), and only for
``t`` inside ``guidance_interval`` (Kynkäänniemi et al. 2024, used by REPA); elsewhere one conditional pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.utils import BaseOutput, is_accelerate_available

from .flow_schedulers import (
    FLOW_SCHEDULERS,
    FlowPlan,
    check_flow_scheduler,
    check_sigmas,
    describe,
    is_flow_scheduler,
    num_flow_steps,
    plan_flow,
    sample_flow,
)
from .hub import HUB_KWARGS, resolve_pretrained_folder
from .interpolants import get_interpolant
from .labels import IMAGENET_NUM_CLASSES, ClassLabels, LabelResolver, imagenet_id2label
from .light import FALLBACK_NUM_INFERENCE_STEPS as FALLBACK_NUM_INFERENCE_STEPS  # re-exported: sample_fid.py
from .light import (
    MODEL_SAMPLER_KEYS,
    OUTPUT_TYPES,
    NFECounter,
    check_default_guidance_channels,
    check_generator,
    check_guidance,
    check_id2label,
    check_latents,
    check_sample,
    guided_model_fn,
    resolve_num_inference_steps,
    sampler_summary,
    to_images,
)
from .lora import SiTLoraLoaderMixin, check_no_adapters
from .modeling_sit import SiTTransformer2DModel
from .remote_code import load_with_package_classes, save_pretrained_with_code
from .sampling import SAMPLER_PRESETS, randn
from .scheduling_sit import SiTSampler
from .validation import InputError, check_choice, check_finite_tensor, check_float, check_int

OutputType = Literal["pil", "np", "pt", "latent"]
#: ``image_type`` of ``__call__`` / ``invert``: an image in [0, 1], or latents in the model's space (as
#: ``output_type="latent"`` returns them; pixel space without a VAE: [-1, 1]).
IMAGE_TYPES: tuple[str, ...] = ("image", "latent")
ImageInput = Union[PIL.Image.Image, list[PIL.Image.Image], np.ndarray, torch.Tensor]
GeneratorArg = Union[torch.Generator, list[torch.Generator], None]
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: SDEdit ``strength`` when an image is given without one (diffusers' ``StableDiffusionImg2ImgPipeline``).
DEFAULT_STRENGTH = 0.8


@dataclass
class SiTPipelineOutput(BaseOutput):
    """Output of :class:`SiTPipeline`.

    Args:
        images: PIL images, an ``(N, H, W, C)`` float array in [0, 1], an ``(N, C, H, W)`` tensor in [0, 1]
            (``"pt"``), or the final latents ``(N, C, h, w)`` (``"latent"``, not rescaled).
        nfe: number of transformer evaluations; a guided (conditional + null) batch counts as one.
        class_labels: the resolved class ids, one per image.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nfe: int
    class_labels: list[int]


@dataclass
class SiTInversionOutput(BaseOutput):
    """Output of :meth:`SiTPipeline.invert`.

    Args:
        latents: the noise ``(N, C, S, S)`` at ``t0`` whose forward ODE sample is the input (float32).
        nfe: number of transformer evaluations of the reverse solve.
        class_labels: the resolved class ids, one per image.
    """

    latents: torch.Tensor
    nfe: int
    class_labels: list[int]


class SiTPipeline(DiffusionPipeline, SiTLoraLoaderMixin):
    r"""Class-conditional image generation with SiT (Ma et al. 2024, arXiv 2401.08740).

    Args:
        transformer: ``SiTTransformer2DModel`` predicting velocity / score / noise as the sampler expects.
        scheduler: ``SiTSampler`` (choose a named preset with :meth:`set_sampler`).
        vae: optional ``AutoencoderKL``; without it the model works directly in pixel space, images in [-1, 1].
        id2label: class names ``{id: "name, synonym, ..."}``, saved in ``model_index.json``. ``None`` with a
            1000-class transformer means the ImageNet-1k names shipped with the package.
        default_num_inference_steps: steps used when ``__call__`` gets ``num_inference_steps=None`` (set by
            :meth:`set_sampler` from the preset, saved with the pipeline). ``None``: 250 (official default).
        default_guidance_scale: guidance used when ``__call__`` gets ``guidance_scale=None`` (saved with the
            pipeline: the scale its model card recommends). ``None``: 1.0 (no guidance).
        default_guidance_channels: the channels guided when ``__call__`` gets ``guidance_channels=None``:
            ``"all"`` or ``k`` (the first ``k``). Converted official checkpoints save ``3``, the official
            ``forward_with_cfg``. ``None``: ``"all"``.
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: SiTTransformer2DModel,
        scheduler: SiTSampler,
        vae: AutoencoderKL | None = None,
        id2label: Mapping[Union[int, str], str] | None = None,  # typing.Union: diffusers checks it
        default_num_inference_steps: int | None = None,
        default_guidance_scale: float | None = None,
        default_guidance_channels: int | str | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        check_default_guidance_channels(default_guidance_channels, int(transformer.config.in_channels),
                                        transformer.config.class_dropout_prob > 0)
        if id2label is None and transformer.config.num_classes == IMAGENET_NUM_CLASSES:
            id2label = imagenet_id2label()
        self.register_to_config(
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale,
            default_guidance_channels=default_guidance_channels,
        )
        self.set_id2label(id2label)

    # ------------------------------------------------------------------ configuration
    @property
    def num_classes(self) -> int:
        """Number of real classes; the null (unconditional) class is ``num_classes``."""
        return int(self.transformer.config.num_classes)

    def set_id2label(self, id2label: Mapping[int | str, str] | None) -> None:
        """Set the class names (kept in the pipeline config, so they survive ``save_pretrained``)."""
        table = check_id2label(id2label, self.num_classes)
        self.register_to_config(id2label=None if table is None else {str(k): v for k, v in table.items()})
        self._labels = LabelResolver(self.num_classes, table)

    @property
    def id2label(self) -> dict[int, str]:
        """Class names by id (empty when the pipeline has none)."""
        return dict(self._labels.id2label)

    @property
    def labels(self) -> dict[str, int]:
        """Every name and synonym (as written in ``id2label``) -> id, like ``DiTPipeline.labels``.

        A name shared by several classes maps to the lowest id here; :meth:`get_label_ids` refuses it instead.
        """
        out: dict[str, int] = {}
        for idx, label in self._labels.id2label.items():
            for part in label.split(","):
                out.setdefault(part.strip(), idx)
        return dict(sorted(out.items()))

    def get_label_ids(self, label: ClassLabels) -> list[int]:
        """Resolve ints, names or a list of either to class ids (clear error with nearest names)."""
        return self._labels(label)

    def set_sampler(self, sampler: Any, **overrides: Any) -> None:
        """Use a named preset of ``SAMPLER_PRESETS`` (e.g. ``"ode-dopri5"``, ``"sde-euler"``,
        ``"paper-fid"``; ``overrides`` change its config), a ready ``SiTSampler``, or a diffusers
        flow-matching scheduler of :data:`~sit_diffusers.flow_schedulers.FLOW_SCHEDULERS` (checked now:
        only a Linear-path velocity model converts exactly to it).

        What the transformer was trained for (``MODEL_SAMPLER_KEYS``: path, prediction, train eps, VP
        range; :attr:`model_sampler_config`) is kept unless ``overrides`` change it; a preset only picks how
        to sample. A preset also sets ``default_num_inference_steps`` to its step count.
        """
        if isinstance(sampler, str):
            check_choice("sampler preset", sampler, SAMPLER_PRESETS)
            self.scheduler = SiTSampler.from_preset(sampler, **{**self.model_sampler_config, **overrides})
            self.register_to_config(
                default_num_inference_steps=SAMPLER_PRESETS[sampler]["num_inference_steps"]
            )
        elif isinstance(sampler, SiTSampler) or is_flow_scheduler(sampler):
            if overrides:
                sampler = type(sampler).from_config(sampler.config, **overrides)
            if not isinstance(sampler, SiTSampler):
                trained = self.model_sampler_config
                check_flow_scheduler(sampler, trained["path_type"], trained["prediction"])
            self.scheduler = sampler
        else:
            raise InputError(
                f"sampler must be a preset name ({', '.join(SAMPLER_PRESETS)}), a SiTSampler or one of the "
                f"flow-matching schedulers {', '.join(FLOW_SCHEDULERS)}, got {type(sampler).__name__}"
            )

    def __setattr__(self, name: str, value: Any) -> None:
        # a SiTSampler says what the transformer was trained for; keep it for a flow scheduler set later
        if name == "scheduler" and isinstance(value, SiTSampler):
            self.__dict__["_model_sampler_config"] = {k: value.config[k] for k in MODEL_SAMPLER_KEYS}
        super().__setattr__(name, value)

    @property
    def model_sampler_config(self) -> dict[str, Any]:
        """What the transformer was trained for (``MODEL_SAMPLER_KEYS``), from the last ``SiTSampler`` this
        pipeline held (``pipe.scheduler = ...``, ``set_sampler``, the constructor); a pipeline that never held
        one assumes ``SiTSampler``'s defaults (Linear path, velocity), the only setting a flow scheduler fits."""
        held = self.__dict__.get("_model_sampler_config")
        if held is None:
            defaults = SiTSampler().config
            held = {k: defaults[k] for k in MODEL_SAMPLER_KEYS}
        return dict(held)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> SiTPipeline:
        """Load a saved pipeline from a folder or a Hub repo id (online, or offline from the Hub cache) with
        this package's classes: none of the repo's code files runs (no ``trust_remote_code`` needed).

        The repo is fetched with ``huggingface_hub.snapshot_download`` and loaded locally (see
        :mod:`sit_diffusers.hub`); hub keyword arguments (``revision``, ``cache_dir``, ``token``,
        ``local_files_only``, ``force_download``, ``allow_patterns``) go to the download, the
        rest (``torch_dtype``, components to replace, ...) to ``DiffusionPipeline.from_pretrained``, which
        reads the repo's code entries as this package's classes
        (:func:`sit_diffusers.remote_code.load_with_package_classes`).
        """
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        folder = resolve_pretrained_folder(pretrained_model_name_or_path, **hub_kwargs)
        if not is_accelerate_available():  # the core install has no accelerate: load plainly, without
            kwargs.setdefault("low_cpu_mem_usage", False)  # diffusers' "install accelerate" warning each time
        return load_with_package_classes(cls, folder, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``, plus the code files that let stock diffusers load the folder without
        this package: ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``
        (:mod:`sit_diffusers.remote_code`). ``model_index.json`` names them and holds no local path."""
        check_no_adapters(self.transformer)  # unfused adapters would save peft's names: unreadable weights
        save_pretrained_with_code(self, super().save_pretrained, save_directory, *args, **kwargs)

    # ------------------------------------------------------------------ guidance
    def guided_model_fn(
        self,
        class_labels: torch.Tensor,
        guidance_scale: float = 1.0,
        guidance_channels: int | Literal["all"] | None = None,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        counter: Callable[[], None] | None = None,
        scale_source: Callable[[], float] | None = None,
    ) -> ModelFn:
        """Return ``model_fn(x, t)`` for the sampler: the (guided) transformer prediction in float32.

        Args:
            class_labels: LongTensor ``(N,)`` of real classes.
            guidance_scale: ``s``; ``1.0`` disables guidance (no null-class pass is run).
            guidance_channels: ``"all"`` or ``k`` to guide only channels ``[0, k)`` (``3`` = official code);
                ``None``: the pipeline's ``default_guidance_channels``.
            guidance_interval: ``(t_lo, t_hi)`` in SiT time; guidance only where ``t_lo <= t <= t_hi``.
            counter: called once per transformer evaluation (one guided batch counts once).
            scale_source: read the scale from this function at every evaluation instead (``__call__`` passes
                ``lambda: pipe.guidance_scale``, so a step callback that sets ``pipe._guidance_scale`` changes
                the guidance from the next step); each value read is checked as ``guidance_scale`` is.
        """
        if guidance_channels is None:
            guidance_channels = self.default_guidance_channels
        guidance_scale, k, interval = self._check_guidance(guidance_scale, guidance_channels, guidance_interval)
        fixed_scale = guidance_scale
        current_scale = None
        if scale_source is not None:

            def current_scale() -> float:
                scale = scale_source()
                if scale != fixed_scale:  # changed by a callback: the same checks as at the door
                    scale = self._check_guidance(scale, guidance_channels, interval)[0]
                return scale

        transformer = self.transformer
        return guided_model_fn(lambda x, t, y: transformer(x, t, y).sample, transformer.dtype, class_labels,
                               self.num_classes, guidance_scale, k, interval, counter, current_scale)

    # ------------------------------------------------------------------ checks at the door
    def _check_guidance(
        self, guidance_scale: Any, guidance_channels: Any, guidance_interval: Any
    ) -> tuple[float, int | None, tuple[float, float]]:
        """``(scale, k or None for all channels, (t_lo, t_hi))`` after checking each; ``InputError`` names the
        bad one. ``k`` must be in ``[1, C]`` (C: the transformer's predicted channels)."""
        cfg = self.transformer.config
        return check_guidance(guidance_scale, guidance_channels, guidance_interval,
                              channels=int(cfg.in_channels), has_null=cfg.class_dropout_prob > 0)

    def check_inputs(
        self,
        batch_size: int,
        generator: GeneratorArg,
        latents: torch.Tensor | None,
        output_type: Any,
        return_dict: Any,
        callback_on_step_end: Any,
        callback_on_step_end_tensor_inputs: Any,
    ) -> None:
        """Everything ``__call__`` is given that the guidance and step checks do not cover, checked before
        any work (diffusers' ``check_inputs``): ``InputError`` names the bad argument and what is allowed."""
        check_choice("output_type", output_type, OUTPUT_TYPES)
        if not isinstance(return_dict, bool):
            raise InputError(f"return_dict must be True or False, got {return_dict!r}")
        check_generator(generator, batch_size)
        if latents is not None:
            cfg = self.transformer.config
            check_latents(latents, (batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size))
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise InputError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}")
        if isinstance(callback_on_step_end_tensor_inputs, str):
            raise InputError(
                f"callback_on_step_end_tensor_inputs must be a list of names, got the string "
                f"{callback_on_step_end_tensor_inputs!r}; use [{callback_on_step_end_tensor_inputs!r}]"
            )
        for name in callback_on_step_end_tensor_inputs:
            if name not in self._callback_tensor_inputs:
                raise InputError(
                    f"callback tensor {name!r} not available; choose from {self._callback_tensor_inputs}"
                )

    # ------------------------------------------------------------------ sampling
    def prepare_latents(
        self,
        batch_size: int,
        generator: GeneratorArg,
        latents: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor:
        """Initial noise ``x_0 ~ N(0, I)`` of shape ``(N, C, S, S)`` in float32 (one draw per generator)."""
        cfg = self.transformer.config
        shape = (batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise InputError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
            return latents.to(device=device, dtype=torch.float32)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise InputError(f"got {len(generator)} generators for {batch_size} images; pass one per image")
        return randn(shape, generator, device, torch.float32)  # (N, C, S, S), as diffusers' randn_tensor

    def decode(self, latents: torch.Tensor, output_type: OutputType) -> Any:
        """Final sample -> images: ``latents / scaling_factor`` through the VAE (if any), [-1, 1] -> [0, 1]."""
        check_choice("output_type", output_type, OUTPUT_TYPES)
        if output_type == "latent":
            return latents
        if self.vae is not None:
            cfg = self.vae.config
            z = latents / cfg.scaling_factor
            if getattr(cfg, "shift_factor", None) is not None:
                z = z + cfg.shift_factor
            images = self.vae.decode(z.to(self.vae.dtype)).sample.float()  # (N, 3, H, W)
            check_finite_tensor("the decoded images", images, "the VAE decoder produced them from finite latents: "
                                "check the VAE weights and its dtype (float16 VAEs can overflow)")
        else:
            images = latents
        return to_images(images, output_type)

    @property
    def guidance_scale(self) -> float | None:
        """The guidance scale of the running (or last) call, as diffusers' callbacks read it; a
        ``callback_on_step_end`` that sets ``pipe._guidance_scale`` changes it from the next step on."""
        return getattr(self, "_guidance_scale", None)

    @property
    def num_timesteps(self) -> int | None:
        """Solver steps of the running (or last) call: the number of ``callback_on_step_end`` calls (for
        adaptive solvers, of output grid points)."""
        return getattr(self, "_num_timesteps", None)

    @property
    def default_guidance_scale(self) -> float:
        """The saved ``default_guidance_scale`` (the model card's recommendation), else 1.0 (no guidance)."""
        value = getattr(self.config, "default_guidance_scale", None)
        return 1.0 if value is None else float(value)

    @property
    def default_guidance_channels(self) -> int | str:
        """The saved ``default_guidance_channels`` (``3`` for converted official checkpoints), else ``"all"``."""
        value = getattr(self.config, "default_guidance_channels", None)
        return "all" if value is None else value

    def _resolve_steps(self, num_inference_steps: int | None) -> int:
        num_inference_steps = resolve_num_inference_steps(num_inference_steps, self.config.default_num_inference_steps)
        if isinstance(self.scheduler, SiTSampler):
            return self.scheduler.check_num_inference_steps(num_inference_steps)
        return check_int("num_inference_steps", num_inference_steps, minimum=1)

    def _check_scheduler(self) -> bool:
        """``True`` for a diffusers flow scheduler (checked against :attr:`model_sampler_config`), ``False``
        for a ``SiTSampler``; anything else (``pipe.scheduler = DDPMScheduler()``) is an ``InputError``."""
        if isinstance(self.scheduler, SiTSampler):
            return False
        trained = self.model_sampler_config
        check_flow_scheduler(self.scheduler, trained["path_type"], trained["prediction"])
        return True

    def _sampler_summary(self, steps: int) -> str:
        """``"ode heun, 10 steps"`` / ``"UniPCMultistepScheduler (shift 1.0), 10 steps"``, for messages."""
        if not isinstance(self.scheduler, SiTSampler):
            return f"{describe(self.scheduler)}, {steps} steps"
        return sampler_summary(self.scheduler.config, steps)

    @staticmethod
    def _check_strength(image: Any, strength: Any) -> float:
        """SDEdit strength in (0, 1]: ``DEFAULT_STRENGTH`` for an image without one; 1 without an image."""
        if image is None:
            if strength is not None:
                raise InputError(f"strength={strength!r} needs an image to edit (image=...); without one the "
                                 "pipeline samples from noise")
            return 1.0
        if strength is None:
            return DEFAULT_STRENGTH
        return check_float("strength", strength, minimum=0.0, maximum=1.0, min_inclusive=False)

    @property
    def image_size(self) -> int:
        """Side of the images the pipeline makes and edits: the transformer's ``sample_size`` times the VAE's
        downsampling factor (1 without a VAE)."""
        factor = 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.transformer.config.sample_size) * factor

    def _image_tensor(self, image: Any, name: str) -> torch.Tensor:
        """PIL / numpy / torch image(s) in [0, 1] -> float32 ``(n, C, H, W)``, every property checked."""
        cfg = self.transformer.config
        channels = int(self.vae.config.in_channels) if self.vae is not None else int(cfg.in_channels)
        side = self.image_size
        allowed = (f"a PIL image or a list of them, a float numpy array (H, W, C) / (N, H, W, C) or a float tensor "
                   f"(C, H, W) / (N, C, H, W) with values in [0, 1], of size {side} x {side} and {channels} channel(s)")
        if isinstance(image, PIL.Image.Image):
            image = [image]
        if isinstance(image, list) and image and all(isinstance(im, PIL.Image.Image) for im in image):
            mode = {1: "L", 3: "RGB"}.get(channels)
            if mode is None:
                raise InputError(f"{name}: PIL images have 1 or 3 channels, the model takes {channels}; pass a tensor")
            for i, im in enumerate(image):
                if im.size != (side, side):
                    raise InputError(f"{name}[{i}] is {im.size[0]} x {im.size[1]}; the model edits {side} x {side} "
                                     "images (resize or crop it first)")
            arrays = [np.asarray(im.convert(mode), dtype=np.float32) / 255.0 for im in image]
            x = torch.from_numpy(np.stack([a if a.ndim == 3 else a[..., None] for a in arrays]))  # (n, H, W, C)
            return x.permute(0, 3, 1, 2).contiguous()  # (n, C, H, W)
        if isinstance(image, np.ndarray):
            if not np.issubdtype(image.dtype, np.floating):
                raise InputError(f"{name} is a numpy array of dtype {image.dtype}; expected {allowed} "
                                 "(uint8 pixels: divide by 255)")
            if image.ndim == 2:
                image = image[..., None]
            if image.ndim == 3:
                image = image[None]
            if image.ndim != 4:
                raise InputError(f"{name} has shape {image.shape}; expected {allowed}")
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(0, 3, 1, 2)  # (n, C, H, W)
        elif isinstance(image, torch.Tensor):
            if not image.is_floating_point():
                raise InputError(f"{name} is a tensor of dtype {image.dtype}; expected {allowed} "
                                 "(uint8 pixels: divide by 255)")
            x = image[None] if image.ndim == 3 else image
            if x.ndim != 4:
                raise InputError(f"{name} has shape {tuple(image.shape)}; expected {allowed}")
            x = x.detach().to(torch.float32)
        else:
            raise InputError(f"{name} must be {allowed}, got {type(image).__name__}")
        if tuple(x.shape[1:]) != (channels, side, side):
            raise InputError(f"{name} has {x.shape[1]} channel(s) of {x.shape[2]} x {x.shape[3]}; the model edits "
                             f"{channels}-channel {side} x {side} images (numpy: channels last, torch: channels first)")
        check_finite_tensor(name, x, error=InputError)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"{name} values must be in [0, 1], got [{lo:.4g}, {hi:.4g}]; latents in the model's "
                             "space (output_type='latent', [-1, 1] in pixel space) go with image_type='latent'")
        return x.contiguous()  # one memory layout whatever the input: the VAE's convolutions give one result

    def prepare_image(self, image: ImageInput, image_type: Literal["image", "latent"] = "image",
                      device: torch.device | str | None = None, name: str = "image") -> torch.Tensor:
        """The image(s) to edit or invert as model latents ``(n, C, S, S)`` in float32.

        ``image_type="image"``: PIL images, a float numpy array ``(H, W, C)`` / ``(N, H, W, C)`` or a float
        tensor ``(C, H, W)`` / ``(N, C, H, W)`` with values in [0, 1] and the pipeline's image size (no
        resizing); mapped to [-1, 1] and, with a VAE, encoded (the mean of the latent distribution,
        ``(z - shift_factor) * scaling_factor``: the inverse of :meth:`decode`). ``"latent"``: a float tensor
        ``(C, S, S)`` / ``(N, C, S, S)`` already in the model's space, used as it is. ``InputError`` names the
        first problem (type, dtype, shape, size, channels, NaN/inf, range) before any work.
        """
        check_choice("image_type", image_type, IMAGE_TYPES)
        cfg = self.transformer.config
        shape = (int(cfg.in_channels), int(cfg.sample_size), int(cfg.sample_size))
        if image_type == "latent":
            if not isinstance(image, torch.Tensor) or not image.is_floating_point():
                raise InputError(f"{name} with image_type='latent' must be a float tensor {shape} or (N, *{shape}), "
                                 f"got {type(image).__name__}"
                                 + (f" of dtype {image.dtype}" if isinstance(image, torch.Tensor) else ""))
            x = image[None] if image.ndim == 3 else image
            if x.ndim != 4 or tuple(x.shape[1:]) != shape:
                raise InputError(f"{name} latents have shape {tuple(image.shape)}, expected {shape} or (N, *{shape})")
            check_finite_tensor(name, x, error=InputError)
            return x.detach().to(device=device, dtype=torch.float32)
        x = self._image_tensor(image, name).to(device) * 2.0 - 1.0  # (n, C, H, W) in [-1, 1]
        if self.vae is None:
            return x
        vcfg = self.vae.config
        z = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode().float()  # (n, C, S, S)
        if getattr(vcfg, "shift_factor", None) is not None:
            z = z - vcfg.shift_factor
        return z * vcfg.scaling_factor

    @staticmethod
    def _match_batch(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
        """``x`` ``(n, ...)`` with ``n`` 1 (used for every label) or ``batch``."""
        if x.shape[0] == batch:
            return x
        if x.shape[0] == 1:
            return x.expand(batch, *x.shape[1:])
        raise InputError(f"got {x.shape[0]} images in {name} for {batch} class labels; pass one image, or one per label")

    @torch.no_grad()
    def __call__(
        self,
        class_labels: ClassLabels,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        generator: GeneratorArg = None,
        latents: torch.Tensor | None = None,
        output_type: OutputType = "pil",
        return_dict: bool = True,
        guidance_channels: int | Literal["all"] | None = None,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        callback_on_step_end: Callable[[SiTPipeline, int, float, dict[str, torch.Tensor]], dict]
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        image: ImageInput | None = None,
        strength: float | None = None,
        image_type: Literal["image", "latent"] = "image",
        sigmas: Sequence[float] | None = None,
    ) -> SiTPipelineOutput | tuple:
        r"""Generate one image per class label, from noise or (SDEdit) from a noised ``image``.

        Args:
            class_labels: an id, a class name (any comma-separated synonym of ``id2label``), or a list of either.
            guidance_scale: classifier-free guidance scale ``s`` (``1.0``: off, one pass per evaluation);
                ``None``: the pipeline's ``default_guidance_scale`` (else 1.0).
            num_inference_steps: sampler steps (``SiTSampler`` convention, or the flow scheduler's
                ``set_timesteps``); ``None``: the preset's (``default_num_inference_steps``), else 250.
                Adaptive solvers choose their own steps.
            generator: a ``torch.Generator`` or one per image (then an image does not depend on the batch).
                Used for the initial noise and, for SDE samplers, the Brownian increments.
            latents: initial noise ``(N, C, S, S)`` at t = 0 instead of drawing it (with ``image``: the noise
                mixed into it).
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (images in [0, 1]) or ``"latent"`` (final sample).
            return_dict: return :class:`SiTPipelineOutput` instead of ``(images, nfe)``.
            guidance_channels: ``"all"``, or ``k`` to guide only the first ``k`` channels (``3``: official);
                ``None``: the pipeline's ``default_guidance_channels`` (``3`` for converted official
                checkpoints), else ``"all"``.
            guidance_interval: ``(t_lo, t_hi)`` in SiT time (t = 0 noise) where guidance is applied.
            callback_on_step_end: ``fn(pipe, step, t, {"latents": x}) -> dict | None`` after every sampler
                step. A returned ``{"latents": new}`` replaces the state and sampling continues from it
                (fixed-step solvers and flow schedulers; adaptive ones call it at each output grid point after
                the solve and refuse a replacement); setting ``pipe._guidance_scale`` changes the guidance from
                the next step. ``pipe.num_timesteps`` and ``pipe.guidance_scale`` are readable inside it.
            callback_on_step_end_tensor_inputs: tensors passed to the callback (only ``"latents"``).
            image: SDEdit (Meng et al. 2022): the image(s) to edit, one for all labels or one per label
                (:meth:`prepare_image`: PIL / numpy / tensor in [0, 1], or latents with ``image_type="latent"``).
                They are noised through the interpolant to the start of the last ``strength`` of the schedule
                (``t = 1 - strength`` on the Linear path; the noise from ``generator`` or ``latents``) and
                sampled to data under ``class_labels``, which may differ from the image's class.
            strength: in (0, 1] (default 0.8 with an image): how much of the schedule runs; fixed-step solvers
                and flow schedulers run the last ``floor(steps * strength)`` steps, adaptive solvers integrate
                from ``t1 - strength (t1 - t0)``. ``1`` ignores the image: plain sampling from the same noise.
            image_type: ``"image"`` (values in [0, 1]) or ``"latent"`` (the model's space).
            sigmas: flow schedulers whose ``set_timesteps`` takes them (``FlowMatchEulerDiscreteScheduler``,
                ``UniPCMultistepScheduler``): their noise levels, decreasing in (0, 1] (SiT time ``1 - sigma``).
        """
        # ---- checks at the door: nothing below runs with a bad argument
        ids = self.get_label_ids(class_labels)
        batch = len(ids)
        flow = self._check_scheduler()
        sigma_list = None
        if sigmas is not None:
            if not flow:
                raise InputError("sigmas is for the diffusers flow schedulers; a SiTSampler makes its own grid from "
                                 "num_inference_steps (leave sigmas=None)")
            sigma_list = check_sigmas(sigmas, self.scheduler)
            if num_inference_steps is None:
                num_inference_steps = len(sigma_list)
            elif check_int("num_inference_steps", num_inference_steps, minimum=1) != len(sigma_list):
                raise InputError(f"num_inference_steps={num_inference_steps} but {len(sigma_list)} sigmas were given; "
                                 "pass one or make them agree")
        steps = self._resolve_steps(num_inference_steps)
        strength = self._check_strength(image, strength)
        if image is None and image_type != "image":
            raise InputError(f"image_type={image_type!r} describes an image, but no image was given")
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
        if guidance_channels is None:
            guidance_channels = self.default_guidance_channels
        self._check_guidance(guidance_scale, guidance_channels, guidance_interval)
        self.check_inputs(batch, generator, latents, output_type, return_dict, callback_on_step_end,
                          callback_on_step_end_tensor_inputs)
        device = self._execution_device
        plan: FlowPlan | None = None
        if flow:
            plan = plan_flow(self.scheduler, steps, sigma_list, strength, device)
            total, run_steps, t_start = plan.nfe, num_flow_steps(self.scheduler, plan), plan.start_time
        else:
            grid = self.scheduler.sampling_grid(steps, strength)  # (K + 1,): where the run starts and ends
            total = self.scheduler.num_model_evaluations(steps, strength)
            last = self.scheduler.config.mode == "sde" and self.scheduler.config.last_step is not None
            run_steps, t_start = grid.shape[0] - 1 + int(last), float(grid[0])
        x1 = None
        if image is not None:
            x1 = self._match_batch(self.prepare_image(image, image_type, device), batch, "image")  # (N, C, S, S)

        y = torch.tensor(ids, device=device, dtype=torch.long)  # (N,)
        x0 = self.prepare_latents(batch, generator, latents, device)  # (N, C, S, S)
        if x1 is not None and strength != 1.0:  # SDEdit: the image noised to the start of the run
            t = torch.full((batch,), t_start, device=device)
            x0 = (get_interpolant("linear").compute_xt(x0, x1, t) if flow
                  else self.scheduler.add_noise(x1, x0, t))  # (N, C, S, S)

        counter = NFECounter(total, getattr(self, "_progress_bar_config", {}), "SiT sampling")
        self._guidance_scale = float(guidance_scale)
        self._num_timesteps = run_steps
        model_fn = self.guided_model_fn(
            y, guidance_scale, guidance_channels, guidance_interval, counter=counter,
            scale_source=lambda: self._guidance_scale,
        )
        callback = None
        if callback_on_step_end is not None:

            def callback(step: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
                tensors = {"latents": x}
                passed = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                out = callback_on_step_end(self, step, float(t), passed)
                if out is None:
                    return None
                if not isinstance(out, Mapping):
                    raise InputError(f"callback_on_step_end must return a dict (or None), got {type(out).__name__}")
                latents = out.get("latents")
                if latents is None or latents is x:
                    return None
                if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != tuple(x.shape):
                    raise InputError(
                        f"callback_on_step_end returned latents of shape {tuple(getattr(latents, 'shape', ()))} "
                        f"({type(latents).__name__}); expected a tensor of shape {tuple(x.shape)}"
                    )
                check_finite_tensor("the latents returned by callback_on_step_end", latents, error=InputError)
                return latents.to(device=x.device, dtype=x.dtype)  # the sampler continues from them

        try:
            if plan is not None:
                sample = sample_flow(self.scheduler, plan, model_fn, x0, generator=generator, callback=callback)
            else:
                sample = self.scheduler.sample(model_fn, x0, steps, generator=generator, callback=callback,
                                               strength=strength).sample
        finally:
            counter.close()
        check_sample(sample, self.transformer.dtype, guidance_scale, self._sampler_summary(steps))  # one device sync
        images = self.decode(sample, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, counter.nfe)
        return SiTPipelineOutput(images=images, nfe=counter.nfe, class_labels=ids)

    # ------------------------------------------------------------------ inversion
    @torch.no_grad()
    def invert(
        self,
        image: ImageInput,
        class_labels: ClassLabels,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        image_type: Literal["image", "latent"] = "image",
        guidance_channels: int | Literal["all"] | None = None,
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        return_dict: bool = True,
    ) -> SiTInversionOutput | tuple:
        r"""Exact ODE inversion: the noise whose sample is ``image``, by the reverse probability-flow ODE.

        The pipeline's ODE ``SiTSampler`` (any solver, e.g. ``set_sampler("ode-dopri5")`` or ``"ode-heun"``)
        integrates ``dx = v(x, t) dt`` from the data at ``t1`` back to ``t0`` (``SiTSampler(reverse=True)``)
        with the same guidance; ``pipe(class_labels, latents=out.latents, guidance_scale=...)`` with the same
        sampler, steps and guidance integrates forward again and returns the image up to the solver's error
        (measured in ``docs/sampling.md``). SDE samplers and flow schedulers have no reverse here: refused.

        Args:
            image: as :meth:`prepare_image` (one per label, or one for all labels).
            class_labels: the class(es) the ODE is conditioned on (one for all images, or one per image).
            guidance_scale, guidance_channels, guidance_interval: as in ``__call__`` (``None``: the default).
            num_inference_steps: steps of the reverse solve (adaptive solvers: output grid only).
            image_type: ``"image"`` (values in [0, 1]) or ``"latent"`` (the model's space).
            return_dict: return :class:`SiTInversionOutput` instead of ``(latents, nfe)``.
        """
        ids = self.get_label_ids(class_labels)
        sampler = self.scheduler
        if not isinstance(sampler, SiTSampler) or sampler.config.mode != "ode":
            what = (f"a {sampler.config.mode.upper()} SiTSampler" if isinstance(sampler, SiTSampler)
                    else type(sampler).__name__)
            raise InputError(f"invert needs an ODE SiTSampler (a deterministic map noise <-> data), the pipeline has "
                             f"{what}; use pipe.set_sampler('ode-dopri5') or pipe.set_sampler('ode-heun')")
        steps = self._resolve_steps(num_inference_steps)
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
        if guidance_channels is None:
            guidance_channels = self.default_guidance_channels
        self._check_guidance(guidance_scale, guidance_channels, guidance_interval)
        if not isinstance(return_dict, bool):
            raise InputError(f"return_dict must be True or False, got {return_dict!r}")
        device = self._execution_device
        x1 = self.prepare_image(image, image_type, device)  # (n, C, S, S)
        batch = max(len(ids), x1.shape[0])
        if len(ids) not in (1, batch):
            raise InputError(f"got {len(ids)} class labels for {x1.shape[0]} images; pass one label, or one per image")
        ids = ids * batch if len(ids) == 1 else ids
        x1 = self._match_batch(x1, batch, "image")

        reverse = type(sampler).from_config(sampler.config, reverse=True)
        counter = NFECounter(reverse.num_model_evaluations(steps), getattr(self, "_progress_bar_config", {}),
                              "SiT inversion")
        y = torch.tensor(ids, device=device, dtype=torch.long)  # (N,)
        model_fn = self.guided_model_fn(y, guidance_scale, guidance_channels, guidance_interval, counter=counter)
        try:
            noise = reverse.sample(model_fn, x1, steps).sample  # (N, C, S, S) at t0
        finally:
            counter.close()
        check_finite_tensor("the inverted latents", noise,
                            f"the reverse ODE diverged ({self._sampler_summary(steps)}, guidance_scale="
                            f"{guidance_scale}): try more steps, a tighter rtol or dopri5")
        self.maybe_free_model_hooks()
        if not return_dict:
            return (noise, counter.nfe)
        return SiTInversionOutput(latents=noise, nfe=counter.nfe, class_labels=ids)
