"""Shared test helpers: where the official SiT reference outputs live (``tests/fixtures/official_sit``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures_path import OFFICIAL_FIXTURES, REPO_ROOT  # noqa: F401  (re-exported to the tests)

# The test models are tiny: on a shared 2-core machine one intra-op thread is ~20x faster than
# oversubscribing (15 ms vs 312 ms per fixture forward). Subprocesses the tests launch set their own.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """Folder of the official SiT reference tensors (read its README before writing a test)."""
    return OFFICIAL_FIXTURES


def load_script(relative: str, name: str | None = None):
    """The script at ``REPO_ROOT / relative`` (e.g. ``"benchmarks/fit_time_grid.py"``) imported as a fresh module
    (``name``: its module name, default the file's stem); nothing is added to ``sys.modules``."""
    import importlib.util

    path = REPO_ROOT / relative
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_official(name: str) -> dict:
    """Load ``<name>.safetensors`` from the official fixtures as a dict of CPU tensors."""
    from safetensors.torch import load_file

    return load_file(str(OFFICIAL_FIXTURES / f"{name}.safetensors"))


def rel_err(a, b) -> float:
    """Relative error ``||a - b|| / ||b||`` in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def official_model():
    """The official fixture network converted by our converter (width 64 matches no named config: 4 heads)."""
    from sit_diffusers.conversion import load_official_checkpoint

    return load_official_checkpoint(OFFICIAL_FIXTURES / "original_checkpoint.pt", num_heads=4).eval()


def as_model_fn(model, y, calls: list | None = None):
    """``model`` (a ``SiTTransformer2DModel``) as ``fn(x, t) -> output`` for the labels ``y``, without
    autograd; ``calls``, when given, records the time ``t[0]`` of every call."""

    def fn(x, t):
        if calls is not None:
            calls.append(float(t[0]))
        with torch.no_grad():
            return model(x, t, y).sample

    return fn


def tiny_sit(std: float, **config):
    """A tiny pixel-space ``SiTTransformer2DModel`` (seed 0) in eval mode, every weight redrawn from
    N(0, std^2): adaLN-Zero's zero init would make the output ignore labels and t.
    ``config`` overrides the defaults (patch 2, hidden 16, depth 1, 2 heads, 3 channels, no learn_sigma)."""
    from sit_diffusers.modeling_sit import SiTTransformer2DModel

    torch.manual_seed(0)
    defaults = dict(patch_size=2, in_channels=3, hidden_size=16, depth=1, num_heads=2, learn_sigma=False)
    model = SiTTransformer2DModel(**{**defaults, **config})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def assert_refused(main, argv: list[str], folder: Path, capsys, prog: str) -> str:
    """Run the CLI ``main(argv)`` in-process; it must refuse: status 2, exactly one line ``prog: error: ...``
    on stderr, and no file added or removed under ``folder``. Returns that line."""
    before = sorted(p.name for p in folder.rglob("*"))
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"{prog}: error: "), err
    assert sorted(p.name for p in folder.rglob("*")) == before
    return err


def fake_spaces_module(calls: list[int]):
    """A stand-in for Hugging Face's ``spaces`` package (ZeroGPU): ``spaces.GPU(duration=...)`` wraps a
    function and appends ``duration`` to ``calls`` each time a GPU would be attached."""
    import types

    def gpu(duration=60):
        def wrap(fn):
            def wrapped(*args, **kwargs):
                calls.append(duration)
                return fn(*args, **kwargs)

            return wrapped

        return wrap

    module = types.ModuleType("spaces")
    module.GPU = gpu
    return module


#: A valid request to the Space's ``/generate`` endpoint, in its positional order (the Space tests' base).
SPACE_GENERATE_ARGS = {
    "classes": ["3"],
    "num_images": 1,
    "mode": "ODE",
    "solver": "heun",
    "steps": 6,
    "guidance_scale": 1.0,
    "interval_start": 0.0,
    "interval_end": 1.0,
    "diffusion_form": "sigma",
    "diffusion_norm": 1.0,
    "seed": 0,
    "randomize_seed": False,
}
