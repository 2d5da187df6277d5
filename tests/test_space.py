"""The Gradio Space (``spaces/app.py``): validation, the API through ``gradio_client``, a real browser,
concurrency, and no network traffic beyond localhost.

One server is started for the module, as a user would start it (``python spaces/app.py``), on a free
localhost port with a tiny random SiT pipeline folder as ``SIT_MODEL``. A ``sitecustomize`` put on its
``PYTHONPATH`` refuses and records every connection / DNS lookup that is not to the loopback, so the
last test can assert that the Space fetched nothing from start-up to the end.

The browser test drives Debian's ``/usr/bin/chromium`` with the Playwright python package (installed by
``.ci/install_browser.sh``; Playwright's own browser download is never used). Its screenshot is saved in
``$SIT_ARTIFACTS_DIR`` (default ``/tmp/sit-diffusers-artifacts``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SPACE_GENERATE_ARGS, fake_spaces_module, load_script
from PIL import Image

gr = pytest.importorskip("gradio", reason="the Space needs gradio (pip install -e '.[dev]')")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from sit_diffusers.modeling_sit import SiTTransformer2DModel  # noqa: E402
from sit_diffusers.pipeline_sit import SiTPipeline  # noqa: E402
from sit_diffusers.scheduling_sit import SiTSampler  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_PATH = REPO_ROOT / "spaces" / "app.py"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SIT_ARTIFACTS_DIR", Path(tempfile.gettempdir()) / "sit-diffusers-artifacts"))

# Caps the test server runs with (small, so the tests can cross them cheaply).
MAX_STEPS, MAX_IMAGES, QUEUE_SIZE = 40, 4, 4
DIGITS = {i: str(i) for i in range(10)}

# Positional order of the /generate endpoint.
DEFAULT_ARGS = SPACE_GENERATE_ARGS


def generate_args(**overrides) -> list:
    unknown = set(overrides) - set(DEFAULT_ARGS)
    assert not unknown, unknown
    return list({**DEFAULT_ARGS, **overrides}.values())


def load_app(fake_spaces: types.ModuleType | None = None) -> types.ModuleType:
    """Import ``spaces/app.py`` as a fresh module (optionally with a stand-in ``spaces`` package)."""
    saved = sys.modules.get("spaces")
    if fake_spaces is not None:
        sys.modules["spaces"] = fake_spaces
    try:
        name = f"sit_space_app_{id(fake_spaces)}"
        spec = importlib.util.spec_from_file_location(name, APP_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    finally:
        if fake_spaces is not None:
            if saved is None:
                sys.modules.pop("spaces", None)
            else:
                sys.modules["spaces"] = saved
    return module


#################################################################################
#                                  Fixtures                                     #
#################################################################################


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A saved 10-class pixel-space SiT pipeline (8x8 RGB, 2 blocks, random weights), no VAE."""
    torch.manual_seed(0)
    transformer = SiTTransformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=3,
        hidden_size=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2.0,
        class_dropout_prob=0.1,
        num_classes=10,
        learn_sigma=False,
    )
    # Random weights with a zero-initialised final layer would give flat grey images: make them visible.
    with torch.no_grad():
        for p in transformer.final_layer.parameters():
            p.normal_(0.0, 0.5)
    pipe = SiTPipeline(transformer, SiTSampler.from_preset("ode-heun"), id2label=DIGITS)
    folder = tmp_path_factory.mktemp("tiny_sit_pipeline")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_pipe(tiny_pipeline_dir) -> SiTPipeline:
    pipe = SiTPipeline.from_pretrained(str(tiny_pipeline_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


NET_GUARD = '''
"""Test guard: refuse and record every connection / DNS lookup that is not to the loopback."""
import os, socket

_LOG = os.environ["SIT_NET_GUARD_LOG"]
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}


def _record(what):
    with open(_LOG, "a") as fh:
        fh.write(what + "\\n")


def _local(host):
    if isinstance(host, bytes):
        host = host.decode()
    return host in _LOCAL_NAMES or str(host).startswith("127.")


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def connect(self, address):
    if isinstance(address, tuple) and not _local(address[0]):
        _record(f"connect {address!r}")
        raise OSError("network access refused by the test guard")
    return _connect(self, address)


def connect_ex(self, address):
    if isinstance(address, tuple) and not _local(address[0]):
        _record(f"connect_ex {address!r}")
        return 111
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        _record(f"getaddrinfo {host!r}")
        raise socket.gaierror(socket.EAI_NONAME, "name lookup refused by the test guard")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
'''


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SpaceServer:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path, net_log: Path) -> None:
        self.proc, self.url, self.log, self.net_log = proc, url, log, net_log

    def alive(self) -> bool:
        return self.proc.poll() is None

    def page_ok(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False



@pytest.fixture(scope="module")
def server(tiny_pipeline_dir, tmp_path_factory):
    """``python spaces/app.py`` on a free localhost port with the tiny model, behind the network guard."""
    work = tmp_path_factory.mktemp("space_server")
    (work / "guard").mkdir()
    (work / "guard" / "sitecustomize.py").write_text(textwrap.dedent(NET_GUARD))
    net_log, log = work / "network.log", work / "server.log"
    net_log.touch()
    port = _free_port()
    env = {
        **os.environ,
        "SIT_MODEL": str(tiny_pipeline_dir),
        "SIT_MAX_STEPS": str(MAX_STEPS),
        "SIT_MAX_IMAGES": str(MAX_IMAGES),
        "SIT_QUEUE_SIZE": str(QUEUE_SIZE),
        "SIT_CONCURRENCY": "1",
        "SIT_DEVICE": "cpu",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(work / "gradio_tmp"),
        "OMP_NUM_THREADS": "1",
        "SIT_NET_GUARD_LOG": str(net_log),
        "PYTHONPATH": os.pathsep.join([str(work / "guard"), os.environ.get("PYTHONPATH", "")]),
    }
    for key in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "http_proxy", "https_proxy"):
        env.pop(key, None)  # the app itself must switch analytics / telemetry off
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, str(APP_PATH)], cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT)
    srv = SpaceServer(proc, f"http://127.0.0.1:{port}/", log, net_log)
    deadline = time.monotonic() + 240  # importing torch + diffusers + gradio on a busy 2-core machine
    while not srv.page_ok():
        if not srv.alive():
            pytest.fail(f"the Space exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the Space did not answer within 240 s:\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    yield srv
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory) -> Client:
    return Client(server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("client_downloads")))


