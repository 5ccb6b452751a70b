#!/usr/bin/env bash
# One task of launch/slurm.sbatch's job step (srun starts it once per task). Derives this task's place in
# the run from SLURM's step environment, the way JAX's own SLURM detection does:
#   XLPLASTIC_COORDINATOR   = the step's first node (SLURM_STEP_NODELIST, e.g. gpu[03-05,9] -> gpu03), at
#                             port XLPLASTIC_COORDINATOR_PORT, default SLURM_JOB_ID % 4096 + 61440
#   XLPLASTIC_NUM_PROCESSES = SLURM_STEP_NUM_TASKS (else SLURM_NTASKS)
#   XLPLASTIC_PROCESS_ID    = SLURM_PROCID
# then runs COMMAND... with its output appended to $XLPLASTIC_LOG_DIR/task-<SLURM_PROCID>.log.
#   slurm_task.sh COMMAND...
#   slurm_task.sh --print-env     (prints the three variables; what the tests check)
set -euo pipefail
nodes=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:?slurm_task.sh: not in a SLURM job (no SLURM_STEP_NODELIST)}}
pre=${nodes%%[[,]*}  # up to the first `[` or `,`
if [[ ${nodes:${#pre}:1} == '[' ]]; then
  rest=${nodes:${#pre}+1}
  first=$pre${rest%%[],-]*}  # the first number of the range list
else
  first=$pre
fi
port=${XLPLASTIC_COORDINATOR_PORT:-$((${SLURM_JOB_ID:?slurm_task.sh: no SLURM_JOB_ID} % 4096 + 61440))}
export XLPLASTIC_COORDINATOR=$first:$port
export XLPLASTIC_NUM_PROCESSES=${SLURM_STEP_NUM_TASKS:-${SLURM_NTASKS:?slurm_task.sh: no SLURM_NTASKS}}
export XLPLASTIC_PROCESS_ID=${SLURM_PROCID:?slurm_task.sh: no SLURM_PROCID}
if [[ ${1:-} == --print-env ]]; then
  echo "XLPLASTIC_COORDINATOR=$XLPLASTIC_COORDINATOR XLPLASTIC_NUM_PROCESSES=$XLPLASTIC_NUM_PROCESSES XLPLASTIC_PROCESS_ID=$XLPLASTIC_PROCESS_ID"
  exit 0
fi
(($#)) || { echo "slurm_task.sh: no command to run" >&2; exit 2; }
log=${XLPLASTIC_LOG_DIR:?slurm_task.sh: no XLPLASTIC_LOG_DIR}/task-$SLURM_PROCID.log
echo "=== $(date -u +%FT%TZ) task $XLPLASTIC_PROCESS_ID/$XLPLASTIC_NUM_PROCESSES on $(hostname)," \
     "coordinator $XLPLASTIC_COORDINATOR, job ${SLURM_JOB_ID}${SLURM_RESTART_COUNT:+ (restart $SLURM_RESTART_COUNT)}" >>"$log"
exec "$@" >>"$log" 2>&1  # exec: SLURM's signals (--signal=TERM@120, scancel) reach xlplastic itself
