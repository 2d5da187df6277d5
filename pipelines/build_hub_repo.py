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
   and ``save_pretrained`` it (with the code files stock diffusers loads it with: ``sit_diffusers.remote_code``),
   with the model card ``README.md`` and ``build_info.json`` (provenance, no local path);
5. **checks**: the code files are the installed package's and ``model_index.json`` names them
   (``remote_code.check_code_files``); reloaded with ``SiTPipeline.from_pretrained`` the folder gives the recorded
   output; before an upload (or with ``--stock-check``), so does ``DiffusionPipeline.from_pretrained(folder,
   trust_remote_code=True)`` in a Python where sit-diffusers cannot be imported;
6. **upload** with ``HfApi.upload_folder`` -- skipped by ``--dry-run``, which only writes the folder.

Usage::

    python pipelines/build_hub_repo.py SiT-XL-2-256 --out build --dry-run       # folder build/SiT-XL-2-256
    python pipelines/build_hub_repo.py --all --out build                        # build + upload all five
    python pipelines/build_hub_repo.py --render-cards                           # model_cards/SiT-*.md only

Checks at the door, for every repo named, before anything is downloaded, converted or written: the repo
names (the closest one suggested), flags that apply to one repo only, ``--checkpoint`` (an existing,
non-empty file), ``--num-heads`` (>= 1, dividing the width; for a named architecture, its own count),
``--hub-repo-id`` (``owner/name``), ``--vae`` (a folder with ``config.json`` or a Hub id; offline: cached),
``--out`` (``<out>/<repo>`` new or empty, else ``--overwrite``), a Hub token unless ``--dry-run``. A bad one
prints one line ``build_hub_repo.py: error: ...`` and exits with status 2 (``--debug``: the traceback); a
checkpoint whose content is not the spec's model fails the same way, before anything is written.

Each repo folder is written into a temporary folder beside ``<out>/<repo>`` and renamed into place once the
parity check passed, so a failed build leaves ``<out>/<repo>`` as it was. A parity failure or a failed
upload exits with status 1 and one line (the folder of a failed upload is complete and kept).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sit_diffusers.atomic import check_output_folder, write_folder_atomically
from sit_diffusers.conversion import (
    CheckpointNotFoundError,
    ConversionError,
    convert_official_state_dict,
    infer_official_config,
    load_official_state_dict,
    official_guidance_channels,
)
from sit_diffusers.labels import IMAGENET_NUM_CLASSES, imagenet_id2label
from sit_diffusers.model_card import RepoSpec, load_repo_spec, render_model_card
from sit_diffusers.modeling_sit import SIT_CONFIGS, SiTTransformer2DModel
from sit_diffusers.remote_code import RepoFormatError, check_code_files
from sit_diffusers.validation import CLIParser, InputError, check_choice, check_int, run_cli

PROG = "build_hub_repo.py"
PIPELINES_DIR = Path(__file__).resolve().parent
CARDS_DIR = PIPELINES_DIR.parent / "model_cards"
PARITY_FILE = "parity/reference_forward.safetensors"
DEFAULT_OUT = Path("build")

#: How messages name each argument of :func:`build`: the Python names, and the CLI's flags.
API_NAMES: dict[str, str] = {
    "out_dir": "out_dir", "checkpoint": "checkpoint", "num_heads": "num_heads", "vae": "vae",
    "hub_repo_id": "hub_repo_id", "overwrite": "overwrite=True",
}
CLI_NAMES: dict[str, str] = {
    "out_dir": "--out", "checkpoint": "--checkpoint", "num_heads": "--num-heads", "vae": "--vae",
    "hub_repo_id": "--hub-repo-id", "overwrite": "--overwrite",
}


class ParityError(RuntimeError):
    """The saved pipeline does not reproduce the forward recorded at conversion, or stock diffusers cannot
    load it."""


class UploadError(RuntimeError):
    """The Hub refused or could not take the upload (the built folder is complete and kept)."""


@dataclass(frozen=True)
class BuildResult:
    """What one build produced: the folder, the parity error of the reloaded pipeline, and the upload."""

    name: str
    folder: Path
    parity_max_abs_diff: float
    uploaded_to: str | None
    stock_parity_max_abs_diff: float | None = None  # None: the stock-loading check did not run


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
#                               Checks at the door                              #
#################################################################################


