#!/usr/bin/env bash
# The CPU training run of the reference model, continued from one working period to the
# next (docs/reference-model.md). Start it in the first minutes of a period:
#
#   bash scripts/cpu_reference_run.sh 20:12      # train in the background until 20:12 (UTC)
#   COOLDOWN=25 bash scripts/cpu_reference_run.sh 20:12   # ... and decay the learning rate
#                                                          # linearly to 0 over its last 25 minutes
#   BALANCE=source,age DATA=~/.cache/id3pm/data/wild RUN=~/.cache/id3pm/runs/wild32 \
#     bash scripts/cpu_reference_run.sh 20:12      # a merged set (id3pm merge), balanced draws
#
# - Resumes exactly from $RUN/checkpoint when it exists (optimizer, EMA, step); otherwise
#   warm-starts from the shipped weights when they exist; otherwise starts from scratch.
# - Runs in its own session (setsid), hence its own autogroup, and raises that autogroup's
#   priority: the kernel shares CPU between autogroups before it looks at nice values, so a
#   busy side job in another session would otherwise take half the cores (measured: 5.5 ->
#   1.1 images/s beside a 2-process job; plain `nice` changed nothing).
# - Logs images/s in $RUN/log.jsonl every 50 steps, so that a starved run shows.
set -euo pipefail
UNTIL="${1:?usage: cpu_reference_run.sh HH:MM (UTC end of the run)}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${DATA:-$HOME/.cache/id3pm/data/utk}"
RUN="${RUN:-$HOME/.cache/id3pm/runs/reference32p}"
SHIPPED="${SHIPPED:-$ROOT/weights/id3pm-utkface-32}"
PY="${PY:-$ROOT/.venv/bin/python}"

end=$(date -u -d "$UNTIL" +%s)
if [ "$end" -le "$(date -u +%s)" ]; then end=$(( end + 86400 )); fi   # past midnight (UTC)
minutes=$(( ( end - $(date -u +%s) ) / 60 ))
if [ "$minutes" -lt 2 ]; then echo "cpu_reference_run: $UNTIL is less than 2 minutes away" >&2; exit 1; fi
mkdir -p "$RUN"
TASK="${TASK:-base}"
INIT=()
if [ "$TASK" = superres ]; then SHIPPED=/nonexistent; fi   # the upsampler starts from scratch, without a prior
if [ ! -e "$RUN/checkpoint/state.json" ] && [ ! -e "$RUN/checkpoint.old/state.json" ] && [ -e "$SHIPPED/id3pm.json" ]; then
  INIT=(--init-from "$SHIPPED")   # a new machine: continue from what the repository ships
fi
# The regression prior g(y) (src/id3pm/prior.py): PRIOR=DIR for a new run, else the one the
# shipped model carries. A run that resumes uses its own copy and ignores the flag.
PRIOR="${PRIOR:-}"
if [ -z "$PRIOR" ] && [ -e "$SHIPPED/prior/id3pm.json" ]; then PRIOR="$SHIPPED/prior"; fi
if [ -n "$PRIOR" ]; then INIT+=(--prior "$PRIOR"); fi
# A learning-rate cool-down before the weights ship: 40 min, or a third of a shorter run
# (period 12 measured it; docs/results.md); COOLDOWN=0 for none. The next period warms up again.
COOLDOWN="${COOLDOWN:-$(( minutes >= 120 ? 40 : minutes / 3 ))}"
# Balanced draws over a merged set's sources and age bands (id3pm.data.balance); a resume
# must pass the same BALANCE (it is a training flag, not part of the checkpoint's network).
if [ -n "${BALANCE:-}" ]; then INIT+=(--balance "$BALANCE"); fi
# The run's settings: keep them identical from period to period (a resume takes the
# network from the checkpoint; these decide the rest).
SETTINGS=(--size 32 --preset mini --batch-size 64 --lr 2e-4 --warmup-steps 500 --ema-decay 0.9995)
if [ "$TASK" = superres ]; then
  # TASK=superres: the upsampler (#26; docs/results.md), 32 -> 128, trained on 48 px windows
  # (a step costs an eighth of a whole face), conditioned on y too
  SETTINGS=(--task superres --size 128 --cond-size 32 --patch-size 48 --sr-identity yes --preset sr
            --sr-residual 3 --batch-size 32 --lr 2e-4 --warmup-steps 500 --ema-decay 0.999)
  if [ -n "${INIT_FROM:-}" ] && [ ! -e "$RUN/checkpoint/state.json" ]; then INIT=(--init-from "$INIT_FROM"); fi
fi
# EXTRA: further training flags for a new run (e.g. EXTRA="--sr-regression yes --augment-level-max 0.2");
# a resume must pass the same ones
read -r -a EXTRA_FLAGS <<< "${EXTRA:-}"
SETTINGS+=("${EXTRA_FLAGS[@]}")
setsid nohup "$PY" -m id3pm.cli train "$DATA" "$RUN" "${SETTINGS[@]}" \
  --save-every 500 --sample-every 2000 --log-every 50 --max-steps 10000000 \
  --max-minutes "$minutes" --lr-cooldown-minutes "$COOLDOWN" --progress no "${INIT[@]}" >> "$RUN/train.out" 2>&1 < /dev/null &
pid=$!
sleep 1
if [ -w "/proc/$pid/autogroup" ]; then
  echo -10 > "/proc/$pid/autogroup" && echo "autogroup of $pid: $(cat /proc/$pid/autogroup)"
else
  echo "cannot raise the run's autogroup priority (not root): renice side jobs' autogroups instead" >&2
fi
echo "training pid $pid for $minutes min (until $UNTIL UTC) -> $RUN (log: $RUN/train.out, $RUN/log.jsonl)"
echo "$pid" > "$RUN/pid"
