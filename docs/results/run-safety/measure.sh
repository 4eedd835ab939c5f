#!/bin/bash
# Issue 19's measured cases, rerun (sinusoid, smallest runs). Run from an empty folder, as root (5a mounts a
# 160 KB tmpfs); its output, paths made relative and progress bars dropped, is outcome.txt beside it.
export OMP_NUM_THREADS=1
S="--benchmark sinusoid --meta-batch 2 --inner-steps 2 --val-tasks 4 --device cpu --quiet"
F="$S --iterations 3 --val-every 3"
LONG="$S --iterations 100000 --val-every 100000 --checkpoint-every 20"
say() { echo; echo "== $*"; }
py() { python -c "$1"; }

say "1. two trains on one --out"
bilevel train --method maml $LONG --out r1 2>&1 & P=$!
while [ ! -f r1/checkpoint.pt ]; do sleep 0.1; done
bilevel train --method imaml-gd $LONG --out r1 2>&1; echo "second train: exit $? (the first is PID $P)"
bilevel train --resume r1 2>&1; echo "resume while the first runs: exit $?"
bilevel evaluate r1 --tasks 4 2>&1; echo "evaluate while the first runs: exit $?"
kill -9 $P; wait $P 2>/dev/null; echo "first killed with SIGKILL: exit $?; lock file left: $(cat r1/.bilevel.lock 2>/dev/null || echo none)"
bilevel train --resume r1 --quiet 2>&1 & P=$!; sleep 3; kill -TERM $P; wait $P; echo "resume after the SIGKILL, then SIGTERM: exit $?"

say "2. train --out on a finished run"
bilevel train --method maml $F --out r2 2>&1 && bilevel evaluate r2 --tasks 4 --quiet 2>&1
bilevel train --method fomaml $F --out r2 2>&1; echo "train over it: exit $?; metrics lines $(wc -l < r2/metrics.jsonl), files: $(ls r2 | tr '\n' ' ')"
py "from bilevel.fewshot import TrainConfig, train; train(TrainConfig(benchmark='sinusoid', method='fomaml', iterations=2, val_every=2, meta_batch=2, inner_steps=2, val_tasks=4, device='cpu'), 'r2', overwrite=True, progress=False)"
echo "train(..., overwrite=True): exit $?; metrics lines $(wc -l < r2/metrics.jsonl), files: $(ls r2 | tr '\n' ' ')"

say "3. config.json edited by hand"
bilevel train --method maml $F --out r3 2>&1
cp r3/config.json r3/config.saved
py "import json; p='r3/config.json'; c=json.load(open(p)); c.update(method='imaml-gd', lam=5.0); json.dump(c, open(p,'w'))"
bilevel train --resume r3 --iterations 4 2>&1; echo "resume, method and lam edited: exit $?"
echo '{}' > r3/config.json
bilevel evaluate r3 --tasks 4 2>&1; echo "evaluate, config.json = {}: exit $?"
bilevel train --resume r3 --iterations 4 2>&1; echo "resume, config.json = {}: exit $?"
py "import json; p='r3/config.json'; c=json.load(open('r3/config.saved')); c.update(net='relu'); json.dump(c, open(p,'w'))"
bilevel train --resume r3 --iterations 4 2>&1; echo "resume, net edited (the network changes): exit $?"
py "import json; p='r3/config.json'; c=json.load(open('r3/config.saved')); c.update(ways=3); json.dump(c, open(p,'w'))"
bilevel evaluate r3 --tasks 4 2>&1; echo "evaluate, ways edited (the network's shape changes): exit $?"
py "import json; p='r3/config.json'; c=json.load(open('r3/config.saved')); c.update(benchmark='omniglot'); json.dump(c, open(p,'w'))"
bilevel train --resume r3 --iterations 4 2>&1; echo "resume, benchmark edited: exit $?"
py "from bilevel.fewshot import evaluate; evaluate('r3', tasks=4, progress=False, data_root='/nowhere')" 2>&1 | tail -1 | sed 's/^/evaluate(), past the CLI, raises: /'
py "import json; p='r3/config.json'; c=json.load(open('r3/config.saved')); c.update(data_root='/moved/data', device='auto'); json.dump(c, open(p,'w'))"
bilevel train --resume r3 --iterations 4 2>&1; echo "resume, data_root and device edited (where things are): exit $?"

say "4. SIGTERM and SIGHUP"
for sig in TERM HUP; do
  bilevel train --method maml $LONG --checkpoint-every 100000 --out r4$sig 2>&1 & P=$!
  while [ ! -s r4$sig/metrics.jsonl ] || [ $(wc -l < r4$sig/metrics.jsonl) -lt 5 ]; do sleep 0.1; done
  kill -$sig $P; wait $P; echo "SIG$sig: exit $?; checkpoint iteration $(py "from bilevel.fewshot.checkpoint import load_checkpoint as l; print(l('r4$sig/checkpoint.pt')['iteration'])"), last logged $(tail -1 r4$sig/metrics.jsonl | py 'import json,sys; print(json.loads(sys.stdin.read())["iteration"])')"
done

