#!/usr/bin/env bash
# A two-node SLURM cluster on this machine for the launch-script test: slurmctld and two
# slurmd (n1, n2, one CPU each) on 127.0.0.1 with auth/none, then "$@", then the daemons
# are stopped by PID. Run it inside `unshare -m`: it bind-mounts a copy of /etc/hosts in
# which n1 and n2 resolve to 127.0.0.1 (the learner's coordinator address is n1:PORT), so
# the machine's own /etc/hosts is never touched.
# Usage: unshare -m bash slurm_cluster.sh STATE_DIR CTLD_PORT N1_PORT N2_PORT COMMAND...
set -euo pipefail
d=$1 ctld_port=$2 n1_port=$3 n2_port=$4; shift 4
mkdir -p "$d/state" "$d/spool-n1" "$d/spool-n2" "$d/log"
cat > "$d/slurm.conf" <<CONF
ClusterName=local
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmctldPort=$ctld_port
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/linear
MpiDefault=none
SlurmUser=root
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool-%n
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd-%n.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd-%n.log
ReturnToService=2
NodeName=n1 NodeAddr=127.0.0.1 Port=$n1_port CPUs=1 RealMemory=1000
NodeName=n2 NodeAddr=127.0.0.1 Port=$n2_port CPUs=1 RealMemory=1000
PartitionName=local Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF
cp /etc/hosts "$d/hosts"
echo "127.0.0.1 n1 n2" >> "$d/hosts"
mount --bind "$d/hosts" /etc/hosts
export SLURM_CONF="$d/slurm.conf"
slurmctld -D -i > "$d/log/slurmctld.out" 2>&1 &
pids=($!)
slurmd -D -N n1 > "$d/log/n1.out" 2>&1 &
pids+=($!)
slurmd -D -N n2 > "$d/log/n2.out" 2>&1 &
pids+=($!)
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT
# Both nodes idle within 30 s, else give up (the logs in $d/log say why).
for _ in $(seq 60); do
  [ "$(sinfo -h -N -t idle -o %N 2>/dev/null | wc -l)" -eq 2 ] && break
  sleep 0.5
done
[ "$(sinfo -h -N -t idle -o %N 2>/dev/null | wc -l)" -eq 2 ] || {
  echo "slurm_cluster.sh: the nodes did not come up in 30 s" >&2; sinfo -N >&2 || true; exit 1; }
"$@"