def read_gallery(result_gallery) -> tuple[list[np.ndarray], list[str]]:
    """gradio_client's gallery output -> (uint8 arrays, captions)."""
    images = [np.asarray(Image.open(item["image"]).convert("RGB")) for item in result_gallery]
    return images, [item["caption"] for item in result_gallery]


def reference_images(pipe: SiTPipeline, app, **kw) -> tuple[list[np.ndarray], int]:
    """The same request run in this process through the public pipeline API."""
    args = {**DEFAULT_ARGS, **kw}
    req = app.validate_request(
        *list(args.values())[:-1], num_classes=10, id2label=DIGITS, max_steps=MAX_STEPS, max_images=MAX_IMAGES
    )
    overrides = {"mode": req.mode, "solver": req.solver}
    if req.mode == "sde":
        overrides.update(diffusion_form=req.diffusion_form, diffusion_norm=req.diffusion_norm)
    base, threads = pipe.scheduler, torch.get_num_threads()
    pipe.set_sampler(SiTSampler.from_config(base.config, **overrides))
    torch.set_num_threads(1)  # as the server (OMP_NUM_THREADS=1): same reductions, same adaptive steps
    try:
        out = pipe(
            class_labels=list(req.class_ids),
            guidance_scale=req.guidance_scale,
            guidance_interval=req.guidance_interval,
            num_inference_steps=req.num_inference_steps,
            generator=[torch.Generator().manual_seed(req.seed + i) for i in range(len(req.class_ids))],
            output_type="pil",
        )
    finally:
        pipe.set_sampler(base)
        torch.set_num_threads(threads)
    return [np.asarray(im.convert("RGB")) for im in out.images], out.nfe


