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

Order of work: every flag and path is checked (an explicit ``--vae`` is found too), the checkpoint is read
and every key, shape and value checked, the VAE is loaded (offline and not cached is an error naming
``--vae none`` / ``--transformer-only``), and only then is the model built and written: into a temporary
folder beside ``--output``, renamed into place once the reload check passed. A failed run leaves
``--output`` as it was and no temporary folder.
User errors (a bad flag, file or checkpoint) print one line ``convert_sit_to_diffusers.py: error: ...`` and
exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from sit_diffusers.atomic import check_output_folder, write_folder_atomically
from sit_diffusers.conversion import (
    ConversionError,
    convert_official_state_dict,
    infer_official_config,
    load_official_state_dict,
    official_guidance_channels,
)
from sit_diffusers.modeling_sit import SIT_CONFIGS, SiTTransformer2DModel
from sit_diffusers.scheduling_sit import SAMPLER_PRESETS
from sit_diffusers.validation import CLIParser, InputError, check_choice, run_cli

PROG = "convert_sit_to_diffusers.py"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"
NO_VAE_HINT = (
    "pass --vae none for a pipeline without a VAE, --vae FOLDER for a local one, or --transformer-only"
)



def _positive_int(text: str) -> int:
    """``--num-heads`` / ``--num-classes``: a whole number >= 1 (checked against the checkpoint later)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--checkpoint", required=True,
                        help="official .pt/.safetensors file, or 'owner/repo:filename' on the Hub")
    parser.add_argument("--output", required=True, type=Path,
                        help="output folder (save_pretrained layout), new or empty unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --output folder (once the new one is complete)")
    parser.add_argument("--transformer-only", action="store_true",
                        help="write only the SiTTransformer2DModel, not a full SiTPipeline")
    parser.add_argument("--raw-weights", action="store_true",
                        help="train.py checkpoints: take 'model' instead of the EMA weights")
    parser.add_argument("--num-heads", type=_positive_int, default=None,
                        help="attention heads, a divisor of the width (default: from the named config of "
                             "that width, depth and patch)")
    parser.add_argument("--num-classes", type=_positive_int, default=None,
                        help="classes of the model (default: the label table's rows - 1, the last row being "
                             "the null class of guidance, as official training makes it; a table with as "
                             "many rows as --num-classes has no null class: class_dropout_prob 0)")
    parser.add_argument("--dtype", default="float32",
                        help=f"dtype of the saved weights: {', '.join(DTYPES)} (default float32)")
    parser.add_argument("--vae", default=None,
                        help=f"pipeline only: VAE repo id or folder (default {DEFAULT_VAE} for 4-channel "
                             "latent models, none otherwise); 'none' for no VAE")
    parser.add_argument("--sampler", default=None,
                        help="pipeline only: the sampler preset to save with it "
                             f"({', '.join(sorted(SAMPLER_PRESETS))})")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# ----------------------------------------------------------------------------- checks at the door


def _local_file(ref: str | None) -> Path | None:
    """``ref`` resolved, if it names an existing local path."""
    if not ref:
        return None
    path = Path(ref).expanduser()
    return path.resolve() if path.exists() else None


def _locate_vae(ref: str | None, in_channels: int | None) -> tuple[str, str] | None:
    """``(source, its name in messages)`` of the pipeline's VAE, or ``None`` for no VAE; nothing is loaded.

    ``ref`` is ``--vae``; ``None`` means the default, which needs the checkpoint's ``in_channels``.
    A missing folder, a folder without ``config.json``, or a repo that is offline and not cached is refused.
    """
    if ref is None:
        if in_channels != 4:
            return None
        ref, what = DEFAULT_VAE, f"--vae {DEFAULT_VAE!r} (the default for 4-channel latents)"
    else:
        what = f"--vae {ref!r}"
    if ref.lower() == "none":
        return None
    local = Path(ref).expanduser()
    if local.exists():
        if not local.is_dir():
            raise InputError(f"{what} is a file, not an AutoencoderKL folder or a Hub repo id; {NO_VAE_HINT}")
        if not (local / "config.json").is_file():
            raise InputError(f"{what} has no config.json, so it is not a saved AutoencoderKL; {NO_VAE_HINT}")
        return str(local), what
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    looks_like_path = ref.startswith((".", "/", "~")) or ref.count("/") != 1
    try:
        validate_repo_id(ref)
    except HFValidationError:
        looks_like_path = True
    if looks_like_path:
        raise InputError(f"{what} is neither an existing folder nor a Hub repo id 'org/name'; {NO_VAE_HINT}")
    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(ref, "config.json"), str):
        raise InputError(
            f"{what} is not in the local Hub cache and offline mode is on (HF_HUB_OFFLINE=1), so it cannot "
            f"be downloaded; {NO_VAE_HINT}"
        )
    return ref, what


def _load_vae(located: tuple[str, str] | None, in_channels: int):
    """``AutoencoderKL.from_pretrained`` of what :func:`_locate_vae` found, with ``in_channels`` latents."""
    if located is None:
        return None
    source, what = located
    from diffusers import AutoencoderKL
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)  # its retries log errors: ours is one line
    try:
        vae = AutoencoderKL.from_pretrained(source)
    except (OSError, ValueError) as err:  # diffusers: missing files, no connection, a config it cannot use
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise InputError(f"{what} cannot be loaded ({first}); {NO_VAE_HINT}") from err
    finally:
        diffusers_logging.set_verbosity(verbosity)
    if vae.config.latent_channels != in_channels:
        raise InputError(
            f"{what} has {vae.config.latent_channels} latent channels, the checkpoint's transformer takes "
            f"{in_channels}; {NO_VAE_HINT}"
        )
    return vae


def _checkpoint_error(spec: str, err: ConversionError) -> ConversionError:
    """A conversion error about the checkpoint's content, naming the flag and the file."""
    return ConversionError(f"--checkpoint {spec!r}: {err}")


