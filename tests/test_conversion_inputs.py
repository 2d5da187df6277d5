"""Bad inputs to the converter: ``pipelines/convert_sit_to_diffusers.py`` and the Python API.

Every CLI case runs ``main(argv)`` in-process and asserts exit status 2, one line on stderr naming the flag
and the bad value, no traceback, and an unchanged working folder (names, sizes, mtimes, sha256 of every
file and folder under ``tmp_path``: no output, no temporary folder, nothing a pickle payload would create).
The same bad files through ``load_official_checkpoint`` raise ``InputError`` (``ConversionError``) naming
the file and the offending key. A second group checks that a failure after the checks (saving, reloading)
leaves no half-written output and no temporary folder. Offline throughout (``HF_HUB_OFFLINE``, an empty
Hub cache under ``tmp_path``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import OFFICIAL_FIXTURES, load_official, load_script
from safetensors.torch import save_file

from sit_diffusers.conversion import ConversionError, load_official_checkpoint, official_to_diffusers_key
from sit_diffusers.modeling_sit import SiTTransformer2DModel
from sit_diffusers.validation import InputError

PROG = "convert_sit_to_diffusers.py"


def _load_cli():
    return load_script("pipelines/convert_sit_to_diffusers.py", "convert_cli")


CLI = _load_cli()


@pytest.fixture(scope="module")
def official_sd() -> dict[str, torch.Tensor]:
    return load_official("model")


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """No network: the Hub is offline and its cache is an empty folder of this test's own."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: (is folder, size, mtime_ns, sha256 of a file)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        out[str(path.relative_to(root))] = (path.is_dir(), st.st_size, st.st_mtime_ns, digest)
    return out


# ----------------------------------------------------------------------------- bad checkpoint files


