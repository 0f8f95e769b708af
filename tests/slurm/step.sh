#!/usr/bin/env bash
# The job prefix of `make test-slurm`'s smoke, after srun: `srun --exact -n1 -c1 bash tests/slurm/step.sh CMD...`.
# It records that CMD runs as a SLURM job step (job.step and the command line, one line in $STEP_LOG) and runs it.
if ! [[ ${SLURM_STEP_ID:-} =~ ^[0-9]+$ ]]; then
  echo "tests/slurm/step.sh: not inside a SLURM job step: $*" >&2
  exit 1
fi
# one short printf per step: an O_APPEND write, so two steps at once do not interleave their lines
printf '%s.%s %s\n' "$SLURM_JOB_ID" "$SLURM_STEP_ID" "$*" >> "${STEP_LOG:?STEP_LOG is not set}"
exec "$@"
