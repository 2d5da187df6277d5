"""SiTPipeline: parity with the official SiT sampling code, guidance, every solver, save/load, seeds."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import load_official, official_model, tiny_sit
from diffusers import AutoencoderKL

from sit_diffusers.labels import UnknownClassLabelError
from sit_diffusers.modeling_sit import SiTTransformer2DModel
from sit_diffusers.pipeline_sit import SiTPipeline, SiTPipelineOutput
from sit_diffusers.scheduling_sit import SAMPLER_PRESETS, SiTSampler

TOL = 1e-5


# ----------------------------------------------------------------------------- helpers
class ReplayedBrownianSampler(SiTSampler):
    """SiTSampler whose Brownian increments are the recorded draws of the official run, in order."""

    recorded: torch.Tensor
    draws: int = 0

    def brownian_noise(self, shape, generator, device, dtype):  # noqa: D401 - same contract as the parent
        w = self.recorded[self.draws]  # (N, C, H, W)
        assert tuple(w.shape) == tuple(shape)
        self.draws += 1
        return w.to(device=device, dtype=dtype)


@pytest.fixture(scope="module")
def official_pipe() -> SiTPipeline:
    """The official fixture model (10 classes, learn_sigma) through the converter, no VAE."""
    transformer = official_model()
    pipe = SiTPipeline(transformer, SiTSampler.from_preset("ode-euler"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def samplers() -> dict[str, torch.Tensor]:
    return load_official("samplers")


def tiny_transformer(
    sample_size: int = 8, in_channels: int = 4, num_classes: int = 10
) -> SiTTransformer2DModel:
    return tiny_sit(
        0.2, sample_size=sample_size, in_channels=in_channels, hidden_size=32, depth=2, num_classes=num_classes
    )


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.5,
    )
    return vae.eval()


NAMES = {
    i: name
    for i, name in enumerate(["zero, nought", "one", "two", "three", "four", "five", "six"] + ["x"] * 3)
}
NAMES[7], NAMES[8], NAMES[9] = "seven", "eight", "nine, niner"


@pytest.fixture()
def tiny_pipe() -> SiTPipeline:
    pipe = SiTPipeline(
        tiny_transformer(), SiTSampler.from_preset("ode-euler"), vae=tiny_vae(), id2label=NAMES
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# ----------------------------------------------------------------------------- official parity
def test_ode_euler_reproduces_official(official_pipe: SiTPipeline, samplers: dict) -> None:
    official_pipe.set_sampler("ode-euler")
    # official num_steps=10 grid points = 9 Euler steps = 9 model calls
    out = official_pipe(
        samplers["y"].long(), num_inference_steps=9, latents=samplers["z"], output_type="latent"
    )
    ref = samplers["ode.euler.Linear.velocity.final"]
    assert out.nfe == 9
    assert (out.images - ref).abs().max().item() <= TOL
    assert (out.images - samplers["z"]).abs().max().item() > 0.1  # it moved


def test_sde_euler_reproduces_official_with_replayed_noise(
    official_pipe: SiTPipeline, samplers: dict
) -> None:
    sampler = ReplayedBrownianSampler.from_preset("sde-euler")
    sampler.recorded = samplers["sde.euler.Linear.velocity.noise"]  # (9, N, C, H, W)
    official_pipe.set_sampler(sampler)
    # official num_steps=10: 9 Euler-Maruyama steps + the "Mean" last step (0.04)
    out = official_pipe(
        samplers["y"].long(), num_inference_steps=10, latents=samplers["z"], output_type="latent"
    )
    assert sampler.draws == 9
    assert out.nfe == 10  # one network call per step (the official code makes two per step)
    assert (out.images - samplers["sde.euler.Linear.velocity.final"]).abs().max().item() <= TOL


def test_three_channel_guidance_reproduces_forward_with_cfg(official_pipe: SiTPipeline) -> None:
    fwd = load_official("forward")
    n = fwd["x"].shape[0]
    y_cond = fwd["y_cfg"][:n].long()
    assert torch.equal(fwd["y_cfg"][n:].long(), torch.full((n,), 10))  # the null class is num_classes
    model_fn = official_pipe.guided_model_fn(y_cond, guidance_scale=4.0, guidance_channels=3)
    guided = model_fn(fwd["x_cfg"][:n], fwd["t_cfg"][:n])
    assert (guided - fwd["out_cfg"][:n]).abs().max().item() <= TOL
    # channels >= 3 keep the conditional prediction, channels < 3 differ from it
    cond = fwd["out_cfg_raw"][:n]
    assert torch.allclose(guided[:, 3:], cond[:, 3:], atol=TOL)
    assert (guided[:, :3] - cond[:, :3]).abs().max() > 1e-2


def test_guided_ode_sample_reproduces_official(official_pipe: SiTPipeline, samplers: dict) -> None:
    official_pipe.set_sampler("ode-euler")
    out = official_pipe(
        samplers["y"].long(),
        guidance_scale=4.0,
        guidance_channels=3,
        num_inference_steps=9,
        latents=samplers["z"],
        output_type="latent",
    )
    assert out.nfe == 9  # a guided (cond + null) batch counts as one evaluation
    assert (out.images - samplers["ode_cfg.euler.Linear.velocity.final"][:4]).abs().max().item() <= TOL


def test_default_guidance_channels_is_saved_and_used_when_none_is_given(
    official_pipe: SiTPipeline, samplers: dict, tmp_path
) -> None:
    """``default_guidance_channels=3`` (what converted official checkpoints save) makes a call without
    ``guidance_channels`` the official 3-channel guidance; an explicit value still wins; it survives a save."""
    from sit_diffusers.validation import InputError

    official_pipe.set_sampler("ode-euler")
    call = dict(guidance_scale=4.0, num_inference_steps=9, latents=samplers["z"], output_type="latent")
    y = samplers["y"].long()
    assert official_pipe.default_guidance_channels == "all"  # built without one
    every = official_pipe(y, **call).images
    three = SiTPipeline(official_pipe.transformer, official_pipe.scheduler, default_guidance_channels=3)
    assert three.default_guidance_channels == 3
    guided = three(y, **call).images
    assert (guided - samplers["ode_cfg.euler.Linear.velocity.final"][:4]).abs().max().item() <= TOL
    assert torch.equal(three(y, guidance_channels="all", **call).images, every)
    assert not torch.allclose(guided, every)
    three.save_pretrained(tmp_path / "three")
    assert SiTPipeline.from_pretrained(tmp_path / "three").default_guidance_channels == 3
    for bad in (5, 0, "some", 2.5):
        with pytest.raises(InputError, match="default_guidance_channels: guidance_channels"):
            SiTPipeline(official_pipe.transformer, official_pipe.scheduler, default_guidance_channels=bad)


# ----------------------------------------------------------------------------- guidance
class CallRecorder:
    """Forward pre-hook that records the batch size and times of every transformer call."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        x, t, y = (
            list(args) + [kwargs.get(k) for k in ("hidden_states", "timestep", "class_labels")][len(args) :]
        )[:3]
        self.calls.append((x.shape[0], t.detach().clone(), y.detach().clone()))


