"""End-to-end tests of ``training/train_sit.py`` on a tiny SiT, a tiny random VAE and generated images.

What must hold (issue 5): training lowers the loss, checkpoints honour their limit, the saved pipeline
loads and generates; exact resume after SIGKILL; a half-written checkpoint never replaces a good one;
two CPU processes agree with one; precomputed latents train like on-the-fly encoding; bad input fails
clearly without overwriting anything; pixel-space training from an in-memory 1-channel dataset.
Issue 12: resume never unpickles (pickle payloads are refused unread); a NaN/inf step stops the run and a
full disk fails the save cleanly, both keeping the last checkpoint, and resuming after either is exact;
changed settings are refused on resume unless allowed; labels are checked against num_classes.
Issue 14: the same checks hold with the per-step batched draws (the 2-process, resume and latents tests), and
FSDP on CPU, which accelerate cannot run, is refused before anything is written.
(The table of bad command lines is tests/test_training_inputs.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.config import ConfigError, TrainConfig, config_from_dict  # noqa: E402
from training.data import DataError  # noqa: E402
from training.train_sit import build_model, build_objective, read_checkpoint, train  # noqa: E402

TINY_MODEL = {"hidden_size": 32, "depth": 2, "num_heads": 2}


# ---------------------------------------------------------------------------
# Fixtures: images, a VAE, a config
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imagefolder of 12 generated PNGs (2 classes, various sizes) and a tiny random AutoencoderKL."""
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("assets")
    rng = np.random.default_rng(0)
    for cls in ("red", "blue"):
        (root / "images" / cls).mkdir(parents=True)
        for i in range(6):
            h, w = rng.integers(18, 40, size=2)
            arr = (rng.random((h, w, 3)) * 80).astype(np.uint8)
            arr[..., 0 if cls == "red" else 2] += 170  # a class signal the model can learn
            Image.fromarray(arr).save(root / "images" / cls / f"{i}.png")
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], latent_channels=4,
        layers_per_block=1, norm_num_groups=4, sample_size=16,
    )
    vae.save_pretrained(root / "vae")
    return root


