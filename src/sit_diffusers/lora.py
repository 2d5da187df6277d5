"""LoRA adapters for SiT: diffusers' pipeline LoRA API on ``SiTPipeline``, and the checks it needs.

LoRA (Hu et al. 2021, arXiv 2106.09685) adds a low-rank update to a frozen Linear layer ``W`` (out x in)::

    y = W x + (alpha / r) * B (A x),        A: (r, in), B: (out, r), B = 0 at initialisation

On SiT the adapters go on the attention and MLP projections of every block (:data:`DEFAULT_TARGET_MODULES`:
``attn.to_qkv``, ``attn.to_out``, ``ff.linear_1``, ``ff.linear_2``); ``SiTTransformer2DModel`` is a
``PeftAdapterMixin``, so peft injects them. :class:`SiTLoraLoaderMixin` gives ``SiTPipeline`` what diffusers'
transformer-only pipelines have (``SanaPipeline``, ``CogVideoXPipeline``): ``load_lora_weights``,
``lora_state_dict``, ``save_lora_weights``, ``fuse_lora`` / ``unfuse_lora``, and from diffusers'
``LoraBaseMixin`` ``unload_lora_weights``, ``set_adapters``, ``disable_lora`` / ``enable_lora``,
``delete_adapters``, ``get_active_adapters``, ``get_list_adapters``, ``set_lora_device``, ``lora_scale``.

The file format is diffusers' LoRA format: one ``pytorch_lora_weights.safetensors`` whose keys are the
transformer's module names prefixed ``transformer.`` (``transformer.transformer_blocks.0.attn.to_qkv.lora_A.weight``,
``...lora_B.weight``) and whose safetensors header holds the adapter's ``LoraConfig`` under
``lora_adapter_metadata`` (rank, alpha, target modules: without them a loader would assume ``alpha = r``).
Unlike diffusers' mixins, which fall back to ``.bin`` files (``torch.load``, i.e. pickle), nothing here reads
or writes pickle. Every key is checked against the transformer before anything is injected (module exists, is
a Linear, shapes fit), so a LoRA for another model raises :class:`~sit_diffusers.validation.InputError` instead
of loading half of it with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY, LORA_WEIGHT_NAME_SAFE, LoraBaseMixin
from torch import nn

from .atomic import write_file_atomically
from .validation import InputError, NonFiniteError, check_float, check_writable_dir

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "LORA_WEIGHT_NAME",
    "TRANSFORMER_PREFIX",
    "SiTLoraLoaderMixin",
    "adapter_metadata",
    "check_lora_state_dict",
    "check_no_adapters",
    "check_target_modules",
    "lora_config",
    "lora_target_names",
    "transformer_lora_layers",
]

#: The file a LoRA folder holds (diffusers' name).
LORA_WEIGHT_NAME: str = LORA_WEIGHT_NAME_SAFE
#: Key prefix of the transformer's LoRA weights in a pipeline LoRA file (diffusers' ``TRANSFORMER_NAME``).
TRANSFORMER_PREFIX: str = "transformer"
#: The attention (fused qkv and output) and MLP projections of every block. ``"ff.linear_1"``, not
#: ``"linear_1"``: the bare name would also match the time embedder's ``time_embed.linear_1``.
DEFAULT_TARGET_MODULES: tuple[str, ...] = ("to_qkv", "to_out", "ff.linear_1", "ff.linear_2")

#: ``LoraConfig`` fields saved as the adapter's metadata: those that change what the adapter computes.
#: (Not the whole ``to_dict()``: a newer peft adds fields an older one cannot take.)
_METADATA_FIELDS: tuple[str, ...] = (
    "r", "lora_alpha", "target_modules", "lora_dropout", "bias", "fan_in_fan_out", "use_rslora", "use_dora",
    "lora_bias", "rank_pattern", "alpha_pattern",
)
_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.(?P<param>weight|bias)$")
_LOAD_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder",
                "weight_name", "use_safetensors")


def _require_peft() -> None:
    """``peft`` (and the transformers it brings) as diffusers' PEFT backend needs them, else an ``ImportError``."""
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        raise ImportError("LoRA needs peft>=0.18 (and the transformers it installs): "
                          "pip install 'sit-diffusers[training]' or pip install peft")


