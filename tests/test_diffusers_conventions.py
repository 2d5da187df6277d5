"""diffusers' own conventions, as its test mixins check them for DiT and Euler, on our three classes.

Each test names the diffusers check it ports:

* ``SiTSampler``: ``SchedulerCommonTest`` (``tests/schedulers/test_schedulers.py``) and
  ``EulerDiscreteSchedulerTest`` (``tests/schedulers/test_scheduler_euler.py``), plus ``tests/others/test_config.py``
  for the config defaults;
* ``SiTTransformer2DModel``: ``ModelTesterMixin``, ``TrainingTesterMixin``, ``AttentionTesterMixin``,
  ``AttentionBackendTesterMixin`` and ``MemoryTesterMixin`` (``tests/models/testing_utils``) as
  ``tests/models/transformers/test_models_dit_transformer2d.py`` combines them;
* ``SiTPipeline``: ``PipelineTesterMixin`` (``tests/pipelines/test_pipelines_common.py``) as
  ``tests/pipelines/dit/test_dit.py`` uses it, plus ``from_pipe``.

Tolerances are diffusers' or tighter (float32 save/load round trips are compared bit for bit). Checks that need
an accelerator in diffusers run here on the CPU where the CPU can exercise the same code path (offloading to
``"cpu"``/disk, ``device_map="cpu"``), and on CUDA when there is one. The conventions that do not apply to SiT,
and why, are in ``docs/design.md`` ("diffusers conventions").
"""

from __future__ import annotations

import inspect
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conventions_helpers import (
    MODEL_INIT,
    MODEL_OUTPUT_SHAPE,
    captured_diffusers_log,
    check_device_map_is_respected,
    dummy_sample,
    full_loop,
    json_texts,
    model_inputs,
    module_names_inside,
    pipeline_components,
    pipeline_inputs,
    tiny_model,
    to_np,
)
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import _AttentionBackendRegistry, attention_backend
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.training_utils import EMAModel

from sit_diffusers.modeling_sit import SiTTransformer2DModel
from sit_diffusers.pipeline_sit import SiTPipeline, SiTPipelineOutput
from sit_diffusers.scheduling_sit import SiTSampler

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
# attribute names read through getattr(), as diffusers' test_getattr_is_correct reads them
DUMMY, SAVE, CONFIG_ATTR = "dummy_attribute", "save_pretrained", "test_attribute"


# =============================================================================================================
#                                       SiTSampler (SchedulerCommonTest)
# =============================================================================================================

#: One config per fixed-step solver and mode, and every path, prediction and last step at least once.
SCHEDULER_CONFIGS: dict[str, dict] = {
    "ode-euler": {"mode": "ode", "solver": "euler"},
    "ode-heun": {"mode": "ode", "solver": "heun"},
    "ode-midpoint": {"mode": "ode", "solver": "midpoint"},
    "ode-rk4-gvp-score": {"mode": "ode", "solver": "rk4", "path_type": "gvp", "prediction": "score"},
    "ode-euler-reverse": {"mode": "ode", "solver": "euler", "reverse": True},
    "sde-euler-mean": {},  # the constructor's defaults (the official SDE sampler)
    "sde-heun-mean": {"mode": "sde", "solver": "heun"},
    "sde-euler-tweedie-vp-noise": {"path_type": "vp", "prediction": "noise", "last_step": "tweedie"},
    "sde-heun-no-last-step": {"mode": "sde", "solver": "heun", "last_step": None, "sample_eps": 1e-3},
    "sde-euler-last-euler-gvp": {"path_type": "gvp", "last_step": "euler", "diffusion_form": "SBDM"},
}
SCHED_IDS = list(SCHEDULER_CONFIGS)
STEPS = 3  # solver steps of every scheduler check (a handful of timesteps each)


def sampler_for(name: str) -> SiTSampler:
    return SiTSampler(**SCHEDULER_CONFIGS[name])


def prepared_step(sampler: SiTSampler, residual, t, sample, seed: int = 0, **kwargs):
    """One diffusers loop iteration on a fixed residual: ``scale_model_input`` then ``step`` (the stochastic
    Heun step adds its noise in ``scale_model_input``, so diffusers' loop order is required)."""
    g = torch.Generator().manual_seed(seed)
    x_in = sampler.scale_model_input(sample, t, generator=g)
    return sampler.step(residual, t, x_in, generator=g, **kwargs)


@pytest.mark.parametrize("name", SCHED_IDS)
def test_scheduler_save_config_from_pretrained_gives_identical_steps(tmp_path: Path, name: str) -> None:
    """check_over_configs / check_over_forward / test_from_save_pretrained: ``save_config`` then
    ``from_pretrained`` gives a scheduler whose whole loop is bit-identical (same generator)."""
    sampler = sampler_for(name)
    sampler.save_config(tmp_path)
    loaded = SiTSampler.from_pretrained(tmp_path)
    a = full_loop(sampler, dummy_sample(), STEPS)
    b = full_loop(loaded, dummy_sample(), STEPS)
    assert torch.equal(a, b) and not torch.equal(a, dummy_sample())  # it moved, identically


@pytest.mark.parametrize("name", ["sde-euler-mean", "ode-heun", "sde-euler-tweedie-vp-noise"])
def test_scheduler_from_pretrained_config_round_trip(tmp_path: Path, name: str) -> None:
    """test_from_pretrained: the saved and loaded configs are equal (``_use_default_values`` aside); also from
    a pipeline folder's ``scheduler`` subfolder, and a keyword overrides the file (test_overwrite_config_on_load)."""
    sampler = sampler_for(name)
    sampler.save_pretrained(tmp_path / "scheduler")
    loaded = SiTSampler.from_pretrained(tmp_path / "scheduler")
    config = dict(sampler.config)
    del config["_use_default_values"]
    assert config == loaded.config
    via_subfolder = SiTSampler.from_pretrained(tmp_path, subfolder="scheduler")
    assert dict(via_subfolder.config) == dict(loaded.config)
    overridden = SiTSampler.from_pretrained(tmp_path, subfolder="scheduler", last_step_size=0.05)
    assert overridden.config.last_step_size == 0.05 and loaded.config.last_step_size == sampler.config.last_step_size


def test_scheduler_default_arguments_not_in_config(tmp_path: Path) -> None:
    """tests/others/test_config.py::test_use_default_values: a default-built config lists every key in
    ``_use_default_values``, explicit arguments are not listed, and a config file written before a key existed
    loads with the default for it (and lists it)."""
    default = SiTSampler()
    keys = {k for k in default.config if not k.startswith("_")}
    assert keys == set(default.config._use_default_values) == set(SiTSampler.config_keys())
    explicit = SiTSampler(mode="ode", solver="heun")
    assert {"mode", "solver"}.isdisjoint(explicit.config._use_default_values)

    explicit.save_config(tmp_path)
    path = tmp_path / SiTSampler.config_name
    old = json.loads(path.read_text())
    del old["atol"]  # a file from before `atol` existed
    path.write_text(json.dumps(old))
    loaded = SiTSampler.from_config(SiTSampler.load_config(tmp_path))
    assert loaded.config.atol == inspect.signature(SiTSampler.__init__).parameters["atol"].default
    assert "atol" in loaded.config._use_default_values
    assert (loaded.config.mode, loaded.config.solver) == ("ode", "heun")