def tiny(assets: Path, out: Path, **overrides: Any) -> TrainConfig:
    """A tiny but complete config: SiT (hidden 32, depth 2) on 16 px images through the tiny VAE."""
    values: dict[str, Any] = dict(
        model="SiT-S/2", model_overrides=TINY_MODEL, resolution=16, num_classes=2,
        train_data_dir=str(assets / "images"), vae=str(assets / "vae"), global_batch_size=4,
        max_train_steps=4, checkpointing_steps=2, log_every=2, sample_every=0, save_pipeline=False,
        report_to="none", dataloader_num_workers=0, output_dir=str(out),
    )
    values.update(overrides)
    return config_from_dict(values)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Model weights, EMA weights and optimizer state of a train_sit.py checkpoint (safetensors + JSON)."""
    ckpt = read_checkpoint(path)
    return {"model": ckpt["model"], "ema": ckpt["ema"], "optimizer": ckpt["optimizer"]["state"]}


def assert_states_equal(a: dict[str, Any], b: dict[str, Any], atol: float = 0.0) -> None:
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            if atol == 0:
                assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
            else:
                torch.testing.assert_close(a[part][k], b[part][k], atol=atol, rtol=0, msg=f"{part}.{k}")
    assert a["optimizer"].keys() == b["optimizer"].keys()
    for idx in a["optimizer"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            x, y = a["optimizer"][idx][key], b["optimizer"][idx][key]
            if atol == 0:
                assert torch.equal(x, y), f"optimizer[{idx}].{key} differs"
            else:
                torch.testing.assert_close(x, y, atol=atol, rtol=1e-4)


@pytest.fixture(scope="module")
def straight(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 uninterrupted steps (2 accumulation micro-steps each), checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("straight")
    train(tiny(assets, out, gradient_accumulation_steps=2))
    return out


# ---------------------------------------------------------------------------
# Training works
# ---------------------------------------------------------------------------


def test_training_lowers_loss_limits_checkpoints_and_saves_a_pipeline(assets: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from sit_diffusers.pipeline_sit import SiTPipeline

    cfg = tiny(assets, tmp_path / "run", max_train_steps=9, learning_rate=3e-3, checkpointing_steps=3,
               checkpoints_total_limit=2, save_pipeline=True, report_to="tensorboard", sample_every=6,
               num_sample_images=2, sample_num_inference_steps=2)
    train(cfg)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-0000006", "checkpoint-0000009"]  # 3 was pruned
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))

    # The loss on a fixed batch (fixed latents, times, noise) is lower with the trained weights.
    objective = build_objective(cfg)
    g = torch.Generator().manual_seed(123)
    from diffusers import AutoencoderKL

    from training.data import ImageDataset, load_image_dataset

    images = ImageDataset(load_image_dataset(None, str(assets / "images")), "image", "label", 16, 3, 0, False)
    pixels = torch.stack([images[(0, i)]["pixels"] for i in range(8)])  # (8, 3, 16, 16)
    labels = torch.tensor([images[(0, i)]["label"] for i in range(8)])  # (8,)
    vae = AutoencoderKL.from_pretrained(assets / "vae")
    with torch.no_grad():
        x1 = vae.encode(pixels).latent_dist.mean * 0.18215  # (8, 4, 8, 8): the tiny VAE downsamples by 2
    t = objective.sample_time(8, generator=g)
    noise = torch.randn(x1.shape, generator=g)

    def fixed_loss(model: torch.nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            fn = lambda x, tt: model(x, tt, labels).sample  # noqa: E731
            return float(objective.loss(fn, x1, t=t, noise=noise).mean())

    initial = build_model(cfg, 4, 8)
    trained = build_model(cfg, 4, 8)
    trained.load_state_dict(load_file(tmp_path / "run" / "checkpoints" / "checkpoint-0000009" / "model.safetensors"))
    assert fixed_loss(trained) < 0.9 * fixed_loss(initial)

    pipe_dir = tmp_path / "run" / "pipeline"
    pipe = SiTPipeline.from_pretrained(str(pipe_dir))
    card = (pipe_dir / "README.md").read_text()
    assert "9 optimiser steps" in card and "global batch 4" in card
    assert pipe.id2label == {0: "blue", 1: "red"}  # class names from the imagefolder
    out = pipe(class_labels=[0, 1], num_inference_steps=2, guidance_scale=2.0,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (2, 16, 16, 3) and np.isfinite(out).all()


def test_pixel_space_one_channel_in_memory_dataset(tmp_path: Path) -> None:
    import datasets

    rng = np.random.default_rng(0)
    digits = [Image.fromarray((rng.random((12, 12)) * 255).astype(np.uint8), mode="L") for _ in range(6)]
    ds = datasets.Dataset.from_dict({"image": digits, "label": [0, 1, 2, 0, 1, 2]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.ClassLabel(num_classes=3)}))
    cfg = config_from_dict(dict(
        model="SiT-S/2", model_overrides=TINY_MODEL, resolution=8, num_classes=3, vae=None, image_channels=1,
        global_batch_size=2, max_train_steps=2, checkpointing_steps=2, log_every=1, report_to="none",
        dataloader_num_workers=0, output_dir=str(tmp_path / "px"), sample_preset="ode-euler",
    ))
    train(cfg, dataset=ds)
    from sit_diffusers.pipeline_sit import SiTPipeline

    pipe = SiTPipeline.from_pretrained(str(tmp_path / "px" / "pipeline"))
    assert pipe.vae is None and pipe.transformer.config.in_channels == 1
    images = pipe(class_labels=[0, 2], num_inference_steps=2, output_type="pt").images
    assert images.shape == (2, 1, 8, 8)


# ---------------------------------------------------------------------------
# Exact resume, atomic checkpoints
# ---------------------------------------------------------------------------

KILL_SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads({threads})  # bitwise CPU results need the same intra-op thread count as the reference
sys.path.insert(0, {repo!r})
import training.train_sit as ts
from training.checkpoints import checkpoint_dir
from training.config import config_from_dict

real_save = ts.save_checkpoint

def save_then_die(cfg, accelerator, step, parts):
    if step < 4:
        return real_save(cfg, accelerator, step, parts)
    # Die in the middle of writing the step-4 checkpoint: a partial temp folder stays behind.
    partial = checkpoint_dir(cfg) / ".tmp-checkpoint-0000004"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)

ts.save_checkpoint = save_then_die
ts.train(config_from_dict({values!r}))
"""


