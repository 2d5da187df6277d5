"""Forward-pass demo: build a SiT transformer, run it once, print shapes, parameters and timing.

``python -m sit_diffusers.demo`` builds a freshly initialised SiT-S/2 for 32 x 32 latents (256 px images)
and runs a batch of noisy latents at random SiT times (t=0 noise, t=1 data). A fresh adaLN-Zero model
predicts exactly zero; the demo re-draws its zeroed layers (``--perturb``, on by default) so the printed
statistics show a working network. ``--checkpoint`` runs an official SiT checkpoint instead.

Every flag is checked before the model is built; a bad one prints one line
``python -m sit_diffusers.demo: error: ...`` and exits with status 2 (``--debug``: the traceback).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from .modeling_sit import SIT_CONFIGS, SiTTransformer2DModel
from .validation import CLIParser, InputError, check_choice, check_int, check_seed, run_cli

PROG = "python -m sit_diffusers.demo"
DEFAULT_MODEL = "SiT-S/2"
DEFAULT_SAMPLE_SIZE = 32
#: Largest latent side the demo accepts (2048 px images through the SD VAE): attention is quadratic in tokens.
MAX_SAMPLE_SIZE = 256



def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog=PROG, description="SiT forward-pass demo (seconds on a CPU).", allow_abbrev=False)
    parser.add_argument("--model", default=None,
                        help=f"named architecture: {', '.join(sorted(SIT_CONFIGS))} (default {DEFAULT_MODEL})")
    parser.add_argument("--sample-size", type=int, default=None,
                        help=f"latent side, a multiple of the patch size, at most {MAX_SAMPLE_SIZE} "
                             f"(default {DEFAULT_SAMPLE_SIZE} = 256 px images)")
    parser.add_argument("--batch-size", type=int, default=4, help="latents in the batch (>= 1; default 4)")
    parser.add_argument("--checkpoint", default=None,
                        help="official SiT checkpoint (file or 'owner/repo:filename') instead of --model")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="with --checkpoint: attention heads, for a checkpoint that matches no named config")
    parser.add_argument("--no-perturb", dest="perturb", action="store_false",
                        help="keep the adaLN-Zero initialisation (the prediction is then exactly 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed, an integer in [0, 2**64)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check every flag (``InputError`` naming the flag); fills the defaults of ``--model`` and
    ``--sample-size``."""
    args = build_parser().parse_args(argv)
    args.batch_size = check_int("--batch-size", args.batch_size, minimum=1)
    args.seed = check_seed("--seed", args.seed)
    if args.checkpoint is not None:
        if args.checkpoint == "":
            raise InputError("--checkpoint is empty; give a .pt/.safetensors file or 'owner/repo:filename'")
        for flag, value in (("--model", args.model), ("--sample-size", args.sample_size)):
            if value is not None:
                raise InputError(f"{flag} {value!r} does not apply to --checkpoint (the checkpoint fixes the "
                                 "architecture); drop one of them")
        if not args.perturb:
            raise InputError("--no-perturb applies to a freshly initialised --model, not to --checkpoint")
        if args.num_heads is not None:
            args.num_heads = check_int("--num-heads", args.num_heads, minimum=1)
        return args
    if args.num_heads is not None:
        raise InputError(f"--num-heads {args.num_heads} applies to --checkpoint only (a named --model has its own)")
    args.model = check_choice("--model", DEFAULT_MODEL if args.model is None else args.model, sorted(SIT_CONFIGS))
    patch = SIT_CONFIGS[args.model]["patch_size"]
    size = DEFAULT_SAMPLE_SIZE if args.sample_size is None else args.sample_size
    args.sample_size = check_int("--sample-size", size, minimum=patch, maximum=MAX_SAMPLE_SIZE)
    if args.sample_size % patch:
        raise InputError(f"--sample-size {args.sample_size} is not a multiple of the patch size {patch} of "
                         f"{args.model}")
    return args


def build_model(args: argparse.Namespace) -> SiTTransformer2DModel:
    """The named model (re-drawn adaLN/output layers if ``perturb``) or the converted checkpoint."""
    if args.checkpoint is not None:
        from .conversion import (
            ConversionError,
            convert_official_state_dict,
            infer_official_config,
            load_official_state_dict,
        )

        state_dict = load_official_state_dict(args.checkpoint, name="--checkpoint")
        try:
            config = infer_official_config(state_dict, args.num_heads, num_heads_name="--num-heads")
            config, converted = convert_official_state_dict(state_dict, config["num_heads"])
        except ConversionError as err:
            raise ConversionError(f"--checkpoint {args.checkpoint!r}: {err}") from err
        model = SiTTransformer2DModel(**config)
        model.load_state_dict(converted, strict=True)
        return model.eval()
    torch.manual_seed(args.seed)
    model = SiTTransformer2DModel.from_name(args.model, sample_size=args.sample_size)
    if args.perturb:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "adaLN_modulation" in name or "final_layer.linear" in name:
                    p.normal_(0.0, 0.02)
    return model.eval()


def run(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the demo; returns the measured numbers (also printed). Raises ``InputError`` for a bad flag."""
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


def _cli(argv: Sequence[str]) -> int:
    run(argv)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: 0 on success, 2 (one line on stderr) for a bad flag or checkpoint."""
    return run_cli(PROG, _cli, argv)


if __name__ == "__main__":
    sys.exit(main())
