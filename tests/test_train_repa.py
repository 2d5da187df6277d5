"""REPA in ``training/train_sit.py`` (issue 14 item 1, the trainer side), end to end on a tiny SiT and a tiny
randomly initialised ``transformers`` vision model (DINOv2 architecture) built here; nothing is downloaded.

What must hold: with the REPA flags absent the trainer is the plain path (no REPA code runs, bit-identical
to the plain run); with REPA on both loss terms are logged, the projector trains, is saved with the model but
not EMA'd nor put in the pipeline, and after ``--repa_stop_step`` the encoder is no longer called and the hook
is gone; resume after SIGKILL is bit-identical; 2 processes equal 1 process with accumulation; precomputed
features train like the on-the-fly encoder; bad REPA flags exit 2 before any data is read, writing nothing.
The helpers of ``tests/test_training.py`` are imported, not copied. (The REPA module itself:
``tests/test_repa.py``.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_training import (  # noqa: E402, F401  (assets and straight are fixtures)
    KILL_SCRIPT,
    REPO,
    TINY_MODEL,
    _free_port,
    assert_states_equal,
    assets,
    load_checkpoint,
    straight,
    tiny,
)

import training.repa as repa_module  # noqa: E402
import training.train_sit as ts  # noqa: E402
from training.config import TrainConfig  # noqa: E402

PROJECTOR = "repa_projector."


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DINOv2 (16 px, patch 4: a 4 x 4 grid of width 24, 3 channels) saved as a transformers folder;
    the tiny SiT on the tiny VAE's 8 x 8 latents (patch 2) has the same 4 x 4 token grid."""
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("encoder") / "tiny-dinov2"
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=16, patch_size=4, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=48, num_channels=3)).save_pretrained(folder)
    return folder


def repa_cfg(assets: Path, encoder: Path, out: Path, **overrides: Any) -> TrainConfig:  # noqa: F811
    """The tiny run of ``test_training.tiny`` with REPA: block 1 of 2, projector width 16, stop after step 3."""
    values: dict[str, Any] = dict(repa_encoder=str(encoder), repa_depth=1, repa_projector_dim=16, repa_stop_step=3,
                                  gradient_accumulation_steps=2)
    values.update(overrides)
    return tiny(assets, out, **values)


@pytest.fixture(scope="module")
def repa_straight(assets: Path, encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """4 uninterrupted REPA steps (2 accumulation micro-steps each; alignment in steps 1-3), checkpoints at 2 and
    4, tensorboard logs, and the final pipeline."""
    out = tmp_path_factory.mktemp("repa-straight")
    ts.train(repa_cfg(assets, encoder, out, report_to="tensorboard", log_every=1, save_pipeline=True))
    return out


def _scalars(run: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, dict[int, float]] = {}
    for file in (run / "logs").rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(file))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            values.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return values


# ---------------------------------------------------------------------------
# REPA off is the plain path
# ---------------------------------------------------------------------------


