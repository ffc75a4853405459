#!/usr/bin/env bash
# The GPU checks and measurements, as one script for a lent CUDA machine (no network there).
#
# Peers the image lacks travel as wheels in .whl/ (ignored by git), fetched here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     cut-cross-entropy==25.1.1 liger-kernel llmlingua==0.2.2 nltk defusedxml
# and the script is run from the repository root as
#   OUT=/some/dir bash benchmarks/gpu_run.sh [steps...]
# Steps (default: all, in this order): env tests sampler compress cce. Each step writes
# $OUT/<step>.txt and is cut off by its own timeout, so one hang loses only that step.
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(env tests sampler compress cce)

step() {  # step NAME SECONDS COMMAND...
    local name=$1 secs=$2
    shift 2
    echo "=== $name ($(date +%T))"
    timeout "$secs" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "=== $name exit ${PIPESTATUS[0]} ($(date +%T))" | tee -a "$OUT/$name.txt"
}

for s in "${steps[@]}"; do
    case $s in
    env)
        step env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version \
            --format=csv; python3 -c "import torch, transformers, triton; \
            print(torch.__version__, torch.version.cuda, transformers.__version__, \
            triton.__version__, torch.cuda.get_device_name())"' ;;
    tests)
        step tests 240 python3 -m pytest -q -p no:cacheprovider tests/sampling/test_top_h.py \
            tests/training/test_linear_ce_triton.py tests/compression/test_token_classifier.py ;;
    sampler)
        step sampler 120 python3 benchmarks/sampler_cost.py --device cuda ;;
    compress)
        step compress 240 python3 benchmarks/compression_speed.py --device cuda --repeats 5 \
            --threads 1 ;;
    cce)
        step cce 300 bash -c 'python3 benchmarks/linear_ce_memory.py --device cuda \
            --repeats 1 && python3 benchmarks/linear_ce_memory.py --device cuda --repeats 1 \
            --logits peaked' ;;
    *) echo "unknown step $s (allowed: env tests sampler compress cce)"; exit 2 ;;
    esac
done