#################################################################################
#                          Target modules and adapter config                    #
#################################################################################


def _is_adapter_part(name: str) -> bool:
    """A sub-module peft adds inside a wrapped layer (``base_layer``, ``lora_A.<adapter>``, ...)."""
    return any(part in name for part in (".base_layer", ".lora_", ".lokr_"))


def _linear(module: nn.Module) -> nn.Linear | None:
    """The Linear layer of ``module``: itself, or the ``base_layer`` of a peft-wrapped one; else ``None``."""
    base = getattr(module, "base_layer", module)
    return base if isinstance(base, nn.Linear) else None


def _matches(module_name: str, target: str) -> bool:
    """peft's rule for a list of target names: the full module name, or its end after a dot."""
    return module_name == target or module_name.endswith("." + target)


def lora_target_names(transformer: nn.Module) -> list[str]:
    """The Linear layers of ``transformer`` LoRA can target, one name per role as peft matches them:
    block-relative (``attn.to_qkv``, ``attn.to_out``, ``ff.linear_1``, ``ff.linear_2``, ``adaLN_modulation``)
    and top-level (``time_embed.linear_1``, ``final_layer.linear``, ...). Any full module name, or the end of
    one after a dot (``to_qkv``), is also accepted."""
    names: list[str] = []
    for name, module in transformer.named_modules():
        if name and not _is_adapter_part(name) and _linear(module) is not None:
            short = re.sub(r"^transformer_blocks\.\d+\.", "", name)
            if short not in names:
                names.append(short)
    return names


def check_target_modules(transformer: nn.Module, targets: Any, name: str = "target_modules") -> list[str]:
    """``targets`` as a list of names, each matching at least one Linear layer of ``transformer`` by peft's rule
    (:func:`_matches`); ``InputError`` names the ones that match nothing, or only non-Linear modules, and lists
    the valid names (:func:`lora_target_names`)."""
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, Iterable) or isinstance(targets, Mapping):
        raise InputError(f"{name} must be a list of module names, got {targets!r}")
    targets = list(targets)
    if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
        raise InputError(f"{name} must be a non-empty list of module names, got {targets!r}")
    modules = [(n, m) for n, m in transformer.named_modules() if n and not _is_adapter_part(n)]
    unknown, not_linear = [], []
    for target in targets:
        hits = [(n, m) for n, m in modules if _matches(n, target)]
        if not hits:
            unknown.append(target)
        elif not any(_linear(m) is not None for _, m in hits):
            not_linear.append(f"{target} ({type(hits[0][1]).__name__})")
    if unknown or not_linear:
        problems = [f"no module of the SiT transformer matches {', '.join(map(repr, unknown))}" if unknown else "",
                    f"not Linear layers: {', '.join(not_linear)}" if not_linear else ""]
        raise InputError(f"{name}: " + "; ".join(p for p in problems if p) + "; valid names (its Linear layers): "
                         + ", ".join(lora_target_names(transformer))
                         + " (or a full module name, e.g. transformer_blocks.0.attn.to_qkv)")
    return targets


def lora_config(rank: int, alpha: float | None = None, dropout: float = 0.0,
                target_modules: Iterable[str] = DEFAULT_TARGET_MODULES) -> Any:
    """``peft.LoraConfig`` of a SiT adapter: rank ``r``, ``lora_alpha`` (``None``: ``r``, i.e. scale 1),
    dropout on the adapter's input, peft's default init (A Kaiming-uniform, B zero: the adapter starts as a
    zero update, so the model starts as the pretrained one)."""
    _require_peft()
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=dropout,
                      target_modules=list(target_modules), init_lora_weights=True)


