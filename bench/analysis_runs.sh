#!/usr/bin/env bash
# Train the runs docs/analysis.md analyses: SST-2 (MiniLM-L6) and E2E (SmolLM2-135M), r=8 and r=64,
# seeds 1 and 2, on a small CPU budget (one thread each, one run at a time). Runs that already hold an
# adapter are skipped. Usage: bench/analysis_runs.sh [RUNS_DIR]   (default runs/analysis)
set -u
RUNS=${1:-runs/analysis}
LORAFIT=${LORAFIT:-lorafit}
SST2_STEPS=${SST2_STEPS:-400}
E2E_STEPS=${E2E_STEPS:-50}
RECIPES=${RECIPES:-lorafit/recipes}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 LORAFIT_DATA=${LORAFIT_DATA:-../shared/data}
mkdir -p "$RUNS"
train() {  # NAME RECIPE STEPS SEED RANK [--set ...]
  local name=$1 recipe=$2 steps=$3 seed=$4 rank=$5; shift 5
  [ -f "$RUNS/$name/adapter/adapter_model.safetensors" ] && { echo "skip $name"; return; }
  local start=$SECONDS
  "$LORAFIT" train "$recipe" --set seed="$seed" --set lora.rank="$rank" --set train.max_steps="$steps" \
    --set train.eval_every=0 --set eval.at_end=false "$@" -o "$RUNS/$name" --overwrite --quiet \
    && echo "$name trained in $((SECONDS - start)) s ($steps steps)" || echo "$name FAILED"
}
for seed in 1 2; do
  for rank in 8 64; do
    train "sst2-r$rank-s$seed" "$RECIPES/sst2-minilm.yaml" "$SST2_STEPS" "$seed" "$rank"
  done
done
for seed in 1 2; do
  for rank in 8 64; do
    train "e2e-r$rank-s$seed" "$RECIPES/e2e-smollm2.yaml" "$E2E_STEPS" "$seed" "$rank" \
      --set train.warmup_steps=10 --set data.max_valid_examples=50
  done
done