# ----------------------------------------------------------------------------- work


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


def _build_pipeline(model: SiTTransformer2DModel, vae, sampler: str | None):
    """A ``SiTPipeline`` around ``model`` (``vae`` already loaded, ``sampler`` already checked)."""
    from sit_diffusers.pipeline_sit import SiTPipeline
    from sit_diffusers.scheduling_sit import SiTSampler

    pipe = SiTPipeline(transformer=model, scheduler=SiTSampler(), vae=vae,  # guided as the official forward_with_cfg
                       default_guidance_channels=official_guidance_channels(model.config.in_channels))
    if sampler is not None:
        pipe.set_sampler(sampler)
    return pipe


def convert(args: argparse.Namespace) -> Path:
    """Check every input, convert, write atomically; returns the folder holding the transformer."""
    dtype = DTYPES[check_choice("--dtype", args.dtype, DTYPES)]
    if args.transformer_only:
        for flag, value in (("--vae", args.vae), ("--sampler", args.sampler)):
            if value is not None:
                raise InputError(
                    f"{flag} {value!r} applies to a pipeline; drop it or drop --transformer-only"
                )
    if args.sampler is not None:
        check_choice("--sampler", args.sampler, sorted(SAMPLER_PRESETS))
    output = check_output_folder(args.output, args.overwrite, [_local_file(args.checkpoint), _local_file(args.vae)],
                                 "--output", "--overwrite")

    if args.vae is not None:  # an explicit VAE is found before the checkpoint is even read
        _locate_vae(args.vae, None)

    spec = args.checkpoint
    state_dict = load_official_state_dict(spec, use_ema=not args.raw_weights, name="--checkpoint")
    try:  # every key, shape and value checked; nothing copied yet
        config = infer_official_config(state_dict, args.num_heads, num_classes=args.num_classes,
                                       num_heads_name="--num-heads", num_classes_name="--num-classes")
        config, converted = convert_official_state_dict(state_dict, config["num_heads"], config["num_classes"])
    except ConversionError as err:
        raise _checkpoint_error(spec, err) from err
    vae = None
    if not args.transformer_only:  # the VAE before the model is built or anything written
        vae = _load_vae(_locate_vae(args.vae, config["in_channels"]), config["in_channels"])

    model = SiTTransformer2DModel(**config)
    model.load_state_dict(converted, strict=True)
    model.eval()
    if dtype != torch.float32:
        model = model.to(dtype)
    del state_dict, converted
    n_params = sum(p.numel() for p in model.parameters()) + model.pos_embed.numel()
    print(f"converted {spec}: {n_params:,} parameters (pos_embed included), config {dict(model.config)}")
    shape = (config["hidden_size"], config["depth"], config["patch_size"])
    for name, named in SIT_CONFIGS.items():
        if (named["hidden_size"], named["depth"], named["patch_size"]) == shape \
                and named["num_heads"] != config["num_heads"]:
            print(f"warning: these shapes are {name}'s, which has {named['num_heads']} heads; converted with "
                  f"--num-heads {config['num_heads']} as asked", file=sys.stderr)

    def write(folder: Path) -> None:
        if args.transformer_only:
            model.save_pretrained(folder, safe_serialization=True)
            _verify_saved(model, folder)
        else:
            _build_pipeline(model, vae, args.sampler).save_pretrained(folder, safe_serialization=True)
            _verify_saved(model, folder / "transformer")

    write_folder_atomically(output, write)
    print(f"wrote {output} (transformer reloaded and verified bit-identical)")
    return output if args.transformer_only else output / "transformer"


def _main(argv: Sequence[str]) -> None:
    convert(parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: 0 on success, 2 (one line on stderr) for a bad flag, file or checkpoint."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
