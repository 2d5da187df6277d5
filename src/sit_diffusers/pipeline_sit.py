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
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .hub import HUB_KWARGS, resolve_pretrained_folder
from .labels import IMAGENET_NUM_CLASSES, ClassLabels, LabelResolver, imagenet_id2label, normalize_id2label
from .modeling_sit import SiTTransformer2DModel
from .scheduling_sit import SAMPLER_PRESETS, SiTSampler

OutputType = Literal["pil", "np", "pt", "latent"]
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
            if sampler not in SAMPLER_PRESETS:
                raise ValueError(
                    f"unknown sampler preset {sampler!r}; valid presets: {sorted(SAMPLER_PRESETS)}"
                )
            current = self.scheduler.config
            kept = {k: current[k] for k in MODEL_SAMPLER_KEYS if k in current}
            self.scheduler = SiTSampler.from_preset(sampler, **{**kept, **overrides})
            self.register_to_config(
                default_num_inference_steps=SAMPLER_PRESETS[sampler]["num_inference_steps"]
            )
        else:
            if overrides:
                sampler = type(sampler).from_config(sampler.config, **overrides)
            self.scheduler = sampler

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
        return super().from_pretrained(str(folder), **kwargs)

    # ------------------------------------------------------------------ guidance
    def guided_model_fn(
        self,
        class_labels: torch.Tensor,
        guidance_scale: float = 1.0,
        guidance_channels: int | Literal["all"] = "all",
        guidance_interval: tuple[float, float] = (0.0, 1.0),
        counter: Callable[[], None] | None = None,
    ) -> ModelFn:
        """Return ``model_fn(x, t)`` for the sampler: the (guided) transformer prediction in float32.

        Args:
            class_labels: LongTensor ``(N,)`` of real classes.
            guidance_scale: ``s``; ``1.0`` disables guidance (no null-class pass is run).
            guidance_channels: ``"all"`` or ``k`` to guide only channels ``[0, k)`` (``3`` = official code).
            guidance_interval: ``(t_lo, t_hi)`` in SiT time; guidance only where ``t_lo <= t <= t_hi``.
            counter: called once per transformer evaluation (one guided batch counts once).
        """
        if guidance_channels != "all" and not (isinstance(guidance_channels, int) and guidance_channels > 0):
            raise ValueError(f"guidance_channels must be 'all' or a positive int, got {guidance_channels!r}")
        t_lo, t_hi = (float(v) for v in guidance_interval)
        if not 0.0 <= t_lo <= t_hi <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got {guidance_interval!r}")
        transformer = self.transformer
        null = torch.full_like(class_labels, self.num_classes)  # (N,)
        guided = guidance_scale != 1.0
        if guided and transformer.config.class_dropout_prob <= 0:
            raise ValueError(
                "guidance_scale != 1 needs the null class, but this transformer was built with "
                "class_dropout_prob=0 (no null-class embedding); use guidance_scale=1.0"
            )
        k = None if guidance_channels == "all" else int(guidance_channels)

        def predict(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # t stays float32: the model embeds it in float32 (a bf16 t would round 0.333 to 0.334)
            out = transformer(x.to(transformer.dtype), t, y).sample
            return out.to(torch.float32)

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            n = x.shape[0]
            t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(n)  # (N,)
            if counter is not None:
                counter()
            if not guided:
                return predict(x, t, class_labels)  # (N, C, H, W)
            inside = (t >= t_lo - 1e-7) & (t <= t_hi + 1e-7)  # (N,)
            if not bool(inside.any()):
                return predict(x, t, class_labels)  # (N, C, H, W)
            both = predict(
                torch.cat([x, x]), torch.cat([t, t]), torch.cat([class_labels, null])
            )  # (2N, C, H, W)
            cond, uncond = both.chunk(2)  # (N, C, H, W) each
            mix = uncond + guidance_scale * (cond - uncond)  # (N, C, H, W)
            if k is not None:
                mix = torch.cat([mix[:, :k], cond[:, k:]], dim=1)  # (N, C, H, W)
            return torch.where(inside[:, None, None, None], mix, cond)  # (N, C, H, W)

        return model_fn

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
                raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
            return latents.to(device=device, dtype=torch.float32)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} images; pass one per image")
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)  # (N, C, S, S)

    def decode(self, latents: torch.Tensor, output_type: OutputType) -> Any:
        """Final sample -> images: ``latents / scaling_factor`` through the VAE (if any), [-1, 1] -> [0, 1]."""
        if output_type == "latent":
            return latents
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be one of 'pil', 'np', 'pt', 'latent'; got {output_type!r}")
        if self.vae is not None:
            cfg = self.vae.config
            z = latents / cfg.scaling_factor
            if getattr(cfg, "shift_factor", None) is not None:
                z = z + cfg.shift_factor
            images = self.vae.decode(z.to(self.vae.dtype)).sample.float()  # (N, 3, H, W)
        else:
            images = latents
        if output_type == "pil" and images.shape[1] not in (1, 3):
            raise ValueError(f"cannot make PIL images from {images.shape[1]} channels; use output_type='pt'")
        return self.image_processor.postprocess(images.clamp(-1, 1), output_type=output_type)

    @property
    def default_guidance_scale(self) -> float:
        """The saved ``default_guidance_scale`` (the model card's recommendation), else 1.0 (no guidance)."""
        value = getattr(self.config, "default_guidance_scale", None)
        return 1.0 if value is None else float(value)

    def _resolve_steps(self, num_inference_steps: int | None) -> int:
        if num_inference_steps is not None:
            if int(num_inference_steps) < 1:
                raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
            return int(num_inference_steps)
        if self.config.default_num_inference_steps is not None:
            return int(self.config.default_num_inference_steps)
        return FALLBACK_NUM_INFERENCE_STEPS

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
                step (for adaptive solvers: at each output grid point, after the solve); it observes the
                state, it cannot replace it.
            callback_on_step_end_tensor_inputs: tensors passed to the callback (only ``"latents"``).
        """
        for name in callback_on_step_end_tensor_inputs:
            if name not in self._callback_tensor_inputs:
                raise ValueError(
                    f"callback tensor {name!r} not available; choose from {self._callback_tensor_inputs}"
                )
        ids = self.get_label_ids(class_labels)
        device = self._execution_device
        batch = len(ids)
        steps = self._resolve_steps(num_inference_steps)
        if guidance_scale is None:
            guidance_scale = self.default_guidance_scale
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

        model_fn = self.guided_model_fn(
            y, guidance_scale, guidance_channels, guidance_interval, counter=count
        )
        callback = None
        if callback_on_step_end is not None:

            def callback(step: int, t: torch.Tensor, x: torch.Tensor) -> None:
                tensors = {"latents": x}
                passed = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                out = callback_on_step_end(self, step, float(t), passed) or {}
                if out.get("latents", x) is not x:
                    raise ValueError(
                        "SiTSampler.sample does not accept latents replaced by callback_on_step_end"
                    )

        try:
            sample = self.scheduler.sample(model_fn, x0, steps, generator=generator, callback=callback).sample
        finally:
            bar.close()
        images = self.decode(sample, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, nfe)
        return SiTPipelineOutput(images=images, nfe=nfe, class_labels=ids)
