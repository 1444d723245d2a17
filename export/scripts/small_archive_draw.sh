#!/usr/bin/env bash
# One small-archive draw of issue 21's table (docs/results.md "Small archives"), in two lanes
# that can run at once on a 2-core machine, each resumable (--resume; a finished bundle is skipped).
#
#   bash export/scripts/small_archive_draw.sh SET PER_CLASS SEED LANE [--uneven]
#     SET: nwpu12 | eurosat (read from $RSIR_SHARED_DATA/SET, default ../shared/data/SET)
#     LANE: draw  - draw the subset (symbolic links) and its two splits; run this first, alone
#           A     - AHCL defaults (model selection) at 64 then 16 bits
#           B     - the linear hash (80/20 and 60/40), AHCL --schedule authors at 16/32/64,
#                   MiLAN defaults and --authors at 16/64 on the 60/40 split, AHCL defaults at 32
#
# Everything goes under runs/ (git-ignored): runs/data/T, runs/splits/T-*.json,
# runs/bundles/small-T-*, runs/logs/small-T-*.log, runs/small_results_T.json (AHCL, through
# Milvus by --eval), runs/small_milan6040_T.json, runs/small_baselines_T.jsonl
# with T = SET-PER_CLASS-sSEED. Every command is printed with `uptime` before and after it.
# Run it from a frozen clone so later commits cannot change a run midway, for example
#   git clone -q /path/to/repo /tmp/runX && cd /work/repo &&
#   PYTHONSAFEPATH=1 PYTHONPATH=/tmp/runX:/tmp/runX/export nice -n 5 bash /tmp/runX/export/scripts/small_archive_draw.sh eurosat 60 1 A
set -euo pipefail
SET=$1 PER=$2 SEED=$3 LANE=$4 UNEVEN=${5:-}
T="$SET-$PER-s$SEED"
D="runs/data/$T"
S8="runs/splits/$T-80-20-seed0.json"
S6="runs/splits/$T-60-40-seed0.json"
SRC="${RSIR_SHARED_DATA:-../shared/data}/$SET"
HERE="$(cd "$(dirname "$0")" && pwd)"
mkdir -p runs/logs runs/splits runs/bundles runs/cache

step() {  # step LOGNAME COMMAND...: skip when LOGNAME's log says done, else run and log
    local log="runs/logs/small-$1.log"; shift
    if [[ -f "$log" ]] && grep -q '^STEP DONE' "$log"; then echo "skip $log (done)"; return 0; fi
    { echo "+ $*"; uptime; } >> "$log"
    local start=$SECONDS
    "$@" >> "$log" 2>&1
    { uptime; echo "STEP DONE in $((SECONDS - start)) s"; } >> "$log"
    echo "$log: done in $((SECONDS - start)) s"
}

ahcl() {  # ahcl sel|authors BITS
    local extra=(); [[ $1 == authors ]] && extra=(--schedule authors)
    step "$T-$1-$2" python -m rsir_train train ahcl --data "$D" --bits "$2" "${extra[@]}" \
        --out "runs/bundles/small-$T-$1-$2" --split-file "$S8" --eval-every 4 \
        --cache-dir runs/cache --eval --results "runs/small_results_$T.json" --threads 1 --resume
}

milan6040() {  # milan6040 defaults|authors BITS
    local extra=(); [[ $1 == authors ]] && extra=(--authors)
    step "$T-milan6040-$1-$2" python -m rsir_train train milan --data "$D" --bits "$2" "${extra[@]}" \
        --out "runs/bundles/small-$T-milan6040-$1-$2" --split-file "$S6" --protocol 60-40 --eval \
        --cache-dir runs/cache --results "runs/small_milan6040_$T.json" --threads 1
}

case $LANE in
draw)
    [[ -d $D ]] || python "$HERE/small_archives.py" --data "$SRC" --per-class "$PER" --seed "$SEED" $UNEVEN --out "$D"
    python - "$D" "$S8" "$S6" <<'PY'
import sys
from rsir_train.pipeline import prepare_data
for path, protocol in ((sys.argv[2], "80-20"), (sys.argv[3], "60-40")):
    split = prepare_data(sys.argv[1], split_file=path, protocol=protocol, seed=0).split
    print(path, protocol, "train", len(split.train_ids), "query", len(split.query_ids))
PY
    ;;
A)
    ahcl sel 64
    ahcl sel 16
    ;;
B)
    step "$T-linear-80-20" python -m rsir_train.baselines --data "$D" --split-file "$S8" --protocol 80-20 \
        --bits 16,32,64 --method linear --cache-dir runs/cache --json "runs/small_baselines_$T.jsonl"
    step "$T-linear-60-40" python -m rsir_train.baselines --data "$D" --split-file "$S6" --protocol 60-40 \
        --bits 16,32,64 --method linear --cache-dir runs/cache --json "runs/small_baselines_$T.jsonl"
    for K in 16 32 64; do ahcl authors "$K"; done
    for K in 16 64; do milan6040 defaults "$K"; milan6040 authors "$K"; done
    ahcl sel 32
    ;;
*) echo "LANE is draw, A or B" >&2; exit 2 ;;
esac
