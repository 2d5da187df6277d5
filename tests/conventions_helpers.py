"""Tiny components and small tools for ``tests/test_diffusers_conventions.py``.

They play the part of the ``get_dummy_components`` / ``get_init_dict`` / ``get_dummy_inputs`` of diffusers'
test mixins (``tests/models/testing_utils``, ``tests/pipelines/test_pipelines_common.py``,
``tests/schedulers/test_schedulers.py``), sized so that every check runs in milliseconds on a CPU.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from conftest import tiny_sit
from diffusers import AutoencoderKL
from diffusers.utils import logging as diffusers_logging

from sit_diffusers.modeling_sit import SiTTransformer2DModel
from sit_diffusers.scheduling_sit import SiTSampler

# ----------------------------------------------------------------------------- model (DiT's tester config)
#: Constructor arguments of the tiny transformer (DiT's test: sample 8, patch 2, 4 channels, 2 heads).
MODEL_INIT: dict[str, Any] = {
    "sample_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 16, "depth": 2, "num_heads": 2,
    "num_classes": 4, "class_dropout_prob": 0.1, "learn_sigma": True,
}
#: ``forward`` returns the first ``in_channels`` channels (the learned-sigma half is dropped).
MODEL_OUTPUT_SHAPE = (4, 8, 8)


def tiny_model(**overrides: Any) -> SiTTransformer2DModel:
    """The tiny transformer, seed 0, every weight redrawn from N(0, 0.2^2) so that outputs depend on all of
    ``x``, ``t`` and ``y`` (adaLN-Zero's own init gives an all-zero output, which would make every equality
    below hold trivially). In eval mode."""
    return tiny_sit(0.2, **{**MODEL_INIT, **overrides})


def model_inputs(batch: int = 4) -> dict[str, torch.Tensor]:
    """Deterministic forward inputs: every call returns the same tensors (diffusers' contract)."""
    g = torch.Generator().manual_seed(0)
    c, s = MODEL_INIT["in_channels"], MODEL_INIT["sample_size"]
    return {
        "hidden_states": torch.randn(batch, c, s, s, generator=g),  # (N, C, S, S)
        "timestep": torch.rand(batch, generator=g),  # (N,) SiT time in [0, 1]
        "class_labels": torch.randint(0, MODEL_INIT["num_classes"], (batch,), generator=g),  # (N,)
    }


def module_names_inside(model: torch.nn.Module, class_names: list[str]) -> list[str]:
    """Qualified names of the modules of ``model`` whose class is one of ``class_names``."""
    return [name for name, module in model.named_modules() if type(module).__name__ in class_names]


def expected_device(placement: Any) -> str:
    """The device type a parameter placed on ``placement`` (an ``hf_device_map`` value) has after loading."""
    if placement == "disk":
        return "meta"  # offloaded to disk: a meta tensor with a hook that loads it for the forward
    if placement == "cpu":
        return "cpu"
    if isinstance(placement, int):
        return "cuda"
    return torch.device(placement).type


def check_device_map_is_respected(model: torch.nn.Module, device_map: dict[str, Any]) -> None:
    """Every parameter sits where the longest matching ``device_map`` key puts it (diffusers' helper).

    Parameters placed on ``"cpu"`` by an offloading map may also be ``meta`` (accelerate keeps them in its
    weights map and loads them in the hook), as diffusers' own helper allows."""
    for name, param in model.named_parameters():
        keys = [k for k in device_map if k == "" or name == k or name.startswith(k + ".")]
        assert keys, f"{name} is not covered by the device map {device_map}"
        placement = device_map[max(keys, key=len)]
        want = expected_device(placement)
        allowed = {want, "meta"} if placement == "cpu" else {want}
        assert param.device.type in allowed, f"{name} is on {param.device}, the map says {placement}"


# ----------------------------------------------------------------------------- scheduler
def dummy_sample() -> torch.Tensor:
    """SchedulerCommonTest's ``dummy_sample``: ``(4, 3, 8, 8)`` uniform, seeded."""
    return torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def dummy_model(sample: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """SchedulerCommonTest's ``dummy_model``: ``sample * t / (t + 1)`` (t broadcast over the sample)."""
    t = torch.as_tensor(t, dtype=sample.dtype, device=sample.device).reshape(-1, 1, 1, 1)
    return sample * t / (t + 1)


def full_loop(
    sampler: SiTSampler,
    sample: torch.Tensor,
    num_inference_steps: int,
    seed: int = 0,
    start: int = 0,
    begin_index: int | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """diffusers' ``full_loop`` (EulerDiscreteSchedulerTest), written as every diffusers pipeline writes it::

        for t in scheduler.timesteps[start:]:
            sample = scheduler.scale_model_input(sample, t)
            model_output = model(sample, t)
            sample = scheduler.step(model_output, t, sample, generator=generator).prev_sample

    ``begin_index`` calls ``set_begin_index`` first (img2img); without it the sampler finds its place from
    the first timestep it is given."""
    sampler.set_timesteps(num_inference_steps, device=device)
    if begin_index is not None:
        sampler.set_begin_index(begin_index)
    generator = torch.Generator(device).manual_seed(seed)
    sample = sample.to(device)
    for t in sampler.timesteps[start:]:
        sample = sampler.scale_model_input(sample, t, generator=generator)
        model_output = dummy_model(sample, t)
        sample = sampler.step(model_output, t, sample, generator=generator).prev_sample
    return sample


# ----------------------------------------------------------------------------- pipeline (DiT's fast tests)
def tiny_vae() -> AutoencoderKL:
    """A two-level ``AutoencoderKL`` with 4 latent channels: 16 px images <-> 8 x 8 latents."""
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
        sample_size=16, scaling_factor=0.5,
    )
    return vae.eval()


def pipeline_components() -> dict[str, Any]:
    """``get_dummy_components``: a tiny 10-class transformer, the ODE Euler sampler and a tiny VAE."""
    transformer = tiny_sit(0.2, sample_size=8, in_channels=4, hidden_size=16, depth=1, num_heads=2,
                           num_classes=10, learn_sigma=True)
    return {"transformer": transformer, "scheduler": SiTSampler.from_preset("ode-euler"), "vae": tiny_vae()}


def pipeline_inputs(seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """``get_dummy_inputs`` of DiT's fast tests: one class label, a seeded generator, 2 steps, numpy out."""
    return {
        "class_labels": [1],
        "generator": torch.Generator(device).manual_seed(seed),
        "num_inference_steps": 2,
        "output_type": "np",
    }


def to_np(x: Any) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def json_texts(folder: Path) -> dict[str, str]:
    """Every ``*.json`` file under ``folder`` (relative path -> text), each checked to parse."""
    out = {}
    for path in sorted(folder.rglob("*.json")):
        text = path.read_text()
        json.loads(text)
        out[str(path.relative_to(folder))] = text
    return out


@contextmanager
def captured_diffusers_log(name: str, level: int = diffusers_logging.INFO) -> Iterator[io.StringIO]:
    """What the diffusers logger ``name`` writes at ``level`` and above (diffusers' ``CaptureLogger``:
    diffusers loggers do not propagate to the root logger, so pytest's ``caplog`` does not see them)."""
    logger = diffusers_logging.get_logger(name)
    old_level = logger.level
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