@pytest.mark.parametrize("name", ["sde-euler-mean", "ode-euler"])
def test_scheduler_compatibles(name: str) -> None:
    """test_compatibles: every compatible class resolves, builds from our config, and our class built back from
    its config has our config again (only keys that are not our constructor's arguments may differ)."""
    sampler = sampler_for(name)
    assert sampler.compatibles and all(c is not None for c in sampler.compatibles)
    for comp_cls in sampler.compatibles:
        comp = comp_cls.from_config(sampler.config)
        assert comp is not None
        back = SiTSampler.from_config(comp.config)
        same = {k: v for k, v in back.config.items() if k in sampler.config}
        extra = {k: v for k, v in back.config.items() if k not in sampler.config}
        assert same == dict(sampler.config)
        assert set(extra).isdisjoint(inspect.signature(SiTSampler.__init__).parameters)


@pytest.mark.parametrize("name", SCHED_IDS)
def test_scheduler_step_shape(name: str) -> None:
    """test_step_shape: ``step`` at ``timesteps[0]`` then ``timesteps[1]`` keeps the sample's shape."""
    sampler = sampler_for(name)
    sampler.set_timesteps(STEPS)
    sample = dummy_sample()
    residual = 0.1 * sample
    out_0 = prepared_step(sampler, residual, sampler.timesteps[0], sample).prev_sample
    out_1 = prepared_step(sampler, residual, sampler.timesteps[1], sample).prev_sample
    assert out_0.shape == sample.shape == out_1.shape


@pytest.mark.parametrize("name", SCHED_IDS)
def test_scheduler_outputs_equivalence(name: str) -> None:
    """test_scheduler_outputs_equivalence: ``return_dict=False`` gives the ``SchedulerOutput``'s tensors, in order."""
    sampler = sampler_for(name)
    sample = dummy_sample()
    residual = 0.1 * sample
    sampler.set_timesteps(STEPS)
    as_dict = prepared_step(sampler, residual, sampler.timesteps[0], sample)
    sampler.set_timesteps(STEPS)
    as_tuple = prepared_step(sampler, residual, sampler.timesteps[0], sample, return_dict=False)
    assert isinstance(as_dict, SchedulerOutput) and isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert torch.equal(as_tuple[0], as_dict.prev_sample)


@pytest.mark.parametrize("name", SCHED_IDS)
def test_scheduler_public_api(name: str) -> None:
    """test_scheduler_public_api, and what every diffusers loop reads: ``init_noise_sigma``,
    ``scale_model_input`` (before and after ``set_timesteps``), ``step``, ``timesteps`` (one entry per model
    call, ``order`` per solver step), ``step_index`` / ``begin_index`` / ``set_begin_index`` /
    ``index_for_timestep``."""
    sampler = sampler_for(name)
    sample = dummy_sample()
    assert sampler.init_noise_sigma == 1.0  # SiT's noise is N(0, I): pipelines multiply by it
    assert sampler.scale_model_input(sample, 0.0).shape == sample.shape  # before set_timesteps: the sample
    assert callable(sampler.step) and callable(sampler.set_timesteps) and callable(sampler.add_noise)
    assert sampler.step_index is None and sampler.begin_index is None
    sampler.set_timesteps(STEPS)
    ts = sampler.timesteps
    assert ts.ndim == 1 and ts.dtype == torch.float32 and sampler.num_inference_steps == STEPS
    assert len(ts) == sampler.num_model_evaluations(STEPS)
    assert isinstance(sampler.order, int) and sampler.order >= 1
    has_last_step = sampler.config.mode == "sde" and sampler.config.last_step is not None
    assert len(ts) == (STEPS - has_last_step) * sampler.order + has_last_step
    assert bool(((ts >= 0) & (ts <= 1)).all())  # SiT time, not 0..1000
    begin = sampler.order  # the start of solver step 1
    assert sampler.index_for_timestep(ts[begin]) == begin
    sampler.set_begin_index(begin)
    assert sampler.begin_index == begin
    prepared_step(sampler, 0.1 * sample, ts[begin], sample)
    assert sampler.step_index == begin + 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["sde-euler-mean", "ode-heun", "sde-euler-tweedie-vp-noise"])
def test_scheduler_add_noise_device_and_timestep_shapes(name: str, device: str) -> None:
    """test_add_noise_device: ``add_noise`` on the sample's device with ``timesteps[5][None]`` (shape ``(1,)``,
    one time for the batch, as diffusers passes ``timesteps[:1]``); a scalar, a 0-d tensor and an ``(N,)``
    tensor of that time give the same result."""
    sampler = sampler_for(name)
    sampler.set_timesteps(8, device=device)
    sample = dummy_sample().to(device)
    scaled = sampler.scale_model_input(sample, sampler.timesteps[0])
    noise = torch.randn(scaled.shape, generator=torch.Generator().manual_seed(1)).to(device)
    t = sampler.timesteps[5][None]  # (1,)
    noised = sampler.add_noise(scaled, noise, t)
    assert noised.shape == scaled.shape and noised.device.type == device
    for same_t in (float(t), t[0], t.expand(sample.shape[0])):
        torch.testing.assert_close(sampler.add_noise(scaled, noise, same_t), noised, rtol=0, atol=0)
    assert (noised - scaled).abs().max() > 1e-3  # noise was added


@pytest.mark.parametrize("device", DEVICES)
def test_scheduler_full_loop_device(device: str) -> None:
    """EulerDiscreteSchedulerTest.test_full_loop_device: ``set_timesteps(n, device=...)`` puts the timesteps on
    the device and the loop there gives the CPU loop's result."""
    sampler = sampler_for("ode-heun")
    sampler.set_timesteps(STEPS, device=device)
    assert sampler.timesteps.device.type == device
    on_device = full_loop(sampler, dummy_sample(), STEPS, device=device)
    on_cpu = full_loop(sampler_for("ode-heun"), dummy_sample(), STEPS)
    assert on_device.device.type == device
    torch.testing.assert_close(on_device.cpu(), on_cpu, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in SCHED_IDS if "reverse" not in n])
def test_scheduler_full_loop_with_noise_finds_its_place_from_the_timestep(name: str) -> None:
    """EulerDiscreteSchedulerTest.test_full_loop_with_noise: noise the data to ``timesteps[t_start * order]``
    and loop over ``timesteps[t_start * order:]`` WITHOUT ``set_begin_index``: ``step`` finds its place from the
    timestep, so the result is the ``set_begin_index`` loop's, bit for bit (and not the loop from the start)."""
    steps = 4
    sampler = sampler_for(name)
    sampler.set_timesteps(steps)
    start = (steps - 2) * sampler.order  # diffusers: t_start = num_inference_steps - 2
    t = sampler.timesteps[start : start + 1]  # (1,)
    data, noise = dummy_sample(), torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    noisy = sampler.add_noise(data, noise, t)
    found = full_loop(sampler, noisy, steps, start=start)
    told = full_loop(sampler_for(name), noisy, steps, start=start, begin_index=start)
    assert torch.equal(found, told)
    from_zero = full_loop(sampler_for(name), noisy, steps)
    assert not torch.allclose(found, from_zero)


def test_scheduler_full_loop_seeds() -> None:
    """EulerDiscreteSchedulerTest.full_loop with ``generator=torch.manual_seed(0)``: the stochastic loop is a
    function of the generator: the same seed repeats bit for bit, another seed changes the sample."""
    a = full_loop(sampler_for("sde-heun-mean"), dummy_sample(), STEPS, seed=0)
    b = full_loop(sampler_for("sde-heun-mean"), dummy_sample(), STEPS, seed=0)
    c = full_loop(sampler_for("sde-heun-mean"), dummy_sample(), STEPS, seed=1)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3


