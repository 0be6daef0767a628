#!/usr/bin/env bash
# On one GPU machine, in one go:
#  1. xray_jax next to PyTorch's fast path (benchmarks/torch_reference.py --fast) on the
#     same GPU: the CNN, ResNet-18 and ResNet-50 at 224 px, bfloat16, batch 256, alternating,
#     2 rounds, each of ours with a profile of its step;
#  2. the input pipeline with the augmentation in the step (data.augment_on=device, image
#     cache on) against the train step, for the CNN and ResNet-50 (input_over_train);
#  3. the GPU recipe (ResNet-50, bfloat16, batch 256) trained on the data, its time to
#     validation AUC 0.99, and an evaluation of its last checkpoint on the external set.
#
#   bash benchmarks/gpu.sh /path/to/chest_xray /tmp/gpu_results
#
# DATA holds train/ and test/ (the public layout). Needs jax with CUDA, and torch with
# triton for the reference. Writes one JSON file and one log per measurement into OUT.
# Overrides (environment): PYTHON, WORKERS (grain workers; default: cores - 2), STAGES
# (default "side input recipe"), SIDE_MODELS, STEPS, EPOCHS, and for a smoke run on a CPU
# RES, BATCH and TORCH_ARGS (default --device=cuda,--fast).
set -uo pipefail
data=${1:?usage: gpu.sh DATA_DIR OUT_DIR}
out=${2:?usage: gpu.sh DATA_DIR OUT_DIR}
python=${PYTHON:-python3}
workers=${WORKERS:-$(($(nproc) - 2))}
steps=${STEPS:-20}
stages=${STAGES:-side input recipe}
mkdir -p "$out"
# JAX takes 45% of the GPU's memory, leaving room for PyTorch's process beside it.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
res=${RES:-224}
gpu=(--config.model.dtype=bfloat16 --config.training.global_batch_size="${BATCH:-256}")

# run NAME COMMAND...: COMMAND's output to OUT/NAME.log; a failure is reported, and the
# measurements after it still run.
run() {
  local name=$1
  shift
  echo "$(date +%T) $name"
  "$@" >"$out/$name.log" 2>&1
  local status=$?
  if ((status)); then echo "$(date +%T) $name FAILED (exit $status): $out/$name.log"; fi
}

bench() {
  local name=$1
  shift
  run "$name" "$python" -m xray_jax.benchmark --json="$out/$name.json" "$@"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; } >"$out/gpu.txt" 2>&1
"$python" -c "import jax, flax, torch; print(jax.__version__, flax.__version__, \
torch.__version__, jax.devices())" >>"$out/gpu.txt" 2>&1

if [[ $stages == *side* ]]; then
  for model in ${SIDE_MODELS:-cnn resnet18 resnet50}; do
    bench "side_$model" --config="configs/pneumonia.py:model=$model,res=$res" "${gpu[@]}" \
      --steps="$steps" --warmup=3 --rounds=2 --compare_torch \
      --torch_script=benchmarks/torch_reference.py --torch_python="$python" \
      --torch_args="${TORCH_ARGS:---device=cuda,--fast}" --profile_dir="$out/profile_$model"
  done
fi

if [[ $stages == *input* ]]; then
  for model in cnn resnet50; do
    bench "input_$model" --config="configs/pneumonia.py:model=$model,res=$res" "${gpu[@]}" \
      --config.data.augment_on=device --config.data.num_workers="$workers" \
      --steps="$steps" --data_dir="$data" --input_batches=60
  done
fi

if [[ $stages == *recipe* ]]; then
  workdir="$out/recipe"
  run recipe_train "$python" -m xray_jax.main --config="configs/pneumonia.py:model=resnet50,res=$res" \
    --workdir="$workdir" --config.data.dir="$data" "${gpu[@]}" \
    --config.data.num_workers="$workers" --config.data.eval_sets=external=test \
    ${EPOCHS:+--config.training.num_epochs=$EPOCHS}
  run recipe_time "$python" benchmarks/time_to_accuracy.py "$workdir" --target=0.99
  run recipe_external "$python" -m xray_jax.evaluate --workdir="$workdir" --split=external
fi
echo "$(date +%T) done: $out"
