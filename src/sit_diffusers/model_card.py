"""Model cards for the published SiT repos: a typed spec per repo, one markdown template, YAML metadata.

Each published Hub repo has a spec ``pipelines/<name>/repo.json`` (:class:`RepoSpec`): where the official
checkpoint comes from, the architecture, training facts, the paper's numbers with their source and exact
sampler settings, and the defaults of the usage snippet. :func:`render_model_card` fills
``model_cards/template.md`` (``string.Template`` placeholders ``${name}``) from the spec and the sampler
presets of the installed package, with the YAML front matter written by ``huggingface_hub.ModelCardData``
(valid YAML by construction): ``base_model`` (the official repo the weights come from), ``datasets``, the
Hub's ``pipeline_tag`` and a machine-readable ``model-index`` of the authors' numbers (with their source)
and of the numbers this project measured itself (labelled as such, with the command).

:func:`model_card_problems` / :func:`space_card_problems` check a card's metadata against the Hub's rules
(field types, the Hub's license ids and pipeline tags, the ``model-index`` structure as
``huggingface_hub`` parses it, the Spaces config reference and its 60-character ``short_description``);
:func:`check_card` raises :class:`~sit_diffusers.validation.InputError` listing every problem.
"""

from __future__ import annotations

import ast
import json
import os
import re
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData, SpaceCard
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .validation import InputError

__all__ = [
    "HUB_LICENSES",
    "HUB_PIPELINE_TAGS",
    "PIPELINE_TAG",
    "SHORT_DESCRIPTION_MAX",
    "MeasuredResult",
    "PaperResult",
    "RepoSpec",
    "build_model_card",
    "card_eval_results",
    "check_card",
    "load_repo_spec",
    "measured_eval_result",
    "model_card_problems",
    "model_index",
    "parse_model_card",
    "python_snippets",
    "render_model_card",
    "snippet_imports",
    "source_url",
    "space_card_problems",
]

#: The Hub's task for image generators without a text prompt; class-conditional ones included (the Hub has
#: no class-conditional task: ``huggingface.js`` ``packages/tasks/src/pipelines.ts``).
PIPELINE_TAG = "unconditional-image-generation"

DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "model_cards" / "template.md"

SIT_CITATION = """@inproceedings{ma2024sit,
  title     = {SiT: Exploring Flow and Diffusion-based Generative Models with Scalable Interpolant Transformers},
  author    = {Ma, Nanye and Goldstein, Mark and Albergo, Michael S. and Boffi, Nicholas M. and
               Vanden-Eijnden, Eric and Xie, Saining},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024},
  note      = {arXiv:2401.08740}
}"""


@dataclass(frozen=True)
class PaperResult:
    """One published number: ``metric`` (e.g. ``"FID-50K"``), ``value``, the exact ``setting`` it was measured
    with (sampler, steps, guidance) and the ``source`` that states it."""

    metric: str
    value: float
    setting: str
    source: str


@dataclass(frozen=True)
class MeasuredResult:
    """A number this project measured itself (not the authors'): ``metric``, ``value``, the exact ``setting``
    (sampler, steps, guidance, number of samples) and the ``command`` that reproduces it."""

    metric: str
    value: float
    setting: str
    command: str


