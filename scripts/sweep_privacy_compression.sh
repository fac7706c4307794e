#!/usr/bin/env bash
# The privacy x compression sweep (conf/experiment/privacy_compression.yaml: budget none /
# eps_inf / eps_8 / eps_2 x codec none / int8 / topk x head_only / lora_r4 x 3 seeds = 72 runs)
# and its report, as committed under docs/privacy_compression/ (docs/privacy.md reads it).
#
#   scripts/sweep_privacy_compression.sh                 # sweep + report (~12 min on one core)
#   N_JOBS=2 scripts/sweep_privacy_compression.sh        # two runs side by side (1 thread each)
#   scripts/sweep_privacy_compression.sh resume=false    # recompute every run (extra args -> fedbench)
#
# scripts/sweep.sh does the sweep and report (fixed sweep folder: complete runs are reused).
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP_DIR=${SWEEP_DIR:-outputs/multirun/privacy_compression/sweep}
OUT=${OUT:-docs/privacy_compression}
SWEEP_DIR=$SWEEP_DIR OUT=$OUT N_JOBS=${N_JOBS:-1} scripts/sweep.sh privacy_compression "$@"
"${BIN:-.venv/bin}/python" scripts/privacy_table.py "$SWEEP_DIR" --out "$OUT/privacy_table.md"
echo "report: $OUT/privacy_table.md"
