"""benchmarks/bench_few_step.py: its reference solution, its sliced W2, a --quick run, and its refusals."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from conftest import REPO_ROOT, assert_refused, tiny_sit

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import bench_few_step  # noqa: E402

PROG = "benchmarks/bench_few_step.py"


def test_analytic_reference_matches_an_ultra_fine_rk4_solution() -> None:
    from sit_diffusers.scheduling_sit import SiTSampler

    target = bench_few_step.analytic_target(200, seed=0, projections=64)
    fine = SiTSampler(mode="ode", solver="rk4").sample(target["mixture"].velocity, target["noise"], 2000).sample
    assert target["noise"].dtype == torch.float64
    assert bench_few_step.rmse(fine.flatten(1), target["reference"]) < 1e-6
    # and its samples are distributed as the exact mixture (within twice the Monte-Carlo floor)
    assert target["reference_w2"] < 2 * target["floor_w2"]


def test_sliced_w2_is_zero_on_identical_sets_and_matches_the_closed_form_for_a_shift() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    assert bench_few_step.sliced_w2(a, a.clone(), 500) == 0.0
    m = torch.tensor([0.6, -0.3, 0.9], dtype=torch.float64)
    # a shifted copy: every projection moves by theta . m, so SW2^2 = mean_theta (theta . m)^2 -> |m|^2 / D
    exact = float(m.norm() / math.sqrt(3))
    assert bench_few_step.sliced_w2(a, a + m, 2000) == pytest.approx(exact, rel=0.04)
    # two independent Gaussian samples N(0, I) and N(m, I): the same value up to the sampling noise
    b = torch.randn(2000, 3, generator=g, dtype=torch.float64) + m
    assert bench_few_step.sliced_w2(a, b, 1000) == pytest.approx(exact, abs=0.06)


def test_rmse_is_the_root_of_the_mean_per_sample_squared_error() -> None:
    x = torch.zeros(2, 1, 2, 2)
    ref = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0]]).reshape(2, 1, 2, 2)
    assert bench_few_step.rmse(x, ref) == pytest.approx(math.sqrt((1 + 9) / 2))


def test_steps_for_hits_the_budget_exactly_or_one_below() -> None:
    from sit_diffusers.scheduling_sit import SiTSampler

    assert bench_few_step.steps_for(SiTSampler(mode="ode", solver="heun"), 8) == (4, 8)
    assert bench_few_step.steps_for(SiTSampler(mode="ode", solver="rk4"), 8) == (2, 8)
    assert bench_few_step.steps_for(SiTSampler(mode="ode", solver="rk4"), 6) is None
    assert bench_few_step.steps_for(SiTSampler.from_preset("sde-heun"), 8) == (4, 7)  # 2 n - 1 evaluations


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random 1-channel 28 x 28 digits pipeline (patch 7: 16 tokens), saved like the shipped one."""
    from sit_diffusers.pipeline_sit import SiTPipeline
    from sit_diffusers.scheduling_sit import SiTSampler

    folder = tmp_path_factory.mktemp("tiny") / "sit-tiny-digits"
    model = tiny_sit(0.05, in_channels=1, sample_size=28, patch_size=7, num_classes=10)
    SiTPipeline(model, SiTSampler(mode="ode", solver="heun")).save_pretrained(str(folder))
    return folder


def _assert_every_row_printed(printed: str, payload: dict, rows: list) -> None:
    ran = {r["row"] for r in payload["results"]}
    for row in rows:
        if row.name in payload["skipped"]:
            assert row.name in printed  # listed under "Rows not run" with the reason
            continue
        assert row.name in ran, row.name
        assert f"| {row.name} |" in printed, row.name


def test_quick_run_prints_every_row_and_column_and_writes_json_and_plot(tiny_model, tmp_path, capsys) -> None:
    out_json, out_png = tmp_path / "few.json", tmp_path / "few.png"
    # the digits metrics cost a 128-d Frechet distance per cell: the grid crosses run on the analytic target below
    saved = tiny_model / "scheduler" / "scheduler_config.json"  # the model's own sampler: one more digits row
    status = bench_few_step.main(["--quick", "--grids", "none", "--model", str(tiny_model), "--json", str(out_json),
                                  "--plot", str(out_png), "--analytic-samples", "200", "--projections", "64",
                                  "--sampler-config", str(saved)])
    printed = capsys.readouterr().out
    assert status == 0
    payload = json.loads(out_json.read_text())
    extra = bench_few_step.config_rows([saved])
    assert [r.name for r in extra] == ["ours ode heun, uniform grid: scheduler/scheduler_config.json"]
    assert {r["target"] for r in payload["results"] if r["row"] == extra[0].name} == {"digits"}
    rows = bench_few_step.discover_rows([])
    _assert_every_row_printed(printed, payload, rows)
    for row in rows:
        if row.name not in payload["skipped"]:  # digits: FD, accuracy; analytic: W2; and RMSE on each for ODE rows
            assert printed.count(f"| {row.name} |") == 3 + (row.kind == "ode") * 2, row.name
    for head in ("### Digits", "### Analytic", "| sampler | NFE 4 | NFE 8 |", "RMSE to the reference",
                 "FD to the held-out digits", "Conditional accuracy", "Sliced W2", "Monte-Carlo floor"):
        assert head in printed, head
    assert {r["budget"] for r in payload["results"]} == {4, 8}
    for r in payload["results"]:
        assert r["nfe"] in (r["budget"], r["budget"] - 1)
        assert math.isfinite(r["w2"] if r["target"] == "analytic" else r["frechet"])
        assert (r["rmse"] is None) == (r["row"] in {row.name for row in rows if row.kind == "sde"})
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few.json", "few.png"]  # no temporary file left


