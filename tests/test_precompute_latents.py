"""``training/precompute_latents.py`` at the door: a table of bad inputs (exit 2, one line naming the flag and
the value, nothing written), NaN/inf moments (exit 1, nothing kept), ``--help`` and a good run through ``main``.

Encoding itself (shards, crop and mirror, training from the latents) is tested in ``test_training.py``."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_hub_repo import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))  # `training` is a folder of the repo, not of the installed package
from training import precompute_latents  # noqa: E402
from training.precompute_latents import PrecomputeConfig  # noqa: E402


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], latent_channels=4,
        layers_per_block=1, norm_num_groups=4, sample_size=16,
    )  # downsampling factor 2


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """An imagefolder of 4 PNGs (classes 0 and 1), a tiny VAE, one with a NaN weight, one whose moments
    overflow float16, an empty folder and a file."""
    root = tmp_path_factory.mktemp("precompute-assets")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / "images" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(root / "images" / cls / f"{i}.png")
    vae = _tiny_vae()
    vae.save_pretrained(root / "vae")
    with torch.no_grad():
        vae.quant_conv.weight.mul_(1e7)  # finite in float32, beyond float16's 65504
    vae.save_pretrained(root / "vae-huge")
    with torch.no_grad():
        vae.encoder.conv_in.weight[0, 0, 0, 0] = float("nan")
    vae.save_pretrained(root / "vae-nan")
    (root / "empty").mkdir()
    (root / "a-file").write_text("not a folder")
    from transformers import Dinov2Config, Dinov2Model

    for name, channels in (("encoder-grey", 1), ("encoder", 3)):  # the last (RGB) one gets a NaN below
        encoder = Dinov2Model(Dinov2Config(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=32, num_channels=channels))
        encoder.save_pretrained(root / name)
    with torch.no_grad():
        encoder.embeddings.patch_embeddings.projection.weight[0, 0, 0, 0] = float("nan")
    encoder.save_pretrained(root / "encoder-nan")
    return root


def _snapshot(root: Path) -> dict[str, tuple | None]:
    state = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        state[rel] = None if p.is_dir() else (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return state


def _main(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = precompute_latents.main(argv)
    return code, capsys.readouterr().err


BASE = ["--train_data_dir", "{assets}/images", "--vae", "{assets}/vae", "--resolution", "16", "--num_classes", "2",
        "--dataloader_num_workers", "0", "--dtype", "float32", "--batch_size", "2", "--output_dir", "{tmp}/latents"]
BAD_INPUTS = [
    pytest.param(["--batch_size", "0"], ["--batch_size", "0"], id="batch-size-0"),
    pytest.param(["--batch_size", "abc"], ["batch_size", "'abc'"], id="batch-size-text"),
    pytest.param(["--dataloader_num_workers", "-1"], ["--dataloader_num_workers", "-1"], id="workers-negative"),
    pytest.param(["--max_samples", "0"], ["--max_samples", "0"], id="max-samples-0"),
    pytest.param(["--vae_scaling_factor", "0"], ["--vae_scaling_factor", "0"], id="scaling-0"),
    pytest.param(["--vae_scaling_factor", "-0.5"], ["--vae_scaling_factor", "-0.5"], id="scaling-negative"),
    pytest.param(["--vae_scaling_factor", "nan"], ["--vae_scaling_factor", "nan"], id="scaling-nan"),
    pytest.param(["--vae_scaling_factor", "inf"], ["--vae_scaling_factor", "inf"], id="scaling-inf"),
    pytest.param(["--num_classes", "0"], ["--num_classes", "0"], id="classes-0"),
    pytest.param(["--num_classes", "2.5"], ["num_classes", "'2.5'"], id="classes-float"),
    pytest.param(["--num_classes", "1"], ["--num_classes", "1"], id="labels-beyond-classes"),
    pytest.param(["--resolution", "0"], ["--resolution", "0"], id="resolution-0"),
    pytest.param(["--resolution", "15"], ["--resolution 15", "factor"], id="resolution-vs-vae"),
    pytest.param(["--dtype", "float64"], ["dtype", "'float64'"], id="dtype"),
    pytest.param(["--image_column", "img"], ["--image_column", "'img'"], id="image-column"),
    pytest.param(["--label_column", "class"], ["--label_column", "'class'"], id="label-column"),
    pytest.param(["--vae", "{tmp}/no-vae"], ["--vae", "no-vae", "not an existing folder"], id="vae-missing"),
    pytest.param(["--vae", "{assets}/images"], ["--vae", "images", "could not be loaded"], id="vae-not-a-vae"),
    pytest.param(["--vae", "org/no-such-vae"], ["--vae", "'org/no-such-vae'", "offline"], id="vae-offline"),
    pytest.param(["--vae", "{assets}/vae", "--vae_subfolder", "sub"], ["--vae_subfolder", "'sub'"], id="vae-subfolder"),
    pytest.param(["--train_data_dir", "{tmp}/nowhere"], ["--train_data_dir", "nowhere"], id="data-missing"),
    pytest.param(["--train_data_dir", "{assets}/empty"], ["--train_data_dir", "empty"], id="data-empty"),
    pytest.param(["--dataset_split", "trian"], ["--dataset_split", "'trian'"], id="split"),
    pytest.param(["--train_data_dir", "none", "--dataset_name", "none"], ["--train_data_dir", "--dataset_name"],
                 id="no-data"),
    pytest.param(["--output_dir", "{tmp}/exists"], ["--output_dir", "exists", "already exists"], id="out-exists"),
    pytest.param(["--output_dir", "{assets}/a-file/latents"], ["--output_dir", "a-file", "not a folder"],
                 id="out-under-a-file"),
    pytest.param(["--batchsize", "3"], ["--batchsize", "did you mean --batch_size"], id="unknown-flag"),
    pytest.param(["--config", "{tmp}/missing.yaml"], ["--config", "missing.yaml"], id="config-missing"),
    pytest.param(["--repa_encoder", "{tmp}/no-encoder"], ["--repa_encoder", "no-encoder", "not an existing folder"],
                 id="repa-encoder-missing"),
    pytest.param(["--repa_encoder", "{assets}/vae"], ["--repa_encoder", "vae", "could not be loaded"],
                 id="repa-encoder-not-transformers"),
    pytest.param(["--repa_encoder", "org/no-such-encoder"], ["--repa_encoder", "'org/no-such-encoder'", "offline"],
                 id="repa-encoder-offline"),
    pytest.param(["--repa_encoder", "{assets}/encoder-grey"], ["--repa_encoder", "encoder-grey", "1-channel"],
                 id="repa-encoder-grey-with-vae"),
    pytest.param(["--repa_encoder", "{assets}/encoder", "--repa_image_size", "18"],
                 ["--repa_image_size", "18", "patch size 4"], id="repa-image-size-vs-patch"),
    pytest.param(["--repa_encoder", "{assets}/encoder", "--repa_image_size", "0"], ["--repa_image_size", "0"],
                 id="repa-image-size-0"),
    pytest.param(["--repa_image_size", "16"], ["--repa_image_size", "needs --repa_encoder"],
                 id="repa-image-size-alone"),
    pytest.param(["--repa_encoder", "{assets}/encoder", "--repa_encoder_dtype", "float16"],
                 ["repa_encoder_dtype", "'float16'"], id="repa-encoder-dtype"),
    pytest.param(["--vae", "none"], ["--vae none", "--repa_encoder"], id="vae-none-without-encoder"),
]


@pytest.mark.parametrize(("args", "expected"), BAD_INPUTS)
def test_bad_input_exits_2_names_it_and_writes_nothing(args, expected, assets, tmp_path, capsys, monkeypatch):
    import datasets.config
    import huggingface_hub.constants as hf_constants

    for module in (hf_constants, datasets.config):  # both read HF_HUB_OFFLINE at import
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "meta.json").write_text("{}")  # an earlier output: must stay untouched
    paths = {"assets": str(assets), "tmp": str(tmp_path)}
    argv = [a.format(**paths) for a in [*BASE, *args]]
    before, before_assets = _snapshot(tmp_path), _snapshot(assets)
    code, err = _main(argv, capsys)
    assert code == 2, err
    last = err.strip().splitlines()[-1]  # libraries may warn above; the error is one line
    assert last.startswith("precompute_latents.py: error: ") and "Traceback" not in err
    for text in expected:
        assert text.format(**paths) in last
    assert _snapshot(tmp_path) == before and _snapshot(assets) == before_assets
    assert not (tmp_path / "latents.tmp").exists()


@pytest.mark.parametrize(("vae", "dtype", "expected"), [
    pytest.param("vae-nan", "float32", "non-finite", id="nan-weights"),
    pytest.param("vae-huge", "float16", "use --dtype float32", id="float16-overflow"),
])
def test_non_finite_moments_exit_1_and_keep_nothing(vae, dtype, expected, assets, tmp_path, capsys):
    argv = [a.format(assets=assets, tmp=tmp_path) for a in BASE] + ["--vae", str(assets / vae), "--dtype", dtype]
    code, err = _main(argv, capsys)
    assert code == 1 and expected in err and "rows 0..1" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither latents nor latents.tmp


def test_non_finite_repa_features_exit_1_and_keep_nothing(assets, tmp_path, capsys):
    argv = [a.format(assets=assets, tmp=tmp_path) for a in BASE] + ["--repa_encoder", str(assets / "encoder-nan")]
    code, err = _main(argv, capsys)
    assert code == 1 and "REPA features of rows 0..1" in err and "--repa_encoder" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_good_run_with_repa_features(assets, tmp_path, capsys):
    argv = [a.format(assets=assets, tmp=tmp_path) for a in BASE] + ["--repa_encoder", str(assets / "encoder")]
    assert _main(argv, capsys)[0] == 0
    out = tmp_path / "latents"
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "repa.json", "shard-00000-labels.npy",
                                                     "shard-00000-moments.npy", "shard-00000-repa.npy"]
    features = np.load(out / "shard-00000-repa.npy")
    assert features.shape == (4, 2, 16, 16) and np.isfinite(features).all()  # 4x4 tokens of width 16


def test_good_run_through_main(assets, tmp_path, capsys):
    argv = [a.format(assets=assets, tmp=tmp_path) for a in BASE] + ["--vae", str(assets / "vae-huge")]
    assert _main(argv, capsys)[0] == 0  # float32 stores what float16 cannot
    meta = (tmp_path / "latents" / "meta.json").read_text()
    assert '"num_examples": 4' in meta and not (tmp_path / "latents.tmp").exists()
    moments = np.load(tmp_path / "latents" / "shard-00000-moments.npy")
    assert moments.shape == (4, 2, 8, 8, 8) and np.isfinite(moments).all()


def test_help_lists_every_flag_with_help_and_default(capsys):
    assert precompute_latents.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(PrecomputeConfig):
        assert f"--{f.name} {f.name.upper()}" in text
    assert text.count("(default: ") == len(fields(PrecomputeConfig)) + 2  # + --config, --debug
    assert f"(default: {precompute_latents.default_num_workers()})" in text


def test_python_api_checks_on_construction():
    from sit_diffusers.validation import InputError

    with pytest.raises(InputError, match="--batch_size must be >= 1, got 0"):
        PrecomputeConfig(batch_size=0)
    with pytest.raises(InputError, match="--vae_scaling_factor must be finite, got nan"):
        PrecomputeConfig(vae_scaling_factor=float("nan"))
    assert PrecomputeConfig().dataloader_num_workers == min(4, os.cpu_count() or 1)
