"""Model cards for the published SiT repos: a typed spec per repo, one markdown template, YAML metadata.

Each published Hub repo has a spec ``pipelines/<name>/repo.json`` (:class:`RepoSpec`): where the official
checkpoint comes from, the architecture, training facts, the paper's numbers with their source and exact
sampler settings, and the defaults of the usage snippet. :func:`render_model_card` fills
``model_cards/template.md`` (``string.Template`` placeholders ``${name}``) from the spec and the sampler
presets of the installed package, with the YAML front matter written by ``huggingface_hub.ModelCardData``
(valid YAML by construction).
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
from huggingface_hub import ModelCardData

__all__ = [
    "PaperResult",
    "RepoSpec",
    "load_repo_spec",
    "parse_model_card",
    "python_snippets",
    "render_model_card",
    "snippet_imports",
]

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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RepoSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown RepoSpec fields {unknown}; valid: {sorted(known)}")
        data = dict(data)
        data["paper_results"] = tuple(PaperResult(**r) for r in data.get("paper_results", ()))
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


def card_metadata(spec: RepoSpec) -> ModelCardData:
    """YAML front matter: library, licenses (weights and VAE), tags, pipeline tag, dataset."""
    return ModelCardData(
        library_name="diffusers",
        license=spec.license,
        pipeline_tag="unconditional-image-generation",  # the Hub's tag for class-conditional generators too
        tags=["diffusers", *spec.tags],
        datasets=["ILSVRC/imagenet-1k"],
        vae=spec.vae_repo_id,
        vae_license=spec.vae_license,
        source_checkpoint=f"{spec.source_repo_id}/{spec.source_filename}",
    )


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
    if not spec.paper_results:
        return spec.results_note or "No number is published for these weights."
    rows = ["| metric | value | settings | source |", "|---|---|---|---|"]
    for r in spec.paper_results:
        rows.append(f"| {r.metric} | {_fmt(r.value)} | {r.setting} | {r.source} |")
    if spec.results_note:
        rows += ["", spec.results_note]
    return "\n".join(rows)


def _default_presets() -> Mapping[str, Any]:
    from .scheduling_sit import SAMPLER_PRESETS

    return SAMPLER_PRESETS


def render_model_card(
    spec: RepoSpec, template: str | None = None, presets: Mapping[str, Any] | None = None
) -> str:
    """The model card of ``spec``: YAML front matter + ``template`` (default ``model_cards/template.md``).

    ``presets`` defaults to ``sit_diffusers.scheduling_sit.SAMPLER_PRESETS``; a preset named in the spec
    must exist there. Unknown ``${placeholders}`` in the template raise ``KeyError``.
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
    return string.Template(template).substitute(values)


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
