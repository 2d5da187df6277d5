"""REPA: representation alignment for SiT training (Yu et al. 2024, arXiv 2410.06940).

The hidden state ``h`` of the SiT after block ``depth`` (paper: 8 of SiT-XL's 28) goes through a small MLP
projector ``h_phi`` (Linear-SiLU-Linear-SiLU-Linear, width 2048) and is pulled toward the patch features
``y*`` of a frozen pretrained vision encoder (paper: DINOv2-B/14 at 224 px) of the clean image::

    L_REPA = -1/(N T) sum_n sum_t cos(y*_{n,t}, h_phi(h_{n,t}))        L = L_SiT + lambda * L_REPA  (lambda = 0.5)

Pieces, each usable alone (the trainer wires them; ``docs/repa.md`` shows the commands):

* :class:`RepaEncoder` -- any ``transformers`` vision backbone with patch tokens (``AutoModel``), frozen, in
  eval mode, optionally bf16; preprocessing from its image processor config (else ImageNet mean/std and its
  config's image size); returns the patch tokens only (CLS and register tokens dropped).
* :func:`resize_token_grid` -- bilinear resize of an encoder's ``h x w`` patch grid to the SiT's token grid.
* :func:`capture_hidden_state` -- a forward hook on ``transformer_blocks[depth - 1]``: the plain forward path
  is untouched (no hook, no cost, bit-identical outputs when REPA is off or after the stop step).
* :class:`RepaProjector`, :func:`repa_loss` -- the projector and the mean negative cosine similarity.
* iREPA (Singh et al. 2025, arXiv 2512.10794: the spatial structure of the target, not its global content,
  is what helps): :class:`RepaConvProjector` (a ``k x k`` convolution on the token grid instead of the
  token-wise MLP) and :func:`spatial_zscore` (each feature channel of the target standardised across the
  tokens of its image, after removing ``alpha`` times its mean); :func:`build_projector` picks the projector.
* :class:`RepaFeatureStore`, :class:`WithRepaFeatures`, :func:`repa_targets` -- encoder features precomputed by
  ``training/precompute_latents.py --repa_encoder ...`` (crop and mirror, like the latents), read per example
  under the key ``"repa_features"`` with the same flip coin as the pixels / latents.

The encoder and its features are never trained, saved, or EMA'd; the projector is trained with the SiT (one
optimiser), lives in the training state only, and is not EMA'd (the paper's code copies it into its EMA model,
where it is never read: sampling uses the SiT alone, so the outputs are the same).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sit_diffusers.validation import InputError, check_int
from training.data import DataError, flip_for

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REPA_FEATURES_KEY",
    "REPA_META_FILE",
    "HiddenCapture",
    "RepaEncoder",
    "RepaFeatureStore",
    "RepaFeaturesMeta",
    "REPA_PROJECTORS",
    "SPATIAL_NORMS",
    "RepaConvProjector",
    "RepaProjector",
    "WithRepaFeatures",
    "build_projector",
    "attach_hidden_capture",
    "capture_hidden_state",
    "check_repa_depth",
    "repa_loss",
    "repa_shard_file",
    "repa_targets",
    "resize_token_grid",
    "spatial_zscore",
    "token_grid",
]

REPA_PROJECTORS = ("mlp", "conv")
"""Projector kinds: ``mlp`` (REPA's token-wise MLP), ``conv`` (iREPA's convolution on the token grid)."""
SPATIAL_NORMS = ("none", "zscore")
"""Target normalisations: ``none`` (REPA), ``zscore`` (iREPA's spatial normalisation, :func:`spatial_zscore`)."""

REPA_FEATURES_KEY = "repa_features"
"""Key of the precomputed encoder features ``(T, D)`` in an example (``(n, T, D)`` in a batch)."""
REPA_META_FILE = "repa.json"
"""Description of the precomputed features of a folder (:class:`RepaFeaturesMeta`)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#################################################################################
#                                Frozen encoder                                  #
#################################################################################


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _side(value: Any) -> int | None:
    """A square side from an image-processor size entry: an int, ``{"height", "width"}`` or
    ``{"shortest_edge"}`` (a dict or transformers' ``SizeDict``); None when it gives none."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    get = value.get if isinstance(value, dict) else (lambda k: getattr(value, k, None))
    height, width = get("height"), get("width")
    if height is not None and width is not None:
        if height != width:
            raise InputError(f"non-square encoder input {height}x{width} is not supported; pass image_size=")
        return int(height)
    edge = get("shortest_edge")
    return None if edge is None else int(edge)


def _load_processor(name: str) -> Any | None:
    """The encoder's image processor (``AutoImageProcessor``), or None when it has none."""
    from transformers import AutoImageProcessor
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # e.g. "BitImageProcessor requires torchvision": only its config is read
    try:
        return AutoImageProcessor.from_pretrained(name)
    except Exception:  # no preprocessor_config.json, or a processor class this install lacks
        return None
    finally:
        hf_logging.set_verbosity(level)


class RepaEncoder(nn.Module):
    """A frozen ``transformers`` vision backbone that maps images in [-1, 1] to its patch tokens.

    Preprocessing, as REPA's ``preprocess_raw_image``: ``x = (images + 1) / 2`` (the [0, 1] images its
    processor would get after ``rescale``), grey images repeated to 3 channels when the encoder takes 3, a
    bicubic resize (``align_corners=False``) to ``image_size`` when the side differs, then
    ``(x - mean) / std``. ``image_size``, ``mean`` and ``std`` come from the model's image processor
    (``crop_size``, else ``size``; ``image_mean`` / ``image_std``), else from its config (``image_size``) and
    the ImageNet statistics (their channel average for a 1-channel encoder). The output drops the first ``num_prefix_tokens`` tokens (CLS and the
    ``num_register_tokens`` registers of DINOv2-with-registers): ``(N, h * w, hidden_size)`` with
    ``(h, w) = grid = (image_size // patch_size,) * 2``, float32, without gradient.

    Frozen: every parameter has ``requires_grad=False`` and the module stays in eval mode (``train()`` is a
    no-op), so a parent's ``model.train()`` cannot turn dropout on. Build it with :meth:`from_pretrained`.
    """

    def __init__(self, backbone: nn.Module, *, name: str, image_size: int, mean: Sequence[float],
                 std: Sequence[float], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        config = backbone.config
        self.name = name
        self.patch_size = int(config.patch_size)
        self.num_channels = int(getattr(config, "num_channels", 3))
        self.hidden_size = int(config.hidden_size)
        self.image_size = image_size
        self.grid = (image_size // self.patch_size, image_size // self.patch_size)
        self.dtype = dtype
        if len(mean) == 1:
            mean, std = list(mean) * self.num_channels, list(std) * self.num_channels
        if len(mean) != self.num_channels or len(std) != self.num_channels:
            raise InputError(f"image_mean/image_std have {len(mean)}/{len(std)} entries for "
                             f"{self.num_channels} channels")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.backbone = backbone.to(dtype).eval().requires_grad_(False)
        params = inspect.signature(backbone.forward).parameters
        self._interpolate = ("interpolate_pos_encoding" in params
                             and image_size != int(getattr(config, "image_size", image_size)))
        registers = int(getattr(config, "num_register_tokens", 0) or 0)
        self.num_prefix_tokens = self._count_prefix_tokens(expected=1 + registers if registers else None)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: torch.dtype | str = torch.float32,
                        device: torch.device | str | None = None, image_size: int | None = None,
                        flag: str = "--repa_encoder") -> RepaEncoder:
        """Load ``AutoModel.from_pretrained(name_or_path)`` (a local folder, or a Hub id in the cache when
        offline) and its image processor. Raises :class:`InputError` naming ``flag`` when it cannot be
        loaded or gives no patch tokens, ``image_size`` (the flag ``--repa_image_size``) when not a multiple
        of the patch size."""
        if not isinstance(name_or_path, str) or not name_or_path.strip():
            raise InputError(f"{flag} must be a Hub id or a folder, got {name_or_path!r}")
        dtype = _check_dtype(flag.replace("encoder", "encoder_dtype"), dtype)
        local = Path(name_or_path).expanduser()
        if name_or_path.startswith((".", "/", "~")) and not local.is_dir():
            raise InputError(f"{flag} {name_or_path!r} is not an existing folder (a saved transformers vision "
                             "model, or a Hub id 'org/name')")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # load reports / progress bars
        try:
            backbone = AutoModel.from_pretrained(str(local) if local.is_dir() else name_or_path)
        except Exception as err:  # OSError, ValueError, KeyError, ... for a bad reference
            raise InputError(f"{flag} {name_or_path!r} could not be loaded with transformers' AutoModel "
                             f"(offline and not cached, misspelled, or not a model folder): "
                             f"{_first_line(err.__cause__ or err)}") from err
        finally:
            hf_logging.set_verbosity(level)
        config = backbone.config
        for key in ("patch_size", "hidden_size"):
            if not isinstance(getattr(config, key, None), int):
                raise InputError(f"{flag} {name_or_path!r} ({type(backbone).__name__}) has no integer {key} in "
                                 "its config: REPA needs a ViT-style backbone that gives patch tokens")
        processor = _load_processor(str(local) if local.is_dir() else name_or_path)
        if image_size is None:
            if processor is not None and getattr(processor, "do_center_crop", False):
                image_size = _side(getattr(processor, "crop_size", None))
            if image_size is None and processor is not None:
                image_size = _side(getattr(processor, "size", None))
            if image_size is None:
                image_size = _side(getattr(config, "image_size", None))
            if image_size is None:
                raise InputError(f"{flag} {name_or_path!r}: no image size in its processor or config; give one")
            size_flag = f"the image size of {flag} {name_or_path!r}"
        else:
            size_flag = flag.replace("encoder", "image_size")
        image_size = check_int(size_flag, image_size, minimum=1)
        if image_size % int(config.patch_size):
            raise InputError(f"{size_flag} {image_size} is not a multiple of the encoder's patch size "
                             f"{config.patch_size}")
        mean = list(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
        std = list(getattr(processor, "image_std", None) or IMAGENET_STD)
        if getattr(processor, "image_mean", None) is None and getattr(config, "num_channels", 3) == 1:
            mean, std = [sum(IMAGENET_MEAN) / 3], [sum(IMAGENET_STD) / 3]  # grey: the channel average
        if processor is not None and getattr(processor, "do_normalize", True) is False:
            mean, std = [0.0], [1.0]
        try:
            encoder = cls(backbone, name=name_or_path, image_size=image_size, mean=mean, std=std, dtype=dtype)
        except InputError as err:
            raise InputError(f"{flag} {name_or_path!r}: {err}") from None
        return encoder.to(device) if device is not None else encoder

    def train(self, mode: bool = True) -> RepaEncoder:
        """Frozen: stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _count_prefix_tokens(self, expected: int | None) -> int:
        """Tokens before the patch tokens, measured on one blank image (and checked against ``expected``)."""
        x = torch.zeros(1, self.num_channels, self.image_size, self.image_size, dtype=self.dtype)
        with torch.no_grad():
            length = self._backbone_tokens(x).shape[1]
        prefix = length - self.grid[0] * self.grid[1]
        if prefix < 0 or (expected is not None and prefix != expected):
            raise InputError(f"encoder {self.name!r} gives {length} tokens for a {self.image_size} px image, "
                             f"not CLS/registers + {self.grid[0]}x{self.grid[1]} patch tokens")
        return prefix

    def _backbone_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        out = self.backbone(pixel_values=pixel_values, **kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if hidden.ndim != 3:
            raise InputError(f"encoder {self.name!r} gives a last hidden state of shape {tuple(hidden.shape)}, "
                             "not (N, tokens, width): REPA needs a ViT-style backbone")
        return hidden  # (N, L, D)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` in [-1, 1] -> the encoder's normalised input ``(N, C_enc, S, S)``."""
        if not torch.is_tensor(images) or images.ndim != 4 or not images.is_floating_point():
            raise InputError(f"images must be a float tensor (N, C, H, W) in [-1, 1], got "
                             f"{tuple(getattr(images, 'shape', ()))} {getattr(images, 'dtype', type(images))}")
        c = images.shape[1]
        if c != self.num_channels and not (c == 1 and self.num_channels == 3):
            raise InputError(f"images have {c} channels; encoder {self.name!r} takes {self.num_channels}"
                             + (" (grey images are repeated to 3, not the reverse)" if c == 3 else ""))
        x = (images.to(self.mean.device, torch.float32) + 1.0) / 2.0  # (N, C, H, W) in [0, 1]
        if c != self.num_channels:
            x = x.expand(-1, self.num_channels, -1, -1)  # (N, 3, H, W): grey repeated
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return (x - self.mean) / self.std  # (N, C_enc, S, S)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` in [-1, 1] -> patch tokens ``(N, h * w, hidden_size)`` float32."""
        x = self.preprocess(images).to(self.dtype)  # (N, C_enc, S, S)
        tokens = self._backbone_tokens(x)[:, self.num_prefix_tokens:]  # (N, h*w, D)
        return tokens.float()


def _check_dtype(flag: str, dtype: torch.dtype | str) -> torch.dtype:
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if isinstance(dtype, str) and dtype in names:
        return names[dtype]
    if isinstance(dtype, torch.dtype) and dtype in names.values():
        return dtype
    raise InputError(f"{flag} must be one of {', '.join(names)}, got {dtype!r}")


def resize_token_grid(tokens: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> torch.Tensor:
    """Resize a row-major ``src_grid`` of tokens ``(N, h * w, D)`` to ``dst_grid``: ``(N, h' * w', D)``.

    The tokens are laid out as the 2-D grid ``(N, D, h, w)`` and resized bilinearly
    (``align_corners=False``, with antialiasing when shrinking, so each output token averages the encoder
    tokens it covers); an equal grid is returned unchanged (the paper's setting: DINOv2-B/14 at 224 px and
    SiT/2 at 256 px both give 16 x 16).
    """
    if not torch.is_tensor(tokens) or tokens.ndim != 3:
        raise InputError(f"tokens must be (N, T, D), got {tuple(getattr(tokens, 'shape', ()))}")
    (h, w), (h2, w2) = src_grid, dst_grid
    if tokens.shape[1] != h * w:
        raise InputError(f"tokens have {tokens.shape[1]} tokens, not the {h}x{w} src_grid")
    if min(h, w, h2, w2) < 1:
        raise InputError(f"grids must be positive, got src_grid {src_grid}, dst_grid {dst_grid}")
    if (h, w) == (h2, w2):
        return tokens
    n, _, d = tokens.shape
    grid = tokens.transpose(1, 2).reshape(n, d, h, w)  # (N, D, h, w)
    shrink = h2 < h or w2 < w
    out = F.interpolate(grid.float(), size=(h2, w2), mode="bilinear", align_corners=False, antialias=shrink)
    return out.reshape(n, d, h2 * w2).transpose(1, 2).to(tokens.dtype)  # (N, h'*w', D)


#################################################################################
#                   The SiT's hidden state after block `depth`                   #
#################################################################################


def _unwrap(model: nn.Module) -> nn.Module:
    """The SiT inside DDP (``.module``) / torch.compile (``._orig_mod``) wrappers."""
    while not hasattr(model, "transformer_blocks"):
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
    return model


def check_repa_depth(depth: Any, num_blocks: int, flag: str = "--repa_depth") -> int:
    """``depth`` as an int in ``[1, num_blocks]`` (the block whose output is aligned), else InputError."""
    depth = check_int(flag, depth)
    if not 1 <= depth <= num_blocks:
        raise InputError(f"{flag} must be in [1, {num_blocks}] (the model's number of blocks), got {depth}")
    return depth


def token_grid(transformer: nn.Module) -> tuple[int, int]:
    """The SiT's token grid ``(sample_size // patch_size,) * 2``."""
    cfg = _unwrap(transformer).config
    side = cfg.sample_size // cfg.patch_size
    return side, side


class HiddenCapture:
    """Holds the output ``(N, T, D)`` of one block, written by a forward hook on each forward."""

    def __init__(self, block: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self._handle = block.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.value = output  # (N, T, D), part of the autograd graph

    def pop(self) -> torch.Tensor:
        """The captured hidden state of the last forward (then forgotten, so it does not pin memory)."""
        value, self.value = self.value, None
        if value is None:
            raise RuntimeError("no forward of the transformer ran since the last pop()")
        return value

    def remove(self) -> None:
        """Remove the hook: the forward is the plain one again."""
        self._handle.remove()
        self.value = None


def attach_hidden_capture(transformer: nn.Module, depth: int) -> HiddenCapture:
    """Hook ``transformer_blocks[depth - 1]`` until ``.remove()``; see :func:`capture_hidden_state`."""
    model = _unwrap(transformer)
    blocks = getattr(model, "transformer_blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise InputError(f"transformer {type(model).__name__} has no transformer_blocks to align")
    depth = check_repa_depth(depth, len(blocks), flag="depth")
    return HiddenCapture(blocks[depth - 1])


@contextmanager
def capture_hidden_state(transformer: nn.Module, depth: int) -> Iterator[HiddenCapture]:
    """Capture the hidden state after block ``depth`` (1-based; the input of block ``depth + 1``).

    A forward hook on ``transformer_blocks[depth - 1]`` stores its output on every forward inside the
    ``with`` block; ``capture.pop()`` returns it (gradients flow through it into the first ``depth`` blocks,
    also under non-reentrant gradient checkpointing). The hook is removed on exit, so the forward outside is
    the plain one: same code, same outputs, no cost. Under ``torch.compile`` keep one capture for the whole
    REPA phase (hooks added or removed force a recompile).
    """
    capture = attach_hidden_capture(transformer, depth)
    try:
        yield capture
    finally:
        capture.remove()


#################################################################################
#                             Projector and loss                                 #
#################################################################################


class RepaProjector(nn.Module):
    """``h_phi``: the MLP of REPA (``build_mlp``), hidden -> projector_dim -> projector_dim -> encoder_dim.

    ``Linear(hidden, P) - SiLU - Linear(P, P) - SiLU - Linear(P, D_enc)``, applied token-wise; weights
    xavier-uniform and zero biases (the paper's SiT initialisation), drawn from ``generator`` if given.
    """

    def __init__(self, hidden_size: int, projector_dim: int, encoder_dim: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        hidden_size = check_int("hidden_size", hidden_size, minimum=1)
        projector_dim = check_int("projector_dim", projector_dim, minimum=1)
        encoder_dim = check_int("encoder_dim", encoder_dim, minimum=1)
        self.hidden_size, self.projector_dim, self.encoder_dim = hidden_size, projector_dim, encoder_dim
        self.linear_1 = nn.Linear(hidden_size, projector_dim)
        self.linear_2 = nn.Linear(projector_dim, projector_dim)
        self.linear_3 = nn.Linear(projector_dim, encoder_dim)
        for layer in (self.linear_1, self.linear_2, self.linear_3):
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(N, T, hidden_size)`` -> ``(N, T, encoder_dim)``."""
        if not torch.is_tensor(hidden) or hidden.ndim != 3 or hidden.shape[-1] != self.hidden_size:
            raise InputError(f"hidden must be (N, T, {self.hidden_size}), got {tuple(getattr(hidden, 'shape', ()))}")
        x = F.silu(self.linear_1(hidden))  # (N, T, P)
        x = F.silu(self.linear_2(x))  # (N, T, P)
        return self.linear_3(x)  # (N, T, D_enc)


class RepaConvProjector(nn.Module):
    """iREPA's projector: one ``kernel_size x kernel_size`` convolution (stride 1, same padding) from the SiT
    width to the encoder's, applied to the hidden tokens laid out on their row-major ``grid``, so each
    projected token also sees its neighbours (Singh et al. 2025, arXiv 2512.10794, Sec. 5).

    Initialised as ``nn.Conv2d`` initialises itself (Kaiming-uniform with ``a = sqrt(5)``, bias uniform in
    ``+-1/sqrt(fan_in)``), drawn from ``generator`` if given.
    """

    def __init__(self, hidden_size: int, encoder_dim: int, grid: tuple[int, int], kernel_size: int = 3,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        hidden_size = check_int("hidden_size", hidden_size, minimum=1)
        encoder_dim = check_int("encoder_dim", encoder_dim, minimum=1)
        kernel_size = check_int("kernel_size", kernel_size, minimum=1)
        if kernel_size % 2 == 0:
            raise InputError(f"kernel_size must be odd (same padding keeps the token grid), got {kernel_size}")
        if (not isinstance(grid, (tuple, list)) or len(grid) != 2
                or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)):
            raise InputError(f"grid must be two positive ints (h, w), got {grid!r}")
        self.hidden_size, self.encoder_dim, self.grid = hidden_size, encoder_dim, (int(grid[0]), int(grid[1]))
        self.conv = nn.Conv2d(hidden_size, encoder_dim, kernel_size, stride=1, padding=kernel_size // 2)
        fan_in = hidden_size * kernel_size * kernel_size
        nn.init.kaiming_uniform_(self.conv.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.conv.bias, -bound, bound, generator=generator)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(N, h * w, hidden_size)`` -> ``(N, h * w, encoder_dim)``."""
        h, w = self.grid
        if (not torch.is_tensor(hidden) or hidden.ndim != 3 or hidden.shape[1] != h * w
                or hidden.shape[-1] != self.hidden_size):
            raise InputError(f"hidden must be (N, {h * w}, {self.hidden_size}) (a {h}x{w} token grid), got "
                             f"{tuple(getattr(hidden, 'shape', ()))}")
        n = hidden.shape[0]
        x = hidden.transpose(1, 2).reshape(n, self.hidden_size, h, w)  # (N, D, h, w)
        return self.conv(x).reshape(n, self.encoder_dim, h * w).transpose(1, 2)  # (N, T, D_enc)


def build_projector(kind: str, hidden_size: int, encoder_dim: int, *, projector_dim: int = 2048,
                    kernel_size: int = 3, grid: tuple[int, int] | None = None,
                    generator: torch.Generator | None = None) -> nn.Module:
    """The projector of a run: ``"mlp"`` (:class:`RepaProjector`, width ``projector_dim``) or ``"conv"``
    (:class:`RepaConvProjector`, ``kernel_size`` on the SiT's token ``grid``)."""
    if kind == "mlp":
        return RepaProjector(hidden_size, projector_dim, encoder_dim, generator=generator)
    if kind == "conv":
        if grid is None:
            raise InputError("a conv projector needs the SiT's token grid (grid=(h, w))")
        return RepaConvProjector(hidden_size, encoder_dim, grid, kernel_size, generator=generator)
    raise InputError(f"projector kind must be one of {', '.join(REPA_PROJECTORS)}, got {kind!r}")


def spatial_zscore(features: torch.Tensor, alpha: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """iREPA's spatial normalisation of encoder patch features ``(N, T, D)``:
    ``(y - alpha * mean_T(y)) / (std_T(y) + eps)`` per image and channel, the mean and the (unbiased) standard
    deviation taken over the ``T`` tokens. ``alpha`` in [0, 1] sets how much of the global (image-wide) component
    is removed; 1 removes it all. Computed in float32. Needs ``T >= 2``."""
    if not torch.is_tensor(features) or features.ndim != 3:
        raise InputError(f"features must be (N, T, D), got {tuple(getattr(features, 'shape', ()))}")
    if features.shape[1] < 2:
        raise InputError(f"spatial normalisation needs at least 2 tokens per image, got {features.shape[1]}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be a number in [0, 1], got {alpha!r}")
    y = features.float()
    return (y - float(alpha) * y.mean(dim=1, keepdim=True)) / (y.std(dim=1, keepdim=True) + eps)


def repa_loss(projected: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``-cos(y*, h_phi(h))`` averaged over tokens (and the batch with ``reduction="mean"``).

    ``projected`` ``h_phi(h)`` and ``target`` ``y*`` are ``(N, T, D)``; computed in float32. Returns a scalar,
    or ``(N,)`` per-sample token means with ``reduction="none"``. In [-1, 1]; -1 when aligned.
    """
    for name, value in (("projected", projected), ("target", target)):
        if not torch.is_tensor(value) or value.ndim != 3:
            raise InputError(f"{name} must be (N, T, D), got {tuple(getattr(value, 'shape', ()))}")
    if projected.shape != target.shape:
        raise InputError(f"projected {tuple(projected.shape)} and target {tuple(target.shape)} differ in shape")
    if reduction not in ("mean", "none"):
        raise InputError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    cos = (F.normalize(projected.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(-1)  # (N, T)
    per_sample = -cos.mean(dim=1)  # (N,)
    return per_sample.mean() if reduction == "mean" else per_sample


#################################################################################
#                            Precomputed features                                #
#################################################################################


def repa_shard_file(shard: str) -> str:
    """File of a shard's features: ``<shard>-repa.npy``, ``(rows, 2, T, D)``: [crop, mirror]."""
    return f"{shard}-repa.npy"


@dataclass(frozen=True)
class RepaFeaturesMeta:
    """``repa.json``: what produced the features of a folder (written by ``precompute_latents.py``)."""

    encoder: str
    image_size: int
    grid: tuple[int, int]
    dim: int
    dtype: str
    num_examples: int
    shards: tuple[str, ...]
    resolution: int
    image_channels: int

    @staticmethod
    def read(folder: str | Path) -> RepaFeaturesMeta:
        path = Path(folder) / REPA_META_FILE
        if not path.is_file():
            raise DataError(f"{folder} holds no precomputed REPA features (no {REPA_META_FILE}; make them with "
                            "precompute_latents.py --repa_encoder ...)")
        try:
            data = json.loads(path.read_text())
            meta = RepaFeaturesMeta(
                encoder=str(data["encoder"]), image_size=int(data["image_size"]),
                grid=tuple(int(n) for n in data["grid"]), dim=int(data["dim"]), dtype=str(data["dtype"]),
                num_examples=int(data["num_examples"]), shards=tuple(str(s) for s in data["shards"]),
                resolution=int(data["resolution"]), image_channels=int(data["image_channels"]),
            )
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{path} is not a valid {REPA_META_FILE} ({type(err).__name__}: {err})") from None
        if len(meta.grid) != 2:
            raise DataError(f"{path}: grid must be [h, w], got {list(meta.grid)}")
        return meta

    def write(self, folder: str | Path) -> None:
        data = {"encoder": self.encoder, "image_size": self.image_size, "grid": list(self.grid), "dim": self.dim,
                "dtype": self.dtype, "num_examples": self.num_examples, "shards": list(self.shards),
                "resolution": self.resolution, "image_channels": self.image_channels}
        (Path(folder) / REPA_META_FILE).write_text(json.dumps(data, indent=2))


class RepaFeatureStore:
    """The precomputed features of a folder, memory-mapped: ``get(row, flip)`` -> ``(T, D)`` float32.

    Row ``i`` is dataset row ``i`` (the order of the latents / the dataset given to precompute); ``flip``
    picks the features of the mirror image (``pixels.flip(-1)``), stored next to the crop's.
    """

    def __init__(self, folder: str | Path, flag: str = "--latents_dir") -> None:
        self.folder, self.flag = Path(folder), flag
        try:
            self.meta = RepaFeaturesMeta.read(folder)
        except DataError as err:
            raise DataError(f"{flag} {str(folder)!r}: {err}") from None
        self._features: list[np.ndarray] | None = None
        self._offsets: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def grid(self) -> tuple[int, int]:
        return self.meta.grid

    def __len__(self) -> int:
        return self.meta.num_examples

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by "spawn" get the folder, not the maps (a pickled memmap is a full copy).
        return {**self.__dict__, "_features": None, "_offsets": None}

    def _open(self) -> None:
        # Opened lazily so the store pickles cheaply into DataLoader workers.
        files = [self.folder / repa_shard_file(s) for s in self.meta.shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{self.flag} {str(self.folder)!r}: missing feature shard(s) {missing}")
        features = [np.load(f, mmap_mode="r") for f in files]
        t, d = self.grid[0] * self.grid[1], self.dim
        for f, arr in zip(files, features, strict=True):
            if arr.ndim != 4 or arr.shape[1:] != (2, t, d):
                raise DataError(f"{self.flag} {str(self.folder)!r}: {f.name} has shape {arr.shape}, expected "
                                f"(rows, 2, {t}, {d})")
        offsets = np.cumsum([0] + [len(a) for a in features])
        if offsets[-1] != self.meta.num_examples:
            raise DataError(f"{self.flag} {str(self.folder)!r}: feature shards hold {offsets[-1]} rows, "
                            f"{REPA_META_FILE} says {self.meta.num_examples}")
        self._features, self._offsets = features, offsets

    def labels(self) -> np.ndarray:
        """The labels stored beside the features (``<shard>-labels.npy``), in row order."""
        files = [self.folder / f"{s}-labels.npy" for s in self.meta.shards]
        if not all(f.is_file() for f in files):
            raise DataError(f"{self.flag} {str(self.folder)!r}: label shards missing")
        return np.concatenate([np.load(f) for f in files]) if files else np.zeros(0, np.int64)

    def get(self, row: int, flip: bool) -> torch.Tensor:
        """Features ``(T, D)`` float32 of dataset row ``row`` (its mirror's when ``flip``)."""
        if self._features is None:
            self._open()
        if not 0 <= row < len(self):
            raise DataError(f"row {row} is outside the {len(self)} rows of the features in {str(self.folder)!r}")
        shard = int(np.searchsorted(self._offsets, row, side="right") - 1)
        arr = np.array(self._features[shard][row - self._offsets[shard], int(flip)], dtype=np.float32)  # (T, D)
        return torch.from_numpy(arr)

    def check(self, *, num_rows: int, resolution: int | None = None, encoder: str | None = None,
              labels: Sequence[int] | np.ndarray | None = None) -> None:
        """At the door: the features are complete and belong to this data (row count, resolution, encoder
        name, and the labels row by row when given). Raises :class:`DataError` naming the folder's flag."""
        where = f"{self.flag} {str(self.folder)!r}"
        self._open()
        if len(self) != num_rows:
            raise DataError(f"{where}: the REPA features have {len(self)} rows, the training data {num_rows}")
        if resolution is not None and self.meta.resolution != resolution:
            raise DataError(f"{where}: the REPA features were computed at resolution {self.meta.resolution}, "
                            f"training runs at --resolution {resolution}")
        if encoder is not None and encoder != self.meta.encoder:
            raise DataError(f"{where}: the REPA features come from encoder {self.meta.encoder!r}, not "
                            f"--repa_encoder {encoder!r}")
        if labels is not None:
            stored, given = self.labels(), np.asarray(labels)
            if stored.shape != given.shape or not np.array_equal(stored, given):
                bad = int(np.flatnonzero(stored != given)[0]) if stored.shape == given.shape else None
                at = f" (first difference at row {bad})" if bad is not None else ""
                raise DataError(f"{where}: the labels stored with the REPA features differ from the training "
                                f"data's{at}: not the same rows in the same order")


class WithRepaFeatures(torch.utils.data.Dataset):
    """A map-style training dataset keyed by ``(position, row)`` (``ImageDataset``, ``LatentDataset``) plus
    each example's precomputed features under ``"repa_features"`` ``(T, D)`` float32.

    The features are the mirror's exactly when ``random_flip and flip_for(seed, position)``, the coin the
    wrapped dataset tosses for its pixels / latents. Other attributes are those of the wrapped dataset.
    """

    def __init__(self, dataset: Any, store: RepaFeatureStore, seed: int, random_flip: bool) -> None:
        self.dataset, self.store, self.seed, self.random_flip = dataset, store, seed, random_flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "store") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        position, row = key
        example = self.dataset[key]
        flip = self.random_flip and flip_for(self.seed, position)
        example[REPA_FEATURES_KEY] = self.store.get(int(row), flip)  # (T, D)
        return example


def repa_targets(batch: dict[str, Any], grid: tuple[int, int], encoder: RepaEncoder | None = None,
                 zscore_alpha: float | None = None) -> torch.Tensor:
    """The alignment targets ``y*`` of a batch on the SiT's token ``grid``: ``(n, grid_h * grid_w, D)`` float32.

    ``batch["repa_features"]`` (precomputed, a square encoder grid) when present, else
    ``encoder(batch["pixels"])``; with ``zscore_alpha`` (iREPA) standardised by :func:`spatial_zscore` on the
    encoder's own grid; then resized by :func:`resize_token_grid` when the grids differ."""
    if REPA_FEATURES_KEY in batch:
        feats = batch[REPA_FEATURES_KEY].float()  # (n, T, D)
        side = math.isqrt(feats.shape[1])
        if side * side != feats.shape[1]:
            raise InputError(f"precomputed features have {feats.shape[1]} tokens, not a square grid")
        src = (side, side)
    elif encoder is not None and "pixels" in batch:
        feats, src = encoder(batch["pixels"]), encoder.grid  # (n, T, D)
    elif encoder is None:
        raise InputError(f"the batch has no {REPA_FEATURES_KEY!r} and no encoder was given")
    else:
        raise InputError("the batch has no 'pixels' for the REPA encoder (latents need precomputed features: "
                         "precompute_latents.py --repa_encoder ...)")
    if zscore_alpha is not None:
        feats = spatial_zscore(feats, zscore_alpha)  # (n, T, D) float32
    return resize_token_grid(feats, src, tuple(grid))
