#!/usr/bin/env bash
# The distilled-prior ladder of docs/results.md (issue 14) on every task, for one GPU run.
#
#   benchmarks/distill_ladder.sh OUT_DIR                  # GPU: --device cuda --jobs 8
#   benchmarks/distill_ladder.sh OUT_DIR --dry-run        # a tiny CPU run of the same steps (tests run it)
#   benchmarks/distill_ladder.sh OUT_DIR --tasks "denoise kair50"   # a subset
#
# Environment: PYTHON (default: python), KAIR_ROOT (default: $SPT_KAIR_ROOT; required by kair50 and kairjpeg),
# DNCNN_ROOT (default: $SPT_DNCNN_ROOT; a cszn/DnCNN checkout, required by cdncnnb75),
# STUDENT_INPUT (lq or restored, default lq: what the student of rows g/h reads),
# DATA (default: ../shared/data), DEVICE (default: cuda), JOBS (default: 8), SEEDS (default: "0 1 2").
#
# Steps, every one writing OUT_DIR/<name>.md (the printed tables) and OUT_DIR/<name>.json:
#   tune      the distillation settings (weight : student-only steps : student width), chosen on the
#             colour denoising VALIDATION split (McMaster 15-18, the result-7 setting), never on a test
#             set; the choice is read from tune.json and used by every task below
#   denoise   colour DnCNN sigma 25 -> 50, CBSD68 (result 7's configuration)
#   sr4bd     SRVGGNetCompact x4 bicubic -> BD blur, Set5/Set14 (result 9's configuration)
#   kair50    KAIR's pretrained grey DnCNN sigma 25 -> 50, Set12 (its frozen row reproduced first)
#   kairjpeg  the same DnCNN -> JPEG q=30 then sigma 25 noise (a degradation it never saw), Set12
#   cdncnnb75 cszn/DnCNN's pretrained colour blind CDnCNN-B (sigma 0-55) adapted to sigma 75, CBSD68 crops
# Each ladder runs rows a (frozen), b (LQ segments), c (constant control), d (oracle: the ceiling),
# g (distilled prior), h (same student, no teacher), concat fusion, a unit on every hidden conv.
# A failed task does not stop the others: OUT_DIR/summary.md lists each step's exit code and
# seconds, OUT_DIR/<name>.log its stderr (progress lines). Exit code: 1 if any step failed.
# Order: the cheapest tasks first (sr4bd trains 1500 steps and is the longest).
set -uo pipefail

usage() { echo "usage: $0 OUT_DIR [--dry-run] [--tasks \"tune denoise sr4bd kair50 kairjpeg cdncnnb75\"]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
DRY=0
TASKS="tune denoise kair50 kairjpeg sr4bd"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --tasks) shift; [ $# -gt 0 ] || usage; TASKS=$1 ;;
    *) usage ;;
  esac
  shift
done

HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
KAIR_ROOT=${KAIR_ROOT:-${SPT_KAIR_ROOT:-}}
case " $TASKS " in
  *" kair50 "*|*" kairjpeg "*)
    [ -n "$KAIR_ROOT" ] || { echo "kair50/kairjpeg need a KAIR checkout: set KAIR_ROOT (or SPT_KAIR_ROOT)" >&2; exit 2; } ;;
esac
DNCNN_ROOT=${DNCNN_ROOT:-${SPT_DNCNN_ROOT:-}}
case " $TASKS " in
  *" cdncnnb75 "*)
    [ -n "$DNCNN_ROOT" ] || { echo "cdncnnb75 needs a cszn/DnCNN checkout: set DNCNN_ROOT (or SPT_DNCNN_ROOT)" >&2; exit 2; } ;;
esac
SEEDS=${SEEDS:-"0 1 2"}
mkdir -p "$OUT"
CACHE="$OUT/cache"

if [ "$DRY" = 1 ]; then
  DEVICE=${DEVICE:-cpu}; JOBS=${JOBS:-1}
  # seconds on a CPU: tiny backbones, few steps, few images, one seed
  COMMON=(--quick --device "$DEVICE" --jobs "$JOBS" --threads 1)
  STEPS_DN=(); STEPS_SR=(); STEPS_KAIR=(--steps 4 --n-test 2 --batch 2 --patch 24)
  TUNE_CANDIDATES=(0.1:0:8 1:4:8)
