#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine, for the cluster tests (tests/cluster/).
#
# Run as root on Debian 12 (no systemd needed). It installs slurm-wlm + munge with apt-get when
# they are missing, writes every file under one directory (DCL_SLURM_DIR, default /tmp/dcl-slurm),
# starts munged (as user munge), slurmctld and slurmd, and waits until the node is idle.
# Idempotent: a second start while the cluster runs changes nothing; a start after
# stop-slurm.sh brings the same cluster back (its job ids continue).
#
# Clients find the cluster through SLURM_CONF; the script prints the line to use and writes it
# to $DCL_SLURM_DIR/env.sh:
#     eval "$(tests/cluster/start-slurm.sh)"      # or: . /tmp/dcl-slurm/env.sh
#     sinfo
#
# Choices (measured on a 2-core Debian 12 VM, Slurm 22.05):
#   * No slurmdbd/MariaDB. Job status comes from squeue (the profile's slurm-status-command),
#     and job history from slurmctld's job completion log (jobcomp/filetxt, one line per finished
#     job with its id, state, exit code and times), which is what the tests check. Accounting
#     would double the packages to install (90 vs 43) and add a database to start.
#   * MinJobAge=300 (Slurm's default), not shorter: the Snakemake Slurm plugin treats a job that
#     squeue no longer lists as still running, and its status-check interval grows to 180 s, so
#     finished jobs must stay visible in squeue longer than that. (With MinJobAge below three
#     status intervals the plugin also switches to sacct, which fails without accounting.)
#   * Non-default ports (DCL_SLURM_PORT_BASE, default 16817/16818), own munge socket and key,
#     so a machine that already runs Slurm or munge is not disturbed.
#   * SlurmdParameters=config_overrides is NOT used: the node gets this machine's real CPUs and
#     memory (from `slurmd -C`), so jobs that ask for more than the machine has are refused.
set -euo pipefail

DIR="${DCL_SLURM_DIR:-/tmp/dcl-slurm}"
PORT_BASE="${DCL_SLURM_PORT_BASE:-16817}"
PARTITION="${DCL_SLURM_PARTITION:-dcltest}"
TIMEOUT_S="${DCL_SLURM_START_TIMEOUT:-60}"

CONF="$DIR/etc/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket.2"
# Where Slurm clients look when SLURM_CONF is unset (Debian's build).
DEFAULT_CONF=/etc/slurm/slurm.conf

log() { echo "start-slurm: $*" >&2; }
die() { echo "start-slurm: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"

pid_alive() {  # pid_alive FILE: the pid in FILE names a running process
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurm-wlm/munge are missing and apt-get is not available"
    log "installing slurm-wlm munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq slurm-wlm munge >"$DIR/apt.log" 2>&1; then
        # A fresh image may have no package lists yet.
        apt-get update -qq >>"$DIR/apt.log" 2>&1 || true
        apt-get install -y -qq slurm-wlm munge >>"$DIR/apt.log" 2>&1 \
            || die "apt-get install slurm-wlm munge failed; see $DIR/apt.log"
    fi
}

start_munge() {
    if pid_alive "$DIR/munge/munged.pid" && munge -n -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
        return
    fi
    # munged insists on strict ownership/permissions of its key and directories.
    install -d -o munge -g munge -m 0755 "$DIR/munge"
    if [ ! -s "$DIR/munge/munge.key" ]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chown munge:munge "$DIR/munge/munge.key"
    chmod 0600 "$DIR/munge/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock" "$DIR/munge/munged.pid"
    runuser -u munge -- munged \
        --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" \
        || die "munged did not start; see $DIR/munge/munged.log"
    for _ in $(seq 50); do
        munge -n -S "$MUNGE_SOCKET" >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "munged does not answer on $MUNGE_SOCKET; see $DIR/munge/munged.log"
}

write_config() {  # writes $CONF.new; the caller decides whether it replaces $CONF
    local node_line
    # slurmd -C reports what slurmd will itself detect; a node configured with more than that
    # is drained ("Low RealMemory"), so use its values verbatim.
    node_line="$(slurmd -C | head -n 1)"
    case "$node_line" in NodeName=*) ;; *) die "unexpected output of 'slurmd -C': $node_line" ;; esac
    mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
    cat >"$CONF.new" <<EOF
