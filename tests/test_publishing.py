"""``pipelines/build_hub_repo.py``: the five repo specs, and a full build of the official fixture checkpoint
(tiny VAE) whose folder loads with ``SiTPipeline.from_pretrained`` and reproduces the official outputs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_official
from huggingface_hub import HfApi
from tiny_hub_repo import FIXTURE_CHECKPOINT, build_tiny_repo, load_build_module, save_tiny_vae, tiny_spec

from sit_diffusers.model_card import parse_model_card
from sit_diffusers.modeling_sit import SIT_CONFIGS
from sit_diffusers.pipeline_sit import SiTPipeline

build_mod = load_build_module()


@pytest.fixture
def no_hub(monkeypatch):
    """Record every ``HfApi.create_repo`` / ``upload_folder`` call instead of reaching the Hub."""
    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs))
        return "commit-url"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One dry-run build of the fixture checkpoint, shared by the read-only tests below."""
    root = tmp_path_factory.mktemp("build")
    calls: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(kw))
        mp.setattr(HfApi, "create_repo", lambda self, *a, **kw: calls.append(kw))
        result = build_tiny_repo(root / "SiT-tiny-fixture")
    return result, calls


# ------------------------------------------------------------------------------------------------ specs


def test_every_published_repo_has_a_consistent_spec():
    specs = build_mod.repo_specs()
    assert set(specs) == {"SiT-XL-2-256", "SiT-XL-2-512", "SiT-S-2-256", "SiT-B-2-256", "SiT-L-2-256"}
    for name, spec in specs.items():
        size, patch, res = name.split("-")[1:]
        assert spec.model_name == f"SiT-{size}/{patch}" and spec.model_name in SIT_CONFIGS
        assert spec.resolution == int(res) and spec.num_classes == 1000
        assert spec.source_repo_id == "nyu-visionx/SiT-collections"
        assert spec.source_filename == f"{name}.pt"
        assert spec.hub_repo_id.endswith(f"/{name}")
        assert spec.vae_repo_id == "stabilityai/sd-vae-ft-ema"
    assert [r.value for r in specs["SiT-XL-2-256"].paper_results if r.metric == "FID-50K"][0] == 2.06
    for small in ("SiT-S-2-256", "SiT-B-2-256", "SiT-L-2-256"):
        assert specs[small].training_steps == "800K iterations"


# ------------------------------------------------------------------------------------------------ build


def test_dry_run_writes_the_folder_and_uploads_nothing(built):
    result, calls = built
    assert calls == [] and result.uploaded_to is None
    folder = result.folder
    for rel in ("model_index.json", "README.md", "build_info.json", build_mod.PARITY_FILE,
                "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                "scheduler/scheduler_config.json", "vae/config.json"):
        assert (folder / rel).is_file(), rel
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "SiTPipeline"]  # stock diffusers loads it (trust_remote_code)
    assert index["transformer"] == ["sit_transformer", "SiTTransformer2DModel"]
    metadata, body = parse_model_card((folder / "README.md").read_text())
    assert metadata["library_name"] == "diffusers" and "SiT-tiny-fixture" in body
    assert result.parity_max_abs_diff <= 1e-6
    info = json.loads((folder / "build_info.json").read_text())
    assert info["transformer_config"]["num_heads"] == 4 and len(info["source_sha256"]) == 64


def test_built_folder_reproduces_the_official_forward(built, official_dir):
    pipe = SiTPipeline.from_pretrained(str(built[0].folder))
    ref = load_official("forward")
    with torch.no_grad():
        out = pipe.transformer(ref["x"], ref["t"], ref["y"].long()).sample  # (4, 4, 8, 8)
    torch.testing.assert_close(out, ref["out"], atol=1e-5, rtol=1e-5)