else
  DEVICE=${DEVICE:-cuda}; JOBS=${JOBS:-8}
  # shellcheck disable=SC2206
  COMMON=(--device "$DEVICE" --jobs "$JOBS" --threads 1 --seeds $SEEDS)
  STEPS_DN=(--steps 800); STEPS_SR=(--steps 1500); STEPS_KAIR=(--steps 800)
  TUNE_CANDIDATES=(0.1:0:16 1:0:16 0.1:400:16 1:400:16)
fi
if [ -n "${DATA:-}" ]; then COMMON+=(--data "$DATA"); fi
LADDER=(--fusions concat --rows abcdgh --encoding boundary --units 0 --student-input "${STUDENT_INPUT:-lq}")

FAILED=0
echo "| step | exit code | seconds |" > "$OUT/summary.md"
echo "| --- | --- | --- |" >> "$OUT/summary.md"
run() {  # run NAME ARGS...: the printed tables -> NAME.md, the numbers -> NAME.json, stderr -> NAME.log
  local name=$1; shift
  echo "== $name: $PY benchmarks/quality.py $*" >&2
  local t0=$SECONDS
  "$PY" "$HERE/quality.py" "$@" --cache-dir "$CACHE" --json "$OUT/$name.json" > "$OUT/$name.md" 2> "$OUT/$name.log"
  local rc=$?
  echo "| $name | $rc | $((SECONDS - t0)) |" >> "$OUT/summary.md"
  if [ $rc -ne 0 ]; then FAILED=1; echo "!! $name failed (rc $rc):" >&2; tail -5 "$OUT/$name.log" >&2; fi
  echo "== $name done in $((SECONDS - t0)) s" >&2
}

chosen() {  # the validation choice as quality.py flags
  "$PY" - "$OUT/tune.json" <<'EOF'
import json, sys
best = json.load(open(sys.argv[1]))["best"]
print(f"--distill-weight {best['weight']} --student-steps {best['student_steps']} --student-width {best['student_width']}")
EOF
}

DISTILL=()
for task in $TASKS; do
  case "$task" in
    tune)
      # one seed: a choice, not a result
      run tune "${COMMON[@]}" --seeds 0 --unit-sigma 50 --test-sigmas 50 --fusions concat --encoding boundary \
          --units 0 "${STEPS_DN[@]}" --tune-distill "${TUNE_CANDIDATES[@]}" ;;
    denoise|sr4bd|kair50|kairjpeg|cdncnnb75)
      if [ ${#DISTILL[@]} -eq 0 ]; then
        [ -f "$OUT/tune.json" ] || { echo "no $OUT/tune.json: run the tune step first (it chooses the distillation settings)" >&2; exit 1; }
        # shellcheck disable=SC2207
        DISTILL=($(chosen))
        echo "distillation settings chosen on validation: ${DISTILL[*]}" >&2
      fi
      case "$task" in
        denoise) run denoise "${COMMON[@]}" "${LADDER[@]}" "${DISTILL[@]}" --unit-sigma 50 --test-sigmas 50 "${STEPS_DN[@]}" ;;
        sr4bd) run sr4bd "${COMMON[@]}" "${LADDER[@]}" "${DISTILL[@]}" --task sr4 --sr-degradation bd "${STEPS_SR[@]}" ;;
        kair50) run kair50 "${COMMON[@]}" "${LADDER[@]}" "${DISTILL[@]}" --task kair --kair-root "$KAIR_ROOT" \
                    --kair-degradation sigma50 "${STEPS_KAIR[@]}" ;;
        kairjpeg) run kairjpeg "${COMMON[@]}" "${LADDER[@]}" "${DISTILL[@]}" --task kair --kair-root "$KAIR_ROOT" \
                      --kair-degradation jpeg30-sigma25 "${STEPS_KAIR[@]}" ;;
        cdncnnb75) run cdncnnb75 "${COMMON[@]}" "${LADDER[@]}" "${DISTILL[@]}" --task cdncnnb --dncnn-root "$DNCNN_ROOT" \
                       --unit-sigma 75 --test-sigmas 75 "${STEPS_DN[@]}" ;;
      esac ;;
    *) echo "unknown task $task (tune denoise sr4bd kair50 kairjpeg cdncnnb75)" >&2; exit 2 ;;
  esac
done
echo "tables: $OUT/*.md, numbers: $OUT/*.json, exit codes and seconds: $OUT/summary.md" >&2
exit $FAILED
