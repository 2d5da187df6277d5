"""Forward-pass demo: build a SiT transformer, run it once, print shapes, parameters and timing.

``python -m sit_diffusers.demo`` builds a freshly initialised SiT-S/2 for 32 x 32 latents (256 px images)
and runs a batch of noisy latents at random SiT times (t=0 noise, t=1 data). A fresh adaLN-Zero model
predicts exactly zero; the demo re-draws its zeroed layers (``--perturb``, on by default) so the printed
statistics show a working network. ``--checkpoint`` runs an official SiT checkpoint instead.
"""

from __future__ import annotations

import argparse
import time

import torch

from .modeling_sit import SIT_CONFIGS, SiTTransformer2DModel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SiT forward-pass demo (seconds on a CPU).")
    parser.add_argument("--model", default="SiT-S/2", choices=sorted(SIT_CONFIGS), help="named architecture")
    parser.add_argument("--sample-size", type=int, default=32, help="latent side (32 = 256 px images)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--checkpoint", default=None,
                        help="official SiT checkpoint (file or 'owner/repo:filename') instead of --model")
    parser.add_argument("--no-perturb", dest="perturb", action="store_false",
                        help="keep the adaLN-Zero initialisation (the prediction is then exactly 0)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace) -> SiTTransformer2DModel:
    """The named model (re-drawn adaLN/output layers if ``perturb``) or the converted checkpoint."""
    if args.checkpoint is not None:
        from .conversion import load_official_checkpoint

        return load_official_checkpoint(args.checkpoint)
    torch.manual_seed(args.seed)
    model = SiTTransformer2DModel.from_name(args.model, sample_size=args.sample_size)
    if args.perturb:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "adaLN_modulation" in name or "final_layer.linear" in name:
                    p.normal_(0.0, 0.02)
    return model.eval()


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the demo; returns the measured numbers (also printed)."""
    args = parse_args(argv)
    t0 = time.perf_counter()
    model = build_model(args)
    build_s = time.perf_counter() - t0
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters()) + model.pos_embed.numel()

    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=generator)
    t = torch.rand(args.batch_size, generator=generator)  # SiT time in [0, 1]
    y = torch.randint(0, cfg.num_classes, (args.batch_size,), generator=generator)
    with torch.inference_mode():
        model(x[:1], t[:1], y[:1])  # warm-up
        t1 = time.perf_counter()
        out = model(x, t, y).sample  # (N, C, H, W)
        fwd_s = time.perf_counter() - t1

    name = args.checkpoint or args.model
    print(f"model        {name}: depth {cfg.depth}, width {cfg.hidden_size}, heads {cfg.num_heads}, "
          f"patch {cfg.patch_size}, {n_params:,} parameters (pos_embed included)")
    print(f"input        x_t {tuple(x.shape)}, t {tuple(t.shape)} in [0, 1], class_labels {tuple(y.shape)}")
    print(f"output       {tuple(out.shape)} (learned-sigma half dropped: final layer has "
          f"{model.out_channels} channels), mean {out.mean():+.4f}, std {out.std():.4f}")
    print(f"timing       build {build_s:.2f} s, forward {fwd_s * 1e3:.1f} ms for batch {args.batch_size} "
          f"({args.batch_size / fwd_s:.1f} samples/s, {torch.get_num_threads()} threads)")
    return {"build_s": build_s, "forward_s": fwd_s, "params": float(n_params)}


if __name__ == "__main__":
    main()
