"""Train the small self-supervised digit encoder that REPA aligns the digit SiT to (issue 14 item 2).

    python benchmarks/train_digit_encoder.py --out src/sit_diffusers/data/digit-encoder --overwrite   # the shipped one
    python benchmarks/train_digit_encoder.py --out /tmp/enc --steps 50                                # a smoke run

The REPA proof needs an encoder that owes nothing to the evaluation (the digit classifier, trained *supervised*
on the 4,000 MNIST training images, and the 1,000 held-out MNIST images that are the Frechet-distance
reference). So this one differs in both:

* **Data**: scikit-learn's ``load_digits`` (the UCI optical-recognition digits: 1,797 images of 8x8 with 17
  grey levels, written by other people, scanned by another process) -- neither split of the MNIST subset.
  Each image is brought to MNIST's layout: upsampled (bilinear) to 20x20 and centred in 28x28 on a black
  background, in [-1, 1]. Its labels are never read.
* **Objective** (``--objective``, no label anywhere):

  - ``simmim`` (the shipped encoder's; SimMIM, Xie et al. 2022, arXiv 2111.09886): a random 50% of the 7x7
    patches of 4x4 px are replaced by the model's mask token (``Dinov2Model``'s ``bool_masked_pos``), and a
    linear head (not saved) regresses the masked patches' pixels from the last hidden state (L1 on the masked
    patches only), with random affine augmentation (rotation +-12 deg, scale 0.9-1.1, shift +-2 px).
  - ``simclr`` (SimCLR, Chen et al. 2020, arXiv 2002.05709): two augmented views of each image (random affine:
    rotation +-15 deg, scale 0.9-1.1, shift +-3 px; a smooth elastic displacement of about 1 px; stroke
    thickness jitter; a random blur), the mean patch token of each through a small MLP projection head (not
    saved), and the NT-Xent loss (temperature ``--temperature``, 0.2): each view must pick its partner among
    the other ``2 B - 1`` views of the batch. Tried for the shipped encoder and not kept: at the budget this
    CPU affords (300 steps of 96) it probes worse on the mean token (docs/repa.md).
  - ``both``: the sum; the first view is masked, its tokens feed the pixel head and its mean token the
    contrastive head (two encoder passes per image, as ``simclr``).

The model is a ``transformers`` ``Dinov2Model`` (1 channel, 28 px, patch 4: the digit SiT's 7x7 token grid;
width 64, 4 layers, 4 heads), saved with ``save_pretrained`` (safetensors) and an image-processor config
(28 px, mean 0.5, std 0.5: the encoder sees the images in [-1, 1] unchanged), so it loads through
``AutoModel.from_pretrained`` exactly as DINOv2 does (``training.repa.RepaEncoder``).

Sanity numbers written to ``OUT/train_report.json`` and ``OUT/README.md``: the training loss, and a linear
probe (logistic regression on the mean patch token, fit on the MNIST training
split, scored on the held-out split) beside the same probe on a random-init encoder of the same shape and on
raw pixels. The probe is a diagnostic only: nothing of it is saved or used for training.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
PROG = "train_digit_encoder.py"
DEFAULT_OUT = REPO / "src" / "sit_diffusers" / "data" / "digit-encoder"
IMAGE_SIZE, PATCH_SIZE, DIGIT_BOX = 28, 4, 20
OBJECTIVES = ("simmim", "simclr", "both")
PROJECTION_DIM = 64


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (default: off)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="simmim",
                        help="self-supervised objective: simmim (masked patches), simclr (contrastive) or both, "
                        "summed (default: simmim, the shipped encoder's)")
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps (default: 1500)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (default: 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate, cosine decay (default: 1e-3)")
    parser.add_argument("--hidden-size", type=int, default=64, help="token width (default: 64)")
    parser.add_argument("--layers", type=int, default=4, help="transformer layers (default: 4)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads; divides --hidden-size (default: 4)")
    parser.add_argument("--mask-ratio", type=float, default=0.5, help="fraction of patches masked, in (0, 1) "
                        "(default: 0.5)")
    parser.add_argument("--temperature", type=float, default=0.2,
                        help="NT-Xent temperature (simclr, both), > 0 (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the init, masks and augmentation (default: 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-probe", action="store_true", help="skip the linear probes (a smoke run; default: off)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (default: off)")
    return parser


def check_args(args: argparse.Namespace) -> Path:
    """Every value, before any work; returns the absolute output folder."""
    from sit_diffusers.atomic import check_output_folder
    from sit_diffusers.validation import InputError, check_choice, check_float, check_int, check_seed

    check_int("--steps", args.steps, minimum=1)
    check_int("--batch-size", args.batch_size, minimum=2)
    check_float("--lr", args.lr, minimum=0.0, min_inclusive=False)
    check_int("--hidden-size", args.hidden_size, minimum=8)
    check_int("--layers", args.layers, minimum=1)
    check_int("--heads", args.heads, minimum=1)
    if args.hidden_size % args.heads:
        raise InputError(f"--heads {args.heads} must divide --hidden-size {args.hidden_size}")
    check_choice("--objective", args.objective, OBJECTIVES)
    check_float("--temperature", args.temperature, minimum=0.0, min_inclusive=False)
    check_float("--mask-ratio", args.mask_ratio, minimum=0.0, maximum=1.0, min_inclusive=False, max_inclusive=False)
    check_seed("--seed", args.seed)
    if args.threads is not None:
        check_int("--threads", args.threads, minimum=1)
    return check_output_folder(args.out, overwrite=args.overwrite, name="--out", overwrite_name="--overwrite")


# ---------------------------------------------------------------------------
# Data: the UCI digits in MNIST's layout
# ---------------------------------------------------------------------------


def uci_digits() -> torch.Tensor:
    """scikit-learn's 1,797 8x8 digits (0..16) -> ``(1797, 1, 28, 28)`` in [-1, 1], MNIST layout (20x20 box,
    centred, black background). Labels are not returned: the objective never uses them."""
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(DIGIT_BOX, DIGIT_BOX), mode="bilinear", align_corners=False)  # (1797, 1, 20, 20)
    pad = (IMAGE_SIZE - DIGIT_BOX) // 2
    return F.pad(x, (pad,) * 4).clamp(0, 1) * 2 - 1  # (1797, 1, 28, 28) in [-1, 1]


def augment(x: torch.Tensor, generator: torch.Generator, *, strong: bool = False) -> torch.Tensor:
    """A random view of each image (background -1). Always a random affine: rotation +-12 deg, scale 0.9..1.1,
    shift +-2 px. ``strong`` (the SimCLR views): rotation +-15 deg, shift +-3 px, plus a smooth elastic
    displacement (a 4x4 field of N(0, 1 px) upsampled bicubically), stroke thickness jitter (a random blend
    toward a 3x3 dilation or erosion) and a random blur (a blend toward a 3x3 Gaussian)."""
    n = x.shape[0]
    max_angle, max_shift = (15, 3) if strong else (12, 2)
    u = torch.rand(n, 4, generator=generator) * 2 - 1  # (N, 4) in [-1, 1]
    angle, scale = u[:, 0] * math.radians(max_angle), 1 + 0.1 * u[:, 1]
    shift = u[:, 2:] * (2 * max_shift / IMAGE_SIZE)  # +-max_shift px in normalised coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, H, W, 2)
    if strong:
        field = torch.randn(n, 2, 4, 4, generator=generator) * (2 / IMAGE_SIZE)  # (N, 2, 4, 4): ~1 px
        field = F.interpolate(field, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1)  # (N, H, W, 2)
    x = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) / 2  # [0, 1]
    if strong:
        v = torch.rand(n, 2, 1, 1, 1, generator=generator)  # (N, 2, 1, 1, 1) in [0, 1]
        thick = v[:, 0] * 2 - 1  # (N, 1, 1, 1): > 0 thicker, < 0 thinner
        dilated, eroded = F.max_pool2d(x, 3, 1, 1), -F.max_pool2d(-x, 3, 1, 1)
        x = torch.where(thick > 0, x + thick * (dilated - x), x - thick * (eroded - x))
        kernel = torch.tensor([1.0, 2.0, 1.0])
        kernel = (kernel[:, None] * kernel[None, :] / 16).reshape(1, 1, 3, 3)
        x = x + v[:, 1] * (F.conv2d(x, kernel, padding=1) - x)
    return x.clamp(0, 1) * 2 - 1  # (N, 1, 28, 28) in [-1, 1]


def patchify(x: torch.Tensor) -> torch.Tensor:
    """``(N, 1, 28, 28)`` -> ``(N, 49, 16)``: row-major 4x4 patches, the encoder's token order."""
    n, p = x.shape[0], PATCH_SIZE
    g = IMAGE_SIZE // p
    return x.reshape(n, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(n, g * g, p * p)


# ---------------------------------------------------------------------------
# Model, training, sanity numbers
# ---------------------------------------------------------------------------


def build_encoder(args: argparse.Namespace) -> Any:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=1, hidden_size=args.hidden_size,
                          num_hidden_layers=args.layers, num_attention_heads=args.heads,
                          intermediate_size=4 * args.hidden_size, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
    return Dinov2Model(config)


def masked_l1(encoder: Any, head: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SimMIM loss: L1 between the head's pixels and the true pixels, over the masked patches only."""
    tokens = encoder(pixel_values=x, bool_masked_pos=mask).last_hidden_state[:, 1:]  # (N, 49, D)
    err = (head(tokens) - patchify(x)).abs().mean(-1)  # (N, 49)
    return (err * mask).sum() / mask.sum().clamp(min=1)


def random_mask(n: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    tokens = (IMAGE_SIZE // PATCH_SIZE) ** 2
    k = max(1, round(ratio * tokens))
    order = torch.rand(n, tokens, generator=generator).argsort(1)  # (N, 49)
    return order < k  # (N, 49) bool: exactly k masked per image


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al. 2020, eq. 1) of two batches of projections ``(B, P)`` of the same
    images: for each of the ``2 B`` views, cross-entropy of picking its partner among the other ``2 B - 1`` by
    cosine similarity / temperature; the mean over the ``2 B`` views."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2B, P)
    logits = z @ z.T / temperature  # (2B, 2B)
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    b = len(z1)
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)  # (2B,)
    return F.cross_entropy(logits, partner)


def projection_head(width: int) -> torch.nn.Module:
    """SimCLR's projection MLP ``g`` over the mean patch token (not saved)."""
    return torch.nn.Sequential(torch.nn.Linear(width, width * 2), torch.nn.ReLU(),
                               torch.nn.Linear(width * 2, PROJECTION_DIM))


def objective_loss(encoder: Any, heads: dict[str, torch.nn.Module], x: torch.Tensor, args: argparse.Namespace,
                   generator: torch.Generator) -> torch.Tensor:
    """One batch of clean images ``(B, 1, 28, 28)`` -> the ``--objective`` loss (a scalar)."""
    if args.objective == "simmim":
        return masked_l1(encoder, heads["pixels"], augment(x, generator),
                         random_mask(len(x), args.mask_ratio, generator))
    v1, v2 = augment(x, generator, strong=True), augment(x, generator, strong=True)  # (B, 1, 28, 28) each
    mask = random_mask(len(x), args.mask_ratio, generator) if args.objective == "both" else None
    t1 = encoder(pixel_values=v1, bool_masked_pos=mask).last_hidden_state[:, 1:]  # (B, 49, D)
    t2 = encoder(pixel_values=v2).last_hidden_state[:, 1:]  # (B, 49, D)
    loss = nt_xent(heads["project"](t1.mean(1)), heads["project"](t2.mean(1)), args.temperature)
    if mask is not None:
        err = (heads["pixels"](t1) - patchify(v1)).abs().mean(-1)  # (B, 49)
        loss = loss + (err * mask).sum() / mask.sum().clamp(min=1)
    return loss


def train(args: argparse.Namespace, log: bool = True) -> tuple[Any, dict[str, Any]]:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    data = uci_digits()  # (1797, 1, 28, 28)
    encoder = build_encoder(args).train()
    heads: dict[str, torch.nn.Module] = {}
    if args.objective in ("simmim", "both"):
        heads["pixels"] = torch.nn.Linear(args.hidden_size, PATCH_SIZE * PATCH_SIZE)
    if args.objective in ("simclr", "both"):
        heads["project"] = projection_head(args.hidden_size)
    params = [*encoder.parameters(), *(p for head in heads.values() for p in head.parameters())]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05, betas=(0.9, 0.95))
    warmup = min(100, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup))
                                              * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    start, history = time.perf_counter(), []
    for step in range(args.steps):
        idx = torch.randint(0, len(data), (args.batch_size,), generator=generator)
        loss = objective_loss(encoder, heads, data[idx], args, generator)
        if not torch.isfinite(loss):
            from sit_diffusers.validation import NonFiniteError

            raise NonFiniteError(f"the {args.objective} loss is NaN/inf at step {step} (--lr {args.lr}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if log and (step + 1) % max(1, args.steps // 10) == 0:
            print(f"step {step + 1}/{args.steps}  {args.objective} loss {np.mean(history[-50:]):.4f}  "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    report = {"objective": args.objective, "train_seconds": round(seconds, 1), "steps": args.steps,
              "batch_size": args.batch_size, "first_train_loss": round(float(np.mean(history[:10])), 4),
              "final_train_loss": round(float(np.mean(history[-50:])), 4)}
    if "pixels" in heads:
        report["heldout_masked_l1"] = round(heldout_l1(encoder.eval(), heads["pixels"], args.mask_ratio), 4)
    return encoder.eval(), report


@torch.no_grad()
def heldout_l1(encoder: Any, head: torch.nn.Module, ratio: float) -> float:
    from sit_diffusers.digits import digits_tensors

    x, _ = digits_tensors("heldout")
    mask = random_mask(len(x), ratio, torch.Generator().manual_seed(1234))
    return float(masked_l1(encoder, head, x, mask))


@torch.no_grad()
def linear_probe(features: Any) -> float:
    """Held-out accuracy of a logistic regression on ``features(x) -> (N, F)``, fit on the training split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from sit_diffusers.digits import digits_tensors

    (x, y), (xh, yh) = digits_tensors("train"), digits_tensors("heldout")
    scaler = StandardScaler().fit(features(x))
    probe = LogisticRegression(max_iter=500).fit(scaler.transform(features(x)), y.numpy())
    return float(probe.score(scaler.transform(features(xh)), yh.numpy()))


def mean_token(encoder: Any):
    return lambda x: encoder(pixel_values=x).last_hidden_state[:, 1:].mean(1).numpy()  # (N, D)


def all_tokens(encoder: Any):
    return lambda x: encoder(pixel_values=x).last_hidden_state[:, 1:].flatten(1).numpy()  # (N, 49 D)


def save(encoder: Any, report: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    from transformers.utils import logging as hf_logging

    from sit_diffusers.atomic import write_folder_atomically

    hf_logging.set_verbosity_error()  # "BitImageProcessor requires torchvision": only its config is written
    from transformers import BitImageProcessor

    def write(folder: Path) -> None:
        encoder.save_pretrained(folder, safe_serialization=True)
        BitImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_resize=False, do_center_crop=False,
                          crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_convert_rgb=False,
                          image_mean=[0.5], image_std=[0.5]).save_pretrained(folder)
        (folder / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
        (folder / "README.md").write_text(model_card(report, args))

    write_folder_atomically(out, write)


OBJECTIVE_TEXT = {
    "simclr": "contrastive learning (SimCLR: two augmented views of each image -- affine, elastic, stroke "
              "thickness, blur -- their mean patch tokens through an MLP projection head, not saved; NT-Xent loss, "
              "temperature {temperature})",
    "simmim": "masked image modelling (SimMIM: {mask_pct}% of the patches replaced by the mask token, a linear "
              "pixel head, not saved, regresses them; L1), with random affine augmentation",
    "both": "the sum of contrastive learning (SimCLR, NT-Xent at temperature {temperature} on the mean patch "
            "token of two augmented views, through an MLP projection head) and masked image modelling (SimMIM: "
            "{mask_pct}% of the first view's patches masked, a linear pixel head regresses them; L1); heads not saved",
}


def model_card(report: dict[str, Any], args: argparse.Namespace) -> str:
    report = {k: float("nan") if v is None else v for k, v in report.items()}  # --skip-probe
    objective = OBJECTIVE_TEXT[args.objective].format(temperature=args.temperature,
                                                      mask_pct=round(100 * args.mask_ratio))
    heldout = ("" if "heldout_masked_l1" not in report else
               f"| masked-patch L1 (pixels in [-1, 1]), MNIST held-out images (never trained on) | "
               f"{report['heldout_masked_l1']} |\n")
    return f"""# digit-encoder: a small self-supervised encoder of 28 px digits (for REPA on the digit SiT)

`transformers` `Dinov2Model`, 1 channel, 28 px, patch 4 (7x7 patch tokens after one CLS token), width
{args.hidden_size}, {args.layers} layers, {args.heads} heads; {report['parameters']:,} parameters. Load it as DINOv2 is loaded:
`transformers.AutoModel.from_pretrained(folder)`, or `training.repa.RepaEncoder.from_pretrained(folder)`
(its `preprocessor_config.json`: 28 px, mean 0.5, std 0.5, so images in [-1, 1] go in unchanged).

Made by `{report['command']}`
(seed {args.seed}, {args.steps} steps of batch {args.batch_size}, AdamW lr {args.lr} cosine): {objective},
on scikit-learn's `load_digits` (1,797 UCI 8x8 digits brought to MNIST's layout; labels unused). It never saw
an MNIST image nor a label: it is independent of the evaluation classifier (supervised, MNIST training split)
and of the FD reference (MNIST held-out split). The linear probes below are diagnostics only (fit on the MNIST
training split, scored on the held-out split; nothing of them is saved).

| sanity number | value |
|---|---|
| training time (CPU, {args.threads or 'default'} threads, shared machine) | {report['train_seconds']} s |
| {args.objective} loss, first 10 steps -> last 50 steps | {report['first_train_loss']} -> {report['final_train_loss']} |
{heldout}| linear probe, mean patch token | {report['probe_trained']:.3f} |
| same probe, random-init encoder of the same shape | {report['probe_random_init']:.3f} |
| linear probe, all 49 patch tokens concatenated | {report['probe_tokens_trained']:.3f} |
| same probe, random-init encoder | {report['probe_tokens_random_init']:.3f} |
| same probe, raw pixels (784) | {report['probe_pixels']:.3f} |
"""


def _cli(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    out = check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    encoder, report = train(args)
    report["parameters"] = sum(p.numel() for p in encoder.parameters())
    torch.manual_seed(args.seed + 1)
    random_init = build_encoder(args).eval()
    probes = {"probe_trained": mean_token(encoder), "probe_random_init": mean_token(random_init),
              "probe_tokens_trained": all_tokens(encoder), "probe_tokens_random_init": all_tokens(random_init),
              "probe_pixels": lambda x: x.flatten(1).numpy()}
    for key, features in probes.items():
        report[key] = None if args.skip_probe else round(linear_probe(features), 4)
    report["command"] = "python benchmarks/train_digit_encoder.py " + " ".join(argv)
    save(encoder, report, args, out)
    print(json.dumps(report, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from sit_diffusers.validation import run_cli

    return run_cli(PROG, _cli, argv)


if __name__ == "__main__":
    sys.exit(main())
