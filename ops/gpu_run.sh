#!/usr/bin/env bash
# A GPU machine measured in one command, within a fixed time: install what the machine lacks,
# its facts, SAC updates/s and end-to-end env steps/s against the SB3 pipeline, then a pixel
# FetchPush learning run for the rest of the budget. From the repository root; on a machine
# without a network, with .whl/ and .gl/ beside it (ops/gpu_wheels.sh makes them where there is
# one):
#
#   bash ops/gpu_run.sh [--budget S] [--device cuda|cpu] [--smoke] [--plan] [--out DIR]
#                       [--no-install]   (the packages are there already: skip .whl/.gl)
#
# Every stage has a hard time cap and writes its table before the next starts, so whatever
# stage fails or runs out of time, the rest still runs and everything written is kept: at most
# 8 files in $OUT (summary.md with the plan, the facts and every table; update.md, fps.md,
# push.md, push_curves.png, logs.tar.gz). --plan prints the plan (seconds per stage) and
# exits; the plan always fits the budget (default 540 s: a 10-minute window less a minute for
# starting and copying). --device cpu --smoke runs every stage small, on a CPU, as the test
# suite does.
set -uo pipefail

usage() { sed -n '2,18p' "$0"; exit 2; }
BUDGET=540 DEVICE=cuda SMOKE=0 PLAN_ONLY=0 INSTALL=1 OUT_DIR=${OUT:-gpu_out}
while [ $# -gt 0 ]; do
  case $1 in
    --budget) BUDGET=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --plan) PLAN_ONLY=1; shift ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    *) usage ;;
  esac
done
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
START=$(date +%s)

# ---------------------------------------------------------------- the plan (seconds)
# Fixed caps from the CPU smoke rehearsal and what each stage must measure; the learning run
# takes what is left. Evaluation and the plot get their own cap after it.
SETUP=40 FACTS=10 UPDATE=90 FPS=150 WRAPUP=60
if [ "$SMOKE" = 1 ]; then  # small stages on a slow CPU: the budget is their sum
  SETUP=60 FACTS=20 UPDATE=150 FPS=300 WRAPUP=150
  BUDGET=$(( SETUP + FACTS + UPDATE + FPS + 90 + WRAPUP ))
fi
PUSH=$(( BUDGET - SETUP - FACTS - UPDATE - FPS - WRAPUP ))
plan() {
  echo "| stage | cap (s) |"
  echo "|---|---|"
  echo "| setup: EGL packages, wheels into /tmp/site | $SETUP |"
  echo "| facts: GPU, driver, python, torch | $FACTS |"
  echo "| update.py: pixelrl eager, --compile, --amp bf16 vs SB3, batch 256 | $UPDATE |"
  echo "| fps.py: end to end, 0.25 updates per env step, batch 256, vs SB3 | $FPS |"
  echo "| pixel FetchPush learning run | $PUSH |"
  echo "| evaluations, curve, logs | $WRAPUP |"
  echo "| total (budget $BUDGET) | $(( SETUP + FACTS + UPDATE + FPS + PUSH + WRAPUP )) |"
}
if [ "$PUSH" -lt 30 ]; then echo "--budget $BUDGET leaves no time for learning" >&2; exit 2; fi
if [ "$PLAN_ONLY" = 1 ]; then plan; exit 0; fi

mkdir -p "$OUT_DIR"; OUT=$(cd "$OUT_DIR" && pwd)
LOGS=$(mktemp -d); SUMMARY=$OUT/summary.md
log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s] $*" | tee -a "$LOGS/suite.log"; }
# stage NAME CAP COMMAND...: runs with a hard cap (SIGINT, then SIGKILL 15 s later); never fails.
stage() {
  local name=$1 cap=$2; shift 2
  log "$name: up to ${cap}s"
  timeout -k 15 -s INT "$cap" "$@" > "$LOGS/$name.log" 2>&1
  local status=$?
  case $status in
    0) log "$name: done" ;;
    124|137) log "$name: stopped at its cap of ${cap}s" ;;
    *) log "$name: failed ($status); $(tail -n 3 "$LOGS/$name.log" | tr '\n' ' ')" ;;
  esac
  return 0
}
finish() {
  tar -czf "$OUT/logs.tar.gz" -C "$LOGS" . 2> /dev/null
  log "done in $(( $(date +%s) - START ))s; results in $OUT"
}
trap finish EXIT
{ echo "# pixelrl GPU run, $(date -u '+%F %H:%M') UTC, commit $(git -C "$REPO" rev-parse --short HEAD 2> /dev/null || echo unknown)"; echo; plan; echo; } > "$SUMMARY"
log "plan: $PUSH s of learning within a budget of $BUDGET s"

