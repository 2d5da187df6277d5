"""The Space checks what it is given before any work (issue 12): a table of bad inputs, each refused with
one ``gr.Error`` naming the control and the value, and no work started.

The handler ``SiTDemo.generate`` is called directly (what gradio calls for the page and for the API; the
API transport itself is covered by ``tests/test_space.py``) on a stand-in pipeline that counts its calls,
under a stand-in ``spaces`` package that counts ZeroGPU allocations. Fast: no server, no browser, no model
but one 2-block 8x8 transformer for the NaN case.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import SPACE_GENERATE_ARGS, fake_spaces_module, load_script
from PIL import Image

gr = pytest.importorskip("gradio", reason="the Space needs gradio (pip install -e '.[dev]')")

from sit_diffusers.scheduling_sit import SiTSampler  # noqa: E402
from sit_diffusers.validation import InputError, NonFiniteError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_PATH = REPO_ROOT / "spaces" / "app.py"
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ID2LABEL = dict(enumerate(NAMES))

GPU_CALLS: list[int] = []  # one entry per ZeroGPU allocation (the stand-in spaces.GPU below)
_LOADS = itertools.count()


def _fake_spaces() -> types.ModuleType:
    return fake_spaces_module(GPU_CALLS)


def load_app(env: dict[str, str] | None = None, fake_spaces: bool = True) -> types.ModuleType:
    """Import ``spaces/app.py`` afresh (under ZeroGPU's stand-in unless ``fake_spaces=False``)."""
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    saved_spaces = sys.modules.get("spaces")
    os.environ.update(env or {})
    if fake_spaces:
        sys.modules["spaces"] = _fake_spaces()
    try:
        name = f"sit_space_app_inputs_{next(_LOADS)}"
        spec = importlib.util.spec_from_file_location(name, APP_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
        return module
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if fake_spaces:
            if saved_spaces is None:
                sys.modules.pop("spaces", None)
            else:
                sys.modules["spaces"] = saved_spaces


APP = load_app()
MAX_STEPS, MAX_IMAGES, MAX_SEED = APP.MAX_STEPS, APP.MAX_IMAGES, APP.MAX_SEED


class CountingPipe:
    """Stands in for ``SiTPipeline``: records every call that would start work, returns grey images."""

    def __init__(self, class_dropout_prob: float = 0.1, error: BaseException | None = None) -> None:
        config = types.SimpleNamespace(num_classes=10, class_dropout_prob=class_dropout_prob)
        self.transformer = types.SimpleNamespace(config=config)
        self.scheduler = SiTSampler.from_preset("ode-heun")
        self.id2label = ID2LABEL
        self.calls: list[dict] = []
        self.samplers: list = []
        self.error = error

    def set_sampler(self, sampler) -> None:
        self.samplers.append(sampler)
        self.scheduler = sampler

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        images = [Image.new("RGB", (8, 8), (128, 128, 128)) for _ in kwargs["class_labels"]]
        return types.SimpleNamespace(images=images, nfe=2 * kwargs["num_inference_steps"])


GOOD = SPACE_GENERATE_ARGS


def call(demo, **overrides):
    unknown = set(overrides) - set(GOOD)
    assert not unknown, unknown
    return demo.generate(*{**GOOD, **overrides}.values())


@pytest.fixture
def demo():
    GPU_CALLS.clear()
    return APP.SiTDemo(CountingPipe(), "stand-in", "cpu")


def assert_no_work(demo) -> None:
    assert demo.pipe.calls == [], "the pipeline was called"
    assert demo.pipe.samplers == [], "the sampler was swapped"
    assert GPU_CALLS == [], "a ZeroGPU GPU was attached"


#################################################################################
#                         The table of bad requests                             #
#################################################################################

NAN, INF = float("nan"), float("inf")

# (overrides, text the message must hold: the control, the value as given, what is allowed)
BAD_REQUESTS = [
    # classes
    ({"classes": []}, "Pick at least one class."),
    ({"classes": None}, "Pick at least one class."),
    ({"classes": ""}, "Pick at least one class."),
    ({"classes": ["12"]}, "Class id 12 is out of range: this model has 10 classes"),
    ({"classes": [-1]}, "Class id -1 is out of range"),
    ({"classes": ["sevn"]}, "Unknown class name 'sevn'. Nearest names: 'seven'"),
    ({"classes": [3.5]}, "Class label 3.5 has type float, expected int or str"),
    ({"classes": [True]}, "Class label True is a bool"),
    ({"classes": {"3": 1}}, "Classes must be a list of class ids or names, got {'3': 1}."),
    ({"classes": ["x" * 100_000]}, "Class name 'xxxxx"),
    ({"classes": ["3"] * 10_000}, f"Pick at most {max(10, MAX_IMAGES)} classes, got 10000."),
    # number of images
    ({"num_images": 0}, f"Number of images must be a whole number between 1 and {MAX_IMAGES}, got 0."),
    ({"num_images": 2.7}, f"Number of images must be a whole number between 1 and {MAX_IMAGES}, got 2.7."),
    ({"num_images": "4"}, f"Number of images must be a whole number between 1 and {MAX_IMAGES}, got '4'."),
    ({"num_images": None}, f"Number of images must be a whole number between 1 and {MAX_IMAGES}, got None."),
    ({"num_images": NAN}, f"Number of images must be a whole number between 1 and {MAX_IMAGES}, got nan."),
    ({"num_images": 10**9}, f"Number of images must be a whole number between 1 and {MAX_IMAGES}, got 1000000000."),
    # sampler mode and solver
    ({"mode": "DDIM"}, "Sampler mode must be one of ODE, SDE, got 'DDIM'."),
    ({"mode": "sdee"}, "Sampler mode must be one of ODE, SDE, got 'sdee'. Did you mean 'SDE'?"),
    ({"mode": None}, "Sampler mode must be one of ODE, SDE, got None."),
    ({"mode": "SDE", "solver": "dopri5"}, "Solver 'dopri5' is not available for SDE; choose one of euler, heun."),
    ({"solver": "huen"}, "Solver 'huen' is not available for ODE; choose one of euler, heun, dopri5, ab3, abm4. "
                         "Did you mean 'heun'?"),  # fmt: skip
    ({"solver": 2}, "Solver 2 is not available for ODE"),
    # steps
    ({"steps": -5}, f"Steps must be a whole number between 1 and {MAX_STEPS}, got -5."),
    ({"steps": 0}, f"Steps must be a whole number between 1 and {MAX_STEPS}, got 0."),
    ({"steps": 2.7}, f"Steps must be a whole number between 1 and {MAX_STEPS}, got 2.7."),
    ({"steps": "25"}, f"Steps must be a whole number between 1 and {MAX_STEPS}, got '25'."),
    ({"steps": INF}, f"Steps must be a whole number between 1 and {MAX_STEPS}, got inf."),
    ({"steps": 10**6}, f"Steps must be a whole number between 1 and {MAX_STEPS}, got 1000000."),
    ({"steps": True}, f"Steps must be a whole number between 1 and {MAX_STEPS}, got True."),
    # guidance
    ({"guidance_scale": NAN}, "Guidance scale must be a number between 1 and 20, got nan."),
    ({"guidance_scale": -INF}, "Guidance scale must be a number between 1 and 20, got -inf."),
    ({"guidance_scale": "4"}, "Guidance scale must be a number between 1 and 20, got '4'."),
    ({"guidance_scale": 0.5}, "Guidance scale must be a number between 1 and 20, got 0.5."),
    ({"guidance_scale": 1e6}, "Guidance scale must be a number between 1 and 20, got 1000000.0."),
    ({"interval_start": 0.8, "interval_end": 0.2}, "Guidance interval must satisfy 0 <= start <= end <= 1, "
                                                   "got [0.8, 0.2]."),  # fmt: skip
    ({"interval_start": -0.1}, "Guidance interval start must be a number between 0 and 1, got -0.1."),
    ({"interval_end": 1.5}, "Guidance interval end must be a number between 0 and 1, got 1.5."),
    ({"interval_end": NAN}, "Guidance interval end must be a number between 0 and 1, got nan."),
    # SDE diffusion
    ({"diffusion_form": "inccreasing-decreasing"}, "got 'inccreasing-decreasing'. "
                                                   "Did you mean 'increasing-decreasing'?"),  # fmt: skip
    ({"diffusion_form": 3}, "Diffusion form must be one of sigma, constant, SBDM, linear, decreasing, "
                            "increasing-decreasing, got 3."),  # fmt: skip
    ({"diffusion_norm": -1.0}, "Diffusion norm must be a number between 0 and 10, got -1.0."),
    ({"diffusion_norm": NAN}, "Diffusion norm must be a number between 0 and 10, got nan."),
    ({"diffusion_norm": INF}, "Diffusion norm must be a number between 0 and 10, got inf."),
    ({"diffusion_norm": "1"}, "Diffusion norm must be a number between 0 and 10, got '1'."),
    # seed
    ({"seed": -1}, f"Seed must be a whole number between 0 and {MAX_SEED}, got -1."),
    ({"seed": 2**63 + 1}, f"Seed must be a whole number between 0 and {MAX_SEED}, got {2**63 + 1}."),
    ({"seed": 2.5}, f"Seed must be a whole number between 0 and {MAX_SEED}, got 2.5."),
    ({"seed": "7"}, f"Seed must be a whole number between 0 and {MAX_SEED}, got '7'."),
    ({"seed": NAN}, f"Seed must be a whole number between 0 and {MAX_SEED}, got nan."),
    ({"randomize_seed": "yes"}, "Randomize seed must be true or false, got 'yes'."),
    ({"randomize_seed": None}, "Randomize seed must be true or false, got None."),
]


def _case_id(case) -> str:
    overrides = case[0]
    return ",".join(f"{k}={repr(v)[:20]}" for k, v in overrides.items())


@pytest.mark.parametrize(("overrides", "message"), BAD_REQUESTS, ids=[_case_id(c) for c in BAD_REQUESTS])
def test_bad_request_is_refused_before_any_work(demo, overrides, message):
    with pytest.raises(APP.RequestError) as err:
        call(demo, **overrides)
    assert isinstance(err.value, gr.Error)  # gradio shows its message on the page and to the API caller
    assert message in err.value.message, err.value.message
    assert len(err.value.message) < 400  # one sentence, even for a 100,000-character class name
    assert "Traceback" not in err.value.message
    assert err.value.print_exception is False  # expected: no stack trace in the server log either
    assert_no_work(demo)


def test_the_table_is_large_and_the_stand_in_counts_work(demo):
    assert len(BAD_REQUESTS) >= 20
    # the same handler with good values does start the work, once: the counters above can see it
    images, info, seed = call(demo, mode="sde", solver="HEUN", diffusion_form="sbdm", num_images=3)
    assert len(demo.pipe.calls) == 1 and len(GPU_CALLS) == 1 and len(images) == 3
    assert demo.pipe.samplers[0].config["mode"] == "sde" and demo.pipe.samplers[0].config["diffusion_form"] == "SBDM"
    assert demo.pipe.scheduler is demo._base_scheduler  # the model's own sampler is restored


def test_integral_floats_pass_and_randomize_ignores_the_seed(demo):
    """JSON clients may send ``4.0`` for 4; with randomize on, the seed given is not used nor checked."""
    images, _, seed = call(demo, num_images=2.0, steps=6.0, seed=None, randomize_seed=True, classes="seven")
    assert len(images) == 2 and 0 <= seed <= MAX_SEED
    assert demo.pipe.calls[0]["num_inference_steps"] == 6 and demo.pipe.calls[0]["class_labels"] == [7, 7]


def test_a_model_without_a_null_class_cannot_be_guided():
    GPU_CALLS.clear()
    demo = APP.SiTDemo(CountingPipe(class_dropout_prob=0.0), "no-null", "cpu")
    with pytest.raises(APP.RequestError, match=r"between 1 and 1 \(this model has no null class.*got 4\."):
        call(demo, guidance_scale=4.0)
    assert_no_work(demo)
    assert demo.defaults()["guidance_scale"] == 1.0
    assert all(row[5] == 1.0 for row in demo.example_rows())  # every example stays valid
    call(demo)  # guidance 1 runs


#################################################################################
#                    Failures inside the pipeline (after the door)               #
#################################################################################


def test_nan_result_becomes_a_clear_error_not_a_black_image():
    GPU_CALLS.clear()
    error = NonFiniteError("final latents holds 64 non-finite value(s) (NaN/inf) of 192 (in sample(s) [0])")
    demo = APP.SiTDemo(CountingPipe(error=error), "stand-in", "cpu")
    with pytest.raises(gr.Error) as err:
        call(demo, guidance_scale=4.0)
    assert not isinstance(err.value, APP.RequestError)  # the request was fine: not "Invalid input"
    assert err.value.title == "Generation failed"
    assert "NaN/inf" in err.value.message and "final latents holds 64 non-finite" in err.value.message
    assert demo.pipe.scheduler is demo._base_scheduler


@pytest.mark.parametrize(
    "bug",
    [RuntimeError("CUDA error: an illegal memory access"), ValueError("shapes do not match"),
     TypeError("unexpected keyword"), InputError("num_inference_steps must be >= 1, got 0")],
    ids=["RuntimeError", "ValueError", "TypeError", "InputError"],
)  # fmt: skip
def test_internal_errors_are_not_disguised_as_user_errors(bug):
    """After validation any exception is a bug (even a pipeline InputError: the door missed a case): it keeps
    its type and traceback, so gradio logs it and the page says only "Error"."""
    demo = APP.SiTDemo(CountingPipe(error=bug), "stand-in", "cpu")
    with pytest.raises(type(bug)) as err:
        call(demo)
    assert err.value is bug and not isinstance(err.value, gr.Error)
    assert demo.pipe.scheduler is demo._base_scheduler


def test_a_real_pipeline_with_nan_weights_gives_the_error():
    """End to end with a 2-block transformer whose weights are NaN: the pipeline's NonFiniteError reaches the
    page as "Generation failed"."""
    from sit_diffusers import pipeline_sit
    from sit_diffusers.modeling_sit import SiTTransformer2DModel

    torch.manual_seed(0)
    transformer = SiTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2, mlp_ratio=2.0,
        class_dropout_prob=0.1, num_classes=10, learn_sigma=False,
    )  # fmt: skip
    with torch.no_grad():
        for p in transformer.final_layer.parameters():
            p.fill_(float("nan"))
    pipe = pipeline_sit.SiTPipeline(transformer, SiTSampler.from_preset("ode-euler"), id2label=ID2LABEL)
    pipe.set_progress_bar_config(disable=True)
    demo = APP.SiTDemo(pipe, "nan", "cpu")
    with pytest.raises(gr.Error, match="NaN/inf") as err:
        call(demo, steps=2)
    assert not isinstance(err.value, APP.RequestError) and err.value.title == "Generation failed"
    assert "non-finite" in err.value.message, err.value.message  # the pipeline's own words follow
    assert pipe.scheduler is demo._base_scheduler


#################################################################################
#                        Settings (environment variables)                       #
#################################################################################


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SIT_MAX_STEPS": "lots"}, "SIT_MAX_STEPS must be a whole number >= 1, got 'lots'"),
        ({"SIT_MAX_IMAGES": "0"}, "SIT_MAX_IMAGES must be a whole number >= 1, got 0"),
        ({"SIT_QUEUE_SIZE": "2.5"}, "SIT_QUEUE_SIZE must be a whole number >= 1, got '2.5'"),
        ({"SIT_CONCURRENCY": "-1"}, "SIT_CONCURRENCY must be a whole number >= 1, got -1"),
    ],
)
def test_bad_settings_stop_start_up_with_one_line(env, message):
    with pytest.raises(SystemExit) as err:
        load_app(env)
    assert str(err.value) == message


