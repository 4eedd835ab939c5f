#!/usr/bin/env bash
# Omniglot 5w1s 1000x8 over seeds, from the worktree at a fixed commit; resumable.
# usage: queue.sh WORKER_ID  (worker k takes jobs k, k+2, ...)
set -u
WT=/work/wt-seeds
OUT=/work/main/runs/omniglot-seeds
. $WT/.venv/bin/activate
export OMP_NUM_THREADS=1
cd $WT
JOBS=(maml:0 maml:1 maml:2 imaml-gd:0 imaml-gd:1 imaml-gd:2 fomaml:0 fomaml:1 fomaml:2)
i=0
for job in "${JOBS[@]}"; do
  if (( i % 2 != $1 )); then i=$((i+1)); continue; fi
  i=$((i+1))
  m=${job%%:*}; s=${job##*:}
  d=$OUT/$m-seed$s
  extra=""
  [[ $m == imaml-gd ]] && extra="--hvp-mode reverse-over-reverse"
  if [[ -f $d/evaluation-test.json ]]; then continue; fi
  if [[ -f $d/summary.json ]] && python - "$d" <<'P'
import json,sys; s=json.load(open(sys.argv[1]+'/summary.json')); sys.exit(0 if s.get('iterations')==1000 else 1)
P
  then :
  elif [[ -f $d/checkpoint.pt ]]; then
    echo "$(date -u +%FT%T) resume $d"
    bilevel train --resume $d --quiet >> $d/console.log 2>&1 || { echo "FAIL resume $d"; continue; }
  else
    mkdir -p $d
    echo "$(date -u +%FT%T) start $d"
    git -C $WT rev-parse HEAD > $d/commit.txt
    bilevel train --benchmark omniglot --method $m --ways 5 --shots 1 --queries 5 --meta-batch 8 \
      --iterations 1000 --val-every 100 --val-tasks 100 --checkpoint-every 100 --seed $s $extra \
      --data-root /work/shared/data/omniglot --out $d --quiet > $d/console.log 2>&1 || { echo "FAIL train $d"; continue; }
  fi
  echo "$(date -u +%FT%T) evaluate $d"
  bilevel evaluate $d --quiet >> $d/console.log 2>&1 || echo "FAIL eval $d"
  echo "$(date -u +%FT%T) done $d"
done
