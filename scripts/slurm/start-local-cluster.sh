#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the cluster tests (and for trying `llmembed
# slurm` by hand): installs Debian's slurm-wlm and munge when missing, writes a minimal
# slurm.conf (this host, its CPUs, proctrack/linuxproc, task/none, select/cons_tres), starts
# munged, slurmctld and slurmd, and waits for the node to be idle. Needs root. Stop it with
# stop-local-cluster.sh. Everything it writes lives under $LLMEMBED_SLURM_DIR (default
# /tmp/llmembed-slurm), except the config (/etc/slurm/slurm.conf, where the clients look).
set -euo pipefail

state=${LLMEMBED_SLURM_DIR:-/tmp/llmembed-slurm}
cpus=${LLMEMBED_SLURM_CPUS:-2}

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p "$state"/{ctld,d,log} /etc/slurm
chown -R slurm:slurm "$state"/ctld "$state"/log 2>/dev/null || true

cat > /etc/slurm/slurm.conf <<CONF
# Written by scripts/slurm/start-local-cluster.sh: a one-node cluster for tests.
ClusterName=llmembed-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
# No cgroup.conf: proctrack/linuxproc and task/none use no cgroups (slurm 22.05 has no
# `CgroupPlugin=disabled`, and containers often have no writable cgroup tree).
rm -f /etc/slurm/cgroup.conf

# munge: a key (the package makes one; make it if missing), its run and log folders.
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
chmod 400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null

# Daemons of an earlier start on this state folder are stopped first.
for d in slurmctld slurmd; do
  if [ -f "$state/$d.pid" ] && kill -0 "$(cat "$state/$d.pid" 2>/dev/null)" 2>/dev/null; then
    kill "$(cat "$state/$d.pid")"
    for _ in $(seq 50); do kill -0 "$(cat "$state/$d.pid" 2>/dev/null)" 2>/dev/null || break; sleep 0.2; done
  fi
done
/usr/sbin/slurmctld -i || { tail -n 20 "$state/log/slurmctld.log" >&2; exit 1; }
/usr/sbin/slurmd || { tail -n 20 "$state/log/slurmd.log" >&2; exit 1; }

# Idle within a minute, or say why not.
for _ in $(seq 120); do
  st=$(sinfo -h -N -n "$host" -o '%t' 2>/dev/null || true)
  case "$st" in
    idle) echo "slurm: node $host idle ($cpus CPUs), state in $state"; exit 0 ;;
    down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.5
done
echo "slurm: node $host did not become idle (state: ${st:-none}); logs in $state/log" >&2
tail -n 20 "$state"/log/*.log >&2 || true
exit 1