def adapter_metadata(config: Any) -> dict[str, Any]:
    """The fields of a ``LoraConfig`` that define the adapter (:data:`_METADATA_FIELDS`), JSON-ready."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    out = {}
    for key in _METADATA_FIELDS:
        if key in data:
            value = data[key]
            out[key] = sorted(value) if isinstance(value, (set, frozenset)) else value
    return out


def _loadable_metadata(metadata: Mapping[str, Any] | None, source: str) -> dict[str, Any] | None:
    """``metadata`` with only the fields the installed peft's ``LoraConfig`` takes; a field it lacks is dropped
    when it holds its neutral value (``None``, ``False``, empty), else ``InputError`` (a newer peft feature)."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise InputError(f"{source}: the LoRA metadata must be a mapping, got {type(metadata).__name__}")
    from peft import LoraConfig

    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = {k: v for k, v in metadata.items() if k not in fields}
    used = [k for k, v in unknown.items() if v not in (None, False, {}, [], "")]
    if used:
        raise InputError(f"{source}: the adapter uses {', '.join(used)}, which this peft's LoraConfig does not "
                         "know; upgrade peft")
    return {k: v for k, v in metadata.items() if k in fields}


def transformer_lora_layers(transformer: nn.Module, adapter_name: str = "default") -> tuple[dict[str, torch.Tensor],
                                                                                              dict[str, Any]]:
    """``(layers, metadata)`` of adapter ``adapter_name`` for :meth:`SiTLoraLoaderMixin.save_lora_weights`:
    the transformer's LoRA weights in diffusers' key form (no adapter name, no prefix) and its config."""
    _require_peft()
    from peft.utils import get_peft_model_state_dict

    configs = getattr(transformer, "peft_config", {})
    if adapter_name not in configs:
        raise InputError(f"adapter_name {adapter_name!r} is not loaded in the transformer; loaded: "
                         f"{sorted(configs) or 'none'}")
    layers = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    return layers, adapter_metadata(configs[adapter_name])


def check_no_adapters(transformer: nn.Module, action: str = "save_pretrained") -> None:
    """``InputError`` when ``transformer`` holds peft adapter layers: its state dict then has peft's wrapped
    names (``...to_qkv.base_layer.weight``, ``...lora_A.default.weight``), which ``from_pretrained`` cannot read
    (the base weights would come back uninitialised). For ``SiTPipeline.save_pretrained`` to call first."""
    adapters = sorted(getattr(transformer, "peft_config", None) or {})
    if adapters:
        raise InputError(
            f"{action}: the transformer holds LoRA adapters {adapters}, whose peft-wrapped weights no loader reads. "
            "Save the adapter with save_lora_weights(...), or merge it first: pipe.fuse_lora(); "
            "pipe.unload_lora_weights(); then save the merged pipeline")


#################################################################################
#                          Reading and checking LoRA files                      #
#################################################################################


def _lora_file(ref: str | os.PathLike, weight_name: str | None, subfolder: str | None,
               hub: dict[str, Any]) -> Path:
    """The ``.safetensors`` file of a LoRA reference: a file, a folder (``weight_name`` or the one LoRA file in
    it) or a Hub repo id (downloaded with ``huggingface_hub``)."""
    if weight_name is not None and not str(weight_name).endswith(".safetensors"):
        raise InputError(f"weight_name {weight_name!r} is not a .safetensors file; pickle files (.bin, .pt) are "
                         "never loaded")
    text = os.fspath(ref)
    if not text.strip():
        raise InputError("the LoRA reference is empty; give a folder, a .safetensors file or a Hub repo id")
    local = Path(text).expanduser()
    if local.is_file():
        if local.suffix != ".safetensors":
            raise InputError(f"LoRA file {text!r} is not a .safetensors file; pickle files are never loaded")
        return local
    if local.is_dir():
        folder = local / subfolder if subfolder else local
        if weight_name is not None:
            file = folder / weight_name
            if not file.is_file():
                raise InputError(f"LoRA folder {str(folder)!r} has no {weight_name}")
            return file
        if (folder / LORA_WEIGHT_NAME).is_file():
            return folder / LORA_WEIGHT_NAME
        found = sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []
        if len(found) == 1:
            return folder / found[0]
        raise InputError(f"LoRA folder {str(folder)!r} has no {LORA_WEIGHT_NAME}"
                         + (f" and several .safetensors files ({', '.join(found)}): pass weight_name="
                            if found else " (no .safetensors file at all)"))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise InputError(f"LoRA {text!r} is neither an existing file or folder nor a Hub repo id 'org/name'") from None
    try:
        return Path(hf_hub_download(text, weight_name or LORA_WEIGHT_NAME, subfolder=subfolder, **hub))
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError, LocalEntryNotFoundError) as err:
        raise InputError(f"LoRA {text!r}: {weight_name or LORA_WEIGHT_NAME} could not be fetched from the Hub "
                         f"({type(err).__name__}: {str(err).splitlines()[0]})") from err


