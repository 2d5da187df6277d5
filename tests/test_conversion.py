"""Official SiT checkpoint -> diffusers: formats, inferred config, round trips, CLI and every error path."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import load_official, load_script

from sit_diffusers import conversion
from sit_diffusers.conversion import (
    CheckpointNotFoundError,
    ConversionError,
    convert_official_state_dict,
    load_official_checkpoint,
    load_official_state_dict,
    official_to_diffusers_key,
)
from sit_diffusers.modeling_sit import SiTTransformer2DModel
from sit_diffusers.validation import InputError


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def official_sd() -> dict[str, torch.Tensor]:
    return load_official("model")


@pytest.fixture(scope="module")
def fwd() -> dict[str, torch.Tensor]:
    return load_official("forward")


def _out(model: SiTTransformer2DModel, fwd: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(fwd["x"], fwd["t"], fwd["y"].long()).sample


# ----------------------------------------------------------------------------- formats and config


def test_pt_and_safetensors_hold_the_same_weights(official_dir, official_sd):
    from_pt = load_official_state_dict(official_dir / "original_checkpoint.pt")
    from_st = load_official_state_dict(official_dir / "model.safetensors")
    assert from_pt.keys() == from_st.keys() == official_sd.keys()
    assert all(torch.equal(from_pt[k], from_st[k]) for k in from_pt)


def test_inferred_config_is_the_official_one(official_dir, official_sd):
    manifest = json.loads((official_dir / "manifest.json").read_text())
    kwargs = dict(manifest["sit_kwargs"])
    kwargs["sample_size"] = kwargs.pop("input_size")
    config, converted = convert_official_state_dict(official_sd, num_heads=kwargs["num_heads"])
    assert config == kwargs
    # one-to-one: every official key used once, every model key filled
    assert len(converted) == len(official_sd)
    assert set(converted) == set(SiTTransformer2DModel(**config).state_dict())
    for key, value in official_sd.items():
        assert torch.equal(converted[official_to_diffusers_key(key)], value)


def test_safetensors_checkpoint_reproduces_official_output(official_dir, fwd):
    model = load_official_checkpoint(official_dir / "model.safetensors", num_heads=4)
    assert not model.training
    assert rel_err(_out(model, fwd), fwd["out"]) <= 1e-5


def test_num_heads_from_named_config(official_sd):
    """A checkpoint with SiT-S/8 shapes needs no num_heads; a wrong head count still loads but breaks parity."""
    with torch.device("meta"):
        s8 = SiTTransformer2DModel.from_name("SiT-S/8", sample_size=32)
    inverse = {v: k for k, v in {k: official_to_diffusers_key(k) for k in _official_keys(12)}.items()}
    official = {inverse[k]: torch.empty(v.shape, device="meta") for k, v in s8.state_dict().items()}
    config, _ = convert_official_state_dict(official)
    assert (config["num_heads"], config["depth"], config["hidden_size"], config["patch_size"]) == (6, 12, 384, 8)
    assert config["num_classes"] == 1000 and config["sample_size"] == 32 and config["learn_sigma"]


def test_wrong_num_heads_changes_output(official_dir, fwd):
    """Heads are not visible in the shapes: the parity test is what pins them (4 for the fixture)."""
    wrong = load_official_checkpoint(official_dir / "original_checkpoint.pt", num_heads=2)
    assert rel_err(_out(wrong, fwd), fwd["out"]) > 1e-3


def _official_keys(depth: int) -> list[str]:
    keys = list(conversion._GLOBAL_KEYS)
    keys += [f"blocks.{i}.{k}" for i in range(depth) for k in conversion._BLOCK_KEYS]
    return keys


def test_train_py_checkpoint_ema_by_default(tmp_path, official_sd, fwd):
    """{"model", "ema", "opt", "args"} with an argparse.Namespace loads under weights_only."""
    raw = {k: v + 1.0 for k, v in official_sd.items()}
    ckpt = {
        "model": raw,
        "ema": dict(official_sd),
        "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        "args": argparse.Namespace(model="SiT-XL/2", image_size=256, num_classes=10, path_type="Linear"),
    }
    path = tmp_path / "0000100.pt"
    torch.save(ckpt, path)
    ema = load_official_state_dict(path)
    assert all(torch.equal(ema[k], official_sd[k]) for k in official_sd)
    model_weights = load_official_state_dict(path, use_ema=False)
    assert all(torch.equal(model_weights[k], raw[k]) for k in raw)
    assert rel_err(_out(load_official_checkpoint(path, num_heads=4), fwd), fwd["out"]) <= 1e-5


def test_hub_spec_goes_through_hf_hub_download(monkeypatch, official_dir, official_sd):
    calls = []

    def fake_download(repo_id: str, filename: str) -> str:
        calls.append((repo_id, filename))
        return str(official_dir / "original_checkpoint.pt")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    sd = load_official_state_dict("nyu-visionx/SiT-collections:SiT-XL-2-256.pt")
    assert calls == [("nyu-visionx/SiT-collections", "SiT-XL-2-256.pt")]
    assert sd.keys() == official_sd.keys()


# ----------------------------------------------------------------------------- round trip


def test_save_pretrained_from_pretrained_round_trip(tmp_path, official_dir, fwd):
    model = load_official_checkpoint(official_dir / "original_checkpoint.pt", num_heads=4)
    model.save_pretrained(tmp_path / "sit", safe_serialization=True)
    assert (tmp_path / "sit" / "diffusion_pytorch_model.safetensors").is_file()
    reloaded = SiTTransformer2DModel.from_pretrained(tmp_path / "sit").eval()
    assert reloaded.config.num_heads == 4 and reloaded.config.num_classes == 10
    torch.testing.assert_close(_out(reloaded, fwd), _out(model, fwd), rtol=0, atol=0)


# ----------------------------------------------------------------------------- error paths


def test_missing_key_is_named(official_sd):
    sd = dict(official_sd)
    del sd["blocks.1.attn.proj.bias"]
    with pytest.raises(ConversionError, match=r"missing keys.*transformer_blocks\.1\.attn\.to_out\.bias"):
        convert_official_state_dict(sd, num_heads=4)


def test_extra_key_is_named(official_sd):
    sd = dict(official_sd)
    sd["blocks.0.attn.q_norm.weight"] = torch.ones(16)
    with pytest.raises(ConversionError, match=r"unexpected keys.*blocks\.0\.attn\.q_norm\.weight"):
        convert_official_state_dict(sd, num_heads=4)
    sd = dict(official_sd)
    sd["blocks.2.mlp.fc1.weight"] = official_sd["blocks.1.mlp.fc1.weight"]  # a block the rest lacks
    with pytest.raises(ConversionError, match="missing keys"):
        convert_official_state_dict(sd, num_heads=4)


def test_wrong_shape_is_named(official_sd):
    sd = dict(official_sd)
    sd["blocks.0.mlp.fc2.weight"] = torch.zeros(64, 128)
    with pytest.raises(ConversionError, match=r"wrong shapes.*blocks\.0\.mlp\.fc2\.weight: \(64, 128\)"):
        convert_official_state_dict(sd, num_heads=4)
    sd = dict(official_sd)
    sd["final_layer.linear.weight"] = torch.zeros(20, 64)  # 20 rows is neither p*p*C nor p*p*2C
    with pytest.raises(ConversionError, match="final_layer.linear.weight"):
        convert_official_state_dict(sd, num_heads=4)


def test_unknown_architecture_needs_num_heads(official_sd):
    with pytest.raises(InputError, match=r"match no named SiT config.*pass num_heads \(a divisor of 64\)"):
        convert_official_state_dict(official_sd)
    with pytest.raises(InputError, match=r"num_heads 5 does not divide the width 64.*\[1, 2, 4, 8, 16, 32, 64"):
        convert_official_state_dict(official_sd, num_heads=5)
    for bad in (0, -4, 2.0, "4", True):
        with pytest.raises(InputError, match="num_heads"):
            convert_official_state_dict(official_sd, num_heads=bad)


def test_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ConversionError, match=r"list\.pt' holds a list, not a state dict"):
        load_official_state_dict(tmp_path / "list.pt")
    torch.save({"model": {"a": torch.zeros(1)}}, tmp_path / "no_ema.pt")
    with pytest.raises(ConversionError, match="without a 'ema' entry"):
        load_official_state_dict(tmp_path / "no_ema.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_official_state_dict(tmp_path / "absent.pt")
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_official_state_dict(tmp_path / "absent.pt")


class _Payload:
    """Pickles to a call that would create ``marker`` if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_object_is_refused_by_weights_only(tmp_path, official_sd, zip_format):
    """A pickle whose loading would call ``open(marker, "w")`` is refused and the file never created."""
    marker = tmp_path / "executed"
    sd = dict(official_sd)
    sd["payload"] = _Payload(marker)
    torch.save(sd, tmp_path / "evil.pt", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ConversionError, match=r"evil\.pt' was refused: it pickles (io|builtins)\.open.*code"):
        load_official_state_dict(tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match="refused"):
        load_official_checkpoint(tmp_path / "evil.pt", num_heads=4)
    assert not marker.exists()
    with open(tmp_path / "evil.pt", "rb") as f:  # the payload really is there: plain pickle would run it
        assert b"open" in f.read()


