#!/bin/bash
# Issue 19's cases that need the command line's --overwrite, resume-time --data-root/--device and
# compare's signal forwarding (added after measure.sh ran). Run from an empty folder; the output is
# outcome_cli.txt beside it.
export OMP_NUM_THREADS=1
S="--benchmark sinusoid --meta-batch 2 --inner-steps 2 --val-tasks 4 --device cpu --quiet"
F="$S --iterations 3 --val-every 3"
say() { echo; echo "== $*"; }

say "2. train --out on a finished run, then --overwrite"
bilevel train --method maml $F --out r2 2>&1 && bilevel evaluate r2 --tasks 4 --quiet 2>&1
bilevel train --method fomaml $F --out r2 2>&1; echo "train over it: exit $?; metrics lines $(wc -l < r2/metrics.jsonl)"
bilevel train --method fomaml $F --out r2 --overwrite 2>&1; echo "--overwrite: exit $?; metrics lines $(wc -l < r2/metrics.jsonl), files: $(ls r2 | tr '\n' ' ')"

say "7. --data-root / --device on resume"
bilevel train --method maml $S --iterations 3 --val-every 3 --device auto --out r7 2>&1
bilevel train --resume r7 --iterations 4 --device cpu --data-root elsewhere --quiet 2>&1; echo "resume with --device cpu --data-root elsewhere: exit $?"
bilevel train --resume r7 --iterations 5 --inner-steps 3 --quiet 2>&1; echo "resume with --inner-steps 3 (changes the run): exit $?"

say "4. SIGTERM to bilevel compare"
bilevel compare --benchmark sinusoid --methods maml,fomaml --iterations 100000 --meta-batch 2 --inner-steps 1 \
    --val-every 100000 --val-tasks 4 --jobs 2 --out c4 > c4.out 2>&1 & P=$!
sleep 8
CHILDREN=$(pgrep -P $P -f spawn_main | tr '\n' ' ')
kill -TERM $P; wait $P; echo "compare after SIGTERM: exit $?; its children were: $CHILDREN"
sleep 1; for c in $CHILDREN; do if kill -0 $c 2>/dev/null; then echo "child $c still running"; else echo "child $c gone"; fi; done
tr "\r" "\n" < c4.out | grep -E "SIGTERM|interrupted"
for r in c4/maml c4/fomaml; do python -c "from bilevel.fewshot.checkpoint import load_checkpoint; import json; s=load_checkpoint('$r/checkpoint.pt'); n=open('$r/metrics.jsonl').read().splitlines(); print('$r: checkpoint at iteration', s['iteration'], '; last logged', json.loads(n[-1])['iteration'])"; done
bilevel compare --benchmark sinusoid --methods maml,fomaml --iterations 3 --meta-batch 2 --val-tasks 4 --out c4 2>&1; echo "compare again on c4 without --resume: exit $?"
