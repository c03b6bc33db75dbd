#!/usr/bin/env bash
# lorafit on a CUDA GPU, checked end to end, then the rest of a time budget spent on the converged E2E rows.
#
#   bash bench/gpu_check.sh [MINUTES]        on a GPU machine after `make install-cuda` (default budget 60)
#   bash bench/gpu_check.sh --reference      on a CPU: (re)write the CPU loss curve the check compares with
#
# Steps (each prints PASS/FAIL; the first FAIL stops the script with exit 1):
#   1. facts: GPU, driver, torch and its CUDA, CPU flags
#   2. the cuda-marked tests (pytest -m cuda): GPU losses and greedy tokens equal the CPU's
#   3. the quickstart recipe trains on the GPU (summary.json records the device) and its loss falls
#   4. a short E2E training (60 steps, fp32, no dropout, bucketed batches) on the GPU follows the CPU curve
#      in bench/reference/e2e-short-cpu.json: every validation loss within 1% (relative)
#   5. lorafit generate with that adapter on the GPU, and one request through lorafit serve on the GPU
#   6. bench/results.py run --tables converged-e2e with the minutes left (rows resume from checkpoints)
# Output: bench/out/gpu_check/ (log.txt and the run directories); results/rows/*.json for finished rows.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LORAFIT="$(dirname "$PY")/lorafit"
OUT=${GPU_CHECK_OUT:-bench/out/gpu_check}
REFERENCE=bench/reference/e2e-short-cpu.json
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false LORAFIT_DATA=${LORAFIT_DATA:-$PWD/../shared/data}
mkdir -p "$OUT"
started=$(date +%s)

# The short E2E run both sides share: same data, seed, init and batches; fp32 and no dropout, so the
# two devices differ only in how their kernels round.
short_e2e() {  # $1: run dir
  "$LORAFIT" train recipes/e2e-smollm2.yaml -o "$1" --overwrite --json --quiet \
    --set precision=fp32 --set lora.dropout=0 --set train.batching=bucket --set data.max_train_examples=480 \
    --set data.max_valid_examples=64 --set train.eval_every=20 --set train.warmup_steps=10 \
    --set eval.at_end=false --set eval.show_examples=0 --set log.plot=false > "$1.summary.json"
}

valid_curve() {  # $1: run dir -> JSON list of [step, valid_loss]
  "$PY" -c 'import json,sys; print(json.dumps([[r["step"], r["valid_loss"]] for r in map(json.loads, open(sys.argv[1])) if "valid_loss" in r]))' "$1/metrics.jsonl"
}

if [ "${1:-}" = "--reference" ]; then
  LORAFIT_DEVICE=cpu short_e2e "$OUT/e2e-short-cpu"
  mkdir -p "$(dirname "$REFERENCE")"
  "$PY" - "$OUT/e2e-short-cpu" "$(valid_curve "$OUT/e2e-short-cpu")" > "$REFERENCE" <<'EOF'
import json, platform, sys, torch
summary = json.load(open(sys.argv[1] + ".summary.json"))
print(json.dumps({"what": "bench/gpu_check.sh short E2E run on CPU (fp32, no dropout, bucket batching, 60 steps)",
                  "valid_curve": json.loads(sys.argv[2]), "machine": summary["machine"],
                  "torch": torch.__version__, "python": platform.python_version()}, indent=1))
EOF
  echo "wrote $REFERENCE"
  exit 0
fi

BUDGET_MIN=${1:-60}
exec > >(tee -a "$OUT/log.txt") 2>&1
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; exit 1; }
export LORAFIT_DEVICE=cuda

echo "== 1. facts ($(date -u +%FT%TZ))"
nvidia-smi -L || true
"$PY" -c 'import torch, transformers; assert torch.cuda.is_available(), "torch sees no GPU"; print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(), "transformers", transformers.__version__)' \
  || fail "torch with CUDA (make install-cuda)"
