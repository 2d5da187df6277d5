"""Hub loading for sit-diffusers pipelines: download a snapshot with huggingface_hub, then load locally.

``SiTPipeline.from_pretrained("org/repo")`` fetches the repo with ``huggingface_hub.snapshot_download``
(online, or offline from the Hub cache with ``HF_HUB_OFFLINE=1``) and loads the snapshot folder with the
installed package's classes (:func:`sit_diffusers.remote_code.load_with_package_classes`): no code from the
repo runs. The download takes the code files too (``*.py``), so the cached snapshot also serves stock
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` (see :mod:`sit_diffusers.remote_code`).

:func:`resolve_pretrained_folder` turns a reference into that folder, with one clear error per way it can
fail (no such folder or repo, gated, unknown revision, offline and not cached).
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .validation import InputError

#: Files a pipeline needs: configs, weights in safetensors, model card / label tables, and the code files
#: stock diffusers loads the repo with (``trust_remote_code=True``).
DEFAULT_ALLOW_PATTERNS: tuple[str, ...] = ("*.json", "*.safetensors", "*.txt", "*.md", "*.py")

#: Keyword arguments of ``from_pretrained`` that this module consumes (the rest go to diffusers).
HUB_KWARGS: tuple[str, ...] = (
    "revision",
    "cache_dir",
    "token",
    "local_files_only",
    "force_download",
    "allow_patterns",
)


class PipelineNotFoundError(OSError):
    """A model reference that is neither a pipeline folder nor a reachable Hub repo / cached snapshot."""


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or "\\" in ref


def _check_pipeline_folder(folder: Path, ref: str) -> Path:
    if not (folder / "model_index.json").is_file():
        raise PipelineNotFoundError(
            f"{ref!r} ({folder}) has no model_index.json, so it is not a saved diffusers pipeline. "
            "Official SiT .pt checkpoints are converted with `python pipelines/convert_sit_to_diffusers.py`."
        )
    return folder


def resolve_pretrained_folder(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool | None = None,
    force_download: bool = False,
    allow_patterns: list[str] | tuple[str, ...] | None = DEFAULT_ALLOW_PATTERNS,
) -> Path:
    """Return a local folder holding the pipeline ``repo_id_or_path``.

    A local folder is returned as is. A Hub repo id ``"org/name"`` is fetched with
    ``huggingface_hub.snapshot_download`` (only ``allow_patterns`` files); offline
    (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``) the cached snapshot of ``revision`` is used.

    Raises:
        PipelineNotFoundError: the folder does not exist or has no ``model_index.json``; the repo does not
            exist or is gated/private without a token; offline and not cached; unknown revision.
    """
    if not isinstance(repo_id_or_path, (str, os.PathLike)):
        raise InputError(f"pretrained_model_name_or_path must be a Hub repo id 'org/name' or a folder, got "
                         f"{type(repo_id_or_path).__name__} {repo_id_or_path!r}")
    ref = os.fspath(repo_id_or_path)
    if not ref.strip():
        raise InputError("pretrained_model_name_or_path is empty; give a Hub repo id 'org/name' or a folder")
    local = Path(ref).expanduser()
    if local.is_dir():
        return _check_pipeline_folder(local, ref)
    if local.exists() or _looks_like_path(ref):
        raise PipelineNotFoundError(f"{ref!r} is not an existing folder (and not a Hub repo id 'org/name').")
    try:
        validate_repo_id(ref)
    except HFValidationError as err:
        raise PipelineNotFoundError(
            f"{ref!r} is neither a local folder nor a valid Hub repo id: {err}"
        ) from None

    try:
        folder = snapshot_download(
            ref,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=bool(local_files_only),
            force_download=force_download,
            allow_patterns=list(allow_patterns) if allow_patterns is not None else None,
        )
    except GatedRepoError as err:
        raise PipelineNotFoundError(
            f"Hub repo {ref!r} is gated: accept its terms on the Hub and log in (`hf auth login`) or pass token=."
        ) from err
    except RepositoryNotFoundError as err:
        raise PipelineNotFoundError(
            f"Hub repo {ref!r} was not found (no local folder of that name either). Check the spelling; a "
            "private repo needs `hf auth login` or token=."
        ) from err
    except RevisionNotFoundError as err:
        raise PipelineNotFoundError(f"Hub repo {ref!r} has no revision {revision!r}.") from err
    except LocalEntryNotFoundError as err:
        raise PipelineNotFoundError(
            f"{ref!r} is not in the local Hub cache and could not be downloaded (offline mode "
            "HF_HUB_OFFLINE=1 / local_files_only=True, or no connection). Download it once online, "
            f"or pass a local folder. ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err
    return _check_pipeline_folder(Path(folder), ref)
