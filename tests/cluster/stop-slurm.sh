#!/usr/bin/env bash
# Stop the single-node test cluster that start-slurm.sh started (same DCL_SLURM_DIR).
#
# Cancels the cluster's jobs, stops slurmd, slurmctld and munged through their pid files (never
# by process name, so other Slurm or munge daemons on the machine are left alone) and waits until
# they are gone. Idempotent: stopping a stopped cluster does nothing.
#   --purge   also delete DCL_SLURM_DIR (state, logs, job completion log, munge key).
set -euo pipefail

DIR="${DCL_SLURM_DIR:-/tmp/dcl-slurm}"
CONF="$DIR/etc/slurm.conf"
purge=0
case "${1:-}" in
    "") ;;
    --purge) purge=1 ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

log() { echo "stop-slurm: $*" >&2; }

pid_of() {  # pid_of FILE: the pid in FILE if that process runs, else nothing
    local pid
    [ -s "$1" ] || return 0
    pid="$(cat "$1")"
    kill -0 "$pid" 2>/dev/null && echo "$pid"
    return 0
}

stop_daemon() {  # stop_daemon NAME PIDFILE
    local pid
    pid="$(pid_of "$2")"
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $1 ($pid)"; return 0; }
        sleep 0.1
    done
    log "$1 ($pid) ignored SIGTERM for 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

if [ -n "$(pid_of "$DIR/run/slurmctld.pid")" ] && [ -n "$(pid_of "$DIR/run/slurmd.pid")" ]; then
    export SLURM_CONF="$CONF"
    # Jobs run under slurmstepd processes that outlive slurmd; cancel them while slurmd can
    # still deliver the signals, so no job process is left behind.
    jobs="$(squeue --noheader --states=PENDING,RUNNING,SUSPENDED -o %i 2>/dev/null || true)"
    if [ -n "$jobs" ]; then
        log "cancelling the cluster's jobs: $(echo $jobs)"
        # shellcheck disable=SC2086  # one argument per job id
        scancel --full $jobs 2>/dev/null || true
        # KillWait (30 s) bounds how long a job may take to go after SIGTERM.
        for _ in $(seq 450); do
            [ -z "$(squeue --noheader --states=PENDING,RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
fi

stop_daemon slurmd "$DIR/run/slurmd.pid"
stop_daemon slurmctld "$DIR/run/slurmctld.pid"
stop_daemon munged "$DIR/munge/munged.pid"

# start-slurm.sh points the default configuration path at ours; remove only that link.
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
    rm -f /etc/slurm/slurm.conf
fi

if [ "$purge" -eq 1 ] && [ -d "$DIR" ]; then
    rm -rf "$DIR"
    log "removed $DIR"
fi
