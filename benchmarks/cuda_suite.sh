#!/usr/bin/env bash
# The GPU measurements in one command: updates/s, replay sampling and end-to-end fps against
# the SB3 prototype's SB3 pipeline in the same run (each pixelrl figure eager, --compile, --amp bf16
# and both), then a pixel FetchPush run with the winning recipe for the remaining minutes,
# evaluated every 100K steps. Every table, log and plot lands in OUTDIR.
#
#   benchmarks/cuda_suite.sh OUTDIR                      # everything, under 25 minutes
#   benchmarks/cuda_suite.sh OUTDIR --stage bench        # the benchmarks only (~9 min)
#   benchmarks/cuda_suite.sh OUTDIR --stage push --push-minutes 8
#   benchmarks/cuda_suite.sh OUTDIR --device cpu --smoke # the whole path in minutes, on a CPU
#
# Settings: batch 256 and the SB3 prototype's replay ratio, 0.25 updates per env step: n_envs is the
# largest multiple of 4 that leaves two cores to the learner, with n_envs / 4 updates per
# vector step. Needs pixelrl's dependencies and stable-baselines3 (pip install -e ".[bench]",
# or the wheels of benchmarks/gpu_wheels.sh on a machine without a network).
set -euo pipefail

usage() { sed -n '2,10p' "$0"; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
DEVICE=cuda SMOKE=0 STAGE=all PUSH_MINUTES="" BUDGET_MINUTES=25
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --stage) STAGE=$2; shift 2 ;;
    --push-minutes) PUSH_MINUTES=$2; shift 2 ;;
    *) usage ;;
  esac
done
case $STAGE in all|bench|push) ;; *) echo "--stage $STAGE: choose all, bench or push" >&2; exit 2 ;; esac

REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" MUJOCO_GL=${MUJOCO_GL:-egl}
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
START=$(date +%s)
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/suite.log"; }

CORES=$(nproc)
N_ENVS=$(( (CORES - 2) / 4 * 4 )); [ "$N_ENVS" -ge 4 ] || N_ENVS=4
GRAD_STEPS=$(( N_ENVS / 4 ))
VARIANTS="eager compile"
[ "$DEVICE" = cpu ] || VARIANTS="eager compile amp compile+amp"
if [ "$SMOKE" = 1 ]; then
  N_ENVS=2; GRAD_STEPS=1
  UPDATE_ARGS=(--seconds 2 --batch-size 32)
  BUFFER_ARGS=(--seconds 1 --episodes 20 --batch-size 32)
  FPS_ARGS=(--batch-size 32 --learning-starts 200 --learn-steps 40 --update-seconds 2 --buffer-size 5000 --renders native)
  FPS_VARIANTS=eager
  PUSH_ARGS=(--total-steps 300 --buffer-size 5000 --batch-size 32 --learning-starts 150 --checkpoint-freq 150 --image-size 48)
  EVAL_EPISODES=2
else
  UPDATE_ARGS=(--seconds 20 --batch-size 256)
  BUFFER_ARGS=(--seconds 10 --batch-size 256)
  FPS_ARGS=(--long --batch-size 256 --renders native)
  FPS_VARIANTS=$VARIANTS
  PUSH_ARGS=(--total-steps 5000000 --checkpoint-freq 100000 --no-save-buffer)
  EVAL_EPISODES=50
fi

{
  echo "# pixelrl GPU suite, $(date -u +%F) UTC, commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "device: $DEVICE; cores $CORES; n_envs $N_ENVS, $GRAD_STEPS update(s) per vector step; smoke $SMOKE"
  "$PY" -c "import platform, torch; print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
} | tee "$OUT/machine.txt"