# ----------------------------------------------------------------------------- CLI


def _cli():
    return load_script("pipelines/convert_sit_to_diffusers.py", "convert_cli")


def test_cli_transformer_only(tmp_path, official_dir, fwd):
    out = tmp_path / "converted"
    assert _cli().main(["--checkpoint", str(official_dir / "original_checkpoint.pt"), "--output", str(out),
                        "--transformer-only", "--num-heads", "4"]) == 0
    model = SiTTransformer2DModel.from_pretrained(out).eval()
    assert rel_err(_out(model, fwd), fwd["out"]) <= 1e-5


def test_cli_bfloat16_and_errors(tmp_path, official_dir, fwd):
    cli = _cli()
    out = tmp_path / "bf16"
    assert cli.main(["--checkpoint", str(official_dir / "model.safetensors"), "--output", str(out),
                     "--transformer-only", "--num-heads", "4", "--dtype", "bfloat16"]) == 0
    from safetensors import safe_open

    with safe_open(str(out / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    model = SiTTransformer2DModel.from_pretrained(out, torch_dtype=torch.bfloat16).eval()
    assert model.patch_embed.proj.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out_bf16 = model(fwd["x"].bfloat16(), fwd["t"], fwd["y"].long()).sample
    assert rel_err(out_bf16.float(), fwd["out"]) < 3e-2
    assert cli.main(["--checkpoint", str(official_dir / "model.safetensors"), "--output", str(tmp_path / "o"),
                     "--transformer-only"]) == 2
    assert cli.main(["--checkpoint", "x.pt", "--output", str(out), "--transformer-onyl"]) == 2  # a typo fails
    assert not (tmp_path / "o").exists()


def test_cli_full_pipeline(tmp_path, official_dir, fwd):
    pipeline_sit = pytest.importorskip("sit_diffusers.pipeline_sit")
    out = tmp_path / "pipe"
    assert _cli().main(["--checkpoint", str(official_dir / "original_checkpoint.pt"), "--output", str(out),
                        "--num-heads", "4", "--vae", "none"]) == 0
    assert (out / "model_index.json").is_file()
    pipe = pipeline_sit.SiTPipeline.from_pretrained(out)
    assert pipe.vae is None
    assert rel_err(_out(pipe.transformer.eval(), fwd), fwd["out"]) <= 1e-5
    # Guided as the official forward_with_cfg (first 3 of the 4 channels) without being told: saved default.
    assert pipe.config.default_guidance_channels == 3 and pipe.default_guidance_channels == 3
    n = fwd["x"].shape[0]
    guided = pipe.guided_model_fn(fwd["y_cfg"][:n].long(), guidance_scale=4.0)(fwd["x_cfg"][:n], fwd["t_cfg"][:n])
    assert (guided - fwd["out_cfg"][:n]).abs().max().item() <= 1e-5