def _names(arg_names: Mapping[str, str] | None) -> dict[str, str]:
    return {**API_NAMES, **(arg_names or {})}


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def check_checkpoint_file(checkpoint: str | os.PathLike, name: str = "checkpoint") -> Path:
    """``checkpoint``: an existing, readable, non-empty local file (its content is checked at conversion)."""
    text = os.fspath(checkpoint)
    if text == "":
        raise InputError(f"{name} is empty; give the official checkpoint file (.pt or .safetensors)")
    path = Path(text).expanduser()
    if path.is_dir():
        raise InputError(f"{name} {text!r} is a folder; give the checkpoint file itself (.pt or .safetensors)")
    if not path.is_file():
        raise InputError(f"{name} {text!r} does not exist; give the local official checkpoint file "
                         "(.pt or .safetensors), or leave it out to download the spec's")
    if path.stat().st_size == 0:
        raise InputError(f"{name} {text!r} is empty (0 bytes), not a checkpoint")
    if not os.access(path, os.R_OK):
        raise InputError(f"{name} {text!r} is not readable (permission denied)")
    return path


def check_num_heads(num_heads: int | None, spec: RepoSpec, name: str = "num_heads") -> int | None:
    """``num_heads``: ``None``, or an integer >= 1 that divides the spec's width; for a named architecture
    (``SIT_CONFIGS``) it must be that architecture's own count (it exists for checkpoints that match none)."""
    if num_heads is None:
        return None
    num_heads = check_int(name, num_heads, minimum=1)
    named = SIT_CONFIGS.get(spec.model_name)
    if named is not None:
        width = named["hidden_size"]
        if width % num_heads:
            raise InputError(f"{name} {num_heads} does not divide the width {width} of {spec.model_name} "
                             f"({spec.name}); its heads: {named['num_heads']}")
        if num_heads != named["num_heads"]:
            raise InputError(f"{name} {num_heads}: {spec.name} is {spec.model_name}, which has "
                             f"{named['num_heads']} heads; drop {name} (it is for checkpoints that match no "
                             "named config)")
    return num_heads


