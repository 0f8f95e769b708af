#!/usr/bin/env bash
# make test-slurm: the README's first cluster recipe against a real SLURM. A private single-node SLURM (munged,
# slurmctld, slurmd) runs in a temporary folder on this machine; one `sbatch --wait` holds the allocation and runs
# `make smoke` inside it, every training/evaluation/crafting command an `srun --exact -n1 -c1` job step. Then it
# checks that each of Make's job commands ran as a step of that job, that every output was built, and that the
# report has the shape of a local smoke run. Needs root (apt-get, daemons); CPU only; a few minutes.
# Nothing outside the temporary folder is written: a SLURM or munge already on the machine is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
SECONDS=0
say() { echo "test-slurm: $*"; }
fail() { echo "test-slurm: error: $*" >&2; exit 1; }
# A clean make and SLURM client inside: no jobserver of a calling make, no SLURM_* of an enclosing job.
# shellcheck disable=SC2046  # one word per variable name
unset MAKEFLAGS MFLAGS MAKELEVEL $(compgen -v | grep -E '^(SLURM|SBATCH|SRUN|SALLOC)_' || true)
# make smoke runs make -j$(nproc) with OMP_NUM_THREADS=1 for each job; nproc honours OMP_NUM_THREADS, so not before.
unset OMP_NUM_THREADS OMP_THREAD_LIMIT
PY=${PY:-.venv/bin/python}   # `make test-slurm PY=python3` exports PY to us
NCPU=$(nproc)

# ---- the packages: Debian's slurm-wlm and munge, installed if missing ----------------------------------------
missing=$(for c in munged slurmctld slurmd sbatch srun squeue scancel sinfo; do command -v "$c" >/dev/null || echo "$c"; done)
if [ -n "$missing" ]; then
  say "installing slurm-wlm and munge with apt-get (missing: $(echo $missing))"
  log=$(mktemp)
  if [ "$(id -u)" != 0 ]; then why="not root"
  else  # the package lists as they are first (offline with a cache), then fresh ones
    inst() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge; }
    { inst || { apt-get update -q && inst; }; } >"$log" 2>&1 || why=$(grep '^E:' "$log" | tail -n1 | grep . \
      || tail -n1 "$log")
  fi
  rm -f "$log"
  [ -z "${why:-}" ] || { echo "error: could not install slurm-wlm and munge with apt-get: $why" >&2; exit 1; }
fi

