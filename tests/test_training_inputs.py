"""Bad input to ``training/train_sit.py`` (issue 12): a table of command lines run through ``main(argv)``.

Every case must exit 2 with one ``train_sit.py: error:`` line (no traceback) that names the flag and the
bad value, fail before any data is read (the data loaders are replaced by tripwires), and leave every file
under the run folder as it was (bytes and mtimes). Resume cases run against a copy of a real checkpoint,
tampered with as the case says; the pickle cases carry a payload that would create a file if unpickled.
Fine-tuning / LoRA cases (issue 13) run against a saved tiny pipeline that fits the base command line
(``world/pretrained``) and a real 2-step LoRA run (``world/lora-run``).
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import training.train_sit as ts  # noqa: E402
from training.data import LatentsMeta  # noqa: E402

TINY = {"hidden_size": 32, "depth": 2, "num_heads": 2}
CKPT = "checkpoint-0000002"


def base_argv(world: Path) -> list[str]:
    """A valid tiny pixel-space run (8 px, 2 classes, 2 steps): the cases change one thing of it."""
    return ["--model", "SiT-S/2", "--model_overrides", json.dumps(TINY), "--resolution", "8", "--num_classes", "2",
            "--vae", "none", "--train_data_dir", str(world / "images"), "--global_batch_size", "2",
            "--max_train_steps", "2", "--checkpointing_steps", "2", "--report_to", "none", "--no-save_pipeline",
            "--sample_every", "0", "--dataloader_num_workers", "0"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images, a tiny VAE (downsampling 2), a latents ``meta.json`` (16 px) and a real 2-step run."""
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / "images" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(root / "images" / cls / f"{i}.png")
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                  up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], latent_channels=4,
                  layers_per_block=1, norm_num_groups=4, sample_size=16).save_pretrained(root / "vae")
    (root / "latents").mkdir()
    LatentsMeta(4, (4, 8, 8), 16, "vae", 0.18215, "float32", ("shard-00000",)).write(root / "latents")
    (root / "broken-latents").mkdir()
    (root / "broken-latents" / "meta.json").write_text('{"num_examples": 4}')
    assert ts.main([*base_argv(root), "--output_dir", str(root / "run")]) == 0
    assert (root / "run" / "checkpoints" / CKPT / "train_state.json").is_file()
    _pretrained_folders(root)
    lora = [a.replace("{world}", str(root)) for a in LORA]
    assert ts.main([*base_argv(root), *lora, "--save_pipeline", "--output_dir", str(root / "lora-run")]) == 0
    assert (root / "lora-run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    return root


def _pretrained_folders(root: Path) -> None:
    """``pretrained``: a saved SiTPipeline that fits the base command line (SiT-S/2 narrowed to TINY, 3 channels,
    8 px, 2 classes); ``pretrained-no-null``: the same without a null class; ``pretrained-pickle``: its weights
    as a pickle ``.bin`` only; ``not-sit``: a pipeline folder whose transformer is another class."""
    from sit_diffusers.modeling_sit import SiTTransformer2DModel
    from sit_diffusers.pipeline_sit import SiTPipeline
    from sit_diffusers.scheduling_sit import SiTSampler

    for name, dropout in (("pretrained", 0.1), ("pretrained-no-null", 0.0)):
        torch.manual_seed(0)
        model = SiTTransformer2DModel(sample_size=8, in_channels=3, num_classes=2, class_dropout_prob=dropout,
                                      patch_size=2, **TINY)
        SiTPipeline(model.eval(), SiTSampler.from_preset("ode-euler")).save_pretrained(root / name)
    shutil.copytree(root / "pretrained", root / "pretrained-pickle")
    weights = root / "pretrained-pickle" / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.with_suffix(".bin").write_bytes(pickle.dumps(_Payload(root / "pwned-by-pretrained")))
    weights.unlink()
    shutil.copytree(root / "pretrained", root / "not-sit")
    config = json.loads((root / "not-sit" / "transformer" / "config.json").read_text())
    (root / "not-sit" / "transformer" / "config.json").write_text(json.dumps({**config, "_class_name": "DiTModel"}))


# ---------------------------------------------------------------------------
# Tampering with a checkpoint copy
# ---------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates the file ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def _pickle(name: str) -> Callable[[Path, Path], None]:
    def tamper(ckpt: Path, tmp: Path) -> None:
        (ckpt / name).write_bytes(pickle.dumps(_Payload(tmp / "pwned")))
    return tamper


def _edit_state(**changes: Any) -> Callable[[Path, Path], None]:
    def tamper(ckpt: Path, tmp: Path) -> None:
        state = json.loads((ckpt / "train_state.json").read_text())
        for key, value in changes.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        (ckpt / "train_state.json").write_text(json.dumps(state))
    return tamper


def _flip_byte(name: str) -> Callable[[Path, Path], None]:
    def tamper(ckpt: Path, tmp: Path) -> None:
        data = bytearray((ckpt / name).read_bytes())
        data[-1] ^= 1
        (ckpt / name).write_bytes(bytes(data))
    return tamper


def _truncate(name: str) -> Callable[[Path, Path], None]:
    def tamper(ckpt: Path, tmp: Path) -> None:
        (ckpt / name).write_bytes((ckpt / name).read_bytes()[:-8])
    return tamper


def _remove(name: str) -> Callable[[Path, Path], None]:
    def tamper(ckpt: Path, tmp: Path) -> None:
        (ckpt / name).unlink()
    return tamper


def _add(name: str, text: str) -> Callable[[Path, Path], None]:
    def tamper(ckpt: Path, tmp: Path) -> None:
        (ckpt / name).write_text(text)
    return tamper


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    argv: list[str]
    """Appended to the base command line (a later flag wins); ``{world}`` / ``{tmp}`` are filled in."""
    expect: list[str]
    """Substrings of the error line: the flag and the bad value (and what is allowed, where useful)."""
    output: str = "fresh"
    """``fresh`` (no output_dir yet), ``run`` (a copy of the 2-step run) or ``file`` (output_dir is a file)."""
    tamper: Callable[[Path, Path], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


RESUME = ["--resume_from_checkpoint", "latest"]
LORA = ["--pretrained_model_name_or_path", "{world}/pretrained", "--lora_rank", "4", "--ema_decay", "0.3"]
"""A valid LoRA fine-tune of ``world/pretrained`` on top of the base command line (``{world}`` is filled in)."""

CASES = [
    # ---- optimisation
    Case("lr-zero", ["--learning_rate", "0"], ["--learning_rate", "> 0", "got 0.0"]),
    Case("lr-negative", ["--learning_rate", "-1e-4"], ["--learning_rate", "got -0.0001"]),
    Case("lr-nan", ["--learning_rate", "nan"], ["--learning_rate", "finite", "'nan'"]),
    Case("lr-inf", ["--learning_rate", "inf"], ["--learning_rate", "finite", "'inf'"]),
    Case("lr-text", ["--learning_rate", "fast"], ["--learning_rate", "number", "'fast'"]),
    Case("clip-negative", ["--max_grad_norm", "-1"], ["--max_grad_norm", "> 0", "got -1.0"]),
    Case("clip-zero", ["--max_grad_norm", "0"], ["--max_grad_norm", "got 0.0"]),
    Case("beta1-one", ["--adam_beta1", "1"], ["--adam_beta1", "< 1", "got 1.0"]),
    Case("beta2-negative", ["--adam_beta2", "-0.1"], ["--adam_beta2", ">= 0", "got -0.1"]),
    Case("adam-eps-zero", ["--adam_epsilon", "0"], ["--adam_epsilon", "got 0.0"]),
    Case("weight-decay-negative", ["--weight_decay", "-0.01"], ["--weight_decay", "got -0.01"]),
    Case("weight-decay-inf", ["--weight_decay", "inf"], ["--weight_decay", "'inf'"]),
    Case("warmup-negative", ["--lr_warmup_steps", "-1"], ["--lr_warmup_steps", "got -1"]),
    Case("warmup-longer-than-run", ["--lr_warmup_steps", "3"], ["--lr_warmup_steps", "--max_train_steps (2)", "got 3"]),
    Case("ema-above-one", ["--ema_decay", "1.5"], ["--ema_decay", "got 1.5"]),
    Case("seed-negative", ["--seed", "-1"], ["--seed", "got -1"]),
    Case("seed-too-big", ["--seed", "4294967296"], ["--seed", "4294967296"]),
    Case("batch-zero", ["--global_batch_size", "0"], ["--global_batch_size", "got 0"]),
    Case("batch-not-divisible", ["--global_batch_size", "3", "--gradient_accumulation_steps", "2"],
         ["--global_batch_size 3", "--gradient_accumulation_steps (2)"]),
    Case("steps-not-integer", ["--max_train_steps", "2.5"], ["--max_train_steps", "'2.5'"]),
    # ---- speed choices
    Case("attention-backend-unknown", ["--attention_backend", "natve"],
         ["--attention_backend 'natve'", "not a diffusers attention backend", "_native_math", "did you mean 'native'"]),
    Case("attention-backend-empty", ["--attention_backend", " "], ["--attention_backend", "must not be empty"]),
    Case("attention-backend-no-cpu-kernel", ["--attention_backend", "_native_cudnn"],
         ["--attention_backend _native_cudnn", "cannot train on cpu", "head width 16", "_native_math"]),
    Case("attention-backend-missing-package", ["--attention_backend", "xformers"],
         ["--attention_backend xformers", "cannot train on cpu", "xformers"]),
    # ---- objective and sampling
    Case("train-eps-half", ["--train_eps", "0.5"], ["--train_eps", "< 0.5", "got 0.5"]),
    Case("sample-eps-negative", ["--sample_eps", "-0.1"], ["--sample_eps", "got -0.1"]),
    Case("loss-weight-for-velocity", ["--loss_weight", "likelihood"], ["--loss_weight likelihood", "velocity"]),
    Case("prediction-typo", ["--prediction", "velocty"], ["--prediction", "'velocty'", "'velocity'"]),
    Case("sample-every-negative", ["--sample_every", "-1"], ["--sample_every", "got -1"]),
    Case("sample-images-zero", ["--num_sample_images", "0"], ["--num_sample_images", "got 0"]),
    Case("guidance-negative", ["--sample_guidance_scale", "-1"], ["--sample_guidance_scale", "got -1.0"]),
    Case("guidance-nan", ["--sample_guidance_scale", "nan"], ["--sample_guidance_scale", "'nan'"]),
    Case("sampler-steps-zero", ["--sample_num_inference_steps", "0"], ["--sample_num_inference_steps", "got 0"]),
    Case("preset-typo", ["--sample_preset", "ode-eulr"], ["--sample_preset", "'ode-eulr'", "did you mean 'ode-euler'"]),
    # ---- model
    Case("model-unknown", ["--model", "SiT-X/2"], ["--model", "'SiT-X/2'", "SiT-XL/2", "SiT-S/8"]),
    Case("override-unknown-key", ["--model_overrides", '{"dept": 2}'], ["--model_overrides", "'dept'", "'depth'"]),
    Case("override-trainer-key", ["--model_overrides", '{"num_classes": 5}'], ["--model_overrides", "'num_classes'",
                                                                              "--num_classes"]),
    Case("override-bad-value", ["--model_overrides", '{"depth": 0}'], ["--model_overrides depth", "got 0"]),
    Case("override-bad-architecture", ["--model_overrides", '{"hidden_size": 30, "num_heads": 4}'],
         ["--model_overrides", "hidden_size 30", "num_heads 4"]),
    Case("override-not-json", ["--model_overrides", "{depth: 2"], ["--model_overrides", "JSON", "'{depth: 2'"]),
    Case("num-classes-zero", ["--num_classes", "0"], ["--num_classes", "got 0"]),
    Case("class-dropout-one", ["--class_dropout_prob", "1"], ["--class_dropout_prob", "got 1.0"]),
    # ---- resolution, VAE, data settings (checked without reading the data)
    Case("resolution-vs-patch", ["--resolution", "9"], ["--resolution 9", "patch size 2"]),
    Case("resolution-vs-vae", ["--vae", "{world}/vae", "--resolution", "9"], ["--resolution 9", "factor 2"]),
    Case("latent-side-vs-patch", ["--vae", "{world}/vae", "--resolution", "6"],
         ["--resolution 6", "latent side 3", "patch size 2"]),
    Case("vae-missing", ["--vae", "{tmp}/no-vae"], ["--vae", "no-vae"]),
    Case("vae-scaling-zero", ["--vae_scaling_factor", "0"], ["--vae_scaling_factor", "got 0.0"]),
    Case("vae-scaling-nan", ["--vae_scaling_factor", "nan"], ["--vae_scaling_factor", "'nan'"]),
    Case("latents-resolution", ["--latents_dir", "{world}/latents"], ["--resolution 8", "16 px"]),
    Case("latents-dir-missing", ["--latents_dir", "{tmp}/no-latents"], ["--latents_dir", "no-latents", "meta.json"]),
    Case("latents-meta-broken", ["--latents_dir", "{world}/broken-latents"],
         ["--latents_dir", "broken-latents", "not a valid latents meta.json"]),
    Case("streaming-latents", ["--streaming", "--latents_dir", "{world}/latents"], ["--streaming", "--latents_dir"]),
    Case("image-channels", ["--image_channels", "2"], ["--image_channels", "got 2"]),
    Case("workers-negative", ["--dataloader_num_workers", "-1"], ["--dataloader_num_workers", "got -1"]),
    Case("shuffle-buffer-zero", ["--shuffle_buffer_size", "0"], ["--shuffle_buffer_size", "got 0"]),
    Case("max-samples-zero", ["--max_train_samples", "0"], ["--max_train_samples", "got 0"]),
    # ---- outputs and the command line
    Case("log-every-zero", ["--log_every", "0"], ["--log_every", "got 0"]),
    Case("checkpointing-zero", ["--checkpointing_steps", "0"], ["--checkpointing_steps", "got 0"]),
    Case("checkpoint-limit-zero", ["--checkpoints_total_limit", "0"], ["--checkpoints_total_limit", "got 0"]),
    Case("push-without-repo", ["--push_to_hub"], ["--push_to_hub", "--hub_model_id"]),
    Case("output-dir-is-a-file", [], ["--output_dir", "not a folder"], output="file"),
    Case("flag-typo", ["--global_batch_sise", "8"], ["--global_batch_sise", "did you mean --global_batch_size"]),
    Case("config-missing", ["--config", "{tmp}/missing.yaml"], ["--config", "missing.yaml", "does not exist"]),
    # ---- resume
    Case("fresh-run-over-checkpoints", [], ["already holds checkpoints", "--resume_from_checkpoint latest"],
         output="run"),
    Case("resume-latest-without-checkpoints", RESUME, ["--resume_from_checkpoint latest", "no checkpoint"]),
    Case("resume-unknown-name", ["--resume_from_checkpoint", "checkpoint-0000099"],
         ["--resume_from_checkpoint", "'checkpoint-0000099'", "does not exist"], output="run"),
    Case("resume-pickle-custom-state", RESUME, ["custom_checkpoint_0.pkl", "never loaded"], output="run",
         tamper=_pickle("custom_checkpoint_0.pkl")),
    Case("resume-pickle-rng-state", RESUME, ["random_states_0.pkl", "never loaded"], output="run",
         tamper=_pickle("random_states_0.pkl")),
    Case("resume-torch-bin", RESUME, ["optimizer.bin", "never loaded"], output="run", tamper=_pickle("optimizer.bin")),
    Case("resume-accelerate-era-folder", RESUME, [CKPT, "older train_sit.py"], output="run",
         tamper=_edit_state(format=None, format_version=None, files=None)),
    Case("resume-format-version", RESUME, [CKPT, "format version 99"], output="run",
         tamper=_edit_state(format_version=99)),
    Case("resume-modified-weights", RESUME, [CKPT, "model.safetensors", "SHA-256"], output="run",
         tamper=_flip_byte("model.safetensors")),
    Case("resume-truncated-ema", RESUME, [CKPT, "ema.safetensors", "bytes"], output="run",
         tamper=_truncate("ema.safetensors")),
    Case("resume-missing-file", RESUME, [CKPT, "missing: lr_scheduler.json"], output="run",
         tamper=_remove("lr_scheduler.json")),
    Case("resume-unknown-file", RESUME, [CKPT, "unexpected files: notes.txt"], output="run",
         tamper=_add("notes.txt", "hello")),
    Case("resume-state-not-json", RESUME, [CKPT, "train_state.json", "unreadable"], output="run",
         tamper=_add("train_state.json", "{")),
    Case("resume-changed-learning-rate", [*RESUME, "--learning_rate", "0.001"],
         ["--learning_rate: 0.0001 -> 0.001", "--allow_config_change"], output="run"),
    Case("resume-changed-model", [*RESUME, "--model_overrides", '{"hidden_size": 32, "depth": 1, "num_heads": 2}'],
         ["--model_overrides: {", "'depth': 2", "'depth': 1"], output="run"),
    Case("resume-changed-seed", [*RESUME, "--seed", "1"], ["--seed: 0 -> 1"], output="run"),
    Case("resume-changed-batch", [*RESUME, "--global_batch_size", "4"], ["--global_batch_size: 2 -> 4"], output="run"),
    Case("resume-changed-data", [*RESUME, "--no-random_flip"], ["--random_flip: True -> False"], output="run"),
    Case("resume-changed-objective", [*RESUME, "--path_type", "gvp"], ["--path_type: 'linear' -> 'gvp'"],
         output="run"),
    # ---- LoRA flags on their own (issue 13)
    Case("lora-rank-zero", [*LORA, "--lora_rank", "0"], ["--lora_rank", ">= 1", "got 0"]),
    Case("lora-rank-negative", [*LORA, "--lora_rank", "-4"], ["--lora_rank", "got -4"]),
    Case("lora-rank-not-integer", [*LORA, "--lora_rank", "2.5"], ["--lora_rank", "integer", "'2.5'"]),
    Case("lora-alpha-zero", [*LORA, "--lora_alpha", "0"], ["--lora_alpha", "> 0", "got 0.0"]),
    Case("lora-alpha-negative", [*LORA, "--lora_alpha", "-8"], ["--lora_alpha", "got -8.0"]),
    Case("lora-alpha-nan", [*LORA, "--lora_alpha", "nan"], ["--lora_alpha", "finite", "'nan'"]),
    Case("lora-alpha-inf", [*LORA, "--lora_alpha", "inf"], ["--lora_alpha", "finite", "'inf'"]),
    Case("lora-dropout-one", [*LORA, "--lora_dropout", "1"], ["--lora_dropout", "< 1", "got 1.0"]),
    Case("lora-dropout-negative", [*LORA, "--lora_dropout", "-0.1"], ["--lora_dropout", ">= 0", "got -0.1"]),
    Case("lora-targets-empty", [*LORA, "--lora_target_modules", ""], ["--lora_target_modules", "non-empty names"]),
    Case("lora-target-unknown", [*LORA, "--lora_target_modules", "to_qkv,qkv_proj"],
         ["--lora_target_modules", "'qkv_proj'", "valid names", "attn.to_qkv", "ff.linear_1"]),
    Case("lora-target-not-linear", [*LORA, "--lora_target_modules", "attn,ff"],
         ["--lora_target_modules", "not Linear layers", "attn (SiTAttention)", "ff (FeedForward)"]),
    Case("lora-target-conv", [*LORA, "--lora_target_modules", "patch_embed.proj"],
         ["--lora_target_modules", "patch_embed.proj (Conv2d)"]),
    Case("lora-ema-keeps-the-start", [*LORA, "--ema_decay", "0.9999"],
         ["--ema_decay 0.9999", "--max_train_steps 2", "100%", "--ema_decay <= 0.3162"]),
    # ---- LoRA flags together with others that cannot work
    Case("lora-without-pretrained", ["--lora_rank", "4", "--ema_decay", "0"],
         ["--lora_rank 4", "--pretrained_model_name_or_path"]),
    Case("lora-alpha-without-rank", ["--lora_alpha", "8"], ["--lora_alpha", "without --lora_rank"]),
    Case("lora-dropout-without-rank", ["--lora_dropout", "0.1"], ["--lora_dropout", "without --lora_rank"]),
    Case("lora-targets-without-rank", ["--lora_target_modules", "to_qkv"],
         ["--lora_target_modules", "without --lora_rank"]),
    Case("lora-model-differs", [*LORA, "--model", "SiT-B/2", "--model_overrides", "{}"],
         ["--model SiT-B/2", "not the architecture", "depth 12 vs 2", "pass --model SiT-S/2 --model_overrides"]),
    Case("lora-model-overrides-differ", [*LORA, "--model_overrides", '{"hidden_size": 64, "depth": 2, "num_heads": 2}'],
         ["hidden_size 64 vs 32", "\"hidden_size\": 32"]),
    Case("lora-num-classes-differ", [*LORA, "--num_classes", "3"], ["--num_classes 3", "has 2 classes"]),
    Case("lora-learn-sigma-differs", [*LORA, "--no-learn_sigma"], ["--learn_sigma False", "--learn_sigma"]),
    Case("lora-resolution-differs", [*LORA, "--resolution", "16"],
         ["takes 3-channel 8 x 8 inputs", "16 x 16", "--resolution 16"]),
    Case("lora-channels-differ", [*LORA, "--vae", "{world}/vae", "--resolution", "16"],
         ["takes 3-channel 8 x 8 inputs", "4-channel 8 x 8", "--vae"]),
    Case("lora-objective-differs", [*LORA, "--path_type", "gvp"], ["--path_type gvp", "trained for path_type 'linear'"]),
    Case("lora-no-null-class", [*LORA, "--pretrained_model_name_or_path", "{world}/pretrained-no-null"],
         ["--class_dropout_prob 0.1", "null class", "--class_dropout_prob 0"]),
    # ---- the pretrained model itself
    Case("pretrained-missing", ["--pretrained_model_name_or_path", "{tmp}/no-model"],
         ["--pretrained_model_name_or_path", "no-model", "not an existing folder"]),
    Case("pretrained-not-a-pipeline", ["--pretrained_model_name_or_path", "{world}/images"],
         ["--pretrained_model_name_or_path", "images", "model_index.json"]),
    Case("pretrained-empty", ["--pretrained_model_name_or_path", " "], ["--pretrained_model_name_or_path", "empty"]),
    Case("pretrained-pickle-weights", [*LORA, "--pretrained_model_name_or_path", "{world}/pretrained-pickle"],
         ["pretrained-pickle", "no .safetensors weights", "diffusion_pytorch_model.bin", "never loaded"]),
    Case("pretrained-not-sit", [*LORA, "--pretrained_model_name_or_path", "{world}/not-sit"],
         ["not-sit", "'DiTModel'", "not a SiTTransformer2DModel"]),
    Case("pretrained-full-fine-tune-model-differs", ["--pretrained_model_name_or_path", "{world}/pretrained",
                                                     "--model", "SiT-S/4"], ["--model SiT-S/4", "patch_size 4 vs 2"]),
    # ---- resuming a LoRA run
    Case("lora-resume-as-full-run", [*RESUME, "--allow_config_change"],
         ["holds LoRA adapters of rank 4", "trains all the model's weights", "cannot be resumed"], output="lora-run"),
    Case("lora-resume-other-rank", [*LORA, *RESUME, "--lora_rank", "8", "--allow_config_change"],
         ["holds LoRA adapters of rank 4", "rank 8", "not even with --allow_config_change"], output="lora-run"),
    Case("lora-resume-changed-rank", [*LORA, *RESUME, "--lora_rank", "8"], ["--lora_rank: 4 -> 8"], output="lora-run"),
    Case("lora-resume-other-base", [*LORA, *RESUME], [CKPT, "trained on base weights ffffffff", "--allow_config_change"],
         output="lora-run", tamper=_edit_state(base_model="f" * 64)),
]


def _snapshot(root: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every path under ``root``: file bytes and mtime (``None`` for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
            for p in sorted(root.rglob("*"))}


class DataTouched(Exception):
    """Raised by the tripwires: the run read data although the input was bad (not a user error)."""


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 35 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_2_before_reading_data(
    case: Case, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    if case.output in ("run", "lora-run"):
        shutil.copytree(world / case.output, out)
    elif case.output == "file":
        out.write_text("not a folder")
    if case.tamper is not None:
        case.tamper(out / "checkpoints" / CKPT, tmp_path)
    argv = [a.replace("{world}", str(world)).replace("{tmp}", str(tmp_path)) for a in case.argv]

    def tripwire(*args: Any, **kwargs: Any) -> None:
        raise DataTouched("the data was read before the bad input was reported")

    for name in ("build_data", "load_image_dataset", "LatentDataset", "check_image_dataset"):
        monkeypatch.setattr(ts, name, tripwire)
    before = _snapshot(tmp_path)
    status = ts.main([*base_argv(world), "--output_dir", str(out), *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("train_sit.py:")]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("train_sit.py: error: ") and "Traceback" not in err, err
    for text in case.expect:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert _snapshot(tmp_path) == before  # nothing written, changed or created (the pickle payload included)
    assert not (tmp_path / "pwned").exists() and not (world / "pwned-by-pretrained").exists()


def test_the_base_command_line_is_valid(world: Path, tmp_path: Path) -> None:
    """The control: the base run (made by the fixture) resumes, so each case fails for its own change."""
    out = tmp_path / "run"
    shutil.copytree(world / "run", out)
    assert ts.main([*base_argv(world), "--output_dir", str(out), *RESUME, "--max_train_steps", "3",
                    "--log_every", "1"]) == 0
    assert (out / "checkpoints" / "checkpoint-0000003" / "train_state.json").is_file()


def test_the_lora_command_line_is_valid(world: Path, tmp_path: Path) -> None:
    """The LoRA control: the 2-step LoRA run (made by the fixture) resumes, so each LoRA case fails for its change."""
    out = tmp_path / "lora-run"
    shutil.copytree(world / "lora-run", out)
    lora = [a.replace("{world}", str(world)) for a in LORA]
    assert ts.main([*base_argv(world), *lora, "--output_dir", str(out), *RESUME, "--max_train_steps", "3"]) == 0
    assert (out / "checkpoints" / "checkpoint-0000003" / "train_state.json").is_file()


def test_an_uncached_hub_vae_offline_says_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hub id that is not in the cache under HF_HUB_OFFLINE=1: the one-line error names offline mode (not only
    diffusers' "does not appear to have a file named config.json", which reads like a broken repo)."""
    import huggingface_hub.constants as hf_constants

    from training.config import ConfigError

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match=r"--vae 'someone/no-such-vae' could not be loaded \(HF_HUB_OFFLINE=1 and it "
                                          r"is not in the local Hub cache"):
        ts.load_vae("someone/no-such-vae", None, torch.device("cpu"))
    with pytest.raises(ConfigError) as local:  # a local folder that is not a VAE: no offline hint
        ts.load_vae(str(tmp_path), None, torch.device("cpu"))
    assert "HF_HUB_OFFLINE" not in str(local.value)
