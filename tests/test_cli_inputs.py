"""``sit-generate`` against bad input: every case exits 2 with one line that names the bad value, prints no
traceback and leaves the output folder exactly as it was; NaN samples exit 1 and write nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_sit

from sit_diffusers.cli import main
from sit_diffusers.pipeline_sit import SiTPipeline
from sit_diffusers.scheduling_sit import SiTSampler


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny saved pixel-space pipeline (3 channels, 8 x 8, 3 named classes, ODE Euler)."""
    folder = tmp_path_factory.mktemp("cli-inputs") / "tiny-sit"
    pipe = SiTPipeline(tiny_sit(0.3, sample_size=8, num_classes=3), SiTSampler.from_preset("ode-euler"),
                       id2label={0: "cat, kitty", 1: "dog", 2: "fish"})
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def no_null_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli-inputs") / "no-null"
    model = tiny_sit(0.3, sample_size=8, num_classes=3, class_dropout_prob=0.0)
    SiTPipeline(model, SiTSampler.from_preset("ode-euler")).save_pretrained(folder)
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


# (id, arguments ({out} = the output folder, {model} = the tiny model), text the message must contain);
# the base call adds --model {model} --out {out}/grid.png --steps 1 --quiet unless the case gives them
CASES = [
    ("unknown-flag", ["--cfgg", "4"], "--cfgg"),
    ("abbreviated-flag", ["--num", "4"], "--num"),
    ("mode-unknown", ["--mode", "odee"], "'odee'"),
    ("solver-unknown", ["--mode", "ode", "--solver", "rk45"], "'rk45'"),
    ("solver-for-mode", ["--mode", "sde", "--solver", "dopri5"], "'dopri5'"),
    ("preset-typo", ["--preset", "ode-eulr"], "did you mean 'ode-euler'"),
    ("preset-and-solver", ["--preset", "ode-euler", "--solver", "heun"], "--preset excludes"),
    ("steps-zero", ["--steps", "0"], "got 0"),
    ("steps-fractional", ["--steps", "2.7"], "'2.7'"),
    ("steps-word", ["--steps", "ten"], "'ten'"),
    ("steps-over-limit", ["--steps", "5000"], "--steps 5000 is over the limit of 1000"),
    ("steps-sde-last-step", ["--preset", "sde-euler", "--steps", "1"], "--steps: num_inference_steps must be >= 2"),
    ("num-images-zero", ["--num-images", "0"], "got 0"),
    ("num-images-negative", ["--num-images", "-2"], "got -2"),
    ("num-images-over-limit", ["--num-images", "5000"], "--num-images 5000 is over the limit of 1000"),
    ("batch-size-zero", ["--batch-size", "0"], "got 0"),
    ("cfg-nan", ["--cfg", "nan"], "'nan'"),
    ("cfg-inf", ["--cfg", "inf"], "'inf'"),
    ("cfg-negative", ["--cfg", "-1"], "--cfg must be >= 0, got -1.0"),
    ("cfg-word", ["--cfg", "high"], "'high'"),
    ("cfg-without-null-class", ["--model", "{no_null}", "--cfg", "2"], "--cfg 2.0: this model has no null class"),
    ("interval-reversed", ["--guidance-interval", "0.8", "0.2"], "--guidance-interval 0.8 0.2"),
    ("interval-below-0", ["--guidance-interval", "-0.1", "1"], "-0.1"),
    ("interval-nan", ["--guidance-interval", "nan", "1"], "'nan'"),
    ("channels-zero", ["--guidance-channels", "0"], "'0'"),
    ("channels-word", ["--guidance-channels", "some"], "'some'"),
    ("channels-too-many", ["--guidance-channels", "5"], "--guidance-channels 5: this model has 3 channels"),
    ("seed-negative", ["--seed", "-1"], "got -1"),
    ("seed-too-large", ["--seed", str(2**64)], str(2**64)),
    ("seed-plus-index-too-large", ["--seed", str(2**64 - 1), "--num-images", "2"], "seed 18446744073709551616"),
    ("seed-fractional", ["--seed", "1.5"], "'1.5'"),
    ("device-unknown", ["--device", "tpu0"], "'tpu0'"),
    ("device-cuda-missing", ["--device", "cuda:7"], "'cuda:7'"),
    ("dtype-unknown", ["--dtype", "float64"], "'float64'"),
    ("out-jpg", ["--out", "{out}/grid.jpg"], "grid.jpg"),
    ("out-existing-grid", ["--out", "{out}/existing.png"], "existing.png exists; pass --overwrite"),
    ("out-png-is-folder", ["--out", "{out}/folder.png"], "folder.png is a folder"),
    ("out-folder-is-file", ["--out", "{out}/plainfile"], "plainfile exists and is not a folder"),
    ("out-under-a-file", ["--out", "{out}/plainfile/x.png"], "plainfile' exists and is not a folder"),
    ("out-existing-images", ["--out", "{out}/images", "--class", "1"], "0000_class1.png"),
    ("model-missing-folder", ["--model", "{out}/no-such-model"], "no-such-model"),
    ("model-is-a-file", ["--model", "{out}/plainfile"], "plainfile"),
    ("model-broken-index", ["--model", "{out}/broken-model"], "broken-model"),
    ("class-unknown-name", ["--class", "kitten"], "'kitten'"),
    ("class-out-of-range", ["--class", "3"], "class id 3"),
    ("class-negative", ["--class", "-1"], "class id -1"),
    ("class-without-value", ["--class"], "--class"),
]


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_names_the_value_and_writes_nothing(
    args: list[str], message: str, capsys, model_dir: Path, no_null_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "existing.png").write_bytes(b"an earlier grid")
    (out / "folder.png").mkdir()
    (out / "plainfile").write_text("not a folder")
    (out / "images").mkdir()
    (out / "images" / "0000_class1.png").write_bytes(b"an earlier image")
    (out / "broken-model").mkdir()
    (out / "broken-model" / "model_index.json").write_text("{not json")
    before = snapshot(out)
    args = [a.format(out=out, model=model_dir, no_null=no_null_dir) for a in args]
    base = [] if "--model" in args else ["--model", str(model_dir)]
    base += [] if "--out" in args else ["--out", str(out / "grid.png")]
    base += [] if any(a in args for a in ("--steps", "--preset")) else ["--steps", "1"]
    code, err = run(base + args + ["--quiet"], capsys)
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err
    assert snapshot(out) == before


