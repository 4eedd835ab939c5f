#!/bin/bash
# The whole GPU comparison in one call (under 8 minutes on an H100/H200), JSON out:
#   1. bilevel bench: ours vs higher (MAML) and TorchOpt (iMAML), Omniglot-shaped 5-way 1-shot,
#      15 queries, max-pool conv4, meta-batch 32, 1/5/16/40 inner steps, gradients checked first;
#   2. iMAML's peak memory at 1 and 100 inner steps (flat?) and MAML's, each in a fresh process;
#   3. --memory-budget: the chunk size it picks for Omniglot MAML, meta-batch 32 (CUDA only: not with SMALL=1).
# Usage: benchmarks/gpu_bench.sh OUT_DIR [DATA_ROOT]     (SMALL=1: a CPU smoke test of the script)
set -eu
OUT=${1:?OUT_DIR}; D=${2:-}
mkdir -p "$OUT"
if [ "${SMALL:-0}" = 1 ]; then
  BENCH="--device cpu --meta-batch 2 --inner-steps 1 --queries 1 --repeats 1 --channels 4 --threads 1"
  MEM="--device cpu --steps 1,2 --ways 2 --shots 1 --repeats 1"
else
  BENCH="--device cuda --meta-batch 32 --inner-steps 1,5,16,40 --queries 15 --repeats 5"
  MEM="--device cuda --steps 1,100 --ways 20 --shots 5 --repeats 2"
fi
python -m bilevel bench $BENCH --out "$OUT/bench.json" 2>&1 | grep -v -i warning | tee "$OUT/bench.log"
if [ -n "$D" ]; then
  python -m bilevel reproduce memory $MEM --data-root "$D" --out "$OUT/memory" 2>&1 | tail -20 | tee "$OUT/memory.log"
fi
if [ -n "$D" ] && [ "${SMALL:-0}" != 1 ]; then  # a memory budget is measured with CUDA's allocator
  python -m bilevel train --benchmark omniglot --data-root "$D" --method maml --inner-steps 5 --queries 15 \
    --meta-batch 32 --iterations 2 --val-every 2 --val-tasks 2 --device cuda --memory-budget 1000 --quiet \
    --out "$OUT/budget" 2>&1 | grep -v -i warning | tail -5 | tee "$OUT/budget.log"
  python - "$OUT/budget/summary.json" <<'PY' || echo "memory budget: no summary (see $OUT/budget.log)"
import json, sys
s = json.load(open(sys.argv[1]))
print("memory budget 1000 MB: chunk size", s["chunk_size_chosen"], "of 32; peak", round(s["peak_memory_mb"]), "MB")
PY
fi
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
report = json.load(open(f"{out}/bench.json"))
print("machine:", report["machine"], "| checks:", [(c["algorithm"], c["peer"], f'{c["rel_err"]:.1e}') for c in report["checks"]])
PY
