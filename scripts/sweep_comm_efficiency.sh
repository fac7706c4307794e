#!/usr/bin/env bash
# The communication-efficiency sweep (conf/experiment/comm_efficiency.yaml: full, head_only and
# LoRA ranks 1/4/16/64 x 5 seeds = 30 runs) and its report, each arm compared with full
# fine-tuning seed by seed (--baseline arm=full), as committed under docs/.
#
#   scripts/sweep_comm_efficiency.sh                 # sweep + report (~8-10 min on 2 cores, joblib)
#   scripts/sweep_comm_efficiency.sh resume=false    # recompute every run (extra args -> fedbench)
#   SWEEP_DIR=/scratch/ce OUT=/tmp/ce LAUNCHER=submitit_slurm_fedbench scripts/sweep_comm_efficiency.sh
#
# scripts/sweep.sh does the work (fixed sweep folder: complete runs are reused).
set -euo pipefail
REPORT_ARGS="--baseline arm=full" exec "$(dirname "$0")/sweep.sh" comm_efficiency "$@"