def test_no_null_pass_without_guidance_and_all_channel_formula(tiny_pipe: SiTPipeline) -> None:
    rec = CallRecorder(tiny_pipe.transformer)
    out = tiny_pipe([1, 2], num_inference_steps=3, generator=gens([0, 1]), output_type="latent")
    assert out.nfe == len(rec.calls) == 3 and all(b == 2 for b, _, _ in rec.calls)
    assert all(torch.equal(y, torch.tensor([1, 2])) for _, _, y in rec.calls)
    rec.calls.clear()
    out = tiny_pipe(
        [1, 2], guidance_scale=3.0, num_inference_steps=3, generator=gens([0, 1]), output_type="latent"
    )
    assert out.nfe == len(rec.calls) == 3 and all(b == 4 for b, _, _ in rec.calls)
    assert all(torch.equal(y, torch.tensor([1, 2, 10, 10])) for _, _, y in rec.calls)  # null = num_classes
    rec.handle.remove()

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.3, 0.8])
    y = torch.tensor([4, 5])
    tr = tiny_pipe.transformer
    cond, uncond = tr(x, t, y).sample, tr(x, t, torch.full_like(y, 10)).sample
    guided = tiny_pipe.guided_model_fn(y, guidance_scale=2.5)(x, t)
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=1e-5, atol=1e-5)
    assert (cond - uncond).abs().max() > 1e-2  # the label matters, so the check can fail


