"""Official SiT checkpoints (github willisma/SiT) -> ``SiTTransformer2DModel``.

One explicit key table (``official -> diffusers``), the configuration inferred from tensor shapes, and a
check that every key is used exactly once with the expected shape: a missing, extra or mis-shaped key
raises ``ConversionError`` naming it (never ``strict=False``). A tensor holding NaN/inf is refused, naming
the first such key.

Accepted inputs:

* the released format: a bare state dict saved with ``torch.save`` (e.g. ``SiT-XL-2-256.pt``, on the Hub in
  ``nyu-visionx/SiT-collections``), or the same keys in a ``.safetensors`` file;
* the official ``train.py`` format ``{"model", "ema", "opt", "args"}`` (EMA weights by default).

The format is read from the file's first bytes, not its name (a zip archive or pickle stream from
``torch.save``, or a safetensors header); anything else (an empty, truncated or text file, an image, ...)
raises ``ConversionError`` saying what the file is. ``torch.save`` files are read with
``torch.load(..., weights_only=True)``: nothing but tensors, containers and primitive values is unpickled,
so loading never runs code from the file. The only class allowed beyond those is ``argparse.Namespace``
(the ``args`` entry of ``train.py`` checkpoints), which holds plain values.

``ConversionError`` is an :class:`~sit_diffusers.validation.InputError`: the CLI
(``pipelines/convert_sit_to_diffusers.py``) turns it into one line and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .modeling_sit import SIT_CONFIGS, SiTTransformer2DModel
from .validation import InputError, check_int

__all__ = [
    "CheckpointNotFoundError",
    "ConversionError",
    "convert_official_state_dict",
    "infer_official_config",
    "load_official_checkpoint",
    "load_official_state_dict",
    "official_guidance_channels",
    "official_to_diffusers_key",
]


class ConversionError(InputError):
    """A checkpoint that cannot be read, or does not map onto ``SiTTransformer2DModel``; the message names
    the file or the offending key."""


class CheckpointNotFoundError(ConversionError, FileNotFoundError):
    """The checkpoint is neither an existing file nor a Hub file ``owner/repo:filename`` to fetch."""


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

# "owner/repo:filename" (the repo part as the Hub spells ids; a path such as "./x:y" or "/a/b:c" is not one)
_HUB_SPEC_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<file>[^:]+)$")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTO = b"\x80"  # torch.save(..., _use_new_zipfile_serialization=False): a bare pickle stream


def _names(keys: Iterable[str], limit: int = 6) -> str:
    """``['a', 'b', ... (n more)]``: a key list short enough for a one-line message."""
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def _first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (library messages run over many lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _download(repo_id: str, filename: str, spec: str, name: str) -> Path:
    """``hf_hub_download`` with one-line errors for offline / missing / gated files."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except LocalEntryNotFoundError as err:
        why = ("offline mode is on (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE
               else "the Hub could not be reached")
        raise CheckpointNotFoundError(
            f"{name} {spec!r} is not a local file, and the Hub file is not in the local Hub cache and cannot "
            f"be downloaded: {why}; download it once online, or pass a local file"
        ) from err
    except GatedRepoError as err:
        raise CheckpointNotFoundError(
            f"{name} {spec!r}: Hub repo {repo_id!r} is gated; accept its terms on the Hub and log in "
            "(`hf auth login`)"
        ) from err
    except RepositoryNotFoundError as err:
        raise CheckpointNotFoundError(
            f"{name} {spec!r}: Hub repo {repo_id!r} was not found (a private repo needs `hf auth login`), "
            "and there is no local file of that name"
        ) from err
    except EntryNotFoundError as err:
        raise CheckpointNotFoundError(
            f"{name} {spec!r}: Hub repo {repo_id!r} has no file {filename!r}"
        ) from err
    except HFValidationError as err:
        raise CheckpointNotFoundError(
            f"{name} {spec!r} is not a local file, and {repo_id!r} is not a valid Hub repo id"
        ) from err


def _resolve_path(spec: str, name: str) -> Path:
    """A local file, or ``"owner/repo:filename"`` on the Hugging Face Hub (downloaded to the HF cache)."""
    if spec == "":
        raise CheckpointNotFoundError(
            f"{name} is empty; give a .pt/.safetensors file or 'owner/repo:filename'"
        )
    path = Path(spec).expanduser()
    if path.is_dir():
        raise ConversionError(
            f"{name} {spec!r} is a folder; give the checkpoint file itself (.pt, .safetensors)"
        )
    if path.exists():
        return path
    match = _HUB_SPEC_RE.match(spec)
    if match is None:
        raise CheckpointNotFoundError(
            f"{name} {spec!r} does not exist (no such file; a Hub file is written 'owner/repo:filename')"
        )
    return _download(match["repo"], match["file"], spec, name)


