#!/usr/bin/env bash
# The GPU checks and measurements, as one script for a lent CUDA machine (no network there).
#
# Peers the image lacks travel as wheels in .whl/ (ignored by git), fetched here with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     cut-cross-entropy==25.1.1 liger-kernel llmlingua==0.2.2 nltk defusedxml
# and the script is run from the repository root as
#   OUT=/some/dir bash benchmarks/gpu_run.sh [steps...]
# Steps (default, in this order): env cce cce_peaked tests sampler kv; also by name: compress.
# Each step writes $OUT/<step>.txt and is cut off by its own timeout, so one hang loses only
# that step; the default steps' timeouts add up to 570 s. Triton's tuned tiles are
# cached on disk (TRITON_CACHE_AUTOTUNING), so the peaked run reuses the uniform run's choice.
# vLLM's GPU path is not here: the image has no vLLM, and its wheel is larger than what a call
# can carry (64 MiB).
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TRITON_CACHE_AUTOTUNING=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(env cce cce_peaked tests sampler kv)

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
        step env 20 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version \
            --format=csv; python3 -c "import torch, transformers, triton; \
            print(torch.__version__, torch.version.cuda, transformers.__version__, \
            triton.__version__, torch.cuda.get_device_name())"' ;;
    tests)
        # fixed tiles here: tuning would compile every candidate for each dtype and option set
        TOKENWISE_TRITON_AUTOTUNE=0 step tests 90 python3 -m pytest -q -p no:cacheprovider \
            tests/sampling/test_top_h.py tests/training/test_linear_ce_triton.py \
            tests/compression/test_token_classifier.py ;;
    sampler)
        step sampler 70 python3 benchmarks/sampler_cost.py --device cuda ;;
    kv)
        step kv 70 python3 benchmarks/gpu_kv.py --device cuda --json "$OUT/gpu_kv.json" ;;
    compress)
        step compress 240 python3 benchmarks/compression_speed.py --device cuda --repeats 5 \
            --threads 1 ;;
    cce)
        step cce 210 python3 benchmarks/linear_ce_memory.py --device cuda --repeats 1 ;;
    cce_peaked)
        step cce_peaked 110 python3 benchmarks/linear_ce_memory.py --device cuda --repeats 1 \
            --logits peaked ;;
    *) echo "unknown step $s (allowed: env cce cce_peaked tests sampler kv compress)"; exit 2 ;;
    esac
done