def test_overwrite_flag_replaces_existing_images(capsys, model_dir: Path, tmp_path: Path) -> None:
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"an earlier grid")
    code, err = run(["--model", str(model_dir), "--out", str(grid), "--steps", "1", "--quiet", "--overwrite"],
                    capsys)
    assert code == 0, err
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left behind


def test_nan_samples_exit_1_and_write_nothing(capsys, tmp_path: Path) -> None:
    model = tiny_sit(0.3, sample_size=8, num_classes=3)
    with torch.no_grad():
        model.final_layer.linear.bias.fill_(float("nan"))
    folder = tmp_path / "nan-model"
    SiTPipeline(model, SiTSampler.from_preset("ode-euler")).save_pretrained(folder)
    out = tmp_path / "out"
    code, err = run(["--model", str(folder), "--out", str(out), "--steps", "2", "--quiet"], capsys)
    assert code == 1, err
    assert "non-finite" in err and "transformer weights" in err and "Traceback" not in err
    assert not out.exists()


def test_debug_shows_the_traceback(capsys, model_dir: Path, tmp_path: Path) -> None:
    code, err = run(["--model", str(model_dir), "--out", str(tmp_path / "g.png"), "--class", "kitten", "--debug"],
                    capsys)
    assert code == 2 and "Traceback" in err and "'kitten'" in err


def test_help_lists_presets_with_steps_and_one_default_per_flag(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    flat = " ".join(capsys.readouterr().out.split())
    for name in ("ode-dopri5", "ode-euler (ode euler, 250 steps)", "ode-heun (ode heun, 125 steps)",
                 "paper-fid (sde euler, 250 steps)"):
        assert name in flat
    assert "(default: None)" not in flat
    for flag in ("--overwrite", "--allow-large-runs", "--debug", "--quiet", "--seed", "--batch-size"):
        assert flag in flat


def test_broken_model_index_is_a_clear_message_not_a_traceback(capsys, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "SiTPipeline"}))
    code, err = run(["--model", str(folder), "--out", str(tmp_path / "g.png")], capsys)
    assert code == 2 and str(folder) in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["-m", "sit_diffusers.cli", "--help"],
                                     ["benchmarks/repa_digits.py", "--out", "unused", "--dry-run"]],
                         ids=["sit-generate --help", "repa_digits --dry-run"])
def test_output_piped_into_a_closed_reader_ends_quietly(command) -> None:
    """`sit-generate --help | head -1`: the reader goes away before the output is written; the CLI ends with
    the shell's SIGPIPE status and no traceback (not an exception at write and another at exit)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, *command], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    proc.stdout.close()  # before the child has imported anything: its first write fails
    err = proc.stderr.read()
    status = proc.wait(timeout=120)
    # argparse's --help is buffered until exit, where Python drops the failed flush silently (status 0); a
    # flushed print fails at once and is handled by run_cli (141)
    assert status == (0 if "--help" in command else 141), err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
