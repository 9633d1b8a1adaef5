#!/usr/bin/env bash
# Everything this project checks on a lent GPU machine, in one go (device time is scarce):
# the GPU test cases, the benchmarks against cuDNN, and the default training run on CUDA.
# Usage there: OUT=<dir> bash benchmarks/gpu_session.sh   (run from the repository root)
#
# The steps run most important first; each has its own time limit (8 minutes in all, 9
# with each step's 10 s grace to die: under the device tool's 10 minutes per command, so
# that a session's 15 minutes of device time also hold the machine's start; SWEEP=1 runs
# the deconv sweep instead of the convolutions layer by layer, 20 s more) and is
# stopped with SIGINT, so pytest still prints its summary and the benchmarks keep what they measured (they write
# their JSON after every shape or size, to NAME.json.partial until the run completes and
# to NAME.json when it does). Every step's whole output goes to log.txt with
# its exit status; $OUT holds at most 8 files (the device tool returns 8).
set -u -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
log="$OUT/log.txt"
step() { echo "== $(date +%T) $*" | tee -a "$log"; }
# run LIMIT_S CMD...: the command's output into the log (and on screen), then its status
# ended STATUS LIMIT_S: "-- exit STATUS", and whether the step was stopped at its limit
# (124: it stopped on SIGINT; 137: it ignored that and was killed 10 s later)
ended() { case "$1" in
            124) echo "-- exit 124 (stopped at the $2 s limit)" ;;
            137) echo "-- exit 137 (killed 10 s after the $2 s limit)" ;;
            *) echo "-- exit $1" ;;
          esac; }
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
import torch
if not torch.cuda.is_available():
    sys.exit(f'torch {torch.__version__} sees no CUDA device: the benchmarks compare with torch + cuDNN')
" 2>&1 | tee -a "$log"; then
  echo "-- stopped (the line above says why): this script needs a GPU, CuPy (pip install -e .[gpu]) and a CUDA build of torch" | tee -a "$log"
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
step "col2im kernel variants"
run 40 python3 -m benchmarks.col2im_kernels --device cuda --json "$OUT/col2im_cuda.json"
if [ "${SWEEP:-0}" = 1 ]; then
  step "transposed convolution vs cuDNN, the sweep (where 'fused' stops winning sets GPU_FUSED_MAX_MACS)"
  run 60 python3 -m benchmarks.deconv --device cuda --sweep --json "$OUT/deconv_cuda_sweep.json"
else
  step "FCN-8s's convolutions layer by layer vs cuDNN (the training run's layers)"
  run 40 python3 -m benchmarks.conv2d --device cuda --json "$OUT/conv2d_cuda.json"
fi
step "done; the summary lines:"
grep -E "^== |^-- exit|passed|failed|ratio|final validation" "$log" | tail -30
