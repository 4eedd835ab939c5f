#!/usr/bin/env bash
# The iMAML reproduction's GPU checks, as one script (docs/reproduction.md):
#   1. Fig. 2b: memory and time per meta-iteration against inner steps (20-way 5-shot, vmap over the meta-batch);
#   2. the training runs listed in RUNS_FILE (one per line: NAME then `bilevel train` flags), all at once, each
#      followed by `bilevel evaluate` on 600 test tasks, until SECONDS_FOR_RUNS have passed.
# Usage: benchmarks/gpu_reproduce.sh OMNIGLOT_DIR OUT_DIR RUNS_FILE SECONDS_FOR_RUNS
# Run folders land in OUT_DIR/runs/NAME and are packed into OUT_DIR/runs.tar.gz (metrics, configs, evaluations and
# checkpoints), so that a later machine can continue them: tar xzf, then `bilevel train --resume OUT_DIR/runs/NAME`.
set -uo pipefail
DATA=$1 OUT=$2 RUNS_FILE=$3 SECONDS_FOR_RUNS=$4
PY=${PYTHON:-python3}
mkdir -p "$OUT/runs"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/device.txt"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" >> "$OUT/device.txt"
cat "$OUT/device.txt"
$PY -c "import bilevel, bilevel.adapters, bilevel.reproduce.memory; print('bilevel from', bilevel.__file__)" || { echo "bilevel does not import: install it (pip install -e .) or put a copy with bilevel/adapters on PYTHONPATH"; exit 1; }
DEVICE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
$PY -c "from bilevel.data import load_omniglot; load_omniglot('$DATA', progress=False)"  # decode the archives once

echo "== 1. Fig. 2b (memory, $DEVICE) $(date +%T)"
$PY -m bilevel reproduce memory --device "$DEVICE" --vectorize on --ways "${MEM_WAYS:-20}" --shots "${MEM_SHOTS:-5}" \
    --meta-batch "${MEM_BATCH:-4}" --steps "${MEM_STEPS:-1,5,10,20,40,100}" --repeats 3 --point-timeout 120 \
    --data-root "$DATA" --out "$OUT/memory" 2>&1 | grep -v "memory points"

echo "== 2. training runs of $RUNS_FILE, all at once, for at most $SECONDS_FOR_RUNS s $(date +%T)"
pids=()
while read -r name flags; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    ( $PY -m bilevel train --device "$DEVICE" --data-root "$DATA" --out "$OUT/runs/$name" --quiet $flags \
        > "$OUT/runs/$name.log" 2>&1 \
      && $PY -m bilevel evaluate "$OUT/runs/$name" --tasks "${EVAL_TASKS:-600}" --quiet >> "$OUT/runs/$name.log" 2>&1 ) &
    pids+=($!)
done < "$RUNS_FILE"
deadline=$((SECONDS + SECONDS_FOR_RUNS))
while [ $SECONDS -lt $deadline ] && kill -0 "${pids[@]}" 2>/dev/null; do sleep 5; done
pkill -f -- "--out $OUT/runs/"; pkill -f -- "evaluate $OUT/runs/"; sleep 2  # only this script's runs
echo "== what each run reached $(date +%T)"
for log in "$OUT"/runs/*.log; do
    d=${log%.log}
    echo "$(basename "$d"): $(grep -c '"split": "train"' "$d/metrics.jsonl" 2>/dev/null) iterations logged;" \
         "val: $(grep '"split": "val"' "$d/metrics.jsonl" 2>/dev/null | tail -1 | cut -c1-90); $(tail -1 "$log")"
done
tar czf "$OUT/runs.tar.gz" -C "$OUT" runs
