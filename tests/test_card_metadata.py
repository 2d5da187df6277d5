"""Every model card and the Space card against the Hub's metadata rules, offline (issue 13, item 8).

What must hold: each committed card (``model_cards/*.md``) and ``spaces/README.md`` passes
``sit_diffusers.model_card.check_card`` (field types, the Hub's license ids and tasks, repo ids, the
``model-index`` structure, the Spaces config reference, ``short_description`` <= 60) and loads with
``huggingface_hub``'s strict ``ModelCard`` / ``SpaceCard``; the official cards name their ``base_model``
and carry the authors' numbers with their source in ``model-index``; numbers this project measured are
labelled as such with their command; the training script's card is built with ``ModelCardData``. A table of
bad front matters is refused, each with a message that names the field and the bad value.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, SpaceCard
from huggingface_hub.repocard_data import eval_results_to_model_index
from tiny_hub_repo import REPO_ROOT, load_build_module, tiny_spec

from sit_diffusers.model_card import (
    PIPELINE_TAG,
    SHORT_DESCRIPTION_MAX,
    MeasuredResult,
    PaperResult,
    RepoSpec,
    card_eval_results,
    check_card,
    model_card_problems,
    model_index,
    parse_model_card,
    render_model_card,
    source_url,
    space_card_problems,
)
from sit_diffusers.validation import InputError

SPECS = load_build_module().repo_specs()
CARDS_DIR = REPO_ROOT / "model_cards"
CARDS = sorted(p for p in CARDS_DIR.glob("*.md") if p.name != "template.md")
SPACE_CARD = REPO_ROOT / "spaces" / "README.md"
PAPER = "https://arxiv.org/abs/2401.08740"


def _card(metadata: dict, body: str = "# a card\n") -> str:
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n\n" + body


# ---------------------------------------------------------------------------
# Every committed card and the Space card pass
# ---------------------------------------------------------------------------


def test_every_card_is_checked():
    assert {p.stem for p in CARDS} == set(SPECS) | {"sit-digits"}


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.name)
def test_committed_card_follows_the_hub_rules(path: Path):
    text = path.read_text(encoding="utf-8")
    metadata = check_card(text, "model")
    data = ModelCard(text, ignore_metadata_errors=False).data  # strict: a bad model-index raises
    assert data.library_name == "diffusers" and data.pipeline_tag == PIPELINE_TAG and data.license == "mit"
    assert isinstance(metadata["datasets"], list) and all(isinstance(d, str) for d in metadata["datasets"])
    for result in data.eval_results or []:
        assert result.verified is False  # none comes from the Hub's evaluation service
        assert isinstance(result.metric_value, float)
        theirs, ours = "reported by the authors", "measured by sit-diffusers"
        assert (theirs in result.metric_name) != (ours in result.metric_name)  # exactly one label
        if theirs in result.metric_name:
            assert result.source_url and result.source_name  # every published number names its source
        else:
            assert result.source_url is None and result.metric_args["command"].startswith("python ")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_official_card_names_its_base_model_and_the_authors_numbers(name: str):
    spec = SPECS[name]
    metadata, _ = parse_model_card((CARDS_DIR / f"{name}.md").read_text(encoding="utf-8"))
    assert metadata["base_model"] == spec.source_repo_id == "nyu-visionx/SiT-collections"
    assert metadata["datasets"] == ["ILSVRC/imagenet-1k"]
    if not spec.paper_results:  # S/B/L: the paper has no number for these 800K-step weights
        assert "model-index" not in metadata
        return
    data = ModelCard.load(CARDS_DIR / f"{name}.md").data
    assert data.model_name == name
    assert [(r.metric_value, r.source_name) for r in data.eval_results] == [
        (p.value, p.source) for p in spec.paper_results
    ]
    for result, paper in zip(data.eval_results, spec.paper_results, strict=True):
        assert result.dataset_type == "ILSVRC/imagenet-1k" and result.task_type == PIPELINE_TAG
        assert paper.setting in result.metric_name and str(spec.resolution) in result.dataset_name
        assert result.metric_type == ("fid" if paper.metric.startswith("FID") else "inception_score")


def test_paper_fid_points_to_the_paper():
    for name, fid in (("SiT-XL-2-256", 2.06), ("SiT-XL-2-512", 2.62)):
        data = ModelCard.load(CARDS_DIR / f"{name}.md").data
        (best,) = [r for r in data.eval_results if r.metric_type == "fid" and "guidance 1.5" in r.metric_name]
        assert best.metric_value == fid and best.source_url == PAPER
        assert "arXiv:2401.08740" in best.source_name
    data = ModelCard.load(CARDS_DIR / "SiT-XL-2-256.md").data
    (inception,) = [r for r in data.eval_results if r.metric_type == "inception_score"]
    assert inception.source_url == "https://github.com/willisma/SiT"  # a README-only number keeps its source


def test_digits_card_has_the_dataset_no_base_model_and_our_own_numbers():
    text = (CARDS_DIR / "sit-digits.md").read_text(encoding="utf-8")
    metadata, body = parse_model_card(text)
    assert "base_model" not in metadata  # trained from scratch by this project
    assert metadata["datasets"] == ["ylecun/mnist"]
    data = ModelCard(text).data
    values = {r.metric_type: r.metric_value for r in data.eval_results}
    assert values == {"accuracy": 0.993, "frechet_distance": 13.78}
    assert "| **99.3%** | **13.78** |" in body  # the same numbers as the card's table
    for result in data.eval_results:
        assert "measured by sit-diffusers" in result.metric_name and "guidance 1.5" in result.metric_name
        assert result.metric_args == {"command": "python benchmarks/digits_experiments.py guidance --model "
                                                 "src/sit_diffusers/data/sit-digits --device cpu"}


def test_space_card_follows_the_spaces_config_rules():
    text = SPACE_CARD.read_text(encoding="utf-8")
    metadata = check_card(text, "space")
    assert len(metadata["short_description"]) <= SHORT_DESCRIPTION_MAX
    assert isinstance(metadata["python_version"], str) and isinstance(metadata["sdk_version"], str)
    data = SpaceCard(text, ignore_metadata_errors=False).data
    assert (SPACE_CARD.parent / data.app_file).is_file()
    assert "## API" in text and "## Run it locally" in text  # the body is kept


# ---------------------------------------------------------------------------
# Rendering: measured numbers, sources, the model-index grouping
# ---------------------------------------------------------------------------


def test_measured_numbers_render_labelled_with_their_command():
    paper = PaperResult("FID-50K", 9.5, "ODE Euler, 50 steps", "paper table 2 (arXiv:2401.08740)")
    measured = MeasuredResult("FID-50K", 9.9, "ODE Euler, 50 steps, 50,000 samples, seed 0",
                              "accelerate launch training/sample_fid.py --pipeline x --preset ode-euler")
    spec = RepoSpec.from_dict({**tiny_spec().__dict__, "paper_results": [paper.__dict__],
                               "measured_results": [measured.__dict__]})
    assert spec.measured_results == (measured,)
    text = render_model_card(spec)
    check_card(text, "model")
    data = ModelCard(text).data
    ours, theirs = data.eval_results[1], data.eval_results[0]
    assert theirs.source_url == PAPER and "reported by the authors" in theirs.metric_name
    assert ours.metric_value == 9.9 and "measured by sit-diffusers" in ours.metric_name
    assert ours.metric_args == {"command": measured.command}
    assert ours.source_url is None and ours.verified is False
    _, body = parse_model_card(text)
    assert "Measured by this project" in body
    assert f"| FID-50K | 9.9 | {measured.setting} | `{measured.command}` |" in body


def test_model_index_keeps_each_number_with_its_own_source():
    spec = SPECS["SiT-XL-2-256"]
    results = card_eval_results(spec)
    ours = model_index(spec.name, results)[0]["results"]
    assert [entry["source"]["name"] for entry in ours] == [p.source for p in spec.paper_results]
    # huggingface_hub's own grouping (task, dataset) would credit every number to the first source
    theirs = eval_results_to_model_index(spec.name, results)[0]["results"]
    assert len(theirs) == 1 and len(theirs[0]["metrics"]) == len(spec.paper_results)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("license", "MIT License", "license 'MIT License' is not one of the Hub's license ids"),
    ("tags", ("sit", ""), "tags must be a list of strings"),
    ("source_repo_id", "nyu visionx/SiT", "base_model: 'nyu visionx/SiT' is not a Hub repo id"),
])
def test_rendering_refuses_a_spec_whose_card_the_hub_would_refuse(field, value, message):
    with pytest.raises(InputError, match="breaks the Hub's rules") as err:
        render_model_card(tiny_spec(**{field: value}))
    assert message in str(err.value)


def test_source_url_takes_the_first_reference_and_refuses_none():
    assert source_url("paper abstract (arXiv:2401.08740) and official README (github willisma/SiT)") == PAPER
    assert source_url("official README table (github willisma/SiT)") == "https://github.com/willisma/SiT"
    with pytest.raises(InputError, match="cites neither"):
        source_url("a blog post")


def test_training_script_card_is_built_with_model_card_data(tmp_path: Path):
    sys.path.insert(0, str(REPO_ROOT))
    from training.config import config_from_dict
    from training.train_sit import build_model, save_pipeline, training_card

    tiny = {"hidden_size": 32, "depth": 2, "num_heads": 2}
    cfg = config_from_dict(dict(model="SiT-S/2", model_overrides=tiny, resolution=8, num_classes=3, vae=None,
                                image_channels=1, global_batch_size=4, output_dir=str(tmp_path),
                                dataset_name="ylecun/mnist"))
    model = build_model(cfg, 1, 8)
    out = save_pipeline(cfg, model.state_dict(), dict(model.config), None, {0: "a", 1: "b", 2: "c"}, 9,
                        "ylecun/mnist")
    text = (out / "README.md").read_text(encoding="utf-8")
    metadata = check_card(text, "model")
    assert metadata["datasets"] == ["ylecun/mnist"] and "base_model" not in metadata  # trained from scratch
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == PIPELINE_TAG
    assert "9 optimiser steps at global batch 4" in text and "pixel space" in text
    # data that is no Hub dataset (an in-memory dataset, a local folder) names none
    card = training_card(cfg, 9, "an in-memory dataset", None)
    assert "datasets" not in card.data.to_dict() and card.data.pipeline_tag == PIPELINE_TAG


# ---------------------------------------------------------------------------
# Bad front matter: refused, the field and the value named
# ---------------------------------------------------------------------------

GOOD_MODEL = parse_model_card((CARDS_DIR / "SiT-XL-2-256.md").read_text(encoding="utf-8"))[0]
GOOD_SPACE = parse_model_card(SPACE_CARD.read_text(encoding="utf-8"))[0]


def _index(**changes) -> list:
    """The XL-256 model-index with its first result's task / dataset / first metric / source changed."""
    index = yaml.safe_load(yaml.safe_dump(GOOD_MODEL["model-index"]))
    result = index[0]["results"][0]
    for part, value in changes.items():
        if part == "metric":
            result["metrics"][0] = value
        else:
            result[part] = value
    return index