def test_quick_analytic_run_crosses_every_time_grid_with_every_ode_solver(tmp_path, capsys) -> None:
    grids = bench_few_step.available_grids()
    out_json = tmp_path / "few.json"
    assert bench_few_step.main(["--quick", "--targets", "analytic", "--analytic-samples", "200", "--projections",
                                "64", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    payload = json.loads(out_json.read_text())
    rows = bench_few_step.discover_rows(grids)
    _assert_every_row_printed(printed, payload, rows)
    for grid in grids:
        assert any(f"{grid} grid" in r.name for r in rows), grid
    assert "### Digits" not in printed


BAD_FLAGS = [
    (["--nfe", "0"], "--nfe must be >= 1, got 0"),
    (["--nfe", "2000"], "--nfe must be <= 1000, got 2000"),
    (["--nfe", "4", "8", "4"], "--nfe 4 8 4 repeats a budget"),
    (["--nfe", "four"], "--nfe: invalid int value: 'four'"),
    (["--num-samples", "5"], "--num-samples must be >= 10, got 5"),
    (["--num-samples", "5000"], "--num-samples must be <= 4000, got 5000"),
    (["--analytic-samples", "3"], "--analytic-samples must be >= 10, got 3"),
    (["--projections", "0"], "--projections must be >= 1, got 0"),
    (["--targets", "mnist"], "--targets 'mnist' is not a target"),
    (["--grids", "cosine"], "--grids 'cosine' is not a time grid"),
    (["--fit-analytic", "dopri5"], "--fit-analytic 'dopri5' is not a fixed-step ODE solver"),
    (["--fit-analytic", "ab2", "--targets", "digits"], "--fit-analytic needs --targets analytic"),
    (["--rows", "no-such-sampler"], "--rows 'no-such-sampler' matches no row"),
    (["--guidance-scale", "nan"], "--guidance-scale must be finite, got nan"),
    (["--guidance-scale", "-1"], "--guidance-scale must be >= 0.0, got -1.0"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--device", "tpu9"], "--device 'tpu9'"),
    (["--model", "{tmp}/nowhere"], "--model '{tmp}/nowhere' is not a saved SiTPipeline folder"),
    (["--json", "{tmp}"], "--json '{tmp}' is a folder"),
    (["--json", "{tmp}/file.txt/rows.json"], "exists and is not a folder"),
    (["--plot", "{tmp}/figure.jpg"], "--plot '{tmp}/figure.jpg' must end in .png, .pdf, .svg"),
    (["--plot", "{tmp}/file.txt/figure.png"], "exists and is not a folder"),
    (["--reuse", "{tmp}/missing.json"], "--reuse '{tmp}/missing.json' is not a readable JSON file"),
    (["--reuse", "{tmp}/file.txt"], "--reuse '{tmp}/file.txt' is not a readable JSON file"),
    (["--reuse", "{tmp}/other.json"], "--reuse '{tmp}/other.json' was made with other settings"),
    (["--sampler-config", "{tmp}/file.txt"], "--sampler-config '{tmp}/file.txt' is not a readable SiTSampler"),
    (["--sampler-config", "{tmp}/adaptive.json"], "has the adaptive solver 'dopri5'"),
    (["--nfee", "4"], "unrecognized arguments: --nfee"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_benchmark_refuses_bad_flags_before_any_work(tmp_path, capsys, argv, message) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "other.json").write_text(json.dumps({"settings": {"budgets": [4]}, "results": []}))
    (tmp_path / "adaptive.json").write_text(json.dumps({"mode": "ode", "solver": "dopri5"}))
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--json", str(tmp_path / "out.json")] * ("--json" not in argv)
    err = assert_refused(bench_few_step.main, argv, tmp_path, capsys, PROG)
    assert message.format(tmp=tmp_path) in err, err


def test_plot_without_matplotlib_is_refused_before_any_work(tmp_path, capsys, monkeypatch) -> None:
    real = bench_few_step.importlib.util.find_spec
    monkeypatch.setattr(bench_few_step.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    err = assert_refused(bench_few_step.main, ["--plot", str(tmp_path / "f.png")], tmp_path, capsys, PROG)
    assert "--plot" in err and "needs matplotlib" in err, err


def test_a_grid_fitted_per_nfe_on_another_batch_beats_the_uniform_grid(tmp_path) -> None:
    """--fit-analytic: the grid is fitted on the fit batch (seed + 10), not the benchmark's noise, and still
    lowers the error of the same solver at the same NFE on the benchmark's noise."""
    out_json = tmp_path / "fit.json"
    assert bench_few_step.main(["--targets", "analytic", "--nfe", "4", "--analytic-samples", "300",
                                "--projections", "16", "--grids", "none", "--rows", "ode ab2",
                                "--fit-analytic", "ab2", "--json", str(out_json)]) == 0
    results = {r["row"]: r for r in json.loads(out_json.read_text())["results"]}
    fitted = results["ours ode ab2, grid fitted per NFE (on another batch)"]
    uniform = results["ours ode ab2 (ode-ab2)"]
    assert fitted["nfe"] == uniform["nfe"] == 4
    assert fitted["rmse"] < 0.7 * uniform["rmse"]