#################################################################################
#                          Validation (no server)                               #
#################################################################################


def test_validate_request_cycles_classes_and_normalises(app):
    req = app.validate_request(
        ["3", "7"], 5, "sde", "HEUN", 12, 2.5, 0.1, 0.9, "linear", 0.5, 42,
        num_classes=10, id2label=DIGITS,
    )  # fmt: skip
    assert req.class_ids == (3, 7, 3, 7, 3)
    assert (req.mode, req.solver, req.num_inference_steps) == ("sde", "heun", 12)
    assert req.guidance_interval == (0.1, 0.9) and req.diffusion_form == "linear" and req.seed == 42


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"classes": []}, "Pick at least one class"),
        ({"classes": ["12"]}, "out of range"),
        ({"classes": ["tree"]}, "Unknown class name 'tree'"),
        ({"num_images": 0}, "Number of images must be a whole number between 1 and 4, got 0."),
        ({"num_images": 2.5}, "Number of images must be a whole number between 1 and 4, got 2.5."),
        ({"steps": MAX_STEPS + 1}, f"Steps must be a whole number between 1 and {MAX_STEPS}, got {MAX_STEPS + 1}."),
        ({"mode": "DDIM"}, "Sampler mode must be one of ODE, SDE, got 'DDIM'."),
        ({"mode": "SDE", "solver": "dopri5"}, "not available for SDE"),
        ({"guidance_scale": 0.5}, "Guidance scale must be a number between 1 and 20, got 0.5."),
        ({"guidance_scale": float("nan")}, "Guidance scale must be a number between 1 and 20, got nan."),
        ({"interval_start": 0.8, "interval_end": 0.2}, "0 <= start <= end <= 1"),
        ({"diffusion_form": "inccreasing-decreasing"}, "Did you mean 'increasing-decreasing'?"),
        ({"seed": -1}, "Seed must be a whole number between 0"),
    ],
)
def test_validate_request_rejects_bad_values(app, override, message):
    args = {**DEFAULT_ARGS, **override}
    with pytest.raises(gr.Error, match=re.escape(message)):
        app.validate_request(
            *list(args.values())[:-1], num_classes=10, id2label=DIGITS, max_steps=MAX_STEPS, max_images=MAX_IMAGES
        )


def test_class_choices_are_searchable_by_name_and_unique(app):
    from sit_diffusers.labels import imagenet_id2label

    choices = app.class_choices(1000, imagenet_id2label())
    assert ("207: golden retriever", "207") in choices
    assert len({value for _, value in choices}) == 1000  # the two "crane" classes stay distinct
    assert app.class_choices(3, {0: "0", 1: "1", 2: "2"}) == [("0", "0"), ("1", "1"), ("2", "2")]


@pytest.mark.parametrize("num_classes", [10, 1000])
def test_every_example_row_is_a_valid_request(app, num_classes):
    """Clicking any example must fill values that generate accepts (ImageNet rows use DiT's sample classes)."""
    from sit_diffusers.labels import imagenet_id2label

    id2label = imagenet_id2label() if num_classes == 1000 else DIGITS
    pipe = types.SimpleNamespace(
        transformer=types.SimpleNamespace(config=types.SimpleNamespace(num_classes=num_classes)),
        scheduler=SiTSampler.from_preset("ode-heun"),
        id2label=id2label,
    )
    rows = app.SiTDemo(pipe, "stand-in", "cpu").example_rows()
    assert len(rows) >= 3 and {row[2] for row in rows} == {"ODE", "SDE"}
    for row in rows:
        req = app.validate_request(*row, num_classes=num_classes, id2label=id2label)
        assert len(req.class_ids) == row[1]
    if num_classes == 1000:
        assert rows[0][0] == ["207", "360"]  # golden retriever, otter


