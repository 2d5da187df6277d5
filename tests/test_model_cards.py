"""Model cards: every card renders from the template with valid YAML metadata, the committed cards are the
rendered ones, the paper numbers carry their settings and source, and the usage snippet runs.
(The Hub's metadata rules for every card and the Space card: tests/test_card_metadata.py.)"""

from __future__ import annotations

import importlib
import os
import re

import pytest
from tiny_hub_repo import REPO_ROOT, build_tiny_repo, load_build_module, tiny_spec

from sit_diffusers.model_card import (
    RepoSpec,
    parse_model_card,
    python_snippets,
    render_model_card,
    snippet_imports,
)
from sit_diffusers.scheduling_sit import SAMPLER_PRESETS

SPECS = load_build_module().repo_specs()
CARDS_DIR = REPO_ROOT / "model_cards"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_card_renders_with_valid_metadata(name):
    spec = SPECS[name]
    metadata, body = parse_model_card(render_model_card(spec))
    assert metadata["library_name"] == "diffusers"
    assert metadata["license"] == "mit" and metadata["vae_license"] == "mit"
    assert metadata["vae"] == "stabilityai/sd-vae-ft-ema"
    assert metadata["pipeline_tag"] == "unconditional-image-generation"
    assert {"diffusers", "sit", "imagenet"} <= set(metadata["tags"])
    assert metadata["datasets"] == ["ILSVRC/imagenet-1k"]
    assert metadata["source_checkpoint"] == f"nyu-visionx/SiT-collections/{name}.pt"
    assert metadata["base_model"] == spec.source_repo_id == "nyu-visionx/SiT-collections"  # the official repo
    assert ("model-index" in metadata) == bool(spec.paper_results)  # no machine-readable number when none
    assert "${" not in body  # every placeholder filled
    assert f'SiTPipeline.from_pretrained("{spec.hub_repo_id}")' in body
    assert f"--pipeline {spec.hub_repo_id} --preset {spec.fid_preset}" in body
    for preset in SAMPLER_PRESETS:
        assert f"| `{preset}` |" in body
    assert "@inproceedings{ma2024sit" in body
    assert f"Length: {spec.training_steps} (" in body


@pytest.mark.parametrize("name", sorted(SPECS))
def test_committed_card_is_the_rendered_card(name):
    committed = (CARDS_DIR / f"{name}.md").read_text(encoding="utf-8")
    assert committed == render_model_card(SPECS[name]), (
        f"model_cards/{name}.md is stale: run `python pipelines/build_hub_repo.py --render-cards`"
    )


def test_paper_numbers_carry_settings_and_source():
    _, body = parse_model_card(render_model_card(SPECS["SiT-XL-2-256"]))
    row = next(line for line in body.splitlines() if line.startswith("| FID-50K | 2.06 |"))
    assert "SDE" in row and "250 steps" in row and "guidance 1.5" in row and "arXiv:2401.08740" in row
    assert "| Inception Score | 270.27 |" in body
    _, body512 = parse_model_card(render_model_card(SPECS["SiT-XL-2-512"]))
    assert "| FID-50K | 2.62 |" in body512 and "VIRTUAL_imagenet512_labeled.npz" in body512
    _, small = parse_model_card(render_model_card(SPECS["SiT-S-2-256"]))
    assert "no number is published for these 800K-step weights" in small
    assert "| FID-50K |" not in small


def test_snippet_names_exist_in_the_package():
    _, body = parse_model_card(render_model_card(SPECS["SiT-XL-2-256"]))
    (code,) = python_snippets(body)
    imports = snippet_imports(code)
    assert ("sit_diffusers.pipeline_sit", "SiTPipeline") in imports
    for module, name in imports:
        mod = importlib.import_module(module)
        if name is not None:
            assert hasattr(mod, name), f"{module}.{name}"
    pipeline_cls = importlib.import_module("sit_diffusers.pipeline_sit").SiTPipeline
    for method in re.findall(r"pipe\.(\w+)\(", code):
        assert hasattr(pipeline_cls, method), method
    preset = re.search(r'set_sampler\("([^"]+)"\)', code).group(1)
    assert preset in SAMPLER_PRESETS


def test_snippet_runs_on_a_built_repo(tmp_path, monkeypatch):
    """The card's snippet, with the repo id pointed at a dry-run build of the fixture checkpoint."""
    result = build_tiny_repo(tmp_path / "repo")
    _, body = parse_model_card((result.folder / "README.md").read_text(encoding="utf-8"))
    (code,) = python_snippets(body)
    spec = tiny_spec()
    code = code.replace(f'"{spec.hub_repo_id}"', repr(str(result.folder)))
    # the same code path with a 4-step preset (the card's preset runs 250 steps: slow on shared CPUs)
    monkeypatch.setitem(SAMPLER_PRESETS[spec.default_preset], "num_inference_steps", 4)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "model-card-snippet", "exec"), {})
    from PIL import Image

    with Image.open(tmp_path / "sit_sample.png") as image:
        assert image.size == (spec.resolution, spec.resolution)


def test_unknown_placeholder_or_preset_is_an_error():
    with pytest.raises(KeyError):
        render_model_card(tiny_spec(), template="---\n${metadata}---\n${not_a_field}\n")
    with pytest.raises(KeyError, match="no-such-preset"):
        render_model_card(tiny_spec(default_preset="no-such-preset"))
    with pytest.raises(ValueError, match="unknown RepoSpec fields"):
        RepoSpec.from_dict({**tiny_spec().__dict__, "typo_field": 1})
    with pytest.raises(ValueError, match="front matter"):
        parse_model_card("# no metadata\n")


def test_render_cards_writes_one_file_per_spec(tmp_path):
    paths = load_build_module().render_cards(SPECS, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{n}.md" for n in SPECS)
    assert all(os.path.getsize(p) > 1000 for p in paths)