BAD_MODEL = [
    ("license", "MIT License", "license 'MIT License'"),
    ("license", "other", "license_name"),
    ("pipeline_tag", "class-conditional-image-generation", "'class-conditional-image-generation'"),
    ("library_name", 3, "library_name must be a string, got 3"),
    ("tags", "sit", "tags must be a list of strings, got 'sit'"),
    ("datasets", "ILSVRC/imagenet-1k",
     "datasets must be a list of strings, got 'ILSVRC/imagenet-1k'"),
    ("datasets", ["image net!"], "datasets: 'image net!' is not a Hub repo id"),
    ("base_model", 123, "base_model must hold Hub repo ids (strings), got 123"),
    ("base_model", "nyu-visionx/SiT/collections", "'nyu-visionx/SiT/collections' is not a Hub repo id"),
    ("base_model", [], "base_model must not be an empty list"),
    ("base_model_relation", "conversion", "base_model_relation 'conversion'"),
    ("model-index", {"name": "x"}, "model-index must be a non-empty list, got {'name': 'x'}"),
    ("model-index", _index(task={"name": "generation"}), ".task must be a mapping with a string 'type'"),
    ("model-index", _index(dataset={"type": "ILSVRC/imagenet-1k"}), ".dataset must be a mapping with string"),
    ("model-index", _index(metric={"type": "fid"}), "metrics[0] must be a mapping with a string 'type'"),
    ("model-index", _index(metric={"type": "fid", "value": [2.06]}),
     "metrics[0].value must be a number or a string, got [2.06]"),
    ("model-index", _index(metric={"type": "fid", "value": 2.06, "verified": "no"}),
     "metrics[0].verified must be true or false, got 'no'"),
    ("model-index", _index(source={"name": "the paper"}), ".source must be a mapping with a string 'url'"),
]

