"""``sit-generate``: argument errors, grid / folder output, seeds independent of batching."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_sit

import sit_diffusers
from sit_diffusers.cli import build_parser, main, make_grid
from sit_diffusers.pipeline_sit import SiTPipeline
from sit_diffusers.scheduling_sit import SiTSampler

ID2LABEL = {0: "cat, kitty", 1: "dog", 2: "fish"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny saved pixel-space pipeline (3 channels, 8 x 8, 3 classes)."""
    model = tiny_sit(0.3, sample_size=8, num_classes=3)
    folder = tmp_path_factory.mktemp("cli") / "tiny-sit"
    SiTPipeline(model.eval(), SiTSampler.from_preset("ode-euler"), id2label=ID2LABEL).save_pretrained(folder)
    return folder


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_console_script_is_declared() -> None:
    (ep,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "sit-generate"]
    assert ep.value == "sit_diffusers.cli:main" and ep.load() is main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cfgg", "4"], "unrecognized arguments: --cfgg"),  # a typo is an error, not silently ignored
        (["--mode", "ode", "--solver", "rk45"], "unknown --solver 'rk45' for --mode ode; choose from "),
        (["--mode", "sde", "--solver", "dopri5"], "unknown --solver 'dopri5' for --mode sde; choose from "),
        (["--preset", "fast"], "unknown --preset 'fast'"),
        (["--preset", "paper-fid", "--solver", "euler"], "--preset excludes"),
        (["--solver", "rk45"], "for --mode ode"),
        (["--steps", "0"], "must be >= 1"),
        (["--num-images", "-2"], "must be >= 1"),
        (["--guidance-channels", "0"], "'all' or a positive int"),
        (["--guidance-interval", "0.8", "0.2"], "LO <= HI"),
        (["--out", "grid.jpg"], ".png file"),
        (["--model", "./no/such/folder"], "not an existing folder"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args: list[str], message: str, capsys, model_dir: Path) -> None:
    base = [] if "--model" in args else ["--model", str(model_dir)]
    code, _, err = run_cli(base + args, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_missing_model_and_unknown_class_are_clear(
    capsys, model_dir: Path, monkeypatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    code, _, err = run_cli(["--model", "org/no-such-model"], capsys)
    assert code == 2 and "'org/no-such-model' is not in the local Hub cache" in err
    code, _, err = run_cli(["--model", str(model_dir), "--class", "kitten", "--steps", "1"], capsys)
    assert code == 2 and "unknown class name 'kitten'" in err and "'kitty'" in err
    if getattr(sit_diffusers, "DEFAULT_MODEL", None) is None:
        code, _, err = run_cli([], capsys)
        assert code == 2 and "--model is required" in err
    else:
        assert build_parser().parse_args([]).model == str(sit_diffusers.DEFAULT_MODEL)


def test_grid_and_folder_agree_and_match_the_pipeline(capsys, model_dir: Path, tmp_path: Path) -> None:
    common = ["--model", str(model_dir), "--class", "kitty", "--class", "2", "--num-images", "3"]
    common += ["--mode", "ode", "--solver", "heun", "--steps", "2", "--cfg", "2.5", "--seed", "5", "--quiet"]
    grid_path = tmp_path / "grid.png"
    code, out, _ = run_cli(common + ["--out", str(grid_path)], capsys)
    assert code == 0 and "wrote 3 images (ode-heun, cfg 2.5)" in out and "0 (cat)" in out
    grid = np.asarray(PIL.Image.open(grid_path))
    assert grid.shape == (2 * 8 + 2, 2 * 8 + 2, 3)  # 3 images -> 2 x 2 tiles of 8 px with 2 px gaps

    folder = tmp_path / "images"
    code, _, _ = run_cli(common + ["--out", str(folder), "--batch-size", "1"], capsys)
    files = sorted(p.name for p in folder.iterdir())
    assert code == 0 and files == ["0000_class0.png", "0001_class2.png", "0002_class0.png"]
    tiles = [grid[:8, :8], grid[:8, 10:18], grid[10:18, :8]]
    for name, tile in zip(files, tiles, strict=True):  # batch size 3 vs 1: identical images
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(folder / name)), tile)

    # the same images straight from the pipeline: image i uses seed + i
    pipe = SiTPipeline.from_pretrained(model_dir)
    pipe.set_sampler("ode-heun")
    pipe.set_progress_bar_config(disable=True)
    gens = [torch.Generator().manual_seed(5 + i) for i in range(3)]
    direct = pipe(
        [0, 2, 0], guidance_scale=2.5, num_inference_steps=2, generator=gens, output_type="np"
    ).images
    for name, image in zip(files, direct, strict=True):
        expected = (image * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(folder / name)), expected)
    assert len({np.asarray(PIL.Image.open(folder / n)).tobytes() for n in files}) == 3  # seeds differ


