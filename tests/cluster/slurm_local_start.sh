#!/usr/bin/env bash
# Start a real single-node Slurm cluster on this machine, without systemd, for the test suite.
#
# Installs the Debian packages when missing, writes a Savio-like configuration (partitions savio3_htc and
# savio4_gpu, fake gpu:A5000:4 GRES, accounting with account fc_test and QoS savio_normal/savio_debug
# enforced), starts munged, mariadbd, slurmdbd, slurmctld and slurmd, and waits (bounded) until the node
# is usable. Running it again while the cluster is up is a cheap no-op. Stop with slurm_local_stop.sh.
#
# Environment:
#   SLURM_LOCAL_CPUS        CPUs the node advertises (default 8; more than the machine has is fine)
#   SLURM_LOCAL_ACCOUNTING  1 (default) for slurmdbd + MariaDB; 0 for none (sacct will not work)
#   SLURM_LOCAL_NO_INSTALL  1 to fail instead of calling apt-get when a package is missing
set -euo pipefail

CPUS=${SLURM_LOCAL_CPUS:-8}
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

getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts

# --- 2. configuration (rewritten only when it changes) -----------------------------------------------------
mkdir -p "$ETC" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm "$FAKEGPU"
for i in 0 1 2 3; do [ -c "$FAKEGPU/gpu$i" ] || { rm -f "$FAKEGPU/gpu$i"; mknod "$FAKEGPU/gpu$i" c 1 3; }; done
mem=$(awk '/MemTotal/ {print int($2/1024) - 512}' /proc/meminfo)

if [ "$ACCOUNTING" = 1 ]; then
  acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageEnforce=associations,limits,qos"
else
  acct_lines="AccountingStorageType=accounting_storage/none"
fi

new_conf=$(cat <<EOF
# Written by tests/cluster/slurm_local_start.sh: a single-node, Savio-like test cluster.
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
SchedulerParameters=batch_sched_delay=0
EnforcePartLimits=ALL
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$acct_lines
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem Gres=gpu:A5000:4 State=UNKNOWN
PartitionName=savio3_htc Nodes=$HOST Default=YES MaxTime=3-00:00:00 DefaultTime=01:00:00 AllowQos=savio_normal,savio_debug State=UP
PartitionName=savio4_gpu Nodes=$HOST Default=NO MaxTime=3-00:00:00 DefaultTime=01:00:00 AllowQos=savio_normal,savio_debug State=UP
EOF
)
new_gres="AutoDetect=off
NodeName=$HOST Name=gpu Type=A5000 File=$FAKEGPU/gpu[0-3]"

changed=0
if [ "$(cat "$ETC/slurm.conf" 2>/dev/null)" != "$new_conf" ]; then printf '%s\n' "$new_conf" > "$ETC/slurm.conf"; changed=1; fi
if [ "$(cat "$ETC/gres.conf" 2>/dev/null)" != "$new_gres" ]; then printf '%s\n' "$new_gres" > "$ETC/gres.conf"; changed=1; fi
chmod 644 "$ETC/slurm.conf" "$ETC/gres.conf"

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
  for q in savio_normal savio_debug; do
    sacctmgr -nP list qos format=name | grep -qx "$q" || sacctmgr -i add qos "$q" >/dev/null
  done
  sacctmgr -i modify qos savio_debug set MaxWall=03:00:00 Flags=DenyOnLimit >/dev/null || true
  sacctmgr -i modify qos savio_normal set MaxWall=3-00:00:00 Flags=DenyOnLimit >/dev/null || true
  sacctmgr -nP list account format=account | grep -qx fc_test \
    || sacctmgr -i add account fc_test cluster=localcluster description=test organization=test >/dev/null
  sacctmgr -nP list assoc format=user,account | grep -qx "root|fc_test" \
    || sacctmgr -i add user root account=fc_test cluster=localcluster >/dev/null
  sacctmgr -i modify user root set qos=savio_normal,savio_debug defaultqos=savio_normal >/dev/null || true
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
if [ "$changed" = 1 ]; then  # AccountingStorageEnforce and node changes need a real restart
  stop_pid /run/slurm/slurmd.pid; stop_pid /run/slurm/slurmctld.pid
fi
alive /run/slurm/slurmctld.pid || /usr/sbin/slurmctld
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
alive /run/slurm/slurmd.pid || /usr/sbin/slurmd

usable() { sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n1 | grep -Eq '^(idle|mixed|allocated|completing)'; }
waited=0; resumed=0
until usable; do
  sleep 0.2; waited=$((waited + 1))
  if [ "$waited" -eq 50 ] && [ "$resumed" = 0 ]; then  # 10 s: e.g. a DRAIN kept in the saved state
    log "node not usable: $(scontrol show node "$HOST" | grep -Eo '(State|Reason)=[^ ]*' | tr '\n' ' ')- resuming"
    scontrol update nodename="$HOST" state=resume || true; resumed=1
  fi
  [ "$waited" -ge 300 ] && die "node $HOST not usable after 60 s: $(sinfo -h -N -o '%T %E')"
done
log "ready: $(sinfo -h -o '%P %a %D %T' | tr '\n' ';')"
