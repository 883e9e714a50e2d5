#!/usr/bin/env bash
# Every GPU check and benchmark of the open issues, as one script for one short device session.
#
#   bash benchmarks/device_session.sh [OUTDIR]            # on the GPU machine (DEVICE=cuda)
#   DEVICE=cpu SMALL=1 bash benchmarks/device_session.sh  # the same steps, tiny, on a CPU: a smoke test
#
# Steps, in order of value, each under its own time cap (seconds; a step that hits it is reported, the
# script goes on); STEPS=name,name,... runs a subset. Everything each step prints goes to OUTDIR/NAME.log;
# the end prints one line per step (exit code, seconds) and the key lines of each log.
#
#   env            torch, CUDA and the GPU's name
#   install        pip-installs wheels carried in .whl/ (transformer-lens, plotly and their pure-Python
#                  dependencies are absent on a bare GPU machine) and this checkout, without touching torch
#   test_cuda      tests/test_cuda.py: the GPU path (fast path, CUDA-graph steps, the stacked trainer's
#                  single executor, checkpoints, resume, analyses) under the sync-debug mode
#   train_speed    benchmarks/train_speed.py --device cuda: the trainer vs a torch.compile'd plain step replayed
#                  as a CUDA graph, and the flush overhead at a checkpoint every 10 epochs (issue 19, item 6)
#   stacked_256    benchmarks/stacked_speed.py: 256 paper-size runs in one stack over 1,000 epochs, ms per
#                  model-epoch (target ≤ 0.15) against one run alone (issue 19, item 6)
#   grokfast       analyses/grokfast_lee.py on the GPU: the baseline (3 seeds, to 95 % test accuracy at ≈ 40k
#                  steps in Lee et al.'s setting) and the EMA + weight-decay arm (issue 19, item 5)
#
# OUTDIR defaults to $OUT (the device tool's result folder) or benchmarks/out/device.
#
# Before the session, here: `pip download --no-deps -d .whl transformer-lens plotly` (and whatever else the GPU
# machine lacks; `.whl/` is ignored by git, so carry it). The caps add up to ~12 minutes in the worst case and
# a device call may run 10: give one call STEPS=env,install,test_cuda,train_speed,stacked_256 and a second one
# STEPS=grokfast if device time is left (a run cut short resumes in the next call's copy only if its runs
# folder is carried back, so give grokfast a call of its own).
set -u
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-benchmarks/out/device}}
DEVICE=${DEVICE:-cuda}
SMALL=${SMALL:-0}
STEPS=${STEPS:-env,install,test_cuda,train_speed,stacked_256,grokfast}
PY=${PY:-python}
mkdir -p "$OUTDIR"
SUMMARY="$OUTDIR/summary.txt"
: > "$SUMMARY"

want() { [[ ",$STEPS," == *",$1,"* ]]; }

step() {  # step NAME CAP_SECONDS COMMAND...
    local name=$1 cap=$2
    shift 2
    want "$name" || return 0
    echo "== $name (cap ${cap}s): $*"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=20 "$cap" "$@" > "$OUTDIR/$name.log" 2>&1
    local rc=$?
    local note=""
    [[ $rc == 124 || $rc == 137 ]] && note=" (hit the ${cap}s cap)"
    echo "$name: rc $rc, $((SECONDS - t0)) s$note" | tee -a "$SUMMARY"
    tail -n 25 "$OUTDIR/$name.log"
}

if [[ $SMALL == 1 ]]; then
    SPEED=(--epochs 20 --repeats 1 --plain-steps 3)
    STACK=(--preset tiny --runs 4 --epochs 20 --every 10 --sequential 1 --repeats 1 --variants gather:dense)
    GF=(--seeds 0 --steps 30 --baseline-steps 30 --max-minutes 1)
else
    SPEED=(--epochs 300 --repeats 3)
    STACK=(--preset paper --runs 256 --epochs 1000 --every 100 --sequential 1 --repeats 1 --variants gather:dense)
    GF=(--seeds 0,1,2 --steps 5000 --baseline-steps 60000 --max-minutes 4)
fi

step env 60 "$PY" -c "
import platform, torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine())"

if want install; then
    if compgen -G ".whl/*.whl" > /dev/null; then
        step install 90 "$PY" -m pip install --no-index --find-links .whl --no-deps .whl/*.whl -e . --no-build-isolation
    else
        echo "install: no .whl/ folder; skipped" | tee -a "$SUMMARY"
    fi
fi

step test_cuda 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
step train_speed 150 "$PY" benchmarks/train_speed.py --device "$DEVICE" "${SPEED[@]}"
step stacked_256 150 "$PY" benchmarks/stacked_speed.py --device "$DEVICE" "${STACK[@]}"
step grokfast 280 "$PY" analyses/grokfast_lee.py --arms ema_wd,baseline --device "$DEVICE" "${GF[@]}" \
    --runs-dir "$OUTDIR/runs_grokfast_lee" --out "$OUTDIR/grokfast_lee"

echo "== summary"
cat "$SUMMARY"