def test_guidance_interval_guides_only_inside(tiny_pipe: SiTPipeline) -> None:
    rec = CallRecorder(tiny_pipe.transformer)
    out = tiny_pipe(
        [3], guidance_scale=4.0, guidance_interval=(0.5, 1.0), num_inference_steps=4, output_type="latent"
    )
    rec.handle.remove()
    times = [float(t[0]) for _, t, _ in rec.calls]
    assert times == pytest.approx([0.0, 0.25, 0.5, 0.75])  # ODE Euler grid linspace(0, 1, 5)[:-1]
    assert [b for b, _, _ in rec.calls] == [1, 1, 2, 2] and out.nfe == 4
    # per-sample t: a mixed batch is guided only where t is inside the interval
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.2, 0.7])
    y = torch.tensor([1, 2])
    inside = tiny_pipe.guided_model_fn(y, 4.0, guidance_interval=(0.5, 1.0))(x, t)
    full = tiny_pipe.guided_model_fn(y, 4.0)(x, t)
    plain = tiny_pipe.guided_model_fn(y, 1.0)(x, t)
    torch.testing.assert_close(inside[0], plain[0])
    torch.testing.assert_close(inside[1], full[1])
    with pytest.raises(ValueError, match="guidance_interval"):
        tiny_pipe.guided_model_fn(y, 4.0, guidance_interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="guidance_channels"):
        tiny_pipe.guided_model_fn(y, 4.0, guidance_channels=0)


def test_guidance_needs_a_null_class() -> None:
    model = SiTTransformer2DModel(
        sample_size=4,
        patch_size=2,
        in_channels=3,
        hidden_size=16,
        depth=1,
        num_heads=2,
        num_classes=3,
        class_dropout_prob=0.0,
        learn_sigma=False,
    )
    pipe = SiTPipeline(model, SiTSampler.from_preset("ode-euler"))
    with pytest.raises(ValueError, match="null class"):
        pipe([0], guidance_scale=2.0, num_inference_steps=1)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("preset", sorted(SAMPLER_PRESETS))
def test_every_preset_runs_end_to_end_with_a_vae(tiny_pipe: SiTPipeline, preset: str) -> None:
    tiny_pipe.set_sampler(preset)
    steps = 3
    out = tiny_pipe(
        ["one", 7], guidance_scale=2.0, num_inference_steps=steps, generator=gens([0, 1]), output_type="np"
    )
    assert isinstance(out, SiTPipelineOutput) and out.class_labels == [1, 7]
    assert out.images.shape == (2, 16, 16, 3) and out.images.dtype == np.float32
    assert np.isfinite(out.images).all() and out.images.min() >= 0.0 and out.images.max() <= 1.0
    expected = tiny_pipe.scheduler.num_model_evaluations(steps)
    if expected is None:  # adaptive: the solver chooses (dopri5: 6 evaluations per accepted step + 2)
        assert out.nfe >= 8
    else:
        assert out.nfe == expected


def test_output_types_and_vae_scaling(tiny_pipe: SiTPipeline) -> None:
    kw = {"num_inference_steps": 2, "guidance_scale": 1.0}
    latents = tiny_pipe([0, 9], generator=gens([5, 6]), output_type="latent", **kw).images  # (2, 4, 8, 8)
    assert latents.shape == (2, 4, 8, 8)
    images = tiny_pipe([0, 9], generator=gens([5, 6]), output_type="pt", **kw).images  # (2, 3, 16, 16)
    vae = tiny_pipe.vae
    decoded = vae.decode(latents / vae.config.scaling_factor).sample
    torch.testing.assert_close(images, (decoded.clamp(-1, 1) + 1) / 2)
    pil = tiny_pipe([0, 9], generator=gens([5, 6]), output_type="pil", **kw).images
    assert len(pil) == 2 and all(isinstance(im, PIL.Image.Image) and im.size == (16, 16) for im in pil)
    np.testing.assert_allclose(
        np.asarray(pil[0]) / 255.0, images[0].permute(1, 2, 0).numpy(), atol=1 / 255 + 1e-6
    )
    images_t, nfe = tiny_pipe([0], generator=gens([5]), output_type="pt", return_dict=False, **kw)
    assert nfe == 2 and torch.allclose(images_t, images[:1], atol=1e-6)
    with pytest.raises(ValueError, match="output_type"):
        tiny_pipe([0], output_type="jpeg", **kw)


