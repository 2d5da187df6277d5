"""Checkpoints of ``train_sit.py``: this trainer's own format, written and read with safetensors and JSON
only (never pickle, so a checkpoint folder from elsewhere cannot run code when resumed).

``checkpoint-<step>/`` holds the model and EMA weights and the optimiser tensors as safetensors, the
optimiser hyperparameters, LR schedule and fp16 loss scaler as JSON, one RNG file per process, and
``train_state.json`` (format, version, step, config, every file's size and SHA-256). A LoRA run
(``--lora_rank``) saves only what it trains: ``model.safetensors`` / ``ema.safetensors`` hold the adapter
weights and their EMA, and ``train_state.json`` the SHA-256 fingerprint of the frozen base weights
(``base_model``), which a resume must find again. A folder is validated
(:func:`validate_checkpoint`) before anything in it is read. Writes go to a temporary folder renamed into
place once complete, so a crash or a full disk never damages the previous checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sit_diffusers.validation import NonFiniteError
from training.config import DEFAULT_LORA_TARGET_MODULES, ConfigError, TrainConfig, config_changes

__all__ = [
    "Trainables", "CheckpointWriteError", "checkpoint_dir", "list_checkpoints", "validate_checkpoint",
    "resolve_resume", "save_checkpoint", "read_checkpoint", "load_checkpoint", "rng_state", "set_rng_state",
    "unwrap_model", "trainable_state", "load_trainable_state",
]

logger = logging.getLogger("train_sit")

CHECKPOINT_PREFIX = "checkpoint-"
TRAIN_STATE_FILE = "train_state.json"
CHECKPOINT_FORMAT = "sit-diffusers train_sit checkpoint"
CHECKPOINT_VERSION = 1
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
"""Optimiser state tensors, ``"<param index>.<name>"`` (``exp_avg``, ``exp_avg_sq``, ``step``)."""
OPTIMIZER_META_FILE = "optimizer.json"
"""Optimiser param groups (hyperparameters) and non-tensor state."""
SCHEDULER_FILE = "lr_scheduler.json"
SCALER_FILE = "grad_scaler.json"
"""The fp16 loss-scaler state (``--mixed_precision fp16`` only)."""
RNG_FILE = "rng-{rank:05d}.safetensors"
"""Per-process RNG states: torch CPU / CUDA as uint8 tensors, numpy and Python as tensors + JSON metadata."""
_RNG_PATTERN = re.compile(r"rng-\d{5}\.safetensors")
_KNOWN_FILES = {MODEL_FILE, EMA_FILE, OPTIMIZER_FILE, OPTIMIZER_META_FILE, SCHEDULER_FILE, SCALER_FILE}
_CODE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".npz", ".joblib")
"""Files that some loaders unpickle: a folder holding one is refused outright."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""


# ===========================================================================
# Checkpoints: safetensors + JSON, never pickle
# ===========================================================================


@dataclass
class Trainables:
    """What a checkpoint holds besides the step: the (prepared) model, its EMA, the optimiser, the schedule."""

    model: Any
    ema_model: Any
    optimizer: Any
    lr_scheduler: Any
    fsdp: bool = False
    lora: bool = False
    """Only the adapters train: the checkpoint holds them (:func:`trainable_state`), not the frozen base."""
    base_model: str | None = None
    """LoRA: the fingerprint of the frozen base weights (``train_state.json``'s ``base_model``)."""


def checkpoint_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.output_dir) / "checkpoints"


