#!/usr/bin/env bash
# MiniLM on BBC News (conf/experiment/minilm_bbc.yaml): 8 methods x {iid, dirichlet(0.5)} x 3
# seeds over 5 clients, then the centralised reference (one client holding the same 200 articles:
# same data, same number of gradient computations, no federation) for every method and seed,
# then the report, and per partition the paired differences of every method to full fine-tuning
# ($OUT/paired_iid/, $OUT/paired_dirichlet/).
#
#   scripts/sweep_minilm_bbc.sh                    # everything (see docs/minilm_bbc/README.md)
#   SKIP_CENTRAL=1 scripts/sweep_minilm_bbc.sh     # only the 48 federated runs
#   scripts/sweep_minilm_bbc.sh resume=false       # recompute (extra args go to both fedbench calls)
#
# Runs go one after another with 2 torch threads each (the experiment pins threads=2). The sweep
# folders are fixed, so running this again skips complete runs and resumes unfinished ones.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
SWEEP_DIR=${SWEEP_DIR:-outputs/multirun/minilm_bbc}
OUT=${OUT:-docs/minilm_bbc}
TARGET=${TARGET:-0.9}
export HF_HUB_OFFLINE=1

set -x
"$BIN/fedbench" -m experiment=minilm_bbc "hydra.sweep.dir=$SWEEP_DIR/federated" "$@"
if [ -z "${SKIP_CENTRAL:-}" ]; then
  "$BIN/fedbench" -m experiment=minilm_bbc fl.num_clients=1 fl.clients_per_round=1 data.partition=iid \
    "hydra.sweep.dir=$SWEEP_DIR/central" "$@"
fi
"$BIN/python" -m fedbench.report "$SWEEP_DIR" --out "$OUT" --target-accuracy "$TARGET"
for p in iid dirichlet; do
  "$BIN/python" -m fedbench.report "$SWEEP_DIR"/federated/*data.partition=$p* --out "$OUT/paired_$p" \
    --target-accuracy "$TARGET" --baseline arm=bert_full --no-figures
done
set +x
echo "report: $OUT/summary.md"