@dataclass(frozen=True)
class RepoSpec:
    """Everything one published repo needs besides the weights (``pipelines/<name>/repo.json``).

    Attributes:
        name: repo / folder / card name, e.g. ``"SiT-XL-2-256"``.
        hub_repo_id: where the converted pipeline is published, ``"org/name"``.
        model_name: named architecture (``SIT_CONFIGS`` key), e.g. ``"SiT-XL/2"``.
        resolution: image side in pixels; the latent side is ``resolution // 8`` with the SD VAE.
        num_classes: ImageNet-1k classes (the null class for guidance is ``num_classes``).
        source_repo_id, source_filename: the official checkpoint on the Hub.
        training_steps: training length of the released weights as their authors state it ("7M iterations").
        training_steps_source: where that is stated.
        default_preset, default_guidance_scale, default_class_label: the usage snippet's settings (the
            preset's own step count).
        fid_preset, fid_guidance_scale, fid_num_inference_steps: the FID command of the card (the paper's
            best setting unless a spec says otherwise).
        paper_results: published numbers with settings and source (empty: none published for these weights).
        results_note: a sentence shown under the numbers (e.g. why there are none).
        measured_results: numbers this project measured on the converted weights, with their command (in the
            card's table and ``model-index``, labelled as measured by sit-diffusers).

    The card's ``base_model`` is ``source_repo_id``: the weights are the official ones, converted.
    """

    name: str
    hub_repo_id: str
    model_name: str
    resolution: int
    num_classes: int
    source_repo_id: str
    source_filename: str
    training_steps: str
    training_steps_source: str
    default_preset: str
    default_guidance_scale: float
    default_class_label: int = 207
    fid_preset: str = "paper-fid"
    fid_guidance_scale: float = 1.5
    fid_num_inference_steps: int = 250
    paper_results: tuple[PaperResult, ...] = ()
    results_note: str = ""
    license: str = "mit"
    vae_repo_id: str = "stabilityai/sd-vae-ft-ema"
    vae_license: str = "mit"
    tags: tuple[str, ...] = field(default=("sit", "flow-matching", "interpolant", "class-conditional", "imagenet"))
    measured_results: tuple[MeasuredResult, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RepoSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RepoSpec fields {unknown}; valid: {sorted(known)}")
        data = dict(data)
        data["paper_results"] = tuple(PaperResult(**r) for r in data.get("paper_results", ()))
        data["measured_results"] = tuple(MeasuredResult(**r) for r in data.get("measured_results", ()))
        if "tags" in data:
            data["tags"] = tuple(data["tags"])
        return cls(**data)

    @property
    def source_url(self) -> str:
        return f"https://huggingface.co/{self.source_repo_id}/blob/main/{self.source_filename}"


def load_repo_spec(path: str | os.PathLike) -> RepoSpec:
    """Read a ``repo.json`` (or the folder holding it) into a :class:`RepoSpec`."""
    path = Path(path)
    if path.is_dir():
        path = path / "repo.json"
    return RepoSpec.from_dict(json.loads(path.read_text(encoding="utf-8")))


#################################################################################
#                                   Rendering                                   #
#################################################################################


IMAGENET_DATASET = "ILSVRC/imagenet-1k"  # the Hub id training/config.py and precompute_latents.py read


def card_metadata(spec: RepoSpec) -> ModelCardData:
    """YAML front matter: base model, dataset, library, licenses (weights and VAE), pipeline tag, tags, source
    checkpoint and the ``model-index`` of :func:`card_eval_results`.

    ``base_model`` is ``spec.source_repo_id``, the official repo whose weights these are (renamed, not
    retrained). The Hub's relations (``finetune``, ``adapter``, ``quantized``, ``merge``) have none for a
    lossless conversion, so ``base_model_relation`` is left to the Hub; the card's text says what was done.
    """
    data = ModelCardData(
        base_model=spec.source_repo_id,
        datasets=[IMAGENET_DATASET],
        library_name="diffusers",
        license=spec.license,
        pipeline_tag=PIPELINE_TAG,
        tags=["diffusers", *spec.tags],
        vae=spec.vae_repo_id,
        vae_license=spec.vae_license,
        source_checkpoint=f"{spec.source_repo_id}/{spec.source_filename}",
    )
    results = card_eval_results(spec)
    if results:
        data["model-index"] = model_index(spec.name, results)
    return data


_ARXIV = re.compile(r"arXiv:?\s*(\d{4}\.\d{4,5})", re.IGNORECASE)
_GITHUB = re.compile(r"github\.com/([\w.-]+/[\w.-]+)|github ([\w.-]+/[\w.-]+)", re.IGNORECASE)


def source_url(source: str) -> str:
    """The link of the first reference a ``source`` text cites: ``arXiv:NNNN.NNNNN`` or ``github owner/repo``.

    Raises :class:`~sit_diffusers.validation.InputError` when it cites neither (a published number must name
    where it is stated).
    """
    found = []
    if (m := _ARXIV.search(source)) is not None:
        found.append((m.start(), f"https://arxiv.org/abs/{m.group(1)}"))
    if (m := _GITHUB.search(source)) is not None:
        found.append((m.start(), f"https://github.com/{m.group(1) or m.group(2)}"))
    if not found:
        raise InputError(f"source {source!r} cites neither an arXiv id (arXiv:NNNN.NNNNN) nor a GitHub repo "
                         "(github owner/repo): a published number must say where it is stated")
    return min(found)[1]


def _metric_type(metric: str) -> str:
    """A metric id for ``model-index``: ``"FID-50K"`` -> ``fid``, ``"Inception Score"`` ->
    ``inception_score``."""
    lowered = metric.lower()
    if lowered.startswith("fid"):
        return "fid"
    return re.sub(r"[^a-z0-9]+", "_", lowered).strip("_")


def card_eval_results(spec: RepoSpec) -> list[EvalResult]:
    """The card's numbers as ``huggingface_hub.EvalResult``: the authors' (``source`` = where they state it)
    and this project's measurements (named "measured by sit-diffusers", the command in the metric's
    ``args``). None is verified by the Hub's evaluation service: ``verified: false`` on every one."""
    res = spec.resolution
    common = dict(
        task_type=PIPELINE_TAG,
        task_name=f"Class-conditional image generation (ImageNet {res}x{res})",
        dataset_type=IMAGENET_DATASET,
        dataset_name=f"ImageNet {res}x{res} (ADM reference batch VIRTUAL_imagenet{res}_labeled.npz)",
        verified=False,
    )
    results = [
        EvalResult(**common, metric_type=_metric_type(r.metric), metric_value=r.value,
                   metric_name=f"{r.metric}, reported by the authors: {r.setting}",
                   source_name=r.source, source_url=source_url(r.source))
        for r in spec.paper_results
    ]
    results += [measured_eval_result(m, **common) for m in spec.measured_results]
    return results


def measured_eval_result(
    result: MeasuredResult, *, metric_type: str | None = None, **fields: Any
) -> EvalResult:
    """``EvalResult`` of a number this project measured: its name says so and gives the setting, its
    ``args`` hold the command; no ``source`` (no outside reference states it). ``fields``: task and
    dataset."""
    return EvalResult(
        **fields,
        metric_type=metric_type or _metric_type(result.metric),
        metric_value=result.value,
        metric_name=f"{result.metric}, measured by sit-diffusers: {result.setting}",
        metric_args={"command": result.command},
    )


def model_index(name: str, results: list[EvalResult]) -> list[dict[str, Any]]:
    """The Hub's ``model-index`` of ``results``: one entry per (task, dataset, source), in order.

    ``huggingface_hub.repocard_data.eval_results_to_model_index`` groups by task and dataset only and keeps
    the first result's ``source`` for the whole group, which would credit a number to another number's
    source; grouping by source as well keeps each number with its own.
    """
    groups: dict[tuple, list[EvalResult]] = {}
    for r in results:
        groups.setdefault((r.unique_identifier, r.source_name, r.source_url), []).append(r)
    entries = [entry for group in groups.values()
               for entry in eval_results_to_model_index(name, group)[0]["results"]]
    return [{"name": name, "results": entries}]


def build_model_card(data: ModelCardData, body: str) -> ModelCard:
    """A ``huggingface_hub.ModelCard`` of ``data`` (front matter) and the markdown ``body``, checked with
    :func:`check_card` (raises :class:`~sit_diffusers.validation.InputError` on a rule the Hub enforces)."""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.lstrip()}")
    check_card(str(card), "model")
    return card


