"""FID evaluation: the ADM metrics (against analytic values and brute-force references), the extractors, the
ADM ``.npz`` format, and ``training/sample_fid.py`` under 1 and 2 processes with resume after SIGKILL, its
refusals (other weights or settings), corrupt PNGs, NaN images and a table of bad inputs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_hub_repo import REPO_ROOT, build_tiny_repo

from sit_diffusers.fid import (
    DigitFeatureExtractor,
    FeatureExtractor,
    Features,
    FIDStatistics,
    InceptionExtractor,
    compute_metrics,
    extract_features,
    frechet_distance,
    inception_score,
    load_npz_images,
    precision_recall,
    save_npz_images,
)

sys.path.insert(0, str(REPO_ROOT))  # `training` is a folder of the repo, not of the installed package
from training import sample_fid  # noqa: E402

# ----------------------------------------------------------------------------------------------- metrics


def test_frechet_distance_of_diagonal_gaussians_is_analytic():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
    var_a, var_b = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    got = frechet_distance(FIDStatistics(mu_a, np.diag(var_a)), FIDStatistics(mu_b, np.diag(var_b)))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_on_full_covariances():
    from scipy import linalg

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 6)), rng.normal(size=(150, 6)) @ rng.normal(size=(6, 6)) + 0.5
    sa, sb = FIDStatistics.from_features(a), FIDStatistics.from_features(b)
    covmean = linalg.sqrtm(sa.sigma @ sb.sigma).real  # the ADM / TTUR formula
    diff = sa.mu - sb.mu
    expected = diff @ diff + np.trace(sa.sigma) + np.trace(sb.sigma) - 2 * np.trace(covmean)
    assert frechet_distance(sa, sb) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(sa, sa) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(sa, sb) == pytest.approx(frechet_distance(sb, sa), rel=1e-8)  # symmetric


def test_inception_score_bounds_and_splits():
    k = 7
    assert inception_score(np.zeros((50, k))) == pytest.approx(1.0)  # every p(y|x) uniform: KL = 0
    confident = np.full((70, k), -50.0)
    confident[np.arange(70), np.arange(70) % k] = 50.0  # one-hot, classes equally used -> IS = k
    assert inception_score(confident) == pytest.approx(k, rel=1e-6)
    # two splits of 70: one confident (k), one uniform (1): ADM averages the split scores
    both = np.concatenate([confident, np.zeros((70, k))])
    assert inception_score(both, split_size=70) == pytest.approx((k + 1) / 2, rel=1e-6)
    # softmax invariance: adding a per-row constant changes nothing
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(40, k))
    shifted = logits + rng.normal(size=(40, 1))
    assert inception_score(logits) == pytest.approx(inception_score(shifted), rel=1e-12)


def _brute_force_pr(ref: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        return np.array([np.sort([np.linalg.norm(p - q) for q in x])[k] for p in x])  # [0] is itself

    def inside(points, centers, r):
        return np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centers, r, strict=True)) for p in points])

    return inside(fake, ref, radii(ref)), inside(ref, fake, radii(fake))


def test_precision_recall_matches_brute_force_and_limits():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(40, 3))
    fake = rng.normal(size=(30, 3)) * 1.5 + 0.7
    got = precision_recall(ref, fake, k=3, block=7)  # small blocks: the blocking must not matter
    want = _brute_force_pr(ref, fake, 3)
    assert got == pytest.approx(want)
    assert 0 < got[0] < 1 and 0 < got[1] < 1
    assert precision_recall(ref, ref.copy()) == (1.0, 1.0)
    assert precision_recall(ref, ref + 100.0) == (0.0, 0.0)


# ---------------------------------------------------------------------------------------------- extractors


class _PixelStats:
    """A stand-in extractor: per-channel means as features, and 2 logits."""

    name = "pixel-stats"

    def __call__(self, images: np.ndarray) -> Features:
        x = images.astype(np.float64) / 255.0
        feats = np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)  # (N, 6)
        return Features(feats, np.stack([x.mean(axis=(1, 2, 3)), 1 - x.mean(axis=(1, 2, 3))], axis=1))


def test_compute_metrics_with_a_pluggable_extractor():
    rng = np.random.default_rng(4)
    ref = rng.integers(0, 256, size=(60, 8, 8, 3), dtype=np.uint8)
    same = ref.copy()
    dark = (ref // 4).astype(np.uint8)
    extractor = _PixelStats()
    assert isinstance(extractor, FeatureExtractor)
    m_same = compute_metrics(same, ref, extractor, batch_size=16)
    m_dark = compute_metrics(dark, ref, extractor, batch_size=16)
    assert m_same.fid == pytest.approx(0.0, abs=1e-9)
    assert (m_same.precision, m_same.recall) == (1.0, 1.0)
    assert m_dark.fid > 0.1 and m_dark.precision == 0.0
    assert m_dark.num_samples == 60 and m_dark.extractor == "pixel-stats"
    feats = extract_features(extractor, ref, batch_size=7)  # batching gives the same features
    np.testing.assert_allclose(feats.features, extractor(ref).features)


class _TinyInception(torch.nn.Module):
    """The interface of NVIDIA's TorchScript FID Inception: uint8 NCHW in; features or probabilities out."""

    def forward(self, x: torch.Tensor, return_features: bool = False, no_output_bias: bool = False):
        x = x.to(torch.float32) / 255.0  # (N, 3, H, W)
        if return_features:
            return x.mean(dim=(2, 3))  # (N, 3)
        return torch.softmax(torch.stack([x.mean(dim=(1, 2, 3)), -x.mean(dim=(1, 2, 3))], dim=1), dim=1)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_inception_extractor_loads_torchscript_and_feeds_uint8_nchw(tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(_TinyInception()), str(path))
    extractor = InceptionExtractor.from_file(path)
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)  # NHWC, channels differ
    out = extractor(images)
    np.testing.assert_allclose(out.features, images.mean(axis=(1, 2)) / 255.0, rtol=1e-6)
    m = images.mean(axis=(1, 2, 3)) / 255.0
    probs = np.exp(np.stack([m, -m], 1)) / np.exp(np.stack([m, -m], 1)).sum(1, keepdims=True)
    np.testing.assert_allclose(np.exp(out.logits), probs, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="docs/fid.md"):
        InceptionExtractor.from_file(tmp_path / "missing.pt")


