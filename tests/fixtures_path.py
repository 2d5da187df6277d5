"""Where the official SiT reference outputs are: ``tests/fixtures/official_sit/public`` inside the repository.

``SIT_OFFICIAL_FIXTURES`` may point at another copy (a folder with the same files). Either way every file
is checked against ``tests/fixtures/official_sit/SHA256SUMS`` once, at import, so a test never compares
against a truncated or edited reference.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
_IN_REPO = REPO_ROOT / "tests" / "fixtures" / "official_sit"
CHECKSUMS = _IN_REPO / "SHA256SUMS"


def verify_checksums(folder: Path, sums: Path, made_by: str | None = None) -> Path:
    """Check every file ``sums`` lists (``<sha256>  <name>`` lines) in ``folder``; ``folder`` when all match.

    A missing ``sums`` file, a missing listed file or another digest raises ``RuntimeError`` naming it
    (``made_by``: the script that regenerates the folder)."""
    if not sums.is_file():
        raise RuntimeError(f"{sums} is missing" + (f": run {made_by}" if made_by else ""))
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = folder / name
        if not path.is_file():
            raise RuntimeError(f"official SiT fixture {path} is missing (listed in {sums})")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != digest:
            raise RuntimeError(f"official SiT fixture {path} has sha256 {actual}, {sums} says {digest}")
    return folder


def _resolve() -> Path:
    folder = Path(os.environ.get("SIT_OFFICIAL_FIXTURES", _IN_REPO / "public")).expanduser()
    if not folder.is_dir():
        raise RuntimeError(
            f"official SiT fixtures not found at {folder} (SIT_OFFICIAL_FIXTURES="
            f"{os.environ.get('SIT_OFFICIAL_FIXTURES')!r}); the repository ships them in {_IN_REPO / 'public'}"
        )
    return verify_checksums(folder, CHECKSUMS)


OFFICIAL_FIXTURES = _resolve()
