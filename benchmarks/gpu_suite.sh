#!/usr/bin/env bash
# One prepared run of every GPU measurement (issue 11), all tables into one folder.
#
#   bash benchmarks/gpu_suite.sh [--out DIR] [--dry-run] [--skip STEP,...]
#
# Steps (each writes DIR/<step>.md with its table and DIR/<step>.log with stderr; DIR/summary.md
# lists every step's exit code and seconds):
#   env          the machine: GPU, driver, torch, CPU count
#   overhead     benchmarks/overhead.py --device cuda     (unit cost: parameters, FLOPs, latency, memory)
#   prior_speed  benchmarks/prior_speed.py --device cuda  (our SAM mask generator vs stock, fp32 and bf16)
#   train_amp    `spt-adapter train` on CUDA with mixed precision (bf16 autocast), random-weight SwinIR-light x2
#   restore      `spt-adapter restore` whole and tiled on a large photo, plus benchmarks/restore_speed.py
#   export       `spt-adapter export` of the trained SwinIR-light adapter to ONNX and TorchScript on the
#                device (each export checks its parity), `restore` through the TorchScript file there,
#                and what `--half` says for SwinIR (refused: float32 masks at run time); the dry
#                run does the same on the CPU
# --dry-run runs the same steps on the CPU at tiny sizes (CI runs it, so the suite cannot rot);
# its numbers mean nothing. Budget on one H200: under 9 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=gpu_suite_out
DRY=0
SKIP=","
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --skip) SKIP=",$2,"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
CLI=("$PY" -m spt_adapter.cli)
mkdir -p "$OUT"
FIX="$OUT/fixtures"
if [ "$DRY" = 1 ]; then DEV=cpu; else DEV=cuda; fi
echo "| step | exit code | seconds |" > "$OUT/summary.md"
echo "| --- | --- | --- |" >> "$OUT/summary.md"
FAILED=0

step() {  # step NAME COMMAND...
  local name=$1; shift
  if [[ "$SKIP" == *",$name,"* ]]; then echo "| $name | skipped | - |" >> "$OUT/summary.md"; return; fi
  echo "== $name: $*" >&2
  local t0=$SECONDS
  "$@" > "$OUT/$name.md" 2> "$OUT/$name.log"
  local rc=$?
  echo "| $name | $rc | $((SECONDS - t0)) |" >> "$OUT/summary.md"
  if [ $rc -ne 0 ]; then FAILED=1; echo "!! $name failed (rc $rc); last lines of $OUT/$name.log:" >&2; tail -5 "$OUT/$name.log" >&2; fi
}

env_report() {
  "$PY" - "$DEV" <<'PYEOF'
import os, platform, sys
import torch
dev = sys.argv[1]
print("| fact | value |\n| --- | --- |")
print(f"| python | {platform.python_version()} |")
print(f"| torch | {torch.__version__} |")
print(f"| cpu cores | {os.cpu_count()} |")
if dev == "cuda":
    p = torch.cuda.get_device_properties(0)
    print(f"| gpu | {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs |")
    print(f"| cuda | {torch.version.cuda} |")
else:
    print("| gpu | none (dry run on the CPU: numbers mean nothing) |")
PYEOF
}

train_amp() {
  local extra=()
  if [ "$DRY" = 1 ]; then extra=(--iters 2 --batch 2 --patch 32); else extra=(--iters 300 --batch 16 --patch 128); fi
  rm -rf "$OUT/train_run"
  "${CLI[@]}" train --backbone "$FIX/swinir_light_x2.safetensors" --data "$FIX/train" --task sr:2 \
      --device "$DEV" --out "$OUT/train_run" --no-progress --log-every 50 --save-every 0 \
      --prior-cache "$OUT/priors" "${extra[@]}" || return $?
  "$PY" - "$OUT/train_run" <<'PYEOF'
import json, sys
log = json.load(open(f"{sys.argv[1]}/train_log.json"))
h = [r for r in log["history"] if "loss" in r]
import torch
amp = "bf16 autocast" if log["settings"]["amp"] and torch.cuda.is_available() else "off (CPU)"
print("| steps | first loss | last loss | seconds | global batch | mixed precision |")
print("| --- | --- | --- | --- | --- | --- |")
print(f"| {h[-1]['step']} | {h[0]['loss']:.4f} | {h[-1]['loss']:.4f} | {h[-1]['seconds']} | "
      f"{log['settings']['batch'] * log['world_size']} | {amp} |")
PYEOF
}

