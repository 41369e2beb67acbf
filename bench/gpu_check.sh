#!/usr/bin/env bash
# The GPU checks of the learners, in one run on a lent GPU machine (no Ray, vLLM or package registry there).
# Prepare here first:   bash ../shared/gpu/wheels.sh        (fills .whl/: deepspeed, diffusers, pydantic, hjson)
# Then, on the device:  bash bench/gpu_check.sh              (carry .whl; results land in $OUT or ./gpu-out)
# 1. learner, aggregation and DDPO tests on CUDA (the `device` fixture picks cuda);
# 2. bench/learner.py on the Qwen2.5 0.5B and 1.5B shapes: packed vs padded, tokens/s, peak memory, MFU.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
timeout 240 python3 -m pytest -q -p no:cacheprovider -x \
  tests/unit/test_robust_aggregators.py tests/unit/test_flag.py tests/unit/test_bucketed_aggregation.py \
  tests/unit/test_attacks.py tests/unit/test_diffusion_sampler.py tests/unit/test_packing.py \
  tests/unit/test_chunked_logprobs.py tests/integration/test_lm_learner.py \
  tests/integration/test_ddpo_learner.py tests/integration/test_learner_micro_batches.py \
  tests/integration/test_learner_memory_options.py 2>&1 | tail -40 > "$out/tests.txt"
timeout 420 python3 bench/learner.py --shapes qwen2.5-0.5b,qwen2.5-1.5b --steps 3 --timeout 200 \
  --out gpu_learner > "$out/bench.txt" 2>&1
cp bench/results/gpu_learner.* "$out/" 2>/dev/null
tail -5 "$out/tests.txt"; tail -12 "$out/bench.txt"