def test_pixel_space_without_vae_maps_minus_one_one_to_unit_interval() -> None:
    pipe = SiTPipeline(tiny_transformer(in_channels=3), SiTSampler.from_preset("ode-euler"))
    pipe.set_progress_bar_config(disable=True)
    raw = pipe([2], num_inference_steps=2, generator=gens([0]), output_type="latent").images
    img = pipe([2], num_inference_steps=2, generator=gens([0]), output_type="pt").images
    torch.testing.assert_close(img, (raw.clamp(-1, 1) + 1) / 2)
    assert pipe.vae is None and pipe([2], num_inference_steps=1).images[0].size == (8, 8)


@pytest.mark.parametrize("preset", ["ode-euler", "sde-euler"])
def test_batch_equals_members_with_per_sample_generators(tiny_pipe: SiTPipeline, preset: str) -> None:
    tiny_pipe.set_sampler(preset)
    kw = {"num_inference_steps": 3, "guidance_scale": 2.0, "output_type": "latent"}
    batch = tiny_pipe([1, 2, 3], generator=gens([10, 11, 12]), **kw).images
    for i, (label, seed) in enumerate([(1, 10), (2, 11), (3, 12)]):
        alone = tiny_pipe([label], generator=gens([seed]), **kw).images
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-5, atol=1e-5)
    again = tiny_pipe([1, 2, 3], generator=gens([10, 11, 12]), **kw).images
    other = tiny_pipe([1, 2, 3], generator=gens([20, 11, 12]), **kw).images
    assert torch.equal(batch, again)
    assert (other[0] - batch[0]).abs().max() > 1e-3 and torch.equal(other[1:], batch[1:])


def test_sde_noise_depends_on_the_generator(tiny_pipe: SiTPipeline) -> None:
    tiny_pipe.set_sampler("sde-euler")
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = {"num_inference_steps": 3, "latents": x0, "output_type": "latent"}
    a = tiny_pipe([4], generator=gens([1]), **kw).images
    b = tiny_pipe([4], generator=gens([2]), **kw).images
    assert (a - b).abs().max() > 1e-3  # same start, different Brownian path


def test_save_load_round_trip_keeps_outputs_labels_and_sampler(
    tiny_pipe: SiTPipeline, tmp_path: Path
) -> None:
    tiny_pipe.set_sampler("sde-euler", last_step_size=0.05)
    assert tiny_pipe.config.default_num_inference_steps == SAMPLER_PRESETS["sde-euler"]["num_inference_steps"]
    tiny_pipe.register_to_config(default_num_inference_steps=3)  # keep the test fast
    tiny_pipe.save_pretrained(tmp_path)
    loaded = SiTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.id2label == tiny_pipe.id2label == NAMES
    assert loaded.get_label_ids(["niner", "Seven"]) == [9, 7]
    assert loaded.scheduler.config.last_step_size == 0.05 and loaded.config.default_num_inference_steps == 3
    kw = {"class_labels": ["one", 2], "guidance_scale": 1.5, "output_type": "pt"}
    a = tiny_pipe(generator=gens([0, 1]), **kw)
    b = loaded(generator=gens([0, 1]), **kw)
    assert a.nfe == b.nfe == 3
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)


def test_saved_default_guidance_scale_is_used_when_none_is_given(tiny_pipe: SiTPipeline, tmp_path: Path) -> None:
    kw = {"class_labels": [1, 2], "num_inference_steps": 2, "output_type": "pt"}
    unguided = tiny_pipe(generator=gens([0, 1]), **kw)
    assert unguided.nfe == 2  # no default saved: scale 1.0, one pass per evaluation
    tiny_pipe.register_to_config(default_guidance_scale=2.5)
    tiny_pipe.save_pretrained(tmp_path)
    loaded = SiTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_guidance_scale == 2.5
    implicit = loaded(generator=gens([0, 1]), **kw)
    explicit = tiny_pipe(generator=gens([0, 1]), guidance_scale=2.5, **kw)
    torch.testing.assert_close(implicit.images, explicit.images, rtol=0, atol=0)
    assert not torch.equal(implicit.images, unguided.images)


