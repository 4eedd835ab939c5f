#!/bin/bash
# CPU performance measurements for docs/performance.md, on a quiet machine (nothing else running).
# Usage: benchmarks/perf_cpu.sh OUT_DIR OMNIGLOT_DATA_ROOT
set -u
OUT=${1:-docs/results/performance}; D=${2:-../shared/data/omniglot}
mkdir -p "$OUT"; B=.venv/bin/bilevel; T=$(mktemp -d)
log() { echo "$@" | tee -a "$OUT/perf.log"; }
: > "$OUT/perf.log"
log "# $(date -u) $(nproc) cores, torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"

# 1. ours against higher and TorchOpt, one thread, same tasks (gradients checked first)
$B bench --meta-batch 8 --inner-steps 1,5 --queries 15 --repeats 7 --threads 1 --net maxpool \
    --out "$OUT/cpu-bench.json" 2>&1 | grep -v Warning | tee -a "$OUT/perf.log"

# 2. threads: one process alone, 1 vs 2 intra-op threads (seconds per iteration from summary.json)
spi() { .venv/bin/python -c "import json,sys; print(round(json.load(open(sys.argv[1]))['seconds_per_iteration'], 4))" "$1/summary.json"; }
for th in 1 2; do
  $B train --benchmark sinusoid --method imaml-gd --iterations 60 --val-every 1000 --quiet --threads $th --out $T/sin$th >/dev/null 2>&1
  $B train --benchmark omniglot --ways 5 --shots 1 --method maml --meta-batch 8 --iterations 6 --val-every 1000 --quiet \
      --threads $th --data-root $D --out $T/omn$th >/dev/null 2>&1
  log "alone, threads $th: sinusoid imaml-gd $(spi $T/sin$th) s/it, omniglot 5w1s maml (meta-batch 8) $(spi $T/omn$th) s/it"
done
# 3. beside a busy process (another training job with one thread)
$B train --benchmark omniglot --ways 5 --shots 1 --method maml --meta-batch 8 --iterations 1000 --val-every 1000 --quiet \
    --threads 1 --data-root $D --out $T/busy >/dev/null 2>&1 &
BUSY=$!; sleep 15
for th in 1 2; do
  timeout 300 $B train --benchmark sinusoid --method imaml-gd --iterations 60 --val-every 1000 --quiet --threads $th \
      --out $T/bsin$th >/dev/null 2>&1 && log "beside a busy process, threads $th: sinusoid imaml-gd $(spi $T/bsin$th) s/it" \
      || log "beside a busy process, threads $th: sinusoid imaml-gd did not finish 60 iterations in 300 s"
done
kill $BUSY; wait $BUSY 2>/dev/null

# 4. data-parallel: 1 vs 2 processes, one thread each, Omniglot 5w1s iMAML-GD, global meta-batch 8
$B train --benchmark omniglot --ways 5 --shots 1 --method imaml-gd --meta-batch 8 --iterations 8 --val-every 1000 --quiet \
    --threads 1 --data-root $D --out $T/ddp1 >/dev/null 2>&1
OMP_NUM_THREADS=1 .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 2 -m bilevel train \
    --benchmark omniglot --ways 5 --shots 1 --method imaml-gd --meta-batch 8 --iterations 8 --val-every 1000 --quiet \
    --data-root $D --out $T/ddp2 >/dev/null 2>&1
log "data-parallel, Omniglot 5w1s imaml-gd, global meta-batch 8, one thread per process: 1 process $(spi $T/ddp1) s/it, 2 processes $(spi $T/ddp2) s/it"

# 5. the README's main job, wall time: one method at a time with 2 threads (before) vs 2 at once, 1 thread each (now)
for mode in "--jobs 1 --threads 2" "--jobs 2"; do
  s=$(date +%s.%N)
  $B compare --benchmark sinusoid $mode --out $T/cmp-${mode// /} >/dev/null 2>&1
  log "main job (bilevel compare --benchmark sinusoid $mode): $(.venv/bin/python -c "print(round($(date +%s.%N) - $s, 1))") s wall"
done
rm -rf "$T"