# ---------------------------------------------------------------- setup
setup() {
  if [ -d "$REPO/.gl" ] && ! ldconfig -p | grep -q 'libEGL.so.1'; then
    for f in "$REPO"/.gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  if [ -d "$REPO/.whl" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$REPO"/.whl/*.whl || return 1
  fi
}
if [ "$INSTALL" = 1 ]; then
  stage setup "$SETUP" bash -c "$(declare -f setup); REPO='$REPO' PY='$PY' setup"
else
  log "setup: skipped (--no-install)"
fi
export PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}" MUJOCO_GL=${MUJOCO_GL:-egl}
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
# MuJoCo's EGL: where no vendor file is found, point at the NVIDIA one the driver mount holds.
NVIDIA_EGL=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [ "$DEVICE" != cpu ] && [ -f "$NVIDIA_EGL" ] && [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ]; then
  export __EGL_VENDOR_LIBRARY_FILENAMES=$NVIDIA_EGL
fi

# ---------------------------------------------------------------- facts
CORES=$(nproc)
N_ENVS=$(( CORES - 2 )); [ "$N_ENVS" -ge 4 ] || N_ENVS=4
N_ENVS=$(( N_ENVS / 4 * 4 ))  # 0.25 updates per env step: n_envs / 4 updates per vector step
GRAD_STEPS=$(( N_ENVS / 4 ))
PUSH_GRAD_STEPS=$(( 4 * GRAD_STEPS ))  # train.py's default of 4 per vector step of 4 envs
VARIANTS="eager compile amp"; [ "$DEVICE" = cpu ] && VARIANTS="eager compile"
if [ "$SMOKE" = 1 ]; then
  N_ENVS=4; GRAD_STEPS=1; PUSH_GRAD_STEPS=1
  UPDATE_ARGS=(--seconds 2 --batch-size 32)
  FPS_ARGS=(--batch-size 32 --learning-starts 200 --learn-steps 40 --update-seconds 2
            --buffer-size 5000 --sb3-learn-steps 40 --sb3-update-seconds 2)
  PUSH_ARGS=(--total-steps 600 --buffer-size 5000 --batch-size 32 --learning-starts 200
             --checkpoint-freq 200 --log-interval 100 --image-size 48)
  EVAL_EPISODES=2
else
  UPDATE_ARGS=(--seconds 8 --batch-size 256 --sb3-seconds 6)
  FPS_ARGS=(--batch-size 256 --learning-starts 2000 --learn-steps 4000 --update-seconds 10
            --buffer-size 50000 --sb3-learn-steps 200 --sb3-update-seconds 8)
  PUSH_ARGS=(--total-steps 5000000 --checkpoint-freq 25000 --no-save-buffer --log-interval 5000)
  EVAL_EPISODES=50
fi
facts() {
  echo "device $DEVICE; $CORES cores; n_envs $N_ENVS, $GRAD_STEPS update(s) per vector step; smoke $SMOKE"
  "$PY" -c "import platform, torch; print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import mujoco, gymnasium, gymnasium_robotics, tyro; print('mujoco', mujoco.__version__, '| gymnasium', gymnasium.__version__)" 2> /dev/null  # (gymnasium-robotics prints a notice on stderr)
  return 0
}
stage facts "$FACTS" bash -c "$(declare -f facts); DEVICE=$DEVICE CORES=$CORES N_ENVS=$N_ENVS GRAD_STEPS=$GRAD_STEPS SMOKE=$SMOKE PY='$PY' facts"
{ echo "## machine"; echo; echo '```'; cat "$LOGS/facts.log"; echo '```'; echo; } >> "$SUMMARY"