# Written by tests/cluster/start-slurm.sh: a single-node test cluster.
ClusterName=dcltest
SlurmctldHost=$(hostname -s)
SlurmctldPort=$PORT_BASE
SlurmdPort=$((PORT_BASE + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (no systemd here): track job processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs that do not ask for memory get 1 GB per CPU, not the whole node.
DefMemPerCPU=1024
MpiDefault=none
ReturnToService=2
# Job status: squeue (no accounting database); history: the job completion log.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MinJobAge=300
# Seconds between SIGTERM and SIGKILL at the time limit or on scancel: the time a job has to
# write its checkpoint.
KillWait=30
SchedulerType=sched/backfill
$node_line State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

link_default_config() {
    # Jobs must find the cluster without SLURM_CONF: the Snakemake Slurm jobstep plugin strips
    # every SLURM_* variable (SLURM_CONF included) before its nested `srun`, which then fails
    # with "Could not establish a configuration source". Real clusters keep slurm.conf at the
    # default path, so point that path at ours -- but never replace a real configuration.
    if [ -L "$DEFAULT_CONF" ] && [ "$(readlink "$DEFAULT_CONF")" = "$CONF" ]; then
        return
    fi
    if [ -e "$DEFAULT_CONF" ] || [ -L "$DEFAULT_CONF" ]; then
        die "$DEFAULT_CONF exists and is not ours: this machine has its own Slurm configuration; run the tests on a machine without one"
    fi
    mkdir -p "$(dirname "$DEFAULT_CONF")"
    ln -s "$CONF" "$DEFAULT_CONF"
}

cluster_answers() {
    SLURM_CONF="$CONF" scontrol ping 2>/dev/null | grep -q "is UP"
}

node_state() {
    SLURM_CONF="$CONF" sinfo --noheader --partition="$PARTITION" -o '%T' 2>/dev/null | head -n 1
}

mkdir -p "$DIR"
started_ms=$(($(date +%s%N) / 1000000))
install_packages
start_munge

write_config
if pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" && cluster_answers \
    && cmp -s "$CONF" "$CONF.new"; then
    rm -f "$CONF.new"
    link_default_config
    log "already running ($CONF)"
else
    if pid_alive "$DIR/run/slurmctld.pid" || pid_alive "$DIR/run/slurmd.pid"; then
        log "configuration changed or cluster not answering: restarting it"
        "$(dirname "$0")/stop-slurm.sh"
        start_munge
    fi
    mv "$CONF.new" "$CONF"
    link_default_config
    export SLURM_CONF="$CONF"
    if ! pid_alive "$DIR/run/slurmctld.pid"; then
        slurmctld -f "$CONF" || die "slurmctld did not start; see $DIR/log/slurmctld.log"
    fi
    if ! pid_alive "$DIR/run/slurmd.pid"; then
        slurmd -f "$CONF" || die "slurmd did not start; see $DIR/log/slurmd.log"
    fi
fi

deadline=$(($(date +%s) + TIMEOUT_S))
while :; do
    state="$(node_state || true)"
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        # A node left down/drained by an earlier run (e.g. stopped mid-job) is usable again.
        down*|drain*|fail*) SLURM_CONF="$CONF" scontrol update nodename="$(hostname -s)" state=resume \
                                >/dev/null 2>&1 || true ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] \
        || die "node not idle after ${TIMEOUT_S}s (state '${state:-none}'); see $DIR/log/"
    sleep 0.2
done

echo "export SLURM_CONF=$CONF" >"$DIR/env.sh"
elapsed_ms=$(($(date +%s%N) / 1000000 - started_ms))
log "node $(hostname -s) is $state in partition $PARTITION after $((elapsed_ms / 1000)).$((elapsed_ms % 1000 / 100)) s"
echo "export SLURM_CONF=$CONF"
