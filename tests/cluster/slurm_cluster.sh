#!/bin/bash
# A real single-node Slurm for the cluster tests: munged, slurmctld and slurmd as root, no cgroups, loopback only.
#
#   slurm_cluster.sh start DIR   installs slurm-wlm and munge when missing, writes DIR/slurm.conf (free ports),
#                                starts the daemons, waits until the node is idle, prints SLURM_CONF=DIR/slurm.conf
#   slurm_cluster.sh stop DIR    cancels the jobs, stops the daemons started by `start` (by their pid files)
#
# Requeue is made fast: cred_expire=5 (a requeued job may start 6 s after it ended instead of 121 s) and a
# scheduler pass every second. The node declares 8 CPUs whatever the machine has (config_overrides), so several
# one-CPU jobs fit.
set -euo pipefail
ACTION=${1:?usage: slurm_cluster.sh start|stop DIR}
D=${2:?usage: slurm_cluster.sh start|stop DIR}
HOST=$(hostname -s)

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
}

start_munge() {
  mkdir -p "$D/munge" && chmod 755 "$D/munge"
  [ -s "$D/munge/munge.key" ] || dd if=/dev/urandom of="$D/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$D/munge/munge.key"
  if ! alive "$D/munge/munged.pid"; then
    rm -f "$D/munge/munge.socket" "$D/munge/munge.socket.lock"
    munged --force --socket="$D/munge/munge.socket" --key-file="$D/munge/munge.key" \
      --pid-file="$D/munge/munged.pid" --log-file="$D/log/munged.log" --seed-file="$D/munge/munged.seed"
  fi
  for _ in $(seq 50); do
    munge -n -S "$D/munge/munge.socket" | unmunge -S "$D/munge/munge.socket" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "munged did not answer; see $D/log/munged.log" >&2
  return 1
}

write_conf() {
  cat > "$D/slurm.conf" <<CONF
ClusterName=aegis-test
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.socket,cred_expire=5
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/slurmd-%n
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=15
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=8 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

start() {
  install_packages
  mkdir -p "$D"/{state,log} "$D/spool/slurmd-$HOST"
  start_munge
  alive "$D/slurmctld.pid" || write_conf
  export SLURM_CONF="$D/slurm.conf"
  alive "$D/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
  alive "$D/slurmd.pid" || slurmd -f "$SLURM_CONF" -N "$HOST"
  local state=""
  for _ in $(seq 300); do
    state=$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null || true)
    case "$state" in idle* | mixed* | allocated*) echo "SLURM_CONF=$SLURM_CONF"; return 0 ;; esac
    sleep 0.1
  done
  echo "slurm did not come up (node state '$state'); see $D/log" >&2
  return 1
}

wait_gone() {
  local pid
  for pid in "$@"; do
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  done
  return 0
}

stop() {
  export SLURM_CONF="$D/slurm.conf"
  if alive "$D/slurmctld.pid"; then
    scancel --full --quiet "--user=$(id -un)" 2>/dev/null || true
    for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  local pids="" f
  for f in "$D/slurmd.pid" "$D/slurmctld.pid" "$D/munge/munged.pid"; do
    if alive "$f"; then pids="$pids $(cat "$f")"; kill -TERM "$(cat "$f")"; fi
  done
  # shellcheck disable=SC2086
  wait_gone $pids
  rm -f "$D/slurmd.pid" "$D/slurmctld.pid" "$D/munge/munged.pid"
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: slurm_cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