def test_controls_start_at_the_models_own_sampler(app, tiny_pipe):
    assert app.SiTDemo(tiny_pipe, "tiny", "cpu").defaults() == {
        "mode": "ODE", "solver": "heun", "steps": 25, "guidance_scale": 4.0, "diffusion_form": "sigma",
        "diffusion_norm": 1.0,
    }  # fmt: skip  (no saved guidance scale: the official 4.0)
    pipe = types.SimpleNamespace(
        transformer=tiny_pipe.transformer,
        scheduler=SiTSampler.from_preset("sde-euler", diffusion_form="linear", diffusion_norm=0.5),
        config=types.SimpleNamespace(default_num_inference_steps=10_000, default_guidance_scale=1.5),
        id2label=DIGITS,
    )
    assert app.SiTDemo(pipe, "stand-in", "cpu").defaults() == {
        "mode": "SDE", "solver": "euler", "steps": app.MAX_STEPS, "guidance_scale": 1.5,
        "diffusion_form": "linear", "diffusion_norm": 0.5,
    }  # fmt: skip


def test_model_defaults_to_the_embedded_one(app, monkeypatch):
    import sit_diffusers

    monkeypatch.delenv("SIT_MODEL", raising=False)
    monkeypatch.setattr(sit_diffusers, "DEFAULT_MODEL", Path("/pkg/data/digits"), raising=False)
    assert app.default_model_ref() == "/pkg/data/digits"
    monkeypatch.setenv("SIT_MODEL", "sit-diffusers/SiT-XL-2-256")
    assert app.default_model_ref() == "sit-diffusers/SiT-XL-2-256"


def test_unreachable_hub_model_falls_back_to_the_embedded_model(app, tiny_pipeline_dir, monkeypatch):
    import huggingface_hub.constants

    import sit_diffusers

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as a Space with no Hub access
    monkeypatch.setattr(sit_diffusers, "DEFAULT_MODEL", tiny_pipeline_dir, raising=False)
    pipe, ref, note = app.load_model("sit-diffusers/no-such-model", "cpu")
    assert ref == str(tiny_pipeline_dir) and pipe.num_classes == 10
    assert "Could not load `sit-diffusers/no-such-model` (PipelineNotFoundError)" in note
    # the requested model itself loads without a note; no model at all is a clear exit
    assert app.load_model(str(tiny_pipeline_dir), "cpu")[2] is None
    monkeypatch.delattr(sit_diffusers, "DEFAULT_MODEL")
    with pytest.raises(SystemExit, match="set SIT_MODEL"):
        app.load_model(None, "cpu")


def test_embedded_model_draws_the_digits_asked_for(app, monkeypatch):
    """With no SIT_MODEL the Space serves the shipped digit model, and its images are the chosen digits
    (judged by the package's shipped digit classifier)."""
    import sit_diffusers

    default = getattr(sit_diffusers, "DEFAULT_MODEL", None)
    if default is None or not (Path(default) / "model_index.json").is_file():
        pytest.skip("the embedded digit model is not in this checkout")
    from sit_diffusers.evaluation import conditional_accuracy, load_classifier

    monkeypatch.delenv("SIT_MODEL", raising=False)
    pipe, ref, note = app.load_model(app.default_model_ref(), "cpu")
    assert ref == str(default) and note is None
    demo = app.SiTDemo(pipe, "sit-digits", "cpu")
    n = app.MAX_IMAGES  # images cycle through the ten digits
    gallery, info, _ = demo.generate([str(d) for d in range(10)], n, "ODE", "heun", 10, 4.0, 0.0, 1.0,
                                     "sigma", 1.0, 0, False)  # fmt: skip
    images = torch.stack(
        [torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32)) for img, _ in gallery]
    )  # (n, 28, 28) in [0, 255]
    images = images[:, None] / 127.5 - 1.0  # (n, 1, 28, 28) in [-1, 1]
    assert conditional_accuracy(load_classifier(), images, torch.arange(n) % 10) >= 0.75, info


