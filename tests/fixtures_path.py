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


def _resolve() -> Path:
    folder = Path(os.environ.get("SIT_OFFICIAL_FIXTURES", _IN_REPO / "public")).expanduser()
    if not folder.is_dir():
        raise RuntimeError(
            f"official SiT fixtures not found at {folder} (SIT_OFFICIAL_FIXTURES="
            f"{os.environ.get('SIT_OFFICIAL_FIXTURES')!r}); the repository ships them in {_IN_REPO / 'public'}"
        )
    for line in CHECKSUMS.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = folder / name
        if not path.is_file():
            raise RuntimeError(f"official SiT fixture {path} is missing (listed in {CHECKSUMS})")
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != digest:
            raise RuntimeError(f"official SiT fixture {path} has sha256 {actual}, {CHECKSUMS} says {digest}")
    return folder


OFFICIAL_FIXTURES = _resolve()
