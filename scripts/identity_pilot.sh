#!/usr/bin/env bash
# #24's pilots at equal wall time (docs/results.md, "Identity pilots"): each arm warm-starts
# from the shipped base model (and its prior g(y)), trains MINUTES minutes with the reference
# run's settings and a cool-down over its last third, and exports its EMA weights to
# $PILOTS/<arm>/model. Arms run one after the other, so that each has the whole CPU.
#
#   MINUTES=35 PILOTS=~/.cache/id3pm/pilots bash scripts/identity_pilot.sh \
#     "plain|$D/celeba|" "aug|$D/celeba+aug|" "noise|$D/celeba|--cond-noise 0.1"
#
# Each argument is NAME|DATA|EXTRA FLAGS. An arm whose model exists is skipped; an arm that
# was interrupted resumes from its checkpoint (its wall-time budget starts again).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
SHIPPED="${SHIPPED:-$ROOT/weights/id3pm-utkface-32}"
MINUTES="${MINUTES:-35}"
PILOTS="${PILOTS:-$HOME/.cache/id3pm/pilots}"
# the reference run's settings (scripts/cpu_reference_run.sh), but a short warm-up: a pilot
# of ~700 steps would otherwise spend most of them warming up
SETTINGS=(--size 32 --preset mini --batch-size 64 --lr 2e-4 --warmup-steps 100 --ema-decay 0.9995)
INIT=(--init-from "$SHIPPED" --prior "$SHIPPED/prior")   # every arm starts from the same weights

for arm in "$@"; do
  IFS='|' read -r name data extra <<< "$arm"
  run="$PILOTS/$name"
  if [ -e "$run/model/id3pm.json" ]; then echo "pilot $name: done already ($run/model)"; continue; fi
  mkdir -p "$run"
  read -r -a extra_flags <<< "$extra"
  echo "pilot $name: $MINUTES min on $data ${extra} -> $run ($(date -u +%H:%M) UTC)"
  "$PY" -m id3pm.cli train "$data" "$run" "${SETTINGS[@]}" "${extra_flags[@]}" \
    --save-every 200 --sample-every 0 --log-every 50 --max-steps 10000000 \
    --max-minutes "$MINUTES" --lr-cooldown-minutes $(( MINUTES / 3 )) --progress no \
    "${INIT[@]}" >> "$run/train.out" 2>&1 < /dev/null
done
echo "pilots done ($(date -u +%H:%M) UTC)"