def test_set_sampler_keeps_what_the_model_was_trained_for(tiny_pipe: SiTPipeline) -> None:
    tiny_pipe.scheduler = SiTSampler(path_type="gvp", prediction="noise", mode="ode", solver="euler")
    tiny_pipe.set_sampler("sde-heun")
    cfg = tiny_pipe.scheduler.config
    assert (cfg.path_type, cfg.prediction, cfg.mode, cfg.solver) == ("gvp", "noise", "sde", "heun")
    tiny_pipe.set_sampler("paper-fid", prediction="velocity")  # explicit overrides still win
    assert (tiny_pipe.scheduler.config.path_type, tiny_pipe.scheduler.config.prediction) == (
        "gvp",
        "velocity",
    )


def test_default_id2label_is_imagenet_for_1000_classes() -> None:
    pipe = SiTPipeline(tiny_transformer(sample_size=4, num_classes=1000), SiTSampler.from_preset("ode-euler"))
    assert pipe.id2label[207] == "golden retriever" and pipe.get_label_ids("golden retriever") == [207]
    assert pipe.labels["tench"] == 0
    no_names = SiTPipeline(tiny_transformer(sample_size=4), SiTSampler.from_preset("ode-euler"))
    assert no_names.id2label == {} and no_names.get_label_ids([3, "4"]) == [3, 4]


def test_label_errors_and_bad_arguments(tiny_pipe: SiTPipeline) -> None:
    assert tiny_pipe.get_label_ids("nine, niner") == [9]  # a bare string is one label, not characters
    with pytest.raises(UnknownClassLabelError, match="'niner'"):
        tiny_pipe("ninner", num_inference_steps=1)
    with pytest.raises(UnknownClassLabelError, match="out of range"):
        tiny_pipe([10], num_inference_steps=1)  # 10 is the null class
    with pytest.raises(ValueError, match="generators"):
        tiny_pipe([1, 2], generator=gens([0]) * 3, num_inference_steps=1)
    with pytest.raises(ValueError, match="latents have shape"):
        tiny_pipe([1], latents=torch.zeros(1, 4, 4, 4), num_inference_steps=1)
    with pytest.raises(ValueError, match="unknown sampler preset"):
        tiny_pipe.set_sampler("ode-rk45")


def test_callback_sees_every_step_and_progress_counts_nfe(tiny_pipe: SiTPipeline) -> None:
    seen: list[tuple[int, float, tuple]] = []

    def callback(pipe, step, t, tensors):
        seen.append((step, t, tuple(tensors["latents"].shape)))
        return tensors

    tiny_pipe.set_sampler("ode-heun")
    bar_text = io.StringIO()
    tiny_pipe.set_progress_bar_config(file=bar_text, mininterval=0)
    out = tiny_pipe([1], num_inference_steps=2, callback_on_step_end=callback, output_type="latent")
    assert [(s, round(t, 6)) for s, t, _ in seen] == [(0, 0.5), (1, 1.0)]
    assert all(shape == (1, 4, 8, 8) for _, _, shape in seen) and out.nfe == 4  # Heun: 2 per step
    assert "4/4" in bar_text.getvalue()  # the bar counts transformer evaluations, not steps

    tiny_pipe.set_sampler("ode-dopri5")  # adaptive: no total known in advance, the bar still counts
    bar_text.seek(0)
    bar_text.truncate()
    out = tiny_pipe([1], output_type="latent")
    assert f"{out.nfe}nfe" in bar_text.getvalue().replace(" ", "")


def test_bfloat16_transformer_keeps_a_float32_sampler(tiny_pipe: SiTPipeline) -> None:
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = {"num_inference_steps": 3, "latents": x0, "output_type": "latent", "guidance_scale": 2.0}
    ref = tiny_pipe([1, 2], **kw).images
    tiny_pipe.transformer.to(torch.bfloat16)
    low = tiny_pipe([1, 2], **kw).images
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


