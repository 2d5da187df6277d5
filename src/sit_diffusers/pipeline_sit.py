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

import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput, is_accelerate_available
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .hub import HUB_KWARGS, resolve_pretrained_folder
from .labels import IMAGENET_NUM_CLASSES, ClassLabels, LabelResolver, imagenet_id2label, normalize_id2label
from .modeling_sit import SiTTransformer2DModel
from .scheduling_sit import SAMPLER_PRESETS, SiTSampler
from .validation import InputError, check_choice, check_finite_tensor, check_float, check_int

OutputType = Literal["pil", "np", "pt", "latent"]
OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "pt", "latent")
GeneratorArg = Union[torch.Generator, list[torch.Generator], None]
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: SiTSampler config keys that describe the trained model, not the sampling method: set_sampler keeps them.
MODEL_SAMPLER_KEYS: tuple[str, ...] = ("path_type", "prediction", "train_eps", "vp_sigma_min", "vp_sigma_max")

#: Steps when neither the call nor a preset gives them: the official ``sample.py --num-sampling-steps``.
FALLBACK_NUM_INFERENCE_STEPS = 250


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


class SiTPipeline(DiffusionPipeline):
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
    ) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        if id2label is None and transformer.config.num_classes == IMAGENET_NUM_CLASSES:
            id2label = imagenet_id2label()
        self.register_to_config(
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale,
        )
        self.set_id2label(id2label)
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True)

    # ------------------------------------------------------------------ configuration
    @property
    def num_classes(self) -> int:
        """Number of real classes; the null (unconditional) class is ``num_classes``."""
        return int(self.transformer.config.num_classes)

    def set_id2label(self, id2label: Mapping[int | str, str] | None) -> None:
        """Set the class names (kept in the pipeline config, so they survive ``save_pretrained``)."""
        table = normalize_id2label(id2label)
        if table is not None and any(not 0 <= k < self.num_classes for k in table):
            raise ValueError(f"id2label has ids outside 0..{self.num_classes - 1}")
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

    def set_sampler(self, sampler: str | SiTSampler, **overrides: Any) -> None:
        """Use a named preset of ``SAMPLER_PRESETS`` (e.g. ``"ode-dopri5"``, ``"sde-euler"``,
        ``"paper-fid"``; ``overrides`` change its config) or a ready ``SiTSampler``.

        What the transformer was trained for (``MODEL_SAMPLER_KEYS``: path, prediction, train eps, VP
        range) is kept from the current sampler unless ``overrides`` change it; a preset only picks how
        to sample. A preset also sets ``default_num_inference_steps`` to its step count.
        """
        if isinstance(sampler, str):
            check_choice("sampler preset", sampler, SAMPLER_PRESETS)
            current = self.scheduler.config
            kept = {k: current[k] for k in MODEL_SAMPLER_KEYS if k in current}
            self.scheduler = SiTSampler.from_preset(sampler, **{**kept, **overrides})
            self.register_to_config(
                default_num_inference_steps=SAMPLER_PRESETS[sampler]["num_inference_steps"]
            )
        elif isinstance(sampler, SiTSampler):
            if overrides:
                sampler = type(sampler).from_config(sampler.config, **overrides)
            self.scheduler = sampler
        else:
            raise InputError(
                f"sampler must be a preset name ({', '.join(SAMPLER_PRESETS)}) or a SiTSampler, "
                f"got {type(sampler).__name__}"
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> SiTPipeline:
        """Load a saved pipeline from a folder or a Hub repo id (online, or offline from the Hub cache).

        The repo is fetched with ``huggingface_hub.snapshot_download`` and then loaded locally (see
        :mod:`sit_diffusers.hub` for why); hub keyword arguments (``revision``, ``cache_dir``, ``token``,
        ``local_files_only``, ``force_download``, ``allow_patterns``) go to the download, the
        rest (``torch_dtype``, components to replace, ...) to ``DiffusionPipeline.from_pretrained``.
        """
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        folder = resolve_pretrained_folder(pretrained_model_name_or_path, **hub_kwargs)
        if not is_accelerate_available():  # the core install has no accelerate: load plainly, without
            kwargs.setdefault("low_cpu_mem_usage", False)  # diffusers' "install accelerate" warning each time
        return super().from_pretrained(str(folder), **kwargs)

    # ------------------------------------------------------------------ guidance
    def guided_model_fn(
        self,
        class_labels: torch.Tensor,
        guidance_scale: float = 1.0,
        guidance_channels: int | Literal["all"] = "all",
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        counter: Callable[[], None] | None = None,
        scale_source: Callable[[], float] | None = None,
    ) -> ModelFn:
        """Return ``model_fn(x, t)`` for the sampler: the (guided) transformer prediction in float32.

        Args:
            class_labels: LongTensor ``(N,)`` of real classes.
            guidance_scale: ``s``; ``1.0`` disables guidance (no null-class pass is run).
            guidance_channels: ``"all"`` or ``k`` to guide only channels ``[0, k)`` (``3`` = official code).
            guidance_interval: ``(t_lo, t_hi)`` in SiT time; guidance only where ``t_lo <= t <= t_hi``.
            counter: called once per transformer evaluation (one guided batch counts once).
            scale_source: read the scale from this function at every evaluation instead (``__call__`` passes
                ``lambda: pipe.guidance_scale``, so a step callback that sets ``pipe._guidance_scale`` changes
                the guidance from the next step); each value read is checked as ``guidance_scale`` is.
        """
        guidance_scale, k, (t_lo, t_hi) = self._check_guidance(guidance_scale, guidance_channels, guidance_interval)
        transformer = self.transformer
        null = torch.full_like(class_labels, self.num_classes)  # (N,)
        fixed_scale = guidance_scale

        def current_scale() -> float:
            if scale_source is None:
                return fixed_scale
            scale = scale_source()
            if scale != fixed_scale:  # changed by a callback: the same checks as at the door
                scale = self._check_guidance(scale, guidance_channels, (t_lo, t_hi))[0]
            return scale

        def predict(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # t stays float32: the model embeds it in float32 (a bf16 t would round 0.333 to 0.334)
            out = transformer(x.to(transformer.dtype), t, y).sample
            return out.to(torch.float32)

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(n)  # (N,)
            if counter is not None:
                counter()
            scale = current_scale()
            if scale == 1.0:
                return predict(x, t, class_labels)  # (N, C, H, W)
            inside = (t >= t_lo - 1e-7) & (t <= t_hi + 1e-7)  # (N,)
            if not bool(inside.any()):
                return predict(x, t, class_labels)  # (N, C, H, W)
            both = predict(
                torch.cat([x, x]), torch.cat([t, t]), torch.cat([class_labels, null])
            )  # (2N, C, H, W)
            cond, uncond = both.chunk(2)  # (N, C, H, W) each
            mix = uncond + scale * (cond - uncond)  # (N, C, H, W)
            if k is not None:
                mix = torch.cat([mix[:, :k], cond[:, k:]], dim=1)  # (N, C, H, W)
            return torch.where(inside[:, None, None, None], mix, cond)  # (N, C, H, W)

        return model_fn

    # ------------------------------------------------------------------ checks at the door
    def _check_guidance(
        self, guidance_scale: Any, guidance_channels: Any, guidance_interval: Any
    ) -> tuple[float, int | None, tuple[float, float]]:
        """``(scale, k or None for all channels, (t_lo, t_hi))`` after checking each; ``InputError`` names the
        bad one. ``k`` must be in ``[1, C]`` (C: the transformer's predicted channels)."""
        scale = check_float("guidance_scale", guidance_scale, minimum=0.0)
        channels = int(self.transformer.config.in_channels)
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
        if scale != 1.0 and self.transformer.config.class_dropout_prob <= 0:
            raise InputError(
                f"guidance_scale={scale} needs the null class, but this transformer was built with "
                "class_dropout_prob=0 (no null-class embedding); use guidance_scale=1.0"
            )
        return scale, k, (t_lo, t_hi)

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
        if generator is not None:
            gens = generator if isinstance(generator, list) else [generator]
            bad = [g for g in gens if not isinstance(g, torch.Generator)]
            if bad:
                raise InputError(
                    f"generator must be a torch.Generator or a list of them, got {type(bad[0]).__name__}"
                )
            if isinstance(generator, list) and len(generator) != batch_size:
                raise InputError(
                    f"got {len(generator)} generators for {batch_size} images; pass one per image"
                )
        if latents is not None:
            cfg = self.transformer.config
            shape = (batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size)
            if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
                raise InputError(f"latents must be a floating-point tensor of shape {shape}, got {type(latents).__name__}"
                                 + (f" of dtype {latents.dtype}" if isinstance(latents, torch.Tensor) else ""))
            if tuple(latents.shape) != shape:
                raise InputError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
            check_finite_tensor("latents", latents, "the initial noise given as `latents` must be finite", InputError)
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
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)  # (N, C, S, S)

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
        if output_type == "pil" and images.shape[1] not in (1, 3):
            raise InputError(f"cannot make PIL images from {images.shape[1]} channels; use output_type='pt'")
        return self.image_processor.postprocess(images.clamp(-1, 1), output_type=output_type)

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

    def _resolve_steps(self, num_inference_steps: int | None) -> int:
        if num_inference_steps is None:
            num_inference_steps = self.config.default_num_inference_steps
        if num_inference_steps is None:
            num_inference_steps = FALLBACK_NUM_INFERENCE_STEPS
        return self.scheduler.check_num_inference_steps(num_inference_steps)

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
        guidance_channels: int | Literal["all"] = "all",
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        callback_on_step_end: Callable[[SiTPipeline, int, float, dict[str, torch.Tensor]], dict]
        | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> SiTPipelineOutput | tuple:
        r"""Generate one image per class label.

        Args:
            class_labels: an id, a class name (any comma-separated synonym of ``id2label``), or a list of either.
            guidance_scale: classifier-free guidance scale ``s`` (``1.0``: off, one pass per evaluation);
                ``None``: the pipeline's ``default_guidance_scale`` (else 1.0).
            num_inference_steps: sampler steps (``SiTSampler`` convention); ``None``: the preset's
                (``default_num_inference_steps``), else 250. Adaptive solvers choose their own steps.
            generator: a ``torch.Generator`` or one per image (then an image does not depend on the batch).
                Used for the initial noise and, for SDE samplers, the Brownian increments.
            latents: initial noise ``(N, C, S, S)`` at t = 0 instead of drawing it.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (images in [0, 1]) or ``"latent"`` (final sample).
            return_dict: return :class:`SiTPipelineOutput` instead of ``(images, nfe)``.
            guidance_channels: ``"all"``, or ``k`` to guide only the first ``k`` channels (``3``: official).
            guidance_interval: ``(t_lo, t_hi)`` in SiT time (t = 0 noise) where guidance is applied.
            callback_on_step_end: ``fn(pipe, step, t, {"latents": x}) -> dict | None`` after every sampler
                step. A returned ``{"latents": new}`` replaces the state and sampling continues from it
                (fixed-step solvers; adaptive ones call it at each output grid point after the solve and
                refuse a replacement); setting ``pipe._guidance_scale`` changes the guidance from the next
                step. ``pipe.num_timesteps`` and ``pipe.guidance_scale`` are readable inside it.
            callback_on_step_end_tensor_inputs: tensors passed to the callback (only ``"latents"``).
        """
        # ---- checks at the door: nothing below runs with a bad argument
        ids = self.get_label_ids(class_labels)
        batch = len(ids)
        steps = self._resolve_steps(num_inference_steps)
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
        self._check_guidance(guidance_scale, guidance_channels, guidance_interval)
        self.check_inputs(batch, generator, latents, output_type, return_dict, callback_on_step_end,
                          callback_on_step_end_tensor_inputs)
        device = self._execution_device
        y = torch.tensor(ids, device=device, dtype=torch.long)  # (N,)
        x0 = self.prepare_latents(batch, generator, latents, device)  # (N, C, S, S)

        total = self.scheduler.num_model_evaluations(steps)
        bar = tqdm(
            total=total,
            **{"desc": "SiT sampling", "unit": "nfe", **getattr(self, "_progress_bar_config", {})},
        )
        nfe = 0

        def count() -> None:
            nonlocal nfe
            nfe += 1
            bar.update(1)

        self._guidance_scale = float(guidance_scale)
        self._num_timesteps = steps
        model_fn = self.guided_model_fn(
            y, guidance_scale, guidance_channels, guidance_interval, counter=count,
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
            sample = self.scheduler.sample(model_fn, x0, steps, generator=generator, callback=callback).sample
        finally:
            bar.close()
        check_finite_tensor(
            "the sampled latents", sample,
            f"likely causes: non-finite transformer weights or a float16 overflow (dtype "
            f"{self.transformer.dtype}), guidance_scale={guidance_scale}, or sampler settings that diverge "
            f"({self.scheduler.config.mode} {self.scheduler.config.solver}, {steps} steps"
            + (f", diffusion {self.scheduler.config.diffusion_form}" if self.scheduler.config.mode == "sde" else "")
            + "): try more steps or another preset",
        )  # (N, C, S, S): one device sync
        images = self.decode(sample, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, nfe)
        return SiTPipelineOutput(images=images, nfe=nfe, class_labels=ids)