# ---------------------------------------------------------------- speed against SB3
table() {  # table NAME TITLE: what the stage measured (its header, rows and running lines,
           # so that a stage stopped at its cap still reports what it had) into NAME.md
  grep -E '^(#|\||  )' "$LOGS/$1.log" > "$OUT/$1.md" 2> /dev/null
  { echo "## $2"; echo; cat "$OUT/$1.md"; echo; } >> "$SUMMARY"
}
stage update "$UPDATE" "$PY" "$REPO/benchmarks/update.py" --device "$DEVICE" \
  --variants $VARIANTS "${UPDATE_ARGS[@]}"
table update "SAC updates per second (update.py)"
stage fps "$FPS" "$PY" "$REPO/benchmarks/fps.py" --device "$DEVICE" --n-envs "$N_ENVS" \
  --gradient-steps "$GRAD_STEPS" --renders native --rounds 1 --variants eager "${FPS_ARGS[@]}"
table fps "End to end (fps.py)"

# ---------------------------------------------------------------- learning
# train.py's defaults (pixel FetchPush with the puck only in the image, the state estimator,
# results/notebook.md) with as many env workers as the cores allow, and as many SAC and
# estimator steps per env step as the defaults take with their 4 envs.
RUNS=$(mktemp -d)
PUSH_CAP=$(( START + SETUP + FACTS + UPDATE + FPS + PUSH - $(date +%s) ))  # what is left
[ "$PUSH_CAP" -ge 20 ] || PUSH_CAP=20
[ "$SMOKE" = 0 ] || PUSH_CAP=$PUSH  # a rehearsal needs a few checkpoints, not the time left
stage push "$PUSH_CAP" "$PY" "$REPO/train.py" --n-envs "$N_ENVS" \
  --gradient-steps "$PUSH_GRAD_STEPS" --estimator-gradient-steps "$GRAD_STEPS" \
  --device "$DEVICE" --runs-dir "$RUNS" --no-progress "${PUSH_ARGS[@]}"
wrapup() {  # the curve and the logs first (cheap), then evaluations, newest checkpoint first
  RUN_DIR=$(ls -d "$RUNS"/*/seed0 2> /dev/null | head -n 1)
  [ -n "$RUN_DIR" ] || { echo "no run directory"; return 1; }
  cp "$RUN_DIR/config.json" "$LOGS/push_config.json"; cp "$RUN_DIR"/events.out.* "$LOGS/" 2> /dev/null
  "$PY" -m pixelrl.plot "$RUN_DIR" --probe --out "$OUT/push_curves.png" --title "pixel FetchPush-v4 (puck from pixels), $DEVICE" > /dev/null
  for ckpt in $(ls -d "$RUN_DIR"/checkpoints/step_* | sort -r); do
    "$PY" "$REPO/eval.py" --checkpoint "$ckpt" --episodes "$EVAL_EPISODES" --device "$DEVICE" > /dev/null 2>&1 || continue
    "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"| {sys.argv[2]} | {r['checkpoint_step']:,} | {r['success_rate']:.0%} | {r['mean_return']:.1f} |\")" \
      "$ckpt/eval.json" "$(basename "$ckpt")"
  done
  return 0
}
stage wrapup "$WRAPUP" bash -c "$(declare -f wrapup); RUNS='$RUNS' REPO='$REPO' PY='$PY' DEVICE=$DEVICE EVAL_EPISODES=$EVAL_EPISODES OUT='$OUT' LOGS='$LOGS' wrapup"
{
  {
    echo "| checkpoint | env steps | eval success ($EVAL_EPISODES episodes) | mean return |"
    echo "|---|---|---|---|"
    grep '^| step_' "$LOGS/wrapup.log" | sort
  } > "$OUT/push.md"
  echo "## pixel FetchPush, puck from pixels (push.log's last lines, evaluations)"; echo
  echo '```'; grep -v '^\s*$' "$LOGS/push.log" | tail -n 4; echo '```'; echo
  cat "$OUT/push.md"; echo
} >> "$SUMMARY"