BAD_SPACE = [
    ("short_description", "Class-conditional SiT sampling with ODE/SDE interpolant samplers",
     "short_description is 64 characters, the Hub allows at most 60"),
    ("python_version", 3.1, "python_version must be a quoted string '3.x' or '3.x.y', got 3.1"),
    ("sdk", "flask", "sdk 'flask' is not one of"),
    ("sdk_version", 6.31, "sdk_version must be a version string such as '6.31.0' (quoted), got 6.31"),
    ("colorFrom", "orange", "colorFrom 'orange' is not one of"),
    ("emoji", "SiT", "emoji must be an emoji only, got 'SiT'"),
    ("models", "sit-diffusers/SiT-XL-2-256",
     "models must be a list of strings, got 'sit-diffusers/SiT-XL-2-256'"),
    ("models", ["sit diffusers/SiT"], "models: 'sit diffusers/SiT' is not a Hub repo id"),
    ("pinned", "no", "pinned must be true or false, got 'no'"),
    ("short_desc", "SiT", "'short_desc' is not a Spaces config field"),
    ("license", "MIT", "license 'MIT' is not one of the Hub's license ids"),
    ("app_port", "7860", "app_port must be an integer, got '7860'"),
    ("app_file", None, "sdk gradio needs app_file"),
    ("tags", [1], "tags must be a list of strings, got [1]"),
    ("header", "full", "header 'full' is not 'mini' or 'default'"),
]