def test_zero_gpu_wraps_generate_with_spaces_gpu(tiny_pipe):
    """With the ``spaces`` package importable the generate endpoint runs through ``@spaces.GPU``."""
    calls: list[int] = []
    zero_app = load_app(fake_spaces=fake_spaces_module(calls))
    assert zero_app.pick_device() == "cuda" or os.environ.get("SIT_DEVICE")
    demo = zero_app.build_demo(zero_app.SiTDemo(tiny_pipe, "tiny", "cpu"))
    fn = next(f.fn for f in demo.fns.values() if f.api_name == "generate")
    with pytest.raises(gr.Error, match="Steps must be a whole number"):
        fn(*generate_args(steps=-1))
    assert calls == []  # a bad request is refused before a GPU is attached
    images, info, seed = fn(*generate_args(steps=2))
    assert calls == [120] and len(images) == 1 and "NFE: " in info and seed == 0


def test_space_card_front_matter_matches_the_repo():
    """The Space card has what the Hub needs, the gradio it was tested with, and our published models."""
    from huggingface_hub import SpaceCard

    data = SpaceCard.load(REPO_ROOT / "spaces" / "README.md").data
    for key in ("title", "emoji", "sdk", "sdk_version", "app_file", "models", "license"):
        assert getattr(data, key, None), key
    assert data.sdk == "gradio" and (REPO_ROOT / "spaces" / data.app_file).is_file()
    assert data.sdk_version.split(".")[0] == gr.__version__.split(".")[0]
    hub_ids = {
        json.loads(spec.read_text())["hub_repo_id"] for spec in (REPO_ROOT / "pipelines").glob("*/repo.json")
    }
    assert hub_ids and set(data.models) <= hub_ids, set(data.models) - hub_ids


def test_build_space_folder_holds_the_app_and_the_package(tmp_path):
    build = load_script("spaces/build_space.py")
    out = build.assemble(tmp_path / "space")
    assert {p.name for p in out.iterdir()} == {"app.py", "README.md", "requirements.txt", "pyproject.toml", "src"}
    requirements = [ln.strip() for ln in (out / "requirements.txt").read_text().splitlines()]
    assert ".[space]" in requirements  # installs the package copied beside the app
    assert re.search(r'^space = \[[^\]]*"gradio', (out / "pyproject.toml").read_text(), flags=re.M)
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('sit_diffusers.pipeline_sit').origin)"],
        cwd=out, env={**os.environ, "PYTHONPATH": str(out / "src")}, capture_output=True, text=True, timeout=120,
    )
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).is_relative_to(out)


#################################################################################
#                       The running Space, through the API                      #
#################################################################################


@pytest.mark.parametrize(
    "request_kw",
    [
        {"classes": ["3", "7"], "num_images": 3, "guidance_scale": 4.0, "interval_start": 0.2, "seed": 11},
        {"mode": "ODE", "solver": "dopri5", "steps": 4, "seed": 5},
        {"mode": "SDE", "solver": "euler", "steps": 8, "guidance_scale": 2.0, "diffusion_form": "linear"},
        {"mode": "SDE", "solver": "heun", "steps": 5, "num_images": 2, "diffusion_norm": 0.5, "seed": 3},
    ],
    ids=["ode-heun-guided", "ode-dopri5", "sde-euler", "sde-heun"],
)
def test_api_returns_the_pipelines_images(client, tiny_pipe, app, request_kw):
    """The endpoint's images are the pipeline's for the same request: sampler, seeds, classes, guidance."""
    gallery, info, seed = client.predict(*generate_args(**request_kw), api_name="/generate")
    got, captions = read_gallery(gallery)
    want, nfe = reference_images(tiny_pipe, app, **request_kw)
    n = request_kw.get("num_images", 1)
    assert len(got) == n and got[0].shape == (8, 8, 3)
    assert seed == request_kw.get("seed", 0)
    for g, w in zip(got, want, strict=True):
        # PNG is lossless; the server runs single-threaded, so allow one grey level of float reordering
        assert np.abs(g.astype(int) - w.astype(int)).max() <= 1
    assert got[0].std() > 5  # real pictures, not a flat grey
    classes = request_kw.get("classes", ["3"])
    assert captions == [f"{classes[i % len(classes)]} · seed {seed + i}" for i in range(n)]
    assert re.search(r"NFE: (\d+) · wall time: \d+\.\d\d s", info).group(1) == str(nfe)


