"""Build ``imagenet_classes.json``: the 1000 ImageNet-1k class names in the standard class-index order.

Source: the timm wheel (Apache-2.0) ships ``timm/data/_info/imagenet_synsets.txt`` (the 1000 WordNet
synset ids of ILSVRC-2012 in class-index order, ``n01440764`` first) and
``timm/data/_info/imagenet_synset_to_lemma.txt`` (``<synset>\\t<comma-separated lemmas>``). Class ``i`` is
named by the lemmas of synset ``i``, e.g. ``0 -> "tench, Tinca tinca"``, the same strings as the
``id2label`` of the DiT/SiT checkpoints. timm is only downloaded, never installed::

    pip download --no-deps timm==1.0.31 -d /tmp/timm_wheel
    python src/sit_diffusers/data/make_imagenet_classes.py /tmp/timm_wheel/timm-1.0.31-py3-none-any.whl

Output: ``{"source": ..., "synsets": [1000 ids], "labels": [1000 names]}`` next to this script.
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

SYNSETS = "timm/data/_info/imagenet_synsets.txt"
LEMMAS = "timm/data/_info/imagenet_synset_to_lemma.txt"
OUTPUT = Path(__file__).with_name("imagenet_classes.json")


def build(wheel: Path) -> dict:
    """Read the synset order and the lemma table from a timm wheel; return the json document."""
    with zipfile.ZipFile(wheel) as zf:
        synsets = zf.read(SYNSETS).decode("utf-8").split()
        lemma_lines = zf.read(LEMMAS).decode("utf-8").splitlines()
    lemma = dict(line.split("\t", 1) for line in lemma_lines if "\t" in line)
    if len(synsets) != 1000 or len(set(synsets)) != 1000:
        raise ValueError(f"expected 1000 distinct synsets, got {len(synsets)}")
    labels = [lemma[s].strip() for s in synsets]
    return {"source": f"{wheel.name}: {SYNSETS} + {LEMMAS}", "synsets": synsets, "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help="path of a downloaded timm wheel")
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args()
    doc = build(args.wheel)
    args.out.write_text(json.dumps(doc, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(doc['labels'])} classes to {args.out}")


if __name__ == "__main__":
    main()