def _read_lora_file(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            header = dict(handle.metadata() or {})
            state = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise InputError(f"LoRA file {str(file)!r} is not a readable .safetensors file ({err})") from err
    raw = header.get(LORA_ADAPTER_METADATA_KEY)
    if not raw:
        return state, None
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InputError(f"LoRA file {str(file)!r}: its {LORA_ADAPTER_METADATA_KEY} header is not JSON") from err
    return state, metadata


def _check_format(state_dict: Mapping[str, Any], source: str) -> None:
    """Keys ``transformer.<module>.lora_A|lora_B.weight`` (or ``lora_B.bias``) holding tensors."""
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise InputError(f"{source} holds no LoRA weights")
    prefix = TRANSFORMER_PREFIX + "."
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise InputError(f"{source}: entry {key!r} is not a tensor named by a string")
        if not key.startswith(prefix) or not _KEY.match(key[len(prefix):]) or key.endswith("lora_A.bias"):
            raise InputError(
                f"{source}: key {key!r} is not in diffusers' LoRA format for SiT ('{prefix}<module>.lora_A.weight' "
                f"/ '.lora_B.weight'; save with SiTPipeline.save_lora_weights)")


def check_lora_state_dict(state_dict: Mapping[str, torch.Tensor], transformer: nn.Module,
                          source: str = "LoRA") -> None:
    """Every key of a diffusers-format LoRA state dict fits ``transformer``: its module exists and is a Linear
    layer (or one peft already wrapped), ``lora_A`` is ``(r, in_features)``, ``lora_B`` ``(out_features, r)``
    with the same ``r``, a ``lora_B.bias`` ``(out_features,)``, each module has both, and values are finite.
    Raises ``InputError`` naming the first key that does not."""
    _check_format(state_dict, source)
    modules = dict(transformer.named_modules())
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _KEY.match(key[len(TRANSFORMER_PREFIX) + 1:])
        module_name = match["module"]
        linear = _linear(modules[module_name]) if module_name in modules else None
        if linear is None:
            what = "no module" if module_name not in modules else f"a {type(modules[module_name]).__name__}"
            raise InputError(f"{source}: key {key!r} targets {module_name!r}, which is {what} in this SiT "
                             f"transformer (a LoRA made for another model?); LoRA-able layers: "
                             f"{', '.join(lora_target_names(transformer))}")
        part = f"{match['part']}.{match['param']}"
        parts.setdefault(module_name, {})[part] = value
        expected = {"lora_A.weight": (None, linear.in_features), "lora_B.weight": (linear.out_features, None),
                    "lora_B.bias": (linear.out_features,)}[part]
        if value.ndim != len(expected) or any(e is not None and s != e for s, e in zip(value.shape, expected, strict=True)):
            shape = tuple("r" if e is None else e for e in expected)
            raise InputError(f"{source}: {key!r} has shape {tuple(value.shape)}, but {module_name} "
                             f"({linear.in_features} -> {linear.out_features}) needs {shape}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{source}: {key!r} holds NaN/inf values")
    for module_name, found in parts.items():
        if "lora_A.weight" not in found or "lora_B.weight" not in found:
            missing = "lora_A.weight" if "lora_A.weight" not in found else "lora_B.weight"
            raise InputError(f"{source}: {TRANSFORMER_PREFIX}.{module_name}.{missing} is missing")
        if found["lora_A.weight"].shape[0] != found["lora_B.weight"].shape[1]:
            raise InputError(f"{source}: {module_name} has lora_A of rank {found['lora_A.weight'].shape[0]} but "
                             f"lora_B of rank {found['lora_B.weight'].shape[1]}")


#################################################################################
#                                 The pipeline mixin                            #
#################################################################################


class SiTLoraLoaderMixin(LoraBaseMixin):
    r"""LoRA for ``SiTPipeline``'s ``transformer`` in diffusers' format (the only LoRA-loadable component).

    ```py
    pipe = SiTPipeline.from_pretrained(folder)
    pipe.load_lora_weights("run/lora", adapter_name="threes")   # a folder, a .safetensors file or a Hub id
    pipe.fuse_lora(lora_scale=1.0)      # merge into the weights (same outputs, no adapter overhead)
    pipe.unfuse_lora()                  # back to base + adapter
    pipe.set_adapters("threes", 0.5)    # scale, or combine several adapters
    pipe.unload_lora_weights()          # back to the base model
    ```
    """

    _lora_loadable_modules = [TRANSFORMER_PREFIX]
    transformer_name = TRANSFORMER_PREFIX

    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, torch.Tensor],
                        **kwargs: Any) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], dict | None]:
        """The LoRA weights (and, with ``return_lora_metadata=True``, the adapter metadata) of a folder,
        ``.safetensors`` file, Hub repo id or state dict, in diffusers' format (keys ``transformer.*``).

        Hub / file keyword arguments as diffusers': ``weight_name``, ``subfolder``, ``revision``, ``cache_dir``,
        ``token``, ``local_files_only``, ``force_download``, ``proxies``; ``use_safetensors=False`` is refused
        (pickle is never loaded). The format is checked (:func:`_check_format`); the fit to a transformer is
        checked by :meth:`load_lora_weights`.
        """
        return_metadata = kwargs.pop("return_lora_metadata", False)
        unknown = sorted(set(kwargs) - set(_LOAD_KWARGS))
        if unknown:
            raise InputError(f"unknown argument(s) {unknown} of lora_state_dict; valid: {', '.join(_LOAD_KWARGS)}")
        if kwargs.get("use_safetensors") is False:
            raise InputError("use_safetensors=False would read a pickle file; LoRA weights load from .safetensors only")
        if isinstance(pretrained_model_name_or_path_or_dict, Mapping):
            state, metadata, source = dict(pretrained_model_name_or_path_or_dict), None, "the LoRA state dict"
        elif isinstance(pretrained_model_name_or_path_or_dict, (str, os.PathLike)):
            hub = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only", "force_download",
                                          "proxies") if kwargs.get(k) is not None}
            file = _lora_file(pretrained_model_name_or_path_or_dict, kwargs.get("weight_name"),
                              kwargs.get("subfolder"), hub)
            state, metadata = _read_lora_file(file)
            source = f"LoRA file {str(file)!r}"
        else:
            raise InputError(f"pretrained_model_name_or_path_or_dict must be a folder, a .safetensors file, a Hub repo "
                             f"id or a state dict, got {type(pretrained_model_name_or_path_or_dict).__name__}")
        _check_format(state, source)
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise InputError(f"{source}: its {LORA_ADAPTER_METADATA_KEY} header is not a JSON object")
            prefix = TRANSFORMER_PREFIX + "."
            metadata = {k: v for k, v in metadata.items() if k.startswith(prefix)} or None
        return (state, metadata) if return_metadata else state

    def load_lora_weights(self, pretrained_model_name_or_path_or_dict: str | os.PathLike | Mapping[str, torch.Tensor],
                          adapter_name: str | None = None, hotswap: bool = False, **kwargs: Any) -> None:
        """Load a LoRA into the transformer as adapter ``adapter_name`` (``None``: ``default_0``, ``default_1``,
        ... as diffusers names them). Every key is checked against the transformer first
        (:func:`check_lora_state_dict`), so a LoRA of another model or shape raises ``InputError`` and leaves the
        pipeline as it was. ``hotswap=True`` replaces the weights of the loaded adapter ``adapter_name`` in place.
        ``low_cpu_mem_usage`` and the keyword arguments of :meth:`lora_state_dict` are accepted.
        """
        _require_peft()
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        if not isinstance(hotswap, bool):
            raise InputError(f"hotswap must be True or False, got {hotswap!r}")
        loaded = sorted(getattr(self.transformer, "peft_config", {}))
        if adapter_name is not None and (not isinstance(adapter_name, str) or not adapter_name.strip()):
            raise InputError(f"adapter_name must be a non-empty string or None, got {adapter_name!r}")
        if hotswap and adapter_name not in loaded:
            raise InputError(f"hotswap=True replaces a loaded adapter, but adapter_name={adapter_name!r} is not one "
                             f"(loaded: {loaded or 'none'})")
        if not hotswap and adapter_name in loaded:
            raise InputError(f"adapter_name {adapter_name!r} is already loaded; choose another name, pass hotswap=True "
                             f"to replace its weights, or delete_adapters({adapter_name!r}) first")
        state, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, return_lora_metadata=True,
                                               **kwargs)
        source = ("the LoRA state dict" if isinstance(pretrained_model_name_or_path_or_dict, Mapping)
                  else f"LoRA {os.fspath(pretrained_model_name_or_path_or_dict)!r}")
        check_lora_state_dict(state, self.transformer, source)
        if metadata is not None:
            inner = {k[len(TRANSFORMER_PREFIX) + 1:]: v for k, v in metadata.items()}
            inner = _loadable_metadata(inner, source)
            metadata = {f"{TRANSFORMER_PREFIX}.{k}": v for k, v in inner.items()}
        self.load_lora_into_transformer(state, transformer=self.transformer, adapter_name=adapter_name,
                                        metadata=metadata, _pipeline=self, low_cpu_mem_usage=low_cpu_mem_usage,
                                        hotswap=hotswap)

    @classmethod
    def load_lora_into_transformer(cls, state_dict: Mapping[str, torch.Tensor], transformer: nn.Module,
                                   adapter_name: str | None = None, _pipeline: Any = None,
                                   low_cpu_mem_usage: bool = False, hotswap: bool = False,
                                   metadata: Mapping[str, Any] | None = None) -> None:
        """``transformer.load_lora_adapter`` with the ``transformer.`` prefix (diffusers' ``PeftAdapterMixin``)."""
        transformer.load_lora_adapter(dict(state_dict), prefix=TRANSFORMER_PREFIX, network_alphas=None,
                                      adapter_name=adapter_name, metadata=metadata, _pipeline=_pipeline,
                                      low_cpu_mem_usage=low_cpu_mem_usage, hotswap=hotswap)

    @classmethod
    def save_lora_weights(cls, save_directory: str | os.PathLike,
                          transformer_lora_layers: Mapping[str, torch.Tensor] | nn.Module | None = None,
                          is_main_process: bool = True, weight_name: str | None = None,
                          save_function: Callable[[dict, str], None] | None = None, safe_serialization: bool = True,
                          transformer_lora_adapter_metadata: Mapping[str, Any] | None = None) -> None:
        """Write ``save_directory/pytorch_lora_weights.safetensors`` (or ``weight_name``) in diffusers' format:
        ``transformer_lora_layers`` (the transformer's LoRA state dict without prefix, e.g. from
        :func:`transformer_lora_layers` or ``peft.utils.get_peft_model_state_dict(pipe.transformer)``) under
        ``transformer.``, and ``transformer_lora_adapter_metadata`` (its ``LoraConfig`` or a dict of it: keep
        it, or a loader assumes ``lora_alpha = r``) in the header. The file is written atomically; non-finite
        weights are refused (``NonFiniteError``); ``safe_serialization=False`` (pickle) is refused.
        """
        if safe_serialization is not True:
            raise InputError("safe_serialization=False would write a pickle file; LoRA weights are saved as "
                             ".safetensors only")
        if not transformer_lora_layers:
            raise InputError("transformer_lora_layers is empty: pass the transformer's LoRA state dict, e.g. "
                             "transformer_lora_layers(pipe.transformer)[0]")
        if weight_name is not None and not str(weight_name).endswith(".safetensors"):
            raise InputError(f"weight_name {weight_name!r} must end in .safetensors")
        layers = cls.pack_weights(transformer_lora_layers, TRANSFORMER_PREFIX)
        layers = {k: v.detach().contiguous() for k, v in layers.items()}
        doubled = [k for k in layers if k.startswith(f"{TRANSFORMER_PREFIX}.{TRANSFORMER_PREFIX}.")]
        if doubled:
            raise InputError(f"transformer_lora_layers key {doubled[0][len(TRANSFORMER_PREFIX) + 1:]!r} is already "
                             f"prefixed {TRANSFORMER_PREFIX!r}: pass the transformer's own LoRA state dict")
        _check_format(layers, "transformer_lora_layers")
        bad = [k for k, v in layers.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise NonFiniteError(f"refusing to save a LoRA with NaN/inf weights ({len(bad)} tensor(s), e.g. {bad[0]})")
        if not is_main_process:
            return
        header = {"format": "pt"}
        if transformer_lora_adapter_metadata is not None:
            meta = adapter_metadata(transformer_lora_adapter_metadata)
            header[LORA_ADAPTER_METADATA_KEY] = json.dumps(
                {f"{TRANSFORMER_PREFIX}.{k}": v for k, v in meta.items()}, indent=2, sort_keys=True)
        folder = check_writable_dir("save_directory", save_directory)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"save_directory {os.fspath(save_directory)!r} is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / (weight_name or LORA_WEIGHT_NAME)
        if save_function is not None:
            save_function(layers, str(target))
            return
        from safetensors.torch import save_file

        write_file_atomically(target, lambda tmp: save_file({k: v.cpu() for k, v in layers.items()}, str(tmp),
                                                            metadata=header), suffix=".safetensors")

    # ------------------------------------------------------------------ fuse / adapters
    def _check_loaded(self, what: str) -> list[str]:
        loaded = sorted(getattr(self.transformer, "peft_config", {}))
        if not loaded:
            raise InputError(f"{what}: no LoRA is loaded; call load_lora_weights(...) first")
        return loaded

    def _check_components(self, components: Any) -> list[str]:
        components = [components] if isinstance(components, str) else list(components or [])
        bad = [c for c in components if c not in self._lora_loadable_modules]
        if not components or bad:
            raise InputError(f"components must name LoRA-loadable components ({', '.join(self._lora_loadable_modules)})"
                             f", got {components!r}")
        return components

    def fuse_lora(self, components: Iterable[str] = (TRANSFORMER_PREFIX,), lora_scale: float = 1.0,
                  safe_fusing: bool = False, adapter_names: list[str] | None = None, **kwargs: Any) -> None:
        """Merge the active adapters (or ``adapter_names``) into the transformer's weights, scaled by
        ``lora_scale``: the outputs stay those of base + adapter (to float rounding) and the adapter's extra
        matmuls are gone. ``safe_fusing`` refuses to fuse NaN weights. :meth:`unfuse_lora` undoes it."""
        _require_peft()
        loaded = self._check_loaded("fuse_lora")
        components = self._check_components(components)
        check_float("lora_scale", lora_scale)
        if adapter_names is not None:
            names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
            missing = [n for n in names if n not in loaded]
            if missing:
                raise InputError(f"adapter_names {missing} are not loaded; loaded: {loaded}")
            adapter_names = names
        super().fuse_lora(components=components, lora_scale=lora_scale, safe_fusing=safe_fusing,
                          adapter_names=adapter_names, **kwargs)

    def unfuse_lora(self, components: Iterable[str] = (TRANSFORMER_PREFIX,), **kwargs: Any) -> None:
        """Subtract fused adapters from the transformer's weights again (base + unfused adapter)."""
        _require_peft()
        super().unfuse_lora(components=self._check_components(components), **kwargs)

    def set_adapters(self, adapter_names: list[str] | str,
                     adapter_weights: float | dict | list[float] | list[dict] | None = None) -> None:
        """Activate ``adapter_names`` with ``adapter_weights`` (one number each, or one for all; ``None``: 1.0),
        diffusers' ``set_adapters`` after checking that the names are loaded and the weights are finite."""
        _require_peft()
        loaded = self._check_loaded("set_adapters")
        names = [adapter_names] if isinstance(adapter_names, str) else adapter_names
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise InputError(f"adapter_names must be a name or a non-empty list of names, got {adapter_names!r}")
        missing = [n for n in names if n not in loaded]
        if missing:
            raise InputError(f"adapter_names {missing} are not loaded; loaded: {loaded}")
        weights = adapter_weights if isinstance(adapter_weights, list) else [adapter_weights] * len(names)
        if len(weights) != len(names):
            raise InputError(f"got {len(weights)} adapter_weights for {len(names)} adapter_names")
        for weight in weights:
            if weight is not None and not isinstance(weight, Mapping):
                check_float("adapter_weights", weight)
        super().set_adapters(names, adapter_weights)