def list_checkpoints(cfg: TrainConfig) -> list[Path]:
    """Finished checkpoint folders (a ``train_state.json`` inside), oldest first; not yet validated."""
    root = checkpoint_dir(cfg)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name)
             and (p / TRAIN_STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_checkpoint(path: Path) -> dict[str, Any]:
    """The parsed ``train_state.json`` of ``path`` once the folder is proven to be one of our checkpoints.

    Reads JSON and hashes files; loads nothing. Refused (``ConfigError`` naming the folder and the problem):
    a file that some loader would unpickle (``*.pkl``, ``*.bin``, ``*.pt``, ...), no or unparsable
    ``train_state.json``, another format or version, a missing or unknown file, a size or SHA-256 mismatch.
    """
    where = f"resume checkpoint {path}"
    if not path.is_dir():
        raise ConfigError(f"{where} is not a folder")
    entries = sorted(p.name for p in path.iterdir())
    risky = [name for name in entries if name.lower().endswith(_CODE_SUFFIXES)]
    if risky:
        raise ConfigError(f"{where} holds {', '.join(risky)}: pickle-style files are never loaded (they can run "
                          "code). It is not a checkpoint of this train_sit.py (older versions wrote accelerate "
                          "pickles); nothing was read")
    try:
        state = json.loads((path / TRAIN_STATE_FILE).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where} has no {TRAIN_STATE_FILE}: not a checkpoint of train_sit.py") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{where}: {TRAIN_STATE_FILE} is unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{where}: {TRAIN_STATE_FILE} does not describe a {CHECKPOINT_FORMAT!r} (written by "
                          "another program or an older train_sit.py)")
    if state.get("format_version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{where} has format version {state.get('format_version')!r}; this train_sit.py reads "
                          f"version {CHECKPOINT_VERSION}")
    files = state.get("files")
    step = state.get("step")
    if not isinstance(files, dict) or not isinstance(step, int) or step < 0 or not isinstance(state.get("config"), dict):
        raise ConfigError(f"{where}: {TRAIN_STATE_FILE} lacks a valid step, config or file list")
    unknown = [n for n in files if n not in _KNOWN_FILES and not _RNG_PATTERN.fullmatch(n)]
    required = {MODEL_FILE, EMA_FILE, SCHEDULER_FILE, RNG_FILE.format(rank=0)}
    if state.get("resumable", False):
        required |= {OPTIMIZER_FILE, OPTIMIZER_META_FILE}
    missing = sorted((required | set(files)) - set(entries))
    extra = sorted(set(entries) - set(files) - {TRAIN_STATE_FILE})
    if unknown or missing or extra or not required <= set(files):
        problems = [f"unknown files listed: {', '.join(unknown)}" if unknown else "",
                    f"missing: {', '.join(missing)}" if missing else "",
                    f"unexpected files: {', '.join(extra)}" if extra else "",
                    f"not listed: {', '.join(sorted(required - set(files)))}" if not required <= set(files) else ""]
        raise ConfigError(f"{where} is not a complete checkpoint of this train_sit.py ("
                          + "; ".join(p for p in problems if p) + ")")
    for name, record in files.items():
        file = path / name
        if not file.is_file() or not isinstance(record, dict):
            raise ConfigError(f"{where}: {name} is not a regular file")
        if file.stat().st_size != record.get("bytes"):
            raise ConfigError(f"{where}: {name} has {file.stat().st_size} bytes, {TRAIN_STATE_FILE} says "
                              f"{record.get('bytes')} (truncated or modified)")
        if _sha256(file) != record.get("sha256"):
            raise ConfigError(f"{where}: {name} does not match its SHA-256 in {TRAIN_STATE_FILE} (corrupt or modified)")
    if not state.get("resumable", False):
        raise ConfigError(f"{where} holds weights only (written under FSDP, whose sharded optimiser state is not "
                          "saved): it cannot be resumed; its model.safetensors / ema.safetensors can be exported")
    return state


