#!/usr/bin/env bash
# The ONE device call that trains the reference model (issue: reference model). Run it
# through the device tool's `run` with carry=[".whl", "data_compact"]:
#   bash scripts/device_reference_run.sh 8.0
# Before: rehearse on the CPU (same script, tiny budget):
#   DEVICE_REHEARSAL=1 bash scripts/device_reference_run.sh 0.3
# Needs: data_compact/utk64 (scripts/make_compact_data.py; UTKFace may not be committed,
# so every session rebuilds it from ../shared/data), and .whl/ with the diffusers wheel
# (the device image has torch, pyarrow, safetensors, accelerate but no diffusers):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1
# Brings back through $OUT (at most 8 files): the EMA weights as fp16 safetensors shards
# (< 16 MiB each, < 48 MiB in all), meta.tar (configs, run_summary.json, logs) and the
# last sample grid.
set -euo pipefail
MINUTES="${1:-8.0}"
OUT="${OUT:-/tmp/device_out}"
mkdir -p "$OUT"
if [ -z "${DEVICE_REHEARSAL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD/src"
  PY=python3
  EXTRA=()
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
else
  PY=.venv/bin/python
  EXTRA=(--preset tiny)
fi
RUN=/tmp/reference_run
PYTHONUNBUFFERED=1 "$PY" scripts/reference_train.py --data data_compact/utk64 --out "$RUN" --minutes "$MINUTES" \
  "${EXTRA[@]}" 2>&1 | tee "$OUT/train.log" | grep -v "it/s" || true
# fp16 shards for shipping; $OUT gets the shards, meta.tar (everything small) and the grid
SHIP=/tmp/ship
"$PY" - "$RUN" "$SHIP" <<'PY'
import sys, torch
from id3pm.modeldir import load_model_dir, save_model_dir
run, out = sys.argv[1], sys.argv[2]
model, info = load_model_dir(f"{run}/model")
save_model_dir(out, model, info, max_shard_size="15MB", dtype=torch.float16)
PY
cp "$RUN"/run_summary.json "$RUN"/log.jsonl "$SHIP"/ 2>/dev/null || true
mv "$OUT"/train.log "$OUT"/gpu.txt "$SHIP"/ 2>/dev/null || true
cp "$SHIP"/unet/*.safetensors "$OUT"/
tar -cf "$OUT/meta.tar" -C "$SHIP" --exclude='*.safetensors' .
cp "$RUN"/samples_last.png "$OUT/" 2>/dev/null || true
ls -la "$OUT"
# Here, afterwards: mkdir -p weights/id3pm-utkface-64 && tar -xf meta.tar -C weights/id3pm-utkface-64 &&
#                   cp *.safetensors weights/id3pm-utkface-64/unet/