def _describe(head: bytes) -> str:
    """What a file that is no checkpoint looks like, from its first bytes."""
    for magic, what in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                        (b"GIF8", "a GIF image"), (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF")):
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:  # a character cut by the 512-byte window still counts as text
        text = head[: err.start].decode("utf-8") if err.start >= len(head) - 3 else None
    if text is not None and all(c.isprintable() or c in "\t\n\r\f\v" for c in text):
        kind = "a JSON/text file" if text.lstrip().startswith(("{", "[")) else "a text file"
        return f"{kind} (starts with {text.strip()[:24]!r})"
    return f"not a known format (starts with bytes {head[:8].hex(' ')})"


def _sniff(path: Path, spec: str, name: str) -> str:
    """``"torch"`` (zip), ``"torch-legacy"`` (pickle stream) or ``"safetensors"``, from the first bytes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as err:
        raise ConversionError(f"{name} {spec!r} cannot be read: {err.strerror or err}") from err
    if size == 0:
        raise ConversionError(f"{name} {spec!r} is empty (0 bytes), not a checkpoint")
    if head.startswith(_ZIP_MAGIC):
        return "torch"
    if head.startswith(_PICKLE_PROTO):
        return "torch-legacy"
    if len(head) > 8 and head[8:9] == b"{":  # safetensors: u64 little-endian header length, then JSON
        needed = 8 + int.from_bytes(head[:8], "little")
        if needed > size:
            raise ConversionError(
                f"{name} {spec!r} is a truncated safetensors file (its header alone needs {needed} bytes, "
                f"the file has {size})"
            )
        return "safetensors"
    raise ConversionError(
        f"{name} {spec!r} is {_describe(head)}, not a checkpoint (a torch.save .pt or a .safetensors file)"
    )


def _load_torch(path: Path, spec: str, name: str) -> Any:
    """``torch.load(weights_only=True)``; every failure becomes a one-line ``ConversionError``."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # plain pickle: refused
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as err:
        text = str(err)
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if refused:
            raise ConversionError(
                f"{name} {spec!r} was refused: it pickles {refused.group(1)}, which is not a tensor, "
                "container or plain value, and unpickling it could run code (checkpoints are read with "
                "torch.load(weights_only=True))"
            ) from err
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        detail = detail.group(1).strip() if detail else _first_line(err)
        raise ConversionError(
            f"{name} {spec!r} is not a readable torch checkpoint ({detail}): damaged, or not from torch.save"
        ) from err
    except Exception as err:  # damaged files raise RuntimeError, EOFError, KeyError, ... from torch's readers
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if not any(n.endswith("data.pkl") for n in archive.namelist()):
                    raise ConversionError(
                        f"{name} {spec!r} is a zip archive without data.pkl, not a torch.save checkpoint"
                    ) from err
        detail = re.sub(r"\[enforce fail at [^\]]*\]", "", _first_line(err)).strip().split(". ")[0]
        raise ConversionError(
            f"{name} {spec!r} is not a readable torch checkpoint: damaged or truncated "
            f"({detail or type(err).__name__})"
        ) from err


def _load_safetensors(path: Path, spec: str, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except MemoryError:
        raise
    except Exception as err:  # SafetensorError for a bad header / a file shorter than its header says
        raise ConversionError(
            f"{name} {spec!r} is not a readable safetensors file: damaged or truncated ({_first_line(err)})"
        ) from err


def _as_state_dict(obj: Any, what: str) -> dict[str, torch.Tensor]:
    """``obj`` as a non-empty ``{str: tensor}`` dict, or a ``ConversionError`` saying what it is instead."""
    if not isinstance(obj, Mapping):
        kind = f"a tensor of shape {tuple(obj.shape)}" if torch.is_tensor(obj) else f"a {type(obj).__name__}"
        raise ConversionError(
            f"{what} holds {kind}, not a state dict (key -> tensor) or a train.py checkpoint "
            "{'model', 'ema', ...}"
        )
    if not obj:
        raise ConversionError(f"{what} holds an empty dict, not a state dict")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ConversionError(
                f"{what} has the key {key!r} ({type(key).__name__}); state dict keys are strings"
            )
        if not torch.is_tensor(value):
            raise ConversionError(
                f"{what} entry {key!r} is a {type(value).__name__}, not a tensor: expected a state dict of "
                "tensors or a train.py checkpoint {'model', 'ema', ...}"
            )
    return dict(obj)


def load_official_state_dict(
    path_or_hub_spec: str | os.PathLike[str], use_ema: bool = True, *, name: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Read an official SiT checkpoint and return its model state dict (official key names).

    Args:
        path_or_hub_spec: a ``torch.save`` or ``.safetensors`` file, or ``"owner/repo:filename"`` on the Hub.
        use_ema: for ``train.py`` checkpoints, take ``"ema"`` (default) rather than ``"model"``. A bare state
            dict has one set of weights, which is returned either way.
        name: how error messages name the file (a CLI passes its flag, e.g. ``"--checkpoint"``).

    Raises:
        CheckpointNotFoundError: no such file, a Hub file that cannot be fetched (offline, not found, gated).
        ConversionError: a folder, an empty / truncated / non-checkpoint file, a pickle holding anything but
            tensors, containers and plain values (refused unexecuted), or not a state dict / ``train.py``
            checkpoint.
    """
    spec = os.fspath(path_or_hub_spec)
    path = _resolve_path(spec, name)
    fmt = _sniff(path, spec, name)
    if fmt == "safetensors":
        return _as_state_dict(_load_safetensors(path, spec, name), f"{name} {spec!r}")
    obj = _load_torch(path, spec, name)
    if isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in ("ema", "model")):
        which = "ema" if use_ema else "model"
        if which not in obj:
            raise ConversionError(
                f"{name} {spec!r}: train.py checkpoint without a {which!r} entry "
                f"(has {_names(map(str, obj))})"
            )
        return _as_state_dict(obj[which], f"{name} {spec!r} entry {which!r}")
    return _as_state_dict(obj, f"{name} {spec!r}")


#################################################################################
#                                   Conversion                                  #
#################################################################################


# Keys the configuration is read from, with their number of dimensions.
_CONFIG_KEYS: dict[str, tuple[int, str]] = {
    "x_embedder.proj.weight": (4, "(D, C, p, p)"),
    "pos_embed": (3, "(1, T, D)"),
    "y_embedder.embedding_table.weight": (2, "(num_classes + 1, D)"),
    "final_layer.linear.weight": (2, "(p * p * C_out, D)"),
    "blocks.0.mlp.fc1.weight": (2, "(mlp_ratio * D, D)"),
}


def _check_entries(sd: Mapping[str, torch.Tensor]) -> None:
    """String keys, non-empty floating-point tensors; else a ``ConversionError`` naming the first bad key."""
    if not isinstance(sd, Mapping) or not sd:
        raise ConversionError(f"expected a non-empty state dict (key -> tensor), got {type(sd).__name__}")
    for key, value in sd.items():
        if not isinstance(key, str):
            raise ConversionError(f"state dict key {key!r} is a {type(key).__name__}, not a string")
        if not torch.is_tensor(value):
            raise ConversionError(f"{key!r} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise ConversionError(f"tensor {key!r} has dtype {value.dtype}; SiT weights are floating point")
        if value.numel() == 0:
            raise ConversionError(f"tensor {key!r} is empty (shape {tuple(value.shape)})")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def infer_official_config(
    state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None, *, num_classes: int | None = None,
    num_heads_name: str = "num_heads", num_classes_name: str = "num_classes",
) -> dict[str, Any]:
    """``SiTTransformer2DModel`` constructor arguments from the official tensor shapes.

    ``hidden_size, in_channels, patch_size`` from ``x_embedder.proj.weight`` (D, C, p, p); ``depth`` from the
    block indices (0..depth-1, none skipped); ``mlp_ratio`` from ``fc1``; ``learn_sigma`` from the final
    linear rows ``p*p*C_out``; ``num_classes`` = table rows - 1 (the last row is the null class of
    ``class_dropout_prob > 0``, as official training always makes it; a one-row table is one class without
    it) unless given: a table of ``num_classes`` rows then has no null class (``class_dropout_prob = 0``, no
    guidance), one of ``num_classes + 1`` has it; ``sample_size = sqrt(T) * p`` from ``pos_embed``
    (1, T, D), ``T >= 1`` a square.
    ``num_heads`` is not visible in the shapes: it comes from the named config of that width, depth and
    patch unless given, and must divide ``D``.

    Args:
        state_dict: official key names (as :func:`load_official_state_dict` returns).
        num_heads: attention heads, an integer >= 1 dividing the width; ``None``: from ``SIT_CONFIGS``.
        num_classes: classes of the model, an integer >= 1; ``None``: the table's rows - 1 (see above).
        num_heads_name: how error messages name ``num_heads`` (a CLI passes its flag, ``"--num-heads"``).
        num_classes_name: likewise for ``num_classes``.

    Raises:
        ConversionError: the shapes do not describe a SiT (naming the key).
        InputError: ``num_heads`` is not an integer >= 1 dividing the width, or is needed and not given.
    """
    sd = state_dict
    if num_heads is not None:
        num_heads = check_int(num_heads_name, num_heads, minimum=1)
    if num_classes is not None:
        num_classes = check_int(num_classes_name, num_classes, minimum=1)
    _check_entries(sd)
    if "x_embedder.proj.weight" not in sd and "patch_embed.proj.weight" in sd:
        raise ConversionError(
            "the state dict has diffusers key names (e.g. 'patch_embed.proj.weight'): it is already "
            "converted; load it with SiTTransformer2DModel.from_pretrained"
        )
    if not any(official_to_diffusers_key(k) is not None for k in sd):
        raise ConversionError(
            f"the state dict holds none of the official SiT keys (e.g. 'x_embedder.proj.weight'), only "
            f"{_names(sd)}: not a SiT checkpoint"
        )
    missing = [k for k in _CONFIG_KEYS if k not in sd]
    if missing:
        raise ConversionError(f"missing key(s) {_names(missing)}: cannot infer the SiT configuration")
    for key, (ndim, layout) in _CONFIG_KEYS.items():
        if sd[key].ndim != ndim:
            raise ConversionError(f"{key} has shape {tuple(sd[key].shape)}, expected {layout}")

    w = sd["x_embedder.proj.weight"]  # (D, C, p, p)
    if w.shape[2] != w.shape[3]:
        raise ConversionError(f"x_embedder.proj.weight has shape {tuple(w.shape)}, expected (D, C, p, p)")
    hidden_size, in_channels, patch_size = int(w.shape[0]), int(w.shape[1]), int(w.shape[2])
    if hidden_size % 4:
        raise ConversionError(
            f"x_embedder.proj.weight gives the width {hidden_size}, not a multiple of 4 (the 2-D sin-cos "
            "position table needs one)"
        )
    blocks = sorted({int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k))})  # contains 0 (fc1 above)
    if blocks != list(range(len(blocks))):
        absent = sorted(set(range(blocks[-1] + 1)) - set(blocks))
        raise ConversionError(
            f"the block indices skip {len(absent)} block(s) (first: blocks.{absent[0]}.*): blocks go from 0 "
            f"to {blocks[-1]} with none missing"
        )
    depth = len(blocks)

    pos = sd["pos_embed"]  # (1, T, D)
    if pos.shape[0] != 1 or pos.shape[2] != hidden_size:
        raise ConversionError(f"pos_embed has shape {tuple(pos.shape)}, expected (1, T, {hidden_size})")
    num_tokens = int(pos.shape[1])
    grid = round(num_tokens**0.5)
    if grid * grid != num_tokens:
        raise ConversionError(f"pos_embed has {num_tokens} tokens, not a square grid")

    rows = int(sd["y_embedder.embedding_table.weight"].shape[0])
    if num_classes is None:  # official train.py: class_dropout_prob 0.1, the last row is the null class;
        num_classes = max(rows - 1, 1)  # one row can only be one class without it
    if rows not in (num_classes, num_classes + 1):
        raise ConversionError(
            f"y_embedder.embedding_table.weight has {rows} rows; {num_classes_name} {num_classes} needs "
            f"{num_classes} (no null class) or {num_classes + 1} (with the null class)"
        )
    out_rows = int(sd["final_layer.linear.weight"].shape[0])
    out_channels, rem = divmod(out_rows, patch_size * patch_size)
    if rem or out_channels not in (in_channels, 2 * in_channels):
        raise ConversionError(
            f"final_layer.linear.weight has {out_rows} rows; expected p*p*C or p*p*2C with p={patch_size}, "
            f"C={in_channels}"
        )
    mlp_rows = int(sd["blocks.0.mlp.fc1.weight"].shape[0])
    mlp_ratio = mlp_rows / hidden_size
    if int(hidden_size * mlp_ratio) < mlp_rows:  # float: 30 / 44 * 44 = 29.999999999999996
        mlp_ratio = math.nextafter(mlp_ratio, math.inf)
    if int(hidden_size * mlp_ratio) != mlp_rows:
        raise ConversionError(
            f"blocks.0.mlp.fc1.weight has {mlp_rows} rows, which no mlp_ratio of the width "
            f"{hidden_size} gives"
        )

    if num_heads is None:
        named = [
            c["num_heads"] for c in SIT_CONFIGS.values()
            if (c["hidden_size"], c["depth"], c["patch_size"]) == (hidden_size, depth, patch_size)
        ]
        if not named:
            raise InputError(
                f"width {hidden_size}, depth {depth}, patch {patch_size} match no named SiT config and the "
                f"head count is not stored in the weights: pass {num_heads_name} (a divisor of {hidden_size})"
            )
        num_heads = named[0]
    elif hidden_size % num_heads:
        raise InputError(
            f"{num_heads_name} {num_heads} does not divide the width {hidden_size} of this checkpoint; "
            f"choose one of {_divisors(hidden_size)}"
        )
    return {
        "sample_size": grid * patch_size,
        "patch_size": patch_size,
        "in_channels": in_channels,
        "hidden_size": hidden_size,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": mlp_ratio,
        "class_dropout_prob": 0.1 if rows == num_classes + 1 else 0.0,
        "num_classes": num_classes,
        "learn_sigma": out_channels == 2 * in_channels,
    }


def _first_non_finite(sd: Mapping[str, torch.Tensor]) -> tuple[str, int, int] | None:
    """``(key, bad count, numel)`` of the first tensor (state-dict order) holding NaN/inf, else ``None``."""
    for key, value in sd.items():
        if value.device.type == "meta":
            continue
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            return key, int(finite.numel() - finite.sum()), value.numel()
    return None


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None, num_classes: int | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Official SiT state dict -> ``(config, diffusers_state_dict)`` for ``SiTTransformer2DModel``.

    Every official key must map through the key table onto a distinct key of the model built from the
    inferred config (:func:`infer_official_config`), with exactly the model's shape; every model key must
    be filled; every value must be finite.

    Args:
        state_dict: official key names (as ``load_official_state_dict`` returns).
        num_heads: attention heads; inferred from the named configs when ``None``.
        num_classes: classes; the label table's rows - 1 when ``None`` (see :func:`infer_official_config`).

    Raises:
        ConversionError: naming the unknown/extra keys, missing keys and shape mismatches, or the first
            tensor holding NaN/inf.
        InputError: a bad ``num_heads`` or ``num_classes`` (see :func:`infer_official_config`).
    """
    config = infer_official_config(state_dict, num_heads, num_classes=num_classes)
    try:
        with torch.device("meta"):
            reference = SiTTransformer2DModel(**config).state_dict()  # shapes only, no allocation
    except ValueError as err:
        raise ConversionError(
            f"the inferred config {config} is not a valid SiTTransformer2DModel: {err}"
        ) from err

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
        problems.append(f"unexpected keys: {_names(unknown)}")
    if missing:
        problems.append(f"missing keys (diffusers names): {_names(missing)}")
    if bad_shape:
        more = f" ({len(bad_shape) - 4} more)" if len(bad_shape) > 4 else ""
        problems.append(f"wrong shapes: {bad_shape[:4]}{more}")
    if problems:
        raise ConversionError(f"cannot convert to the config {config}: " + "; ".join(problems))
    bad = _first_non_finite(state_dict)
    if bad is not None:
        key, count, numel = bad
        raise ConversionError(
            f"tensor {key!r} holds {count} NaN/inf value(s) of {numel} (the first non-finite tensor): the "
            "checkpoint is damaged or its training diverged; refusing to convert it"
        )
    return config, converted


def official_guidance_channels(in_channels: int) -> int | None:
    """The ``default_guidance_channels`` of a pipeline around a converted official checkpoint: the official
    ``forward_with_cfg`` guides the first 3 channels (``model_out[:, :3]``), so ``3`` for a model with more
    channels (the 4 latent channels of the released models); ``None`` ("all") for one with 3 or fewer."""
    return 3 if int(in_channels) > 3 else None


def load_official_checkpoint(
    path_or_hub_spec: str | os.PathLike[str], use_ema: bool = True, num_heads: int | None = None,
    num_classes: int | None = None,
) -> SiTTransformer2DModel:
    """Load an official checkpoint (file or ``"owner/repo:filename"``) as an eval ``SiTTransformer2DModel``.

    Raises the errors of :func:`load_official_state_dict` and :func:`convert_official_state_dict`; the
    latter's ``ConversionError`` names the checkpoint too.
    """
    state_dict = load_official_state_dict(path_or_hub_spec, use_ema)
    try:
        config, converted = convert_official_state_dict(state_dict, num_heads, num_classes)
    except ConversionError as err:
        raise ConversionError(f"checkpoint {os.fspath(path_or_hub_spec)!r}: {err}") from err
    model = SiTTransformer2DModel(**config)
    model.load_state_dict(converted, strict=True)
    return model.eval()