def test_api_randomize_seed_and_class_names(client):
    seeds = set()
    for _ in range(2):
        gallery, info, seed = client.predict(*generate_args(randomize_seed=True, steps=2), api_name="/generate")
        assert 0 <= seed < 2**31 and f"seed {seed}" in info
        seeds.add(seed)
    assert len(seeds) == 2
    assert client.predict(api_name="/classes") == {str(i): str(i) for i in range(10)}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"interval_start": 0.7, "interval_end": 0.2}, "Guidance interval must satisfy 0 <= start <= end <= 1"),
        ({"classes": ["cat"]}, "Unknown class name 'cat'"),
        ({"mode": "SDE", "solver": "dopri5"}, "Solver 'dopri5' is not available for SDE"),
        ({"steps": 1000}, f"Steps must be a whole number between 1 and {MAX_STEPS}, got 1000."),
        ({"num_images": MAX_IMAGES + 1}, f"Number of images must be a whole number between 1 and {MAX_IMAGES}"),
        # what the page's widgets never send but an API caller can (gradio's own checks used to answer these
        # with a bare "Error", or round 2.7 silently)
        ({"steps": "abc"}, f"Steps must be a whole number between 1 and {MAX_STEPS}, got 'abc'."),
        ({"steps": 2.7}, f"Steps must be a whole number between 1 and {MAX_STEPS}, got 2.7."),
        ({"seed": 2.7}, "Seed must be a whole number between 0 and 2147483647, got 2.7."),
        ({"seed": 2**63}, f"Seed must be a whole number between 0 and 2147483647, got {2**63}."),
        ({"mode": "DDIM"}, "Sampler mode must be one of ODE, SDE, got 'DDIM'."),
        ({"classes": []}, "Pick at least one class."),
        ({"randomize_seed": "yes"}, "Randomize seed must be true or false, got 'yes'."),
    ],
)
def test_api_bad_values_give_the_error_text(client, override, message):
    with pytest.raises(AppError, match=re.escape(message)) as err:
        client.predict(*generate_args(**override), api_name="/generate")
    assert "Traceback" not in str(err.value)