grep -o -m1 -E 'avx512_bf16|amx_bf16|avx2' /proc/cpuinfo | sort -u | tr '\n' ' '; echo

echo "== 2. cuda-marked tests"
"$PY" -m pytest -q -m cuda tests && pass "cuda tests" || fail "cuda tests"

echo "== 3. quickstart on the GPU"
"$LORAFIT" train recipes/quickstart.yaml -o "$OUT/quickstart" --overwrite --json --quiet > "$OUT/quickstart.summary.json" \
  || fail "quickstart training"
"$PY" - "$OUT/quickstart.summary.json" <<'EOF' && pass "quickstart" || fail "quickstart"
import json, sys
s = json.load(open(sys.argv[1]))
print("device", s["machine"].get("device"), "valid loss", s["initial_valid_loss"], "->", s["final_valid_loss"], "in", s["seconds"], "s")
assert s["machine"].get("device", "").startswith("cuda"), "did not train on the GPU"
assert s["final_valid_loss"] < 0.5 * s["initial_valid_loss"], "the validation loss did not fall by half"
EOF

echo "== 4. short E2E on the GPU vs the CPU curve"
short_e2e "$OUT/e2e-short-gpu" || fail "short E2E training"
"$PY" - "$REFERENCE" "$(valid_curve "$OUT/e2e-short-gpu")" <<'EOF' && pass "GPU curve follows the CPU curve" || fail "GPU curve"
import json, sys
cpu = json.load(open(sys.argv[1]))["valid_curve"]
gpu = json.loads(sys.argv[2])
assert [s for s, _ in cpu] == [s for s, _ in gpu], (cpu, gpu)
worst = max(abs(g - c) / c for (_, c), (_, g) in zip(cpu, gpu))
for (step, c), (_, g) in zip(cpu, gpu):
    print(f"step {step:3d}  cpu {c:.4f}  gpu {g:.4f}")
print(f"largest relative difference {worst:.2e}")
assert worst < 0.01
EOF

echo "== 5. generate and serve on the GPU"
printf '%s\n' '{"prompt": "name[The Eagle], eatType[coffee shop], food[French]", "adapter": "e2e", "max_new_tokens": 24}' \
  '{"prompt": "name[Alimentum], area[city centre]", "max_new_tokens": 24}' > "$OUT/requests.jsonl"
"$LORAFIT" generate --model smollm2-135m --adapter "e2e=$OUT/e2e-short-gpu/adapter" -i "$OUT/requests.jsonl" \
  -o "$OUT/generated.jsonl" && [ "$(wc -l < "$OUT/generated.jsonl")" = 2 ] && pass "generate" || fail "generate"
port=$((20000 + RANDOM % 20000))
"$LORAFIT" serve --model smollm2-135m --adapter "e2e=$OUT/e2e-short-gpu/adapter" --port "$port" > "$OUT/serve.log" 2>&1 &
server=$!
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 1; done
curl -sf "http://127.0.0.1:$port/v1/completions" -H 'content-type: application/json' \
  -d '{"model": "e2e", "prompt": "name[The Eagle], food[French]", "max_tokens": 16}' > "$OUT/served.json" \
  && pass "serve: $(head -c 200 "$OUT/served.json")" || { kill "$server"; fail "serve (see $OUT/serve.log)"; }
kill "$server"; wait "$server" || true

left_min=$(( BUDGET_MIN - ($(date +%s) - started) / 60 ))
echo "== 6. converged E2E rows for the ${left_min} minutes left"
if [ "$left_min" -gt 5 ]; then
  hours=$("$PY" -c "print(round(($left_min - 2) / 60, 3))")
  "$PY" bench/results.py run --tables converged-e2e --jobs 1 --hours "$hours" || echo "(stopped at the budget: run again to continue)"
  "$PY" bench/results.py report --converged
fi
echo "done in $(( ($(date +%s) - started) / 60 )) min"