def test_built_folder_reproduces_the_official_samplers(built, official_dir):
    pipe = SiTPipeline.from_pretrained(str(built[0].folder))
    ref = load_official("samplers")
    labels = ref["y"].long().tolist()
    pipe.set_sampler("ode-euler")
    # official euler with num_steps=10 grid points = 9 steps; guidance off
    plain = pipe(class_labels=labels, latents=ref["z"], num_inference_steps=9, output_type="latent").images
    torch.testing.assert_close(plain, ref["ode.euler.Linear.velocity.final"], atol=1e-5, rtol=1e-5)
    # official forward_with_cfg (scale 4, first three channels guided); sample.py keeps the first half
    guided = pipe(class_labels=labels, latents=ref["z"], num_inference_steps=9, output_type="latent",
                  guidance_scale=4.0, guidance_channels=3).images
    torch.testing.assert_close(guided, ref["ode_cfg.euler.Linear.velocity.final"][:4], atol=1e-5, rtol=1e-5)
    images = pipe(class_labels=labels[:2], latents=ref["z"][:2], num_inference_steps=9, output_type="np").images
    assert images.shape == (2, 16, 16, 3)  # through the tiny VAE: factor 2


def test_upload_goes_through_upload_folder(tmp_path, no_hub):
    result = build_tiny_repo(tmp_path / "repo", dry_run=False, hub_repo_id="someone/SiT-tiny-test")
    names = [name for name, _ in no_hub]
    assert names == ["create_repo", "upload_folder"]
    upload = no_hub[1][1]
    assert upload["repo_id"] == "someone/SiT-tiny-test"
    assert upload["folder_path"] == str(result.folder)
    assert result.uploaded_to == "https://huggingface.co/someone/SiT-tiny-test"


def test_cli_dry_run_uploads_nothing(tmp_path, monkeypatch, no_hub):
    spec = tiny_spec()
    monkeypatch.setattr(build_mod, "repo_specs", lambda: {spec.name: spec})
    vae = save_tiny_vae(tmp_path / "vae")
    code = build_mod.main([spec.name, "--out", str(tmp_path / "out"), "--checkpoint", str(FIXTURE_CHECKPOINT),
                           "--vae", str(vae), "--num-heads", "4", "--dry-run"])
    assert code == 0 and no_hub == []
    assert (tmp_path / "out" / spec.name / "model_index.json").is_file()
    assert build_mod.main(["SiT-nonexistent", "--dry-run"]) == 2  # one line, no traceback: tests/test_tool_inputs.py


def test_parity_check_catches_a_corrupted_folder(built, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "corrupt"
    shutil.copytree(built[0].folder, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("attn.to_qkv.weight"))
    state[key] = state[key] * 1.01  # a 1% change in one attention projection
    save_file(state, str(weights))
    with pytest.raises(build_mod.ParityError):
        build_mod.check_parity(folder)


def test_conversion_is_checked_against_the_spec():
    with pytest.raises(ValueError, match="classes"):
        build_mod.convert_checkpoint(FIXTURE_CHECKPOINT, tiny_spec(num_classes=1000), num_heads=4)
    with pytest.raises(ValueError, match="not a SiT-XL/2"):
        build_mod.convert_checkpoint(FIXTURE_CHECKPOINT, tiny_spec(model_name="SiT-XL/2"), num_heads=4)


def test_missing_hub_file_names_what_the_repo_holds(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    def missing(repo_id, filename, **kwargs):
        raise EntryNotFoundError(f"{filename} not found")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", missing)
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, **kw: ["SiT-XL-2-256.pt", "README.md"])
    with pytest.raises(FileNotFoundError, match="SiT-XL-2-256.pt"):
        build_mod.fetch_checkpoint(build_mod.repo_specs()["SiT-L-2-256"])


def test_imagenet_repos_get_the_imagenet_names():
    from sit_diffusers.modeling_sit import SiTTransformer2DModel

    transformer = SiTTransformer2DModel(sample_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=1,
                                        num_heads=2, num_classes=1000)
    spec = tiny_spec(num_classes=1000, default_preset="sde-euler")
    pipe = build_mod.assemble_pipeline(transformer, spec, vae=None)
    assert len(pipe.id2label) == 1000 and "golden retriever" in pipe.id2label[207]
    assert pipe.scheduler.config.mode == "sde" and pipe.config.default_num_inference_steps == 250
