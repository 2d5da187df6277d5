"""How long FID-50K sampling takes: time per image per sampler step of a SiT pipeline, extrapolated to N images.

Random weights of the named architecture and an ``AutoencoderKL`` of the sd-vae-ft-ema architecture (same
compute as the real ones, no download). Two timed runs per row, ``--steps`` and 2 steps, give the cost of one
step (their difference) and of everything else (VAE decode, noise):

    python training/fid_throughput.py --model SiT-XL/2 --resolution 256 --preset paper-fid \\
        --guidance-scale 1.5 --batch-size 64 128 --dtype float32 bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import AutoencoderKL

from sit_diffusers.modeling_sit import SiTTransformer2DModel
from sit_diffusers.pipeline_sit import SiTPipeline
from sit_diffusers.scheduling_sit import SiTSampler


def _timed(pipe: SiTPipeline, batch: int, steps: int, guidance_scale: float) -> float:
    generators = [torch.Generator().manual_seed(i) for i in range(batch)]
    labels = [i % pipe.num_classes for i in range(batch)]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    pipe(class_labels=labels, guidance_scale=guidance_scale, guidance_channels=3, num_inference_steps=steps,
         generator=generators, output_type="np")
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="SiT-XL/2")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--preset", default="paper-fid")
    parser.add_argument("--guidance-scale", type=float, default=1.5)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps (the difference with 2 steps)")
    parser.add_argument("--num-samples", type=int, default=50_000)
    parser.add_argument("--num-inference-steps", type=int, default=250, help="steps of the real run")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True  # as the official sample_ddp.py (--tf32, default on)
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    transformer = SiTTransformer2DModel.from_name(args.model, sample_size=args.resolution // 8)
    vae = AutoencoderKL(  # the sd-vae-ft-ema architecture
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
        sample_size=args.resolution,
    )
    pipe = SiTPipeline(transformer=transformer, scheduler=SiTSampler.from_preset(args.preset), vae=vae).to(device)
    pipe.set_sampler(args.preset)
    pipe.set_progress_bar_config(disable=True)

    print(f"| dtype | batch | s / image / step | s / image other | {args.num_samples} images x "
          f"{args.num_inference_steps} steps (h) |")
    print("|---|---|---|---|---|")
    for dtype in args.dtype:
        pipe.transformer.to(getattr(torch, dtype))
        for batch in args.batch_size:
            _timed(pipe, batch, 3, args.guidance_scale)  # warm-up
            long, short = (_timed(pipe, batch, n, args.guidance_scale) for n in (args.steps, 2))
            per_step = (long - short) / (args.steps - 2) / batch
            other = short / batch - 2 * per_step
            hours = args.num_samples * (args.num_inference_steps * per_step + other) / 3600
            print(f"| {dtype} | {batch} | {per_step:.5f} | {other:.5f} | {hours:.1f} |", flush=True)


if __name__ == "__main__":
    main()