def test_digit_extractor_maps_uint8_to_the_classifier_range():
    from sit_diffusers.evaluation import DigitClassifier

    torch.manual_seed(0)
    clf = DigitClassifier().eval()
    extractor = DigitFeatureExtractor(clf)
    rng = np.random.default_rng(6)
    grey = rng.integers(0, 256, size=(5, 28, 28, 1), dtype=np.uint8)
    out = extractor(grey)
    x = torch.from_numpy(grey[..., 0].astype(np.float32))[:, None] / 255.0 * 2 - 1  # (5, 1, 28, 28) in [-1, 1]
    with torch.no_grad():
        np.testing.assert_allclose(out.features, clf.features(x).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.logits, clf(x).numpy(), rtol=1e-5, atol=1e-6)
    rgb = np.repeat(grey, 3, axis=-1)  # a grey picture stored as RGB gives the same features
    np.testing.assert_allclose(extractor(rgb).features, out.features)
    with pytest.raises(ValueError, match="28 x 28"):
        extractor(np.zeros((1, 32, 32, 3), np.uint8))


def _digits_uint8(x: torch.Tensor) -> np.ndarray:
    """``(N, 1, 28, 28)`` in [-1, 1] -> uint8 ``(N, 28, 28, 1)``."""
    return np.clip(np.floor((x[:, 0].numpy() + 1) * 127.5 + 0.5), 0, 255).astype(np.uint8)[..., None]


def test_offline_extractor_separates_real_digits_from_noise():
    """The shipped digit classifier as the extractor: real vs real digits score near the floor, noise far off,
    and the FID agrees with the evaluation module's independent Frechet distance."""
    from sit_diffusers.digits import digits_tensors
    from sit_diffusers.evaluation import feature_stats
    from sit_diffusers.evaluation import frechet_distance as evaluation_frechet

    x_train, _ = digits_tensors("train")
    x_held, y_held = digits_tensors("heldout")
    subset = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:1000]
    real, held = _digits_uint8(x_train[subset]), _digits_uint8(x_held)
    noise = np.random.default_rng(9).integers(0, 256, size=real.shape, dtype=np.uint8)
    extractor = DigitFeatureExtractor()
    assert (extractor(held).logits.argmax(1) == y_held.numpy()).mean() > 0.95
    good, bad = compute_metrics(real, held, extractor), compute_metrics(noise, held, extractor)
    assert good.fid < 30 < 500 < bad.fid
    assert good.precision > 0.8 and good.recall > 0.8 and bad.precision == 0.0
    assert good.inception_score > 8 and bad.inception_score < 2  # 10 classes, balanced vs one blur
    feats_real, feats_held = extract_features(extractor, real), extract_features(extractor, held)
    independent = evaluation_frechet(feature_stats(feats_real.features), feature_stats(feats_held.features))
    assert good.fid == pytest.approx(independent, rel=1e-6)


