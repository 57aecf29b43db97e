#!/usr/bin/env bash
# A single-node Slurm cluster for the tests (munge + slurmctld + slurmd on this host, as root).
#   bash .ci/slurm_cluster.sh start DIR   -> DIR/slurm.conf (point SLURM_CONF at it); PIDs in DIR/*.pid
#   bash .ci/slurm_cluster.sh stop DIR    -> stops the daemons by those PIDs
# Debian's slurm-wlm; accounting off (as on small clusters); KillWait=5: SIGKILL 5 s after a time
# limit's SIGTERM.
set -u
action=$1
dir=$(realpath -m "$2")

stop_cluster() {
    for name in slurmd slurmctld munged; do
        if [ -f "$dir/$name.pid" ]; then
            kill "$(cat "$dir/$name.pid")" 2>/dev/null
        fi
    done
    sleep 1
    for name in slurmd slurmctld munged; do
        if [ -f "$dir/$name.pid" ]; then
            kill -9 "$(cat "$dir/$name.pid")" 2>/dev/null
            rm -f "$dir/$name.pid"
        fi
    done
}

if [ "$action" = stop ]; then
    stop_cluster
    exit 0
fi

mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
host=$(hostname -s)
cpus=$(nproc)
memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > "$dir/slurm.conf" <<CONF
ClusterName=rosebench
SlurmctldHost=$host
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
MinJobAge=300
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SlurmctldPort=16817
SlurmdPort=16818
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmdSpoolDir=$dir/spool
StateSaveLocation=$dir/state
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
[ -f "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1k count=1 status=none
chmod 700 "$dir/munge" && chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed" || exit 1
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF" && slurmd -f "$SLURM_CONF" || { stop_cluster; exit 1; }
for _ in $(seq 1 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then
        exit 0
    fi
    sleep 0.5
done
echo "slurm_cluster: the node did not come up; see $dir/*.log" >&2
stop_cluster
exit 1
