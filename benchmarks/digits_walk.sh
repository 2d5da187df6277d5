#!/usr/bin/env bash
# Design-space walk in miniature (Ma et al. 2024, Sec. 3): DiT (discrete time, noise, VP) -> SiT (continuous,
# velocity, Linear), one change per row, the same budget for every row; then the FD / accuracy table.
#   bash benchmarks/digits_walk.sh cuda [STEPS] [OUT]        (about 45 s per variant at 2000 steps on an H100)
set -euo pipefail
DEVICE=${1:?usage: digits_walk.sh {cuda,cpu} [steps] [out]}
STEPS=${2:-2000}
OUT=${3:-runs/walk}
VARIANTS="dit cont-noise-vp cont-velocity-vp cont-velocity-gvp sit"
for v in $VARIANTS; do
  python benchmarks/train_digits.py --device "$DEVICE" --loop vectorised --variant "$v" --steps "$STEPS" \
    --batch-size 1024 --lr 8e-4 --ema 0.998 --warmup 300 --out "$OUT/$v"
done
python benchmarks/digits_experiments.py walk --device "$DEVICE" --json "$OUT/walk.json" \
  --runs $(for v in $VARIANTS; do printf '%s ' "$OUT/$v"; done)
