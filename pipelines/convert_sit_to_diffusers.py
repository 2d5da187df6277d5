"""Convert an official SiT checkpoint (github willisma/SiT) to diffusers format.

Examples::

    # the released SiT-XL/2 256px weights, straight from the Hub, transformer only
    python pipelines/convert_sit_to_diffusers.py \
        --checkpoint nyu-visionx/SiT-collections:SiT-XL-2-256.pt --output out/sit-xl-2-256 --transformer-only

    # a train.py checkpoint ({"model", "ema", "opt", "args"}), raw (non-EMA) weights, full pipeline
    python pipelines/convert_sit_to_diffusers.py --checkpoint 0400000.pt --raw-weights --output out/pipe

Without ``--transformer-only`` the output is a ``SiTPipeline`` folder (transformer, scheduler, VAE,
``model_index.json``). The written transformer is reloaded and compared bit for bit with the converted
weights before the script reports success.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sit_diffusers.conversion import load_official_checkpoint
from sit_diffusers.modeling_sit import SiTTransformer2DModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="official .pt/.safetensors file, or 'owner/repo:filename' on the Hub")
    parser.add_argument("--output", required=True, type=Path, help="output folder (save_pretrained layout)")
    parser.add_argument("--transformer-only", action="store_true",
                        help="write only the SiTTransformer2DModel, not a full SiTPipeline")
    parser.add_argument("--raw-weights", action="store_true",
                        help="train.py checkpoints: take 'model' instead of the EMA weights")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads (default: from the named config of that width and depth)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights")
    parser.add_argument("--vae", default=None,
                        help=f"pipeline only: VAE repo id or folder (default {DEFAULT_VAE} for 4-channel "
                             "latent models, none otherwise); 'none' for no VAE")
    parser.add_argument("--sampler", default=None, help="pipeline only: SAMPLER_PRESETS name to save with it")
    return parser.parse_args(argv)


def _verify_saved(model: SiTTransformer2DModel, folder: Path) -> None:
    """Reload ``folder`` and require bit-identical tensors (same dtype) and config."""
    reloaded = SiTTransformer2DModel.from_pretrained(folder, torch_dtype=model.dtype)
    saved, original = reloaded.state_dict(), model.state_dict()
    same = saved.keys() == original.keys() and all(
        saved[k].dtype == original[k].dtype and torch.equal(saved[k], original[k]) for k in original
    )
    if not same:
        raise RuntimeError(f"{folder}: reloaded weights differ from the converted ones")
    public = [{k: v for k, v in m.config.items() if not k.startswith("_")} for m in (reloaded, model)]
    if public[0] != public[1]:
        raise RuntimeError(f"{folder}: reloaded config differs: {public[0]} != {public[1]}")


def _build_pipeline(model: SiTTransformer2DModel, vae_ref: str | None, sampler: str | None):
    """A ``SiTPipeline`` around ``model``; fails clearly while the pipeline modules are missing."""
    try:
        from sit_diffusers.pipeline_sit import SiTPipeline
        from sit_diffusers.scheduling_sit import SiTSampler
    except ImportError as err:
        raise SystemExit(
            f"full-pipeline output is not available yet ({err}); use --transformer-only"
        ) from err
    if vae_ref is None and model.config.in_channels == 4:
        vae_ref = DEFAULT_VAE
    vae = None
    if vae_ref is not None and vae_ref.lower() != "none":
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(vae_ref)
    pipe = SiTPipeline(transformer=model, scheduler=SiTSampler(), vae=vae)
    if sampler is not None:
        pipe.set_sampler(sampler)
    return pipe


def main(argv: list[str] | None = None) -> Path:
    """Run the conversion; returns the folder holding the transformer."""
    args = parse_args(argv)
    model = load_official_checkpoint(args.checkpoint, use_ema=not args.raw_weights, num_heads=args.num_heads)
    if args.dtype != "float32":
        model = model.to(DTYPES[args.dtype])
    n_params = sum(p.numel() for p in model.parameters()) + model.pos_embed.numel()
    print(f"converted {args.checkpoint}: {n_params:,} parameters (pos_embed included), config "
          f"{dict(model.config)}")

    args.output.mkdir(parents=True, exist_ok=True)
    if args.transformer_only:
        model.save_pretrained(args.output, safe_serialization=True)
        transformer_dir = args.output
    else:
        pipe = _build_pipeline(model, args.vae, args.sampler)
        pipe.save_pretrained(args.output, safe_serialization=True)
        transformer_dir = args.output / "transformer"
    _verify_saved(model, transformer_dir)
    print(f"wrote {args.output} (transformer reloaded and verified bit-identical)")
    return transformer_dir


if __name__ == "__main__":
    main()
