#!/usr/bin/env bash
# sideband's GPU check: ONE command on a machine with one GPU, under 8 minutes.
#
#   bash scripts/gpu_check.sh          (from the repository root, or anywhere)
#
# 1. environment report (GPU, torch, CUDA, NCCL, cupy); installs Ray from .gpu/ when
#    `import ray` fails (no internet: .gpu/ray-trim.tar.xz and .gpu/*.whl);
# 2. the GPU tests (tests/gpu, marker `gpu`): NCCL world size 1, CUDA IPC between 2 actors on
#    the same GPU, the staged fallback with 2 and 4 actors;
# 3. the torch_gloo CPU tests (this torch version's gloo under sideband);
# 4. the benchmark: 64 MiB broadcast and send/recv between 2 actors on one GPU against the Ray
#    object store (ray.put of .cpu(), ray.get and .cuda()), a table with ratios.
#
# Logs go to $OUT/ (if set) and /tmp/sideband-gpu-check/. Exit status: 0 when every step passed.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LOGDIR="${OUT:-/tmp/sideband-gpu-check}"
mkdir -p "$LOGDIR" /tmp/sideband-gpu-check
LOG="$LOGDIR/gpu_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
START=$(date +%s)
declare -A RESULT
ORDER=()
step() { echo; echo "=== [$(($(date +%s) - START)) s] $*"; }

step "sideband GPU check, $(date -u), in $ROOT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export SIDEBAND_HOST=127.0.0.1 RAY_DEDUP_LOGS=0 PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv || echo "(no nvidia-smi)"
python3 - <<'EOF'
import sys
print("python", sys.version.split()[0])
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        print("device", torch.cuda.get_device_name(0), "count", torch.cuda.device_count())
        print("nccl", torch.cuda.nccl.version(), "dist nccl", torch.distributed.is_nccl_available())
except Exception as e:
    print("torch import failed:", repr(e))
try:
    import cupy
    print("cupy", cupy.__version__)
except Exception as e:
    print("cupy not usable:", repr(e))
EOF

step "Ray"
if ! python3 -c "import ray" 2>/dev/null; then
    SITE=/tmp/sideband-site
    if [ ! -f "$SITE/.done" ]; then
        rm -rf "$SITE" && mkdir -p "$SITE"
        if [ ! -f .gpu/ray-trim.tar.xz ]; then
            echo "FATAL: no ray and no .gpu/ray-trim.tar.xz in $ROOT"; exit 2
        fi
        echo "extracting .gpu/ray-trim.tar.xz into $SITE"
        tar xJf .gpu/ray-trim.tar.xz -C "$SITE" || { echo "FATAL: extracting ray failed"; exit 2; }
        shopt -s nullglob
        WHEELS=(.gpu/*.whl)
        if [ ${#WHEELS[@]} -gt 0 ]; then
            if ! python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${WHEELS[@]}"; then
                echo "pip failed; unpacking the wheels directly"
                for w in "${WHEELS[@]}"; do python3 -m zipfile -e "$w" "$SITE"; done
            fi
        fi
        touch "$SITE/.done"
    fi
    # The archive may hold site-packages/ray or ray/ at its top: find the folder holding ray/.
    RAYDIR=$(dirname "$(find "$SITE" -maxdepth 5 -path '*/ray/__init__.py' | head -1)")
    RAYSITE=$(dirname "$RAYDIR")
    export PYTHONPATH="$RAYSITE:$SITE:$PYTHONPATH"
    export PATH="$SITE/bin:$RAYSITE/bin:$PATH"
fi
if ! python3 -c "import ray; print('ray', ray.__version__, ray.__file__)"; then
    echo "FATAL: ray does not import; PYTHONPATH=$PYTHONPATH"
    python3 -c "import ray" 2>&1 | tail -20
    exit 2
fi
python3 -c "import sideband, sideband.collective.torch_backend, sideband.collective.ipc; print('sideband imports from', sideband.__file__)" || exit 2

# Leftovers of an earlier run on this machine would confuse Ray's autodetection.
unset RAY_ADDRESS
NO_GPU=0
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    NO_GPU=1
    echo "WARNING: torch sees no CUDA device: the GPU tests will be skipped, the benchmark empty"
fi

run_step() {  # name, timeout seconds, command...
    local name=$1 limit=$2
    shift 2
    step "$name"
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    RESULT[$name]=$rc
    ORDER+=("$name")
    if [ $rc -eq 0 ]; then
        echo "--- $name: PASSED"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        echo "--- $name: FAILED (timed out after $limit s)"
    else
        echo "--- $name: FAILED (exit $rc)"
    fi
}

PYTEST=(python3 -m pytest -p no:cacheprovider -o addopts= -rA --tb=long -v -s)
run_step "GPU tests (NCCL world size 1, CUDA IPC, staged 2 and 4 actors)" 300 \
    "${PYTEST[@]}" -m gpu tests/gpu --junitxml="$LOGDIR/gpu_tests.xml"
run_step "torch_gloo CPU tests on this torch" 120 \
    "${PYTEST[@]}" tests/collective/test_torch_backend.py --junitxml="$LOGDIR/torch_gloo_tests.xml"
run_step "benchmark: 64 MiB, 2 actors on one GPU" 150 python3 tests/gpu/bench_gpu.py

step "summary ($(($(date +%s) - START)) s)"
FAIL=0
for k in "${ORDER[@]}"; do
    printf '  %-70s %s\n' "$k" "$([ "${RESULT[$k]}" -eq 0 ] && echo PASSED || echo "FAILED (${RESULT[$k]})")"
    [ "${RESULT[$k]}" -eq 0 ] || FAIL=1
done
ls /dev/shm | grep -i -E 'sideband|sb-' && echo "WARNING: sideband segments left in /dev/shm" || true
if [ $NO_GPU -eq 1 ]; then
    echo "NOTE: no CUDA device was visible: nothing GPU-related was checked (exit 3)"
    [ $FAIL -eq 0 ] && FAIL=3
fi
echo "log: $LOG"
exit $FAIL