def test_bad_device_and_dtype_stop_start_up_before_loading(monkeypatch):
    from sit_diffusers.pipeline_sit import SiTPipeline

    plain = load_app(fake_spaces=False)
    monkeypatch.setenv("SIT_DEVICE", "gpu0")
    with pytest.raises(SystemExit, match="SIT_DEVICE 'gpu0' is not a torch device"):
        plain.pick_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("SIT_DEVICE", "cuda")
        with pytest.raises(SystemExit, match="SIT_DEVICE 'cuda': CUDA is not available"):
            plain.pick_device()
    monkeypatch.setenv("SIT_DEVICE", "cpu")
    assert plain.pick_device() == "cpu"
    monkeypatch.setenv("SIT_DEVICE", "cuda")  # under ZeroGPU the GPU comes per call: spelling only
    assert APP.pick_device() == "cuda"

    loads = []
    monkeypatch.setattr(SiTPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a)))
    with pytest.raises(SystemExit, match="SIT_DTYPE must be one of float32, float16, bfloat16, got 'float64'"):
        plain.load_pipeline("/nowhere", "cpu", "float64")
    assert loads == []


#################################################################################
#                   spaces/build_space.py (it replaces --out)                   #
#################################################################################


def _build_space():
    return load_script("spaces/build_space.py", "build_space_inputs")


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "{tmp}/notes.txt"], "--out '{tmp}/notes.txt': '{tmp}/notes.txt' exists and is not a folder"),
        (["--out", "{tmp}/clone"], "--out '{tmp}/clone' holds files that are not an earlier build (.git, data)"),
        (["--out", "{repo}"], "--out '{repo}' is the repository or a folder above it"),
        (["--out", "{repo}/.."], "--out '{repo}/..' is the repository or a folder above it"),
        (["--out", "{repo}/src/space"], "--out '{repo}/src/space' is inside src/"),
        (["--out", "{tmp}/new", "--upload", "bad id!!"], "--upload 'bad id!!' is not a Hub repo id"),
        (["--out", "{tmp}/new", "--upload", "a/b/c"], "--upload 'a/b/c' is not a Hub repo id"),
        (["--out", "{tmp}/new", "--token", " "], "--token is empty"),
    ],
    ids=["file", "foreign-folder", "repo", "above-repo", "in-sources", "repo-id", "repo-id-depth", "token"],
)
def test_build_space_refuses_bad_arguments_and_writes_nothing(tmp_path, capsys, argv, message):
    build = _build_space()
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "clone" / ".git").mkdir(parents=True)
    (tmp_path / "clone" / "data").write_text("keep me")
    subs = {"{tmp}": str(tmp_path), "{repo}": str(REPO_ROOT)}

    def fill(text: str) -> str:
        for key, value in subs.items():
            text = text.replace(key, value)
        return text

    before, repo_before = _snapshot(tmp_path), _snapshot(REPO_ROOT / "spaces")
    assert build.main([fill(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("build_space.py: error: ") and fill(message) in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before and _snapshot(REPO_ROOT / "spaces") == repo_before
    assert not (REPO_ROOT / "src" / "space").exists()


def test_build_space_replaces_an_earlier_build(tmp_path, capsys):
    build = _build_space()
    out = tmp_path / "space"
    assert build.main(["--out", str(out)]) == 0
    (out / "app.py").write_text("stale")
    assert build.main(["--out", str(out)]) == 0  # an earlier build is replaced
    assert (out / "app.py").read_text() == (REPO_ROOT / "spaces" / "app.py").read_text()
    assert f"assembled {out}" in capsys.readouterr().out
