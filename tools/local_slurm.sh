#!/usr/bin/env bash
# A one-node Slurm on this machine (Debian's slurm-wlm and munge; run as root): slurmctld, slurmd and munged on
# localhost, with no cgroup plugins (proctrack/linuxproc, task/none). The tests of harness.submit use it; it
# prints the SLURM_CONF to export and is idempotent (a running cluster is left as it is).
#
#   tools/local_slurm.sh start [DIR]    # DIR: state, logs and slurm.conf (default /tmp/harness-slurm)
#   tools/local_slurm.sh stop  [DIR]
set -euo pipefail
action=${1:-start}
dir=${2:-/tmp/harness-slurm}
conf=$dir/slurm.conf
host=$(hostname -s)

stop() {
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
}

if [ "$action" = stop ]; then stop; exit 0; fi
if [ "$action" != start ]; then echo "usage: $0 start|stop [DIR]" >&2; exit 2; fi
for tool in slurmctld slurmd munged sbatch; do
    command -v "$tool" >/dev/null || { echo "local_slurm: $tool not found (apt-get install slurm-wlm munge, as root)" >&2; exit 3; }
done
[ "$(id -u)" = 0 ] || { echo "local_slurm: needs root (slurmd runs jobs as their users)" >&2; exit 3; }

mkdir -p "$dir/state" "$dir/spool"
if ! pgrep -x munged >/dev/null; then
    [ -f /etc/munge/munge.key ] || /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge && chown munge:munge /run/munge /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged
fi
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$conf" <<CONF
ClusterName=harness
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$conf
if ! scontrol ping 2>/dev/null | grep -q UP; then
    stop
    slurmctld -f "$conf"
    slurmd -f "$conf"
fi
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then echo "SLURM_CONF=$conf"; exit 0; fi
    sleep 0.5
done
echo "local_slurm: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
exit 4
