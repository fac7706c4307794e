#!/usr/bin/env bash
# The communication-efficiency sweep (conf/experiment/comm_efficiency.yaml: full, head_only and
# LoRA ranks 1/4/16/64 x 5 seeds = 30 runs) and its report, each arm compared with full
# fine-tuning seed by seed (--baseline arm=full), as committed under docs/.
#
#   scripts/sweep_comm_efficiency.sh                 # sweep + report (~8-10 min on 2 cores, joblib)
#   scripts/sweep_comm_efficiency.sh resume=false    # recompute every run (extra args -> fedbench)
#   SWEEP_DIR=/scratch/ce OUT=/tmp/ce LAUNCHER=submitit_slurm_fedbench scripts/sweep_comm_efficiency.sh
#
# The sweep folder is fixed, so running this again reuses complete runs (fedbench resumes or
# skips a run folder that holds the same configuration) and the report never counts a run twice.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
SWEEP_DIR=${SWEEP_DIR:-outputs/multirun/comm_efficiency/sweep}
OUT=${OUT:-docs/comm_efficiency}
if [ -z "${LAUNCHER:-}" ]; then
  # joblib runs jobs side by side (one per core, 1 torch thread each); without the sweep extra
  # (pip install -e '.[sweep]') Hydra's basic launcher runs them one after another.
  if "$BIN/python" -c "import hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then LAUNCHER=joblib; else LAUNCHER=basic; fi
fi
# `experiment=` once conf/config.yaml lists an experiment default, `+experiment=` until then
if grep -Eq '^\s*-\s*(optional\s+)?experiment\s*:' conf/config.yaml; then EXP=experiment; else EXP=+experiment; fi

echo "+ $BIN/fedbench -m $EXP=comm_efficiency hydra/launcher=$LAUNCHER hydra.sweep.dir=$SWEEP_DIR $*"
"$BIN/fedbench" -m "$EXP=comm_efficiency" "hydra/launcher=$LAUNCHER" "hydra.sweep.dir=$SWEEP_DIR" "$@"
"$BIN/python" -m fedbench.report "$SWEEP_DIR" --out "$OUT" --baseline arm=full
echo "report: $OUT/summary.md"
