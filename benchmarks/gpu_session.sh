#!/usr/bin/env bash
# Everything this project checks on a lent GPU machine, in one go (device time is scarce):
# the GPU test cases, the benchmarks against cuDNN, and the default training run on CUDA.
# Usage there: OUT=<dir> bash benchmarks/gpu_session.sh   (run from the repository root)
#
# The steps run most important first; each has its own time limit (about 9.5 minutes in
# all) and is stopped with SIGINT, so pytest still prints its summary and the benchmarks
# keep what they measured (they write their JSON after every shape or size).
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
log="$OUT/log.txt"
step() { echo "== $(date +%T) $*" | tee -a "$log"; }
limit() { local s=$1; shift; timeout -s INT -k 10 "$s" "$@"; }
step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$log"
python3 -c "import numpy, cupy, torch; print('numpy', numpy.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())" 2>&1 | tee -a "$log"
step "GPU test cases (pytest -m gpu)"
workers=""; python3 -c "import xdist" 2>/dev/null && workers="-n 8"
limit 170 python3 -m pytest -m gpu -q $workers -p no:cacheprovider tests > "$OUT/gpu_tests.txt" 2>&1
echo "exit $?" >> "$OUT/gpu_tests.txt"; tail -4 "$OUT/gpu_tests.txt" | tee -a "$log"
step "transposed convolution vs cuDNN, the FCN shapes"
limit 90 python3 -m benchmarks.deconv --device cuda --json "$OUT/deconv_cuda.json" > "$OUT/deconv_cuda.txt" 2>&1
sed -n "/All shapes:/,\$p" "$OUT/deconv_cuda.txt" | tee -a "$log"
step "FCN-8s training step vs torch+cuDNN"
limit 70 python3 -m benchmarks.step --device cuda --sizes 224 320 --json "$OUT/step_cuda.json" 2>&1 | tail -6 | tee -a "$log"
step "python -m minifcn.train --device cuda (the default run)"
limit 110 python3 -m minifcn.train --device cuda --out "$OUT/run_cuda" --no-progress 2>&1 | grep -v "^configuration" | tail -9 | tee -a "$log"
step "col2im kernel variants"
limit 45 python3 -m benchmarks.col2im_kernels --device cuda --json "$OUT/col2im_cuda.json" 2>&1 | tail -16 | tee -a "$log"
step "transposed convolution vs cuDNN, the sweep (where 'fused' stops winning sets GPU_FUSED_MAX_MACS)"
limit 90 python3 -m benchmarks.deconv --device cuda --sweep --json "$OUT/deconv_cuda_sweep.json" > "$OUT/deconv_cuda_sweep.txt" 2>&1
sed -n "/What 'auto' picks/,\$p" "$OUT/deconv_cuda_sweep.txt" | tee -a "$log"
step "done"
