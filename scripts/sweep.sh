#!/usr/bin/env bash
# Run an experiment's sweep into a fixed folder, then its report.
#
#   scripts/sweep.sh EXPERIMENT [fedbench overrides...]
#   N_JOBS=2 scripts/sweep.sh hetero_clients          # two runs side by side (joblib)
#   SWEEP_DIR=/scratch/x OUT=/tmp/x LAUNCHER=submitit_slurm_fedbench scripts/sweep.sh hetero_clients
#   REPORT_ARGS="--baseline arm=full" scripts/sweep.sh comm_efficiency
#
# SWEEP_DIR defaults to outputs/multirun/EXPERIMENT/sweep and OUT to docs/EXPERIMENT. The sweep
# folder is fixed, so running this again reuses complete runs (fedbench resumes or skips a run
# folder that holds the same configuration) and the report never counts a run twice. The
# experiment file pins the torch threads per run, so the launcher does not change the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."

EXPERIMENT=${1:?usage: scripts/sweep.sh EXPERIMENT [fedbench overrides...]}
shift
BIN=${BIN:-.venv/bin}
SWEEP_DIR=${SWEEP_DIR:-outputs/multirun/$EXPERIMENT/sweep}
OUT=${OUT:-docs/$EXPERIMENT}
N_JOBS=${N_JOBS:-2}
if [ -z "${LAUNCHER:-}" ]; then
  # joblib with N_JOBS workers; without the sweep extra (pip install -e '.[sweep]') Hydra's
  # basic launcher runs jobs one after another.
  if "$BIN/python" -c "import hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then LAUNCHER=joblib; else LAUNCHER=basic; fi
fi
LAUNCH=("hydra/launcher=$LAUNCHER")
if [ "$LAUNCHER" = joblib ]; then LAUNCH+=("hydra.launcher.n_jobs=$N_JOBS"); fi

echo "+ $BIN/fedbench -m experiment=$EXPERIMENT ${LAUNCH[*]} hydra.sweep.dir=$SWEEP_DIR $*"
start=$(date +%s)
"$BIN/fedbench" -m "experiment=$EXPERIMENT" "${LAUNCH[@]}" "hydra.sweep.dir=$SWEEP_DIR" "$@"
echo "sweep took $(( $(date +%s) - start )) s"
# shellcheck disable=SC2086  # REPORT_ARGS is a list of words
"$BIN/python" -m fedbench.report "$SWEEP_DIR" --out "$OUT" ${REPORT_ARGS:-}
echo "report: $OUT/summary.md"
