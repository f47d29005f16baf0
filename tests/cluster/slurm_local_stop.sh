#!/usr/bin/env bash
# Stop the local test cluster started by slurm_local_start.sh: cancel all jobs (each job has its own
# slurmstepd and would outlive slurmd), then stop each daemon by the PID in its pidfile, with a bounded
# wait and SIGKILL. Safe to run when nothing is running.
set -uo pipefail

log() { printf '[slurm_local_stop] %s\n' "$*" >&2; }

if command -v scancel >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
  scancel --full --quiet --user=root 2>/dev/null || true
  for _ in $(seq 50); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
fi

stop_pid() {
  local name=$1 f=$2 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "$name ($pid) did not exit after SIGTERM: SIGKILL"; kill -9 "$pid" 2>/dev/null; fi
  fi
  rm -f "$f"
}

# Order matters: the node, the controller, accounting, its database, then authentication.
for f in /run/slurm/slurmd-*.pid /run/slurm/slurmd.pid; do stop_pid "slurmd ${f##*/}" "$f"; done
stop_pid slurmctld /run/slurm/slurmctld.pid
stop_pid slurmdbd /run/slurm/slurmdbd.pid
stop_pid mariadbd /run/mysqld/mysqld.pid
stop_pid munged /run/munge/munged.pid
log "stopped"