def test_repa_off_runs_no_repa_code_and_is_the_plain_run(
    assets: Path, straight: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    def tripwire(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("REPA code ran with the REPA flags absent")

    for name in ("attach_hidden_capture", "repa_targets", "repa_loss"):
        monkeypatch.setattr(repa_module, name, tripwire)
    monkeypatch.setattr(repa_module.RepaEncoder, "from_pretrained", tripwire)
    monkeypatch.setattr(repa_module.RepaProjector, "__init__", tripwire)
    out = tmp_path / "plain"
    ts.train(tiny(assets, out, gradient_accumulation_steps=2))
    for step in ("checkpoint-0000002", "checkpoint-0000004"):
        state = load_checkpoint(out / "checkpoints" / step)
        assert not any(k.startswith(PROJECTOR) for k in state["model"])
        assert_states_equal(state, load_checkpoint(straight / "checkpoints" / step))  # bit for bit


# ---------------------------------------------------------------------------
# REPA on: both terms logged, projector trained and saved (not EMA'd, not in the pipeline), the stop step
# ---------------------------------------------------------------------------


def test_repa_logs_both_terms_trains_the_projector_and_stops(
    assets: Path, encoder: Path, repa_straight: Path, straight: Path, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from safetensors.torch import load_file

    from sit_diffusers.pipeline_sit import SiTPipeline

    logs = _scalars(repa_straight)
    assert set(logs["loss"]) == set(logs["repa_loss"]) == {1, 2, 3, 4}
    assert all(-1.0 <= logs["repa_loss"][s] < 0.0 or 0.0 < logs["repa_loss"][s] <= 1.0 for s in (1, 2, 3))
    assert logs["repa_loss"][4] == 0.0  # step 4 is past --repa_stop_step 3: no alignment term
    assert logs["loss_total"][2] == pytest.approx(logs["loss"][2] + 0.5 * logs["repa_loss"][2], abs=1e-6)

    ckpt = repa_straight / "checkpoints"
    two, four = load_checkpoint(ckpt / "checkpoint-0000002"), load_checkpoint(ckpt / "checkpoint-0000004")
    projector = {k: v for k, v in two["model"].items() if k.startswith(PROJECTOR)}
    assert sorted(projector) == sorted(f"{PROJECTOR}linear_{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias"))
    assert projector[f"{PROJECTOR}linear_3.weight"].shape == (24, 16)  # encoder width x projector width
    assert not any(k.startswith(PROJECTOR) for k in two["ema"])  # the EMA is the SiT's only
    # The alignment moved the SiT (the plain run's step-2 weights differ) and the projector (from its init).
    plain = load_checkpoint(straight / "checkpoints" / "checkpoint-0000002")
    assert not torch.equal(two["model"]["transformer_blocks.0.attn.to_qkv.weight"],
                           plain["model"]["transformer_blocks.0.attn.to_qkv.weight"])
    init = repa_module.RepaProjector(32, 16, 24, generator=torch.Generator().manual_seed(0)).state_dict()
    assert not torch.equal(init["linear_1.weight"], projector[f"{PROJECTOR}linear_1.weight"])
    # The pipeline holds the SiT's EMA only and samples.
    weights = load_file(repa_straight / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert weights.keys() == four["ema"].keys()
    pipe = SiTPipeline.from_pretrained(str(repa_straight / "pipeline"))
    assert pipe(class_labels=[0, 1], num_inference_steps=2, output_type="np").images.shape == (2, 16, 16, 3)

    # After the stop step: no encoder call, no hook (counted on a fresh run of the same config).
    calls = {"encoder": 0, "remove": 0}
    real_forward, real_remove = repa_module.RepaEncoder.forward, repa_module.HiddenCapture.remove

    def counted_forward(self: Any, images: torch.Tensor) -> torch.Tensor:
        calls["encoder"] += 1
        return real_forward(self, images)

    def counted_remove(self: Any) -> None:
        calls["remove"] += 1
        real_remove(self)

    monkeypatch.setattr(repa_module.RepaEncoder, "forward", counted_forward)
    monkeypatch.setattr(repa_module.HiddenCapture, "remove", counted_remove)
    out = tmp_path / "counted"
    ts.train(repa_cfg(assets, encoder, out, max_train_steps=5, checkpointing_steps=5))
    assert calls == {"encoder": 3 * 2, "remove": 1}  # 3 aligned steps x 2 micro-steps; the hook removed once
    # ... and the projector no longer moves once the alignment stopped (AdamW skips parameters without gradient).
    counted = load_checkpoint(out / "checkpoints" / "checkpoint-0000005")
    for key, value in four["model"].items():
        if key.startswith(PROJECTOR):
            assert torch.equal(value, counted["model"][key]), key


def test_irepa_trains_a_conv_projector_on_z_scored_targets_and_resumes_exactly(
    assets: Path, encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    """--repa_projector conv --repa_spatial_norm zscore: the checkpoint holds a 3 x 3 convolution (SiT width 32 ->
    encoder width 24), the targets the loss sees are the encoder's tokens z-scored with alpha 0.6, and a run
    resumed at step 2 ends bit-identical to the straight one."""
    irepa = dict(repa_projector="conv", repa_projector_dim=2048, repa_spatial_norm="zscore", repa_stop_step=None)
    seen: list[torch.Tensor] = []
    real_loss = repa_module.repa_loss

    def spy(projected: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        seen.append(target.detach().clone())
        return real_loss(projected, target, reduction)

    monkeypatch.setattr(repa_module, "repa_loss", spy)
    straight_run = tmp_path / "straight"
    ts.train(repa_cfg(assets, encoder, straight_run, **irepa))
    assert len(seen) == 4 * 2  # every micro-step of the 4 steps aligned (no stop step)
    for target in seen:  # 4 x 4 grids on both sides: no resize, so the z-scored tokens themselves
        std, mean = target.std(dim=1), target.mean(dim=1)
        assert torch.allclose(std, torch.ones_like(std), atol=1e-4)
        assert not torch.allclose(mean, torch.zeros_like(mean), atol=1e-3)  # alpha 0.6 keeps 40% of the mean
    four = load_checkpoint(straight_run / "checkpoints" / "checkpoint-0000004")
    projector = {k: v for k, v in four["model"].items() if k.startswith(PROJECTOR)}
    assert {k: tuple(v.shape) for k, v in projector.items()} == {f"{PROJECTOR}conv.weight": (24, 32, 3, 3),
                                                                 f"{PROJECTOR}conv.bias": (24,)}
    resumed_run = tmp_path / "resumed"
    ts.train(repa_cfg(assets, encoder, resumed_run, max_train_steps=2, checkpointing_steps=2, **irepa))
    ts.train(repa_cfg(assets, encoder, resumed_run, resume_from_checkpoint="latest", **irepa))
    assert_states_equal(load_checkpoint(resumed_run / "checkpoints" / "checkpoint-0000004"), four)


# ---------------------------------------------------------------------------
# Exact resume, process-count invariance, precomputed features
# ---------------------------------------------------------------------------


def test_sigkill_then_resume_with_repa_is_bitwise_identical(
    assets: Path, encoder: Path, repa_straight: Path, tmp_path: Path,  # noqa: F811
) -> None:
    out = tmp_path / "killed"
    cfg = repa_cfg(assets, encoder, out, report_to="tensorboard", log_every=1, save_pipeline=True)
    script = KILL_SCRIPT.format(repo=str(REPO), values=cfg.to_dict(), threads=torch.get_num_threads())
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILL while writing the step-4 checkpoint
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-0000002"]
    ts.train(repa_cfg(assets, encoder, out, report_to="tensorboard", log_every=1, save_pipeline=True,
                      resume_from_checkpoint="latest"))  # resumes at step 2: aligns step 3, stops before 4
    resumed = load_checkpoint(out / "checkpoints" / "checkpoint-0000004")
    reference = load_checkpoint(repa_straight / "checkpoints" / "checkpoint-0000004")
    assert any(k.startswith(PROJECTOR) for k in resumed["model"])
    assert_states_equal(resumed, reference)  # SiT, projector, EMA and AdamW moments, bit for bit


def test_two_cpu_processes_match_one_with_repa(
    assets: Path, encoder: Path, repa_straight: Path, tmp_path: Path,  # noqa: F811
) -> None:
    cfg = repa_cfg(assets, encoder, tmp_path / "two", max_train_steps=2, gradient_accumulation_steps=1)
    cfg_file = tmp_path / "two.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(REPO / "training" / "train_sit.py"), "--config", str(cfg_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = load_checkpoint(tmp_path / "two" / "checkpoints" / "checkpoint-0000002")
    one = load_checkpoint(repa_straight / "checkpoints" / "checkpoint-0000002")  # 1 process x 2 micro-steps
    assert any(k.startswith(PROJECTOR) for k in two["model"])  # the projector's gradients were averaged too
    assert_states_equal(two, one, atol=1e-5)


def test_precomputed_features_train_like_the_encoder(
    assets: Path, encoder: Path, repa_straight: Path, tmp_path: Path,  # noqa: F811
) -> None:
    from training.precompute_latents import PrecomputeConfig, precompute

    latents = tmp_path / "latents"
    precompute(PrecomputeConfig(output_dir=str(latents), train_data_dir=str(assets / "images"), num_classes=2,
                                resolution=16, vae=str(assets / "vae"), batch_size=5, dtype="float32",
                                dataloader_num_workers=0, repa_encoder=str(encoder)))
    assert (latents / repa_module.REPA_META_FILE).is_file()
    out = tmp_path / "from-features"
    ts.train(repa_cfg(assets, encoder, out, latents_dir=str(latents), train_data_dir=None, max_train_steps=2))
    assert_states_equal(load_checkpoint(out / "checkpoints" / "checkpoint-0000002"),
                        load_checkpoint(repa_straight / "checkpoints" / "checkpoint-0000002"), atol=1e-5)


# ---------------------------------------------------------------------------
# Bad REPA input: exit 2 before any data is read, nothing written
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(assets: Path, encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """Folders the cases point at: a plain and a REPA 2-step run, feature folders of another encoder and another
    resolution, latents without features, an unloadable encoder folder."""
    from training.data import LatentsMeta

    root = tmp_path_factory.mktemp("repa-world")
    assert ts.main([*_base(assets), "--output_dir", str(root / "plain")]) == 0
    assert ts.main([*_base(assets), *_repa(encoder), "--output_dir", str(root / "repa")]) == 0
    for name, enc, res in (("other-encoder", "someone/else", 16), ("other-resolution", str(encoder), 32)):
        (root / name).mkdir()
        repa_module.RepaFeaturesMeta(enc, 16, (4, 4), 24, "float32", 12, ("shard-00000",), res, 3).write(root / name)
    (root / "latents").mkdir()
    LatentsMeta(12, (4, 8, 8), 16, str(assets / "vae"), 0.18215, "float32", ("shard-00000",)).write(root / "latents")
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "config.json").write_text('{"model_type": "nothing-known"}')
    return root


def _base(assets: Path) -> list[str]:  # noqa: F811
    return ["--model", "SiT-S/2", "--model_overrides", json.dumps(TINY_MODEL), "--resolution", "16", "--num_classes",
            "2", "--train_data_dir", str(assets / "images"), "--vae", str(assets / "vae"), "--global_batch_size", "4",
            "--max_train_steps", "2", "--checkpointing_steps", "2", "--report_to", "none", "--no-save_pipeline",
            "--sample_every", "0", "--dataloader_num_workers", "0"]


def _repa(encoder: Path) -> list[str]:
    return ["--repa_encoder", str(encoder), "--repa_depth", "1", "--repa_projector_dim", "16"]


def _conv(encoder: Path) -> list[str]:
    return ["--repa_encoder", str(encoder), "--repa_depth", "1", "--repa_projector", "conv"]


def _old_scheme(run: Path) -> None:
    """Make a checkpoint look written by the per-sample-draws trainer (its config lacks random_draws)."""
    state_file = run / "checkpoints" / "checkpoint-0000002" / "train_state.json"
    state = json.loads(state_file.read_text())
    del state["config"]["random_draws"]
    state_file.write_text(json.dumps(state))


RESUME = ["--resume_from_checkpoint", "latest"]
CASES: list[tuple[str, list[str], list[str], str | None]] = [
    # (name, flags after the base, texts the one error line must hold, run folder copied as --output_dir)
    ("coeff-without-encoder", ["--repa_coeff", "0.3"], ["--repa_coeff set without --repa_encoder"], None),
    ("depth-without-encoder", ["--repa_depth", "2"], ["--repa_depth set without --repa_encoder"], None),
    ("features-without-encoder", ["--repa_features_dir", "{world}/latents"], ["--repa_features_dir", "without"], None),
    ("encoder-empty", ["--repa_encoder", " "], ["--repa_encoder must not be empty"], None),
    ("encoder-missing", ["--repa_encoder", "{tmp}/no-encoder", "--repa_depth", "1"], ["--repa_encoder", "no-encoder",
                                                                 "not an existing folder"], None),
    ("encoder-not-a-model", ["--repa_encoder", "{world}/not-a-model", "--repa_depth", "1"], ["--repa_encoder", "not-a-model",
                                                                        "could not be loaded"], None),
    ("depth-zero", ["{repa}", "--repa_depth", "0"], ["--repa_depth must be >= 1, got 0"], None),
    ("depth-beyond-model", ["{repa}", "--repa_depth", "3"], ["--repa_depth must be in [1, 2]", "got 3"], None),
    ("depth-not-integer", ["{repa}", "--repa_depth", "1.5"], ["--repa_depth must be an integer", "'1.5'"], None),
    ("coeff-zero", ["{repa}", "--repa_coeff", "0"], ["--repa_coeff must be > 0", "got 0.0"], None),
    ("coeff-negative", ["{repa}", "--repa_coeff", "-1"], ["--repa_coeff must be > 0", "got -1.0"], None),
    ("coeff-nan", ["{repa}", "--repa_coeff", "nan"], ["--repa_coeff must be a finite number", "'nan'"], None),
    ("coeff-inf", ["{repa}", "--repa_coeff", "inf"], ["--repa_coeff must be a finite number", "'inf'"], None),
    ("projector-dim-zero", ["{repa}", "--repa_projector_dim", "0"], ["--repa_projector_dim must be >= 1, got 0"], None),
    ("stop-step-zero", ["{repa}", "--repa_stop_step", "0"], ["--repa_stop_step must be >= 1, got 0"], None),
    ("with-lora", ["{repa}", "--lora_rank", "4", "--pretrained_model_name_or_path", "x", "--ema_decay", "0"],
     ["--repa_encoder with --lora_rank 4", "not supported"], None),
    ("latents-without-features", ["{repa}", "--latents_dir", "{world}/latents"],
     ["--latents_dir", "hold no REPA features", "--repa_features_dir"], None),
    ("features-dir-missing", ["{repa}", "--repa_features_dir", "{tmp}/none"], ["--repa_features_dir", "none",
                                                                               "no precomputed REPA features"], None),
    ("features-other-encoder", ["{repa}", "--repa_features_dir", "{world}/other-encoder"],
     ["--repa_features_dir", "'someone/else'", "not --repa_encoder"], None),
    ("features-other-resolution", ["{repa}", "--repa_features_dir", "{world}/other-resolution"],
     ["--repa_features_dir", "computed at 32 px", "--resolution 16"], None),
    ("features-with-streaming", ["{repa}", "--repa_features_dir", "{world}/latents", "--streaming"],
     ["--repa_features_dir", "--streaming"], None),
    ("compile-unknown", ["--compile", "max"], ["--compile must be one of", "'max'"], None),
    ("random-draws-unknown", ["--random_draws", "per-sample"], ["--random_draws must be one of", "'per-sample'"], None),
    ("resume-repa-as-plain", [*RESUME, "--allow_config_change"], ["holds a REPA projector", "trains none",
                                                                  "not even with --allow_config_change"], "repa"),
    ("resume-plain-with-repa", ["{repa}", *RESUME, "--allow_config_change"], ["holds no REPA projector"], "plain"),
    ("resume-changed-coeff", ["{repa}", *RESUME, "--repa_coeff", "0.7"], ["--repa_coeff: 0.5 -> 0.7",
                                                                          "--allow_config_change"], "repa"),
    ("resume-changed-depth", ["{repa}", *RESUME, "--repa_depth", "2"], ["--repa_depth: 1 -> 2"], "repa"),
    ("resume-old-draws", [*RESUME], ["--random_draws: 'per-sample' -> 'per-step'", "before the per-step draws"],
     "old-scheme"),
    # iREPA: the conv projector and the spatial normalisation of the targets
    ("projector-without-encoder", ["--repa_projector", "conv"], ["--repa_projector set without --repa_encoder"], None),
    ("spatial-norm-without-encoder", ["--repa_spatial_norm", "zscore"], ["--repa_spatial_norm set without"], None),
    ("projector-unknown", ["{repa}", "--repa_projector", "attention"], ["--repa_projector must be one of",
                                                                         "'attention'"], None),
    ("kernel-without-conv", ["{repa}", "--repa_projector_kernel", "5"], ["--repa_projector_kernel sets the conv "
                                                                         "projector", "--repa_projector conv"], None),
    ("kernel-even", ["{conv}", "--repa_projector_kernel", "2"], ["--repa_projector_kernel must be odd", "got 2"], None),
    ("kernel-too-large", ["{conv}", "--repa_projector_kernel", "9"], ["at most 7", "got 9"], None),
    ("kernel-zero", ["{conv}", "--repa_projector_kernel", "0"], ["--repa_projector_kernel must be >= 1, got 0"], None),
    ("conv-with-projector-dim", ["{conv}", "--repa_projector_dim", "16"], ["--repa_projector_dim", "conv has none"],
     None),
    ("spatial-norm-unknown", ["{repa}", "--repa_spatial_norm", "l2"], ["--repa_spatial_norm must be one of", "'l2'"],
     None),
    ("alpha-without-zscore", ["{repa}", "--repa_zscore_alpha", "0.5"], ["--repa_zscore_alpha sets the zscore",
                                                                        "--repa_spatial_norm zscore"], None),
    ("alpha-above-one", ["{repa}", "--repa_spatial_norm", "zscore", "--repa_zscore_alpha", "1.5"],
     ["--repa_zscore_alpha must be <= 1", "1.5"], None),
    ("alpha-negative", ["{repa}", "--repa_spatial_norm", "zscore", "--repa_zscore_alpha", "-0.1"],
     ["--repa_zscore_alpha must be >= 0", "-0.1"], None),
    ("alpha-nan", ["{repa}", "--repa_spatial_norm", "zscore", "--repa_zscore_alpha", "nan"],
     ["--repa_zscore_alpha must be a finite number", "'nan'"], None),
    ("resume-mlp-as-conv", ["{conv}", *RESUME, "--allow_config_change"],
     ["holds an MLP projector (width 16)", "trains a conv projector (kernel 3)", "not even with"], "repa"),
    ("resume-changed-projector-dim", ["{repa}", *RESUME, "--repa_projector_dim", "8", "--allow_config_change"],
     ["holds an MLP projector (width 16)", "an MLP projector (width 8)"], "repa"),
    ("resume-changed-spatial-norm", ["{repa}", *RESUME, "--repa_spatial_norm", "zscore"],
     ["--repa_spatial_norm: 'none' -> 'zscore'", "--allow_config_change"], "repa"),
]


def _snapshot(root: Path) -> dict[str, tuple[bytes, int] | None]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "argv", "expect", "run"), CASES, ids=[c[0] for c in CASES])
def test_bad_repa_input_exits_2_before_reading_data(
    name: str, argv: list[str], expect: list[str], run: str | None, assets: Path, encoder: Path,  # noqa: F811
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    if run is not None:
        shutil.copytree(world / ("plain" if run == "old-scheme" else run), out)
        if run == "old-scheme":
            _old_scheme(out)

    def tripwire(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the data was read before the bad input was reported")

    for attr in ("build_data", "load_image_dataset", "LatentDataset", "check_image_dataset"):
        monkeypatch.setattr(ts, attr, tripwire)
    flags: list[str] = []
    for arg in argv:
        flags += (_repa(encoder) if arg == "{repa}" else _conv(encoder) if arg == "{conv}" else
                  [arg.replace("{world}", str(world)).replace("{tmp}", str(tmp_path))])
    before, world_before = _snapshot(tmp_path), _snapshot(world)
    status = ts.main([*_base(assets), "--output_dir", str(out), *flags])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("train_sit.py:")]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("train_sit.py: error: ") and "Traceback" not in err, err
    for text in expect:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert _snapshot(tmp_path) == before and _snapshot(world) == world_before  # nothing written or changed


def test_the_repa_command_line_is_valid(assets: Path, encoder: Path, world: Path, tmp_path: Path) -> None:  # noqa: F811
    """The control: the REPA run of the table resumes, and an old-scheme checkpoint does with --allow_config_change."""
    for run, extra in (("repa", _repa(encoder)), ("old-scheme", ["--allow_config_change"])):
        out = tmp_path / run
        shutil.copytree(world / ("plain" if run == "old-scheme" else run), out)
        if run == "old-scheme":
            _old_scheme(out)
        assert ts.main([*_base(assets), "--output_dir", str(out), *extra, *RESUME, "--max_train_steps", "3"]) == 0
        assert (out / "checkpoints" / "checkpoint-0000003" / "train_state.json").is_file()
        assert np.isfinite(load_checkpoint(out / "checkpoints" / "checkpoint-0000003")["model"][
            "final_layer.linear.weight"].numpy()).all()
