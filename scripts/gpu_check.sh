#!/usr/bin/env bash
# One-shot GPU check (about 8 minutes on an H100/H200): every figure the README's GPU table
# needs, as JSON lines in one file.
#
#   bash scripts/gpu_check.sh                    # on the GPU machine, from the repository root
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1 bash scripts/gpu_check.sh   # a dry run on a CPU
#
# The device image has torch, torchaudio, lightning, einops and transformers but not soundfile:
# carry its wheels (and cffi, pycparser) in .whl/, as ../.library/device/README.md shows; they
# are installed to /tmp/site when .whl/ exists. Output: $OUT/gpu_check.jsonl (or
# runs/gpu_check.jsonl where $OUT is unset), plus a log of everything printed.
#
# 1. bench_pretrain: base, 8 x 11 s, bf16, ours against HF (the bar: 3x HF's 883 audio-s/s);
# 2. bench_extract end to end on 4,000 synthetic 11 s files, with --shards, then one .npy per
#    file with --no-fsync (the bar: 2x HF's model-only 5,615 audio-s/s);
# 3. one step in bf16 against fp32 (loss and gradient agreement), and the host syncs of a step;
# 4. `audio-ssl pretrain --preset base` on synthetic audio for 3 minutes (GPU_CHECK_MINUTES):
#    every loss finite. Last, so that a lease that runs out cuts only this run short.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SMALL=${GPU_CHECK_SMALL:-0}
OUTDIR=${OUT:-runs}
mkdir -p "$OUTDIR"
RESULTS="$OUTDIR/gpu_check.jsonl"
LOG="$OUTDIR/gpu_check.log"
: >"$RESULTS"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ "$SMALL" = 1 ]; then  # sizes for a dry run on a CPU
    PRESET=tiny; BATCH=2; SECONDS_=2; FILES=40; MINUTES=1; BATCH_S=8
else
    PRESET=base; BATCH=8; SECONDS_=11; FILES=4000; MINUTES=3; BATCH_S=160
fi
MINUTES=${GPU_CHECK_MINUTES:-$MINUTES}  # the pretraining run, last: a shorter one fits a lease

step() {  # step NAME COMMAND...: run it, keep its JSON lines, log everything
    echo "== $1 ($(date +%T))" | tee -a "$LOG"
    shift
    "$@" 2>>"$LOG" | tee -a "$LOG" | grep '^{' >>"$RESULTS"
    echo "   exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}

python3 - <<'EOF' >>"$RESULTS"
import json, platform, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
print(json.dumps({"check": "machine", "gpu": gpu, "torch": torch.__version__,
                  "cpu": platform.processor(), "python": platform.python_version()}))
EOF

step "bench_pretrain $PRESET ${BATCH}x${SECONDS_}s bf16" \
    python3 scripts/bench_pretrain.py --preset "$PRESET" --batch "$BATCH" --seconds "$SECONDS_" \
    --device "$DEVICE" --dtype bf16 --repeats 5
step "bench_extract $FILES files, --shards" \
    python3 scripts/bench_extract.py --preset "$PRESET" --device "$DEVICE" --dtype bf16 \
    --batch 16 --seconds "$SECONDS_" --synthetic "$FILES" --shards --e2e-repeats 1 --no-memory
step "bench_extract $FILES files, .npy --no-fsync" \
    python3 scripts/bench_extract.py --preset "$PRESET" --device "$DEVICE" --dtype bf16 \
    --batch 16 --seconds "$SECONDS_" --synthetic "$FILES" --no-fsync --no-forward \
    --e2e-repeats 1 --no-memory
if [ "$DEVICE" != cpu ]; then
    step "bf16 against fp32, one step" python3 scripts/gpu_check.py parity --preset "$PRESET" \
        --batch "$BATCH" --seconds "$SECONDS_"
    step "host syncs in a step" python3 scripts/gpu_check.py syncs --preset "$PRESET" \
        --batch "$BATCH" --seconds "$SECONDS_"
fi
step "noise for pretraining" python3 scripts/gpu_check.py noise "$WORK/noise" --files 200 \
    --seconds "$SECONDS_"
ACCEL=gpu; [ "$DEVICE" = cpu ] && ACCEL=cpu
echo "train: {log_every: 10, checkpoint_every: 1000000}" >"$WORK/run.yaml"
echo "== pretrain $PRESET for $MINUTES min ($(date +%T))" | tee -a "$LOG"
timeout -s INT "$(python3 -c "print(int($MINUTES * 60))")" \
    python3 -m audio_ssl.cli pretrain "$WORK/noise" -o "$WORK/run" --preset "$PRESET" \
    --accelerator "$ACCEL" --config "$WORK/run.yaml" --max-steps 100000 --no-progress \
    >>"$LOG" 2>&1
step "finite losses" python3 scripts/gpu_check.py finite "$WORK/run"
echo "results: $RESULTS ($(wc -l <"$RESULTS") lines); log: $LOG"
