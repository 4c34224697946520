#!/usr/bin/env bash
# A single-node Slurm on localhost (Debian's slurm-wlm and munge), for the Slurm workflow test.
#
#   .ci/slurm-localhost.sh install [PKG...]
#                                      apt-get the packages, and the extra packages PKG (each providing the
#                                      command of its name) in the same apt-get (root; skipped when installed)
#   .ci/slurm-localhost.sh start DIR   munged + slurmctld + slurmd with everything (key, sockets, state,
#                                      logs, config) inside DIR; prints the SLURM_CONF to export
#   .ci/slurm-localhost.sh stop DIR    stop the three daemons started in DIR
#
# The cluster: one node "localhost" with partition "gpu" (the Slurm profile's default), 16 CPUs, 64 GB
# and 2 GPUs declared (the node may have fewer: config_overrides), so the profile's requests fit as
# they are; no accounting database (sacct/sacctmgr do not work: query job states with squeue, which
# keeps finished jobs for MinJobAge); no cgroups (proctrack/linuxproc, task/none), as in a container.
# If a daemon does not come up, `start` prints its own log and exits 1.
set -euo pipefail

ETC_CONF=/etc/slurm/slurm.conf

die() { echo "slurm-localhost: $*" >&2; exit 1; }

install() {
    local command missing=()
    for command in slurmctld slurmd munged "$@"; do
        command -v "$command" >/dev/null || missing+=("$command")
    done
    [ ${#missing[@]} = 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "installing slurm-wlm, munge $* needs root (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge "$@"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

show_log() { echo "---- $1 ----" >&2; tail -n 30 "$1" >&2 2>/dev/null || echo "(no log)" >&2; }

# A daemon did not come up: its own log, then stop what did start.
fail() { local dir=$1 what=$2; shift 2; for log in "$@"; do show_log "$log"; done; stop "$dir"; die "$what"; }

start() {
    local dir host ctld_port slurmd_port
    dir=$(realpath "$1")
    host=$(hostname -s)
    mkdir -p "$dir"/{munge,state,spool,log}
    chmod 700 "$dir/munge"
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed" \
        || fail "$dir" "munged did not start" "$dir/log/munged.log"

    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    cat > "$dir/slurm.conf" <<EOF
ClusterName=zigzag-localhost
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=2
NodeName=localhost NodeHostname=$host NodeAddr=127.0.0.1 CPUs=16 RealMemory=64000 Gres=gpu:2 State=UNKNOWN
PartitionName=gpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    # Two stand-in device files: Slurm hands them out as GPUs 0 and 1 (CUDA_VISIBLE_DEVICES), nothing opens them.
    printf 'Name=gpu File=/dev/null\nName=gpu File=/dev/zero\n' > "$dir/gres.conf"
    # Snakemake's job step (snakemake-executor-plugin-slurm-jobstep) drops SLURM_CONF before its inner
    # srun, so the configuration must also sit where the commands look by default.
    if [ -e "$ETC_CONF" ] || [ -L "$ETC_CONF" ]; then
        if [ -L "$ETC_CONF" ] && [ ! -e "$ETC_CONF" ]; then
            rm "$ETC_CONF"  # left by a localhost cluster that is gone
        else
            stop "$dir"
            die "$ETC_CONF exists ($(readlink -f "$ETC_CONF")): another Slurm is configured on this machine"
        fi
    fi
    mkdir -p "$(dirname "$ETC_CONF")"
    ln -s "$dir/slurm.conf" "$ETC_CONF"
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF" || fail "$dir" "slurmctld did not start" "$dir/log/slurmctld.log"
    slurmd -f "$SLURM_CONF" -N localhost || fail "$dir" "slurmd did not start" "$dir/log/slurmd.log"
    for _ in $(seq 60); do
        if [ "$(sinfo -h -n localhost -o %t 2>/dev/null)" = idle ]; then
            echo "export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.5
    done
    sinfo -N -l >&2 || true
    fail "$dir" "the node did not become idle within 30 s" "$dir/log/slurmctld.log" "$dir/log/slurmd.log"
}

stop() {
    local dir pid jobs
    dir=$(realpath "$1")
    # Cancel what is still queued or running first: job steps outlive slurmd otherwise.
    if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        jobs=$(SLURM_CONF="$dir/slurm.conf" squeue -h -o %i 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            SLURM_CONF="$dir/slurm.conf" scancel $jobs || true
            for _ in $(seq 60); do
                [ -z "$(SLURM_CONF="$dir/slurm.conf" squeue -h -o %i 2>/dev/null)" ] && break
                sleep 0.5
            done
        fi
    fi
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ "$(readlink "$ETC_CONF" 2>/dev/null)" = "$dir/slurm.conf" ]; then rm "$ETC_CONF"; fi
}

case "${1:-}" in
    install) shift; install "$@" ;;
    start) [ $# = 2 ] || die "usage: $0 start DIR"; start "$2" ;;
    stop) [ $# = 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) die "usage: $0 install [PKG...] | start DIR | stop DIR" ;;
esac
