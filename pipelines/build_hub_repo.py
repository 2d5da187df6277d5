"""Build (and publish) the Hub repo of an official SiT checkpoint: download, convert, check, assemble, card, upload.

One command for every published repo; each repo is a folder ``pipelines/<name>/`` whose ``repo.json`` is its
:class:`~sit_diffusers.model_card.RepoSpec`. Steps, in order:

1. **download** the official checkpoint (``huggingface_hub.hf_hub_download`` from ``nyu-visionx/SiT-collections``)
   or take ``--checkpoint PATH``;
2. **convert** it with ``sit_diffusers.conversion`` (key table, every key and shape checked) and check the
   architecture against the spec (named config, classes, resolution);
3. **record a reference forward**: fixed inputs ``x, t, y`` (seeded; the null class included) and the converted
   transformer's output, written to ``parity/reference_forward.safetensors``;
4. **assemble** ``SiTPipeline(transformer, SiTSampler preset, VAE stabilityai/sd-vae-ft-ema, ImageNet id2label)``
   and ``save_pretrained`` it, with the model card ``README.md`` and ``build_info.json`` (provenance);
5. **parity check**: reload the folder with ``SiTPipeline.from_pretrained`` and require the recorded output;
6. **upload** with ``HfApi.upload_folder`` -- skipped by ``--dry-run``, which only writes the folder.

Usage::

    python pipelines/build_hub_repo.py SiT-XL-2-256 --out build --dry-run       # folder build/SiT-XL-2-256
    python pipelines/build_hub_repo.py --all --out build                        # build + upload all five
    python pipelines/build_hub_repo.py --render-cards                           # model_cards/SiT-*.md only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from sit_diffusers.conversion import convert_official_state_dict, load_official_state_dict
from sit_diffusers.labels import IMAGENET_NUM_CLASSES, imagenet_id2label
from sit_diffusers.model_card import RepoSpec, load_repo_spec, render_model_card
from sit_diffusers.modeling_sit import SIT_CONFIGS, SiTTransformer2DModel

PIPELINES_DIR = Path(__file__).resolve().parent
CARDS_DIR = PIPELINES_DIR.parent / "model_cards"
PARITY_FILE = "parity/reference_forward.safetensors"


class ParityError(RuntimeError):
    """The saved pipeline does not reproduce the forward recorded at conversion."""


@dataclass(frozen=True)
class BuildResult:
    """What one build produced: the folder, the parity error of the reloaded pipeline, and the upload."""

    name: str
    folder: Path
    parity_max_abs_diff: float
    uploaded_to: str | None


def repo_specs() -> dict[str, RepoSpec]:
    """Every published repo: ``pipelines/<name>/repo.json`` -> spec, by name."""
    specs = {}
    for path in sorted(PIPELINES_DIR.glob("*/repo.json")):
        spec = load_repo_spec(path)
        if spec.name != path.parent.name:
            raise ValueError(f"{path}: spec name {spec.name!r} differs from its folder {path.parent.name!r}")
        specs[spec.name] = spec
    return specs


#################################################################################
#                                   Build steps                                 #
#################################################################################


def fetch_checkpoint(spec: RepoSpec, checkpoint: str | Path | None = None) -> Path:
    """The local official checkpoint: ``checkpoint`` if given, else downloaded from the spec's Hub repo."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return path
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(spec.source_repo_id, spec.source_filename))
    except EntryNotFoundError as err:
        files = HfApi().list_repo_files(spec.source_repo_id)
        raise FileNotFoundError(
            f"{spec.source_repo_id} has no {spec.source_filename!r}; it holds {sorted(files)}. "
            f"Fix source_filename in pipelines/{spec.name}/repo.json."
        ) from err


