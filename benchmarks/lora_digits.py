"""LoRA fine-tune of the embedded digit SiT on a subset of its classes, and what it does to the samples.

    python benchmarks/lora_digits.py --out runs/lora-37                          # the docs/training.md numbers
    python benchmarks/lora_digits.py --out /tmp/lora-smoke --steps 30 --batch-size 8 --samples 48 \
        --sampler-steps 4 --lr 1e-2 --label-dropout 0.8 --ema 0                  # the scale of the test

Trains adapters with ``training/train_sit.py``'s ``train()`` (``--lora_rank``, base =
``sit_diffusers.DEFAULT_MODEL``, frozen) on the training images of ``--classes`` only (default 3 and 7), then
loads ``OUT/lora`` with ``SiTPipeline.load_lora_weights`` and measures with the shipped digit classifier, on the
same noise before and after: the fraction of unconditional samples (null class, no guidance) classified as one
of ``--classes``, and the conditional accuracy (guidance 1.5) on those classes and on the others. Also the
largest difference between the fused and unfused LoRA's samples. Prints a markdown table and writes
``OUT/lora_digits.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def lora_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``TrainConfig`` fields of the LoRA run (the embedded model's architecture and data settings)."""
    from sit_diffusers import DEFAULT_MODEL

    sys.path.insert(0, str(REPO))
    from benchmarks.train_digits import MODEL_OVERRIDES

    return {
        "model": "SiT-S/4", "model_overrides": dict(MODEL_OVERRIDES), "resolution": 28, "num_classes": 10,
        "class_dropout_prob": args.label_dropout, "learn_sigma": False, "vae": None, "image_channels": 1,
        "random_flip": False, "dataset_name": None, "dataloader_num_workers": 0,
        "pretrained_model_name_or_path": str(DEFAULT_MODEL), "lora_rank": args.rank, "lora_alpha": args.alpha,
        "global_batch_size": args.batch_size, "max_train_steps": args.steps, "learning_rate": args.lr,
        "ema_decay": args.ema, "mixed_precision": "no", "seed": args.seed, "output_dir": str(args.out),
        "report_to": "none", "log_every": max(1, args.steps // 10), "checkpointing_steps": args.steps,
        "checkpoints_total_limit": 1, "sample_every": 0, "sample_preset": "ode-heun",
    }


def unconditional(pipe: Any, n: int, steps: int, seed: int) -> Any:
    """``n`` unconditional samples (null class, one pass per evaluation) from seeded noise, in [-1, 1]."""
    import torch

    noise = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))  # (n, 1, 28, 28)
    model_fn = pipe.guided_model_fn(torch.full((n,), pipe.num_classes), 1.0)
    with torch.no_grad():
        return pipe.scheduler.sample(model_fn, noise, steps).sample.clamp(-1, 1)  # (n, 1, 28, 28)


def measure(pipe: Any, classifier: Any, classes: list[int], args: argparse.Namespace) -> dict[str, float]:
    """Unconditional fraction in ``classes``; conditional accuracy (guidance 1.5) on ``classes`` / the others."""
    import torch

    from sit_diffusers.evaluation import EMBEDDED_GUIDANCE_SCALE, balanced_labels, generate_digits

    with torch.no_grad():
        pred = classifier(unconditional(pipe, args.samples, args.sampler_steps, args.seed)).argmax(1)  # (n,)
        labels = balanced_labels(args.samples)  # (n,)
        images = generate_digits(pipe, labels, num_inference_steps=args.sampler_steps,
                                 guidance_scale=EMBEDDED_GUIDANCE_SCALE, seed=args.seed)
        right = classifier(images).argmax(1) == labels  # (n,)
    inside = torch.isin(labels, torch.tensor(classes))
    return {
        "unconditional_in_classes": float(torch.isin(pred, torch.tensor(classes)).float().mean()),
        "unconditional_histogram": torch.bincount(pred, minlength=10).tolist(),
        "conditional_accuracy_classes": float(right[inside].float().mean()),
        "conditional_accuracy_others": float(right[~inside].float().mean()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder (the LoRA in OUT/lora)")
    parser.add_argument("--classes", default="3,7", help="digits to fine-tune on, comma-separated")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--label-dropout", type=float, default=0.5,
                        help="--class_dropout_prob of the fine-tune: the share of images that teach the null class")
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--samples", type=int, default=200, help="images per measurement")
    parser.add_argument("--sampler-steps", type=int, default=10, help="ODE Heun steps (the embedded default: 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the numbers are CPU numbers
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from sit_diffusers import DEFAULT_MODEL
    from sit_diffusers.digit_classifier import load_classifier
    from sit_diffusers.digits import digits_dataset
    from sit_diffusers.pipeline_sit import SiTPipeline
    from training.config import config_from_dict
    from training.train_sit import train

    classes = [int(c) for c in args.classes.split(",")]
    data = digits_dataset("train").filter(lambda e: e["label"] in classes)
    cfg = config_from_dict(lora_config(args), where="lora_digits")
    t0 = time.perf_counter()
    train(cfg, dataset=data)
    train_seconds = time.perf_counter() - t0

    classifier = load_classifier()
    pipe = SiTPipeline.from_pretrained(DEFAULT_MODEL, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    base = measure(pipe, classifier, classes, args)
    pipe.load_lora_weights(args.out / "lora")
    tuned = measure(pipe, classifier, classes, args)
    unfused = unconditional(pipe, 16, args.sampler_steps, args.seed)
    pipe.fuse_lora()
    fused = unconditional(pipe, 16, args.sampler_steps, args.seed)
    result = {
        "command": "python benchmarks/lora_digits.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "classes": classes, "train_images": len(data), "train_seconds": round(train_seconds, 1),
        "device": f"cpu ({torch.get_num_threads()} threads)", "torch": torch.__version__,
        "base": base, "lora": tuned, "fused_vs_unfused_max_abs": float((fused - unfused).abs().max()),
        "config": cfg.to_dict(),
    }
    (args.out / "lora_digits.json").write_text(json.dumps(result, indent=2))
    names = "/".join(map(str, classes))
    print(f"| model | unconditional samples that are {names} | cond. accuracy on {names} | on the others |")
    print("|---|---|---|---|")
    for name, row in (("embedded (base)", base), ("+ LoRA", tuned)):
        print(f"| {name} | {row['unconditional_in_classes']:.1%} | {row['conditional_accuracy_classes']:.1%} | "
              f"{row['conditional_accuracy_others']:.1%} |")
    print(json.dumps({k: v for k, v in result.items() if k != "config"}))


if __name__ == "__main__":
    main()
