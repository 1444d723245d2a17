#!/usr/bin/env bash
# Issue 20: every AHCL and MiLAN row of docs/results.json retrained with --fine-code layout and
# evaluated through Milvus Lite (--eval), one archive per call; resumable (a finished bundle is
# skipped, an AHCL run continues from its checkpoint). Run from the repo root with the project's
# venv active; the table: python export/scripts/layout_remeasure.py runs/layout_results_*.json
#   bash export/scripts/layout_remeasure.sh eurosat    # and nwpu12 (two at a time on 2 cores)
# DATA (default ../shared/data) is the folder holding the archive.
set -u
SET=$1
DATA=${DATA:-../shared/data}
R=runs/layout_results_$SET.json
mkdir -p runs/logs runs/bundles
done_() { [ -f "runs/bundles/$1/manifest.json" ] && [ -f "runs/logs/$1.done" ]; }
ahcl() {  # the recorded AHCL command (16/32 bits: --eval-every 2) plus --fine-code layout
  local K=$1 B=lay-ahcl-$SET-$1
  done_ "$B" && return
  echo "$(date -u +%FT%TZ) start $B"
  python -m rsir_train train ahcl --data "$DATA/$SET" --bits "$K" --out "runs/bundles/$B" \
    --work-dir "runs/bundles/$B.work" --split-file "runs/splits/$SET-80-20-seed0.json" $2 \
    --cache-dir runs/cache --eval --results "$R" --threads 1 --resume --fine-code layout \
    > "runs/logs/$B.log" 2>&1 && touch "runs/logs/$B.done"
  echo "$(date -u +%FT%TZ) end $B rc=$?"
}
milan() {  # the recorded MiLAN command plus --fine-code layout
  local P=$1 K=$2 B=lay-milan-$SET-$1-$2
  done_ "$B" && return
  echo "$(date -u +%FT%TZ) start $B"
  python -m rsir_train train milan --data "$DATA/$SET" --bits "$K" --out "runs/bundles/$B" \
    --split-file "runs/splits/$SET-$P-seed0.json" --protocol "$P" --threads 1 \
    --cache-dir runs/cache --eval --results "$R" --fine-code layout \
    > "runs/logs/$B.log" 2>&1 && touch "runs/logs/$B.done"
  echo "$(date -u +%FT%TZ) end $B rc=$?"
}
ahcl 16 "--eval-every 2"
ahcl 32 "--eval-every 2"
for P in 80-20 60-40; do for K in 16 32 64; do milan "$P" "$K"; done; done
ahcl 64 ""
echo "$(date -u +%FT%TZ) $SET finished"
