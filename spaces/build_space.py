"""Assemble the Hugging Face Space folder (and optionally upload it).

The Space repo must install ``sit-diffusers`` itself, so its root holds the app next to the package
source: ``app.py``, ``README.md`` (the Space card) and ``requirements.txt`` (``.[space]``) from
``spaces/``, plus ``pyproject.toml`` and ``src/sit_diffusers`` (package data, the embedded default model
included) from the repository root.

    python spaces/build_space.py --out /tmp/sit-space                     # assemble only
    python spaces/build_space.py --out /tmp/sit-space --upload org/sit-demo   # and upload (needs a token)
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from sit_diffusers.validation import InputError, check_writable_dir, run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
SPACE_FILES = ("app.py", "README.md", "requirements.txt")
#: What an assembled folder holds; ``--out`` is replaced only when it holds nothing else.
SPACE_ENTRIES = (*SPACE_FILES, "pyproject.toml", "src")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
PROG = "build_space.py"


def check_out_folder(out: str | Path) -> Path:
    """``out`` as a folder :func:`assemble` may replace, else :class:`InputError` naming ``--out``.

    Refused: a file, an unwritable place, the repository or a folder above it, a folder inside the
    sources it copies (``spaces/``, ``src/``), and an existing folder holding anything but an earlier
    build (a clone of the Space repo with its ``.git``, a home folder, ``/tmp`` ...). Nothing is created.
    """
    out = Path(out)
    resolved = out.resolve()
    if resolved == REPO_ROOT or resolved in REPO_ROOT.parents:
        raise InputError(
            f"--out {str(out)!r} is the repository or a folder above it, and --out is replaced; "
            "give a new folder, e.g. /tmp/sit-space"
        )
    for source in (REPO_ROOT / "spaces", REPO_ROOT / "src"):
        if resolved == source or source in resolved.parents:
            raise InputError(
                f"--out {str(out)!r} is inside {source.name}/, which the Space is copied from; "
                "give a folder outside the sources, e.g. /tmp/sit-space"
            )
    check_writable_dir("--out", out)
    if resolved.is_dir():
        others = sorted(p.name for p in resolved.iterdir() if p.name not in SPACE_ENTRIES)
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise InputError(
                f"--out {str(out)!r} holds files that are not an earlier build ({shown}); it would be "
                f"replaced: give an empty or new folder, or one holding only {', '.join(SPACE_ENTRIES)}"
            )
    return out


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid Hub repo id (``org/name`` or ``name``), else :class:`InputError`."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InputError(f"--upload {repo_id!r} is not a Hub repo id ({err})") from None
    return repo_id


def assemble(out: str | Path) -> Path:
    """Write the Space folder to ``out`` (replacing an earlier build there) and return it."""
    out = check_out_folder(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in SPACE_FILES:
        shutil.copy2(REPO_ROOT / "spaces" / name, out / name)
    shutil.copy2(REPO_ROOT / "pyproject.toml", out / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "src" / "sit_diffusers", out / "src" / "sit_diffusers", ignore=IGNORE)
    return out


def upload(folder: Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Create the Space ``repo_id`` (gradio SDK) if needed and upload ``folder``; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", exist_ok=True, private=private)
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="space",
        commit_message="Update the SiT Space from sit-diffusers",
    )
    return str(url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write the Space into; replaced, so it must be new, empty or an earlier build",
    )
    parser.add_argument("--upload", metavar="REPO_ID", help="Space id to upload to, e.g. org/sit-demo")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def _main(argv: Sequence[str]) -> None:
    args = build_parser().parse_args(argv)
    # every argument is checked before the folder is replaced
    check_out_folder(args.out)
    if args.upload is not None:
        check_repo_id(args.upload)
    if args.token is not None and not args.token.strip():
        raise InputError("--token is empty; give a Hub token or leave --token out to use the logged-in one")
    folder = assemble(args.out)
    print(f"assembled {folder}")
    if args.upload:
        print(f"uploaded {upload(folder, args.upload, args.token, args.private)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns the exit status (2 and one line on stderr for a bad argument)."""
    return run_cli(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