# ----------------------------------------------------------------------------- diffusers' callback contract
@pytest.mark.parametrize("preset", ["ode-euler", "ode-heun", "sde-euler", "sde-heun"])
def test_callback_can_replace_latents_and_the_loop_continues_from_them(tiny_pipe: SiTPipeline, preset: str) -> None:
    """Replacing the state after step 1 equals a run whose state after step 1 is that state: the run from
    scratch with the replacement is compared with one that got the same replacement from the sampler."""
    tiny_pipe.set_sampler(preset)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = {"num_inference_steps": 4, "latents": x0, "output_type": "latent", "generator": gens([3])}
    replacement = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    seen = []

    def swap(pipe, step, t, tensors):
        seen.append(step)
        assert pipe.num_timesteps == 4 and pipe.guidance_scale == 1.0
        return {"latents": replacement} if step == 1 else None

    edited = tiny_pipe([1], callback_on_step_end=swap, **kw).images
    plain = tiny_pipe([1], **{**kw, "generator": gens([3])}).images
    assert seen == [0, 1, 2, 3] and not torch.equal(edited, plain)

    # the same continuation by hand: the sampler's own loop, its state replaced after step 1
    sampler = tiny_pipe.scheduler
    model_fn = tiny_pipe.guided_model_fn(torch.tensor([1]))
    by_hand = sampler.sample(model_fn, x0, 4, generator=gens([3]),
                             callback=lambda i, t, x: replacement if i == 1 else None).sample
    # the pipeline drew x0 from nothing (latents given): the Brownian draws follow the same generator
    assert torch.equal(edited, by_hand)


def test_adaptive_solver_refuses_replaced_latents(tiny_pipe: SiTPipeline) -> None:
    tiny_pipe.set_sampler("ode-dopri5")
    with pytest.raises(ValueError, match="adaptive dopri5 solver has finished its solve"):
        tiny_pipe([1], num_inference_steps=3, output_type="latent",
                  callback_on_step_end=lambda p, s, t, d: {"latents": d["latents"] + 1})
    out = tiny_pipe([1], num_inference_steps=3, output_type="latent",
                    callback_on_step_end=lambda p, s, t, d: d)  # returning the same tensors is fine
    assert out.images.shape == (1, 4, 8, 8)


def test_callback_guidance_change_takes_effect_from_the_next_step(tiny_pipe: SiTPipeline) -> None:
    """diffusers' 'stop guidance after k steps' callback: setting pipe._guidance_scale after step 1 gives
    the run that is guided on steps 0-1 only (checked through the NFE of guided vs unguided steps)."""
    tiny_pipe.set_sampler("ode-euler")
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    kw = {"num_inference_steps": 4, "latents": x0, "output_type": "latent"}
    batches = []
    tiny_pipe.transformer.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))

    def stop_guidance(pipe, step, t, tensors):
        if step == 1:
            pipe._guidance_scale = 1.0
        return None

    switched = tiny_pipe([1], guidance_scale=3.0, callback_on_step_end=stop_guidance, **kw).images
    assert batches == [2, 2, 1, 1]  # guided (cond + null) on steps 0 and 1, one conditional pass after
    assert tiny_pipe.guidance_scale == 1.0
    guided = tiny_pipe([1], guidance_scale=3.0, **kw).images
    assert not torch.equal(switched, guided)

    def bad_scale(pipe, step, t, tensors):
        pipe._guidance_scale = float("nan")

    with pytest.raises(ValueError, match="guidance_scale must be finite, got nan"):
        tiny_pipe([1], guidance_scale=3.0, callback_on_step_end=bad_scale, **kw)


@pytest.mark.parametrize(("returned", "message"), [
    ({"latents": torch.zeros(2, 4, 8, 8)}, r"shape \(2, 4, 8, 8\)"),
    ({"latents": torch.full((1, 4, 8, 8), float("nan"))}, "non-finite"),
    ([1, 2], "must return a dict"),
])
def test_bad_callback_returns_are_refused(tiny_pipe: SiTPipeline, returned, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_pipe([1], num_inference_steps=2, output_type="latent", callback_on_step_end=lambda *a: returned)


# ----------------------------------------------------------------------------- diffusers' flow schedulers
def test_a_flow_scheduler_survives_save_and_load(tiny_pipe: SiTPipeline, tmp_path: Path) -> None:
    """A pipeline whose scheduler is a diffusers flow scheduler saves it as diffusers' own class and loads it
    back with its config; the samples are the same (tests/test_flow_schedulers.py has the sampling tests)."""
    from diffusers import UniPCMultistepScheduler

    tiny_pipe.set_sampler(UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                  flow_shift=2.0))
    tiny_pipe.save_pretrained(tmp_path)
    loaded = SiTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler).__name__ == "UniPCMultistepScheduler" and loaded.scheduler.config.flow_shift == 2.0
    kw = {"num_inference_steps": 3, "latents": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
          "output_type": "latent", "guidance_scale": 2.0}
    a, b = tiny_pipe([1], **kw), loaded([1], **kw)
    assert a.nfe == b.nfe == 3 and torch.equal(a.images, b.images)