def test_fid_cli_scores_two_npz_files(tmp_path, capsys, monkeypatch):
    from sit_diffusers import fid

    rng = np.random.default_rng(10)
    ref = save_npz_images(tmp_path / "ref.npz", rng.integers(0, 256, (12, 6, 6, 3), np.uint8))
    same = save_npz_images(tmp_path / "same.npz", load_npz_images(ref))
    weights = tmp_path / "inception.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_TinyInception()), str(weights))
    metrics = fid.run([str(same), str(ref), "--inception-weights", str(weights)])
    assert metrics.fid == pytest.approx(0.0, abs=1e-9) and (metrics.precision, metrics.recall) == (1.0, 1.0)
    assert json.loads(capsys.readouterr().out)["num_reference"] == 12
    monkeypatch.delenv("SIT_FID_INCEPTION", raising=False)
    assert fid.main([str(same), str(ref)]) == 2  # no Inception weights anywhere: a usage error
    assert "docs/fid.md" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- ADM npz


def test_npz_round_trip_is_adm_format(tmp_path):
    images = np.random.default_rng(7).integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)
    path = save_npz_images(tmp_path / "samples.npz", images)
    with np.load(path) as data:
        assert list(data.keys()) == ["arr_0"]
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (3, 4, 4, 3)
    np.testing.assert_array_equal(load_npz_images(path), images)
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npz"]  # no temp file left
    with pytest.raises(ValueError, match="uint8"):
        save_npz_images(tmp_path / "bad.npz", images.astype(np.float32))


# ------------------------------------------------------------------------------------- training/sample_fid.py

SCRIPT = REPO_ROOT / "training" / "sample_fid.py"

# 5 images in batches of 2 (the last one short), SDE so that the Brownian draws come from per-image seeds too
RUN_ARGS = ["--num-samples", "5", "--batch-size", "2", "--seed", "3", "--preset", "sde-euler",
            "--num-inference-steps", "4", "--guidance-scale", "2", "--num-threads", "1"]


def _launch_two_processes(pipeline: Path, out: Path, port: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port), str(SCRIPT), "--pipeline", str(pipeline), "--out", str(out),
           *RUN_ARGS, *extra]
    return subprocess.Popen(cmd, env=env, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _pngs(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "samples").glob("*.png"))


def _run(*argv: str) -> dict:
    """``sample_fid.py`` in this process, through its checks: the result dict."""
    return sample_fid.run(sample_fid.parse_args(list(argv)))


