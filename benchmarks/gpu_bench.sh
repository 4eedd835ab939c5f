#!/bin/bash
# The whole GPU comparison in one call (under 8 minutes on an H100/H200), JSON out:
#   1. bilevel bench: ours vs higher (MAML) and TorchOpt (iMAML), Omniglot-shaped 5-way 1-shot,
#      15 queries, max-pool conv4, meta-batch 32, 1/5/16/40 inner steps, gradients checked first;
#   2. iMAML's peak memory at 1 and 100 inner steps (flat?) and MAML's, each in a fresh process.
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
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
report = json.load(open(f"{out}/bench.json"))
print("machine:", report["machine"], "| checks:", [(c["algorithm"], c["peer"], f'{c["rel_err"]:.1e}') for c in report["checks"]])
PY