say "5a. a full disk (a 160 KB tmpfs)"
mkdir -p full && mount -t tmpfs -o size=160k tmpfs full
bilevel train --method maml $S --iterations 100000 --val-every 100000 --checkpoint-every 50 --out full/run 2>&1; echo "exit $?"
ls -la full/run | tail -n +2
tail -c 200 full/run/metrics.jsonl | tail -1 | py 'import sys; l=sys.stdin.read(); print("last line ends with a newline:", l.endswith("\n"))'
py "import json; ls=open('full/run/metrics.jsonl').read().splitlines(); [json.loads(l) for l in ls]; print(len(ls), 'lines, all whole JSON')"
py "from bilevel.fewshot.checkpoint import load_checkpoint as l; print('checkpoint loads, iteration', l('full/run/checkpoint.pt')['iteration'])"
umount full
mount -t tmpfs -o size=160k tmpfs full
bilevel train --method maml $S --iterations 100000 --val-every 100000 --checkpoint-every 50 --out full/run 2>&1 & P=$!
while [ ! -f full/run/checkpoint.pt ]; do sleep 0.05; done; dd if=/dev/zero of=full/filler bs=1k 2>/dev/null
wait $P; echo "the disk filled after the first checkpoint: exit $?"
py "import json; ls=open('full/run/metrics.jsonl', 'rb').read(); print('metrics.jsonl ends with a newline:', ls.endswith(b'\\n'), '|', len([json.loads(l) for l in ls.decode().splitlines()]), 'whole lines')"
py "from bilevel.fewshot.checkpoint import load_checkpoint as l; print('checkpoint loads, iteration', l('full/run/checkpoint.pt')['iteration'])"
rm full/filler; bilevel train --resume full/run --iterations 60 --quiet 2>&1; echo "space freed, resume: exit $?"
umount full

say "5b. damaged checkpoints and logs"
bilevel train --method maml $F --checkpoint-every 1 --out r5 2>&1; cp r5/checkpoint.pt r5/good.pt
resave() { py "import torch; from bilevel.fewshot.checkpoint import load_checkpoint, state_digest; s=load_checkpoint('r5/good.pt'); $1; torch.save({**s, 'sha256': state_digest(s)}, 'r5/checkpoint.pt')"; }
resave "del s['model']"; bilevel evaluate r5 --tasks 4 2>&1; echo "no model, evaluate: exit $?"; bilevel train --resume r5 --iterations 4 2>&1; echo "no model, resume: exit $?"
resave "k=next(iter(s['model'])); s['model'][k]=torch.zeros(7)"; bilevel evaluate r5 --tasks 4 2>&1; echo "wrong shape: exit $?"
head -c 300 /dev/urandom > r5/checkpoint.pt; bilevel evaluate r5 --tasks 4 2>&1; echo "junk bytes: exit $?"
cp r5/good.pt r5/checkpoint.pt; cp r5/metrics.jsonl r5/metrics.good
for bad in '42' '[1,2]' '{"iteration": "2", "split": "train"}'; do
  (head -1 r5/metrics.good; echo "$bad"; tail -n +2 r5/metrics.good) > r5/metrics.jsonl
  bilevel train --resume r5 --iterations 4 2>&1; echo "metrics line $bad: exit $?"
done
cp r5/metrics.good r5/metrics.jsonl

say "6. checking a checkpoint on load"
py "
data = bytearray(open('r5/good.pt','rb').read())
import torch; from bilevel.fewshot.checkpoint import load_checkpoint
w = next(iter(load_checkpoint('r5/good.pt')['model'].values())).numpy().tobytes()
data[data.find(w[:64]) + 5] ^= 0x10; open('r5/checkpoint.pt','wb').write(data)"
bilevel evaluate r5 --tasks 4 2>&1; echo "one bit flipped in a weight: exit $?"
resave "k=next(iter(s['model'])); s['model'][k]=torch.full_like(s['model'][k], float('nan'))"
bilevel evaluate r5 --tasks 4 2>&1; echo "NaN checkpoint, evaluate: exit $?"; bilevel train --resume r5 --iterations 4 2>&1; echo "NaN checkpoint, resume: exit $?"
cp r5/good.pt r5/checkpoint.pt
py "
import bilevel.fewshot.trainer as t; t.mean_ci95 = lambda s: (float('nan'), float('nan')); t.evaluate('r5', tasks=4, progress=False)"
grep -c NaN r5/evaluation-test.json; py "import json; print('evaluation-test.json mean:', json.load(open('r5/evaluation-test.json'))['mean'])"

say "7. leftovers, an empty resume, moved data"
touch r5/.checkpoint.pt.4242.0a1b2c3d.tmp; bilevel train --resume r5 --iterations 4 2>&1; echo "resume: exit $?; temp files left: $(ls -a r5 | grep -c '\.tmp$')"
py "import json; p='r5/summary.json'; s=json.load(open(p)); s['peak_memory_mb']=12.5; json.dump(s, open(p,'w'))"
bilevel train --resume r5 --iterations 4 2>&1; echo "resume with nothing left: exit $?; peak_memory_mb $(py "import json; print(json.load(open('r5/summary.json'))['peak_memory_mb'])")"
bilevel train --resume r5 --iterations 5 --data-root /moved 2>&1; echo "CLI --data-root on resume: exit $?"
py "from bilevel.fewshot import train; print(train(None, 'r5', resume=True, iterations=5, data_root='/moved', device='cpu', progress=False)['iterations'])"; echo "train(resume=True, data_root=..., device=...): exit $?"
