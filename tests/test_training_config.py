"""Config parsing and data helpers of ``training/``: fast, no training."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import ConfigError, TrainConfig, config_from_dict, parse_config  # noqa: E402
from training.data import (  # noqa: E402
    LatentDataset,
    LatentsMeta,
    StepBatchSampler,
    adm_center_crop,
    flip_for,
    image_to_tensor,
    moments_to_latents,
    preprocess,
    sample_seed,
)

# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


def test_defaults_are_the_paper_recipe() -> None:
    cfg = TrainConfig()
    assert (cfg.model, cfg.resolution, cfg.global_batch_size) == ("SiT-XL/2", 256, 256)
    assert (cfg.learning_rate, cfg.weight_decay, cfg.lr_scheduler) == (1e-4, 0.0, "constant")
    assert (cfg.ema_decay, cfg.class_dropout_prob, cfg.max_grad_norm) == (0.9999, 0.1, None)
    assert (cfg.path_type, cfg.prediction, cfg.loss_weight, cfg.time_sampling) == (
        "linear", "velocity", None, "continuous")
    assert (cfg.vae, cfg.vae_scaling_factor, cfg.random_flip) == ("stabilityai/sd-vae-ft-ema", 0.18215, True)


def test_file_then_cli_precedence(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("model: SiT-S/2\nglobal_batch_size: 64\nrandom_flip: false\nmodel_overrides: {depth: 2}\n")
    cfg = parse_config(["--config", str(file), "--global_batch_size", "32", "--loss_weight", "none",
                        "--prediction", "noise", "--max_grad_norm", "1.5", "--random_flip"])
    assert cfg.model == "SiT-S/2"  # from the file
    assert cfg.global_batch_size == 32  # the CLI wins over the file
    assert cfg.random_flip is True
    assert cfg.model_overrides == {"depth": 2}
    assert cfg.max_grad_norm == 1.5 and cfg.loss_weight is None and cfg.prediction == "noise"
    cfg = parse_config(["--model_overrides", '{"hidden_size": 32}', "--vae", "none", "--no-save_pipeline"])
    assert cfg.model_overrides == {"hidden_size": 32} and cfg.vae is None and cfg.save_pipeline is False


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--learning_rat", "1e-3"], "did you mean --learning_rate"),  # typo: an error, not ignored
        (["--learning"], "unrecognized"),  # no prefix abbreviations
        (["--prediction", "velocty"], "must be one of"),
        (["--global_batch_size", "2.5"], "integer"),
        (["--global_batch_size", "0"], "--global_batch_size must be >= 1, got 0"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number, got 'nan'"),
        (["--max_grad_norm", "-1"], "--max_grad_norm must be > 0, got -1.0"),  # would be gradient ascent
        (["--lr_warmup_steps", "5", "--max_train_steps", "4"], "--lr_warmup_steps must be <= --max_train_steps"),
        (["--model_overrides", "{bad"], "JSON"),
        (["--resolution", "none"], "must be an integer"),
        (["--vae", "none", "--image_channels", "2"], "1 or 3"),
        (["--image_channels", "1"], "pixel-space"),
        (["--seed", str(2**32)], "--seed must be <= 2\\*\\*32 - 1"),
    ],
)
def test_bad_flags_raise(argv: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(argv)


def test_help_lists_every_flag_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from training.config import _build_parser

    with pytest.raises(SystemExit) as info:
        parse_config(["--help"], prog="train_sit.py")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: train_sit.py") and "--debug" in out
    helps = {a.option_strings[0]: a.help for a in _build_parser(TrainConfig)._actions}
    for f in dataclasses.fields(TrainConfig):
        text = helps[f"--{f.name}"]
        assert f"--{f.name}" in out and text.endswith(")") and "(default: " in text, f.name
        assert len(text.split("(default: ")[0].strip()) > 10, f"--{f.name} has no description"
    assert "Choices: linear, gvp, vp." in helps["--path_type"]


def test_default_workers_follow_the_machine() -> None:
    import os

    cpus = os.cpu_count() or 1
    assert TrainConfig().dataloader_num_workers == (min(4, cpus) if cpus > 1 else 0)


def test_resume_policy() -> None:
    from training.config import config_changes

    saved = TrainConfig().to_dict()
    free = dict(max_train_steps=10, log_every=5, checkpointing_steps=7, sample_every=0, output_dir="elsewhere",
                report_to="none", dataloader_num_workers=0, gradient_accumulation_steps=2, compile="regional",
                attention_backend="_native_math")
    assert config_changes(saved, TrainConfig(**free)) == []
    assert config_changes(saved, TrainConfig(learning_rate=2e-4, seed=3)) == [
        "--learning_rate: 0.0001 -> 0.0002", "--seed: 0 -> 3"]
    # A schedule that depends on the run length makes max_train_steps part of the training.
    cosine = TrainConfig(lr_scheduler="cosine").to_dict()
    assert config_changes(cosine, TrainConfig(lr_scheduler="cosine", max_train_steps=10)) == [
        "--max_train_steps: 400000 -> 10"]


def test_unknown_file_key_raises(tmp_path: Path) -> None:
    file = tmp_path / "c.json"
    file.write_text('{"ema_decy": 0.99}')
    with pytest.raises(ConfigError, match="ema_decay"):
        parse_config(["--config", str(file)])
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ConfigError, match="unknown config key"):
        config_from_dict({"nope": 1})


def test_config_files_shipped_parse() -> None:
    root = Path(__file__).resolve().parents[1] / "training" / "configs"
    train_configs = sorted(root.glob("sit_*.yaml"))
    assert train_configs, "example training configs are missing"
    for file in train_configs:
        parse_config(["--config", str(file)])


# ---------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------


def test_adm_center_crop_geometry() -> None:
    # 100 x 40 image (W x H) with a vertical band in columns [45, 55): short side 40 -> 20 (box halving),
    # then the central 20 x 20 square of a 50 x 20 image: columns [15, 35) keep the band centred.
    arr = np.zeros((40, 100, 3), dtype=np.uint8)
    arr[:, 45:55] = 255
    out = adm_center_crop(Image.fromarray(arr), 20)
    assert out.size == (20, 20)
    col_mean = np.asarray(out, dtype=np.float32).mean(axis=(0, 2))  # (20,)
    assert col_mean[8:12].min() > 200 and col_mean[:5].max() < 30 and col_mean[-5:].max() < 30
    # An image already at the target size is unchanged.
    small = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(adm_center_crop(Image.fromarray(small), 16)), small)


def test_preprocess_range_channels_and_flip() -> None:
    arr = (np.random.default_rng(1).random((12, 12, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    x = preprocess(img, 12, 3, flip=False)  # (3, 12, 12)
    assert x.shape == (3, 12, 12) and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1)
    assert torch.equal(preprocess(img, 12, 3, flip=True), x.flip(-1))
    assert preprocess(img, 12, 1, flip=False).shape == (1, 12, 12)
    assert image_to_tensor(Image.fromarray(np.full((4, 4), 255, np.uint8)), 1).eq(1).all()


def test_per_sample_seeds() -> None:
    assert sample_seed(0, 5, 2) == sample_seed(0, 5, 2)
    seeds = {sample_seed(s, q, k) for s in range(2) for q in range(50) for k in range(3)}
    assert len(seeds) == 300  # seed, position and stream all matter
    flips = [flip_for(0, q) for q in range(2000)]
    assert 900 < sum(flips) < 1100  # a fair coin


def test_moments_to_latents() -> None:
    mean = torch.randn(2, 4, 3, 3)
    logvar = torch.randn(2, 4, 3, 3)
    eps = torch.randn(2, 4, 3, 3)
    moments = torch.cat([mean, logvar], dim=1)  # (2, 8, 3, 3)
    out = moments_to_latents(moments, eps, 0.5)
    assert torch.allclose(out, (mean + torch.exp(0.5 * logvar) * eps) * 0.5)
    assert torch.allclose(moments_to_latents(moments, None, 0.5), mean * 0.5)


# ---------------------------------------------------------------------------
# Step-indexed sampling
# ---------------------------------------------------------------------------


def _keys(sampler: StepBatchSampler) -> list[list[tuple[int, int]]]:
    return list(iter(sampler))


def test_sampler_epochs_are_permutations() -> None:
    sampler = StepBatchSampler(10, 5, 1, 0, 1, seed=3, start_step=0, max_steps=4)
    batches = _keys(sampler)
    rows = [row for batch in batches for _, row in batch]
    positions = [q for batch in batches for q, _ in batch]
    assert positions == list(range(20))
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:]) == list(range(10))
    assert rows[:10] != rows[10:]  # a new order each epoch
    other = [row for batch in _keys(StepBatchSampler(10, 5, 1, 0, 1, 4, 0, 4)) for _, row in batch]
    assert other != rows  # the seed matters


def test_sampler_split_does_not_change_the_global_batch() -> None:
    one = _keys(StepBatchSampler(7, 8, 1, 0, 1, seed=0, start_step=0, max_steps=3))
    for procs, accum in ((2, 1), (2, 2), (4, 2), (1, 4)):
        per_proc = [_keys(StepBatchSampler(7, 8, procs, r, accum, 0, 0, 3)) for r in range(procs)]
        for step in range(3):
            merged = sorted(k for r in range(procs) for m in range(accum) for k in per_proc[r][step * accum + m])
            assert merged == sorted(one[step]), (procs, accum, step)


def test_sampler_resume_is_the_tail() -> None:
    full = _keys(StepBatchSampler(9, 4, 2, 1, 2, seed=0, start_step=0, max_steps=6))
    resumed = _keys(StepBatchSampler(9, 4, 2, 1, 2, seed=0, start_step=4, max_steps=6))
    assert resumed == full[8:]
    with pytest.raises(ValueError, match="not divisible"):
        StepBatchSampler(9, 6, 4, 0, 1, 0, 0, 1)


def test_latent_dataset_picks_the_coin_flipped_view(tmp_path: Path) -> None:
    moments = np.random.default_rng(0).standard_normal((5, 2, 8, 2, 2)).astype(np.float32)
    np.save(tmp_path / "shard-00000-moments.npy", moments[:3])
    np.save(tmp_path / "shard-00001-moments.npy", moments[3:])
    np.save(tmp_path / "shard-00000-labels.npy", np.arange(3))
    np.save(tmp_path / "shard-00001-labels.npy", np.arange(3, 5))
    LatentsMeta(5, (4, 2, 2), 16, "vae", 0.18215, "float32", ("shard-00000", "shard-00001")).write(tmp_path)
    ds = LatentDataset(tmp_path, seed=0, random_flip=True)
    assert len(ds) == 5
    for q in range(12):
        row = q % 5
        item = ds[(q, row)]
        assert item["label"] == row and item["position"] == q
        assert torch.equal(item["moments"], torch.from_numpy(moments[row, int(flip_for(0, q))]))
    no_flip = LatentDataset(tmp_path, seed=0, random_flip=False)
    assert all(torch.equal(no_flip[(q, 4)]["moments"], torch.from_numpy(moments[4, 0])) for q in range(6))
    # After the main process has opened the shards (``labels``), a pickled copy (what a "spawn"
    # DataLoader worker receives) holds the folder, not the maps, and reads the same rows.
    import pickle

    assert list(ds.labels) == [0, 1, 2, 3, 4] and ds._moments is not None
    blob = pickle.dumps(ds)
    copy = pickle.loads(blob)
    assert copy._moments is None and len(blob) < moments.nbytes
    assert torch.equal(copy[(7, 3)]["moments"], ds[(7, 3)]["moments"])