def test_scheduler_deprecated_kwargs() -> None:
    """test_deprecated_kwargs: ``**kwargs`` in ``__init__`` if and only if ``_deprecated_kwargs`` is non-empty."""
    has_kwargs = "kwargs" in inspect.signature(SiTSampler.__init__).parameters
    assert has_kwargs == (len(SiTSampler._deprecated_kwargs) > 0)


def test_scheduler_getattr_is_correct() -> None:
    """test_getattr_is_correct: plain attributes and methods without a warning, a config value read as an
    attribute with diffusers' ``FutureWarning``, a missing one with Python's exact ``AttributeError``."""
    sampler = SiTSampler()
    sampler.dummy_attribute = 5
    sampler.register_to_config(test_attribute=5)
    with captured_diffusers_log("diffusers.configuration_utils", 30) as log_config, \
            captured_diffusers_log("diffusers.schedulers.scheduling_utils", 30) as log_sched, \
            warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hasattr(sampler, "dummy_attribute") and getattr(sampler, DUMMY) == 5
        assert sampler.dummy_attribute == 5
        assert hasattr(sampler, "save_pretrained") and sampler.save_pretrained == getattr(sampler, SAVE)
    assert log_config.getvalue() == "" and log_sched.getvalue() == ""
    with pytest.warns(FutureWarning):
        assert sampler.test_attribute == 5
    with pytest.warns(FutureWarning):
        assert getattr(sampler, CONFIG_ATTR) == 5
    with pytest.raises(AttributeError) as error:
        sampler.does_not_exist  # noqa: B018
    assert str(error.value) == "'SiTSampler' object has no attribute 'does_not_exist'"


# =============================================================================================================
#                         SiTTransformer2DModel (ModelTesterMixin and its companions)
# =============================================================================================================


@pytest.fixture(scope="module")
def base_model_output() -> torch.Tensor:
    """BaseModelOutputMixin.base_model_output: the reference forward of the tiny model."""
    with torch.no_grad():
        return tiny_model()(**model_inputs(), return_dict=False)[0]


@pytest.fixture()
def restore_attention_backend():
    """diffusers' ``set_attention_backend`` also sets the process-wide active backend: put it back."""
    old = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(old)


def forward(model: SiTTransformer2DModel) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs(), return_dict=False)[0]


@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "bin"])
def test_model_from_save_pretrained(tmp_path: Path, base_model_output, safe_serialization: bool) -> None:
    """test_from_save_pretrained (safetensors and pickle): same parameter shapes, same forward (bit for bit)."""
    model = tiny_model()
    model.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    name = "diffusion_pytorch_model." + ("safetensors" if safe_serialization else "bin")
    assert (tmp_path / name).is_file() and (tmp_path / "config.json").is_file()
    loaded = SiTTransformer2DModel.from_pretrained(tmp_path)
    assert not loaded.training  # from_pretrained returns the model in eval mode
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].shape == value.shape, key
    torch.testing.assert_close(forward(loaded), base_model_output, rtol=0, atol=0)


