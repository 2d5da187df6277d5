"""GPU checks of ``training/train_sit.py`` (skipped without CUDA): bf16 training and FSDP through accelerate.

Run on a GPU machine with ``python -m pytest tests/test_training_gpu.py``. The data is a plain list of
``{"image", "label"}`` rows (any indexable of rows works in process), so ``datasets`` is not needed here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from test_training import assets, load_checkpoint, tiny  # noqa: E402, F401  (assets is a fixture)


def _rows(root: Path) -> list[dict[str, object]]:
    from PIL import Image

    files = sorted((root / "images").rglob("*.png"))
    return [{"image": Image.open(f).convert("RGB"), "label": int(f.parent.name == "red")} for f in files]


def test_bf16_training_on_gpu(assets: Path, tmp_path: Path) -> None:  # noqa: F811
    from training.train_sit import train

    train(tiny(assets, tmp_path / "bf16", mixed_precision="bf16", max_train_steps=4, save_pipeline=True,
               train_data_dir=None), dataset=_rows(assets))
    state = load_checkpoint(tmp_path / "bf16" / "checkpoints" / "checkpoint-0000004")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(v).all() for v in state["ema"].values())
    assert (tmp_path / "bf16" / "pipeline" / "model_index.json").is_file()


def test_fsdp_launch_trains_and_saves(assets: Path, tmp_path: Path) -> None:  # noqa: F811
    from training.precompute_latents import PrecomputeConfig, precompute

    latents = tmp_path / "latents"
    precompute(PrecomputeConfig(output_dir=str(latents), num_classes=2, resolution=16, vae=str(assets / "vae"),
                                dataloader_num_workers=0), dataset=_rows(assets))
    cfg = tiny(assets, tmp_path / "fsdp", mixed_precision="bf16", max_train_steps=4, save_pipeline=True,
               train_data_dir=None, latents_dir=str(latents),
               model_overrides={"hidden_size": 64, "depth": 2, "num_heads": 2})
    cfg_file = tmp_path / "fsdp.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "training" / "configs" / "accelerate_fsdp.yaml"), "--num_processes", "1",
           str(REPO / "training" / "train_sit.py"), "--config", str(cfg_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=dict(os.environ), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "fsdp" / "checkpoints" / "checkpoint-0000004").is_dir()
    from sit_diffusers.pipeline_sit import SiTPipeline

    pipe = SiTPipeline.from_pretrained(str(tmp_path / "fsdp" / "pipeline"))
    ema = {k: v for k, v in pipe.transformer.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in ema.values())
    out = pipe(class_labels=[0, 1], num_inference_steps=2, output_type="np").images
    assert out.shape == (2, 16, 16, 3)
