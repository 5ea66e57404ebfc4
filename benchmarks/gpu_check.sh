#!/usr/bin/env bash
# One-go GPU check (issue 14), well under 10 minutes on one GPU:
#   1. segmentation fp32 vs fp16 autocast vs channels_last: images/s and cell_label agreement;
#   2. the classifier at 512, fp16 autocast + channels_last, in cells/s;
#   3. one competition-shaped `submit` end to end (2048x2048 synthetic test images), in s/image;
#   4. `pytest -m gpu`.
# Results go to $OUT (or /tmp/gpu_check_out) as gpu_check.md, with each step's stdout (.out) and stderr (.log).
#
# Usage: bash benchmarks/gpu_check.sh [--dry-run]
#   --dry-run: CPU only, toy sizes, 1 test image: checks that the script runs, measures nothing.
# Environment: PYTHON (default: python), N_TEST (submit images, default 8).
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RESULTS=${OUT:-/tmp/gpu_check_out}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
mkdir -p "$RESULTS"
REPORT="$RESULTS/gpu_check.md"

DRY=""
DEVICE=cuda
SIZE=2048
N_TEST=${N_TEST:-8}
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY="--dry-run"; DEVICE=cpu; SIZE=256; N_TEST=1
fi

status=0
step() {  # step NAME TIMEOUT_S COMMAND...: stdout to NAME.out, stderr to NAME.log; never stops the script
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name" >&2
  if timeout "$limit" "$@" >"$RESULTS/$name.out" 2>"$RESULTS/$name.log"; then
    echo "- $name: ok ($((SECONDS - start)) s)" >>"$REPORT.status"
  else
    local rc=$?
    echo "- $name: FAILED rc=$rc ($((SECONDS - start)) s), see $name.log" >>"$REPORT.status"
    status=1
  fi
}

{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')${DRY:+ (dry run on CPU)}"
  echo
  "$PYTHON" - <<'EOF'
import platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
print(f"torch {torch.__version__}, {gpu}, Python {platform.python_version()}")
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "load: $(uptime)"
  echo
} >"$REPORT" 2>&1
: >"$REPORT.status"

step segmentation 240 "$PYTHON" benchmarks/gpu_check.py seg --device "$DEVICE" --workdir "$WORK" $DRY
step classifier 120 "$PYTHON" benchmarks/gpu_check.py cls --device "$DEVICE" --workdir "$WORK" $DRY

# one competition-shaped submit, end to end
step submit_prepare 120 "$PYTHON" benchmarks/gpu_check.py prepare --workdir "$WORK" $DRY
step submit_data 120 "$PYTHON" -m hpa_kernel synth --out "$WORK/comp" --n-train 1 --n-test "$N_TEST" --size "$SIZE"
submit_start=$SECONDS
step submit 300 "$PYTHON" -m hpa_kernel submit --data "$WORK/comp" --weights "$WORK/weights" \
  --out "$WORK/submission.csv" --segmenter hpa --device "$DEVICE" --budget-hours 0.5 --no-progress
submit_s=$((SECONDS - submit_start))

if [[ -z "$DRY" ]]; then
  step pytest_gpu 240 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider
fi

{
  for name in segmentation classifier; do
    [[ -f "$RESULTS/$name.out" ]] && cat "$RESULTS/$name.out"
  done
  echo "### Submit, $N_TEST synthetic ${SIZE}x${SIZE} test images, --segmenter hpa, device $DEVICE"
  echo
  echo "$submit_s s in all, $(awk -v s="$submit_s" -v n="$N_TEST" 'BEGIN { printf "%.1f", s / n }') s/image (process start and model loading included)"
  echo
  if [[ -f "$RESULTS/pytest_gpu.log" ]]; then
    echo "### pytest -m gpu"
    echo
    tail -n 3 "$RESULTS/pytest_gpu.out"
    echo
  fi
  echo "### Steps"
  cat "$REPORT.status"
} >>"$REPORT"
rm -f "$REPORT.status"
cp -f "$WORK/submission.csv" "$RESULTS/" 2>/dev/null
rm -rf "$WORK"
cat "$REPORT"
exit $status