def resolve_resume(cfg: TrainConfig, fsdp: bool = False, base_model: str | None = None) -> Path | None:
    """The checkpoint to resume from, validated and its config compared with ``cfg``, or ``None``.

    Raises ``ConfigError`` before anything is read or written when it is missing, not ours, corrupt, or
    was trained with other settings (unless ``--allow_config_change``). A LoRA run also refuses a checkpoint
    whose trainables cannot fit (full model vs adapters, another rank or other target modules; even with
    ``--allow_config_change``) and one trained on other base weights (``base_model``: the fingerprint of the
    current ``--pretrained_model_name_or_path``; unless ``--allow_config_change``)."""
    if cfg.resume_from_checkpoint is None:
        if list_checkpoints(cfg):
            raise ConfigError(
                f"{checkpoint_dir(cfg)} already holds checkpoints; pass --resume_from_checkpoint latest "
                "to continue, or choose a new --output_dir (nothing was overwritten)"
            )
        return None
    if fsdp:
        raise ConfigError("--resume_from_checkpoint under FSDP is not supported (the sharded optimiser state is "
                          "not saved); resume with DDP, e.g. --config_file training/configs/accelerate_8gpu.yaml")
    if cfg.resume_from_checkpoint == "latest":
        found = list_checkpoints(cfg)
        if not found:
            raise ConfigError(f"--resume_from_checkpoint latest: no checkpoint in {checkpoint_dir(cfg)}")
        path = found[-1]
    else:
        path = Path(cfg.resume_from_checkpoint)
        if not path.is_dir():
            path = checkpoint_dir(cfg) / cfg.resume_from_checkpoint
        if not path.is_dir():
            raise ConfigError(f"--resume_from_checkpoint {cfg.resume_from_checkpoint!r} does not exist (neither a "
                              f"folder nor a checkpoint in {checkpoint_dir(cfg)})")
    state = validate_checkpoint(path)
    changes = config_changes(state["config"], cfg)
    if changes and not cfg.allow_config_change:
        raise ConfigError(f"--resume_from_checkpoint {path} was trained with other settings ({'; '.join(changes)}); "
                          "pass the same values, or --allow_config_change if the change is intended")
    if changes:
        logger.warning("resuming %s with changed settings: %s", path, "; ".join(changes))
    _check_lora_resume(path, state, cfg, base_model)
    return path


def _check_lora_resume(path: Path, state: dict[str, Any], cfg: TrainConfig, base_model: str | None) -> None:
    """What a checkpoint holds (all weights, or adapters of one rank on given modules) must be what this run
    trains; a LoRA's base weights must be those it was trained on."""
    saved = state["config"]
    saved_rank = saved.get("lora_rank")
    saved_targets = saved.get("lora_target_modules", list(DEFAULT_LORA_TARGET_MODULES))

    def holds(rank: int | None, targets: list[str]) -> str:
        return "all the model's weights" if rank is None else f"LoRA adapters of rank {rank} on {','.join(targets)}"

    if (saved_rank, saved_rank and saved_targets) != (cfg.lora_rank, cfg.lora_rank and cfg.lora_target_modules):
        raise ConfigError(f"--resume_from_checkpoint {path} holds {holds(saved_rank, saved_targets)}, but this run "
                          f"trains {holds(cfg.lora_rank, cfg.lora_target_modules)}: they cannot be resumed into each "
                          "other (not even with --allow_config_change); use another --output_dir")
    if cfg.lora_rank is None or state.get("base_model") == base_model or cfg.allow_config_change:
        return
    raise ConfigError(f"--resume_from_checkpoint {path}: its LoRA adapters were trained on base weights "
                      f"{str(state.get('base_model'))[:16]}..., but --pretrained_model_name_or_path "
                      f"{cfg.pretrained_model_name_or_path!r} now holds {str(base_model)[:16]}... (changed or "
                      "another revision); resume with the same base, or pass --allow_config_change")


# ---- writing -------------------------------------------------------------------------------------------


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """One safetensors file (the single writer of tensor files: tests make it fail like a full disk)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2))


def _cpu_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _optimizer_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (tensors ``"<index>.<name>"``, JSON: param groups + non-tensor state)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's RNG states (torch CPU and CUDA, numpy, Python ``random``) as tensors + JSON metadata."""
    tensors = {"torch_cpu": torch.get_rng_state()}  # (5056,) uint8
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state  # (16,) uint8
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))  # (624,) MT19937 words
    version, internal, gauss_next = random.getstate()
    tensors["python_state"] = torch.tensor(internal, dtype=torch.int64)  # (625,) MT19937 words + index
    metadata = {"numpy": json.dumps([name, int(pos), int(has_gauss), float(cached)]),
                "python": json.dumps([version, gauss_next])}
    return tensors, metadata


