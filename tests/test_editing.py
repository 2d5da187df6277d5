"""SDEdit (``pipe(..., image=..., strength=...)``) and exact ODE inversion (``pipe.invert``) on tiny models."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_sit
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor

from sit_diffusers.pipeline_sit import SiTInversionOutput, SiTPipeline
from sit_diffusers.scheduling_sit import SiTSampler
from sit_diffusers.validation import InputError

FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
LABELS = [1, 2]


@pytest.fixture()
def pipe() -> SiTPipeline:
    """Tiny pixel-space pipeline: 3 x 8 x 8 images, 10 classes with a null class."""
    transformer = tiny_sit(0.2, sample_size=8, in_channels=3, hidden_size=32, depth=2, num_classes=10)
    pipe = SiTPipeline(transformer, SiTSampler.from_preset("ode-euler"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.5,
    ).eval()


def images(n: int = 2, seed: int = 0, side: int = 8) -> torch.Tensor:
    """``(n, 3, side, side)`` images in [0, 1] with a structure the model can change."""
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def model_calls(pipe: SiTPipeline) -> list[float]:
    calls: list[float] = []
    pipe.transformer.register_forward_pre_hook(lambda m, args: calls.append(float(args[1][0])))
    return calls


# ----------------------------------------------------------------------------------------------------------
# SDEdit
# ----------------------------------------------------------------------------------------------------------

SAMPLERS = ["ode-euler", "ode-heun", "sde-euler", "sde-heun", "ode-dopri5", "flow-euler", "flow-unipc"]


def use(pipe: SiTPipeline, name: str) -> None:
    if name == "flow-euler":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    elif name == "flow-unipc":
        pipe.scheduler = UniPCMultistepScheduler(**FLOW)
    else:
        pipe.set_sampler(name)


@pytest.mark.parametrize("name", SAMPLERS)
def test_strength_one_is_plain_sampling_from_the_same_noise(pipe: SiTPipeline, name: str) -> None:
    use(pipe, name)
    kw = {"num_inference_steps": 4, "guidance_scale": 2.0, "output_type": "latent"}
    plain = pipe(LABELS, generator=g(3), **kw)
    edited = pipe(LABELS, image=images(), strength=1.0, generator=g(3), **kw)
    assert torch.equal(edited.images, plain.images) and edited.nfe == plain.nfe


@pytest.mark.parametrize("preset", ["ode-euler", "ode-heun", "ode-rk4", "sde-euler", "sde-heun"])
def test_fixed_step_sdedit_is_the_diffusers_img2img_loop(pipe: SiTPipeline, preset: str) -> None:
    """strength 0.5 of 6 steps: the step() loop over ``timesteps[k * order:]`` from ``add_noise`` at its first
    time (diffusers' img2img), with the noise and the Brownian draws from one generator, bit for bit."""
    if preset == "ode-rk4":
        pipe.set_sampler(SiTSampler(mode="ode", solver="rk4"))
    else:
        pipe.set_sampler(preset)
    x1 = images() * 2 - 1  # (2, 3, 8, 8) in the model's space
    out = pipe(LABELS, image=x1, image_type="latent", strength=0.5, num_inference_steps=6, generator=g(1),
               guidance_scale=2.0, output_type="latent")
    sampler = pipe.scheduler
    sampler.set_timesteps(6)
    begin = 3 * sampler.order  # floor(6 * 0.5) = 3 steps run, from solver step 3
    sampler.set_begin_index(begin)
    gen = g(1)
    noise = randn_tensor(tuple(x1.shape), generator=gen, dtype=torch.float32)
    x = sampler.add_noise(x1, noise, sampler.timesteps[begin])
    model_fn = pipe.guided_model_fn(torch.tensor(LABELS), 2.0)
    for t in sampler.timesteps[begin:]:
        x_in = sampler.scale_model_input(x, t, generator=gen)
        x = sampler.step(model_fn(x_in, t.expand(2)), t, x, generator=gen).prev_sample
    assert torch.equal(out.images, x)
    assert out.nfe == len(sampler.timesteps) - begin


def test_adaptive_sdedit_integrates_from_one_minus_strength(pipe: SiTPipeline) -> None:
    pipe.set_sampler("ode-dopri5", rtol=1e-7, atol=1e-7)
    calls = model_calls(pipe)
    kw = {"image": images(), "strength": 0.6, "output_type": "latent", "guidance_scale": 2.0}
    adaptive = pipe(LABELS, generator=g(2), **kw).images
    assert min(calls) == pytest.approx(0.4) and max(calls) <= 1.0
    pipe.set_sampler(SiTSampler(mode="ode", solver="rk4"))  # 50 steps: the grid from step 20 starts at 0.4 too
    fixed = pipe(LABELS, num_inference_steps=50, generator=g(2), **kw).images
    assert (adaptive - fixed).abs().max() < 1e-4


@pytest.mark.parametrize("make", [FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler,
                                  lambda: UniPCMultistepScheduler(**FLOW)], ids=["euler", "heun", "unipc"])
def test_flow_scheduler_sdedit_is_the_diffusers_img2img_loop(pipe: SiTPipeline, make) -> None:
    """The scheduler's own img2img: ``timesteps[t_start * order:]``, ``set_begin_index``, noise to that sigma
    (``scale_noise`` / ``add_noise``), step with u = -v at t = 1 - sigma."""
    pipe.scheduler = make()
    x1 = images() * 2 - 1
    out = pipe(LABELS, image=x1, image_type="latent", strength=0.7, num_inference_steps=10, generator=g(4),
               guidance_scale=2.0, output_type="latent")
    sched = make()
    sched.set_timesteps(10)
    begin = (10 - 7) * sched.order
    sched.set_begin_index(begin)
    noise = randn_tensor(tuple(x1.shape), generator=g(4), dtype=torch.float32)
    start = sched.timesteps[begin: begin + 1]
    x = sched.scale_noise(x1, start, noise) if hasattr(sched, "scale_noise") else sched.add_noise(x1, noise, start)
    model_fn = pipe.guided_model_fn(torch.tensor(LABELS), 2.0)
    for i in range(begin, len(sched.timesteps)):
        x = sched.step(-model_fn(x, (1 - sched.sigmas[i]).expand(2)), sched.timesteps[i], x).prev_sample
    torch.testing.assert_close(out.images, x, rtol=0, atol=1e-5)  # noise mixed as 1 - (1 - sigma) vs sigma
    assert out.nfe == len(sched.timesteps) - begin


def test_sdedit_callbacks_count_the_steps_that_run(pipe: SiTPipeline) -> None:
    pipe.set_sampler("ode-heun")
    seen = []

    def callback(p, step, t, tensors):
        seen.append((step, round(t, 6), p.num_timesteps))
        return None

    out = pipe(LABELS, image=images(), strength=0.5, num_inference_steps=4, callback_on_step_end=callback,
               output_type="latent")
    assert seen == [(0, 0.75, 2), (1, 1.0, 2)] and out.nfe == 4


def test_image_formats_agree_and_the_vae_encodes_them() -> None:
    """PIL, numpy (channels last) and torch (channels first) give the same latents; with a VAE they are the mean
    of its latent distribution times the scaling factor, and ``image_type="latent"`` takes them as they are."""
    transformer = tiny_sit(0.2, sample_size=8, in_channels=4, hidden_size=32, depth=2, num_classes=10)
    pipe = SiTPipeline(transformer, SiTSampler.from_preset("ode-euler"), vae=tiny_vae())
    pipe.set_progress_bar_config(disable=True)
    assert pipe.image_size == 16
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    as_pil = [PIL.Image.fromarray(p) for p in pixels]
    as_np = pixels.astype(np.float32) / 255
    as_pt = torch.from_numpy(as_np).permute(0, 3, 1, 2)
    z = [pipe.prepare_image(x) for x in (as_pil, as_np, as_pt)]
    assert z[0].shape == (2, 4, 8, 8) and torch.equal(z[0], z[1]) and torch.equal(z[0], z[2])
    expected = pipe.vae.encode(as_pt * 2 - 1).latent_dist.mean * 0.5
    torch.testing.assert_close(z[0], expected)
    kw = {"strength": 0.5, "num_inference_steps": 4, "generator": g(0), "output_type": "latent"}
    a = pipe(LABELS, image=as_pil, **kw).images
    b = pipe(LABELS, image=z[0], image_type="latent", **{**kw, "generator": g(0)}).images
    assert torch.equal(a, b)
    one = pipe(LABELS, image=as_pil[0], **{**kw, "generator": g(0)}).images  # one image for every label
    assert one.shape == (2, 4, 8, 8)


# ----------------------------------------------------------------------------------------------------------
# inversion
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_dopri5_inversion_round_trip_returns_the_input(pipe: SiTPipeline, scale: float) -> None:
    """data -> noise (reverse ODE) -> data (forward ODE), dopri5 at rtol = atol = 1e-7, guided or not.
    Measured max abs error 3.5e-5 (scale 1) and 3.2e-5 (scale 2), with noise latents of size up to 7 from this
    tiny random model: float32 round-off (at the preset's rtol 1e-3: 1.4e-2 and 6.4e-3)."""
    pipe.set_sampler("ode-dopri5", rtol=1e-7, atol=1e-7)
    x1 = images(2, seed=5)
    inv = pipe.invert(x1, LABELS, guidance_scale=scale, num_inference_steps=4)
    assert isinstance(inv, SiTInversionOutput) and inv.latents.shape == (2, 3, 8, 8) and inv.nfe > 0
    assert (inv.latents - (x1 * 2 - 1)).abs().max() > 0.5  # it went somewhere
    back = pipe(LABELS, latents=inv.latents, guidance_scale=scale, num_inference_steps=4, output_type="latent")
    err = (back.images - (x1 * 2 - 1)).abs().max().item()
    assert err < 1e-4, err


def test_heun_inversion_round_trip_error_falls_at_second_order(pipe: SiTPipeline) -> None:
    pipe.set_sampler("ode-heun")
    x1 = images(2, seed=6)
    errs = []
    for n in (10, 20, 40):
        noise, nfe = pipe.invert(x1, LABELS, guidance_scale=2.0, num_inference_steps=n, return_dict=False)
        assert nfe == 2 * n
        back = pipe(LABELS, latents=noise, guidance_scale=2.0, num_inference_steps=n, output_type="pt").images
        errs.append((back - x1).abs().max().item())
    rates = [math.log2(a / b) for a, b in zip(errs, errs[1:], strict=False)]
    assert all(r > 1.6 for r in rates), (errs, rates)


def test_invert_broadcasts_labels_and_images(pipe: SiTPipeline) -> None:
    pipe.set_sampler("ode-heun")
    many = pipe.invert(images(3), 4, num_inference_steps=2)
    assert many.latents.shape == (3, 3, 8, 8) and many.class_labels == [4, 4, 4]
    one = pipe.invert(images(1), [4, 5], num_inference_steps=2)
    assert one.latents.shape == (2, 3, 8, 8) and one.class_labels == [4, 5]
    torch.testing.assert_close(many.latents[0], pipe.invert(images(3)[:1], 4, num_inference_steps=2).latents[0])


# ----------------------------------------------------------------------------------------------------------
# refusals (a table of bad inputs: InputError naming the problem, the transformer never runs)
# ----------------------------------------------------------------------------------------------------------

BAD_CALLS = [
    ("strength-zero", {"image": images(), "strength": 0.0}, "strength must be > 0.0, got 0.0"),
    ("strength-negative", {"image": images(), "strength": -0.2}, "strength must be > 0.0"),
    ("strength-above-one", {"image": images(), "strength": 1.5}, "strength must be <= 1.0, got 1.5"),
    ("strength-nan", {"image": images(), "strength": float("nan")}, "strength must be finite"),
    ("strength-string", {"image": images(), "strength": "0.5"}, "strength must be a real number, got '0.5'"),
    ("strength-bool", {"image": images(), "strength": True}, "strength must be a real number, got True"),
    ("strength-without-image", {"strength": 0.5}, "strength=0.5 needs an image"),
    ("strength-too-small", {"image": images(), "strength": 0.1}, r"strength=0.1 with num_inference_steps=4 leaves no"),
    ("image-type-without-image", {"image_type": "latent"}, "image_type='latent' describes an image"),
    ("image-type-unknown", {"image": images(), "image_type": "png"}, "unknown image_type 'png'"),
    ("image-range", {"image": images() * 2 - 1}, r"image values must be in \[0, 1\], got \[-"),
    ("image-nan", {"image": images().index_fill(3, torch.tensor([0]), float("nan"))}, "non-finite"),
    ("image-size", {"image": images(side=16)}, "has 3 channel\\(s\\) of 16 x 16; the model edits 3-channel 8 x 8"),
    ("image-channels", {"image": torch.rand(2, 1, 8, 8)}, "has 1 channel\\(s\\)"),
    ("image-uint8", {"image": (images() * 255).to(torch.uint8)}, "dtype torch.uint8.*divide by 255"),
    ("image-np-uint8", {"image": np.zeros((8, 8, 3), dtype=np.uint8)}, "dtype uint8.*divide by 255"),
    ("image-np-channels-first", {"image": np.zeros((2, 3, 8, 8), dtype=np.float32)}, "channels last"),
    ("image-ndim", {"image": torch.rand(1, 2, 3, 8, 8)}, r"has shape \(1, 2, 3, 8, 8\)"),
    ("image-type", {"image": "cat.png"}, "image must be a PIL image.*got str"),
    ("image-empty-list", {"image": []}, "image must be a PIL image.*got list"),
    ("pil-size", {"image": PIL.Image.new("RGB", (9, 8))}, r"image\[0\] is 9 x 8; the model edits 8 x 8"),
    ("image-count", {"image": images(3)}, "got 3 images in image for 2 class labels"),
    ("latent-shape", {"image": torch.zeros(2, 4, 8, 8), "image_type": "latent"}, r"latents have shape \(2, 4, 8, 8\)"),
    ("latent-int", {"image": torch.zeros(2, 3, 8, 8, dtype=torch.long), "image_type": "latent"}, "float tensor"),
    ("latent-inf", {"image": torch.full((2, 3, 8, 8), float("inf")), "image_type": "latent"}, "non-finite"),
]


@pytest.mark.parametrize(("kwargs", "message"), [b[1:] for b in BAD_CALLS], ids=[b[0] for b in BAD_CALLS])
def test_bad_edit_inputs_are_refused_before_any_work(pipe: SiTPipeline, kwargs: dict, message: str) -> None:
    calls = model_calls(pipe)
    with pytest.raises(InputError, match=message):
        pipe(LABELS, num_inference_steps=4, output_type="latent", **kwargs)
    assert calls == []


BAD_INVERSIONS = [
    ("sde-sampler", "sde-euler", {}, "invert needs an ODE SiTSampler.*a SDE SiTSampler"),
    ("flow-scheduler", "flow", {}, "invert needs an ODE SiTSampler.*FlowMatchEulerDiscreteScheduler"),
    ("label-count", "ode-heun", {"class_labels": [1, 2, 3]}, "got 2 images in image for 3 class labels"),
    ("image-count", "ode-heun", {"class_labels": [1, 2], "image": images(3)}, "got 2 class labels for 3 images"),
    ("bad-label", "ode-heun", {"class_labels": [10]}, "out of range"),
    ("image-range", "ode-heun", {"image": images() + 1}, r"values must be in \[0, 1\]"),
    ("image-type", "ode-heun", {"image": [1, 2]}, "image must be a PIL image"),
    ("guidance", "ode-heun", {"guidance_scale": -1.0}, "guidance_scale must be >= 0.0"),
    ("steps", "ode-heun", {"num_inference_steps": 0}, "num_inference_steps must be >= 1"),
    ("return-dict", "ode-heun", {"return_dict": "yes"}, "return_dict must be True or False"),
]


@pytest.mark.parametrize(("sampler", "kwargs", "message"), [b[1:] for b in BAD_INVERSIONS],
                         ids=[b[0] for b in BAD_INVERSIONS])
def test_bad_inversions_are_refused_before_any_work(pipe: SiTPipeline, sampler: str, kwargs: dict, message: str):
    if sampler == "flow":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    else:
        pipe.set_sampler(sampler)
    calls = model_calls(pipe)
    with pytest.raises(InputError, match=message):
        pipe.invert(**{"image": images(), "class_labels": LABELS, "num_inference_steps": 2, **kwargs})
    assert calls == []


# ----------------------------------------------------------------------------------------------------------
# the benchmark's command line: bad flags end with one line naming them, exit 2, nothing written
# ----------------------------------------------------------------------------------------------------------

BAD_FLAGS = [
    (["--num-inversions", "5"], "--num-inversions must be >= 10, got 5"),
    (["--num-edits", "2000"], "--num-edits must be <= 1000, got 2000"),
    (["--guidance-scale", "inf"], "--guidance-scale must be finite, got inf"),
    (["--edit-guidance", "1.5", "-2"], "--edit-guidance must be >= 0.0, got -2.0"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--device", "cuda:7"], "--device 'cuda:7'"),
    (["--figure", "{tmp}/fig.jpg"], "--figure '{tmp}/fig.jpg' must end in .png"),
    (["--figure", "{tmp}/file.txt/fig.png"], "exists and is not a folder"),
    (["--json", "{tmp}/rows.csv"], "must end in .json"),
    (["--strength", "0.5"], "unrecognized arguments: --strength"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_benchmark_refuses_bad_flags_before_any_work(tmp_path, capsys, argv, message) -> None:
    import sys

    from conftest import REPO_ROOT, assert_refused

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import bench_editing

    (tmp_path / "file.txt").write_text("x")
    err = assert_refused(bench_editing.main, [a.format(tmp=tmp_path) for a in argv], tmp_path, capsys,
                         "benchmarks/bench_editing.py")
    assert message.format(tmp=tmp_path) in err, err