# ---- a private SLURM in a temporary folder, always stopped at the end ---------------------------------------
T=$(mktemp -d "${TMPDIR:-/tmp}/test-slurm.XXXXXX")
chmod 711 "$T"   # munged wants its socket's directory searchable by all
mkdir -p "$T/state" "$T/spool" "$T/log"
export SLURM_CONF="$T/slurm.conf" STEP_LOG="$T/steps.log"   # sbatch, srun and the job's steps see both
RUN="$T/smoke"                                             # never the user's runs/smoke
PIDS=()
cleanup() {
  local rc=$?
  set +e
  if [ ${#PIDS[@]} -ge 2 ]; then   # slurmctld is up: cancel our job (if any) so that no step outlives the daemons
    jobs=$(timeout 15 squeue -h -o %i 2>/dev/null)
    [ -n "$jobs" ] && timeout 15 scancel $jobs
    for _ in $(seq 30); do [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
  fi
  [ -n "${SBATCH:-}" ] && kill "$SBATCH" 2>/dev/null   # sbatch --wait would poll the stopped slurmctld
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null; done   # slurmd, slurmctld, munged
  for p in "${PIDS[@]}"; do
    for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null
  done
  if [ "$rc" != 0 ]; then echo "test-slurm: FAILED (exit $rc); logs kept in $T" >&2
  elif [ -n "${TEST_SLURM_KEEP:-}" ]; then echo "test-slurm: TEST_SLURM_KEEP: kept $T"; else rm -rf "$T"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# free TCP ports below the ephemeral range: nothing answers on them
free_port() {
  local p
  for p in $(shuf -i 20000-30000 -n 100); do
    [[ " $* " == *" $p "* ]] && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  fail "no free TCP port found"
}
CTLD_PORT=$(free_port); SLURMD_PORT=$(free_port "$CTLD_PORT")
HOST=$(hostname -s)
MEM=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.95)}' /proc/meminfo)   # below the total: slurmd never finds less

dd if=/dev/urandom of="$T/munge.key" bs=1024 count=1 status=none && chmod 400 "$T/munge.key"
: > "$T/plugstack.conf"   # no site SPANK plugins from /etc/slurm
cat > "$SLURM_CONF" <<EOF
ClusterName=testslurm
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$T/munge.sock
PlugStackConfig=$T/plugstack.conf
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM State=UNKNOWN
PartitionName=test Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
# Each daemon in the foreground, in the background here, so that its PID is ours to stop. munged as root: --force.
munged -F --force --socket="$T/munge.sock" --key-file="$T/munge.key" --pid-file="$T/munged.pid" \
  --log-file="$T/log/munged.log" --seed-file="$T/munged.seed" >"$T/log/munged.out" 2>&1 & PIDS+=($!)
for _ in $(seq 20); do [ -S "$T/munge.sock" ] && break; sleep 0.5; done
[ -S "$T/munge.sock" ] || fail "munged did not start: $(tail -1 "$T/log/munged.out")"
slurmctld -D -f "$SLURM_CONF" >"$T/log/slurmctld.out" 2>&1 & PIDS+=($!)
slurmd -D -f "$SLURM_CONF" >"$T/log/slurmd.out" 2>&1 & PIDS+=($!)
for _ in $(seq 60); do [ "$(sinfo -h -o %t 2>/dev/null)" = idle ] && break; sleep 0.5; done
[ "$(sinfo -h -o %t 2>/dev/null)" = idle ] || fail "the node did not come up: $(sinfo -h -N -o '%t %E' 2>&1 \
  | head -1); $(grep -h error: "$T"/log/slurm*.out | grep -v -e pmix -e MPI | tail -1)"
say "SLURM $(sinfo -V | cut -d' ' -f2) up in ${SECONDS}s: node $HOST, $NCPU CPUs, slurmctld :$CTLD_PORT, slurmd :$SLURMD_PORT"

# ---- the recipe: one allocation of the whole node; make smoke inside it, each job an srun step ---------------
LAUNCH="srun --exact -n1 -c1 bash tests/slurm/step.sh"
SMOKE=(smoke "PY=$PY" "SMOKE_RUN=$RUN" "SMOKE_LAUNCH=$LAUNCH")
# What Make will run (make -n on the fresh run folder), backslash-newlines joined: the reference for the step log.
make --no-print-directory -n "${SMOKE[@]}" | sed -e ':a' -e '/\\$/N; s/\\\n/ /; ta' > "$T/dry.txt"
# a command as a step sees it: no log redirection, no quotes (the shell took them), single spaces
normal() { sed -e 's/ *2>&1.*//' -e 's/ *| .*//' | tr -d "'\"" | tr -s ' \t' '  ' | sed 's/ $//' | sort; }
# Every training/evaluation/crafting command must go through the prefix (report.py runs in the batch step).
bad=$(grep -E '[A-Za-z_]+\.py( |$)' "$T/dry.txt" | grep -v -e 'step\.sh ' -e 'report\.py' || true)
[ -z "$bad" ] || fail "make smoke runs a job outside SMOKE_LAUNCH: $(head -1 <<<"$bad")"
# (sort -u: the smoke's depth step is a second make, whose dry run on the fresh folder lists the grid's jobs again)
sed -n "s/.*step\.sh \([^']\)/\1/p" "$T/dry.txt" | normal | sort -u > "$T/expected.txt"
[ -s "$T/expected.txt" ] || fail "make -n smoke shows no job command with SMOKE_LAUNCH"
printf -v wrap 'make --no-print-directory %q %q %q %q' "${SMOKE[@]}"
say "sbatch --wait -N1 -n$NCPU -c1 --wrap \"$wrap\" ($(wc -l < "$T/expected.txt") job commands)"
# in the background, so that a signal to this script is handled (job cancelled, daemons stopped) at once
sbatch --wait --parsable -J test-slurm -N1 -n"$NCPU" -c1 --time=30 -o "$T/job.out" --wrap "$wrap" >"$T/job.id" &
SBATCH=$!
wait $SBATCH || { tail -n 30 "$T/job.out" >&2; fail "the sbatch job failed (its output above, in $T/job.out)"; }
JOB=$(cat "$T/job.id")
say "job $JOB done in ${SECONDS}s"

# ---- the evidence -----------------------------------------------------------------------------------------
[ -s "$STEP_LOG" ] || fail "no job step ran (empty $STEP_LOG)"
grep -v "^$JOB\.[0-9]* " "$STEP_LOG" | head -1 | grep . >&2 && fail "a step outside job $JOB (above)"
cut -d' ' -f1 "$STEP_LOG" | sort | uniq -d | head -1 | grep . >&2 && fail "a step ID logged twice (above)"
# each step in our log is one slurmd launched: an independent witness (accounting is off, so no sacct)
diff <(cut -d' ' -f1 "$STEP_LOG" | sort) \
     <(grep -o "launch task StepId=$JOB\.[0-9]*" "$T/log/slurmd.log" | cut -d= -f2 | sort) >&2 \
  || fail "the step log and slurmd's launched steps differ (above)"
# every command of make -n ran, as a step, exactly once
cut -d' ' -f2- "$STEP_LOG" | normal > "$T/ran.txt"
diff "$T/expected.txt" "$T/ran.txt" > "$T/steps.diff" || { head -n 20 "$T/steps.diff" >&2
  fail "the job steps are not the commands of make -n smoke (< expected, > ran)"; }
# Outputs: the smoke grid as a local run builds it (3 sources, 3 baselines, 27 transfers and the depth sweep's b2,
# the DenseNet121, each evaluated, the black-box examples), no more, no less; each named in a step's command,
# literally or through a cohort's template (--out 'R/transfer/{src}-{tgt}-{unfreeze}_s{seed}.pt').
models=(source/cifar100_{nat,fgsm,pgd}_s0 baseline/cifar10_{nat,fgsm,pgd}_s0
        transfer/{nat,fgsm,pgd}-{nat,fgsm,pgd}-{1,12,56}_s0 transfer/pgd-nat-b2_s0 blackbox/densenet121_s0)
want=$(printf '%s\n' "${models[@]/%/.pt}" "${models[@]/%/.eval.json}" blackbox/examples.pt | sed "s|^|$RUN/|" | sort)
outputs=$(find "$RUN" \( -name '*.pt' ! -name '*.last.pt' -o -name '*.eval.json' \) | sort)
[ "$outputs" = "$want" ] || { diff <(echo "$want") <(echo "$outputs") | head -n 20 >&2 || true
  fail "the outputs under $RUN are not the smoke grid's (< expected, > built)"; }
names=$(tr ' ' '\n' < "$T/ran.txt" | grep -E "^$RUN/.*(\.pt|\.eval\.json)$" | sed 's/{[a-z_]*}/*/g' | sort -u)
for f in $outputs; do
  named=
  # shellcheck disable=SC2053  # $pat is a glob on purpose
  while read -r pat; do [[ $f == $pat ]] && { named=1; break; }; done <<<"$names"
  [ -n "$named" ] || fail "$f is not named in any job step's command"
done
N=$(grep -c . <<<"$outputs"); M=$(wc -l < "$STEP_LOG")
# The report as a local run makes it: report.py here, outside SLURM, on the same outputs, gives the same files and
# the same table1.csv; that has Table 1's 30 rows, each with its five columns filled.
"$PY" report.py --run "$RUN" --out "$T/report.local" >/dev/null
diff <(ls "$T/report.local") <(ls "$RUN/report") >&2 || fail "the report's files differ from a local report's (> job)"
cmp "$T/report.local/table1.csv" "$RUN/report/table1.csv" >&2 || fail "table1.csv differs from a local report's"
"$PY" - "$RUN/report/table1.csv" <<'EOF' || fail "table1.csv is not the smoke's Table 1 (above)"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert len(rows) == 30, f"{len(rows)} rows, not 30"
cols = ("clean", "bb_fgsm", "bb_pgd", "wb_fgsm", "wb_pgd")
assert set(cols) <= set(rows[0]), f"no column {sorted(set(cols) - set(rows[0]))}"
empty = [r["network"] for r in rows if any(r[c] in ("", "–", "MISSING") for c in cols)]
assert not empty, f"rows without an evaluation: {empty}"
EOF
say "passed: $N outputs built by $M job steps of job $JOB; report matches the local smoke shape (${SECONDS}s)"
