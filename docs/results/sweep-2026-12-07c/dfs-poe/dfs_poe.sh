# The selection column of the winning recipe (issue 25): DFS (P 0.1, 8 views, max 8, the pipeline's defaults:
# batched 4 + speculation, bf16 where native) on the 128-step row's per-task adapters, rescored under 8 views
# (float32, rescore's default), then voting v2 vs product of experts vs NVARC, each scored.
set -e
D=/work/wt/s4/runs/sweep/nvarcr128; O=$D/dfs-poe; M=$D/model-nvarc-reduced; A=/work/wt/s4/runs/sweep/sel-nvarcr128/adapters
C=$D/bare_ttft/challenges.json
mkdir -p $O
cd /work/wt/s4c
export OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
.venv/bin/python benchmarks/accuracy.py --task_ids $(.venv/bin/python -c "import json;print(' '.join(json.load(open('$C'))))") --write_tasks $O/solved-tasks.json >/dev/null
.venv/bin/python -c "
import json; t=json.load(open('$O/solved-tasks.json')); json.dump({k:[p['output'] for p in v['test']] for k,v in t.items()}, open('$O/solutions.json','w'))"
t0=$(date +%s)
[ -s $O/dfs.jsonl ] || .venv/bin/python -m pipeline sample --model $M --dataset $C --adapters_dir $A --max_tokens task --engine transformers \
  --predictions_per_task 8 --method dfs --min_prob 0.1 --max_candidates 8 --quiet --output $O/dfs.jsonl
t1=$(date +%s)
[ -s $O/scores.jsonl ] || .venv/bin/python -m pipeline rescore --model $M --dataset $C --adapters_dir $A --predictions $O/dfs.jsonl \
  --views 8 --quiet --output $O/scores.jsonl
t2=$(date +%s)
echo "dfs_seconds $((t1-t0)) rescore_seconds $((t2-t1))"
for m in v2 poe nvarc; do
  S=""; [ $m = v2 ] || S="--scores $O/scores.jsonl"; .venv/bin/python -m pipeline vote --predictions $O/dfs.jsonl --dataset $C $S --method $m --output $O/submission-$m.json >/dev/null
  echo "dfs + $m: $(.venv/bin/python -m pipeline score --submission $O/submission-$m.json --solutions $O/solutions.json | tail -1)"
done
echo "greedy + v2 (the row): $(.venv/bin/python -m pipeline score --submission $D/bare_ttft/submission.json --solutions $O/solutions.json | tail -1)"