def _changed(good: dict, key: str, value) -> dict:
    metadata = dict(good)
    if value is None:
        metadata.pop(key)
    else:
        metadata[key] = value
    return metadata


def _ids(cases: list) -> list[str]:
    return [f"{key}={value!r}"[:60] for key, value, _ in cases]


@pytest.mark.parametrize(("key", "value", "message"), BAD_MODEL, ids=_ids(BAD_MODEL))
def test_bad_model_card_metadata_is_refused(key, value, message):
    metadata = _changed(GOOD_MODEL, key, value)
    problems = model_card_problems(metadata)
    assert any(message in p for p in problems), problems
    with pytest.raises(InputError) as err:
        check_card(_card(metadata), "model")
    assert message in str(err.value) and "breaks the Hub's rules" in str(err.value)


@pytest.mark.parametrize(("key", "value", "message"), BAD_SPACE, ids=_ids(BAD_SPACE))
def test_bad_space_card_metadata_is_refused(key, value, message):
    metadata = _changed(GOOD_SPACE, key, value)
    problems = space_card_problems(metadata)
    assert any(message in p for p in problems), problems
    with pytest.raises(InputError, match="breaks the Hub's rules") as err:
        check_card(_card(metadata), "space")
    assert message in str(err.value)


def test_good_front_matter_has_no_problem_and_bad_calls_are_input_errors():
    assert model_card_problems(GOOD_MODEL) == [] and space_card_problems(GOOD_SPACE) == []
    with pytest.raises(InputError, match="kind must be 'model' or 'space', got 'dataset'"):
        check_card(_card(GOOD_MODEL), "dataset")
    with pytest.raises(InputError, match="no YAML front matter"):
        check_card("# no metadata\n", "model")
    with pytest.raises(InputError, match="model card"):
        check_card("---\n: [unclosed\n---\n", "model")