def check_hub_repo_id(repo_id: str, name: str = "hub_repo_id") -> str:
    """``repo_id``: a Hub model id ``owner/name``."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise InputError(f"{name} {repo_id!r} is not of the form 'owner/name'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InputError(f"{name} {repo_id!r} is not a valid Hub repo id 'owner/name': {_first_line(err)}") from None
    return repo_id


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def locate_vae(vae: str | os.PathLike | None, spec: RepoSpec, name: str = "vae") -> str:
    """The VAE to load (``vae``, else the spec's): a folder with ``config.json`` or a Hub repo id (offline:
    in the Hub cache). Nothing is loaded."""
    if vae is None:
        if _offline() and not _cached(spec.vae_repo_id, "config.json"):
            raise InputError(f"the VAE of {spec.name}, {spec.vae_repo_id!r} ({name} default), is not in the local "
                             f"Hub cache and offline mode is on (HF_HUB_OFFLINE=1); pass {name} FOLDER")
        return spec.vae_repo_id
    text = os.fspath(vae)
    if text == "":
        raise InputError(f"{name} is empty; give an AutoencoderKL folder or Hub repo id")
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise InputError(f"{name} {text!r} is a file; give an AutoencoderKL folder or Hub repo id")
        if not (local / "config.json").is_file():
            raise InputError(f"{name} {text!r} has no config.json, so it is not a saved AutoencoderKL")
        return str(local)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise InputError(f"{name} {text!r} is neither an existing folder nor a Hub repo id 'owner/name'")
    check_hub_repo_id(text, name)
    if _offline() and not _cached(text, "config.json"):
        raise InputError(f"{name} {text!r} is not in the local Hub cache and offline mode is on "
                         "(HF_HUB_OFFLINE=1); pass a local AutoencoderKL folder")
    return text


def check_build_inputs(
    spec: RepoSpec,
    out_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    vae: str | os.PathLike | None = None,
    num_heads: int | None = None,
    hub_repo_id: str | None = None,
    overwrite: bool = False,
    arg_names: Mapping[str, str] | None = None,
) -> Path:
    """Every argument of :func:`build` that can be checked without reading the checkpoint; the absolute
    repo folder. ``InputError`` names the argument as ``arg_names`` says (default: the Python names)."""
    names = _names(arg_names)
    if not isinstance(spec, RepoSpec):
        raise InputError(f"spec must be a RepoSpec, got {type(spec).__name__}")
    if checkpoint is not None:
        check_checkpoint_file(checkpoint, names["checkpoint"])
    elif _offline() and not _cached(spec.source_repo_id, spec.source_filename):
        raise InputError(f"the official checkpoint of {spec.name}, {spec.source_repo_id}/{spec.source_filename}, "
                         "is not in the local Hub cache and offline mode is on (HF_HUB_OFFLINE=1); download it "
                         f"once online or pass {names['checkpoint']} FILE")
    check_num_heads(num_heads, spec, names["num_heads"])
    if hub_repo_id is not None:
        check_hub_repo_id(hub_repo_id, names["hub_repo_id"])
    locate_vae(vae, spec, names["vae"])
    return check_output_folder(out_dir, overwrite, [checkpoint, vae], names["out_dir"], names["overwrite"])


#################################################################################
#                                   Build steps                                 #
#################################################################################


def fetch_checkpoint(spec: RepoSpec, checkpoint: str | Path | None = None, *, name: str = "checkpoint") -> Path:
    """The local official checkpoint: ``checkpoint`` if given, else downloaded from the spec's Hub repo.

    Raises:
        InputError: ``checkpoint`` (named ``name``) is missing, a folder or empty.
        CheckpointNotFoundError: the spec's Hub file cannot be had (offline, no such repo or file, gated).
    """
    if checkpoint is not None:
        return check_checkpoint_file(checkpoint, name)
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    where = f"{spec.source_repo_id}/{spec.source_filename} (pipelines/{spec.name}/repo.json)"
    try:
        return Path(hf_hub_download(spec.source_repo_id, spec.source_filename))
    except LocalEntryNotFoundError as err:
        raise CheckpointNotFoundError(
            f"{where} is not in the local Hub cache and cannot be downloaded (offline, or no connection); "
            f"download it once online, or pass {name} FILE"
        ) from err
    except GatedRepoError as err:
        raise CheckpointNotFoundError(f"{where}: the repo is gated; accept its terms and log in") from err
    except RepositoryNotFoundError as err:
        raise CheckpointNotFoundError(f"{where}: no such Hub repo; fix source_repo_id in the spec") from err
    except EntryNotFoundError as err:
        files = HfApi().list_repo_files(spec.source_repo_id)
        raise CheckpointNotFoundError(
            f"{spec.source_repo_id} has no {spec.source_filename!r}; it holds {sorted(files)}. "
            f"Fix source_filename in pipelines/{spec.name}/repo.json."
        ) from err


def convert_checkpoint(
    path: Path,
    spec: RepoSpec,
    num_heads: int | None = None,
    *,
    checkpoint_name: str = "checkpoint",
    num_heads_name: str = "num_heads",
) -> SiTTransformer2DModel:
    """Official checkpoint -> eval-mode transformer, checked against the spec's architecture and classes.

    Raises:
        ConversionError: not a SiT checkpoint, or not the spec's architecture / number of classes (naming
            the file as ``checkpoint_name``).
        InputError: ``num_heads`` is not an integer >= 1 dividing the width, or is needed and not given.
    """
    text = os.fspath(path)
    if num_heads is None and spec.model_name in SIT_CONFIGS:
        num_heads = SIT_CONFIGS[spec.model_name]["num_heads"]
    state = load_official_state_dict(path, use_ema=True, name=checkpoint_name)
    try:
        config = infer_official_config(state, num_heads, num_heads_name=num_heads_name)
        config, state_dict = convert_official_state_dict(state, config["num_heads"])
    except ConversionError as err:
        raise ConversionError(f"{checkpoint_name} {text!r}: {err}") from err
    if spec.model_name in SIT_CONFIGS:
        expected = SIT_CONFIGS[spec.model_name]
        wrong = {k: (config[k], v) for k, v in expected.items() if k in config and config[k] != v}
        if wrong:
            raise ConversionError(
                f"{checkpoint_name} {text!r} is not a {spec.model_name}, as {spec.name} needs: (found, expected) "
                f"{wrong}"
            )
    if config["num_classes"] != spec.num_classes:
        raise ConversionError(
            f"{checkpoint_name} {text!r} has {config['num_classes']} classes, the spec of {spec.name} says "
            f"{spec.num_classes}"
        )
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


def load_vae(vae: str | Path | None, spec: RepoSpec, *, name: str = "vae"):
    """The VAE the paper used (``spec.vae_repo_id``), or a local folder / other repo id; ``InputError``
    (naming ``name``) when it cannot be found or loaded."""
    from diffusers import AutoencoderKL
    from diffusers.utils import logging as diffusers_logging

    source = locate_vae(vae, spec, name)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)  # its retries log errors: ours is one line
    try:
        return AutoencoderKL.from_pretrained(source).eval()
    except (OSError, ValueError) as err:  # diffusers: missing files, no connection, a config it cannot use
        what = f"{name} {os.fspath(vae)!r}" if vae is not None else f"the VAE {source!r} of {spec.name}"
        raise InputError(f"{what} cannot be loaded as an AutoencoderKL ({_first_line(err)})") from err
    finally:
        diffusers_logging.set_verbosity(verbosity)


def check_vae_fits(vae, transformer: SiTTransformer2DModel, spec: RepoSpec, name: str = "vae") -> None:
    """The VAE's latent channels are the transformer's and ``latent side x VAE factor`` is the resolution."""
    if vae is None:
        return
    cfg = transformer.config
    if vae.config.latent_channels != cfg.in_channels:
        raise InputError(f"{name}: the VAE has {vae.config.latent_channels} latent channels, the transformer "
                         f"takes {cfg.in_channels}")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if cfg.sample_size * factor != spec.resolution:
        raise InputError(f"{name}: latent {cfg.sample_size} x VAE factor {factor} != resolution {spec.resolution} "
                         f"of {spec.name}")


def assemble_pipeline(transformer: SiTTransformer2DModel, spec: RepoSpec, vae):
    """``SiTPipeline`` with the spec's default sampler preset, the VAE and the ImageNet-1k class names."""
    from sit_diffusers.pipeline_sit import SiTPipeline
    from sit_diffusers.scheduling_sit import SiTSampler

    check_vae_fits(vae, transformer, spec)
    id2label = imagenet_id2label() if spec.num_classes == IMAGENET_NUM_CLASSES else None
    pipe = SiTPipeline(
        transformer=transformer, scheduler=SiTSampler.from_preset(spec.default_preset), vae=vae, id2label=id2label,
        default_guidance_channels=official_guidance_channels(transformer.config.in_channels),  # official CFG
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


#: Run in a fresh Python where sit_diffusers cannot be imported: stock diffusers loads the folder with its
#: code files and prints max |transformer(x, t, y) - recorded|.
STOCK_CHECK_SCRIPT = r"""
import os, sys
sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or os.getcwd(), "sit_diffusers"))]
sys.modules["sit_diffusers"] = None
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file
folder, parity = sys.argv[1:3]
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
recorded = load_file(os.path.join(folder, parity))
with torch.no_grad():
    out = pipe.transformer.eval()(recorded["x"], recorded["t"], recorded["y"]).sample.float()
print(type(pipe).__module__, float((out - recorded["out"]).abs().max()))
"""


def check_stock_parity(folder: Path, tol: float = 1e-5) -> float:
    """Load ``folder`` with stock ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` in a fresh
    Python without sit-diffusers (its own module cache, offline); max |out - recorded| (raises above ``tol``).

    This is how a user without the package loads the published repo: the repo's code files must suffice."""
    import subprocess
    import tempfile

    from safetensors.torch import load_file

    scale = float(load_file(str(folder / PARITY_FILE))["out"].abs().max())
    with tempfile.TemporaryDirectory(prefix="sit-stock-check-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "PYTHONPATH"}
        env.update(HF_MODULES_CACHE=tmp, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
                   DIFFUSERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
        proc = subprocess.run([sys.executable, "-c", STOCK_CHECK_SCRIPT, str(folder), PARITY_FILE], env=env, cwd=tmp,
                              capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise ParityError(f"{folder}: stock diffusers cannot load it without sit-diffusers "
                          f"({lines[-1] if lines else f'exit status {proc.returncode}'})")
    module, diff = proc.stdout.split()[-2:]
    if not module.startswith("diffusers_modules."):
        raise ParityError(f"{folder}: stock diffusers loaded the pipeline class from {module}, not the repo's code")
    if not float(diff) <= tol * max(scale, 1.0):
        raise ParityError(f"{folder}: loaded by stock diffusers, the transformer differs from the recorded forward "
                          f"by {float(diff):.3g}")
    return float(diff)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def upload(folder: Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` with ``HfApi.upload_folder``; returns the repo URL.

    Raises ``UploadError`` (one line) when the Hub refuses or cannot be reached."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"SiT pipeline converted from the official checkpoint ({folder.name})",
        )
    except OSError as err:  # HfHubHTTPError, no token, no connection
        raise UploadError(f"upload of {folder} to {repo_id} failed ({_first_line(err)}); the folder is complete: "
                          f"upload it with `hf upload {repo_id} {folder}`") from err
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
    *,
    overwrite: bool = False,
    stock_check: bool | None = None,
    arg_names: Mapping[str, str] | None = None,
) -> BuildResult:
    """All steps for one repo: writes ``out_dir`` and uploads it unless ``dry_run``.

    Every argument is checked first (:func:`check_build_inputs`), then the checkpoint is converted and
    checked and the VAE loaded, and only then is anything written: into a temporary folder beside ``out_dir``,
    renamed into place once the checks passed. ``out_dir`` must be new or empty unless ``overwrite``.
    ``stock_check`` (default: when uploading) also loads the folder with stock diffusers in a Python without
    sit-diffusers (:func:`check_stock_parity`, a few seconds). ``arg_names`` says how error messages name the
    arguments (the CLI passes :data:`CLI_NAMES`).

    Raises:
        InputError (ConversionError, CheckpointNotFoundError): a bad argument or checkpoint, nothing written.
        ParityError: the saved folder does not reproduce the converted transformer, or stock diffusers cannot
            load it; nothing written.
        UploadError: the upload failed; the folder is complete.
    """
    from safetensors.torch import save_file

    names = _names(arg_names)
    folder = check_build_inputs(spec, out_dir, checkpoint, vae, num_heads, hub_repo_id, overwrite, arg_names)
    ckpt = fetch_checkpoint(spec, checkpoint, name=names["checkpoint"])
    transformer = convert_checkpoint(ckpt, spec, num_heads, checkpoint_name=names["checkpoint"],
                                     num_heads_name=names["num_heads"])
    vae_model = load_vae(vae, spec, name=names["vae"])
    check_vae_fits(vae_model, transformer, spec, names["vae"])
    source_sha256 = _sha256(ckpt)

    inputs = reference_inputs(transformer)
    recorded = {**inputs, "out": reference_forward(transformer, inputs)}
    pipe = assemble_pipeline(transformer, spec, vae_model)
    info = {
        "name": spec.name,
        # provenance without local paths: a local file or folder is named, its content identified by the hash
        "source": f"{spec.source_repo_id}/{spec.source_filename}" if checkpoint is None
        else f"local file {Path(checkpoint).name}",
        "source_sha256": source_sha256,
        "transformer_config": {k: v for k, v in transformer.config.items() if not k.startswith("_")},
        "sampler_preset": spec.default_preset,
        "vae": _vae_source(vae, spec),
        "torch": torch.__version__,
    }
    diffs: list[float | None] = []
    if stock_check is None:
        stock_check = not dry_run

    def write(tmp: Path) -> None:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / PARITY_FILE).parent.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in recorded.items()}, str(tmp / PARITY_FILE))
        (tmp / "README.md").write_text(render_model_card(spec), encoding="utf-8")
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
        try:
            check_code_files(tmp, pipe)
            diffs.append(check_parity(tmp))
            diffs.append(check_stock_parity(tmp) if stock_check else None)
        except RepoFormatError as err:  # our save, not the user's input: a failed check (status 1)
            raise ParityError(f"{spec.name}: {err}; nothing was written to {folder}") from err
        except ParityError as err:
            raise ParityError(f"{spec.name}: {err}; nothing was written to {folder}") from err

    write_folder_atomically(folder, write)
    uploaded = None if dry_run else upload(folder, hub_repo_id or spec.hub_repo_id, token, private)
    return BuildResult(spec.name, folder, diffs[0], uploaded, diffs[1])


def _vae_source(vae: str | os.PathLike | None, spec: RepoSpec) -> str:
    """The VAE for ``build_info.json``: a Hub id as is, a local folder by its name only."""
    if vae is None:
        return spec.vae_repo_id
    local = Path(os.fspath(vae)).expanduser()
    return f"local folder {local.name}" if local.exists() else os.fspath(vae)


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



def build_parser(specs: Mapping[str, RepoSpec]) -> argparse.ArgumentParser:
    parser = CLIParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("repos", nargs="*", metavar="REPO", help=f"repos to build: {', '.join(specs)}")
    parser.add_argument("--all", action="store_true", help="build every repo")
    parser.add_argument("--out", default=None,
                        help=f"parent folder of the built repos (default {DEFAULT_OUT}); <out>/<repo> must be new "
                             "or empty unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing <out>/<repo> (once the new one is complete)")
    parser.add_argument("--checkpoint", help="local official checkpoint (one repo only)")
    parser.add_argument("--vae", help=f"VAE folder or repo id (default: the spec's, {RepoSpec.vae_repo_id})")
    parser.add_argument("--num-heads", type=int,
                        help="attention heads, for a checkpoint that matches no named config (one repo only)")
    parser.add_argument("--hub-repo-id", help="publish under this id 'owner/name' instead of the spec's "
                                              "(one repo only)")
    parser.add_argument("--dry-run", action="store_true", help="write the folder, upload nothing")
    parser.add_argument("--stock-check", action="store_true",
                        help="also on a dry run, load the folder with stock diffusers (trust_remote_code=True) in a "
                             "Python without sit-diffusers and require the recorded forward (always before an upload)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--render-cards", action="store_true", help="only (re)write model_cards/<name>.md")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def _repo_names(args: argparse.Namespace, specs: Mapping[str, RepoSpec]) -> list[str]:
    """The repos to build, each a known name (the closest suggested), none twice, one source of names."""
    if args.all:
        if args.repos:
            raise InputError(f"--all builds every repo; drop it or the REPO names {args.repos}")
        return list(specs)
    if not args.repos:
        raise InputError(f"name at least one REPO ({', '.join(specs)}) or pass --all")
    names = [check_choice("REPO", name, specs) for name in args.repos]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"REPO {twice[0]!r} is named more than once")
    return names


def _run(argv: Sequence[str]) -> int:
    specs = repo_specs()
    args = build_parser(specs).parse_args(argv)

    if args.render_cards:
        given = [flag for flag, value in (
            ("REPO", args.repos), ("--all", args.all), ("--out", args.out), ("--overwrite", args.overwrite),
            ("--checkpoint", args.checkpoint), ("--vae", args.vae), ("--num-heads", args.num_heads),
            ("--hub-repo-id", args.hub_repo_id), ("--dry-run", args.dry_run), ("--private", args.private),
            ("--token", args.token), ("--stock-check", args.stock_check))
            if value is not None and value is not False and value != []]
        if given:
            raise InputError(f"--render-cards only (re)writes model_cards/<name>.md and builds nothing; drop "
                             f"{', '.join(given)}")
        for path in render_cards(specs, CARDS_DIR):
            print(f"wrote {path}")
        return 0

    names = _repo_names(args, specs)
    if len(names) > 1:
        for flag, value in (("--checkpoint", args.checkpoint), ("--hub-repo-id", args.hub_repo_id),
                            ("--num-heads", args.num_heads)):
            if value is not None:
                raise InputError(f"{flag} {value!r} applies to a single repo; this run builds {len(names)}: "
                                 f"{', '.join(names)}")
    if args.token == "":
        raise InputError("--token is empty; give a Hub token, or leave it out for the logged-in one")
    if not args.dry_run and args.token is None:
        from huggingface_hub import get_token

        if get_token() is None:
            raise InputError("uploading needs a Hub token: pass --token, log in (`hf auth login`), or pass "
                             "--dry-run to only write the folder")
    if args.out == "":
        raise InputError("--out is empty; give the parent folder of the built repos")
    out = DEFAULT_OUT if args.out is None else Path(args.out).expanduser()
    for name in names:  # every repo checked before the first one is built
        check_build_inputs(specs[name], out / name, args.checkpoint, args.vae, args.num_heads, args.hub_repo_id,
                           args.overwrite, CLI_NAMES)
    for name in names:
        result = build(specs[name], out / name, args.checkpoint, args.vae, args.num_heads, dry_run=args.dry_run,
                       hub_repo_id=args.hub_repo_id, token=args.token, private=args.private,
                       overwrite=args.overwrite, stock_check=args.stock_check or None, arg_names=CLI_NAMES)
        where = result.uploaded_to or "not uploaded (--dry-run)"
        stock = "" if result.stock_parity_max_abs_diff is None else \
            f", stock diffusers {result.stock_parity_max_abs_diff:.2e}"
        print(f"{name}: {result.folder} (parity max |diff| {result.parity_max_abs_diff:.2e}{stock}); {where}")
    return 0


def _cli(argv: Sequence[str]) -> int:
    """:func:`_run`, with a parity or upload failure as one line and status 1."""
    try:
        return _run(argv)
    except (ParityError, UploadError) as err:
        if "--debug" in argv:
            traceback.print_exc()
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: 0 on success; 2 (one line on stderr) for a bad flag, file or checkpoint; 1 for a
    parity or upload failure."""
    return run_cli(PROG, _cli, argv)


if __name__ == "__main__":
    sys.exit(main())