def test_model_from_save_pretrained_variant(tmp_path: Path, base_model_output) -> None:
    """test_from_save_pretrained_variant: ``variant="fp16"`` names the file, loads back with the variant, and
    loading without it fails with diffusers' "no file named" ``OSError``."""
    tiny_model().save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = SiTTransformer2DModel.from_pretrained(tmp_path, variant="fp16")
    torch.testing.assert_close(forward(loaded), base_model_output, rtol=0, atol=0)
    with pytest.raises(OSError, match="Error no file named diffusion_pytorch_model.bin found in directory"):
        SiTTransformer2DModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_model_sharded_checkpoints(tmp_path: Path, base_model_output, variant: str | None) -> None:
    """test_sharded_checkpoints(_with_variant): ``max_shard_size`` writes an index and the shards it names;
    loading them gives the same forward."""
    from accelerate.utils import compute_module_sizes
    from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME
    from diffusers.utils.hub_utils import _add_variant

    model = tiny_model()
    size_kb = compute_module_sizes(model)[""] / 2**10
    model.save_pretrained(tmp_path, max_shard_size=f"{int(0.75 * size_kb)}KB", variant=variant)
    index = json.loads((tmp_path / _add_variant(SAFE_WEIGHTS_INDEX_NAME, variant)).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and shards == {p.name for p in tmp_path.glob("*.safetensors")}
    loaded = SiTTransformer2DModel.from_pretrained(tmp_path, variant=variant)
    torch.testing.assert_close(forward(loaded), base_model_output, rtol=0, atol=0)


def test_model_sharded_checkpoints_with_parallel_loading(tmp_path: Path, base_model_output, monkeypatch) -> None:
    """test_sharded_checkpoints_with_parallel_loading: with ``HF_ENABLE_PARALLEL_LOADING`` the shards load in
    a thread pool, to the same weights. (diffusers' test sets ``constants.HF_ENABLE_PARALLEL_LOADING``, which
    ``modeling_utils`` has already imported by value; the flag is set where it is read, and the pool is
    checked to have run.)"""
    from diffusers.models import modeling_utils

    tiny_model().save_pretrained(tmp_path, max_shard_size="20KB")
    pooled = []
    original = modeling_utils._load_shard_files_with_threadpool
    monkeypatch.setattr(modeling_utils, "HF_ENABLE_PARALLEL_LOADING", True)
    monkeypatch.setattr(modeling_utils, "_load_shard_files_with_threadpool",
                        lambda *a, **k: pooled.append(1) or original(*a, **k))
    loaded = SiTTransformer2DModel.from_pretrained(tmp_path, low_cpu_mem_usage=True)
    assert pooled
    torch.testing.assert_close(forward(loaded), base_model_output, rtol=0, atol=0)


@pytest.mark.parametrize("low_cpu_mem_usage", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("argument", ["torch_dtype", "dtype"])
def test_model_from_save_pretrained_dtype(tmp_path: Path, dtype, low_cpu_mem_usage: bool, argument: str) -> None:
    """test_from_save_pretrained_dtype / test_from_pretrained_dtype_alias: a model saved in ``dtype`` loads in
    ``dtype`` (parameters and the saved position table), with ``low_cpu_mem_usage`` either way and with
    ``torch_dtype`` or its alias ``dtype``. ``_keep_in_fp32_modules`` is ``None``, so nothing stays float32."""
    assert SiTTransformer2DModel._keep_in_fp32_modules is None
    tiny_model().to(dtype).save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch_dtype is deprecated in favour of dtype
        loaded = SiTTransformer2DModel.from_pretrained(tmp_path, low_cpu_mem_usage=low_cpu_mem_usage,
                                                       **{argument: dtype})
    assert loaded.dtype == dtype and loaded.pos_embed.dtype == dtype
    assert all(p.dtype == dtype for p in loaded.parameters())


def test_model_determinism_output_shape_and_outputs_equivalence(base_model_output) -> None:
    """test_determinism, test_output and test_outputs_equivalence: two forwards agree, the output has the
    latent's shape (the learned-sigma half is not returned), and ``return_dict=False`` returns the
    ``Transformer2DModelOutput``'s tensors in order."""
    model = tiny_model()
    first, second = forward(model), forward(model)
    torch.testing.assert_close(first, second, rtol=0, atol=1e-5)
    assert tuple(base_model_output.shape[1:]) == MODEL_OUTPUT_SHAPE
    with torch.no_grad():
        as_dict = model(**model_inputs())
        as_tuple = model(**model_inputs(), return_dict=False)
    assert isinstance(as_dict, Transformer2DModelOutput) and isinstance(as_tuple, tuple) and len(as_tuple) == 1
    torch.testing.assert_close(as_tuple[0], as_dict.sample, rtol=0, atol=1e-5)


def test_model_forward_signature() -> None:
    """diffusers' model call convention: ``forward(hidden_states, timestep, class_labels, ..., return_dict=True)``,
    the main input first (the DiT tester's ``main_input_name``)."""
    params = list(inspect.signature(SiTTransformer2DModel.forward).parameters.values())
    assert [p.name for p in params[1:4]] == ["hidden_states", "timestep", "class_labels"]
    return_dict = inspect.signature(SiTTransformer2DModel.forward).parameters["return_dict"]
    assert return_dict.default is True


def test_model_getattr_is_correct() -> None:
    """ModelTesterMixin.test_getattr_is_correct (model side of the same rule as the scheduler's)."""
    model = tiny_model()
    model.dummy_attribute = 5
    model.register_to_config(test_attribute=5)
    with captured_diffusers_log("diffusers.models.modeling_utils", 30) as log, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hasattr(model, "dummy_attribute") and getattr(model, DUMMY) == 5
        assert model.dummy_attribute == 5
        assert hasattr(model, "save_pretrained") and model.save_pretrained == getattr(model, SAVE)
    assert log.getvalue() == ""
    with pytest.warns(FutureWarning):
        assert model.test_attribute == 5
    with pytest.warns(FutureWarning):
        assert getattr(model, CONFIG_ATTR) == 5
    with pytest.raises(AttributeError) as error:
        model.does_not_exist  # noqa: B018
    assert str(error.value) == "'SiTTransformer2DModel' object has no attribute 'does_not_exist'"


def test_model_deprecated_kwargs() -> None:
    """test_deprecated_kwargs (model side)."""
    has_kwargs = "kwargs" in inspect.signature(SiTTransformer2DModel.__init__).parameters
    assert has_kwargs == (len(SiTTransformer2DModel._deprecated_kwargs) > 0)


def test_model_config_json_round_trip(tmp_path: Path) -> None:
    """ConfigMixin: ``from_config(model.config)``, ``to_json_string`` -> ``from_config`` and
    ``save_config`` -> ``load_config`` rebuild the same architecture; loading the state dict into it gives the
    same forward; a config file missing an argument (an older file) loads with the default."""
    model = tiny_model()
    ref = forward(model)
    from_json = json.loads(model.to_json_string())
    assert from_json["_class_name"] == "SiTTransformer2DModel"
    model.save_config(tmp_path)
    for config in (model.config, from_json, SiTTransformer2DModel.load_config(tmp_path)):
        rebuilt = SiTTransformer2DModel.from_config(config)
        assert {k: v for k, v in rebuilt.config.items() if not k.startswith("_")} == {
            k: v for k, v in model.config.items() if not k.startswith("_")
        }
        rebuilt.load_state_dict(model.state_dict())
        torch.testing.assert_close(forward(rebuilt.eval()), ref, rtol=0, atol=0)
    old = json.loads((tmp_path / "config.json").read_text())
    del old["mlp_ratio"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = SiTTransformer2DModel.from_config(SiTTransformer2DModel.load_config(tmp_path))
    assert loaded.config.mlp_ratio == 4.0 and "mlp_ratio" in loaded.config._use_default_values


def test_model_from_pretrained_subfolder(tmp_path: Path, base_model_output) -> None:
    """``from_pretrained(folder, subfolder="transformer")``: the component of a saved pipeline loads alone."""
    pipe = SiTPipeline(tiny_model(), SiTSampler.from_preset("ode-euler"))
    pipe.save_pretrained(tmp_path)
    loaded = SiTTransformer2DModel.from_pretrained(tmp_path, subfolder="transformer")
    torch.testing.assert_close(forward(loaded), base_model_output, rtol=0, atol=0)


@pytest.mark.parametrize("device_map", ["cpu", {"": "cpu"}])
def test_model_device_map_string_or_dict(tmp_path: Path, base_model_output, device_map) -> None:
    """test_passing_non_dict_device_map_works / test_passing_dict_device_map_works, and a wrong map raises."""
    tiny_model().save_pretrained(tmp_path)
    loaded = SiTTransformer2DModel.from_pretrained(tmp_path, device_map=device_map)
    assert loaded.device.type == "cpu"
    torch.testing.assert_close(forward(loaded), base_model_output, rtol=0, atol=0)
    with pytest.raises(ValueError, match="device_map"):
        SiTTransformer2DModel.from_pretrained(tmp_path, device_map="not-a-device")


def test_model_no_split_modules_with_disk_offload(tmp_path: Path, base_model_output) -> None:
    """``_no_split_modules`` and test_disk_offload_with/without_safetensors on the CPU: a ``device_map="auto"``
    that does not fit in the CPU budget needs an ``offload_folder``; with one, the weights that do not fit go
    to disk, no module named in ``_no_split_modules`` is cut across devices, every parameter sits where the
    map says, and the forward is unchanged."""
    from accelerate.utils import compute_module_sizes

    model = tiny_model()
    names = SiTTransformer2DModel._no_split_modules
    assert names and set(names) <= {type(m).__name__ for m in model.modules()}  # real module classes
    size = compute_module_sizes(model)[""]
    for safe in (True, False):
        folder = tmp_path / ("safe" if safe else "bin")
        model.save_pretrained(folder, safe_serialization=safe)
        max_memory = {"cpu": int(0.5 * size)}
        if not safe:
            with pytest.raises(ValueError, match="offload"):
                SiTTransformer2DModel.from_pretrained(folder, device_map="auto", max_memory=max_memory)
        loaded = SiTTransformer2DModel.from_pretrained(
            folder, device_map="auto", max_memory=max_memory, offload_folder=str(tmp_path / "offload")
        )
        placements = loaded.hf_device_map
        assert set(placements.values()) == {"cpu", "disk"}
        for whole in module_names_inside(loaded, names):
            assert not any(key.startswith(whole + ".") for key in placements), (whole, placements)
        check_device_map_is_respected(loaded, placements)
        torch.testing.assert_close(forward(loaded), base_model_output, rtol=0, atol=0)


@CUDA
def test_model_cpu_offload_split_between_gpu_and_cpu(tmp_path: Path, base_model_output) -> None:
    """test_cpu_offload: ``device_map="auto"`` with part of the model on GPU 0 and the rest on the CPU."""
    from accelerate.utils import compute_module_sizes

    model = tiny_model()
    size = compute_module_sizes(model)[""]
    model.save_pretrained(tmp_path)
    for share in (0.5, 0.7):
        loaded = SiTTransformer2DModel.from_pretrained(
            tmp_path, device_map="auto", max_memory={0: int(share * size), "cpu": 2 * size}
        )
        assert set(loaded.hf_device_map.values()) == {0, "cpu"}
        check_device_map_is_respected(loaded, loaded.hf_device_map)
        out = loaded(**{k: v.cuda() for k, v in model_inputs().items()}, return_dict=False)[0]
        torch.testing.assert_close(out.cpu(), base_model_output, rtol=1e-5, atol=1e-5)


def test_model_group_offloading(tmp_path: Path, base_model_output) -> None:
    """GroupOffloadTesterMixin.test_group_offloading(_with_disk), with the CPU as the onload device: block- and
    leaf-level groups (and block groups kept on disk) give the same forward."""
    cases = [
        {"offload_type": "block_level", "num_blocks_per_group": 1},
        {"offload_type": "leaf_level"},
        {"offload_type": "block_level", "num_blocks_per_group": 1, "offload_to_disk_path": str(tmp_path)},
    ]
    for kwargs in cases:
        model = tiny_model()
        model.enable_group_offload(torch.device("cpu"), **kwargs)
        hooked = [m for m in model.modules() if hasattr(m, "_diffusers_hook")]
        assert hooked and all(m._diffusers_hook.get_hook("group_offloading") is not None for m in hooked)
        torch.testing.assert_close(forward(model), base_model_output, rtol=0, atol=1e-5)
    assert list(tmp_path.glob("*.safetensors"))  # the disk groups were written


@pytest.mark.parametrize("storage_dtype", [torch.float16, torch.float8_e4m3fn, torch.float8_e5m2],
                         ids=["fp16", "fp8_e4m3", "fp8_e5m2"])
def test_model_layerwise_casting_training(storage_dtype) -> None:
    """LayerwiseCastingTesterMixin.test_layerwise_casting_training (float32 compute; diffusers skips bfloat16
    compute on the CPU): forward under autocast and backward run with low-precision storage, and the layers in
    ``_skip_layerwise_casting_patterns`` stay in the compute dtype."""
    model = tiny_model()
    model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.float32)
    model.train()
    stored = {p.dtype for n, p in model.named_parameters() if ".attn." in n or ".ff." in n}
    skipped = {p.dtype for n, p in model.named_parameters()
               if any(pattern in n for pattern in SiTTransformer2DModel._skip_layerwise_casting_patterns)}
    assert stored == {storage_dtype} and skipped == {torch.float32}
    inputs = model_inputs()
    with torch.amp.autocast(device_type="cpu"):
        out = model(**inputs, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(out.float(), torch.randn(out.shape, generator=torch.Generator()))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_model_layerwise_casting_memory_footprint() -> None:
    """LayerwiseCastingTesterMixin.test_layerwise_casting_memory (the footprint part, which needs no
    accelerator): fp8 storage + bf16 compute < fp8 storage + fp32 compute < fp32."""

    def footprint(storage, compute) -> int:
        model = tiny_model().to(dtype=compute)
        model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
        return model.get_memory_footprint()

    fp32 = footprint(torch.float32, torch.float32)
    fp8_fp32 = footprint(torch.float8_e4m3fn, torch.float32)
    fp8_bf16 = footprint(torch.float8_e4m3fn, torch.bfloat16)
    assert fp8_bf16 < fp8_fp32 < fp32


def test_model_training_and_ema() -> None:
    """TrainingTesterMixin.test_training / test_training_with_ema: a train-mode forward and backward reach every
    trainable parameter, and diffusers' ``EMAModel`` follows an optimiser step."""
    model = tiny_model().train()
    ema = EMAModel(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(0)
    out = model(**model_inputs(), return_dict=False)[0]
    loss = torch.nn.functional.mse_loss(out, torch.randn(out.shape, generator=torch.Generator().manual_seed(2)))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    ema.step(model.parameters())
    assert ema.optimization_step == 1
    for shadow, old, new in zip(ema.shadow_params, before, model.parameters(), strict=True):
        assert (shadow - new.detach()).norm() <= (old - new.detach()).norm()  # moved toward the new weights


def test_model_mixed_precision_training() -> None:
    """TrainingTesterMixin.test_mixed_precision_training, with the CPU's bfloat16 autocast (diffusers runs it
    on an accelerator only)."""
    model = tiny_model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**model_inputs(), return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(out.float(), torch.zeros(out.shape))
    loss.backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(loss)


def test_model_gradient_checkpointing_enable_disable_and_applied() -> None:
    """test_gradient_checkpointing / test_gradient_checkpointing_is_applied: off at init, enable and disable
    work, and the module that checkpoints is the model itself (DiT's expected set is its model class)."""
    assert SiTTransformer2DModel._supports_gradient_checkpointing
    model = tiny_model()
    assert not model.is_gradient_checkpointing
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    with_gc = {type(m).__name__ for m in model.modules() if getattr(m, "gradient_checkpointing", False)}
    assert with_gc == {"SiTTransformer2DModel"}
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing


def test_model_gradient_checkpointing_equivalence(monkeypatch) -> None:
    """test_gradient_checkpointing_equivalence: in train mode, with and without checkpointing, the loss agrees
    to 1e-5 and every parameter's gradient to 5e-5, and the checkpointed path really runs."""
    inputs = model_inputs()
    labels = torch.randn((4, *MODEL_OUTPUT_SHAPE), generator=torch.Generator().manual_seed(3))

    def loss_and_grads(model):
        model.train()
        model.zero_grad()
        torch.manual_seed(0)  # the same label dropout in both runs
        loss = (model(**inputs, return_dict=False)[0] - labels).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = tiny_model()
    loss_1, grads_1 = loss_and_grads(plain)
    checkpointed = tiny_model()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.enable_gradient_checkpointing()
    calls = []
    original = checkpointed._gradient_checkpointing_func
    monkeypatch.setattr(checkpointed, "_gradient_checkpointing_func",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    loss_2, grads_2 = loss_and_grads(checkpointed)
    assert len(calls) == MODEL_INIT["depth"]
    assert (loss_1 - loss_2).abs() < 1e-5
    assert grads_1.keys() == grads_2.keys() and len(grads_1) > 0
    for name, grad in grads_1.items():
        torch.testing.assert_close(grads_2[name], grad, rtol=0, atol=5e-5, msg=name)


def test_model_attention_processors() -> None:
    """AttentionTesterMixin: ``attn_processors`` has one processor per attention layer, ``get_processor`` /
    ``set_processor`` on every ``AttentionModuleMixin``, ``set_attn_processor`` with one processor or a dict,
    and a dict of the wrong size raises diffusers' "number of processors" ``ValueError``."""
    model = tiny_model()
    ref = forward(model)
    processors = model.attn_processors
    assert isinstance(processors, dict) and len(processors) == MODEL_INIT["depth"]
    processor_cls = type(next(iter(processors.values())))  # the model's default processor
    assert all(type(p) is processor_cls for p in processors.values())
    attention_modules = [m for m in model.modules() if isinstance(m, AttentionModuleMixin)]
    assert len(attention_modules) == MODEL_INIT["depth"]
    for module in attention_modules:
        assert module.get_processor() is not None
        new = processor_cls()
        module.set_processor(new)
        assert module.get_processor() is new
    new_processors = {key: processor_cls() for key in processors}
    model.set_attn_processor(dict(new_processors))
    assert all(model.attn_processors[k] is new_processors[k] for k in processors)
    model.set_attn_processor(processor_cls())
    torch.testing.assert_close(forward(model), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="number of processors"):
        model.set_attn_processor({next(iter(processors)): processor_cls()})
    if hasattr(model, "set_default_attn_processor"):  # DiT does not define it either; when present, it resets
        model.set_default_attn_processor()
        assert all(type(p) is processor_cls for p in model.attn_processors.values())
        torch.testing.assert_close(forward(model), ref, rtol=0, atol=0)


def test_model_fuse_unfuse_qkv_projections_keep_the_output() -> None:
    """AttentionTesterMixin.test_fuse_unfuse_qkv_projections: fusing and unfusing do not change the output
    (the projections are stored fused, ``to_qkv``, as in the official checkpoints, so both are no-ops that
    keep ``to_qkv``)."""
    model = tiny_model()
    ref = forward(model)
    model.fuse_qkv_projections()
    torch.testing.assert_close(forward(model), ref, rtol=0, atol=1e-6)
    model.unfuse_qkv_projections()
    torch.testing.assert_close(forward(model), ref, rtol=0, atol=1e-6)
    assert all(hasattr(m, "to_qkv") for m in model.modules() if isinstance(m, AttentionModuleMixin))


@pytest.mark.parametrize("backend", ["native", "_native_math"])
def test_model_attention_backend_matches_context_manager(restore_attention_backend, backend: str) -> None:
    """AttentionBackendTesterMixin.test_set_attention_backend_matches_context_manager / test_output_close_to_native
    / test_context_manager_switches_and_restores_backend, on the CPU backends."""
    native = forward(tiny_model())
    model = tiny_model()
    model.set_attention_backend(backend)
    set_out = forward(model)
    model.reset_attention_backend()
    with attention_backend(backend):
        ctx_out = forward(tiny_model())
    torch.testing.assert_close(set_out, ctx_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(set_out, native, rtol=1e-5, atol=1e-5)


# =============================================================================================================
#                                  SiTPipeline (PipelineTesterMixin, DiT)
# =============================================================================================================


def make_pipe(**overrides) -> SiTPipeline:
    pipe = SiTPipeline(**{**pipeline_components(), **overrides})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe_output() -> np.ndarray:
    """The reference images of the tiny pipeline for ``pipeline_inputs()``."""
    return make_pipe()(**pipeline_inputs())[0]


@pytest.mark.parametrize("safe_serialization", [False, True], ids=["bin", "safetensors"])
def test_pipeline_save_load_local(tmp_path: Path, pipe_output, safe_serialization: bool) -> None:
    """test_save_load_local: the loaded pipeline logs each required component it loads and gives the same
    images (diffusers allows 5e-4; ours is exact)."""
    make_pipe().save_pretrained(tmp_path, safe_serialization=safe_serialization)
    with captured_diffusers_log("diffusers.pipelines.pipeline_utils") as log:
        loaded = SiTPipeline.from_pretrained(tmp_path)
    for name in loaded.components:
        if name not in loaded._optional_components:
            assert name in log.getvalue(), name
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(loaded(**pipeline_inputs())[0], pipe_output)


def test_pipeline_call_signature() -> None:
    """test_pipeline_call_signature with DiT's ``params`` (``class_labels``) and ``required_optional_params``
    (``num_inference_steps``, ``generator``, ``output_type``, ``return_dict``; SiT also has ``latents``,
    ``guidance_scale`` and the ``callback_on_step_end`` pair, all optional)."""
    parameters = inspect.signature(SiTPipeline.__call__).parameters
    assert "class_labels" in parameters
    optional = {k for k, v in parameters.items() if v.default is not inspect.Parameter.empty}
    required_optional = {"num_inference_steps", "generator", "latents", "output_type", "return_dict",
                         "guidance_scale", "callback_on_step_end", "callback_on_step_end_tensor_inputs"}
    assert required_optional <= optional, required_optional - optional


def test_pipeline_inference_batch_consistent() -> None:
    """test_inference_batch_consistent: a batch of labels with one generator each gives one image each."""
    pipe = make_pipe()
    for batch_size in (2, 3):
        inputs = {**pipeline_inputs(), "class_labels": [1] * batch_size,
                  "generator": [torch.Generator().manual_seed(i) for i in range(batch_size)]}
        assert len(pipe(**inputs)[0]) == batch_size


@pytest.mark.parametrize("preset", ["ode-euler", "sde-heun"])
def test_pipeline_inference_batch_single_identical(preset: str) -> None:
    """test_inference_batch_single_identical (batch 3, generators seeded 0, 1, 2; diffusers' 1e-4, DiT's 1e-3):
    the first image of the batch is the image generated alone with generator 0, for the ODE and the SDE."""
    pipe = make_pipe()
    pipe.set_sampler(preset)
    single = pipe(**{**pipeline_inputs(), "num_inference_steps": 3})[0]
    batched = pipe(**{**pipeline_inputs(), "num_inference_steps": 3, "class_labels": [1, 1, 1],
                      "generator": [torch.Generator().manual_seed(i) for i in range(3)]})[0]
    assert batched.shape[0] == 3
    assert np.abs(batched[0] - single[0]).max() < 1e-4
    assert np.abs(batched[1] - single[0]).max() > 1e-3  # the other seeds give other images


def test_pipeline_dict_tuple_outputs_equivalent(pipe_output) -> None:
    """test_dict_tuple_outputs_equivalent: ``return_dict=False`` returns the images first."""
    pipe = make_pipe()
    as_dict = pipe(**pipeline_inputs())
    as_tuple = pipe(**pipeline_inputs(), return_dict=False)
    assert isinstance(as_dict, SiTPipelineOutput) and isinstance(as_tuple, tuple)
    np.testing.assert_array_equal(as_tuple[0], as_dict.images)
    np.testing.assert_array_equal(as_dict[0], pipe_output)


def test_pipeline_components_function() -> None:
    """test_components_function: ``components`` holds exactly the modules the pipeline was built from, so
    ``SiTPipeline(**pipe.components)`` rebuilds it."""
    init = pipeline_components()
    pipe = SiTPipeline(**init)
    assert set(pipe.components) == set(init)
    assert all(pipe.components[k] is v for k, v in init.items())
    rebuilt = SiTPipeline(**pipe.components)
    assert rebuilt.transformer is pipe.transformer


def test_pipeline_save_load_optional_components(tmp_path: Path, pipe_output) -> None:
    """test_save_load_optional_components: the VAE is optional; set to ``None`` it is saved as such, stays
    ``None`` after loading, and the (pixel-space) output is the same."""
    assert SiTPipeline._optional_components == ["vae"]
    pipe = make_pipe()
    pipe.vae = None
    torch.manual_seed(0)
    out = pipe(**pipeline_inputs())[0]
    pipe.save_pretrained(tmp_path, safe_serialization=False)
    assert json.loads((tmp_path / "model_index.json").read_text())["vae"] == [None, None]
    loaded = SiTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.vae is None
    torch.manual_seed(0)
    np.testing.assert_array_equal(loaded(**pipeline_inputs())[0], out)


@pytest.mark.parametrize("device", DEVICES)
def test_pipeline_to_device(device: str) -> None:
    """test_to_device: ``pipe.to(device)`` moves every module component; ``device`` / ``_execution_device``
    follow; the output has no NaN."""
    pipe = make_pipe()
    pipe.to("cpu")
    assert all(c.device.type == "cpu" for c in pipe.components.values() if hasattr(c, "device"))
    pipe.to(device)
    assert all(c.device.type == device for c in pipe.components.values() if hasattr(c, "device"))
    assert pipe.device.type == device and pipe._execution_device.type == device
    out = pipe(**pipeline_inputs(device=device))[0]
    assert not np.isnan(out).any()


def test_pipeline_to_dtype() -> None:
    """test_to_dtype: float32 at construction; ``pipe.to(dtype=torch.float16)`` casts every module component
    (the sampler has no weights) and ``pipe.dtype`` follows."""
    pipe = make_pipe()
    assert all(c.dtype == torch.float32 for c in pipe.components.values() if hasattr(c, "dtype"))
    pipe.to(dtype=torch.float16)
    dtypes = {name: c.dtype for name, c in pipe.components.items() if hasattr(c, "dtype")}
    assert set(dtypes) == {"transformer", "vae"} and set(dtypes.values()) == {torch.float16}
    assert pipe.dtype == torch.float16


@pytest.mark.parametrize("device,dtype", [("cpu", torch.bfloat16), pytest.param("cuda", torch.float16, marks=CUDA)])
def test_pipeline_half_precision_inference(pipe_output, device: str, dtype) -> None:
    """test_float16_inference (float16 on CUDA; bfloat16 on the CPU): cosine distance to the float32 images
    below diffusers' 5e-2."""
    pipe = make_pipe()
    pipe.to(device, dtype)
    out = pipe(**pipeline_inputs(device=device))[0].astype(np.float64).ravel()
    ref = pipe_output.astype(np.float64).ravel()
    distance = 1.0 - out @ ref / (np.linalg.norm(out) * np.linalg.norm(ref))
    assert distance < 5e-2


def test_pipeline_save_load_float16(tmp_path: Path) -> None:
    """test_save_load_float16 (dtypes; the float16 run itself needs an accelerator, bfloat16 is run above):
    a float16 pipeline saved and loaded with ``dtype=torch.float16`` keeps every component in float16 and
    gives the same latents."""
    pipe = make_pipe()
    pipe.to(dtype=torch.float16)
    pipe.save_pretrained(tmp_path)
    loaded = SiTPipeline.from_pretrained(tmp_path, dtype=torch.float16)
    loaded.set_progress_bar_config(disable=True)
    for name, component in loaded.components.items():
        if hasattr(component, "dtype"):
            assert component.dtype == torch.float16, name
    kw = {**pipeline_inputs(), "output_type": "latent"}
    a = pipe(**kw)[0]
    b = loaded(**{**kw, "generator": torch.Generator().manual_seed(0)})[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_pipeline_attention_slicing_keeps_the_output(pipe_output) -> None:
    """test_attention_slicing_forward_pass: ``enable_attention_slicing`` (sizes 1 and 2) and
    ``disable_attention_slicing`` leave the images unchanged. For SiT it is a no-op (no component has
    ``set_attention_slice``; see design.md)."""
    pipe = make_pipe()
    for size in (1, 2):
        pipe.enable_attention_slicing(slice_size=size)
        np.testing.assert_array_equal(pipe(**pipeline_inputs())[0], pipe_output)
    pipe.disable_attention_slicing()
    np.testing.assert_array_equal(pipe(**pipeline_inputs())[0], pipe_output)


@pytest.mark.parametrize("device", DEVICES)
def test_pipeline_model_cpu_offload_and_maybe_free_model_hooks(pipe_output, device: str) -> None:
    """test_model_cpu_offload_forward_pass / test_cpu_offload_forward_pass_twice, with the offload target the
    CPU itself (diffusers needs an explicit ``device`` for that) or CUDA: every module in
    ``model_cpu_offload_seq`` gets a ``CpuOffload`` hook, sits on the CPU between calls, the images are the same
    twice in a row, and ``__call__`` ends with ``maybe_free_model_hooks`` (which re-arms the hooks)."""
    import accelerate

    pipe = make_pipe()
    calls = []
    original = pipe.maybe_free_model_hooks
    pipe.maybe_free_model_hooks = lambda: calls.append(1) or original()
    pipe.enable_model_cpu_offload(device=device)
    assert pipe._execution_device.type == device
    first = pipe(**pipeline_inputs())[0]
    second = pipe(**pipeline_inputs())[0]
    assert len(calls) == 2
    offloaded = {k: v for k, v in pipe.components.items()
                 if isinstance(v, torch.nn.Module) and k not in pipe._exclude_from_cpu_offload}
    assert set(offloaded) == set(pipe.model_cpu_offload_seq.split("->"))
    assert all(v.device.type == "cpu" for v in offloaded.values())
    assert all(isinstance(getattr(v, "_hf_hook", None), accelerate.hooks.CpuOffload) for v in offloaded.values())
    np.testing.assert_allclose(first, second, rtol=0, atol=2e-4)
    np.testing.assert_allclose(first, pipe_output, rtol=0, atol=2e-4)


@CUDA
def test_pipeline_sequential_cpu_offload(pipe_output) -> None:
    """test_sequential_cpu_offload_forward_pass: every module component is on the meta device with an
    ``AlignDevicesHook``; the images are the same (1e-4). CUDA only: accelerate cannot offload sequentially
    onto the CPU itself (``DiTPipeline`` fails there the same way, a ``TypeError`` in ``post_forward``)."""
    import accelerate

    device = "cuda"
    pipe = make_pipe()
    pipe.enable_sequential_cpu_offload(device=device)
    assert pipe._execution_device.type == device
    out = pipe(**pipeline_inputs())[0]
    np.testing.assert_allclose(out, pipe_output, rtol=0, atol=1e-4)
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and name not in pipe._exclude_from_cpu_offload:
            assert module.device.type == "meta", name
            hook = module._hf_hook
            hooks = hook.hooks if isinstance(hook, accelerate.hooks.SequentialHook) else [hook]
            assert all(isinstance(h, accelerate.hooks.AlignDevicesHook) for h in hooks), name


def test_pipeline_level_group_offloading(pipe_output) -> None:
    """test_pipeline_level_group_offloading_sanity_checks / _inference, with the CPU as the onload device:
    ``pipe.enable_group_offload`` hooks the transformer (the excluded VAE keeps none) and the images stay."""
    pipe = make_pipe()
    pipe.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                              offload_type="leaf_level", exclude_modules="vae")
    hooked = [m for m in pipe.transformer.modules() if hasattr(m, "_diffusers_hook")]
    assert hooked and all(m._diffusers_hook.get_hook("group_offloading") is not None for m in hooked)
    assert not any(hasattr(m, "_diffusers_hook") for m in pipe.vae.modules())
    np.testing.assert_allclose(pipe(**pipeline_inputs())[0], pipe_output, rtol=0, atol=1e-4)


def test_pipeline_pt_np_pil_outputs_equivalent() -> None:
    """PipelineLatentTesterMixin.test_pt_np_pil_outputs_equivalent: ``"pt"`` (N, C, H, W), ``"np"``
    (N, H, W, C) and ``"pil"`` give the same images (PIL rounded to 8 bits)."""
    pipe = make_pipe()
    as_pt = pipe(**{**pipeline_inputs(), "output_type": "pt"})[0]
    as_np = pipe(**{**pipeline_inputs(), "output_type": "np"})[0]
    as_pil = pipe(**{**pipeline_inputs(), "output_type": "pil"})[0]
    np.testing.assert_allclose(to_np(as_pt).transpose(0, 2, 3, 1), as_np, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(as_pil[0]) / 255.0, as_np[0], rtol=0, atol=1 / 255 + 1e-4)


def test_pipeline_latents_input(pipe_output) -> None:
    """PipelineLatentTesterMixin.test_latents_input, for the initial noise: ``latents=`` drawn as the
    pipeline draws them (``randn_tensor`` with the same generator, times ``init_noise_sigma``) give the
    images of ``generator=`` alone."""
    from diffusers.utils.torch_utils import randn_tensor

    pipe = make_pipe()
    cfg = pipe.transformer.config
    shape = (1, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    latents = randn_tensor(shape, generator=torch.Generator().manual_seed(0)) * pipe.scheduler.init_noise_sigma
    out = pipe(**{**pipeline_inputs(), "generator": None, "latents": latents})[0]
    np.testing.assert_allclose(out, pipe_output, rtol=0, atol=1e-6)


def test_pipeline_cfg() -> None:
    """test_cfg: guidance 1.0 and 7.5 give images of one shape (and, here, different images)."""
    pipe = make_pipe()
    no_cfg = pipe(**{**pipeline_inputs(), "guidance_scale": 1.0})[0]
    cfg = pipe(**{**pipeline_inputs(), "guidance_scale": 7.5})[0]
    assert cfg.shape == no_cfg.shape and np.abs(cfg - no_cfg).max() > 1e-3


@pytest.mark.parametrize("preset", ["ode-euler", "ode-heun", "sde-euler"])
def test_pipeline_callback_inputs(preset: str) -> None:
    """test_callback_inputs: the callback gets exactly the requested tensors among ``_callback_tensor_inputs``,
    and latents it replaces at the last step are the output (zeros in, zeros out)."""
    pipe = make_pipe()
    pipe.set_sampler(preset)
    assert pipe._callback_tensor_inputs == ["latents"]
    inputs = {**pipeline_inputs(), "output_type": "latent"}

    def callback_inputs_subset(pipe, i, t, callback_kwargs):
        assert set(callback_kwargs) <= set(pipe._callback_tensor_inputs)
        return callback_kwargs

    def callback_inputs_all(pipe, i, t, callback_kwargs):
        assert set(callback_kwargs) == set(pipe._callback_tensor_inputs)
        return callback_kwargs

    pipe(**inputs, callback_on_step_end=callback_inputs_subset, callback_on_step_end_tensor_inputs=["latents"])
    pipe(**inputs, callback_on_step_end=callback_inputs_all,
         callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)

    def callback_inputs_change_tensor(pipe, i, t, callback_kwargs):
        if i == pipe.num_timesteps - 1:
            callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
        return callback_kwargs

    output = pipe(**inputs, callback_on_step_end=callback_inputs_change_tensor,
                  callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)[0]
    assert output.abs().sum() == 0


def test_pipeline_callback_cfg() -> None:
    """test_callback_cfg: a callback that raises ``pipe._guidance_scale`` by 1 every step leaves
    ``pipe.guidance_scale == guidance_scale + pipe.num_timesteps``."""
    pipe = make_pipe()

    def callback_increase_guidance(pipe, i, t, callback_kwargs):
        pipe._guidance_scale += 1.0
        return callback_kwargs

    pipe(**{**pipeline_inputs(), "guidance_scale": 2.0}, callback_on_step_end=callback_increase_guidance,
         callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    assert pipe.num_timesteps == pipeline_inputs()["num_inference_steps"]
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps


def test_pipeline_serialization_and_loading_with_variants(tmp_path: Path) -> None:
    """test_serialization_with_variants / test_loading_with_variants /
    test_loading_with_incorrect_variants_raises_error."""
    pipe = make_pipe()
    pipe.save_pretrained(tmp_path / "v", variant="fp16", safe_serialization=False)
    index = json.loads((tmp_path / "v" / "model_index.json").read_text())
    for name in ("transformer", "vae"):
        assert name in index
        assert any(p.name.split(".")[1].startswith("fp16") for p in (tmp_path / "v" / name).iterdir()), name
    loaded = SiTPipeline.from_pretrained(tmp_path / "v", variant="fp16")
    for name in ("transformer", "vae"):
        ours, theirs = dict(getattr(pipe, name).named_parameters()), dict(getattr(loaded, name).named_parameters())
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    pipe.save_pretrained(tmp_path / "plain", safe_serialization=False)
    with pytest.raises(ValueError, match="You are trying to load the model files of the `variant=fp16`"):
        SiTPipeline.from_pretrained(tmp_path / "plain", variant="fp16")


def test_pipeline_dtype_dict_and_alias(tmp_path: Path) -> None:
    """test_dtype_dict / test_dtype_alias: ``dtype`` per component (with a ``"default"``) or one for all."""
    make_pipe().save_pretrained(tmp_path, safe_serialization=False)
    per_component = SiTPipeline.from_pretrained(tmp_path, dtype={"transformer": torch.bfloat16,
                                                                 "default": torch.float16})
    assert per_component.transformer.dtype == torch.bfloat16 and per_component.vae.dtype == torch.float16
    one = SiTPipeline.from_pretrained(tmp_path, dtype=torch.float16)
    assert one.transformer.dtype == torch.float16 and one.vae.dtype == torch.float16


def test_pipeline_with_device_map(tmp_path: Path, pipe_output) -> None:
    """test_pipeline_with_accelerator_device_map (the device is the CPU here): the same images."""
    make_pipe().save_pretrained(tmp_path)
    loaded = SiTPipeline.from_pretrained(tmp_path, device_map="cpu")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(loaded(**pipeline_inputs())[0], pipe_output, rtol=0, atol=1e-4)


def test_pipeline_from_pipe(pipe_output) -> None:
    """PipelineFromPipeTesterMixin for SiT itself: ``from_pipe`` shares the modules without copying them, keeps
    the config (class names, defaults), takes a replacement component, and leaves the original's output
    unchanged."""
    pipe = make_pipe()
    pipe.register_to_config(default_guidance_scale=1.5)
    same = SiTPipeline.from_pipe(pipe)
    same.set_progress_bar_config(disable=True)
    assert same.transformer is pipe.transformer and same.vae is pipe.vae
    assert {k: v for k, v in same.config.items() if not k.startswith("_")} == {
        k: v for k, v in pipe.config.items() if not k.startswith("_")
    }
    np.testing.assert_array_equal(same(**pipeline_inputs())[0], pipe(**pipeline_inputs())[0])
    heun = SiTPipeline.from_pipe(pipe, scheduler=SiTSampler.from_preset("ode-heun"))
    assert heun.scheduler.config.solver == "heun" and pipe.scheduler.config.solver == "euler"
    assert heun.transformer is pipe.transformer
    pipe.register_to_config(default_guidance_scale=None)
    np.testing.assert_array_equal(pipe(**pipeline_inputs())[0], pipe_output)


def test_pipeline_progress_bar_config() -> None:
    """``set_progress_bar_config`` reaches the bar: ``disable=True`` writes nothing, enabled it writes."""
    pipe = make_pipe()
    stream = io.StringIO()
    pipe.set_progress_bar_config(file=stream, disable=True)
    pipe(**pipeline_inputs())
    assert stream.getvalue() == ""
    pipe.set_progress_bar_config(file=stream, disable=False, mininterval=0)
    pipe(**pipeline_inputs())
    assert "2/2" in stream.getvalue()


def test_pipeline_model_index_serialization_has_no_machine_paths(tmp_path: Path) -> None:
    """The saved ``model_index.json`` and every component config name classes, not places: after a save, a
    load and a second save, no JSON file holds the folders it came from, the home folder or
    ``_name_or_path``; every component entry is a ``[library, class]`` pair (``[null, null]`` for a missing
    optional one)."""
    make_pipe().save_pretrained(tmp_path / "first")
    loaded = SiTPipeline.from_pretrained(tmp_path / "first")
    loaded.save_pretrained(tmp_path / "second")
    forbidden = [str(tmp_path), str(tmp_path.resolve()), os.path.expanduser("~"), "_name_or_path"]
    for folder in (tmp_path / "first", tmp_path / "second"):
        texts = json_texts(folder)
        assert "model_index.json" in texts and "transformer/config.json" in texts
        for name, text in texts.items():
            for bad in forbidden:
                assert bad not in text, f"{folder.name}/{name} holds {bad!r}"
        index = json.loads(texts["model_index.json"])
        assert index["_class_name"] == "SiTPipeline" or index["_class_name"][-1] == "SiTPipeline"
        for name in ("transformer", "scheduler", "vae"):
            library, class_name = index[name]
            assert isinstance(library, str) and isinstance(class_name, str), (name, index[name])
            assert os.sep not in library and not os.path.isabs(library), (name, library)
        assert index["transformer"][1] == "SiTTransformer2DModel" and index["scheduler"][1] == "SiTSampler"
