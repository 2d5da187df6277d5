"""Training throughput of SiT: on-the-fly VAE encoding vs precomputed latents; peak memory; MFU on GPU.

    python benchmarks/bench_train.py                                    # CPU, SiT-S/2, 256 px
    python benchmarks/bench_train.py --device cuda --model SiT-XL/2 --mixed_precision bf16

One training step is exactly the one of ``training/train_sit.py`` (per-sample seeded draws, posterior
sample of the VAE moments, ``SiTObjective`` loss, AdamW, gradient-norm computation, EMA update). Two
modes: ``vae`` encodes the images every step (the official recipe); ``latents`` starts from stored
posterior moments (``training/precompute_latents.py``). The VAE is the ``sd-vae-ft-ema`` architecture with
random weights unless ``--vae`` names a real one (the speed does not depend on the weights; nothing is
downloaded). Model FLOPs are counted with ``torch.utils.flop_counter`` on the SiT forward+backward only
(no VAE, no optimizer); MFU = model FLOPs/s over the card's dense peak (``--peak_tflops`` or a table).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import config_from_dict  # noqa: E402
from training.train_sit import build_model, build_objective, micro_batch_loss, update_ema  # noqa: E402

# Dense (no sparsity) peak TFLOP/s of common cards (vendor datasheets), by precision; "no" = fp32 with TF32.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "no": 378.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "no": 495.0},  # SXM ("NVIDIA H100 80GB HBM3")
    "H200": {"bf16": 989.0, "fp16": 989.0, "no": 495.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "no": 156.0},
}


def sd_vae(name: str | None, device: torch.device) -> Any:
    """The VAE: ``name`` loaded, or the ``stabilityai/sd-vae-ft-ema`` architecture with random weights."""
    from diffusers import AutoencoderKL

    if name:
        vae = AutoencoderKL.from_pretrained(name)
    else:
        torch.manual_seed(0)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=256,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[128, 256, 512, 512], norm_num_groups=32,
        )
    return vae.requires_grad_(False).eval().to(device)


def peak_tflops(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    """The card's dense peak for ``precision`` and its name."""
    if device.type != "cuda":
        return override, "cpu"
    name = torch.cuda.get_device_name(device)
    if override is not None:
        return override, name
    for key, table in PEAK_TFLOPS.items():  # most specific first
        if all(word in name for word in key.split()):
            return table.get(precision), name
    return None, name


def model_flops_per_image(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device, autocast: Any) -> float:
    """Forward + backward FLOPs of the SiT network for one image (flop counter on a batch of 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, *shape, device=device)
    t = torch.rand(2, device=device)
    y = torch.zeros(2, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter, autocast():
        model(x, t, y, force_drop_ids=torch.zeros(2, dtype=torch.long, device=device)).sample.float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def run_mode(mode: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Time ``args.steps`` training steps (after ``args.warmup``) in ``mode`` (``vae`` or ``latents``)."""
    cfg = config_from_dict(dict(model=args.model, resolution=args.resolution, num_classes=1000, seed=0))
    vae = sd_vae(args.vae, device) if mode == "vae" else None
    latent = args.resolution // 8
    model = build_model(cfg, 4, latent).to(device).train()
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    ema = build_model(cfg, 4, latent).to(device).requires_grad_(False)
    params, ema_params = list(model.parameters()), list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, fused=device.type == "cuda")
    objective = build_objective(cfg)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.mixed_precision)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    forward = torch.compile(model) if args.compile else model

    def autocast_model(*model_args: Any, **model_kwargs: Any) -> Any:
        """The network under autocast with float32 outputs, as ``accelerator.prepare`` wraps it."""
        with autocast():
            out = forward(*model_args, **model_kwargs)
        return type(out)(sample=out.sample.float())
    flops = model_flops_per_image(model, (4, latent, latent), device, autocast)

    g = torch.Generator().manual_seed(0)
    n = args.batch_size
    pixels = (torch.rand(n, 3, args.resolution, args.resolution, generator=g) * 2 - 1).to(device)
    stored = torch.randn(n, 8, latent, latent, generator=g).to(device)  # (n, 2C, h, w) moments
    labels = torch.randint(0, 1000, (n,), generator=g).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(i: int) -> None:
        positions = torch.arange(i * n, (i + 1) * n)  # (n,) stream positions: fresh draws every step
        data = {"pixels": pixels} if vae is not None else {"moments": stored}
        batch = {**data, "label": labels, "position": positions}
        loss = micro_batch_loss(cfg, objective, autocast_model, batch, vae, (4, latent, latent), device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, math.inf)
        opt.step()
        opt.zero_grad(set_to_none=True)
        update_ema(ema_params, params, 0.9999)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(args.warmup):
        step(i)
    sync()
    tic = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    sync()
    elapsed = time.perf_counter() - tic
    images_per_s = n * args.steps / elapsed
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, process-wide peak
    return {"images_per_s": images_per_s, "step_ms": 1000 * elapsed / args.steps, "peak_gib": peak_gib,
            "model_tflops_per_image": flops / 1e12, "model_tflops_per_s": flops * images_per_s / 1e12}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="SiT-S/2")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=None, help="per step; default 4 on CPU, 32 on CUDA")
    parser.add_argument("--steps", type=int, default=None, help="timed steps; default 3 on CPU, 20 on CUDA")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps; default 1 on CPU, 5 on CUDA")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--modes", default="vae,latents", help="comma list of: vae, latents")
    parser.add_argument("--vae", default=None, help="a real AutoencoderKL id/folder (default: random SD-VAE)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the card's dense peak, for MFU")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.batch_size = args.batch_size or (32 if cuda else 4)
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    device = torch.device(args.device)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak, card = peak_tflops(device, args.mixed_precision, args.peak_tflops)

    print(f"# bench_train: {args.model}, {args.resolution} px, batch {args.batch_size}, {args.mixed_precision}, "
          f"device {card}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"steps {args.steps} (+{args.warmup} warmup)")
    print("| mode | images/s | ms/step | peak memory (GiB) | model TFLOP/image | model TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        r = run_mode(mode.strip(), args, device)
        mfu = f"{100 * r['model_tflops_per_s'] / peak:.1f}%" if peak else "n/a"
        print(f"| {mode} | {r['images_per_s']:.2f} | {r['step_ms']:.0f} | {r['peak_gib']:.2f} | "
              f"{r['model_tflops_per_image']:.4f} | {r['model_tflops_per_s']:.2f} | {mfu} |", flush=True)
        if cuda:
            torch.cuda.empty_cache()
    if not cuda:
        print("\nCPU peak memory is the process's max RSS so far (cumulative over the rows above).")


if __name__ == "__main__":
    main()
