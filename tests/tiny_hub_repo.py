"""Test helpers for the publishing tests: the build script as a module, a tiny VAE, a tiny repo spec.

The tiny repo is the official fixture checkpoint (``original_checkpoint.pt``: SiT with 8x8x4 latents, 10
classes, 2 blocks, 4 heads) with a randomly initialised two-level ``AutoencoderKL`` (factor 2: 16x16 images).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from fixtures_path import OFFICIAL_FIXTURES

from sit_diffusers.model_card import RepoSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_CHECKPOINT = OFFICIAL_FIXTURES / "original_checkpoint.pt"
FIXTURE_NUM_HEADS = 4  # not visible in the tensor shapes (README of the fixtures)


def load_build_module():
    """``pipelines/build_hub_repo.py`` imported as the module ``build_hub_repo``."""
    if "build_hub_repo" in sys.modules:
        return sys.modules["build_hub_repo"]
    spec = importlib.util.spec_from_file_location("build_hub_repo", REPO_ROOT / "pipelines" / "build_hub_repo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_hub_repo"] = module
    spec.loader.exec_module(module)
    return module


def save_tiny_vae(folder: Path) -> Path:
    """A random ``AutoencoderKL`` with 4 latent channels and downsampling factor 2, saved to ``folder``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=16,
    )
    vae.save_pretrained(str(folder))
    return folder


def tiny_spec(**overrides) -> RepoSpec:
    """A spec for the fixture model (16x16 images through the tiny VAE, 10 classes)."""
    fields = dict(
        name="SiT-tiny-fixture",
        hub_repo_id="sit-test/SiT-tiny-fixture",
        model_name="SiT-tiny",
        resolution=16,
        num_classes=10,
        source_repo_id="sit-test/fixtures",
        source_filename="original_checkpoint.pt",
        training_steps="0",
        training_steps_source="re-drawn weights of the official fixtures",
        default_preset="ode-euler",
        default_guidance_scale=4.0,
        default_class_label=3,
    )
    fields.update(overrides)
    return RepoSpec(**fields)


def build_tiny_repo(out: Path, vae_dir: Path | None = None, **build_kwargs):
    """Run the real build (dry run unless told otherwise) of the fixture checkpoint into ``out``. The stock
    loading check (a fresh Python, a few seconds) runs for a non-dry run or with ``stock_check=True``."""
    build = load_build_module()
    vae_dir = vae_dir or save_tiny_vae(out.parent / f"{out.name}-vae")
    kwargs = dict(checkpoint=FIXTURE_CHECKPOINT, vae=vae_dir, num_heads=FIXTURE_NUM_HEADS, dry_run=True)
    kwargs.update(build_kwargs)
    return build.build(tiny_spec(), out, **kwargs)
