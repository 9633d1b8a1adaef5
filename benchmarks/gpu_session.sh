#!/usr/bin/env bash
# Everything this project checks on a lent GPU machine, in one go (device time is scarce):
# the GPU test cases, the benchmarks against cuDNN, and the default training run on CUDA.
# Usage there: OUT=<dir> bash benchmarks/gpu_session.sh   (run from the repository root)
#
# The steps run most important first; each has its own time limit (8 minutes in all,
# under the device tool's 10 minutes per command, so that a session's 15 minutes of
# device time also hold the machine's start; SWEEP=1 adds the sweep, one minute more)
# and is stopped with SIGINT, so
# pytest still prints its summary and the benchmarks keep what they measured (they write
# their JSON after every shape or size, to NAME.json.partial until the run completes and
# to NAME.json when it does). Every step's whole output goes to log.txt with
# its exit status; $OUT holds at most 8 files (the device tool returns 8).
set -u -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
log="$OUT/log.txt"
step() { echo "== $(date +%T) $*" | tee -a "$log"; }
# run LIMIT_S CMD...: the command's output into the log (and on screen), then its status
# exit: "-- exit STATUS", and whether the step was stopped at its limit (124)
ended() { if [ "$1" = 124 ]; then echo "-- exit 124 (stopped at the $2 s limit)"; else echo "-- exit $1"; fi; }
run() { local s=$1; shift; timeout -s INT -k 10 "$s" "$@" 2>&1 | tee -a "$log"
        ended "${PIPESTATUS[0]}" "$s" | tee -a "$log"; }
step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$log"
python3 -c "import numpy, cupy, torch; print('numpy', numpy.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())" 2>&1 | tee -a "$log"
# without a usable GPU every step below would skip or fail in seconds: say so and stop
if ! python3 -c "
import sys
from minifcn.backend import DeviceUnavailable, require_gpu
try:
    require_gpu()
except DeviceUnavailable as e:
    sys.exit(str(e))
" 2>&1 | tee -a "$log"; then
  echo "-- stopped: this machine has no usable GPU (it needs CuPy, pip install -e .[gpu], and a CUDA build of torch)" | tee -a "$log"
  exit 2
fi
step "GPU test cases (pytest -m gpu; the list of results in gpu_tests.txt)"
workers=""; python3 -c "import xdist" 2>/dev/null && workers="-n 8"
timeout -s INT -k 10 150 python3 -m pytest -m gpu -q $workers -p no:cacheprovider \
    --continue-on-collection-errors tests > "$OUT/gpu_tests.txt" 2>&1
ended $? 150 >> "$OUT/gpu_tests.txt"
tail -5 "$OUT/gpu_tests.txt" | tee -a "$log"
step "transposed convolution vs cuDNN, the FCN shapes"
run 80 python3 -m benchmarks.deconv --device cuda --json "$OUT/deconv_cuda.json"
step "FCN-8s training step vs torch+cuDNN"
run 70 python3 -m benchmarks.step --device cuda --sizes 224 320 --json "$OUT/step_cuda.json"
step "python -m minifcn.train --device cuda (the default run)"
rundir="/tmp/run_cuda_$(date +%s)"
run 100 python3 -m minifcn.train --device cuda --out "$rundir" --no-progress
cp "$rundir/metrics.json" "$OUT/train_metrics.json" 2>/dev/null
step "FCN-8s's convolutions layer by layer vs cuDNN (the training run's layers)"
run 40 python3 -m benchmarks.conv2d --device cuda --json "$OUT/conv2d_cuda.json"
step "col2im kernel variants"
run 40 python3 -m benchmarks.col2im_kernels --device cuda --json "$OUT/col2im_cuda.json"
if [ "${SWEEP:-0}" = 1 ]; then
  step "transposed convolution vs cuDNN, the sweep (where 'fused' stops winning sets GPU_FUSED_MAX_MACS)"
  run 60 python3 -m benchmarks.deconv --device cuda --sweep --json "$OUT/deconv_cuda_sweep.json"
fi
step "done; the summary lines:"
grep -E "^== |^-- exit|passed|failed|ratio|final validation" "$log" | tail -30
