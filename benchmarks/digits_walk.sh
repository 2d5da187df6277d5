#!/usr/bin/env bash
# Design-space walk in miniature (Ma et al. 2024, Sec. 3): DiT (discrete time, noise, VP) -> SiT (continuous,
# velocity, Linear), one change per row, the same budget for every row; then the FD / accuracy table.
#   bash benchmarks/digits_walk.sh DEVICE [STEPS] [OUT] [train_digits.py flags...]
#   bash benchmarks/digits_walk.sh cuda 2000                  # embedded size, batch 1024 (never run; est. ~45 s/row, H100)
#   WALK_SAMPLES=1000 bash benchmarks/digits_walk.sh cpu 4000 runs/walk-cpu --batch-size 128 --lr 1e-3 \
#       --ema 0.998 --warmup 200 --hidden-size 128 --depth 4 --num-heads 2 --patch-size 7  # ~10 min per row, 2 cores
# Flags after OUT go to every train_digits.py call (later flags win); WALK_SAMPLES sets the images per row.
set -euo pipefail
DEVICE=${1:?usage: digits_walk.sh {cuda,cpu} [steps] [out] [train_digits.py flags...]}
STEPS=${2:-2000}
OUT=${3:-runs/walk}
shift $(( $# < 3 ? $# : 3 ))
VARIANTS="dit cont-noise-vp cont-velocity-vp cont-velocity-gvp sit"
for v in $VARIANTS; do
  if [[ -f "$OUT/$v/training.json" ]]; then echo "$OUT/$v done, kept"; continue; fi
  python benchmarks/train_digits.py --device "$DEVICE" --variant "$v" --steps "$STEPS" \
    --batch-size 1024 --lr 8e-4 --ema 0.998 --warmup 300 --out "$OUT/$v" "$@"
done
python benchmarks/digits_experiments.py walk --device "$DEVICE" --json "$OUT/walk.json" \
  --num-samples "${WALK_SAMPLES:-1000}" --runs $(for v in $VARIANTS; do printf '%s ' "$OUT/$v"; done)
