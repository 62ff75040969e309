#!/usr/bin/env bash
# Every GPU check of issue #6 in one run, sized for a 15-minute device lease (at most ~9.5
# minutes once the machine is up; each step has its own time limit): the GPU tests, the
# inference benchmark (bf16, batch 64, a val2017-sized pass) and the training-step benchmark.
# Logs go to $OUT (or ./gpu-logs). On a machine without nextpose's dependencies, put wheels of
# pycocotools and opencv-python-headless<5 for its Python in .whl/ first (see BENCHMARKS.md).
set -uo pipefail
out=${OUT:-gpu-logs}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch, cv2, numpy; print('torch', torch.__version__, 'opencv', \
cv2.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$out/machine.txt"
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$out/pytest_gpu.txt"
timeout 270 python3 benchmarks/bench_inference.py --device cuda --batch 64 --precision bf16 \
    --quick --sections model,e2e --val-sized 5000 --max-load 100 2>&1 | tee "$out/bench_inference.txt"
timeout 100 python3 benchmarks/bench_train_speed.py --device cuda --steps 10 --reps 2 2>&1 \
    | tee "$out/bench_train_speed.txt"