def _main(argv: list[str], capsys) -> tuple[int, str]:
    """``sample_fid.main(argv)`` in this process: (exit status, stderr)."""
    capsys.readouterr()
    code = sample_fid.main(argv)
    return code, capsys.readouterr().err


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root``: (size, mtime, sha256) of files, None for folders."""
    import hashlib

    state = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            state[rel] = None
        else:
            stat = p.stat()
            state[rel] = (stat.st_size, stat.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return state


def _save_tiny_inception(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, the published port is not
        torch.jit.save(torch.jit.script(_TinyInception()), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    return build_tiny_repo(tmp_path_factory.mktemp("fidrepo") / "SiT-tiny-fixture").folder


@pytest.fixture(scope="module")
def one_process(tiny_pipeline, tmp_path_factory):
    """An uninterrupted single-process run (in this process) with metrics against a random reference."""
    root = tmp_path_factory.mktemp("one")
    weights = _save_tiny_inception(root / "inception.pt")
    reference = save_npz_images(root / "ref.npz", np.random.default_rng(8).integers(0, 256, (8, 16, 16, 3), np.uint8))
    out = root / "run"
    result = _run("--pipeline", str(tiny_pipeline), "--out", str(out), *RUN_ARGS,
                  "--reference", str(reference), "--inception-weights", str(weights))
    return out, result


def test_one_process_run_writes_pngs_npz_and_metrics(one_process):
    out, result = one_process
    assert result["generated"] == 3 and result["skipped"] == 0
    assert _pngs(out) == [f"{i:06d}.png" for i in range(5)]
    samples = load_npz_images(out / "samples.npz")
    assert samples.shape == (5, 16, 16, 3) and samples.dtype == np.uint8
    assert len({samples[i].tobytes() for i in range(5)}) == 5  # one seed per image: all different
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 5 and metrics["num_reference"] == 8
    assert metrics["fid"] > 0 and 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert metrics["inception_score"] >= 1.0
    record = json.loads((out / "run.json").read_text())
    identity = record["identity"]
    assert len(identity["weights_sha256"]) == 64 and identity["scheduler"]["mode"] == "sde"
    assert (identity["num_inference_steps"], identity["guidance_scale"], identity["seed"]) == (4, 2.0, 3)
    assert "pipeline" not in identity  # a run is its content, not a path


def test_two_processes_write_the_same_npz(one_process, tiny_pipeline, tmp_path):
    out = tmp_path / "two"
    proc = _launch_two_processes(tiny_pipeline, out, port=29541)
    log, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, log[-3000:]
    assert "process 1/2" in log  # really two processes
    np.testing.assert_array_equal(load_npz_images(out / "samples.npz"), load_npz_images(one_process[0] / "samples.npz"))
    assert json.loads((out / "run.json").read_text())["identity"] == \
        json.loads((one_process[0] / "run.json").read_text())["identity"]


def test_resume_after_sigkill_neither_duplicates_nor_loses_images(one_process, tiny_pipeline, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(SCRIPT), "--pipeline", str(tiny_pipeline), "--out", str(out), *RUN_ARGS,
           "--batch-delay", "3"]  # a pause after each batch: the kill lands after batch 1 (of 0, 1, 2)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not (out / "samples").is_dir() or len(_pngs(out)) < 3:
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    done = _pngs(out)
    assert len(done) == 4 and not (out / "samples.npz").exists()  # batches 0 and 1
    # batch 1 cut short (one of its PNGs gone) and an unfinished temp file, as a kill can leave them
    (out / "samples" / "000003.png").unlink()
    (out / "samples" / ".000003.png.tmp12345").write_bytes(b"\x89PNG truncated")

    result = _run("--pipeline", str(tiny_pipeline), "--out", str(out), *RUN_ARGS)
    assert (result["skipped"], result["generated"]) == (1, 2)  # batch 0 kept, batches 1 and 2 sampled
    assert _pngs(out) == [f"{i:06d}.png" for i in range(5)]
    assert not list((out / "samples").glob(".*"))
    np.testing.assert_array_equal(load_npz_images(out / "samples.npz"), load_npz_images(one_process[0] / "samples.npz"))


def test_corrupt_or_wrong_size_png_is_named_and_sampled_again(one_process, tiny_pipeline, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(one_process[0], out)
    (out / "samples.npz").unlink()
    torn = out / "samples" / "000001.png"  # batch 0: a torn file (half its bytes)
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    small = out / "samples" / "000004.png"  # batch 2: a picture of the wrong size
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(small)
    caplog.set_level(logging.WARNING, logger="sample_fid")
    result = _run("--pipeline", str(tiny_pipeline), "--out", str(out), *RUN_ARGS)
    assert (result["skipped"], result["generated"]) == (1, 2)  # batch 1 kept; 0 and 2 sampled again whole
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert str(torn) in warned and "unreadable" in warned
    assert str(small) in warned and "8 x 8 pixels, expected 16 x 16" in warned
    np.testing.assert_array_equal(load_npz_images(out / "samples.npz"), load_npz_images(one_process[0] / "samples.npz"))


def test_resume_with_other_weights_or_settings_is_refused(one_process, tiny_pipeline, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    pipe_copy = tmp_path / "moved-pipeline"
    shutil.copytree(tiny_pipeline, pipe_copy)
    out = tmp_path / "run"
    shutil.copytree(one_process[0], out)
    # The same weights under another path: the same run (identified by content), nothing left to do.
    assert _run("--pipeline", str(pipe_copy), "--out", str(out), *RUN_ARGS)["generated"] == 0

    before = _snapshot(tmp_path / "run")
    code, err = _main(["--pipeline", str(pipe_copy), "--out", str(out), *RUN_ARGS, "--guidance-scale", "4"], capsys)
    assert code == 2 and "other settings" in err and "guidance_scale: 2.0 -> 4.0" in err and str(out) in err
    code, err = _main(["--pipeline", str(pipe_copy), "--out", str(out), *RUN_ARGS, "--preset", "sde-heun"], capsys)
    assert code == 2 and "scheduler" in err and "'heun'" in err

    weights = pipe_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    key = sorted(state)[0]
    state[key] = state[key] + 1e-3  # one tensor nudged: another model
    save_file(state, str(weights))
    code, err = _main(["--pipeline", str(pipe_copy), "--out", str(out), *RUN_ARGS], capsys)
    assert code == 2 and "other weights" in err and "sha256" in err and "mix two models" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _snapshot(tmp_path / "run") == before


def _nan_forward(monkeypatch):
    """Make every transformer prediction NaN (as a diverged model or an fp16 overflow would)."""
    from sit_diffusers.modeling_sit import SiTTransformer2DModel

    forward = SiTTransformer2DModel.forward

    def nan_forward(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.sample.fill_(float("nan"))
        return out

    monkeypatch.setattr(SiTTransformer2DModel, "forward", nan_forward)


def test_nan_images_exit_1_and_write_nothing_and_lock_nothing(one_process, tiny_pipeline, tmp_path, capsys,
                                                               monkeypatch):
    from sit_diffusers.pipeline_sit import SiTPipeline

    out = tmp_path / "run"
    argv = ["--pipeline", str(tiny_pipeline), "--out", str(out), *RUN_ARGS]
    with monkeypatch.context() as patch:
        _nan_forward(patch)
        code, err = _main([*argv, "--guidance-scale", "5"], capsys)
    assert code == 1 and "nan" in err.lower() and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()  # no PNG of NaN garbage, no run.json: the folder is not claimed

    # NaN in the second batch only: the first batch's PNGs are kept, nothing of the second is written
    calls = []
    call = SiTPipeline.__call__

    def nan_on_second_batch(self, *args, **kwargs):
        result = call(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            result.images[0, 0, 0, 0] = np.nan
        return result

    with monkeypatch.context() as patch:
        patch.setattr(SiTPipeline, "__call__", nan_on_second_batch)
        code, err = _main(argv, capsys)  # other settings than the failed run above: accepted
    assert code == 1 and "images 2..3" in err and "nan" in err.lower()
    assert _pngs(out) == ["000000.png", "000001.png"] and not (out / "samples.npz").exists()
    # the resume samples what is missing; the result is the uninterrupted run's, bit for bit
    assert sample_fid.main(argv) == 0
    np.testing.assert_array_equal(load_npz_images(out / "samples.npz"), load_npz_images(one_process[0] / "samples.npz"))


def test_run_file_without_samples_locks_nothing(tiny_pipeline, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"format": 2, "identity": {"weights_sha256": "0" * 64}}))
    result = _run("--pipeline", str(tiny_pipeline), "--out", str(out), "--num-samples", "2", "--batch-size", "2",
                  "--num-inference-steps", "2", "--num-threads", "1")
    assert result["generated"] == 1
    assert json.loads((out / "run.json").read_text())["identity"]["weights_sha256"] != "0" * 64


# Bad input: each case exits 2 with one line naming the flag and the value, and writes nothing. ``{...}`` are
# paths made by the ``bad_files`` fixture; every case starts from a finished run in ``{tmp}/run``.
BASE = ["--pipeline", "{pipe}", "--out", "{tmp}/run", "--num-samples", "2", "--batch-size", "2",
        "--num-inference-steps", "2", "--num-threads", "1"]
BAD_INPUTS = [
    pytest.param(["--num-samples", "0"], ["--num-samples", "0"], id="num-samples-0"),
    pytest.param(["--num-samples", "-5"], ["--num-samples", "-5"], id="num-samples-negative"),
    pytest.param(["--num-samples", "2.5"], ["--num-samples", "2.5"], id="num-samples-float"),
    pytest.param(["--batch-size", "0"], ["--batch-size", "0"], id="batch-size-0"),
    pytest.param(["--batch-size", "x"], ["--batch-size", "'x'"], id="batch-size-text"),
    pytest.param(["--seed", "-1"], ["--seed", "-1"], id="seed-negative"),
    pytest.param(["--seed", str(2**64)], ["--seed", str(2**64)], id="seed-too-big"),
    pytest.param(["--num-inference-steps", "0"], ["--num-inference-steps", "0"], id="steps-0"),
    pytest.param(["--num-inference-steps", "2.7"], ["--num-inference-steps", "2.7"], id="steps-float"),
    pytest.param(["--guidance-scale", "nan"], ["--guidance-scale", "nan"], id="guidance-nan"),
    pytest.param(["--guidance-scale", "inf"], ["--guidance-scale", "inf"], id="guidance-inf"),
    pytest.param(["--guidance-scale", "-1"], ["--guidance-scale", "-1"], id="guidance-negative"),
    pytest.param(["--guidance-channels", "0"], ["--guidance-channels", "'0'"], id="channels-0"),
    pytest.param(["--guidance-channels", "three"], ["--guidance-channels", "'three'"], id="channels-text"),
    pytest.param(["--guidance-channels", "5"], ["--guidance-channels 5", "4 channels"], id="channels-too-many"),
    pytest.param(["--preset", "sde-eular"], ["--preset", "'sde-eular'", "did you mean 'sde-euler'"], id="preset"),
    pytest.param(["--labels", "uniform"], ["--labels", "'uniform'"], id="labels"),
    pytest.param(["--dtype", "float64"], ["--dtype", "'float64'"], id="dtype"),
    pytest.param(["--extractor", "clip"], ["--extractor", "'clip'"], id="extractor"),
    pytest.param(["--num-threads", "0"], ["--num-threads", "0"], id="threads-0"),
    pytest.param(["--batch-delay", "-1"], ["--batch-delay", "-1"], id="delay-negative"),
    pytest.param(["--batch-delay", "nan"], ["--batch-delay", "nan"], id="delay-nan"),
    pytest.param(["--nmu-samples", "3"], ["--nmu-samples", "3"], id="unknown-flag"),
    pytest.param(["--pipeline", "{tmp}/nowhere"], ["--pipeline", "{tmp}/nowhere"], id="pipeline-missing"),
    pytest.param(["--pipeline", "{files}"], ["--pipeline", "{files}", "model_index.json"], id="pipeline-not-one"),
    pytest.param(["--pipeline", "{files}/not-zip.npz"], ["--pipeline", "not-zip.npz"], id="pipeline-file"),
    pytest.param(["--pipeline", "org/no-such-model"], ["--pipeline", "'org/no-such-model'", "Hub cache"],
                 id="pipeline-not-cached-offline"),
    pytest.param(["--out", "{tmp}/a-file"], ["--out", "a-file", "not a folder"], id="out-is-a-file"),
    pytest.param(["--out", "{tmp}/a-file/run"], ["--out", "a-file/run", "not a folder"], id="out-under-a-file"),
    pytest.param(["--reference", "{tmp}/none.npz"], ["--reference", "none.npz", "does not exist"], id="ref-missing"),
    pytest.param(["--reference", "{files}/ref.npz", "--inception-weights", "{files}/inception.pt"],
                 ["--num-samples 2 with --reference", "at least 4"], id="ref-too-few-samples"),
    pytest.param(["--reference", "{files}"], ["--reference", "is a folder"], id="ref-folder"),
    pytest.param(["--reference", "{files}/not-zip.npz"], ["--reference", "not-zip.npz", "not a readable .npz"],
                 id="ref-not-npz"),
    pytest.param(["--reference", "{files}/no-arr0.npz"], ["--reference", "no-arr0.npz", "'arr_0'"], id="ref-no-arr0"),
    pytest.param(["--reference", "{files}/float.npz"], ["--reference", "float.npz", "float32"], id="ref-float"),
    pytest.param(["--reference", "{files}/flat.npz"], ["--reference", "flat.npz", "(4, 16, 16)"], id="ref-3d"),
    pytest.param(["--reference", "{files}/big.npz", "--inception-weights", "{files}/inception.pt"],
                 ["--reference", "big.npz", "32 x 32", "16 x 16"], id="ref-wrong-size"),
    pytest.param(["--reference", "{files}/ref.npz", "--extractor", "digits"],
                 ["--reference", "ref.npz", "16 x 16", "28 x 28"], id="ref-vs-digits"),
    pytest.param(["--reference", "{files}/ref.npz"], ["--inception-weights", "SIT_FID_INCEPTION", "docs/fid.md"],
                 id="weights-none"),
    pytest.param(["--reference", "{files}/ref.npz", "--inception-weights", "{tmp}/inc.pt"],
                 ["--inception-weights", "inc.pt", "does not exist"], id="weights-missing"),
    pytest.param(["--reference", "{files}/ref.npz", "--inception-weights", "{files}/not-zip.npz"],
                 ["--inception-weights", "not-zip.npz", "could not be loaded"], id="weights-garbage"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    """References and weights, good and bad, for the bad-input table."""
    files = tmp_path_factory.mktemp("bad-files")
    rng = np.random.default_rng(11)
    save_npz_images(files / "ref.npz", rng.integers(0, 256, (4, 16, 16, 3), np.uint8))
    save_npz_images(files / "big.npz", rng.integers(0, 256, (4, 32, 32, 3), np.uint8))
    np.savez(files / "float.npz", arr_0=np.zeros((4, 16, 16, 3), np.float32))
    np.savez(files / "flat.npz", arr_0=np.zeros((4, 16, 16), np.uint8))
    np.savez(files / "no-arr0.npz", images=np.zeros((4, 16, 16, 3), np.uint8))
    (files / "not-zip.npz").write_bytes(b"this is not a zip archive")
    _save_tiny_inception(files / "inception.pt")
    return files


@pytest.mark.parametrize(("args", "expected"), BAD_INPUTS)
def test_bad_input_exits_2_names_it_and_writes_nothing(args, expected, one_process, tiny_pipeline, bad_files,
                                                       tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("SIT_FID_INCEPTION", raising=False)
    shutil.copytree(one_process[0], tmp_path / "run")  # bad input must not touch a finished run either
    (tmp_path / "a-file").write_text("a file, not a folder")
    paths = {"pipe": str(tiny_pipeline), "tmp": str(tmp_path), "files": str(bad_files)}
    argv = [a.format(**paths) for a in [*BASE, *args]]
    before = _snapshot(tmp_path)
    code, err = _main(argv, capsys)
    assert code == 2, err
    assert err.startswith("sample_fid.py: error: ") and err.count("\n") == 1 and "Traceback" not in err
    for text in expected:
        assert text.format(**paths) in err
    assert _snapshot(tmp_path) == before


def test_python_api_checks_its_arguments_too():
    from sit_diffusers.validation import InputError

    with pytest.raises(InputError, match="--batch-size must be an integer, got 2.5"):
        sample_fid.SampleConfig(pipeline="p", out="o", batch_size=2.5)
    with pytest.raises(InputError, match="--guidance-channels"):
        sample_fid.SampleConfig(pipeline="p", out="o", guidance_channels=True)
    assert sample_fid.SampleConfig(pipeline="p", out="o", guidance_channels=3).channels == 3
    assert sample_fid.SampleConfig(pipeline="p", out="o").channels is None  # the pipeline's saved default
    assert sample_fid.SampleConfig(pipeline="p", out="o", guidance_channels="all").channels == "all"


def test_help_lists_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as info:
        sample_fid.main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(sample_fid.SampleConfig):
        assert "--" + f.name.replace("_", "-") in text
    assert "--debug" in text and "(default: 50000)" in text and "(default: default)" in text


def test_seeds_labels_and_batches_do_not_depend_on_processes():
    cfg = sample_fid.parse_args(["--pipeline", "p", "--out", "o", "--num-samples", "1000", "--batch-size", "7"])
    seeds = {sample_fid.image_seed(s, i) for s in range(3) for i in range(1000)}
    assert len(seeds) == 3000  # no two images share a generator, across neighbouring seeds either
    labels = sample_fid.class_labels(cfg, 1000)
    assert labels == sample_fid.class_labels(cfg, 1000) and len(set(labels)) > 500
    balanced = sample_fid.parse_args(["--pipeline", "p", "--out", "o", "--num-samples", "25", "--labels", "balanced"])
    assert sample_fid.class_labels(balanced, 10) == [i % 10 for i in range(25)]
    batches = sample_fid.batch_ranges(1000, 7)
    assert [i for r in batches for i in r] == list(range(1000)) and len(batches[-1]) == 1000 % 7


def test_uint8_conversion_is_the_official_one():
    y = torch.rand(20000, dtype=torch.float64) * 2.2 - 1.1  # decoded images in about [-1, 1]
    official = torch.clamp(127.5 * y + 128.0, 0, 255).to(torch.uint8).numpy()  # sample_ddp.py
    ours = sample_fid.to_uint8(((y.clamp(-1, 1) + 1) / 2).numpy())  # the pipeline's [0, 1] images
    np.testing.assert_array_equal(ours, official)