restore_step() {
  local tile=256
  if [ "$DRY" = 1 ]; then tile=48; fi
  local t0=$SECONDS
  "${CLI[@]}" restore "$FIX/photo" --backbone "$FIX/swinir_light_x2.safetensors" --adapter "$OUT/train_run" \
      --out "$OUT/restored_whole" --device "$DEV" --prior-cache "$OUT/priors" --no-progress || return $?
  local t1=$SECONDS
  "${CLI[@]}" restore "$FIX/photo" --backbone "$FIX/swinir_light_x2.safetensors" --adapter "$OUT/train_run" \
      --out "$OUT/restored_tiled" --device "$DEV" --prior-cache "$OUT/priors" --tile $tile --no-progress || return $?
  local t2=$SECONDS
  echo "| restore | seconds (CLI, incl. start-up) |"
  echo "| --- | --- |"
  echo "| whole image (prior computed) | $((t1 - t0)) |"
  echo "| tiled ($tile px, prior from the cache) | $((t2 - t1)) |"
  echo
  # 2048 px only: the SLIC prior runs on the CPU and a 4096^2 one takes minutes (its memory bound is
  # measured on the CPU, docs/performance.md)
  if [ "$DRY" = 1 ]; then "$PY" benchmarks/restore_speed.py --device "$DEV" --quick; else "$PY" benchmarks/restore_speed.py --device "$DEV" --sizes 2048; fi
}

export_step() {
  # float16 (--half) of the suite's SwinIR-light adapter is refused (SwinIR builds its attention mask
  # in float32 at run time; tests/test_export.py checks float16 on a DnCNN on the CPU): this step
  # exports float32 on the device, restores through the TorchScript file there, and records what
  # --half says for this backbone.
  echo "| format | dtype | export s (incl. parity check) | restore s (TorchScript on the device) | file MB |"
  echo "| --- | --- | --- | --- | --- |"
  for fmt in onnx torchscript; do
    local ext=onnx; [ "$fmt" = torchscript ] && ext=pt
    local file="$OUT/swinir_spt.$ext"
    rm -f "$file"; rm -rf "$OUT/restored_$fmt"
    local t0=$SECONDS
    "${CLI[@]}" export --backbone "$FIX/swinir_light_x2.safetensors" --adapter "$OUT/train_run" \
        --format "$fmt" --out "$file" --device "$DEV" >&2 || return $?
    local t1=$SECONDS
    local took="-"
    if [ "$fmt" = torchscript ]; then  # onnxruntime here is the CPU build: its parity check ran inside export
      "${CLI[@]}" restore "$FIX/photo" --backbone "$file" --out "$OUT/restored_$fmt" --device "$DEV" \
          --prior-cache "$OUT/priors" --no-progress >&2 || return $?
      took=$((SECONDS - t1))
    fi
    echo "| $fmt | float32 | $((t1 - t0)) | $took | $(du -m "$file" | cut -f1) |"
  done
  echo
  local said
  said=$("${CLI[@]}" export --backbone "$FIX/swinir_light_x2.safetensors" --adapter "$OUT/train_run" \
      --format onnx --out "$OUT/swinir_spt_half.onnx" --device "$DEV" --half 2>&1 >/dev/null | tail -1)
  echo "--half on this backbone: ${said:-exported}"
}

step env env_report
if [ "$DRY" = 1 ]; then
  "$PY" benchmarks/_gpu_fixtures.py "$FIX" --quick > "$OUT/fixtures.log" 2>&1 || { echo "fixtures failed" >&2; cat "$OUT/fixtures.log" >&2; exit 1; }
  step overhead "$PY" benchmarks/overhead.py --device cpu --repeats 1 --batch 1 --size 16 --models swinir-light-x2
  step prior_speed "$PY" benchmarks/prior_speed.py --device cpu --quick
else
  "$PY" benchmarks/_gpu_fixtures.py "$FIX" > "$OUT/fixtures.log" 2>&1 || { echo "fixtures failed" >&2; cat "$OUT/fixtures.log" >&2; exit 1; }
  step overhead "$PY" benchmarks/overhead.py --device cuda --repeats 20 --batch 16 --size 64
  step prior_speed "$PY" benchmarks/prior_speed.py --device cuda --sam2 --json "$OUT/prior_speed.json"
fi
step train_amp train_amp
step restore restore_step
step export export_step
cat "$OUT/summary.md"
exit $FAILED