if [ "$STAGE" != push ]; then
  log "update.py: variants $VARIANTS"
  "$PY" "$REPO/benchmarks/update.py" --device "$DEVICE" --encoders manip --variants $VARIANTS "${UPDATE_ARGS[@]}" 2>&1 | tee "$OUT/update.md"
  log "buffer.py"
  (cd "$REPO/benchmarks" && "$PY" buffer.py --device "$DEVICE" "${BUFFER_ARGS[@]}") 2>&1 | tee "$OUT/buffer.md"
  log "fps.py: n_envs $N_ENVS, variants $FPS_VARIANTS"
  "$PY" "$REPO/benchmarks/fps.py" --device "$DEVICE" --n-envs "$N_ENVS" --gradient-steps "$GRAD_STEPS" --variants $FPS_VARIANTS "${FPS_ARGS[@]}" 2>&1 | tee "$OUT/fps.md"
fi

if [ "$STAGE" != bench ]; then
  # The faster of eager and --compile in the update benchmark (--amp stays off for learning
  # until a GPU run shows it learns as well).
  COMPILE_FLAG=$("$PY" - "$OUT/update.md" <<'EOF'
import re, sys
rates = {}
try:
    for line in open(sys.argv[1]):
        m = re.match(r"\|\s*pixelrl \((eager|compile)\)\s*\|\s*manip\s*\|\s*([\d.]+)", line)
        if m:
            rates[m.group(1)] = float(m.group(2))
except OSError:
    pass
print("--compile" if rates.get("compile", 0) > rates.get("eager", 0) * 1.05 else "")
EOF
)
  # Smoke: the choice above is made, but the short run stays eager (compiling would take
  # longer than the run; the compiled update has its own test).
  [ "$SMOKE" = 1 ] && COMPILE_FLAG=""
  if [ -n "$PUSH_MINUTES" ]; then MINUTES=$PUSH_MINUTES
  else MINUTES=$(( BUDGET_MINUTES - ($(date +%s) - START) / 60 - 3 )); fi
  [ "$SMOKE" = 1 ] && MINUTES=10
  [ "$MINUTES" -ge 1 ] || { log "no time left for the FetchPush run"; exit 0; }
  RUNS=$OUT/runs
  log "pixel FetchPush: the winning recipe $COMPILE_FLAG, $N_ENVS envs, up to $MINUTES minutes"
  # SIGINT at the time limit: the run finishes its step, writes a checkpoint, exits 0.
  set +e
  timeout --foreground -s INT "${MINUTES}m" "$PY" "$REPO/train.py" --env-id FetchPush-v4 --encoder manip --no-drq \
    --n-envs "$N_ENVS" --gradient-steps "$GRAD_STEPS" --device "$DEVICE" --runs-dir "$RUNS" \
    --no-progress --log-interval 10000 $COMPILE_FLAG "${PUSH_ARGS[@]}" > "$OUT/push.log" 2>&1
  status=$?
  set -e
  tail -n 3 "$OUT/push.log" | tee -a "$OUT/suite.log"
  [ $status -eq 0 ] || [ $status -eq 124 ] || { log "train.py failed ($status)"; exit 1; }
  RUN_DIR=$(dirname "$(dirname "$(ls -d "$RUNS"/*/seed0/checkpoints/step_* | head -n 1)")")
  {
    echo "| checkpoint | env steps | eval success | mean return |"
    echo "|---|---|---|---|"
    for ckpt in "$RUN_DIR"/checkpoints/step_*; do
      "$PY" "$REPO/eval.py" --checkpoint "$ckpt" --episodes "$EVAL_EPISODES" --device "$DEVICE" > /dev/null 2>&1 || continue
      "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"| {sys.argv[2]} | {r['checkpoint_step']:,} | {r['success_rate']:.0%} | {r['mean_return']:.1f} |\")" \
        "$ckpt/eval.json" "$(basename "$ckpt")"
    done
  } | tee "$OUT/push_evals.md"
  "$PY" -m pixelrl.plot "$RUN_DIR" --out "$OUT/push_curves.png" --title "pixel FetchPush-v4, $DEVICE" 2>&1 | tail -n 1
fi
log "done in $(( ($(date +%s) - START) / 60 )) min; results in $OUT"
