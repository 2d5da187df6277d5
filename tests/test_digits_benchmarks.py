"""The digit experiment scripts end to end on a tiny model: train two walk variants, score them, filter rows.

These check plumbing (every variant trains with its own objective and is sampled with its own interpolant,
the table has the floor plus two rows per run, ``--only`` filters), not quality: the real runs and their
numbers are in model_cards/sit-digits.md.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT))

import digits_experiments  # noqa: E402
import train_digits  # noqa: E402

TINY = ["--hidden-size", "16", "--depth", "1", "--num-heads", "2", "--patch-size", "7"]


@pytest.fixture(scope="module")
def walk_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("walk")
    for variant in ("dit", "sit"):
        assert train_digits.main(["--device", "cpu", "--variant", variant, "--steps", "3", "--batch-size", "8",
                                  "--warmup", "1", "--workers", "0", "--out", str(root / variant), *TINY]) == 0
    return root


def test_train_digits_records_variant_and_size(walk_runs):
    from sit_diffusers.pipeline_sit import SiTPipeline

    for variant, path_type, prediction in (("dit", "vp", "noise"), ("sit", "linear", "velocity")):
        info = json.loads((walk_runs / variant / "training.json").read_text())
        assert info["variant"] == variant and info["steps"] == 3
        assert info["model"] == {"hidden_size": 16, "depth": 1, "num_heads": 2, "patch_size": 7}
        (part,) = info["parts"]  # one start, from step 0, with its speed settings
        assert part["from_step"] == 0 and part["device"] == "cpu" and part["compile"] == "none"
        assert part["attention_backend"] is None and part["mixed_precision"] == "no"
        pipe = SiTPipeline.from_pretrained(str(walk_runs / variant / "pipeline"))
        assert pipe.transformer.config.hidden_size == 16 and pipe.transformer.config.patch_size == 7
        assert (pipe.scheduler.config.path_type, pipe.scheduler.config.prediction) == (path_type, prediction)


def test_walk_table_has_floor_and_two_rows_per_run(walk_runs, tmp_path):
    out = tmp_path / "walk.json"
    digits_experiments.main(["walk", "--runs", str(walk_runs / "dit"), str(walk_runs / "sit"),
                             "--num-samples", "20", "--batch-size", "20", "--json", str(out)])
    (rows,) = json.loads(out.read_text()).values()
    assert [r["name"] for r in rows[1:]] == ["dit: ODE Heun 25", "dit: SDE Euler 50",
                                             "sit: ODE Heun 25", "sit: SDE Euler 50"]
    assert [r["nfe"] for r in rows[1:]] == [50, 50, 50, 50]  # Heun: 2 per step
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["frechet"] >= 0.0 for r in rows)


def test_only_filters_rows(walk_runs, tmp_path):
    out = tmp_path / "walk.json"
    digits_experiments.main(["walk", "--runs", str(walk_runs / "sit"), "--num-samples", "10",
                             "--batch-size", "10", "--json", str(out), "--only", "ODE"])
    (rows,) = json.loads(out.read_text()).values()
    assert [r["name"] for r in rows[1:]] == ["sit: ODE Heun 25"]


def test_train_digits_goes_through_the_trainer(walk_runs):
    info = json.loads((walk_runs / "sit" / "training.json").read_text())
    assert info["trainer"] == "training/train_sit.py" and info["mixed_precision"] == "no"
    assert (walk_runs / "sit" / "checkpoints" / "checkpoint-0000003" / "train_state.json").is_file()
    assert not hasattr(train_digits, "train_vectorised")  # one training loop


def test_install_takes_the_installed_sampler_and_defaults(walk_runs, tmp_path):
    """--install keeps the sampler and pipeline defaults of the model installed now (read, not hard-coded)."""
    from sit_diffusers.pipeline_sit import SiTPipeline

    source = tmp_path / "installed"
    (source / "scheduler").mkdir(parents=True)
    sampler = json.loads((train_digits.EMBEDDED_DIR / "scheduler" / "scheduler_config.json").read_text())
    sampler["solver"] = "euler"  # as if helper A had changed the default sampler
    (source / "scheduler" / "scheduler_config.json").write_text(json.dumps(sampler))
    index = json.loads((train_digits.EMBEDDED_DIR / "model_index.json").read_text())
    index["default_num_inference_steps"] = 7
    (source / "model_index.json").write_text(json.dumps(index))
    dest = tmp_path / "sit-digits"
    train_digits.install(walk_runs / "sit" / "pipeline", dest, {"steps": 3}, defaults_from=source)
    pipe = SiTPipeline.from_pretrained(str(dest))
    assert pipe.scheduler.config.solver == "euler" and pipe.config.default_num_inference_steps == 7
    for key, value in index.items():
        if key.startswith("default_"):
            assert pipe.config[key] == value
    from safetensors.torch import load_file

    weights = load_file(dest / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float16 for v in weights.values()) and pipe.id2label[3] == "3"
    assert json.loads((dest / "training.json").read_text()) == {"steps": 3}
    # the package's own data: its modules named, no code files (those are for Hub repos loaded without it)
    assert not list(dest.rglob("*.py"))
    saved = json.loads((dest / "model_index.json").read_text())
    assert saved["_class_name"] == "SiTPipeline"
    assert saved["scheduler"] == ["sit_diffusers.scheduling_sit", "SiTSampler"]
    assert saved["transformer"] == ["sit_diffusers.modeling_sit", "SiTTransformer2DModel"]
    for config in (dest / "model_index.json", dest / "transformer" / "config.json", dest / "scheduler" / "scheduler_config.json"):
        assert "_name_or_path" not in json.loads(config.read_text()), config  # no path of the training machine


BAD_FLAGS = [
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--batch-size", "-2"], "--batch-size must be >= 1, got -2"),
    (["--lr", "0"], "--lr must be > 0.0, got 0.0"),
    (["--lr", "nan"], "--lr must be finite"),
    (["--ema", "1.5"], "--ema must be <= 1.0, got 1.5"),
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--seed", "-3"], "--seed must be >= 0, got -3"),
    (["--checkpointing-steps", "0"], "--checkpointing-steps must be >= 1, got 0"),
    (["--hidden-size", "10", "--num-heads", "3"], "--hidden-size 10 must be a multiple of --num-heads 3"),
    (["--patch-size", "5"], "--patch-size 5 must divide the 28 px side"),
    (["--install", *TINY], "--install ships the embedded architecture"),
    (["--install", "--variant", "dit"], "--install ships the embedded SiT (--variant sit), got --variant dit"),
    (["--install", "--repa-encoder", "x"], "--install with --repa-encoder"),
    (["--repa-coeff", "0.5"], "--repa-coeff set without --repa-encoder"),  # the default value, given: refused too
    (["--repa-encoder", "x", "--repa-depth", "9"], "--repa-depth must be in [1, 6]"),
    (["--attention-backend", "natve"], "--attention-backend 'natve' is not a diffusers attention backend"),
    (["--attention-backend", "_native_cudnn"], "--attention-backend _native_cudnn cannot train on cpu"),
    (["--compile", "max"], None),  # argparse: invalid choice
    (["--steps", "2.5"], None),  # argparse: invalid int value
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_exit_2_before_any_work(argv, message, tmp_path, capsys):
    """Each bad flag: exit 2, one line naming the flag and the value, no run folder, the shipped model untouched."""
    out = tmp_path / "out"
    shipped = {p: p.stat().st_mtime_ns for p in train_digits.EMBEDDED_DIR.rglob("*")}
    try:
        status = train_digits.main(["--device", "cpu", "--out", str(out), *argv])
    except SystemExit as exit_:  # argparse's own errors (type and choice) exit 2 with its usage line
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    if message is not None:
        lines = [line for line in err.splitlines() if line.startswith("train_digits.py: error:")]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    else:
        assert "error: argument" in err and argv[1] in err
    assert not out.exists()
    assert {p: p.stat().st_mtime_ns for p in train_digits.EMBEDDED_DIR.rglob("*")} == shipped


@pytest.mark.parametrize(("argv", "env", "message"), [
    ([], {}, "usage: bash benchmarks/device_checks.sh prepare|run|smoke"),
    (["deploy"], {}, "usage:"),
    (["run"], {"OUT": ""}, "run on the device machine"),
    (["smoke", "repa", "fid"], {}, "unknown phase 'fid': choose from digits, repa, xl"),
    (["prepare", "xl"], {}, "prepare takes no phases"),
])
def test_device_checks_script_refuses_bad_calls(argv, env, message, tmp_path):
    """The prepared GPU script parses, and a call it cannot serve exits 2 with one message before any work."""
    import os
    import subprocess

    script = REPO_ROOT / "benchmarks" / "device_checks.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    environ = {k: v for k, v in os.environ.items() if k != "OUT"} | env
    if not environ.get("OUT"):
        environ.pop("OUT", None)
    proc = subprocess.run(["bash", str(script), *argv], capture_output=True, text=True, env=environ, cwd=tmp_path,
                          timeout=60)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("rows", "message"), [
    ("after,foo", "unknown row 'foo'"),
    ("side loop math", "unknown row 'side loop math'"),  # the deleted loop has no attention backend flag
    ("after,after", "distinct rows"),
    (" , ", "distinct rows"),
])
def test_bench_train_digits_rows_are_checked(rows, message, capsys):
    """An unknown --rows name is refused at the door (it would otherwise time the plain trainer under its name)."""
    import argparse

    import bench_train

    parser = argparse.ArgumentParser(prog="bench_train.py")
    assert bench_train.digits_rows("after,repa features math,side loop", parser) == [
        "after", "repa features math", "side loop"]
    with pytest.raises(SystemExit) as exit_:
        bench_train.digits_rows(rows, parser)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
