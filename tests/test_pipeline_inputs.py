"""Bad inputs at the Python API's doors: ``SiTPipeline.__call__`` / ``set_sampler``, ``SiTSampler`` and
``SiTTransformer2DModel``. Each case must raise ``InputError`` (a ``ValueError``) whose message names the
bad value, before the transformer runs once; NaN/inf samples raise ``NonFiniteError``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_sit

from sit_diffusers.labels import UnknownClassLabelError
from sit_diffusers.modeling_sit import SiTTransformer2DModel
from sit_diffusers.pipeline_sit import SiTPipeline
from sit_diffusers.scheduling_sit import SiTSampler
from sit_diffusers.validation import InputError, NonFiniteError

NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def pipe() -> SiTPipeline:
    """3 classes (null class 3), 3 channels, 8 x 8 pixels, ODE Euler; counts transformer forwards."""
    pipeline = SiTPipeline(tiny_sit(0.3, sample_size=8, num_classes=3), SiTSampler.from_preset("ode-euler"))
    pipeline.set_progress_bar_config(disable=True)
    pipeline.calls = 0

    def count(*_: object) -> None:
        pipeline.calls += 1

    pipeline.transformer.register_forward_pre_hook(count)
    return pipeline


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# (id, keyword arguments of pipe(...) over the base call, text the message must contain)
CALL_CASES = [
    ("label-unknown-name", {"class_labels": "niner"}, "'niner'"),
    ("label-out-of-range", {"class_labels": 7}, "class id 7"),
    ("label-null-class", {"class_labels": [3]}, "class id 3"),
    ("label-negative", {"class_labels": -1}, "class id -1"),
    ("label-empty-list", {"class_labels": []}, "no class labels"),
    ("label-bool", {"class_labels": True}, "True"),
    ("label-float", {"class_labels": 2.5}, "2.5"),
    ("label-none-in-list", {"class_labels": [0, None]}, "None"),
    ("label-fractional-tensor", {"class_labels": torch.tensor([0.5])}, "0.5"),
    ("label-empty-string", {"class_labels": ""}, "''"),
    ("guidance-nan", {"guidance_scale": NAN}, "nan"),
    ("guidance-inf", {"guidance_scale": INF}, "inf"),
    ("guidance-negative", {"guidance_scale": -1.0}, "-1.0"),
    ("guidance-string", {"guidance_scale": "4"}, "'4'"),
    ("guidance-bool", {"guidance_scale": True}, "True"),
    ("guidance-list", {"guidance_scale": [4.0]}, "[4.0]"),
    ("steps-zero", {"num_inference_steps": 0}, "got 0"),
    ("steps-negative", {"num_inference_steps": -3}, "got -3"),
    ("steps-fractional", {"num_inference_steps": 2.7}, "2.7"),
    ("steps-integral-float", {"num_inference_steps": 3.0}, "3.0"),
    ("steps-string", {"num_inference_steps": "10"}, "'10'"),
    ("steps-bool", {"num_inference_steps": True}, "True"),
    ("steps-nan", {"num_inference_steps": NAN}, "nan"),
    ("generator-string", {"generator": "seed"}, "str"),
    ("generator-int", {"generator": 5}, "int"),
    ("generator-count", {"class_labels": [0, 1], "generator": [gen()]}, "1 generators for 2 images"),
    ("generator-list-mixed", {"class_labels": [0, 1], "generator": [gen(), "x"]}, "str"),
    ("latents-shape", {"latents": torch.zeros(1, 3, 4, 4)}, "(1, 3, 4, 4)"),
    ("latents-batch", {"latents": torch.zeros(2, 3, 8, 8)}, "(2, 3, 8, 8)"),
    ("latents-nan", {"latents": torch.full((1, 3, 8, 8), NAN)}, "latents holds 192 non-finite"),
    ("latents-inf", {"latents": torch.zeros(1, 3, 8, 8).index_fill_(0, torch.tensor([0]), INF)}, "latents holds"),
    ("latents-int", {"latents": torch.zeros(1, 3, 8, 8, dtype=torch.long)}, "torch.int64"),
    ("latents-numpy", {"latents": np.zeros((1, 3, 8, 8), np.float32)}, "ndarray"),
    ("output-type-jpg", {"output_type": "jpg"}, "'jpg'"),
    ("output-type-none", {"output_type": None}, "None"),
    ("output-type-case", {"output_type": "PIL"}, "'PIL'"),
    ("return-dict-string", {"return_dict": "yes"}, "'yes'"),
    ("channels-zero", {"guidance_scale": 2.0, "guidance_channels": 0}, "got 0"),
    ("channels-too-many", {"guidance_scale": 2.0, "guidance_channels": 5}, "got 5"),
    ("channels-string", {"guidance_scale": 2.0, "guidance_channels": "3"}, "'3'"),
    ("channels-float", {"guidance_scale": 2.0, "guidance_channels": 2.5}, "2.5"),
    ("channels-bool", {"guidance_scale": 2.0, "guidance_channels": True}, "True"),
    ("channels-negative", {"guidance_scale": 2.0, "guidance_channels": -1}, "got -1"),
    ("interval-reversed", {"guidance_scale": 2.0, "guidance_interval": (0.8, 0.2)}, "(0.8, 0.2)"),
    ("interval-below-0", {"guidance_scale": 2.0, "guidance_interval": (-0.1, 1.0)}, "-0.1"),
    ("interval-above-1", {"guidance_scale": 2.0, "guidance_interval": (0.0, 1.5)}, "1.5"),
    ("interval-nan", {"guidance_scale": 2.0, "guidance_interval": (NAN, 1.0)}, "nan"),
    ("interval-string", {"guidance_scale": 2.0, "guidance_interval": "01"}, "'01'"),
    ("interval-one-value", {"guidance_scale": 2.0, "guidance_interval": (0.1,)}, "(0.1,)"),
    ("interval-three-values", {"guidance_scale": 2.0, "guidance_interval": (0.0, 0.5, 1.0)}, "(0.0, 0.5, 1.0)"),
    ("callback-not-callable", {"callback_on_step_end": 5}, "int"),
    ("callback-unknown-tensor", {"callback_on_step_end_tensor_inputs": ["noise"]}, "'noise'"),
    ("callback-tensor-string", {"callback_on_step_end_tensor_inputs": "latents"}, "'latents'"),
]


@pytest.mark.parametrize(("kwargs", "message"), [c[1:] for c in CALL_CASES], ids=[c[0] for c in CALL_CASES])
def test_pipeline_call_refuses_bad_input_before_any_work(pipe: SiTPipeline, kwargs: dict, message: str) -> None:
    call = {"class_labels": [1], "num_inference_steps": 2, "output_type": "pt", **kwargs}
    before = pipe.calls
    with pytest.raises(InputError) as info:
        pipe(**call)
    assert message in str(info.value), str(info.value)
    assert pipe.calls == before, "the transformer ran before the bad argument was refused"


def test_guidance_without_a_null_class_is_refused_first() -> None:
    pipe = SiTPipeline(tiny_sit(0.3, sample_size=8, num_classes=3, class_dropout_prob=0.0),
                       SiTSampler.from_preset("ode-euler"))
    with pytest.raises(InputError, match="guidance_scale=2.0 needs the null class"):
        pipe([0], guidance_scale=2.0, num_inference_steps=1)


def test_sde_with_a_last_step_needs_two_steps(pipe: SiTPipeline) -> None:
    pipe.set_sampler("sde-euler")
    try:
        before = pipe.calls
        with pytest.raises(InputError, match="must be >= 2 for an SDE with a last step.*got 1"):
            pipe([0], num_inference_steps=1)
        assert pipe.calls == before
    finally:
        pipe.set_sampler("ode-euler")


SET_SAMPLER_CASES = [
    ("preset-typo", ("ode-eulr",), {}, "did you mean 'ode-euler'"),
    ("preset-int", (3,), {}, "got int"),
    ("override-unknown", ("ode-euler",), {"stepz": 3}, "'stepz'"),
    ("override-bad-value", ("sde-euler",), {"diffusion_norm": -1.0}, "-1.0"),
]


@pytest.mark.parametrize(("args", "overrides", "message"), [c[1:] for c in SET_SAMPLER_CASES],
                         ids=[c[0] for c in SET_SAMPLER_CASES])
def test_set_sampler_refuses_bad_input_and_keeps_the_sampler(pipe, args, overrides, message) -> None:
    before = pipe.scheduler
    with pytest.raises(InputError) as info:
        pipe.set_sampler(*args, **overrides)
    assert message in str(info.value)
    assert pipe.scheduler is before


SAMPLER_CASES = [
    ("path-typo", {"path_type": "linaer"}, "did you mean 'linear'"),
    ("prediction-unknown", {"prediction": "vel"}, "'vel'"),
    ("mode-typo", {"mode": "odee"}, "'odee'"),
    ("solver-for-mode", {"mode": "sde", "solver": "dopri5"}, "'dopri5'"),
    ("solver-unknown", {"mode": "ode", "solver": "rk45"}, "'rk45'"),
    ("form-typo", {"diffusion_form": "sigmaa"}, "did you mean 'sigma'"),
    ("norm-negative", {"diffusion_norm": -1.0}, "-1.0"),
    ("norm-nan", {"diffusion_norm": NAN}, "nan"),
    ("norm-inf", {"diffusion_norm": INF}, "inf"),
    ("last-step-typo", {"last_step": "meen"}, "'meen'"),
    ("last-step-size-zero", {"last_step_size": 0.0}, "got 0.0"),
    ("last-step-size-one", {"last_step_size": 1.0}, "got 1.0"),
    ("last-step-size-large", {"last_step_size": 1.5}, "got 1.5"),
    ("last-step-size-nan", {"last_step_size": NAN}, "nan"),
    ("sample-eps-negative", {"sample_eps": -0.1}, "-0.1"),
    ("sample-eps-nan", {"sample_eps": NAN}, "nan"),
    ("sample-eps-half", {"sample_eps": 0.5}, "0.5"),
    ("train-eps-negative", {"train_eps": -1e-3}, "-0.001"),
    ("atol-zero", {"mode": "ode", "solver": "dopri5", "atol": 0.0}, "atol must be > 0.0, got 0.0"),
    ("rtol-negative", {"mode": "ode", "solver": "dopri5", "rtol": -1e-3}, "-0.001"),
    ("rtol-nan", {"mode": "ode", "solver": "dopri5", "rtol": NAN}, "nan"),
    ("reverse-string", {"mode": "ode", "reverse": "yes"}, "'yes'"),
    ("reverse-sde", {"mode": "sde", "reverse": True}, "reverse=True"),
    ("vp-sigma-min-zero", {"path_type": "vp", "vp_sigma_min": 0.0}, "got 0.0"),
    ("vp-sigma-max-below-min", {"path_type": "vp", "vp_sigma_min": 5.0, "vp_sigma_max": 1.0}, "1.0"),
    ("eps-and-last-step-leave-nothing", {"mode": "ode", "prediction": "score", "sample_eps": 0.49}, None),
]


@pytest.mark.parametrize(("config", "message"), [c[1:] for c in SAMPLER_CASES], ids=[c[0] for c in SAMPLER_CASES])
def test_sampler_constructor_refuses_bad_config(config: dict, message: str | None) -> None:
    if message is None:  # a valid corner: the interval [0.49, 0.51] is still an interval
        assert SiTSampler(**config).interval == pytest.approx((0.49, 0.51))
        return
    with pytest.raises(InputError) as info:
        SiTSampler(**config)
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize("steps", [0, -1, 2.5, "3", None, True])
def test_set_timesteps_refuses_bad_step_counts(steps) -> None:
    sampler = SiTSampler(mode="ode", solver="euler")
    with pytest.raises(InputError, match="num_inference_steps"):
        sampler.set_timesteps(steps)
    with pytest.raises(InputError, match="num_inference_steps"):
        sampler.sample(lambda x, t: x, torch.zeros(1, 1, 2, 2), steps)


MODEL_CASES = [
    ("heads-zero", {"num_heads": 0}, "num_heads must be >= 1, got 0"),
    ("heads-not-dividing", {"hidden_size": 24, "num_heads": 5}, "num_heads 5"),
    ("width-not-multiple-of-4", {"hidden_size": 6, "num_heads": 2}, "got 6"),
    ("depth-zero", {"depth": 0}, "depth must be >= 1, got 0"),
    ("classes-zero", {"num_classes": 0}, "num_classes must be >= 1, got 0"),
    ("dropout-one", {"class_dropout_prob": 1.0}, "got 1.0"),
    ("dropout-negative", {"class_dropout_prob": -0.1}, "got -0.1"),
    ("mlp-ratio-zero", {"mlp_ratio": 0.0}, "mlp_ratio must be > 0.0, got 0.0"),
    ("mlp-ratio-nan", {"mlp_ratio": NAN}, "nan"),
    ("patch-not-dividing", {"sample_size": 7}, "sample_size 7"),
    ("patch-zero", {"patch_size": 0}, "patch_size must be >= 1, got 0"),
    ("sample-size-float", {"sample_size": 8.0}, "8.0"),
    ("learn-sigma-string", {"learn_sigma": "yes"}, "'yes'"),
    ("channels-zero", {"in_channels": 0}, "in_channels must be >= 1, got 0"),
]


@pytest.mark.parametrize(("config", "message"), [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_model_constructor_refuses_bad_config(config: dict, message: str) -> None:
    base = dict(sample_size=8, patch_size=2, in_channels=3, hidden_size=16, depth=1, num_heads=2)
    with pytest.raises(InputError) as info:
        SiTTransformer2DModel(**{**base, **config})
    assert message in str(info.value), str(info.value)


def test_label_errors_are_input_errors() -> None:
    assert issubclass(UnknownClassLabelError, InputError) and issubclass(InputError, ValueError)


# ------------------------------------------------------------------------------------ non-finite results
def test_nan_weights_raise_non_finite_error_naming_the_cause() -> None:
    model = tiny_sit(0.3, sample_size=8, num_classes=3)
    with torch.no_grad():
        model.final_layer.linear.bias.fill_(NAN)
    pipe = SiTPipeline(model, SiTSampler.from_preset("ode-euler"))
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(NonFiniteError, match=r"sampled latents holds 384 non-finite.*sample\(s\) \[0, 1\].*weights"):
        pipe([0, 1], num_inference_steps=2, output_type="pil")


def test_diverging_guidance_raises_non_finite_error() -> None:
    pipe = SiTPipeline(tiny_sit(0.3, sample_size=8, num_classes=3), SiTSampler.from_preset("ode-euler"))
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(NonFiniteError, match="guidance_scale=1e\\+38"):
        pipe([0], guidance_scale=1e38, num_inference_steps=4)


def test_non_finite_vae_output_is_refused() -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=3, norm_num_groups=8,
                        layers_per_block=1, sample_size=8)
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(INF)
    pipe = SiTPipeline(tiny_sit(0.3, sample_size=8, num_classes=3), SiTSampler.from_preset("ode-euler"), vae=vae)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(NonFiniteError, match="decoded images.*VAE"):
        pipe([0], num_inference_steps=1)


LIKELIHOOD_CASES = [
    ("solver-unknown", {"solver": "rk45"}, "'rk45'"),
    ("divergence-typo", {"divergence": "exakt"}, "did you mean 'exact'"),
    ("steps-zero", {"solver": "euler", "num_steps": 0}, "got 0"),
    ("steps-fractional", {"solver": "euler", "num_steps": 2.5}, "2.5"),
    ("atol-zero", {"atol": 0.0}, "got 0.0"),
    ("rtol-nan", {"rtol": NAN}, "nan"),
    ("x-int", {"x": torch.zeros(1, 3, 8, 8, dtype=torch.long)}, "torch.int64"),
    ("x-nan", {"x": torch.full((1, 3, 8, 8), NAN)}, "x holds 192 non-finite"),
    ("x-numpy", {"x": np.zeros((1, 3, 8, 8), np.float32)}, "ndarray"),
    ("sample-eps-negative", {"sample_eps": -1.0}, "-1.0"),
    ("generator-int", {"generator": 5}, "int"),
    ("path-typo", {"path_type": "linaer"}, "'linaer'"),
]


@pytest.mark.parametrize(("kwargs", "message"), [c[1:] for c in LIKELIHOOD_CASES],
                         ids=[c[0] for c in LIKELIHOOD_CASES])
def test_log_likelihood_refuses_bad_input_before_any_work(kwargs: dict, message: str) -> None:
    from sit_diffusers.likelihood import log_likelihood

    calls = []

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return -x

    call = {"x": torch.zeros(1, 3, 8, 8), **kwargs}
    x = call.pop("x")
    with pytest.raises(InputError) as info:
        log_likelihood(model_fn, x, **call)
    assert message in str(info.value), str(info.value)
    assert calls == []


OBJECTIVE_CASES = [
    ("weight-unknown", {"prediction": "noise", "loss_weight": "snr"}, "'snr'"),
    ("weight-on-velocity", {"loss_weight": "likelihood"}, "'likelihood'"),
    ("time-unknown", {"time": "uniform"}, "'uniform'"),
    ("timesteps-zero", {"num_train_timesteps": 0}, "got 0"),
    ("timesteps-discrete-one", {"time": "discrete", "num_train_timesteps": 1}, "got 1"),
    ("train-eps-negative", {"train_eps": -0.1}, "-0.1"),
    ("train-eps-nan", {"train_eps": NAN}, "nan"),
    ("sample-eps-too-large", {"sample_eps": 0.7}, "0.7"),
]


@pytest.mark.parametrize(("kwargs", "message"), [c[1:] for c in OBJECTIVE_CASES], ids=[c[0] for c in OBJECTIVE_CASES])
def test_objective_refuses_bad_config(kwargs: dict, message: str) -> None:
    from sit_diffusers.losses import SiTObjective

    with pytest.raises(InputError) as info:
        SiTObjective(**kwargs)
    assert message in str(info.value), str(info.value)


def test_step_and_add_noise_refuse_mismatched_tensors() -> None:
    sampler = SiTSampler(mode="ode", solver="euler")
    sampler.set_timesteps(4)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(InputError, match=r"model_output has shape \(1, 3, 4, 4\), sample \(2, 3, 4, 4\)"):
        sampler.step(torch.randn(1, 3, 4, 4), sampler.timesteps[0], x)  # would broadcast silently
    with pytest.raises(InputError, match="sample must be a floating-point tensor, got Tensor of dtype torch.int64"):
        sampler.step(torch.randn(2, 3, 4, 4), sampler.timesteps[0], x.long())
    with pytest.raises(InputError, match=r"SiT times in \[0, 1\].*\[1.5, -2.0\]"):
        sampler.add_noise(x, torch.randn_like(x), torch.tensor([1.5, -2.0]))
    with pytest.raises(InputError, match=r"SiT times in \[0, 1\].*nan"):
        sampler.add_noise(x, torch.randn_like(x), float("nan"))
    with pytest.raises(InputError, match=r"timesteps has shape \(3,\)"):
        sampler.add_noise(x, torch.randn_like(x), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(InputError, match="noise has shape"):
        sampler.add_noise(x, torch.randn(1, 3, 4, 4), 0.5)


FORWARD_CASES = [
    ("labels-out-of-range", {"y": torch.tensor([4])}, "class_labels must be in [0, 3]"),
    ("labels-negative", {"y": torch.tensor([-1])}, "got values in [-1, -1]"),
    ("labels-fractional", {"y": torch.tensor([0.5])}, "[0.5]"),
    ("labels-bool", {"y": torch.tensor([True])}, "torch.bool"),
    ("labels-list", {"y": [0]}, "list"),
    ("labels-count", {"y": torch.tensor([0, 1])}, "2 entries for a batch of 1"),
    ("input-3d", {"x": torch.zeros(3, 8, 8)}, "got (3, 8, 8)"),
    ("input-channels", {"x": torch.zeros(1, 4, 8, 8)}, "got (1, 4, 8, 8)"),
    ("timestep-count", {"t": torch.tensor([0.1, 0.2])}, "2 entries for a batch of 1"),
]


@pytest.mark.parametrize(("inputs", "message"), [c[1:] for c in FORWARD_CASES], ids=[c[0] for c in FORWARD_CASES])
def test_model_forward_refuses_bad_input(pipe: SiTPipeline, inputs: dict, message: str) -> None:
    call = {"x": torch.zeros(1, 3, 8, 8), "t": torch.tensor([0.5]), "y": torch.tensor([0]), **inputs}
    with pytest.raises(InputError) as info:
        pipe.transformer(call["x"], call["t"], call["y"])
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize("ref", [None, 123, "", "   "], ids=["none", "int", "empty", "blank"])
def test_from_pretrained_refuses_a_reference_that_is_not_a_path_or_repo_id(ref) -> None:
    with pytest.raises(InputError, match="pretrained_model_name_or_path"):
        SiTPipeline.from_pretrained(ref)