def set_rng_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only where this machine has those devices)."""
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            if f"cuda.{index}" in tensors:
                torch.cuda.set_rng_state(tensors[f"cuda.{index}"], device=index)
    name, pos, has_gauss, cached = json.loads(metadata["numpy"])
    np.random.set_state((name, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = json.loads(metadata["python"])
    random.setstate((version, tuple(int(v) for v in tensors["python_state"].tolist()), gauss_next))


def nonfinite_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors of ``state`` holding NaN/inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def any_process_failed(accelerator: Any, error: BaseException | None) -> bool:
    """True on every process when any process failed (one all-reduce), so all stop together."""
    failed = torch.tensor([0.0 if error is None else 1.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, reduction="sum")
    return bool(failed.item() > 0)


def save_checkpoint(cfg: TrainConfig, accelerator: Any, step: int, parts: Trainables) -> Path:
    """Write ``checkpoint-<step>`` into a temporary folder and rename it into place only once complete.

    Files: model and EMA weights (``*.safetensors``, written by the main process; gathered from the shards
    under FSDP), the optimiser state (tensors + ``optimizer.json``; not under FSDP, whose checkpoints are
    therefore weights only), the LR schedule (``lr_scheduler.json``), the fp16 loss scaler, one RNG file
    per process, then ``train_state.json`` (format, step, config, each file's size and SHA-256).

    Non-finite weights are never written (``NonFiniteError``). A failed write (a full disk) raises
    ``CheckpointWriteError`` after removing the temporary folder; the previous checkpoints are untouched.
    A crash (SIGKILL) mid-write leaves a ``.tmp-`` folder that is never resumed from and is cleared by the
    next save. ``output_dir`` must be on a filesystem shared by all nodes. Then the oldest checkpoints
    beyond ``checkpoints_total_limit`` are deleted.
    """
    root = checkpoint_dir(cfg)
    final = root / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step:07d}"
    main = accelerator.is_main_process
    if parts.fsdp:  # collectives: every process takes part, the main one receives the full state dicts
        model_state = accelerator.get_state_dict(parts.model)
        ema_state = accelerator.get_state_dict(parts.ema_model)
    elif parts.lora:  # the adapters and their EMA; the frozen base is the pretrained model's
        model_state = trainable_state(unwrap_model(accelerator, parts.model))
        ema_state = parts.ema_model.state_dict()
    else:
        model_state = unwrap_model(accelerator, parts.model).state_dict()
        ema_state = parts.ema_model.state_dict()

    def phase(work: Any) -> None:
        error: BaseException | None = None
        try:
            work()
        except Exception as err:  # noqa: BLE001 - re-raised below, on every process
            error = err
        if any_process_failed(accelerator, error):
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise _checkpoint_error(cfg, final, error)

    def prepare() -> None:
        if not main:
            return
        bad = nonfinite_keys(model_state) + [f"ema.{k}" for k in nonfinite_keys(ema_state)]
        if bad:
            raise NonFiniteError(f"refusing to save {final.name}: {len(bad)} weight tensor(s) hold NaN/inf "
                                 f"(e.g. {bad[0]}); the last good checkpoint is kept")
        root.mkdir(parents=True, exist_ok=True)
        for stale in [*root.glob(f".tmp-{CHECKPOINT_PREFIX}*"), *root.glob(f".old-{CHECKPOINT_PREFIX}*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a crash mid-write or mid-swap
        tmp.mkdir()

    def write() -> None:
        if main:
            _write_tensors(tmp / MODEL_FILE, _cpu_tensors(model_state))
            _write_tensors(tmp / EMA_FILE, _cpu_tensors(ema_state))
            if not parts.fsdp:
                tensors, meta = _optimizer_files(parts.optimizer.state_dict())
                _write_tensors(tmp / OPTIMIZER_FILE, tensors)
                _write_json(tmp / OPTIMIZER_META_FILE, meta)
            _write_json(tmp / SCHEDULER_FILE, parts.lr_scheduler.state_dict())
            if accelerator.scaler is not None:
                _write_json(tmp / SCALER_FILE, accelerator.scaler.state_dict())
        tensors, meta = rng_state()
        _write_tensors(tmp / RNG_FILE.format(rank=accelerator.process_index), tensors, meta)

    def finish() -> None:
        if not main:
            return
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        _write_json(tmp / TRAIN_STATE_FILE, {
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "step": step,
            "resumable": not parts.fsdp, "num_processes": accelerator.num_processes,
            "torch_version": torch.__version__, "config": cfg.to_dict(), "files": files,
            **({"base_model": parts.base_model} if parts.lora else {}),
        })
        old = root / f".old-{final.name}"
        if final.exists():  # a previous run reached this step: swap it out only now that tmp is complete
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        if cfg.checkpoints_total_limit is not None:
            for stale in list_checkpoints(cfg)[: -cfg.checkpoints_total_limit]:
                shutil.rmtree(stale)
        logger.info("saved %s", final)

    phase(prepare)
    phase(write)
    phase(finish)
    return final


def unwrap_model(accelerator: Any, model: Any) -> Any:
    """The plain ``SiTTransformer2DModel`` under DDP / ``torch.compile`` wrappers (its state dict keys)."""
    model = accelerator.unwrap_model(model)
    return getattr(model, "_orig_mod", model)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (``requires_grad``) by name: a LoRA run's adapters
    (``transformer_blocks.0.attn.to_qkv.lora_A.default.weight``, ...)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`trainable_state`) into ``model``'s trainable parameters; the names and
    shapes must be exactly those (``RuntimeError`` otherwise)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise RuntimeError(f"trainable parameters differ: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, value in state.items():
        if tuple(value.shape) != tuple(params[name].shape):
            raise RuntimeError(f"{name} has shape {tuple(value.shape)}, the model's is {tuple(params[name].shape)}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _checkpoint_error(cfg: TrainConfig, final: Path, error: BaseException | None) -> BaseException:
    """The error every process raises when saving ``final`` failed somewhere."""
    if error is not None and not isinstance(error, OSError):
        return error  # NonFiniteError, or a bug: keep it as it is
    earlier = [p.name for p in list_checkpoints(cfg) if p.name != final.name]
    kept = f"the previous checkpoint {earlier[-1]} is intact" if earlier else "no earlier checkpoint exists"
    if error is None:
        cause = "another process failed to write its part"
    else:
        code = errno.errorcode.get(error.errno, "") if error.errno else ""
        cause = f"{error.strerror or error}" + (f" ({code})" if code else "")
    return CheckpointWriteError(
        error.errno if isinstance(error, OSError) and error.errno else errno.EIO,
        f"could not write checkpoint {final.name} in {final.parent}: {cause}; {kept} and the partial folder was "
        "removed. Free space (or fix permissions), then continue with --resume_from_checkpoint latest",
    )


# ---- reading -------------------------------------------------------------------------------------------


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as file:
        return {k: file.get_tensor(k) for k in file.keys()}, dict(file.metadata() or {})


def read_checkpoint(path: str | Path, rank: int = 0, validate: bool = True) -> dict[str, Any]:
    """A checkpoint as plain objects (safetensors + JSON only): ``step``, ``config``, ``model``, ``ema``
    (state dicts), ``optimizer`` (a ``state_dict()`` for ``load_state_dict``), ``lr_scheduler``,
    ``grad_scaler`` (or ``None``), and process ``rank``'s ``rng`` (tensors, metadata) or ``None``.

    ``validate=False`` skips :func:`validate_checkpoint` (hashing every file) for a folder that was just
    validated; nothing here can run code either way."""
    path = Path(path)
    state = validate_checkpoint(path) if validate else json.loads((path / TRAIN_STATE_FILE).read_text())
    optimizer_state = {"state": {}, "param_groups": []}
    if OPTIMIZER_FILE in state["files"]:
        tensors, _ = _read_tensors(path / OPTIMIZER_FILE)
        meta = json.loads((path / OPTIMIZER_META_FILE).read_text())
        for key, value in tensors.items():
            index, name = key.split(".", 1)
            optimizer_state["state"].setdefault(int(index), {})[name] = value
        for index, entry in meta["scalars"].items():
            optimizer_state["state"].setdefault(int(index), {}).update(entry)
        optimizer_state["state"] = dict(sorted(optimizer_state["state"].items()))
        optimizer_state["param_groups"] = meta["param_groups"]
    rng_file = path / RNG_FILE.format(rank=rank)
    return {
        "step": state["step"], "config": state["config"],
        "model": _read_tensors(path / MODEL_FILE)[0], "ema": _read_tensors(path / EMA_FILE)[0],
        "optimizer": optimizer_state,
        "lr_scheduler": json.loads((path / SCHEDULER_FILE).read_text()),
        "grad_scaler": json.loads((path / SCALER_FILE).read_text()) if SCALER_FILE in state["files"] else None,
        "rng": _read_tensors(rng_file) if rng_file.name in state["files"] else None,
    }


def _known_keys(path: Path, what: str, saved: Any, current: dict[str, Any]) -> dict[str, Any]:
    """``saved`` without the keys the live object lacks (``load_state_dict`` would copy them over as
    attributes); keys it lacks keep their current values (another torch version may add some)."""
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume_from_checkpoint {path}: its {what} state is a {type(saved).__name__}, "
                          "not a mapping")
    unknown = sorted(set(saved) - set(current))
    if unknown:
        logger.warning("%s: ignoring unknown %s state keys %s", path, what, unknown)
    return {k: v for k, v in saved.items() if k in current}


def load_checkpoint(path: Path, accelerator: Any, parts: Trainables) -> int:
    """Restore ``parts``, the loss scaler and this process's RNG states from ``path``; returns its step.

    ``path`` has passed :func:`validate_checkpoint`; a state that does not fit the live objects (another
    architecture, optimiser or schedule) raises ``ConfigError``."""
    ckpt = read_checkpoint(path, rank=accelerator.process_index, validate=False)  # resolve_resume validated it
    where = f"--resume_from_checkpoint {path}"
    try:
        if parts.lora:
            load_trainable_state(unwrap_model(accelerator, parts.model), ckpt["model"])
        else:
            unwrap_model(accelerator, parts.model).load_state_dict(ckpt["model"])
        parts.ema_model.load_state_dict(ckpt["ema"])
    except RuntimeError as err:
        raise ConfigError(f"{where}: its weights do not fit this model ({err})") from None
    groups = ckpt["optimizer"]["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(parts.optimizer.param_groups):
        raise ConfigError(f"{where}: its optimiser param groups do not match this optimiser's "
                          f"{len(parts.optimizer.param_groups)}")
    for index, current in enumerate(parts.optimizer.param_groups):
        saved = groups[index] = _known_keys(path, "optimiser param group", groups[index], current)
        for key, value in current.items():  # JSON has no tuples (betas)
            if isinstance(value, tuple) and isinstance(saved.get(key), list):
                saved[key] = tuple(saved[key])
    ckpt["lr_scheduler"] = _known_keys(path, "LR schedule", ckpt["lr_scheduler"], parts.lr_scheduler.state_dict())
    scaler = accelerator.scaler
    if scaler is not None and ckpt["grad_scaler"] is not None:
        ckpt["grad_scaler"] = _known_keys(path, "loss scaler", ckpt["grad_scaler"], scaler.state_dict())
    try:
        parts.optimizer.load_state_dict(ckpt["optimizer"])
        parts.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if scaler is not None and ckpt["grad_scaler"] is not None:
            scaler.load_state_dict(ckpt["grad_scaler"])
        if ckpt["rng"] is not None:
            set_rng_state(*ckpt["rng"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ConfigError(f"{where}: its optimiser, schedule or RNG state does not fit ({type(err).__name__}: "
                          f"{err})") from None
    if ckpt["rng"] is None:
        logger.warning("%s has no RNG state for process %d (saved with fewer processes); seeded afresh",
                       path, accelerator.process_index)
    return ckpt["step"]
