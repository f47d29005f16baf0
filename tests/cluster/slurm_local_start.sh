#!/usr/bin/env bash
# Start a real Slurm cluster on this machine, without systemd, for the test suite: a replica of Savio's
# scheduling rules (../shared/reference/savio-audit.md) on five virtual nodes, each its own slurmd.
#
#   node   partition   shape (advertised; the machine may have fewer)     Savio's node it stands for
#   htc1   savio3_htc  40 cores, no GPU                                    savio3_htc
#   a5k1-2 savio4_gpu  32 cores, 8 fake gpu:A5000                          savio4_gpu A5000 (two: multi-node jobs)
#   a40g1  savio3_gpu  16 cores, 2 fake gpu:A40                            savio3_gpu 2xA40
#
# Accounting (slurmdbd + MariaDB) enforces associations, limits and QoS as Savio does:
#   fc_test (an FCA): savio3_htc/savio2_htc savio_normal,savio_debug; savio4_gpu a5k_gpu4_normal,savio_lowprio;
#                     savio3_gpu gtx2080_gpu3_normal (Def),a40_gpu3_normal,savio_lowprio. No savio_debug on GPUs.
#   co_test (a condo): savio_lowprio everywhere, and its condo QoS test_gpu4_normal on savio4_gpu.
#   savio_lowprio is preemptible (PreemptType=preempt/qos, PreemptMode=REQUEUE, GraceTime 15 s); JobRequeue=0,
#   so only jobs sent with --requeue come back after a preemption.
# A job_submit Lua plugin (Debian's slurm has job_submit/lua) refuses at submit what Savio refuses there:
# fewer CPUs per GPU than the type's minimum (A5000 4, A40 8) and a GPU type under another type's QoS.
#
# Gotchas of several slurmd on one host (Debian's slurmd is built with multiple-slurmd support):
#  - each node needs NodeHostname=<this host>, its own Port, and %n in SlurmdSpoolDir/PidFile/LogFile;
#    start each with `slurmd -N NAME`. The node names must resolve (MASTER_ADDR): they go to /etc/hosts.
#  - config_overrides lets a node advertise more CPUs/memory/GPUs than the machine has; the fake GPUs are
#    character devices aliasing /dev/null (`mknod c 1 3`), one directory per node.
#  - jobs on "different nodes" share one kernel: ports, /tmp and files are shared, which real nodes are not.
#
# Running it again while the cluster is up is a cheap no-op. Stop with slurm_local_stop.sh.
#
# Environment:
#   SLURM_LOCAL_ACCOUNTING  1 (default) for slurmdbd + MariaDB; 0 for none (sacct and the rules will not work)
#   SLURM_LOCAL_NO_INSTALL  1 to fail instead of calling apt-get when a package is missing
set -euo pipefail

NODES=(htc1 a5k1 a5k2 a40g1)
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
HOST=$(hostname -s)
ETC=/etc/slurm
FAKEGPU=/var/lib/fakegpu
DB_PASS=slurm_local_test_only   # a throwaway password for a DB bound to 127.0.0.1 on a test machine