def test_sigkill_then_resume_is_bitwise_identical(assets: Path, straight: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cfg = tiny(assets, out, gradient_accumulation_steps=2)
    script = KILL_SCRIPT.format(repo=str(REPO), values=cfg.to_dict(), threads=torch.get_num_threads())
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILL, not a clean exit
    ckpt_root = out / "checkpoints"
    assert (ckpt_root / ".tmp-checkpoint-0000004").is_dir()
    assert sorted(p.name for p in ckpt_root.glob("checkpoint-*")) == ["checkpoint-0000002"]

    # Without --resume_from_checkpoint the run refuses to start over the existing checkpoints.
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(cfg)
    good = (ckpt_root / "checkpoint-0000002" / "model.safetensors").read_bytes()

    train(tiny(assets, out, gradient_accumulation_steps=2, resume_from_checkpoint="latest"))
    assert (ckpt_root / "checkpoint-0000002" / "model.safetensors").read_bytes() == good
    # runs.jsonl keeps both parts of the run (config.json holds the newest start's config only)
    from training.train_sit import read_starts

    starts = read_starts(out)
    assert [s["from_step"] for s in starts] == [0, 2] and starts[0]["processes"] == 1
    assert starts[0]["config"]["resume_from_checkpoint"] is None
    assert starts[1]["config"]["resume_from_checkpoint"] == "latest"
    assert not (ckpt_root / ".tmp-checkpoint-0000004").exists()
    resumed = load_checkpoint(ckpt_root / "checkpoint-0000004")
    reference = load_checkpoint(straight / "checkpoints" / "checkpoint-0000004")
    assert_states_equal(resumed, reference)
    # ... and the run did move: step-4 weights differ from step-2 weights.
    mid = load_checkpoint(straight / "checkpoints" / "checkpoint-0000002")
    assert not torch.equal(mid["model"]["final_layer.linear.weight"], reference["model"]["final_layer.linear.weight"])


# ---------------------------------------------------------------------------
# Process-count invariance, precomputed latents
# ---------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_cpu_processes_match_one(assets: Path, straight: Path, tmp_path: Path) -> None:
    cfg_file = tmp_path / "two.json"
    cfg = tiny(assets, tmp_path / "two", max_train_steps=2)  # 2 processes x micro-batch 2 = global 4
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(REPO / "training" / "train_sit.py"), "--config", str(cfg_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "two" / "checkpoints" / "checkpoint-0000002"
    assert {"rng-00000.safetensors", "rng-00001.safetensors"} <= {p.name for p in ckpt.iterdir()}
    rng0, rng1 = read_checkpoint(ckpt, rank=0)["rng"][0], read_checkpoint(ckpt, rank=1)["rng"][0]
    assert not torch.equal(rng0["torch_cpu"], rng1["torch_cpu"])  # each process resumes its own RNG state
    two = load_checkpoint(ckpt)
    one = load_checkpoint(straight / "checkpoints" / "checkpoint-0000002")  # 1 process x 2 micro-steps x 2
    assert_states_equal(two, one, atol=1e-5)


@pytest.mark.parametrize("sync_module_states", [True, False])
def test_fsdp_on_cpu_is_refused_before_anything_is_written(
    assets: Path, tmp_path: Path, sync_module_states: bool,
) -> None:
    """Issue 14 item 4: the shipped FSDP config, on 2 CPU processes (gloo), cannot train here. accelerate builds
    its FSDP plugin for an accelerator device only: with ``fsdp_sync_module_states`` (as shipped) it raises; without
    it every rank silently becomes a 1-process run (both would train alone into one folder). Both are refused
    with one line, nothing written."""
    import yaml

    config = yaml.safe_load((REPO / "training" / "configs" / "accelerate_fsdp.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no", use_cpu=True)
    config["fsdp_config"]["fsdp_sync_module_states"] = sync_module_states
    (tmp_path / "fsdp_cpu.yaml").write_text(yaml.safe_dump(config))
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps(tiny(assets, tmp_path / "fsdp", max_train_steps=2).to_dict()))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "fsdp_cpu.yaml"),
           "--main_process_port", str(_free_port()), str(REPO / "training" / "train_sit.py"), "--config", str(cfg_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode != 0
    errors = {line for line in proc.stderr.splitlines() if line.startswith("train_sit.py: error:")}
    expect = "accelerate could not set up" if sync_module_states else "launched as 2 processes (WORLD_SIZE)"
    assert len(errors) == 1 and expect in errors.pop() and "ACCELERATE_USE_CPU=1" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "fsdp").exists()


def test_attention_backend_is_a_speed_choice_only(
    assets: Path, straight: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--attention_backend _native_math: every attention call of the run goes to that kernel, the run equals the
    default one to float rounding, and the saved pipeline keeps the model's default (nothing of it is saved)."""
    import sit_diffusers.modeling_sit as modeling

    seen: list[str | None] = []
    real = modeling.dispatch_attention_fn

    def spy(*args: Any, backend: Any = None, **kwargs: Any) -> torch.Tensor:
        seen.append(getattr(backend, "value", backend))
        return real(*args, backend=backend, **kwargs)

    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry.get_active_backend()[0]
    monkeypatch.setattr(modeling, "dispatch_attention_fn", spy)
    out = tmp_path / "math"
    train(tiny(assets, out, gradient_accumulation_steps=2, attention_backend="_native_math", save_pipeline=True))
    monkeypatch.setattr(modeling, "dispatch_attention_fn", real)
    # the process-wide backend diffusers' set_attention_backend also sets is put back (later models unaffected)
    assert _AttentionBackendRegistry.get_active_backend()[0] == active
    # 4 steps x 2 micro-batches x 2 blocks, forward only (the backward does not call the dispatcher)
    assert seen == ["_native_math"] * 16
    assert_states_equal(load_checkpoint(out / "checkpoints" / "checkpoint-0000004"),
                        load_checkpoint(straight / "checkpoints" / "checkpoint-0000004"), atol=1e-5)
    saved = json.loads((out / "pipeline" / "transformer" / "config.json").read_text())
    assert "attention" not in json.dumps(saved)
    from sit_diffusers.pipeline_sit import SiTPipeline

    pipe = SiTPipeline.from_pretrained(out / "pipeline")
    assert {m.processor._attention_backend for m in pipe.transformer.modules() if hasattr(m, "processor")} == {None}


def test_precomputed_latents_train_like_on_the_fly(assets: Path, straight: Path, tmp_path: Path) -> None:
    from training.precompute_latents import PrecomputeConfig, precompute

    latents = tmp_path / "latents"
    precompute(PrecomputeConfig(output_dir=str(latents), train_data_dir=str(assets / "images"), num_classes=2,
                                resolution=16, vae=str(assets / "vae"), batch_size=5, dtype="float32",
                                dataloader_num_workers=0))
    meta = json.loads((latents / "meta.json").read_text())
    assert meta["num_examples"] == 12 and meta["latent_shape"] == [4, 8, 8]
    with pytest.raises(ConfigError, match="already exists"):  # never overwritten
        precompute(PrecomputeConfig(output_dir=str(latents), train_data_dir=str(assets / "images"),
                                    num_classes=2, resolution=16, vae=str(assets / "vae")))

    out = tmp_path / "from-latents"
    # Gradient checkpointing recomputes activations: it must not change the result either.
    train(tiny(assets, out, latents_dir=str(latents), train_data_dir=None, gradient_accumulation_steps=2,
               max_train_steps=2, gradient_checkpointing=True))
    from_latents = load_checkpoint(out / "checkpoints" / "checkpoint-0000002")
    on_the_fly = load_checkpoint(straight / "checkpoints" / "checkpoint-0000002")
    assert_states_equal(from_latents, on_the_fly, atol=1e-5)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_input_fails_clearly_and_overwrites_nothing(assets: Path, straight: Path, tmp_path: Path) -> None:
    import datasets

    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    for cls in ("a", "b"):
        (broken / cls).mkdir(parents=True)
        (broken / cls / "0.png").write_bytes(b"not a png at all")
    fresh = tmp_path / "fresh"
    data_cases: list[tuple[dict[str, Any], type[Exception], str, Any]] = [
        ({"train_data_dir": str(empty)}, DataError, "could not load|empty", None),
        ({"train_data_dir": str(tmp_path / "nope")}, DataError, "not a directory", None),
        ({"train_data_dir": str(broken)}, DataError, "unreadable|could not read", None),
        ({"label_column": "class"}, DataError, "label column 'class' not in the dataset", None),
        ({"global_batch_size": 3, "gradient_accumulation_steps": 2}, ConfigError, "not divisible", None),
        ({"resume_from_checkpoint": "latest"}, ConfigError, "no checkpoint", None),
        ({"train_data_dir": None}, DataError, "empty", datasets.Dataset.from_dict({"image": [], "label": []})),
    ]
    for overrides, error, match, dataset in data_cases:
        with pytest.raises(error, match=match):
            train(tiny(assets, fresh, **overrides), dataset=dataset)
        assert not fresh.exists()  # nothing is created for a run that fails its checks

    before = _snapshot(straight)
    for overrides, match in (({"resume_from_checkpoint": "checkpoint-0000099"}, "does not exist"),
                             ({"resume_from_checkpoint": str(tmp_path / "nowhere")}, "does not exist"),
                             ({}, "already holds checkpoints")):  # a fresh run over an existing one
        with pytest.raises(ConfigError, match=match):
            train(tiny(assets, straight, **overrides))
    assert _snapshot(straight) == before


def test_cli_reports_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from training.train_sit import main

    assert main(["--global_batch_sise", "8"]) == 2
    err = capsys.readouterr().err
    assert "did you mean --global_batch_size" in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["--global_batch_sise", "8", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Resume is pickle-free; non-finite steps and full disks stop cleanly and resume exactly
# ---------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``path``: what a malicious checkpoint file would do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_resume_never_unpickles(straight: Path, assets: Path, tmp_path: Path) -> None:
    import pickle
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight / "checkpoints" / "checkpoint-0000002", out / "checkpoints" / "checkpoint-0000002")
    ckpt = out / "checkpoints" / "checkpoint-0000002"
    assert sorted(p.suffix for p in ckpt.iterdir()) == [".json"] * 3 + [".safetensors"] * 4  # no pickle at all
    marker = tmp_path / "pwned"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
        (ckpt / name).write_bytes(pickle.dumps(_Payload(marker)))
        with pytest.raises(ConfigError, match=rf"{ckpt}.*{name}.*never loaded"):
            train(tiny(assets, out, gradient_accumulation_steps=2, resume_from_checkpoint="latest"))
        (ckpt / name).unlink()
    assert not marker.exists()
    # An accelerate-era folder (pickles + a train_state.json without our format) is refused, not loaded.
    old = out / "checkpoints" / "checkpoint-0000001"
    old.mkdir()
    (old / "train_state.json").write_text(json.dumps({"step": 1, "config": {}}))
    (old / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="older train_sit.py"):
        train(tiny(assets, out, gradient_accumulation_steps=2, resume_from_checkpoint=str(old)))
    assert not marker.exists()


def _nan_at_step(monkeypatch: pytest.MonkeyPatch, bad_step: int, batch_size: int) -> None:
    """Make the loss of optimiser step ``bad_step`` (1-based) NaN."""
    import training.train_sit as ts

    real = ts.micro_batch_loss

    def loss(cfg: TrainConfig, objective: Any, model: Any, batch: dict[str, Any], *args: Any) -> torch.Tensor:
        value = real(cfg, objective, model, batch, *args)
        return value * float("nan") if int(batch["position"][0]) // batch_size + 1 == bad_step else value

    monkeypatch.setattr(ts, "micro_batch_loss", loss)


def test_nonfinite_step_stops_keeps_the_last_checkpoint_and_resumes_exactly(
    assets: Path, straight: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sit_diffusers.validation import NonFiniteError

    out = tmp_path / "nan"
    _nan_at_step(monkeypatch, 3, batch_size=4)
    with pytest.raises(NonFiniteError, match=r"non-finite loss nan .* at optimiser step 3.*checkpoint-0000002"):
        train(tiny(assets, out, gradient_accumulation_steps=2))
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-0000002"]  # no temp folder
    train(tiny(assets, out, gradient_accumulation_steps=2, resume_from_checkpoint="latest"))
    assert_states_equal(load_checkpoint(out / "checkpoints" / "checkpoint-0000004"),
                        load_checkpoint(straight / "checkpoints" / "checkpoint-0000004"))


@pytest.mark.parametrize("lr", ["10", "1e38"])  # NaN weights at a later step; AdamW's step overflowing float32
def test_learning_rate_that_blows_up_exits_1_in_one_line(
    lr: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.train_sit import main

    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (images / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(images / cls / f"{i}.png")
    argv = ["--model", "SiT-S/2", "--model_overrides", json.dumps(TINY_MODEL), "--resolution", "8",
            "--num_classes", "2", "--vae", "none", "--train_data_dir", str(images), "--global_batch_size", "2",
            "--max_train_steps", "6", "--checkpointing_steps", "2", "--report_to", "none", "--no-save_pipeline",
            "--dataloader_num_workers", "0", "--output_dir", str(tmp_path / "out"), "--learning_rate", lr]
    assert main(argv) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("train_sit.py:")]  # (progress bars aside)
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "non-finite" in errors[0] and "at optimiser step" in errors[0] and f"--learning_rate {float(lr)}" in errors[0]
    # Weights are checked before every save: this run never wrote NaN/inf tensors.
    for ckpt in (tmp_path / "out" / "checkpoints").glob("checkpoint-*"):
        state = load_checkpoint(ckpt)
        assert all(torch.isfinite(v).all() for part in ("model", "ema") for v in state[part].values())


def test_disk_full_during_save_keeps_the_previous_checkpoint(
    assets: Path, straight: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    import training.checkpoints as ck

    real = ck._write_tensors

    def write(path: Path, *args: Any, **kwargs: Any) -> None:
        if path.parent.name == ".tmp-checkpoint-0000004" and path.name == ck.EMA_FILE:  # after model.safetensors
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, *args, **kwargs)

    monkeypatch.setattr(ck, "_write_tensors", write)
    out = tmp_path / "full"
    with pytest.raises(ck.CheckpointWriteError, match=r"checkpoint-0000004.*No space left on device \(ENOSPC\).*"
                                                      r"checkpoint-0000002 is intact") as info:
        train(tiny(assets, out, gradient_accumulation_steps=2))
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-0000002"]  # tmp removed
    assert _snapshot(out / "checkpoints" / "checkpoint-0000002") .keys() == _snapshot(
        straight / "checkpoints" / "checkpoint-0000002").keys()
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        assert (out / "checkpoints" / "checkpoint-0000002" / name).read_bytes() == (
            straight / "checkpoints" / "checkpoint-0000002" / name).read_bytes()
    train(tiny(assets, out, gradient_accumulation_steps=2, resume_from_checkpoint="latest"))
    assert_states_equal(load_checkpoint(out / "checkpoints" / "checkpoint-0000004"),
                        load_checkpoint(straight / "checkpoints" / "checkpoint-0000004"))


def test_resume_refuses_changed_settings_unless_allowed(assets: Path, straight: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "changed"
    shutil.copytree(straight / "checkpoints" / "checkpoint-0000002", out / "checkpoints" / "checkpoint-0000002")
    common = dict(gradient_accumulation_steps=2, resume_from_checkpoint="latest")
    with pytest.raises(ConfigError, match=r"--learning_rate: 0.0001 -> 0.001.*--allow_config_change"):
        train(tiny(assets, out, learning_rate=1e-3, **common))
    with pytest.raises(ConfigError, match=r"--global_batch_size: 4 -> 8; --seed: 0 -> 1"):
        train(tiny(assets, out, global_batch_size=8, seed=1, **common))
    # Output, logging and speed settings may change (and accumulation: the same samples per step).
    train(tiny(assets, out, learning_rate=1e-3, allow_config_change=True, max_train_steps=3, log_every=1,
               dataloader_num_workers=0, **common))
    assert (out / "checkpoints" / "checkpoint-0000003").is_dir()
    train(tiny(assets, out, max_train_steps=3, checkpointing_steps=1, learning_rate=1e-3, seed=0,
               gradient_accumulation_steps=1, resume_from_checkpoint="latest"))


def test_labels_are_checked_against_num_classes(tmp_path: Path) -> None:
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8), mode="L") for _ in range(6)]
    common = dict(model="SiT-S/2", model_overrides=TINY_MODEL, resolution=8, num_classes=3, vae=None,
                  image_channels=1, global_batch_size=2, max_train_steps=1, report_to="none",
                  dataloader_num_workers=0, output_dir=str(tmp_path / "out"))
    labelled = datasets.Dataset.from_dict(
        {"image": images, "label": [0, 1, 2, 0, 1, 2]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=5)}))
    with pytest.raises(DataError, match="5 classes .*--num_classes is 3"):
        train(config_from_dict(common), dataset=labelled)
    plain = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2, 0, 1, 3]})  # the LAST one is bad
    with pytest.raises(DataError, match=r"label 3 of example 5 .*outside \[0, --num_classes 3\)"):
        train(config_from_dict(common), dataset=plain)
    rows = [{"image": img, "label": lab} for img, lab in zip(images, [0, 1, -1, 0, 1, 2], strict=True)]
    with pytest.raises(DataError, match="label -1 of example 2"):
        train(config_from_dict(common), dataset=rows)
    assert not (tmp_path / "out").exists()


def test_streaming_resume_matches_straight(assets: Path, tmp_path: Path) -> None:
    common = dict(streaming=True, shuffle_buffer_size=4, max_train_steps=4)
    train(tiny(assets, tmp_path / "a", **common))
    train(tiny(assets, tmp_path / "b", **{**common, "max_train_steps": 2}))
    train(tiny(assets, tmp_path / "b", **common, resume_from_checkpoint="latest"))
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "checkpoint-0000004")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "checkpoint-0000004")
    assert_states_equal(a, b)


def test_rng_states_round_trip_without_pickle(tmp_path: Path) -> None:
    import random

    from training.checkpoints import _read_tensors, _write_tensors, rng_state, set_rng_state

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    _write_tensors(tmp_path / "rng.safetensors", *rng_state())
    expected = (torch.rand(3), np.random.standard_normal(3), random.random(), random.gauss(0, 1))
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    set_rng_state(*_read_tensors(tmp_path / "rng.safetensors"))
    again = (torch.rand(3), np.random.standard_normal(3), random.random(), random.gauss(0, 1))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]
