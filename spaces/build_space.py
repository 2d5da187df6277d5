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
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SPACE_FILES = ("app.py", "README.md", "requirements.txt")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def assemble(out: Path) -> Path:
    """Write the Space folder to ``out`` (replacing it) and return it."""
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the Space into (replaced)")
    parser.add_argument("--upload", metavar="REPO_ID", help="Space id to upload to, e.g. org/sit-demo")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)
    folder = assemble(args.out)
    print(f"assembled {folder}")
    if args.upload:
        print(f"uploaded {upload(folder, args.upload, args.token, args.private)}")


if __name__ == "__main__":
    main()
