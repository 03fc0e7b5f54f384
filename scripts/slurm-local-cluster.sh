#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, for testing profiles/slurm (tests/test_slurm.py).
#
#   scripts/slurm-local-cluster.sh start    # start munged, slurmctld and slurmd (reuses a running one
#                                           # configured as it would configure it, else restarts it)
#   scripts/slurm-local-cluster.sh stop     # stop what `start` started
#   scripts/slurm-local-cluster.sh status   # exit 0 when the cluster answers and its node is up
#
# Needs root and Debian's packages: apt-get install -y --no-install-recommends slurm-wlm munge.
# The node has two partitions, `cpu` and `a100` (no default partition: every job must name one),
# and advertises Gres=gpu:a100:2, backed in gres.conf by the stand-in devices /dev/null and
# /dev/zero: SLURM allocates them and sets CUDA_VISIBLE_DEVICES, nothing uses them. Accounting
# is off (no slurmdbd, so no sacct), and MinJobAge keeps finished jobs in slurmctld for an hour,
# so that `squeue --states=all` (the executor plugin's status query) and `scontrol show job` see
# them.
#
# Settings (environment):
#   LQS_SLURM_DIR      state, spool, logs and pid files     (default /var/tmp/lqs-slurm)
#   LQS_SLURM_CPUS     the node's CPUs                       (default: nproc)
#   LQS_SLURM_MEM_MB   the node's RealMemory in MB           (default: 90% of MemTotal)
#
# It writes /etc/slurm/slurm.conf and /etc/slurm/gres.conf (where the SLURM commands and the
# nested `srun` of each job look for them) and refuses to replace files it did not write.
set -euo pipefail

DIR=${LQS_SLURM_DIR:-/var/tmp/lqs-slurm}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
GRES_CONF=$CONF_DIR/gres.conf
MARKER="# Written by lqs scripts/slurm-local-cluster.sh"
NODE=lqsnode
MUNGE_SOCKET_DIR=/run/munge
START_TIMEOUT=${LQS_SLURM_START_TIMEOUT:-60}

die() { echo "slurm-local-cluster: $*" >&2; exit 1; }
say() { echo "slurm-local-cluster: $*" >&2; }

