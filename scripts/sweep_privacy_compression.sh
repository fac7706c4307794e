#!/usr/bin/env bash
# The privacy x compression sweep (conf/experiment/privacy_compression.yaml: budget none /
# eps_inf / eps_8 / eps_2 x codec none / int8 / topk x head_only / lora_r4 x 3 seeds = 72 runs)
# and its report, as committed under docs/privacy_compression/ (docs/privacy.md reads it).
#
#   scripts/sweep_privacy_compression.sh                 # sweep + report (~12 min on one core)
#   N_JOBS=2 scripts/sweep_privacy_compression.sh        # two runs side by side (1 thread each)
#   scripts/sweep_privacy_compression.sh resume=false    # recompute every run (extra args -> fedbench)
#
# The sweep folder is fixed, so running this again reuses complete runs (fedbench resumes or
# skips a run folder that holds the same configuration) and the report never counts a run twice.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
SWEEP_DIR=${SWEEP_DIR:-outputs/multirun/privacy_compression/sweep}
OUT=${OUT:-docs/privacy_compression}
N_JOBS=${N_JOBS:-1}
if [ -z "${LAUNCHER:-}" ]; then
  # joblib with N_JOBS workers (1 torch thread each); without the sweep extra
  # (pip install -e '.[sweep]') Hydra's basic launcher runs jobs one after another.
  if "$BIN/python" -c "import hydra_plugins.hydra_joblib_launcher" 2>/dev/null; then LAUNCHER=joblib; else LAUNCHER=basic; fi
fi
LAUNCH=("hydra/launcher=$LAUNCHER")
if [ "$LAUNCHER" = joblib ]; then LAUNCH+=("hydra.launcher.n_jobs=$N_JOBS"); fi

echo "+ $BIN/fedbench -m experiment=privacy_compression ${LAUNCH[*]} hydra.sweep.dir=$SWEEP_DIR $*"
"$BIN/fedbench" -m experiment=privacy_compression "${LAUNCH[@]}" "hydra.sweep.dir=$SWEEP_DIR" "$@"
"$BIN/python" -m fedbench.report "$SWEEP_DIR" --out "$OUT"
"$BIN/python" scripts/privacy_table.py "$SWEEP_DIR" --out "$OUT/privacy_table.md"
echo "report: $OUT/summary.md, $OUT/privacy_table.md"
