"""The digit experiment scripts end to end on a tiny model: train two walk variants, score them, filter rows.

These check plumbing (every variant trains with its own objective and is sampled with its own interpolant,
the table has the floor plus two rows per run, ``--only`` filters), not quality: the real runs and their
numbers are in model_cards/sit-digits.md.
"""

from __future__ import annotations

import json
import sys

import pytest
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
        train_digits.main(["--device", "cpu", "--loop", "vectorised", "--variant", variant, "--steps", "3",
                           "--batch-size", "8", "--warmup", "1", "--out", str(root / variant), *TINY])
    return root


def test_train_digits_records_variant_and_size(walk_runs):
    from sit_diffusers.pipeline_sit import SiTPipeline

    for variant, path_type, prediction in (("dit", "vp", "noise"), ("sit", "linear", "velocity")):
        info = json.loads((walk_runs / variant / "training.json").read_text())
        assert info["variant"] == variant and info["steps"] == 3
        assert info["model"] == {"hidden_size": 16, "depth": 1, "num_heads": 2, "patch_size": 7}
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


def test_install_refuses_a_non_embedded_size(tmp_path):
    with pytest.raises(SystemExit):
        train_digits.main(["--device", "cpu", "--out", str(tmp_path), "--install", *TINY])