need_tools() {
    local missing=()
    for tool in munged munge unmunge slurmctld slurmd scontrol sinfo sbatch squeue; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if ((${#missing[@]})); then
        die "missing ${missing[*]}: install Debian's packages with" \
            "'apt-get install -y --no-install-recommends slurm-wlm munge'"
    fi
}

need_root() {
    [[ $EUID -eq 0 ]] || die "must run as root (it starts munged, slurmctld and slurmd)"
}

ours() { [[ ! -e $1 ]] || head -n 1 "$1" | grep -qF "$MARKER"; }

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }

is_up() {
    scontrol ping 2>/dev/null | grep -q "is UP" || return 1
    case "$(node_state)" in
        idle* | mixed* | allocated* | completing*) return 0 ;;
        *) return 1 ;;
    esac
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# A daemon that wrote its pid file and is gone (one that has not written it yet is not).
died() { [[ -s $1 ]] && ! kill -0 "$(cat "$1")" 2>/dev/null; }

# slurm.conf as `start` writes it, on standard output.
slurm_conf() {
    local cpus mem host
    # nproc honours OMP_NUM_THREADS, which the test processes set to 1: the node's CPUs are the machine's
    cpus=${LQS_SLURM_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
    mem=${LQS_SLURM_MEM_MB:-$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)}
    host=$(hostname -s)
    cat <<EOF
$MARKER: a one-node test cluster; 'stop' removes it.
ClusterName=lqs-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (containers), no accounting, no MPI.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
# Schedule on every submission and completion; CPUs, memory and GPUs are consumable.
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# Finished jobs stay visible to squeue/scontrol for an hour.
MinJobAge=3600
KillWait=5
InactiveLimit=0
ReturnToService=2
# The node is what this file says (CPUs, memory), whatever the hardware reports.
SlurmdParameters=config_overrides
NodeName=$NODE NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:a100:2 State=UNKNOWN
PartitionName=cpu Nodes=$NODE MaxTime=INFINITE State=UP
PartitionName=a100 Nodes=$NODE MaxTime=INFINITE State=UP
EOF
}

# gres.conf as `start` writes it, on standard output.
gres_conf() {
    cat <<EOF
$MARKER: two stand-in A100s.
AutoDetect=off
NodeName=$NODE Name=gpu Type=a100 File=/dev/null
NodeName=$NODE Name=gpu Type=a100 File=/dev/zero
EOF
}

write_config() {
    ours "$CONF" || die "$CONF exists and was not written by this script: not replacing it"
    ours "$GRES_CONF" || die "$GRES_CONF exists and was not written by this script: not replacing it"
    mkdir -p "$CONF_DIR" "$DIR/ctld" "$DIR/spool"
    slurm_conf >"$CONF"
    gres_conf >"$GRES_CONF"
}

start_munge() {
    munge_ok && return 0
    mkdir -p "$MUNGE_SOCKET_DIR" /var/log/munge /var/lib/munge /etc/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    if id munge >/dev/null 2>&1; then
        chown munge:munge "$MUNGE_SOCKET_DIR" /var/log/munge /var/lib/munge /etc/munge /etc/munge/munge.key
        chmod 0700 /etc/munge /var/log/munge
        chmod 0400 /etc/munge/munge.key
        chmod 0755 "$MUNGE_SOCKET_DIR"
        runuser -u munge -- munged
    else
        munged --force
    fi
    cp "$MUNGE_SOCKET_DIR/munged.pid" "$DIR/munged.pid" 2>/dev/null ||
        pgrep -n -x munged >"$DIR/munged.pid" || true
    for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
    die "munged did not start (see /var/log/munge/munged.log)"
}

start() {
    need_tools
    need_root
    if [[ -e $CONF ]] && ours "$CONF" && is_up; then
        if cmp -s <(slurm_conf) "$CONF" && cmp -s <(gres_conf) "$GRES_CONF"; then
            say "already running (node $NODE: $(node_state))"
            return 0
        fi
        # e.g. left by a run whose node had other CPUs: its jobs would pend with no error
        say "running with another configuration than this machine's: restarting it"
        stop
    fi
    mkdir -p "$DIR"
    write_config
    start_munge
    local daemon
    for daemon in slurmctld slurmd; do
        pid_alive "$DIR/$daemon.pid" && continue
        rm -f "$DIR/$daemon.pid"
        if [[ -e $DIR/$daemon.log ]]; then mv -f "$DIR/$daemon.log" "$DIR/$daemon.log.old"; fi
    done
    pid_alive "$DIR/slurmctld.pid" || slurmctld -c -i
    pid_alive "$DIR/slurmd.pid" || slurmd -N "$NODE"
    local deadline=$((SECONDS + START_TIMEOUT)) state
    while ((SECONDS < deadline)); do
        died "$DIR/slurmctld.pid" || died "$DIR/slurmd.pid" && break
        state=$(node_state)
        case "$state" in
            idle* | mixed* | allocated*) say "up: node $NODE ($state), partitions cpu and a100"; return 0 ;;
            drain* | down*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    say "the cluster did not come up (node state: ${state:-none}); the logs in $DIR follow"
    tail -n 30 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
    exit 1
}

stop_pid() {
    local name=$1 pidfile=$2 pid
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { say "$name ($pid) still running, killing it"; kill -9 "$pid" 2>/dev/null || true; }
    rm -f "$pidfile"
}

stop() {
    need_root
    if [[ -e $CONF ]] && ! ours "$CONF"; then
        die "$CONF was not written by this script: not stopping that cluster"
    fi
    stop_pid slurmd "$DIR/slurmd.pid"
    stop_pid slurmctld "$DIR/slurmctld.pid"
    stop_pid munged "$DIR/munged.pid"
    rm -f "$CONF" "$GRES_CONF"
    say "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) is_up && { say "up (node $NODE: $(node_state))"; exit 0; } || { say "not running"; exit 1; } ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