def test_without_sampler_flags_the_saved_sampler_is_used(capsys, model_dir: Path, tmp_path: Path) -> None:
    args = [
        "--model",
        str(model_dir),
        "--class",
        "fish",
        "--cfg",
        "1",
        "--quiet",
        "--out",
        str(tmp_path / "x.png"),
    ]
    code, out, _ = run_cli(args, capsys)  # model_dir saved an ode-euler sampler and no default step count
    assert code == 0 and "saved sampler ode-euler, cfg 1.0" in out and "2 (fish)" in out


def test_random_classes_from_the_seed_and_sde_mode(capsys, model_dir: Path, tmp_path: Path) -> None:
    args = ["--model", str(model_dir), "--mode", "sde", "--steps", "3", "--num-images", "2", "--quiet"]
    code_a, out_a, _ = run_cli(args + ["--out", str(tmp_path / "a.png")], capsys)
    code_b, out_b, _ = run_cli(args + ["--out", str(tmp_path / "b.png")], capsys)
    assert code_a == code_b == 0 and "sde-euler" in out_a
    assert out_a.split("classes:")[1] == out_b.split("classes:")[1]  # same seed -> same random classes
    a, b = (np.asarray(PIL.Image.open(tmp_path / f)) for f in ("a.png", "b.png"))
    np.testing.assert_array_equal(a, b)


def test_the_embedded_default_model_generates_digits(capsys, tmp_path: Path) -> None:
    if getattr(sit_diffusers, "DEFAULT_MODEL", None) is None:
        pytest.skip("no embedded default model in this checkout")
    out_dir = tmp_path / "digits"
    code, out, _ = run_cli(
        ["--class", "3", "--class", "7", "--steps", "2", "--quiet", "--out", str(out_dir)], capsys
    )
    assert code == 0 and "classes: 3 (3), 7 (7)" in out
    images = [np.asarray(PIL.Image.open(p)) for p in sorted(out_dir.iterdir())]
    index = SiTPipeline.load_config(sit_diffusers.DEFAULT_MODEL)  # model_index.json
    assert len(images) == 2 and index["_class_name"] == "SiTPipeline"
    assert all(im.ndim == 2 and im.shape[0] == im.shape[1] and im.std() > 0 for im in images)  # grey digits


def test_make_grid_layout() -> None:
    tiles = [PIL.Image.new("L", (4, 3), color=c) for c in (10, 20, 30, 40, 50)]
    grid = np.asarray(make_grid(tiles, pad=1))
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 2)  # 5 images -> 3 columns x 2 rows
    assert (
        grid[0, 0] == 10 and grid[0, 5] == 20 and grid[0, 10] == 30 and grid[4, 0] == 40 and grid[4, 5] == 50
    )
    assert grid[4, 10] == 0  # the empty cell stays black


def test_without_class_the_embedded_model_draws_every_digit(capsys, tmp_path: Path) -> None:
    """The README's main job: `sit-generate --out samples.png` gives one image of each of the ten digits."""
    out = tmp_path / "samples.png"
    code, text, _ = run_cli(["--steps", "2", "--quiet", "--out", str(out)], capsys)
    assert code == 0
    assert "classes: " + ", ".join(f"{i} ({i})" for i in range(10)) in text
    assert "cfg 1.5" in text  # the guidance scale saved with the embedded pipeline (its card's choice)
    grid = PIL.Image.open(out)
    assert grid.size == (4 * 28 + 3 * 2, 3 * 28 + 2 * 2)  # 10 tiles of 28 px in a 4-column grid


@pytest.mark.parametrize("which", ["embedded", "tiny-folder"])
def test_light_and_full_pipeline_print_and_write_the_same(capsys, model_dir: Path, tmp_path: Path, which: str) -> None:
    """The torch-only path (default for saved pixel-space folders) and ``--full-pipeline``: the same line on
    stdout and the same PNG bytes."""
    if which == "embedded":
        args, out = ["--steps", "3"], "grid.png"
    else:
        args, out = ["--model", str(model_dir), "--class", "dog", "--num-images", "3", "--mode", "sde"], "images"
        from sit_diffusers.light import LightPipeline

        assert LightPipeline.from_folder(model_dir).num_classes == 3  # so the first run below is the light path
    args += ["--cfg", "2", "--seed", "3", "--batch-size", "2", "--quiet"]
    results = []
    for extra in ([], ["--full-pipeline"]):
        target = tmp_path / extra[0].strip("-") if extra else tmp_path / "light"
        code, text, _ = run_cli(args + extra + ["--out", str(target / out)], capsys)
        files = sorted((target / out).rglob("*.png")) if (target / out).is_dir() else [target / out]
        results.append((code, text.replace(str(target), "<out>"), [f.read_bytes() for f in files]))
    assert results[0][0] == 0 and results[0] == results[1]
    assert len(results[0][2]) == (1 if which == "embedded" else 3)
