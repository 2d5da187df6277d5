"""Official SiT checkpoints (github willisma/SiT) -> ``SiTTransformer2DModel``.

One explicit key table (``official -> diffusers``), the configuration inferred from tensor shapes, and a
check that every key is used exactly once with the expected shape: a missing, extra or mis-shaped key
raises ``ConversionError`` naming it (never ``strict=False``).

Accepted inputs:

* the released format: a bare state dict saved with ``torch.save`` (e.g. ``SiT-XL-2-256.pt``, on the Hub in
  ``nyu-visionx/SiT-collections``), or the same keys in a ``.safetensors`` file;
* the official ``train.py`` format ``{"model", "ema", "opt", "args"}`` (EMA weights by default).

``.pt`` files are read with ``torch.load(..., weights_only=True)``: nothing but tensors, containers and
primitive values is unpickled. The only class allowed beyond those is ``argparse.Namespace`` (the
``args`` entry of ``train.py`` checkpoints), which holds plain values.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .modeling_sit import SIT_CONFIGS, SiTTransformer2DModel

__all__ = [
    "ConversionError",
    "convert_official_state_dict",
    "load_official_checkpoint",
    "load_official_state_dict",
    "official_to_diffusers_key",
]


class ConversionError(ValueError):
    """An official checkpoint that does not map onto ``SiTTransformer2DModel``."""


#################################################################################
#                                    Key table                                  #
#################################################################################

# Keys outside the transformer blocks: official name -> diffusers name.
_GLOBAL_KEYS: dict[str, str] = {
    "pos_embed": "pos_embed",
    "x_embedder.proj.weight": "patch_embed.proj.weight",
    "x_embedder.proj.bias": "patch_embed.proj.bias",
    "t_embedder.mlp.0.weight": "time_embed.linear_1.weight",
    "t_embedder.mlp.0.bias": "time_embed.linear_1.bias",
    "t_embedder.mlp.2.weight": "time_embed.linear_2.weight",
    "t_embedder.mlp.2.bias": "time_embed.linear_2.bias",
    "y_embedder.embedding_table.weight": "class_embed.embedding_table.weight",
    "final_layer.adaLN_modulation.1.weight": "final_layer.adaLN_modulation.weight",
    "final_layer.adaLN_modulation.1.bias": "final_layer.adaLN_modulation.bias",
    "final_layer.linear.weight": "final_layer.linear.weight",
    "final_layer.linear.bias": "final_layer.linear.bias",
}

# Keys inside block ``i``: ``blocks.{i}.<official>`` -> ``transformer_blocks.{i}.<diffusers>``.
_BLOCK_KEYS: dict[str, str] = {
    "attn.qkv.weight": "attn.to_qkv.weight",
    "attn.qkv.bias": "attn.to_qkv.bias",
    "attn.proj.weight": "attn.to_out.weight",
    "attn.proj.bias": "attn.to_out.bias",
    "mlp.fc1.weight": "ff.linear_1.weight",
    "mlp.fc1.bias": "ff.linear_1.bias",
    "mlp.fc2.weight": "ff.linear_2.weight",
    "mlp.fc2.bias": "ff.linear_2.bias",
    "adaLN_modulation.1.weight": "adaLN_modulation.weight",
    "adaLN_modulation.1.bias": "adaLN_modulation.bias",
}

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def official_to_diffusers_key(key: str) -> str | None:
    """Map one official key to its diffusers name; ``None`` if the table does not know it."""
    if key in _GLOBAL_KEYS:
        return _GLOBAL_KEYS[key]
    match = _BLOCK_RE.match(key)
    if match and match.group(2) in _BLOCK_KEYS:
        return f"transformer_blocks.{match.group(1)}.{_BLOCK_KEYS[match.group(2)]}"
    return None


#################################################################################
#                                    Loading                                    #
#################################################################################


def _resolve_path(path_or_hub_spec: str | os.PathLike[str]) -> Path:
    """A local file, or ``"repo_id:filename"`` on the Hugging Face Hub (downloaded to the HF cache)."""
    path = Path(path_or_hub_spec)
    if path.exists():
        return path
    spec = str(path_or_hub_spec)
    if ":" in spec and "/" in spec.split(":", 1)[0]:
        from huggingface_hub import hf_hub_download

        repo_id, filename = spec.split(":", 1)
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    raise FileNotFoundError(
        f"checkpoint {spec!r} is neither a local file nor a Hub spec 'owner/repo:filename'"
    )


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def load_official_state_dict(
    path_or_hub_spec: str | os.PathLike[str], use_ema: bool = True
) -> dict[str, torch.Tensor]:
    """Read an official SiT checkpoint and return its model state dict (official key names).

    Args:
        path_or_hub_spec: a ``.pt`` / ``.pth`` / ``.safetensors`` file, or ``"owner/repo:filename"``.
        use_ema: for ``train.py`` checkpoints, take ``"ema"`` (default) rather than ``"model"``.

    Raises:
        ConversionError: the file is not a SiT state dict or ``train.py`` checkpoint.
        pickle.UnpicklingError: the ``.pt`` file holds objects ``weights_only`` refuses.
    """
    path = _resolve_path(path_or_hub_spec)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping) and ("ema" in obj or "model" in obj):
        which = "ema" if use_ema else "model"
        if which not in obj:
            raise ConversionError(f"{path}: train.py checkpoint without a {which!r} entry (has {sorted(obj)})")
        if not _is_tensor_dict(obj[which]):
            raise ConversionError(f"{path}: entry {which!r} is not a state dict of tensors")
        return dict(obj[which])
    raise ConversionError(
        f"{path}: expected a state dict of tensors or a train.py checkpoint with 'ema'/'model', "
        f"got {type(obj).__name__}"
    )


#################################################################################
#                                   Conversion                                  #
#################################################################################


def _infer_config(sd: Mapping[str, torch.Tensor], num_heads: int | None) -> dict[str, Any]:
    """SiT constructor arguments from the official tensor shapes.

    ``hidden_size, in_channels, patch_size`` from ``x_embedder.proj.weight`` (D, C, p, p); ``depth`` from the
    block indices; ``mlp_ratio`` from ``fc1``; ``learn_sigma`` from the final linear rows ``p*p*C_out``;
    ``num_classes`` = table rows - 1 (the null row of ``class_dropout_prob > 0``); ``sample_size`` =
    ``sqrt(T) * p`` from ``pos_embed`` (1, T, D). ``num_heads`` is not visible in the shapes: it comes from
    the named config of that width and depth unless given.
    """
    for key in ("x_embedder.proj.weight", "pos_embed", "y_embedder.embedding_table.weight",
                "final_layer.linear.weight", "blocks.0.mlp.fc1.weight"):
        if key not in sd:
            raise ConversionError(f"missing key {key!r}: cannot infer the SiT configuration")
    w = sd["x_embedder.proj.weight"]
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise ConversionError(f"x_embedder.proj.weight has shape {tuple(w.shape)}, expected (D, C, p, p)")
    hidden_size, in_channels, patch_size = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k)))
    num_tokens = int(sd["pos_embed"].shape[-2])
    grid = round(num_tokens**0.5)
    if grid * grid != num_tokens:
        raise ConversionError(f"pos_embed has {num_tokens} tokens, not a square grid")
    out_rows = int(sd["final_layer.linear.weight"].shape[0])
    out_channels, rem = divmod(out_rows, patch_size * patch_size)
    if rem or out_channels not in (in_channels, 2 * in_channels):
        raise ConversionError(
            f"final_layer.linear.weight has {out_rows} rows; expected p*p*C or p*p*2C with p={patch_size}, "
            f"C={in_channels}"
        )
    if num_heads is None:
        named = [
            (name, c["num_heads"]) for name, c in SIT_CONFIGS.items()
            if c["hidden_size"] == hidden_size and c["depth"] == depth and c["patch_size"] == patch_size
        ]
        if not named:
            raise ConversionError(
                f"width {hidden_size}, depth {depth}, patch {patch_size} match no named SiT config; "
                "pass num_heads explicitly"
            )
        num_heads = named[0][1]
    return {
        "sample_size": grid * patch_size,
        "patch_size": patch_size,
        "in_channels": in_channels,
        "hidden_size": hidden_size,
        "depth": depth,
        "num_heads": int(num_heads),
        "mlp_ratio": int(sd["blocks.0.mlp.fc1.weight"].shape[0]) / hidden_size,
        "class_dropout_prob": 0.1,
        "num_classes": int(sd["y_embedder.embedding_table.weight"].shape[0]) - 1,
        "learn_sigma": out_channels == 2 * in_channels,
    }


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Official SiT state dict -> ``(config, diffusers_state_dict)`` for ``SiTTransformer2DModel``.

    Every official key must map through the key table onto a distinct key of the model built from the
    inferred config, with exactly the model's shape; every model key must be filled.

    Args:
        state_dict: official key names (as ``load_official_state_dict`` returns).
        num_heads: attention heads; inferred from the named configs when ``None``.

    Raises:
        ConversionError: naming every unknown/extra key, missing key or shape mismatch.
    """
    config = _infer_config(state_dict, num_heads)
    with torch.device("meta"):
        reference = SiTTransformer2DModel(**config).state_dict()  # shapes only, no allocation

    converted: dict[str, torch.Tensor] = {}
    unknown, bad_shape = [], []
    for key, value in state_dict.items():
        new_key = official_to_diffusers_key(key)
        if new_key is None or new_key not in reference:
            unknown.append(key)
            continue
        if tuple(value.shape) != tuple(reference[new_key].shape):
            bad_shape.append(f"{key}: {tuple(value.shape)} != expected {tuple(reference[new_key].shape)}")
            continue
        converted[new_key] = value.detach().contiguous()  # no copy; load_state_dict copies once
    missing = sorted(set(reference) - set(converted) - {official_to_diffusers_key(k) for k in state_dict})
    problems = []
    if unknown:
        problems.append(f"unexpected keys: {sorted(unknown)}")
    if missing:
        problems.append(f"missing keys (diffusers names): {missing}")
    if bad_shape:
        problems.append(f"wrong shapes: {bad_shape}")
    if problems:
        raise ConversionError(f"cannot convert checkpoint for config {config}: " + "; ".join(problems))
    return config, converted


def load_official_checkpoint(
    path_or_hub_spec: str | os.PathLike[str], use_ema: bool = True, num_heads: int | None = None
) -> SiTTransformer2DModel:
    """Load an official checkpoint (file or ``"owner/repo:filename"``) as an eval-mode ``SiTTransformer2DModel``."""
    config, converted = convert_official_state_dict(load_official_state_dict(path_or_hub_spec, use_ema), num_heads)
    model = SiTTransformer2DModel(**config)
    model.load_state_dict(converted, strict=True)
    return model.eval()