def convert_checkpoint(path: Path, spec: RepoSpec, num_heads: int | None = None) -> SiTTransformer2DModel:
    """Official checkpoint -> eval-mode transformer, checked against the spec's architecture and classes."""
    if num_heads is None and spec.model_name in SIT_CONFIGS:
        num_heads = SIT_CONFIGS[spec.model_name]["num_heads"]
    config, state_dict = convert_official_state_dict(load_official_state_dict(path, use_ema=True), num_heads)
    if spec.model_name in SIT_CONFIGS:
        expected = SIT_CONFIGS[spec.model_name]
        wrong = {k: (config[k], v) for k, v in expected.items() if k in config and config[k] != v}
        if wrong:
            raise ValueError(f"{path} is not a {spec.model_name}: (found, expected) {wrong}")
    if config["num_classes"] != spec.num_classes:
        raise ValueError(f"{path} has {config['num_classes']} classes, the spec says {spec.num_classes}")
    transformer = SiTTransformer2DModel(**config)
    transformer.load_state_dict(state_dict, strict=True)
    return transformer.eval()


def reference_inputs(transformer: SiTTransformer2DModel, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fixed inputs: ``x`` (3, C, S, S) ~ N(0, I) from ``seed``, ``t = (0.1, 0.5, 0.9)``, labels
    ``(0, num_classes - 1, null)``."""
    cfg = transformer.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)  # (3, C, S, S)
    t = torch.tensor([0.1, 0.5, 0.9])  # (3,)
    y = torch.tensor([0, cfg.num_classes - 1, cfg.num_classes])  # (3,), the last is the null class
    return {"x": x, "t": t, "y": y}


@torch.no_grad()
def reference_forward(transformer: SiTTransformer2DModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The transformer's output ``sample`` on ``inputs``, float32 CPU."""
    out = transformer(inputs["x"], inputs["t"], inputs["y"]).sample  # (3, C_out, S, S)
    return out.float().cpu()


def load_vae(vae: str | Path | None, spec: RepoSpec):
    """The VAE the paper used (``spec.vae_repo_id``), or a local folder / other repo id."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(vae or spec.vae_repo_id)).eval()


def assemble_pipeline(transformer: SiTTransformer2DModel, spec: RepoSpec, vae):
    """``SiTPipeline`` with the spec's default sampler preset, the VAE and the ImageNet-1k class names."""
    from sit_diffusers.pipeline_sit import SiTPipeline
    from sit_diffusers.scheduling_sit import SiTSampler

    if vae is not None:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if transformer.config.sample_size * factor != spec.resolution:
            raise ValueError(
                f"latent {transformer.config.sample_size} x VAE factor {factor} != resolution {spec.resolution}"
            )
    id2label = imagenet_id2label() if spec.num_classes == IMAGENET_NUM_CLASSES else None
    pipe = SiTPipeline(
        transformer=transformer, scheduler=SiTSampler.from_preset(spec.default_preset), vae=vae, id2label=id2label
    )
    pipe.set_sampler(spec.default_preset)  # also the preset's default number of steps
    return pipe


def check_parity(folder: Path, tol: float = 1e-5) -> float:
    """Reload ``folder`` with ``SiTPipeline.from_pretrained``; max |out - recorded| (raises above ``tol``)."""
    from safetensors.torch import load_file

    from sit_diffusers.pipeline_sit import SiTPipeline

    recorded = load_file(str(folder / PARITY_FILE))
    pipe = SiTPipeline.from_pretrained(str(folder))
    out = reference_forward(pipe.transformer.eval(), recorded)
    diff = float((out - recorded["out"]).abs().max())
    scale = float(recorded["out"].abs().max())
    if not diff <= tol * max(scale, 1.0):
        raise ParityError(f"{folder}: reloaded transformer differs from the recorded forward by {diff:.3g}")
    return diff


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def upload(folder: Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` with ``HfApi.upload_folder``; returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=f"SiT pipeline converted from the official checkpoint ({folder.name})",
    )
    return str(url)


def build(
    spec: RepoSpec,
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    vae: str | Path | None = None,
    num_heads: int | None = None,
    dry_run: bool = False,
    hub_repo_id: str | None = None,
    token: str | None = None,
    private: bool = False,
) -> BuildResult:
    """All steps for one repo; writes ``out_dir`` (created) and uploads it unless ``dry_run``."""
    from safetensors.torch import save_file

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = fetch_checkpoint(spec, checkpoint)
    transformer = convert_checkpoint(ckpt, spec, num_heads)

    inputs = reference_inputs(transformer)
    recorded = {**inputs, "out": reference_forward(transformer, inputs)}

    pipe = assemble_pipeline(transformer, spec, load_vae(vae, spec))
    pipe.save_pretrained(str(folder), safe_serialization=True)
    (folder / PARITY_FILE).parent.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in recorded.items()}, str(folder / PARITY_FILE))
    (folder / "README.md").write_text(render_model_card(spec), encoding="utf-8")
    info = {
        "name": spec.name,
        "source": f"{spec.source_repo_id}/{spec.source_filename}" if checkpoint is None else str(checkpoint),
        "source_sha256": _sha256(ckpt),
        "transformer_config": {k: v for k, v in transformer.config.items() if not k.startswith("_")},
        "sampler_preset": spec.default_preset,
        "vae": str(vae or spec.vae_repo_id),
        "torch": torch.__version__,
    }
    (folder / "build_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")

    diff = check_parity(folder)
    uploaded = None if dry_run else upload(folder, hub_repo_id or spec.hub_repo_id, token, private)
    return BuildResult(spec.name, folder, diff, uploaded)


def render_cards(specs: dict[str, RepoSpec], cards_dir: Path = CARDS_DIR) -> list[Path]:
    """Write ``model_cards/<name>.md`` for every spec (the same text the build puts in ``README.md``)."""
    paths = []
    for name, spec in specs.items():
        path = cards_dir / f"{name}.md"
        path.write_text(render_model_card(spec), encoding="utf-8")
        paths.append(path)
    return paths


#################################################################################
#                                      CLI                                      #
#################################################################################


def main(argv: list[str] | None = None) -> int:
    specs = repo_specs()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repos", nargs="*", metavar="REPO", help=f"repos to build: {', '.join(specs)}")
    parser.add_argument("--all", action="store_true", help="build every repo")
    parser.add_argument("--out", type=Path, default=Path("build"), help="parent folder of the built repos")
    parser.add_argument("--checkpoint", type=Path, help="local official checkpoint (one repo only)")
    parser.add_argument("--vae", help=f"VAE folder or repo id (default: the spec's, {RepoSpec.vae_repo_id})")
    parser.add_argument("--num-heads", type=int,
                        help="attention heads, for a checkpoint that matches no named config (one repo only)")
    parser.add_argument("--hub-repo-id", help="publish under this id instead of the spec's (one repo only)")
    parser.add_argument("--dry-run", action="store_true", help="write the folder, upload nothing")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--render-cards", action="store_true", help="only (re)write model_cards/<name>.md")
    args = parser.parse_args(argv)

    if args.render_cards:
        for path in render_cards(specs):
            print(f"wrote {path}")
        return 0
    names = list(specs) if args.all else args.repos
    if not names:
        parser.error("name at least one repo or pass --all")
    unknown = sorted(set(names) - set(specs))
    if unknown:
        parser.error(f"unknown repos {unknown}; valid: {', '.join(specs)}")
    if len(names) > 1 and (args.checkpoint or args.hub_repo_id or args.num_heads):
        parser.error("--checkpoint / --hub-repo-id / --num-heads apply to a single repo")
    for name in names:
        result = build(specs[name], args.out / name, args.checkpoint, args.vae, args.num_heads, dry_run=args.dry_run,
                       hub_repo_id=args.hub_repo_id, token=args.token, private=args.private)
        where = result.uploaded_to or "not uploaded (--dry-run)"
        print(f"{name}: {result.folder} (parity max |diff| {result.parity_max_abs_diff:.2e}); {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