class _Payload:
    """Pickles to ``open(marker, "w")``: loading it with plain pickle would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _half(name: str) -> bytes:
    """The first half of an official fixture file (a download cut short)."""
    data = (OFFICIAL_FIXTURES / name).read_bytes()
    return data[: len(data) // 2]


def _pt(obj, **kwargs) -> Callable[[Path, dict], object]:
    return lambda path, sd: torch.save(obj(sd) if callable(obj) else obj, path, **kwargs)


def _edit(fn: Callable[[dict], None]) -> Callable[[dict], dict]:
    """A copy of the official state dict changed by ``fn`` (in place on the copy)."""

    def make(sd: dict) -> dict:
        sd = dict(sd)
        fn(sd)
        return sd

    return make


def _set(**items) -> Callable[[dict], None]:
    return lambda sd: sd.update({k.replace("__", "."): v for k, v in items.items()})


def _with_nan(sd: dict) -> None:
    bad = sd["blocks.1.mlp.fc1.weight"].clone()
    bad[3, 5] = float("nan")
    sd["blocks.1.mlp.fc1.weight"] = bad
    sd["final_layer.linear.bias"] = torch.full_like(sd["final_layer.linear.bias"], float("inf"))  # later key


def _rename(old: str, new: str) -> Callable[[dict], None]:
    return lambda sd: sd.__setitem__(new, sd.pop(old))


def _move_block(sd: dict) -> None:
    for key in [k for k in sd if k.startswith("blocks.1.")]:
        sd[key.replace("blocks.1.", "blocks.5.")] = sd.pop(key)


def _write_bytes(data) -> Callable[[Path, dict], None]:
    return lambda path, sd: path.write_bytes(data() if callable(data) else data)


def _write_zip(path: Path, sd: dict) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not a checkpoint")


def _write_safetensors(fn: Callable[[dict], dict]) -> Callable[[Path, dict], None]:
    return lambda path, sd: save_file(fn(sd), str(path))


def _diffusers_names(sd: dict) -> dict:
    return {official_to_diffusers_key(k): v.contiguous() for k, v in sd.items()}


@dataclass(frozen=True)
class BadFile:
    id: str
    filename: str
    write: Callable[[Path, dict], object]  # (path, official state dict) -> writes the bad file
    expect: tuple[str, ...]  # substrings of the message besides the file name


BAD_FILES = [
    BadFile("zero-bytes", "empty.pt", _write_bytes(b""), ("is empty (0 bytes)",)),
    BadFile("truncated-pt", "half.pt", _write_bytes(lambda: _half("original_checkpoint.pt")),
            ("not a readable torch checkpoint: damaged or truncated",)),
    BadFile("truncated-safetensors", "half.safetensors", _write_bytes(lambda: _half("model.safetensors")),
            ("not a readable safetensors file: damaged or truncated",)),
    BadFile("text-file", "notes.pt", _write_bytes(b"SiT-XL-2-256 weights go here\n"), ("is a text file",)),
    BadFile("random-bytes", "random.pt", _write_bytes(bytes(range(7, 250)) * 4), ("not a checkpoint",)),
    BadFile("png", "image.png", _write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200)), ("is a PNG image",)),
    BadFile("json", "config.json", _write_bytes(json.dumps({"hidden_size": 64}).encode()), ("JSON",)),
    BadFile("zip-not-torch", "archive.pt", _write_zip, ("is a zip archive without data.pkl",)),
    BadFile("plain-pickle", "plain.pkl", _write_bytes(lambda: pickle.dumps({"a": 1}, protocol=4)),
            ("not a readable torch checkpoint",)),
    BadFile("pickle-list", "list.pt", _pt([torch.zeros(2)]), ("holds a list, not a state dict",)),
    BadFile("pickle-tensor", "tensor.pt", _pt(torch.zeros(2, 3)), ("holds a tensor of shape (2, 3)",)),
    BadFile("pickle-empty-dict", "emptydict.pt", _pt({}), ("holds an empty dict",)),
    BadFile("pickle-non-tensor-value", "mixed.pt", _pt(_edit(_set(lr=0.1))), ("entry 'lr' is a float",)),
    BadFile("pickle-int-key", "intkey.pt", _pt({0: torch.zeros(1)}), ("has the key 0",)),
    BadFile("train-py-without-ema", "model_only.pt", _pt(lambda sd: {"model": dict(sd)}),
            ("without a 'ema' entry",)),
    BadFile("code-payload", "evil.pt", lambda p, sd: torch.save({**sd, "x": _Payload(p.parent / "pwned")}, p),
            ("was refused", "open", "could run code")),
    BadFile("code-payload-legacy", "evil_legacy.pt",
            lambda p, sd: torch.save({"x": _Payload(p.parent / "pwned")}, p,
                                     _use_new_zipfile_serialization=False),
            ("was refused", "open")),
    BadFile("safetensors-foreign-keys", "foreign.safetensors",
            _write_safetensors(lambda sd: {"encoder.weight": torch.zeros(2, 2)}),
            ("holds none of the official SiT keys", "'encoder.weight'")),
    BadFile("safetensors-diffusers-names", "converted.safetensors", _write_safetensors(_diffusers_names),
            ("already converted", "from_pretrained")),
    BadFile("safetensors-renamed-key", "renamed.safetensors",
            _write_safetensors(_edit(_rename("blocks.0.attn.qkv.weight", "blocks.0.attn.qkvv.weight"))),
            ("unexpected keys", "'blocks.0.attn.qkvv.weight'", "transformer_blocks.0.attn.to_qkv.weight")),
    BadFile("safetensors-int-dtype", "ints.safetensors",
            _write_safetensors(_edit(_set(pos_embed=torch.zeros(1, 16, 64, dtype=torch.int64)))),
            ("'pos_embed' has dtype torch.int64",)),
    BadFile("missing-key", "missing.pt", _pt(_edit(lambda sd: sd.pop("blocks.1.attn.proj.bias"))),
            ("missing keys", "transformer_blocks.1.attn.to_out.bias")),
    BadFile("unexpected-key", "extra.pt", _pt(_edit(_set(blocks__0__attn__q_norm__weight=torch.ones(16)))),
            ("unexpected keys", "'blocks.0.attn.q_norm.weight'")),
    BadFile("wrong-shape", "shape.pt", _pt(_edit(_set(blocks__0__mlp__fc2__weight=torch.zeros(64, 128)))),
            ("wrong shapes", "blocks.0.mlp.fc2.weight: (64, 128) != expected (64, 256)")),
    BadFile("nan-weight", "nan.pt", _pt(_edit(_with_nan)),
            ("'blocks.1.mlp.fc1.weight' holds 1 NaN/inf", "refusing")),
    BadFile("inf-weight-safetensors", "inf.safetensors",
            _write_safetensors(_edit(_set(final_layer__linear__bias=torch.full((32,), float("-inf"))))),
            ("'final_layer.linear.bias' holds 32 NaN/inf",)),
    BadFile("pos-embed-zero-tokens", "notokens.pt", _pt(_edit(_set(pos_embed=torch.zeros(1, 0, 64)))),
            ("'pos_embed' is empty (shape (1, 0, 64))",)),
    BadFile("pos-embed-not-square", "tokens15.pt", _pt(_edit(_set(pos_embed=torch.zeros(1, 15, 64)))),
            ("pos_embed has 15 tokens, not a square grid",)),
    BadFile("empty-label-table", "noclass.pt",
            _pt(_edit(_set(y_embedder__embedding_table__weight=torch.zeros(0, 64)))),
            ("'y_embedder.embedding_table.weight' is empty",)),
    BadFile("width-not-multiple-of-4", "width.pt",
            _pt(_edit(_set(x_embedder__proj__weight=torch.zeros(62, 4, 2, 2)))),
            ("width 62, not a multiple of 4",)),
    BadFile("block-index-gap", "gap.pt", _pt(_edit(_move_block)), ("skip 4 block(s) (first: blocks.1.*)",)),
]


def _write_bad(root: Path, case: BadFile, sd: dict) -> Path:
    path = root / case.filename
    case.write(path, sd)
    return path


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = CLI.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_refused(code: int, out: str, err: str, expect) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{PROG}: error: ")
    assert "Traceback" not in out + err
    for text in expect:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c.id for c in BAD_FILES])
def test_cli_refuses_bad_checkpoint(case, tmp_path, official_sd, capsys):
    path = _write_bad(tmp_path, case, official_sd)
    before = _snapshot(tmp_path)
    code, out, err = _run(["--checkpoint", str(path), "--output", str(tmp_path / "out"), "--num-heads", "4"],
                          capsys)
    _assert_refused(code, out, err, ("--checkpoint", f"{case.filename}'", *case.expect))
    assert _snapshot(tmp_path) == before
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("case", BAD_FILES, ids=[c.id for c in BAD_FILES])
def test_api_refuses_bad_checkpoint(case, tmp_path, official_sd):
    path = _write_bad(tmp_path, case, official_sd)
    before = _snapshot(tmp_path)
    with pytest.raises(InputError) as info:
        load_official_checkpoint(path, num_heads=4)
    assert isinstance(info.value, ConversionError)
    message = str(info.value)
    assert "\n" not in message and f"{case.filename}'" in message
    for text in case.expect:
        assert text in message, (text, message)
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- bad flags and paths


def _fixture(name: str = "original_checkpoint.pt") -> str:
    return str(OFFICIAL_FIXTURES / name)


def _vae_folder(latent_channels: int) -> Callable[[Path], str]:
    def make(root: Path) -> str:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                            up_block_types=("UpDecoderBlock2D",), layers_per_block=1, norm_num_groups=4,
                            latent_channels=latent_channels, sample_size=8)
        vae.save_pretrained(str(root / "vae"))
        return str(root / "vae")

    return make


def _config_only_vae(root: Path) -> str:
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    return str(root / "vae")


def _non_empty_output(root: Path) -> str:
    (root / "out").mkdir()
    (root / "out" / "keep.txt").write_text("mine")
    return str(root / "out")


def _file_output(root: Path) -> str:
    (root / "out").write_text("a file")
    return str(root / "out")


def _under_a_file(root: Path) -> str:
    (root / "plain").write_text("a file")
    return str(root / "plain" / "out")


def _inputs_inside_output(root: Path) -> str:
    (root / "in").mkdir()
    (root / "in" / "model.pt").write_bytes(Path(_fixture()).read_bytes())
    return str(root / "in")


@dataclass(frozen=True)
class BadArgs:
    id: str
    argv: Callable[[Path], list[str]]  # root -> argv
    expect: tuple[str, ...]
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None


def _args(*extra, ckpt: str | None = None, out: str | None = None, heads: bool = True,
          only: bool = True) -> Callable[[Path], list[str]]:
    """argv for the fixture checkpoint -> ``root/out``; items of ``extra`` may be callables of ``root``."""

    def make(root: Path) -> list[str]:
        rest = [e(root) if callable(e) else e for e in extra]
        argv = ["--checkpoint", ckpt if ckpt is not None else _fixture(),
                "--output", out if out is not None else str(root / "out")]
        argv += (["--num-heads", "4"] if heads else []) + (["--transformer-only"] if only else [])
        return argv + rest

    return make


def _deny_write(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == root else real(p, mode, **kw))


BAD_ARGS = [
    BadArgs("num-heads-not-dividing", lambda r: _args(heads=False)(r) + ["--num-heads", "5"],
            ("--num-heads 5 does not divide the width 64", "[1, 2, 4, 8, 16, 32, 64]")),
    BadArgs("num-heads-zero", lambda r: _args(heads=False)(r) + ["--num-heads", "0"],
            ("argument --num-heads: must be >= 1, got 0",)),
    BadArgs("num-heads-negative", lambda r: _args(heads=False)(r) + ["--num-heads=-2"],
            ("argument --num-heads: must be >= 1, got -2",)),
    BadArgs("num-heads-not-integer", lambda r: _args(heads=False)(r) + ["--num-heads", "2.5"],
            ("argument --num-heads: must be a whole number >= 1, got '2.5'",)),
    BadArgs("num-classes-not-the-table", lambda r: _args()(r) + ["--num-classes", "5"],
            ("has 11 rows; --num-classes 5 needs 5 (no null class) or 6 (with the null class)",)),
    BadArgs("num-classes-zero", lambda r: _args()(r) + ["--num-classes", "0"],
            ("argument --num-classes: must be >= 1, got 0",)),
    BadArgs("num-heads-needed", _args(heads=False),
            ("match no named SiT config", "pass --num-heads (a divisor of 64)")),
    BadArgs("hub-file-offline", _args(ckpt="sit-test/no-such-repo:SiT-XL-2-256.pt"),
            ("--checkpoint 'sit-test/no-such-repo:SiT-XL-2-256.pt'",
             "offline mode is on (HF_HUB_OFFLINE=1)")),
    BadArgs("checkpoint-missing", lambda r: _args(ckpt=str(r / "absent.pt"))(r),
            ("--checkpoint", "absent.pt' does not exist")),
    BadArgs("checkpoint-is-a-folder", lambda r: _args(ckpt=str(r))(r), ("--checkpoint", "is a folder")),
    BadArgs("checkpoint-empty-string", _args(ckpt=""), ("--checkpoint is empty",)),
    BadArgs("output-not-empty", lambda r: _args(out=_non_empty_output(r))(r),
            ("--output", "out' is a folder that is not empty (1 entry)", "--overwrite")),
    BadArgs("output-is-a-file", lambda r: _args(out=_file_output(r))(r), ("--output", "is an existing file")),
    BadArgs("output-under-a-file", lambda r: _args(out=_under_a_file(r))(r),
            ("--output", "plain' exists and is not a folder (it is a file, so no folder can be made under it)")),
    BadArgs("output-parent-not-writable", _args(), ("--output", "is not writable"), patch=_deny_write),
    BadArgs("output-holds-the-checkpoint", lambda r: _args(
        ckpt=str(Path(_inputs_inside_output(r)) / "model.pt"), out=str(r / "in"))(r) + ["--overwrite"],
            ("--output", "refusing to replace it")),
    BadArgs("output-is-current-folder", _args(out="."), ("--output '.' is the current folder",)),
    BadArgs("default-vae-offline", _args(only=False),
            ("--vae 'stabilityai/sd-vae-ft-ema' (the default for 4-channel latents)", "offline mode is on",
             "--vae none", "--transformer-only")),
    BadArgs("vae-repo-offline", _args("--vae", "org/some-vae", only=False),
            ("--vae 'org/some-vae' is not in the local Hub cache", "--vae none", "--transformer-only")),
    BadArgs("vae-missing-folder", _args("--vae", "./no-such-vae", only=False),
            ("--vae './no-such-vae' is neither an existing folder nor a Hub repo id",)),
    BadArgs("vae-folder-without-config", lambda r: _args(only=False)(r) + ["--vae", str(r)],
            ("--vae", "has no config.json")),
    BadArgs("vae-folder-without-weights", lambda r: _args(only=False)(r) + ["--vae", _config_only_vae(r)],
            ("--vae", "vae' cannot be loaded", "--vae none")),
    BadArgs("vae-wrong-latent-channels", lambda r: _args(only=False)(r) + ["--vae", _vae_folder(3)(r)],
            ("--vae", "has 3 latent channels, the checkpoint's transformer takes 4")),
    BadArgs("sampler-unknown", _args("--sampler", "ode-dopri", only=False),
            ("unknown --sampler 'ode-dopri'", "ode-dopri5", "did you mean 'ode-dopri5'?")),
    BadArgs("sampler-with-transformer-only", _args("--sampler", "ode-dopri5"),
            ("--sampler 'ode-dopri5' applies to a pipeline", "--transformer-only")),
    BadArgs("vae-with-transformer-only", _args("--vae", "none"), ("--vae 'none' applies to a pipeline",)),
    BadArgs("dtype-unknown", _args("--dtype", "float61"),
            ("unknown --dtype 'float61'", "float32, bfloat16, float16", "did you mean")),
    BadArgs("dtype-alias", _args("--dtype", "fp16"), ("unknown --dtype 'fp16'", "float16")),
    BadArgs("flag-typo", _args("--transformer-onyl"), ("unrecognized arguments: --transformer-onyl",)),
    BadArgs("flag-abbreviated",
            lambda r: ["--checkpoint", _fixture(), "--output", str(r / "out"), "--transformer"],
            ("unrecognized arguments: --transformer",)),
    BadArgs("required-missing", lambda r: ["--output", str(r / "out")],
            ("the following arguments are required: --checkpoint",)),
]


@pytest.mark.parametrize("case", BAD_ARGS, ids=[c.id for c in BAD_ARGS])
def test_cli_refuses_bad_arguments(case, tmp_path, capsys, monkeypatch):
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)
    argv = case.argv(root)
    if case.patch is not None:
        case.patch(monkeypatch, root)
    before = _snapshot(tmp_path)
    code, out, err = _run(argv, capsys)
    _assert_refused(code, out, err, case.expect)
    assert _snapshot(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path, capsys):
    (tmp_path / "empty.pt").write_bytes(b"")
    argv = ["--checkpoint", str(tmp_path / "empty.pt"), "--output", str(tmp_path / "out")]
    code, _, err = _run(argv + ["--debug"], capsys)
    assert code == 2 and "Traceback" in err and "ConversionError" in err
    assert err.strip().splitlines()[-1].startswith(f"{PROG}: error: --checkpoint")


# ----------------------------------------------------------------------------- failures after the checks


def _argv(out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", _fixture(), "--output", str(out), "--num-heads", "4", *extra]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    """A reload check that fails: no output, no temporary folder, no parent folder made for it."""

    def broken(model, folder):
        raise RuntimeError("reloaded weights differ")

    monkeypatch.setattr(CLI, "_verify_saved", broken)
    out = tmp_path / "new" / "nested" / "out"
    with pytest.raises(RuntimeError, match="reloaded weights differ"):
        CLI.main(_argv(out, "--transformer-only"))
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []


def test_failed_pipeline_save_keeps_the_old_output(tmp_path, monkeypatch):
    """The VAE / pipeline step fails half-way with --overwrite: the old folder is kept, nothing is left."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous conversion")
    before = _snapshot(out)

    class HalfWritten:
        def save_pretrained(self, folder, **kwargs):
            (Path(folder) / "transformer").mkdir()
            (Path(folder) / "transformer" / "config.json").write_text("{}")
            raise OSError("No space left on device")

    monkeypatch.setattr(CLI, "_build_pipeline", lambda model, vae, sampler: HalfWritten())
    with pytest.raises(OSError, match="No space left"):
        CLI.main(_argv(out, "--vae", "none", "--overwrite"))
    assert _snapshot(out) == before
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_the_folder_once_complete(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous conversion")
    assert CLI.main(_argv(out, "--transformer-only", "--overwrite")) == 0
    assert not (out / "old.txt").exists()
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    assert _leftovers(tmp_path) == []
    model = SiTTransformer2DModel.from_pretrained(out)
    assert model.config.num_heads == 4 and model.config.num_classes == 10
    assert "wrote" in capsys.readouterr().out


def test_empty_output_folder_is_used_without_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    assert CLI.main(_argv(tmp_path / "out", "--transformer-only")) == 0
    assert (tmp_path / "out" / "config.json").is_file() and _leftovers(tmp_path) == []


def test_pipeline_with_a_local_vae_and_sampler(tmp_path):
    vae = _vae_folder(4)(tmp_path)
    out = tmp_path / "made" / "pipe"
    assert CLI.main(_argv(out, "--vae", vae, "--sampler", "ode-dopri5")) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["vae"][1] == "AutoencoderKL"
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["solver"] == "dopri5"
    assert _leftovers(out.parent) == []