def _as_dict(value: Any) -> dict[str, Any]:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    return dict(vars(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def presets_table(presets: Mapping[str, Any]) -> str:
    """Markdown table of the sampler presets: name, default steps and every sampler setting.

    A preset is ``{"config": {...}, "num_inference_steps": n}`` (``SAMPLER_PRESETS``) or a flat mapping.
    """
    rows = ["| preset | steps | settings |", "|---|---|---|"]
    for name, preset in presets.items():
        preset = _as_dict(preset)
        config = _as_dict(preset.get("config", {k: v for k, v in preset.items() if k != "num_inference_steps"}))
        settings = ", ".join(f"`{k}={_fmt(v)}`" for k, v in config.items() if v is not None)
        rows.append(f"| `{name}` | {preset.get('num_inference_steps', '')} | {settings} |")
    return "\n".join(rows)


def results_table(spec: RepoSpec) -> str:
    """The authors' numbers (settings, source), the results note, then this project's measurements if any."""
    if not spec.paper_results:
        rows = [spec.results_note or "No number is published for these weights."]
    else:
        rows = ["Reported by the authors, each with its settings and source (also in the card's",
                "`model-index` metadata, where no number is marked verified: the Hub did not compute them):",
                "",
                "| metric | value | settings | source |", "|---|---|---|---|"]
        for r in spec.paper_results:
            rows.append(f"| {r.metric} | {_fmt(r.value)} | {r.setting} | {r.source} |")
        if spec.results_note:
            rows += ["", spec.results_note]
    if spec.measured_results:
        rows += ["", "Measured by this project on the converted weights (not by the authors):", "",
                 "| metric | value | settings | command |", "|---|---|---|---|"]
        for m in spec.measured_results:
            rows.append(f"| {m.metric} | {_fmt(m.value)} | {m.setting} | `{m.command}` |")
    return "\n".join(rows)


def _default_presets() -> Mapping[str, Any]:
    from .scheduling_sit import SAMPLER_PRESETS

    return SAMPLER_PRESETS


def render_model_card(
    spec: RepoSpec, template: str | None = None, presets: Mapping[str, Any] | None = None
) -> str:
    """The model card of ``spec``: YAML front matter + ``template`` (default ``model_cards/template.md``).

    ``presets`` defaults to ``sit_diffusers.scheduling_sit.SAMPLER_PRESETS``; a preset named in the spec
    must exist there. Unknown ``${placeholders}`` in the template raise ``KeyError``; metadata that breaks
    the Hub's rules (:func:`check_card`) raises :class:`~sit_diffusers.validation.InputError`.
    """
    if template is None:
        if not DEFAULT_TEMPLATE.is_file():
            raise FileNotFoundError(f"{DEFAULT_TEMPLATE} not found: render cards from a checkout of the repo")
        template = DEFAULT_TEMPLATE.read_text(encoding="utf-8")
    presets = _default_presets() if presets is None else presets
    for preset in (spec.default_preset, spec.fid_preset):
        if preset not in presets:
            raise KeyError(f"{spec.name}: preset {preset!r} not in {sorted(presets)}")
    values = {
        "metadata": card_metadata(spec).to_yaml().rstrip("\n") + "\n",
        "name": spec.name,
        "hub_repo_id": spec.hub_repo_id,
        "model_name": spec.model_name,
        "resolution": spec.resolution,
        "latent_size": spec.resolution // 8,
        "num_classes": spec.num_classes,
        "source_repo_id": spec.source_repo_id,
        "source_filename": spec.source_filename,
        "source_url": spec.source_url,
        "training_steps": spec.training_steps,
        "training_steps_source": spec.training_steps_source,
        "preset": spec.default_preset,
        "guidance_scale": repr(float(spec.default_guidance_scale)),
        "class_label": spec.default_class_label,
        "num_classes_minus_one": spec.num_classes - 1,
        "fid_preset": spec.fid_preset,
        "fid_guidance_scale": _fmt(spec.fid_guidance_scale),
        "fid_num_inference_steps": spec.fid_num_inference_steps,
        "presets_table": presets_table(presets),
        "results_table": results_table(spec),
        "vae_repo_id": spec.vae_repo_id,
        "vae_license": spec.vae_license,
        "license": spec.license,
        "citation": SIT_CITATION,
    }
    card = string.Template(template).substitute(values)
    check_card(card, "model")  # a card the Hub would refuse never reaches a build folder or model_cards/
    return card


#################################################################################
#                                    Parsing                                    #
#################################################################################

_FRONT_MATTER = re.compile(r"\A---\n(.*?\n)---\n(.*)\Z", re.DOTALL)
_PY_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def parse_model_card(text: str) -> tuple[dict[str, Any], str]:
    """Split a card into ``(metadata dict, markdown body)``; raises ``ValueError`` without front matter."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        raise ValueError("model card has no YAML front matter (--- ... ---) at the top")
    metadata = yaml.safe_load(match.group(1))
    if not isinstance(metadata, dict):
        raise ValueError(f"front matter is not a mapping: {metadata!r}")
    return metadata, match.group(2)


def python_snippets(body: str) -> list[str]:
    """The ```` ```python ```` code blocks of a markdown body, in order."""
    return _PY_BLOCK.findall(body)


def snippet_imports(code: str) -> list[tuple[str, str | None]]:
    """``(module, name)`` for every import of ``code`` (``name`` is ``None`` for ``import module``)."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
    return found


#################################################################################
#                              Hub metadata rules                               #
#################################################################################

#: ``pipeline_tag`` values the Hub knows: the keys of ``PIPELINE_DATA`` in huggingface.js
#: ``packages/tasks/src/pipelines.ts`` (2026-08).
HUB_PIPELINE_TAGS = frozenset({
    "text-classification", "token-classification", "table-question-answering", "question-answering",
    "zero-shot-classification", "translation", "summarization", "feature-extraction", "text-generation",
    "fill-mask", "sentence-similarity", "text-to-speech", "text-to-audio",
    "automatic-speech-recognition", "audio-to-audio", "audio-classification", "audio-text-to-text",
    "voice-activity-detection", "depth-estimation", "image-classification", "object-detection",
    "image-segmentation", "text-to-image", "image-to-text", "image-to-image", "image-to-video",
    "unconditional-image-generation", "video-classification", "reinforcement-learning", "robotics",
    "tabular-classification", "tabular-regression", "tabular-to-text", "table-to-text", "multiple-choice",
    "text-ranking", "text-retrieval", "time-series-forecasting", "text-to-video", "image-text-to-text",
    "image-text-to-image", "image-text-to-video", "visual-question-answering", "document-question-answering",
    "zero-shot-image-classification", "graph-ml", "mask-generation", "zero-shot-object-detection",
    "text-to-3d", "image-to-3d", "image-feature-extraction", "video-text-to-text", "keypoint-detection",
    "visual-document-retrieval", "any-to-any", "video-to-video", "other",
})

#: ``license`` ids the Hub accepts (hub-docs ``docs/hub/repositories-licenses.md``, 2026-08); ``other``
#: needs ``license_name`` and ``license_link``.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m",
    "bigscience-bloom-rail-1.0", "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd",
    "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5",
    "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0",
    "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0", "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0",
    "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0",
    "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research", "intel-research", "lppl-1.3c", "ms-pl",
    "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openmdw-1.0", "openmdw-1.1", "openrail++",
    "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr",
    "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1", "llama3.2",
    "llama3.3", "llama4", "grok2-community", "gemma", "unknown", "other",
})

#: ``base_model_relation`` values (hub-docs ``docs/hub/model-cards.md``, "Specifying a base model").
BASE_MODEL_RELATIONS = frozenset({"adapter", "merge", "quantized", "finetune"})

#: Spaces config reference (hub-docs ``docs/hub/spaces-config-reference.md``, 2026-08) plus ``license``,
#: which any repo card may set, and ``duplicated_from`` (``huggingface_hub.SpaceCardData``).
SPACE_FIELDS = frozenset({
    "title", "emoji", "colorFrom", "colorTo", "sdk", "python_version", "sdk_version", "suggested_hardware",
    "suggested_storage", "app_file", "app_build_command", "app_port", "base_path", "fullWidth", "header",
    "short_description", "models", "datasets", "tags", "thumbnail", "pinned", "hf_oauth", "hf_oauth_scopes",
    "hf_oauth_expiration_minutes", "hf_oauth_authorized_org", "disable_embedding", "startup_duration_timeout",
    "custom_headers", "preload_from_hub", "license", "duplicated_from",
})
SPACE_COLORS = frozenset({"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"})
SPACE_SDKS = frozenset({"gradio", "docker", "static"})
#: The Hub refuses a push whose ``short_description`` is longer ("length must be less than or equal to 60
#: characters long"); the config reference does not state the limit.
SHORT_DESCRIPTION_MAX = 60

_VERSION = re.compile(r"\d+\.\d+(\.\d+)?([a-z]+\d*)?")
_PYTHON_VERSION = re.compile(r"3\.\d+(\.\d+)?")


def _is_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _str_list_problem(key: str, value: Any, *, repo_ids: bool = False, empty: bool = True) -> str | None:
    if not isinstance(value, list) or not all(_is_str(v) for v in value):
        return f"{key} must be a list of strings, got {value!r}"
    if not value and not empty:
        return f"{key} must not be an empty list"
    if repo_ids:
        for item in value:
            problem = _repo_id_problem(key, item)
            if problem:
                return problem
    return None


def _repo_id_problem(key: str, value: Any) -> str | None:
    if not _is_str(value):
        return f"{key} must hold Hub repo ids (strings), got {value!r}"
    try:
        validate_repo_id(value)
    except HFValidationError as err:
        return f"{key}: {value!r} is not a Hub repo id ({err})"
    return None


def _license_problems(metadata: Mapping[str, Any]) -> list[str]:
    if "license" not in metadata:
        return []
    value = metadata["license"]
    if not isinstance(value, str) or value not in HUB_LICENSES:
        return [f"license {value!r} is not one of the Hub's license ids (e.g. 'mit', 'apache-2.0', 'other')"]
    named = _is_str(metadata.get("license_name")) and _is_str(metadata.get("license_link"))
    if value == "other" and not named:
        return ["license 'other' needs license_name and license_link (strings)"]
    return []


def _model_index_problems(value: Any) -> list[str]:
    """The structure of hub-docs ``modelcard.md``: a list of ``{name, results: [{task: {type}, dataset:
    {type, name}, metrics: [{type, value}], source?: {url}}]}``, and ``huggingface_hub`` must parse it."""
    if not isinstance(value, list) or not value:
        return [f"model-index must be a non-empty list, got {value!r}"]
    problems = []
    for i, entry in enumerate(value):
        where = f"model-index[{i}]"
        listed = isinstance(entry, dict) and isinstance(entry.get("results"), list)
        if not listed or not _is_str(entry.get("name")):
            problems.append(f"{where} must be a mapping with a string 'name' and a list 'results', "
                            f"got {entry!r}")
            continue
        for j, result in enumerate(entry["results"]):
            at = f"{where}.results[{j}]"
            if not isinstance(result, dict):
                problems.append(f"{at} must be a mapping, got {result!r}")
                continue
            task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
            if not isinstance(task, dict) or not _is_str(task.get("type")):
                problems.append(f"{at}.task must be a mapping with a string 'type', got {task!r}")
            if not isinstance(dataset, dict) or not all(_is_str(dataset.get(k)) for k in ("type", "name")):
                problems.append(f"{at}.dataset must be a mapping with string 'type' and 'name', "
                                f"got {dataset!r}")
            if not isinstance(metrics, list) or not metrics:
                problems.append(f"{at}.metrics must be a non-empty list, got {metrics!r}")
                metrics = []
            for k, metric in enumerate(metrics):
                m_at = f"{at}.metrics[{k}]"
                if not isinstance(metric, dict) or not _is_str(metric.get("type")) or "value" not in metric:
                    problems.append(f"{m_at} must be a mapping with a string 'type' and a 'value', "
                                    f"got {metric!r}")
                    continue
                value_k = metric["value"]
                if isinstance(value_k, bool) or not isinstance(value_k, (int, float, str)):
                    problems.append(f"{m_at}.value must be a number or a string, got {value_k!r}")
                if "verified" in metric and not isinstance(metric["verified"], bool):
                    problems.append(f"{m_at}.verified must be true or false, got {metric['verified']!r}")
                if "args" in metric and not isinstance(metric["args"], (dict, str)):
                    problems.append(f"{m_at}.args must be a mapping, got {metric['args']!r}")
            source = result.get("source")
            if source is not None and (not isinstance(source, dict) or not _is_str(source.get("url"))):
                problems.append(f"{at}.source must be a mapping with a string 'url', got {source!r}")
    if not problems:
        try:
            model_index_to_eval_results(value)
        except (KeyError, TypeError, ValueError) as err:
            problems.append(f"model-index does not parse with huggingface_hub: {type(err).__name__}: {err}")
    return problems


def model_card_problems(metadata: Mapping[str, Any]) -> list[str]:
    """What in a model card's front matter the Hub would refuse or misread; empty when none.

    ``license`` a Hub license id; ``pipeline_tag`` a Hub task; ``library_name`` a string; ``tags`` and
    ``datasets`` lists of strings (``datasets`` Hub ids); ``base_model`` a repo id or a list of them, with
    ``base_model_relation`` one of the Hub's four; ``model-index`` as :func:`_model_index_problems`; and
    ``huggingface_hub.ModelCardData`` must load the whole mapping.
    """
    if not isinstance(metadata, Mapping):
        return [f"front matter must be a mapping, got {type(metadata).__name__}"]
    problems = _license_problems(metadata)
    if "pipeline_tag" in metadata and metadata["pipeline_tag"] not in HUB_PIPELINE_TAGS:
        problems.append(f"pipeline_tag {metadata['pipeline_tag']!r} is not a Hub task "
                        f"(image generators without a prompt: {PIPELINE_TAG!r})")
    if "library_name" in metadata and not _is_str(metadata["library_name"]):
        problems.append(f"library_name must be a string, got {metadata['library_name']!r}")
    for key in ("tags", "metrics"):
        if key in metadata and (problem := _str_list_problem(key, metadata[key])):
            problems.append(problem)
    if "datasets" in metadata:
        if problem := _str_list_problem("datasets", metadata["datasets"], repo_ids=True):
            problems.append(problem)
    if "base_model" in metadata:
        base = metadata["base_model"]
        problem = (_str_list_problem("base_model", base, repo_ids=True, empty=False) if isinstance(base, list)
                   else _repo_id_problem("base_model", base))
        if problem:
            problems.append(problem)
    if "base_model_relation" in metadata:
        if "base_model" not in metadata:
            problems.append("base_model_relation without base_model")
        if metadata["base_model_relation"] not in BASE_MODEL_RELATIONS:
            problems.append(f"base_model_relation {metadata['base_model_relation']!r} is not one of "
                            f"{sorted(BASE_MODEL_RELATIONS)}")
    if "model-index" in metadata:
        problems += _model_index_problems(metadata["model-index"])
    if not problems:
        try:
            ModelCardData(**dict(metadata))
        except (TypeError, ValueError) as err:
            problems.append(f"huggingface_hub.ModelCardData refuses the metadata: {err}")
    return problems


def space_card_problems(metadata: Mapping[str, Any]) -> list[str]:
    """What in a Space's ``README.md`` front matter the Hub would refuse or misread; empty when none.

    Every key is in the Spaces config reference (:data:`SPACE_FIELDS`) with its type; ``sdk`` is gradio,
    docker or static, with ``sdk_version`` (a version string) and ``app_file`` for gradio / static;
    ``python_version`` a string ``3.x[.y]`` (unquoted YAML ``3.10`` would be the number 3.1);
    ``short_description`` at most 60 characters; colors from the reference's eight; ``models`` and
    ``datasets`` lists of Hub ids; ``license`` a Hub license id.
    """
    if not isinstance(metadata, Mapping):
        return [f"front matter must be a mapping, got {type(metadata).__name__}"]
    problems = [f"{key!r} is not a Spaces config field (the reference lists: {sorted(SPACE_FIELDS)})"
                for key in metadata if key not in SPACE_FIELDS]
    problems += _license_problems(metadata)
    for key in ("title", "emoji", "app_file", "base_path", "thumbnail", "suggested_hardware",
                "app_build_command", "startup_duration_timeout", "duplicated_from"):
        if key in metadata and not _is_str(metadata[key]):
            problems.append(f"{key} must be a non-empty string, got {metadata[key]!r}")
    if _is_str(metadata.get("emoji")) and any(ch.isascii() and ch.isalnum() for ch in metadata["emoji"]):
        problems.append(f"emoji must be an emoji only, got {metadata['emoji']!r}")
    for key in ("colorFrom", "colorTo"):
        if key in metadata and metadata[key] not in SPACE_COLORS:
            problems.append(f"{key} {metadata[key]!r} is not one of {sorted(SPACE_COLORS)}")
    sdk = metadata.get("sdk")
    if sdk not in SPACE_SDKS:
        problems.append(f"sdk {sdk!r} is not one of {sorted(SPACE_SDKS)}")
    if "sdk_version" in metadata and not (isinstance(metadata["sdk_version"], str)
                                          and _VERSION.fullmatch(metadata["sdk_version"])):
        problems.append(f"sdk_version must be a version string such as '6.31.0' (quoted), got "
                        f"{metadata['sdk_version']!r}")
    if sdk == "gradio" and "sdk_version" not in metadata:
        problems.append("sdk gradio needs sdk_version")
    if sdk in ("gradio", "static") and "app_file" not in metadata:
        problems.append(f"sdk {sdk} needs app_file")
    if "python_version" in metadata and not (isinstance(metadata["python_version"], str)
                                             and _PYTHON_VERSION.fullmatch(metadata["python_version"])):
        problems.append(f"python_version must be a quoted string '3.x' or '3.x.y', "
                        f"got {metadata['python_version']!r}")
    if "short_description" in metadata:
        text = metadata["short_description"]
        if not _is_str(text):
            problems.append(f"short_description must be a non-empty string, got {text!r}")
        elif len(text) > SHORT_DESCRIPTION_MAX:
            problems.append(f"short_description is {len(text)} characters, the Hub allows at most "
                            f"{SHORT_DESCRIPTION_MAX}: {text!r}")
    if "header" in metadata and metadata["header"] not in ("mini", "default"):
        problems.append(f"header {metadata['header']!r} is not 'mini' or 'default'")
    for key in ("pinned", "fullWidth", "hf_oauth", "disable_embedding"):
        if key in metadata and not isinstance(metadata[key], bool):
            problems.append(f"{key} must be true or false, got {metadata[key]!r}")
    for key in ("app_port", "hf_oauth_expiration_minutes"):
        if key in metadata and (isinstance(metadata[key], bool) or not isinstance(metadata[key], int)):
            problems.append(f"{key} must be an integer, got {metadata[key]!r}")
    for key in ("models", "datasets"):
        if key in metadata and (problem := _str_list_problem(key, metadata[key], repo_ids=True)):
            problems.append(problem)
    for key in ("tags", "hf_oauth_scopes", "preload_from_hub"):
        if key in metadata and (problem := _str_list_problem(key, metadata[key])):
            problems.append(problem)
    if "custom_headers" in metadata and not (isinstance(metadata["custom_headers"], dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata["custom_headers"].items())):
        problems.append(f"custom_headers must map strings to strings, got {metadata['custom_headers']!r}")
    return problems


def check_card(text: str, kind: str = "model") -> dict[str, Any]:
    """The front matter of a model (``kind="model"``) or Space (``kind="space"``) card, after checking it
    against the Hub's rules; raises :class:`~sit_diffusers.validation.InputError` listing every problem.

    The card must also load with ``huggingface_hub.ModelCard`` / ``SpaceCard`` (strict: a malformed
    ``model-index`` is an error there too).
    """
    if kind not in ("model", "space"):
        raise InputError(f"kind must be 'model' or 'space', got {kind!r}")
    try:
        metadata, _ = parse_model_card(text)
    except (ValueError, yaml.YAMLError) as err:
        raise InputError(f"{kind} card: {err}") from None
    problems = model_card_problems(metadata) if kind == "model" else space_card_problems(metadata)
    if not problems:
        try:
            (ModelCard if kind == "model" else SpaceCard)(text, ignore_metadata_errors=False)
        except ValueError as err:
            problems.append(f"huggingface_hub refuses the card: {err}")
    if problems:
        raise InputError(f"{kind} card metadata breaks the Hub's rules:\n- " + "\n- ".join(problems))
    return metadata