def test_raw_http_nan_and_inf_are_refused_by_name(server):
    """gradio_client will not send NaN/inf (not JSON), but a raw POST to the /call endpoint can."""
    body = '{"data": [["3"], 1, "ODE", "heun", 6, NaN, 0.0, 1.0, "sigma", Infinity, 0, false]}'
    post = urllib.request.Request(
        server.url + "gradio_api/call/generate", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(post, timeout=30) as resp:
        event_id = json.loads(resp.read())["event_id"]
    with urllib.request.urlopen(server.url + f"gradio_api/call/generate/{event_id}", timeout=60) as resp:
        stream = resp.read().decode()
    assert "event: error" in stream and "Guidance scale must be a number between 1 and 20, got nan." in stream, stream


def test_api_takes_mode_and_solver_in_any_case(client):
    """The API reaches our validation, not gradio's choice lists: "sde" / "HEUN" are the SDE Heun sampler."""
    gallery, info, _ = client.predict(*generate_args(mode="sde", solver="HEUN", steps=2), api_name="/generate")
    assert len(gallery) == 1 and "SDE heun, 2 steps" in info


def test_twenty_concurrent_requests_complete_or_are_refused(server, client):
    """20 requests at once with 1 worker and a queue of 4: each completes or gets "Queue is full"."""
    jobs = [client.submit(*generate_args(seed=i, steps=10), api_name="/generate") for i in range(20)]
    done, refused = [], []
    for job in jobs:
        try:
            done.append(job.result(timeout=180))
        except Exception as err:  # noqa: BLE001 - every failure must be the queue's clean refusal
            refused.append(str(err))
    assert done, "no request completed"
    assert all("Queue is full" in msg for msg in refused), refused
    assert len(done) + len(refused) == 20
    assert all(len(gallery) == 1 and "NFE: " in info for gallery, info, _ in done)
    # the server stays up and serves the next request
    assert server.alive() and server.page_ok()
    gallery, _, _ = client.predict(*generate_args(steps=2), api_name="/generate")
    assert len(gallery) == 1


#################################################################################
#                              A real browser                                   #
#################################################################################

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page(tmp_path):
    """A Playwright page in Debian's headless chromium; requests off localhost are aborted and listed."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(str(CHROMIUM))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright python package")
    if missing:
        message = f"browser test needs {' and '.join(missing)}: run `bash .ci/install_browser.sh`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    external: list[str] = []

    def only_localhost(route):
        host = re.match(r"^[a-z]+://([^/:]+)", route.request.url)
        if route.request.url.startswith(("data:", "blob:")) or (host and host.group(1) in ("127.0.0.1", "localhost")):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1000},
        )
        context.route("**/*", only_localhost)
        page = context.new_page()
        page.external_requests = external
        try:
            yield page
        finally:
            context.close()


def test_browser_pick_class_generate_and_see_images(server, browser_page):
    page = browser_page
    page.goto(server.url, wait_until="domcontentloaded")
    page.wait_for_selector("#generate", timeout=60_000)

    # pick a class through the searchable dropdown: clear the default, type, click the filtered option
    page.locator("#classes .remove-all").click()
    search = page.locator("#classes input")
    search.click()
    search.fill("7")
    option = page.get_by_role("option", name="7", exact=True)
    option.wait_for(timeout=10_000)
    assert page.get_by_role("option").count() == 1  # the search filtered the ten digits down to one
    option.click()
    page.keyboard.press("Escape")
    page.locator("#generate").click()

    page.wait_for_function(
        "document.querySelectorAll('#gallery img').length >= 4 "
        "&& document.querySelector('#run-info').innerText.includes('NFE')",
        timeout=120_000,
    )
    info = page.locator("#run-info").inner_text()
    assert re.search(r"NFE: \d+ · wall time: \d+\.\d\d s", info), info
    captions = page.locator("#gallery").inner_text()
    assert "7 · seed 0" in captions and "7 · seed 3" in captions
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "space_browser.png"
    page.screenshot(path=str(shot))
    assert Image.open(shot).size == (1280, 1000)

    # a bad value shows our message, never a stack trace
    page.locator("#classes input").fill("not-a-digit")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    page.locator("#generate").click()
    toast = page.locator("[data-testid=toast-text]", has_text="Unknown class name 'not-a-digit'")
    toast.wait_for(timeout=60_000)
    page.wait_for_timeout(800)  # let the toast finish sliding in before the screenshot
    page.screenshot(path=str(ARTIFACTS / "space_browser_error.png"))
    assert "Traceback" not in page.content()
    assert page.external_requests == [], page.external_requests


#################################################################################
#                       Offline: nothing fetched (runs last)                    #
#################################################################################


def test_space_made_no_network_calls(server):
    """From start-up through every request above, the server connected to nothing but localhost."""
    assert server.alive()
    assert server.net_log.read_text() == "", server.net_log.read_text()
    # bad requests are refused without a log line (RequestError has print_exception=False); never a crash
    log = server.log.read_text()
    crashes = re.findall(r"^(?!gradio\.exceptions\.Error)[\w.]+(?:Error|Exception)\b.*$", log, flags=re.M)
    assert not crashes, log[-4000:]

