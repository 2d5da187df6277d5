"""The torch-only path (``network.SiTNetwork``, ``light.LightPipeline``): the same numbers and errors as the
diffusers classes, no diffusers import, and the folders it leaves to the full pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_sit

import sit_diffusers
from sit_diffusers.light import LightPipeline, NotLightError, to_images
from sit_diffusers.modeling_sit import SiTTransformer2DModel
from sit_diffusers.network import SiTConfig, SiTNetwork
from sit_diffusers.pipeline_sit import SiTPipeline
from sit_diffusers.sampling import SamplerCore
from sit_diffusers.validation import InputError

EMBEDDED = sit_diffusers.DEFAULT_MODEL
LABELS = [3, 7, 0]


@pytest.fixture(scope="module")
def light() -> LightPipeline:
    pipe = LightPipeline.from_folder(EMBEDDED)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def full() -> SiTPipeline:
    pipe = SiTPipeline.from_pretrained(EMBEDDED)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gens(n: int = len(LABELS), seed: int = 11) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


# ----------------------------------------------------------------------------- the network


def test_network_equals_the_diffusers_model_bit_for_bit():
    """Embedded weights: same state-dict keys and values, same output to the last bit (CPU, float32), guided
    batch and null class included."""
    network = SiTNetwork.from_folder(EMBEDDED / "transformer")
    model = SiTTransformer2DModel.from_pretrained(EMBEDDED / "transformer", low_cpu_mem_usage=False)
    ours, theirs = network.state_dict(), model.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert network.dtype == model.dtype == torch.float32 and not network.training
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 28, 28, generator=g)  # (N, C, S, S)
    t = torch.rand(6, generator=g)  # (N,)
    y = torch.tensor([0, 3, 9, 10, 10, 5])  # 10: the null class
    with torch.no_grad():
        assert torch.equal(network(x, t, y), model(x, t, y).sample)
        assert torch.equal(network(x, 0.25, y), model(x, 0.25, y).sample)


def test_network_from_a_saved_tiny_model_and_its_checks(tmp_path: Path):
    model = tiny_sit(0.3, sample_size=8, num_classes=3, learn_sigma=True)
    model.save_pretrained(tmp_path)
    network = SiTNetwork.from_folder(tmp_path)
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([0.1, 0.9]), torch.tensor([1, 3])
    with torch.no_grad():
        assert torch.equal(network(x, t, y), model(x, t, y).sample)  # learned-sigma half dropped by both
    for bad, message in ((torch.randn(2, 3, 4, 4), "expected input (N, 3, 8, 8)"),):
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            network(bad, t, y)
    with pytest.raises(InputError, match=r"class_labels must be in \[0, 3\]"):
        network(x, t, torch.tensor([0, 4]))
    with pytest.raises(InputError, match="unknown SiT transformer key"):
        SiTConfig.from_dict({"sample_size": 8, "hiden_size": 16})
    with pytest.raises(InputError, match="not divisible by num_heads"):
        SiTConfig(hidden_size=20, num_heads=3)
    state = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**state, "depth": 2}))
    with pytest.raises(RuntimeError, match="transformer_blocks.1"):  # weights of one block for a config of two
        SiTNetwork.from_folder(tmp_path)


# ----------------------------------------------------------------------------- the pipeline


@pytest.mark.parametrize(
    ("preset", "steps", "guidance"),
    [
        (None, None, None),  # the saved sampler (ode heun), steps and guidance
        ("sde-euler", 6, 2.0),
        ("ode-euler", 5, 1.0),
        ("ode-dopri5", 4, 1.5),
    ],
)
def test_light_pipeline_equals_sitpipeline(light, full, preset, steps, guidance):
    saved = light.scheduler, light.config, full.scheduler, full.config.default_num_inference_steps
    if preset is not None:
        light.set_sampler(preset)
        full.set_sampler(preset)
    try:
        a = light(LABELS, guidance_scale=guidance, num_inference_steps=steps, generator=gens(), output_type="pt")
        b = full(LABELS, guidance_scale=guidance, num_inference_steps=steps, generator=gens(), output_type="pt")
    finally:  # the module's pipelines keep the saved sampler for the other tests
        light.scheduler, light.config, full.scheduler = saved[:3]
        full.register_to_config(default_num_inference_steps=saved[3])
    assert torch.equal(a.images, b.images)
    assert a.nfe == b.nfe and a.class_labels == b.class_labels == LABELS


def test_light_guidance_options_and_pil_equal(light, full):
    kwargs = dict(guidance_scale=3.0, num_inference_steps=3, guidance_channels=1, guidance_interval=(0.2, 0.8))
    a = light(["1", 2], generator=gens(2), output_type="pil", **kwargs)
    b = full(["1", 2], generator=gens(2), output_type="pil", **kwargs)
    assert [im.tobytes() for im in a.images] == [im.tobytes() for im in b.images]
    assert [im.mode for im in a.images] == ["L", "L"]


BAD_CALLS = [
    ({"class_labels": [3, 11]}, "class"),
    ({"class_labels": "seven"}, "seven"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
    ({"guidance_scale": float("nan")}, "guidance_scale"),
    ({"guidance_channels": 2}, "guidance_channels"),
    ({"guidance_channels": "some"}, "guidance_channels"),
    ({"guidance_interval": (0.9, 0.1)}, "guidance_interval"),
    ({"guidance_interval": (0.0, 1.5)}, "guidance_interval"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 2.5}, "num_inference_steps"),
    ({"generator": [torch.Generator()]}, "generators"),
    ({"generator": "seed"}, "generator"),
    ({"output_type": "jpeg"}, "output_type"),
]


@pytest.mark.parametrize(("kwargs", "named"), BAD_CALLS)
def test_bad_calls_raise_the_pipelines_errors(light, full, kwargs, named):
    """Each bad argument: the same exception type and message as SiTPipeline, naming the argument."""
    call = {"class_labels": [1, 2], **kwargs}
    errors = []
    for pipe in (light, full):
        with pytest.raises(InputError) as info:
            pipe(**call)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1]) and str(errors[0]) == str(errors[1])
    assert named in str(errors[0])


def test_to_images_matches_diffusers_postprocess():
    from diffusers.image_processor import VaeImageProcessor

    x = torch.randn(2, 3, 5, 5) * 1.5  # (N, C, H, W), beyond [-1, 1] on purpose
    proc = VaeImageProcessor(do_resize=False, do_normalize=True)
    for kind in ("pt", "np"):
        ours, theirs = to_images(x, kind), proc.postprocess(x.clamp(-1, 1), output_type=kind)
        assert (torch.equal(ours, theirs) if kind == "pt" else (ours == theirs).all())
    pil = [im.tobytes() for im in proc.postprocess(x.clamp(-1, 1), output_type="pil")]
    assert [im.tobytes() for im in to_images(x, "pil")] == pil
    with pytest.raises(InputError, match="cannot make PIL images from 4 channels"):
        to_images(torch.zeros(1, 4, 2, 2), "pil")


# ----------------------------------------------------------------------------- folders left to the full pipeline


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(EMBEDDED, folder)
    return folder


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f, i: i.update(vae=["diffusers", "AutoencoderKL"]), "VAE"),
        (lambda f, i: i.update(_class_name="DiTPipeline"), "DiTPipeline"),
        (lambda f, i: i.update(transformer=["diffusers", "DiTTransformer2DModel"]), "transformer"),
        (lambda f, i: i.update(text_encoder=["transformers", "CLIPTextModel"]), "text_encoder"),
        (lambda f, i: (f / "transformer" / "diffusion_pytorch_model.safetensors").unlink(), "does not exist"),
    ],
)
def test_folders_the_light_path_leaves_to_the_full_pipeline(tmp_path, change, reason):
    folder = _copy(tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    change(folder, index)
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(NotLightError, match=reason):
        LightPipeline.from_folder(folder)


def test_a_saved_folder_loads_light_with_the_same_config(tmp_path, full):
    folder = tmp_path / "saved"
    full.save_pretrained(folder)  # new-style index: code entries ["sit_transformer", ...]
    pipe = LightPipeline.from_folder(folder)
    assert pipe.config.default_num_inference_steps == full.config.default_num_inference_steps
    assert pipe.default_guidance_scale == full.config.default_guidance_scale == 1.5
    assert pipe.scheduler.config == SamplerCore(full.scheduler.config).config
    assert pipe.id2label == full.id2label


def test_default_guidance_channels_is_read_and_checked_as_the_pipeline_does(tmp_path, full):
    """A saved ``default_guidance_channels`` is taken by the light path (not a fall back to diffusers), used when
    a call gives none, and a bad one is refused with the pipeline's message."""
    folder = _copy(tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "default_guidance_channels": 1}))
    pipe = LightPipeline.from_folder(folder)
    assert pipe.config.default_guidance_channels == 1
    call = dict(guidance_scale=2.0, num_inference_steps=2, output_type="pt")
    assert torch.equal(pipe([3, 4], generator=gens(2), **call).images,
                       full([3, 4], generator=gens(2), guidance_channels=1, **call).images)
    for bad in (2, "some"):
        (folder / "model_index.json").write_text(json.dumps({**index, "default_guidance_channels": bad}))
        with pytest.raises(InputError, match="default_guidance_channels: guidance_channels") as light_err:
            LightPipeline.from_folder(folder)
        with pytest.raises(InputError, match="default_guidance_channels: guidance_channels") as full_err:
            SiTPipeline(full.transformer, full.scheduler, default_guidance_channels=bad)
        assert str(light_err.value) == str(full_err.value)


# ----------------------------------------------------------------------------- no diffusers on the light path


def test_sit_generate_on_the_embedded_model_imports_no_diffusers(tmp_path):
    """``--help`` and the default job run without diffusers, transformers, accelerate or the Hub client."""
    code = (
        "import contextlib, io, sys\n"
        "from sit_diffusers.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        f"status = main(['--steps', '1', '--quiet', '--out', {str(tmp_path / 'g.png')!r}])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers', 'accelerate',"
        " 'huggingface_hub', 'torchdiffeq'))\n"
        "print(status, heavy)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
    assert (tmp_path / "g.png").is_file()