log() { printf '[slurm_local_start] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

# --- 1. packages -------------------------------------------------------------------------------------------
pkgs=(slurmctld slurmd slurm-client munge lmod)
[ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "${SLURM_LOCAL_NO_INSTALL:-0}" = 1 ] && die "missing packages: ${missing[*]}"
  log "installing: ${missing[*]}"
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep package scripts from starting services
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

for n in "$HOST" "${NODES[@]}"; do
  getent hosts "$n" >/dev/null || echo "127.0.0.1 $n" >> /etc/hosts
done

# --- 2. configuration (rewritten only when it changes) -----------------------------------------------------
mkdir -p "$ETC" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
fake_gpus() {  # node count: character devices aliasing /dev/null
  mkdir -p "$FAKEGPU/$1"
  for ((i = 0; i < $2; i++)); do [ -c "$FAKEGPU/$1/gpu$i" ] || { rm -f "$FAKEGPU/$1/gpu$i"; mknod "$FAKEGPU/$1/gpu$i" c 1 3; }; done
}
fake_gpus a5k1 8; fake_gpus a5k2 8; fake_gpus a40g1 2

if [ "$ACCOUNTING" = 1 ]; then
  acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageEnforce=associations,limits,qos"
else
  acct_lines="AccountingStorageType=accounting_storage/none"
fi

node() {  # name port cpus memory_mb [gres]
  printf 'NodeName=%s NodeHostname=%s NodeAddr=127.0.0.1 Port=%s CPUs=%s Boards=1 SocketsPerBoard=1 CoresPerSocket=%s ThreadsPerCore=1 RealMemory=%s%s State=UNKNOWN\n' \
    "$1" "$HOST" "$2" "$3" "$3" "$4" "${5:+ Gres=$5}"
}
new_conf=$(cat <<EOF
# Written by tests/cluster/slurm_local_start.sh: a Savio replica on one machine.
ClusterName=localcluster
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
EnforcePartLimits=ALL
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
JobSubmitPlugins=lua
PreemptType=preempt/qos
PreemptMode=REQUEUE
JobRequeue=0
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
$acct_lines
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
GresTypes=gpu
$(node htc1 17001 40 192000)
$(node a5k1 17002 32 512000 gpu:A5000:8)
$(node a5k2 17003 32 512000 gpu:A5000:8)
$(node a40g1 17004 16 256000 gpu:A40:2)
PartitionName=savio3_htc Nodes=htc1 Default=YES MaxTime=3-00:00:00 DefaultTime=01:00:00 State=UP
PartitionName=savio4_gpu Nodes=a5k[1-2] Default=NO MaxTime=3-00:00:00 DefaultTime=01:00:00 State=UP
PartitionName=savio3_gpu Nodes=a40g1 Default=NO MaxTime=3-00:00:00 DefaultTime=01:00:00 State=UP
EOF
)
new_gres="AutoDetect=off
NodeName=a5k1 Name=gpu Type=A5000 File=$FAKEGPU/a5k1/gpu[0-7]
NodeName=a5k2 Name=gpu Type=A5000 File=$FAKEGPU/a5k2/gpu[0-7]
NodeName=a40g1 Name=gpu Type=A40 File=$FAKEGPU/a40g1/gpu[0-1]"
new_lua=$(cat "$(dirname "${BASH_SOURCE[0]}")/job_submit.lua")

changed=0
if [ "$(cat "$ETC/slurm.conf" 2>/dev/null)" != "$new_conf" ]; then printf '%s\n' "$new_conf" > "$ETC/slurm.conf"; changed=1; fi
if [ "$(cat "$ETC/gres.conf" 2>/dev/null)" != "$new_gres" ]; then printf '%s\n' "$new_gres" > "$ETC/gres.conf"; changed=1; fi
if [ "$(cat "$ETC/job_submit.lua" 2>/dev/null)" != "$new_lua" ]; then printf '%s\n' "$new_lua" > "$ETC/job_submit.lua"; changed=1; fi
chmod 644 "$ETC/slurm.conf" "$ETC/gres.conf" "$ETC/job_submit.lua"

# --- 3. munge ----------------------------------------------------------------------------------------------
[ -f /etc/munge/munge.key ] || { mungekey --create; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
if ! alive /run/munge/munged.pid; then
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || die "munge does not work"

# --- 4. accounting: MariaDB + slurmdbd + associations ------------------------------------------------------
if [ "$ACCOUNTING" = 1 ]; then
  if ! alive /run/mysqld/mysqld.pid; then
    install -d -o mysql -g mysql /run/mysqld
    setsid -f /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid \
      --socket=/run/mysqld/mysqld.sock --bind-address=127.0.0.1 >/var/log/slurm/mariadb.log 2>&1
  fi
  for _ in $(seq 100); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.2; done
  mariadb-admin ping >/dev/null 2>&1 || die "MariaDB did not start (see /var/log/slurm/mariadb.log)"
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  dbd_conf="AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=/run/slurm/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db"
  if [ "$(cat "$ETC/slurmdbd.conf" 2>/dev/null)" != "$dbd_conf" ]; then
    printf '%s\n' "$dbd_conf" > "$ETC/slurmdbd.conf"
    alive /run/slurm/slurmdbd.pid && kill "$(cat /run/slurm/slurmdbd.pid)" && sleep 2
  fi
  chmod 600 "$ETC/slurmdbd.conf"
  alive /run/slurm/slurmdbd.pid || /usr/sbin/slurmdbd
  for _ in $(seq 150); do sacctmgr -nP list cluster >/dev/null 2>&1 && break; sleep 0.2; done
  sacctmgr -nP list cluster >/dev/null 2>&1 || die "slurmdbd did not answer (see /var/log/slurm/slurmdbd.log)"
  # -P: parsable output, because sacctmgr truncates names to 10 characters otherwise.
  sacctmgr -nP list cluster format=cluster | grep -qx localcluster || sacctmgr -i add cluster localcluster >/dev/null
  # QoS as on Savio: savio_lowprio is preempted (requeued) by every other QoS, after a grace time to save.
  qos_all="savio_normal savio_debug savio_lowprio a5k_gpu4_normal a40_gpu3_normal gtx2080_gpu3_normal test_gpu4_normal"
  have_qos=$(sacctmgr -nP list qos format=name)
  for q in $qos_all; do
    grep -qx "$q" <<<"$have_qos" || sacctmgr -i add qos "$q" >/dev/null
  done
  sacctmgr -i modify qos savio_lowprio set MaxWall=3-00:00:00 GraceTime=15 PreemptMode=requeue Flags=DenyOnLimit >/dev/null
  sacctmgr -i modify qos savio_debug set MaxWall=03:00:00 MaxTRESPerJob=node=4 Preempt=savio_lowprio Flags=DenyOnLimit >/dev/null
  for q in savio_normal a5k_gpu4_normal a40_gpu3_normal gtx2080_gpu3_normal test_gpu4_normal; do
    sacctmgr -i modify qos "$q" set MaxWall=3-00:00:00 MaxTRESPerJob=node=24 Preempt=savio_lowprio Flags=DenyOnLimit >/dev/null
  done
  have_acct=$(sacctmgr -nP list account format=account)
  for a in fc_test co_test; do
    grep -qx "$a" <<<"$have_acct" || sacctmgr -i add account "$a" cluster=localcluster description=test organization=test >/dev/null
  done
  # user root: one association per account and partition, as `sacctmgr show assoc` lists them on Savio
  assoc() {  # account partition qos,list default
    if ! sacctmgr -nP list assoc where user=root account="$1" partition="$2" format=partition | grep -qx "$2"; then
      sacctmgr -i add user root account="$1" partition="$2" cluster=localcluster >/dev/null
    fi
    sacctmgr -i modify user where name=root account="$1" partition="$2" set qos="$3" defaultqos="$4" >/dev/null || true
  }
  assoc fc_test savio3_htc savio_normal,savio_debug savio_normal
  assoc fc_test savio4_gpu a5k_gpu4_normal,savio_lowprio a5k_gpu4_normal
  assoc fc_test savio3_gpu gtx2080_gpu3_normal,a40_gpu3_normal,savio_lowprio gtx2080_gpu3_normal
  assoc co_test savio3_htc savio_lowprio savio_lowprio
  assoc co_test savio4_gpu test_gpu4_normal,savio_lowprio test_gpu4_normal
  assoc co_test savio3_gpu savio_lowprio savio_lowprio
  # the single-node cluster of earlier versions gave root an account-wide association: not on Savio
  if sacctmgr -nP list assoc where user=root account=fc_test format=partition | grep -qx ""; then
    sacctmgr -i delete user where name=root account=fc_test partition= >/dev/null 2>&1 || true
  fi
  sacctmgr -i modify user root set defaultaccount=fc_test >/dev/null || true
fi

# --- 5. slurmctld + slurmd ---------------------------------------------------------------------------------
stop_pid() {  # pidfile: SIGTERM, bounded wait, SIGKILL
  local f=$1 pid
  alive "$f" || return 0
  pid=$(cat "$f"); kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
slurmd_pid() { echo "/run/slurm/slurmd-$1.pid"; }
if [ "$changed" = 1 ]; then  # AccountingStorageEnforce and node changes need a real restart
  for n in "${NODES[@]}"; do stop_pid "$(slurmd_pid "$n")"; done
  stop_pid /run/slurm/slurmd.pid; stop_pid /run/slurm/slurmctld.pid   # the single-node layout of before
fi
alive /run/slurm/slurmctld.pid || /usr/sbin/slurmctld
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
for n in "${NODES[@]}"; do
  mkdir -p "/var/spool/slurmd/$n"
  alive "$(slurmd_pid "$n")" || /usr/sbin/slurmd -N "$n"
done

usable() {  # every node idle, mixed, allocated or completing
  local states; states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)
  [ "$(grep -cE ' (idle|mixed|allocated|completing)' <<<"$states")" -ge ${#NODES[@]} ]
}
waited=0; resumed=0
until usable; do
  sleep 0.2; waited=$((waited + 1))
  if [ "$waited" -eq 50 ] && [ "$resumed" = 0 ]; then  # 10 s: e.g. a DRAIN kept in the saved state
    log "nodes not usable: $(sinfo -h -N -o '%N=%T(%E)' | sort -u | tr '\n' ' ')- resuming"
    for n in "${NODES[@]}"; do scontrol update nodename="$n" state=resume 2>/dev/null || true; done; resumed=1
  fi
  [ "$waited" -ge 300 ] && die "nodes not usable after 60 s: $(sinfo -h -N -o '%N %T %E' | sort -u | tr '\n' ';')"
done
log "ready: $(sinfo -h -o '%P %a %D %T' | tr '\n' ';')"
