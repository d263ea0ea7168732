#!/usr/bin/env bash
# What a maintainer with one GPU runs as is, from the repository root (under ten minutes):
#   bench/gpu.sh
# 1. the parity tests with both sides merging on the device (tests/test_parity.py, EVOMERGE_TEST_DEVICE), and a
#    float32 merge scored in bfloat16 there (tests/test_fast_merge.py),
# 2. a 16-evaluation demo search on the zoo: per-candidate merge and scoring times, peak device memory; then
#    8 evaluations with `parents: host` (parents in host memory, each tensor's inputs prefetched to the device),
# 3. `evomerge merge --in-memory` against `mergekit-yaml --cuda` on the demo recipe, tensor by tensor,
# plus `evomerge plan` for the demo recipe, and its estimate against the peak measured for one candidate
# (on the real-model zoo when it was built). Without CUDA every step runs on the CPU (parity on a few
# methods, to spare shared cores) and the CUDA-only parts say they were skipped, so CI can run it too.
# From a fresh clone after README's install it first builds the zoo (recipes/zoo) that the demo recipe names.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
BIN=$(cd "$(dirname "$PYTHON")" && pwd)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  DEVICE=cuda; CUDA_FLAG=--cuda; PARITY=()
  "$PYTHON" -c "import torch; print('device: cuda,', torch.cuda.get_device_name(0))"
else
  DEVICE=cpu; CUDA_FLAG=; PARITY=(-k "test_in_memory_merge_equals_mergekit and (llama-ties or tied-dare_ties or llama-slerp)")
  echo "device: cpu. No CUDA here: skipping the CUDA-only steps (parity on cuda, mergekit-yaml --cuda, peak device memory); running the rest on the CPU"
fi

if [ ! -f recipes/zoo/manifest.json ]; then
  echo "== evomerge zoo build (recipes/zoo, which recipes/demo.yaml names)"
  "$BIN/evomerge" zoo build | tail -1
fi

echo "== evomerge plan recipes/demo.yaml (device $DEVICE)"
"$BIN/evomerge" plan recipes/demo.yaml --device "$DEVICE" 2>&1 | grep -v torch_dtype

echo "== parity tests on $DEVICE (tests/test_parity.py)"
EVOMERGE_TEST_DEVICE=$DEVICE "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_parity.py "${PARITY[@]}" 2>&1 | tail -3

echo "== a float32 merge scored in bfloat16 (CUDA's default) on $DEVICE: the pieced kernels, cast once (tests/test_fast_merge.py)"
EVOMERGE_TEST_DEVICE=$DEVICE "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_fast_merge.py -k cast_once 2>&1 | tail -3

echo "== 16-evaluation demo search on $DEVICE"
"$PYTHON" bench/gpu.py search --evaluations 16 --out "$WORK/run" 2>&1 | grep -v torch_dtype

echo "== 8-evaluation demo search on $DEVICE with parents: host"
"$PYTHON" bench/gpu.py search --evaluations 8 --parents host --out "$WORK/host/run" 2>&1 | grep -v torch_dtype

# the search's copy of the demo recipe names the zoo by absolute paths, which mergekit's card does not look up on the Hub
echo "== evomerge merge --in-memory vs mergekit-yaml ${CUDA_FLAG:-(cpu)} on the demo recipe"
"$BIN/evomerge" merge "$WORK/demo.yaml" "$WORK/in-memory" --in-memory --device "$DEVICE" >"$WORK/merge.log" 2>&1 \
  || { cat "$WORK/merge.log"; exit 1; }
"$BIN/mergekit-yaml" "$WORK/demo.yaml" "$WORK/mergekit" $CUDA_FLAG --random-seed 0 >"$WORK/mergekit.log" 2>&1 \
  || { cat "$WORK/mergekit.log"; exit 1; }
"$PYTHON" bench/gpu.py same "$WORK/in-memory" "$WORK/mergekit"

# the real-model zoo (SmolLM2-135M fine-tunes) when it was built (python -m evomerge.zoo.real), else the demo zoo
if [ -f recipes/zoo-real/manifest.json ]; then
  "$PYTHON" -c "from evomerge.zoo.real import write_real_recipe; write_real_recipe('$WORK', name='plan.yaml')"
else
  echo "(no real-model zoo in recipes/zoo-real: the plan check runs on the demo recipe)"
  cp "$WORK/demo.yaml" "$WORK/plan.yaml"
fi
echo "== evomerge plan's estimate against the measured peak on $DEVICE"
"$PYTHON" bench/gpu.py plan "$WORK/plan.yaml" 2>&1 | grep -v torch_dtype | tail -1
