#!/usr/bin/env bash
# Test infrastructure for faice: the real services the integration tests talk to.
#
#   scripts/infra.sh up       install what is missing and start what is not healthy
#   scripts/infra.sh engine   only Docker and the base images (what scripts/demo.sh needs)
#   scripts/infra.sh down     stop what `up` started, remove test containers
#   scripts/infra.sh status   one line per service; exit 0 when everything is healthy
#   scripts/infra.sh registry only the loopback OCI registry (TLS + htpasswd) and its test images
#
# Every server listens on 127.0.0.1 only. dockerd runs without a bridge and without
# iptables; containers use --network host or none. Every step is skipped when its service
# is already healthy, so `up` on a machine that is already set up takes about a second.
# Recipes and measurements: /work/shared/research/env-feasibility.md.
#
# Environment:
#   FAICE_INFRA_DIR     state dir (default /tmp/faice-infra): pidfiles, logs, keys, env.sh, env.json
#   FAICE_INFRA_SLURM   0 = no munge/Slurm (default 1)
#   FAICE_VENV          Python venv that provides moto_server and boto3 (default <repo>/.venv)
#   FAICE_DEBIAN_MIRROR mirror for debootstrap (default http://deb.debian.org/debian)
set -Eeuo pipefail
trap 'printf "infra: error: line %s: %s (exit %s)\n" "$LINENO" "$BASH_COMMAND" "$?" >&2' ERR

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${FAICE_INFRA_DIR:-/tmp/faice-infra}
VENV=${FAICE_VENV:-$REPO/.venv}
WANT_SLURM=${FAICE_INFRA_SLURM:-1}
MIRROR=${FAICE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
export DEBIAN_FRONTEND=noninteractive

HOST=127.0.0.1
SSH_PORT=2222 HTTP_PORT=8088 HTTPS_PORT=8443 S3_PORT=5055 S3_AUTH_PORT=5056 REGISTRY_PORT=5443
SSH_PW_USER=faicepw SSH_PW_PASS=faicepw-secret
SSH_KEY_USER=faicekey SSH_KEY_PASS=faicekey-pass
HTTP_USER=faicehttp HTTP_PASS=faicehttp-secret
REGISTRY_USER=faicereg REGISTRY_PASS=faicereg-secret
REGISTRY=$HOST:$REGISTRY_PORT
BASE_IMAGE=faice-test/base:bookworm
USER_IMAGE=faice-test/user:bookworm
IMAGE_VERSION=2   # bump to force a rebuild of both images when their recipe changes
TEST_LABEL=org.faice.test
# The images are marked org.faice.test.image, NOT org.faice.test: a container inherits its
# image's labels, so an image labelled org.faice.test would make every container of it (faice's
# own run containers included) match the test-container cleanup of any concurrent pytest session.

# ---------------------------------------------------------------- helpers
say() { printf 'infra: %-7s %s\n' "$1" "$2"; }
die() { printf 'infra: error: %s\n' "$*" >&2; exit 1; }
port_open() { (echo >"/dev/tcp/$HOST/$1") 2>/dev/null; }

# wait_until SECONDS CMD...: retry CMD every 0.1 s
wait_until() {
  local end=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS < end)) || return 1
    sleep 0.1
  done
}

# pid_of PIDFILE PATTERN: print the pid when it is alive and its command line matches
pid_of() {
  local pid
  [[ -s $1 ]] || return 1
  read -r pid <"$1" || true
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
  printf '%s\n' "$pid"
}

pid_gone() { [[ ! -d /proc/$1 ]] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# stop_pidfile NAME PIDFILE PATTERN: end a process this script started, by its pid
stop_pidfile() {
  local name=$1 file=$2 pat=$3 pid
  if pid=$(pid_of "$file" "$pat"); then
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until 20 pid_gone "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      wait_until 5 pid_gone "$pid" || true
    fi
    say "$name" "stopped (pid $pid)"
  fi
  rm -f "$file"
}

# spawn LOG CMD...: start CMD detached (own session, no inherited fds, no stdin)
spawn() {
  local log=$1; shift
  setsid "$@" >"$log" 2>&1 </dev/null 9>&- &
}

# write_if_changed FILE CONTENT: returns 0 when the file was (re)written
write_if_changed() {
  if [[ -f $1 ]] && [[ "$(cat "$1")" == "$2" ]]; then return 1; fi
  printf '%s\n' "$2" >"$1.tmp.$$"
  mv -f "$1.tmp.$$" "$1"
}

lock_state() {
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock -w 900 9 || die "another infra.sh holds $STATE/.lock"
}

# ---------------------------------------------------------------- packages
apt_packages() { # apt_packages [PACKAGE...]: the given ones, or everything the tests need
  local pkgs=("$@") missing=() installed p
  if ((${#pkgs[@]} == 0)); then
    pkgs=(docker.io debootstrap openssh-server openssh-client sshfs fuse3 nginx-light
      openssl curl gnome-keyring dbus-daemon postgresql chromium chromium-driver
      podman crun conmon netavark catatonit fuse-overlayfs slirp4netns uidmap
      golang-github-containers-common charliecloud-runtime charliecloud-builders python3-lark
      squashfuse docker-registry apache2-utils skopeo ca-certificates)
    [[ $WANT_SLURM == 0 ]] || pkgs+=(slurmctld slurmd slurm-client munge)
  fi
  installed=" $(dpkg-query -W -f='${Package}|${db:Status-Abbrev}\n' "${pkgs[@]}" 2>/dev/null |
    awk -F'|' '$2 ~ /^ii/ {printf "%s ", $1}' || true)"
  for p in "${pkgs[@]}"; do
    [[ $installed == *" $p "* ]] || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    say apt "ok (${#pkgs[@]} packages present)"
    return
  fi
  say apt "installing ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -q >"$STATE/apt.log" 2>&1 ||
    die "apt-get update failed, see $STATE/apt.log"
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" \
    >>"$STATE/apt.log" 2>&1 || die "apt-get install failed, see $STATE/apt.log"
}

# ---------------------------------------------------------------- docker
docker_ok() { docker info >/dev/null 2>&1; }

docker_up() {
  if docker_ok; then
    local pid
    if ! pid_of "$STATE/dockerd.pid" dockerd >/dev/null; then
      for pid in $(pgrep -x dockerd || true); do
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- '--bridge=none' ||
          say docker "WARNING: dockerd pid $pid (not ours) runs without --bridge=none"
      done
    fi
    say docker "ok"
    return
  fi
  ip link del docker0 2>/dev/null || true
  spawn "$STATE/dockerd.log" dockerd --bridge=none --iptables=false --ip-forward=false \
    --ip-masq=false --pidfile "$STATE/dockerd.pid"
  wait_until 60 docker_ok || die "dockerd did not come up, see $STATE/dockerd.log"
  say docker "started"
}

image_label() { docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null; }

# unmount anything below DIR (debootstrap mounts proc/sys in its target)
umount_below() {
  local m
  for m in $(findmnt -rn -o TARGET | grep -F -- "$1/" | sort -r || true); do
    umount -l "$m" 2>/dev/null || true
  done
}

images_up() {
  local rootfs=$STATE/rootfs ctx=$STATE/user-image base_id
  if [[ $(image_label "$BASE_IMAGE" $TEST_LABEL.version) == "$IMAGE_VERSION" ]]; then
    say image "$BASE_IMAGE ok"
  else
    say image "building $BASE_IMAGE with debootstrap (about 40 s, log $STATE/debootstrap.log)"
    umount_below "$rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,sshfs,fuse3,openssh-client,ca-certificates \
      bookworm "$rootfs" "$MIRROR" >"$STATE/debootstrap.log" 2>&1 ||
      { umount_below "$rootfs"; die "debootstrap failed, see $STATE/debootstrap.log"; }
    umount_below "$rootfs"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
      "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    tar --numeric-owner -C "$rootfs" -c . | docker import \
      -c "LABEL $TEST_LABEL.image=base $TEST_LABEL.version=$IMAGE_VERSION" \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
      -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
  fi
  base_id=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")
  if [[ $(image_label "$USER_IMAGE" $TEST_LABEL.base) == "$base_id" ]]; then
    say image "$USER_IMAGE ok"
  else
    mkdir -p "$ctx"
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN groupadd -g 1000 cc && useradd -m -u 1000 -g 1000 -s /bin/bash cc
USER cc
WORKDIR /home/cc
LABEL $TEST_LABEL.image=user $TEST_LABEL.version=$IMAGE_VERSION $TEST_LABEL.base=$base_id
EOF
    docker build --network none -t "$USER_IMAGE" "$ctx" >"$STATE/user-image.log" 2>&1 ||
      die "docker build of $USER_IMAGE failed, see $STATE/user-image.log"
    docker image prune -f --filter "label=$TEST_LABEL.image" >/dev/null 2>&1 || true
    say image "$USER_IMAGE built"
  fi
}

# ---------------------------------------------------------------- sshd
ssh_user() { # ssh_user NAME: create the account once, with a data/ dir in its home
  local u=$1
  id "$u" >/dev/null 2>&1 || useradd -m -s /bin/bash "$u"
  install -d -m 755 -o "$u" -g "$u" "/home/$u/data"
}

sshd_ok() { pid_of "$STATE/ssh/sshd.pid" sshd >/dev/null && port_open $SSH_PORT; }

sshd_up() {
  local d=$STATE/ssh conf hostkey restart=0
  mkdir -p "$d" /run/sshd
  chmod 755 /run/sshd
  [[ -f $d/host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -C faice-test-host -f "$d/host_ed25519_key"
  [[ -f $d/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C faice-test-ed25519 -f "$d/id_ed25519"
  [[ -f $d/id_rsa ]] || ssh-keygen -q -t rsa -b 3072 -m PEM -N '' -C faice-test-rsa -f "$d/id_rsa"
  if [[ ! -f $d/id_ed25519_enc ]]; then # the same ed25519 key, passphrase-protected
    cp "$d/id_ed25519" "$d/id_ed25519_enc.tmp"
    ssh-keygen -q -p -P '' -N "$SSH_KEY_PASS" -f "$d/id_ed25519_enc.tmp" >/dev/null
    cp "$d/id_ed25519.pub" "$d/id_ed25519_enc.pub"
    mv "$d/id_ed25519_enc.tmp" "$d/id_ed25519_enc"
  fi
  hostkey=$(cut -d' ' -f1,2 "$d/host_ed25519_key.pub")
  write_if_changed "$d/known_hosts" "[$HOST]:$SSH_PORT $hostkey
[localhost]:$SSH_PORT $hostkey" || true

  ssh_user "$SSH_PW_USER"
  ssh_user "$SSH_KEY_USER"
  echo "$SSH_PW_USER:$SSH_PW_PASS" | chpasswd
  # key-only user: no usable password, but not "locked" ("!"), which sshd without PAM refuses
  usermod -p '*' "$SSH_KEY_USER"
  install -d -m 700 -o "$SSH_KEY_USER" -g "$SSH_KEY_USER" "/home/$SSH_KEY_USER/.ssh"
  cat "$d/id_ed25519.pub" "$d/id_rsa.pub" >"$d/authorized_keys"
  install -m 600 -o "$SSH_KEY_USER" -g "$SSH_KEY_USER" "$d/authorized_keys" \
    "/home/$SSH_KEY_USER/.ssh/authorized_keys"

  conf="Port $SSH_PORT
ListenAddress $HOST
HostKey $d/host_ed25519_key
PidFile $d/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
PermitRootLogin no
AllowUsers $SSH_PW_USER $SSH_KEY_USER
MaxStartups 100:30:200
MaxSessions 50
MaxAuthTries 10
LoginGraceTime 30
UseDNS no
PrintMotd no
Subsystem sftp internal-sftp
Match User $SSH_KEY_USER
    PasswordAuthentication no"
  if write_if_changed "$d/sshd_config" "$conf"; then restart=1; fi
  if ((restart == 0)) && sshd_ok; then
    say sshd "ok ($HOST:$SSH_PORT)"
    return
  fi
  stop_pidfile sshd "$d/sshd.pid" sshd
  port_open $SSH_PORT && die "port $SSH_PORT is taken by a process that is not ours"
  /usr/sbin/sshd -t -f "$d/sshd_config" || die "sshd config check failed"
  spawn "$d/sshd.log" /usr/sbin/sshd -D -e -f "$d/sshd_config"
  wait_until 10 port_open $SSH_PORT || die "sshd did not start, see $d/sshd.log"
  wait_until 5 pid_of "$d/sshd.pid" sshd >/dev/null || die "sshd wrote no pidfile"
  say sshd "started ($HOST:$SSH_PORT)"
}

# ---------------------------------------------------------------- nginx
nginx_ok() {
  pid_of "$STATE/nginx/nginx.pid" nginx >/dev/null && port_open $HTTP_PORT && port_open $HTTPS_PORT
}

nginx_up() {
  local n=$STATE/nginx conf restart=0
  mkdir -p "$n/data" "$n/tmp" "$n/tls"
  chown www-data:www-data "$n/data" "$n/tmp"
  if [[ ! -f $n/tls/server.crt ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj '/CN=faice-test CA' \
      -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' \
      -keyout "$n/tls/ca.key" -out "$n/tls/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$HOST" \
      -keyout "$n/tls/server.key" -out "$n/tls/server.csr" 2>/dev/null
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' \
      'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' \
      "subjectAltName=IP:$HOST,DNS:localhost" 'authorityKeyIdentifier=keyid' \
      'subjectKeyIdentifier=hash' >"$n/tls/server.ext"
    openssl x509 -req -in "$n/tls/server.csr" -CA "$n/tls/ca.crt" -CAkey "$n/tls/ca.key" \
      -CAcreateserial -days 3650 -extfile "$n/tls/server.ext" -out "$n/tls/server.crt.tmp" 2>/dev/null
    mv "$n/tls/server.crt.tmp" "$n/tls/server.crt"
    restart=1
  fi
  [[ -f $n/htpasswd ]] || printf '%s:%s\n' "$HTTP_USER" "$(openssl passwd -apr1 "$HTTP_PASS")" >"$n/htpasswd"
  conf="daemon off; worker_processes 1; user www-data;
pid $n/nginx.pid; error_log $n/error.log;
events { worker_connections 256; }
http {
  access_log $n/access.log; client_max_body_size 0; sendfile on;
  default_type application/octet-stream;
  client_body_temp_path $n/tmp/body; proxy_temp_path $n/tmp/proxy;
  fastcgi_temp_path $n/tmp/fcgi; uwsgi_temp_path $n/tmp/uwsgi; scgi_temp_path $n/tmp/scgi;
  server {
    listen $HOST:$HTTP_PORT;
    listen $HOST:$HTTPS_PORT ssl;
    ssl_certificate $n/tls/server.crt; ssl_certificate_key $n/tls/server.key;
    root $n/data;
    location / {
      autoindex on;
      dav_methods PUT DELETE MKCOL; create_full_put_path on; dav_access user:rw group:rw all:r;
      limit_except GET HEAD { auth_basic \"faice-test upload\"; auth_basic_user_file $n/htpasswd; }
    }
    location /json/ {
      alias $n/data/; autoindex on; autoindex_format json;
      limit_except GET HEAD { deny all; }
    }
  }
}"
  if write_if_changed "$n/nginx.conf" "$conf"; then restart=1; fi
  if ((restart == 0)) && nginx_ok; then
    say nginx "ok (http $HOST:$HTTP_PORT, https $HOST:$HTTPS_PORT)"
    return
  fi
  stop_pidfile nginx "$n/nginx.pid" nginx
  port_open $HTTP_PORT && die "port $HTTP_PORT is taken by a process that is not ours"
  port_open $HTTPS_PORT && die "port $HTTPS_PORT is taken by a process that is not ours"
  nginx -t -q -e "$n/error.log" -c "$n/nginx.conf" -p "$n" || die "nginx config check failed"
  spawn "$n/nginx.log" nginx -e "$n/error.log" -c "$n/nginx.conf" -p "$n"
  wait_until 10 port_open $HTTPS_PORT || die "nginx did not start, see $n/error.log"
  wait_until 5 pid_of "$n/nginx.pid" nginx >/dev/null || die "nginx wrote no pidfile"
  say nginx "started (http $HOST:$HTTP_PORT, https $HOST:$HTTPS_PORT)"
}

# ---------------------------------------------------------------- moto (S3)
venv_up() {
  if [[ -x $VENV/bin/moto_server ]] && "$VENV/bin/python" -c 'import boto3, flask_cors' 2>/dev/null; then
    return
  fi
  say venv "installing moto server into $VENV"
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'moto[s3,server]>=5' flask flask-cors boto3 >"$STATE/venv.log" 2>&1 ||
    die "pip install of moto failed, see $STATE/venv.log"
}

moto_start() { # moto_start NAME PORT [ENV=VALUE...]
  local name=$1 port=$2; shift 2
  port_open "$port" && die "port $port is taken by a process that is not ours"
  # the pidfile is written by the process itself, then it execs moto_server
  spawn "$STATE/$name.log" env "$@" bash -c 'echo $$ >"$0"; exec "$1" -H "$2" -p "$3"' \
    "$STATE/$name.pid" "$VENV/bin/moto_server" "$HOST" "$port"
  # TCP probe only: an HTTP request would count as one of the unauthenticated actions
  wait_until 30 port_open "$port" || die "moto on port $port did not start, see $STATE/$name.log"
}

moto_ok() { pid_of "$STATE/moto.pid" moto_server >/dev/null && port_open $S3_PORT; }

# healthy only with the key pair that was made for this very process
moto_auth_ok() {
  local pid
  pid=$(pid_of "$STATE/moto-auth.pid" moto_server) && port_open $S3_AUTH_PORT &&
    [[ -s $STATE/moto-auth.keys && $(head -n1 "$STATE/moto-auth.keys") == "$pid" ]]
}

moto_up() {
  local pid
  venv_up
  if moto_ok; then
    say s3 "ok ($HOST:$S3_PORT, no auth)"
  else
    stop_pidfile s3 "$STATE/moto.pid" moto_server
    moto_start moto $S3_PORT
    say s3 "started ($HOST:$S3_PORT, no auth)"
  fi
  # The second moto enforces IAM auth after its first three requests, which create the key.
  if moto_auth_ok; then
    say s3auth "ok ($HOST:$S3_AUTH_PORT, IAM auth)"
    return
  fi
  stop_pidfile s3auth "$STATE/moto-auth.pid" moto_server
  rm -f "$STATE/moto-auth.keys"
  moto_start moto-auth $S3_AUTH_PORT INITIAL_NO_AUTH_ACTION_COUNT=3
  pid=$(pid_of "$STATE/moto-auth.pid" moto_server) || die "moto-auth wrote no pidfile"
  "$VENV/bin/python" - "http://$HOST:$S3_AUTH_PORT" >"$STATE/moto-auth.keys.tmp" <<'EOF' ||
import json
import sys

import boto3
from botocore.config import Config

iam = boto3.client(
    "iam", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap",
    config=Config(retries={"total_max_attempts": 1}),
)
iam.create_user(UserName="faice-test")
key = iam.create_access_key(UserName="faice-test")["AccessKey"]
policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
iam.put_user_policy(UserName="faice-test", PolicyName="all", PolicyDocument=json.dumps(policy))
print(key["AccessKeyId"])
print(key["SecretAccessKey"])
EOF
    die "IAM setup of moto-auth failed, see $STATE/moto-auth.log"
  { echo "$pid"; cat "$STATE/moto-auth.keys.tmp"; } >"$STATE/moto-auth.keys"
  rm -f "$STATE/moto-auth.keys.tmp"
  chmod 600 "$STATE/moto-auth.keys"
  say s3auth "started ($HOST:$S3_AUTH_PORT, IAM auth)"
}

# ---------------------------------------------------------------- munge + slurm
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

slurm_node_ok() { sinfo -h -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }

slurm_ok() {
  pid_of "$STATE/slurm/slurmctld.pid" slurmctld >/dev/null &&
    pid_of "$STATE/slurm/slurmd.pid" slurmd >/dev/null && slurm_node_ok
}

slurm_up() {
  local sd=$STATE/slurm h conf restart=0 pid
  if munge_ok; then
    say munge "ok"
  else
    if [[ ! -s /etc/munge/munge.key ]]; then
      mungekey --create --keyfile /etc/munge/munge.key
      chown munge:munge /etc/munge/munge.key
      chmod 400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 755 /run/munge
    runuser -u munge -- /usr/sbin/munged --force 9>&- </dev/null >"$STATE/munged.out" 2>&1 ||
      die "munged did not start, see $STATE/munged.out and /var/log/munge/munged.log"
    wait_until 10 munge_ok || die "munge does not work, see /var/log/munge/munged.log"
    cp /run/munge/munged.pid "$STATE/munged.pid" # marks it as ours, for `down`
    say munge "started"
  fi

  h=$(hostname -s)
  mkdir -p "$sd/state" "$sd/spool" "$sd/log" /etc/slurm
  conf="# written by faice scripts/infra.sh: single-node test cluster on 127.0.0.1
ClusterName=faice
SlurmctldHost=$h($HOST)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$sd/state
SlurmdSpoolDir=$sd/spool
SlurmctldPidFile=$sd/slurmctld.pid
SlurmdPidFile=$sd/slurmd.pid
SlurmctldLogFile=$sd/log/slurmctld.log
SlurmdLogFile=$sd/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1,sched_min_interval=0,batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
NodeName=$h NodeAddr=$HOST CPUs=$(nproc) RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes=$h Default=YES MaxTime=INFINITE State=UP"
  if write_if_changed /etc/slurm/slurm.conf "$conf"; then restart=1; fi
  if ((restart == 0)) && slurm_ok; then
    say slurm "ok (partition debug, node $h)"
    return
  fi
  if ((restart == 1)); then
    stop_pidfile slurmd "$sd/slurmd.pid" slurmd
    stop_pidfile slurmctld "$sd/slurmctld.pid" slurmctld
  fi
  pid_of "$sd/slurmctld.pid" slurmctld >/dev/null || /usr/sbin/slurmctld 9>&- </dev/null ||
    die "slurmctld did not start, see $sd/log/slurmctld.log"
  pid_of "$sd/slurmd.pid" slurmd >/dev/null || /usr/sbin/slurmd 9>&- </dev/null ||
    die "slurmd did not start, see $sd/log/slurmd.log"
  if ! wait_until 30 slurm_node_ok; then
    scontrol update NodeName="$h" State=RESUME >/dev/null 2>&1 || true
    wait_until 15 slurm_node_ok || die "the Slurm node is not idle: $(sinfo -h -o '%T %E' 2>&1)"
  fi
  say slurm "started (partition debug, node $h)"
}

# ---------------------------------------------------------------- podman, charliecloud, registry
# Podman 4.3 raises nofile/nproc for every container, which root in this VM may not do (no
# CAP_SYS_RESOURCE): lower default ulimits. crun refuses this hybrid cgroup layout: runc.
# No systemd: cgroupfs and a file event log. Host networking only (netavark, never a bridge).
podman_up() {
  local conf="# written by faice scripts/infra.sh
[containers]
default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]
[engine]
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"
runtime = \"runc\"
[network]
network_backend = \"netavark\""
  mkdir -p /etc/containers/containers.conf.d
  write_if_changed /etc/containers/containers.conf.d/50-faice-test.conf "$conf" || true
  podman info >/dev/null 2>&1 || die "podman does not work, see: podman info"
  say podman "ok ($(podman --version | awk '{print $3}'), /etc/containers/containers.conf.d/50-faice-test.conf)"
}

registry_ok() { pid_of "$STATE/registry/registry.pid" docker-registry >/dev/null && port_open $REGISTRY_PORT; }

# A loopback OCI registry as on a cluster: TLS by its own CA (trusted system-wide, so Docker,
# Podman, skopeo and ch-image all verify it) and htpasswd users; its access log shows every
# blob fetch (tests count them).
registry_up() {
  local r=$STATE/registry conf restart=0 tls=$STATE/registry/tls pid
  mkdir -p "$r/data" "$tls"
  if [[ ! -f $tls/server.crt ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj '/CN=faice-test registry CA' \
      -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' \
      -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$HOST" -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
      'extendedKeyUsage=serverAuth' "subjectAltName=IP:$HOST,DNS:localhost" >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
      -days 3650 -extfile "$tls/server.ext" -out "$tls/server.crt.tmp" 2>/dev/null
    mv "$tls/server.crt.tmp" "$tls/server.crt"
    restart=1
  fi
  if ! cmp -s "$tls/ca.crt" /usr/local/share/ca-certificates/faice-test-registry.crt; then
    cp "$tls/ca.crt" /usr/local/share/ca-certificates/faice-test-registry.crt
    update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed"
  fi
  for d in /etc/docker/certs.d/$REGISTRY /etc/containers/certs.d/$REGISTRY; do
    mkdir -p "$d"; cmp -s "$tls/ca.crt" "$d/ca.crt" || cp "$tls/ca.crt" "$d/ca.crt"
  done
  [[ -s $r/htpasswd ]] || htpasswd -Bbn "$REGISTRY_USER" "$REGISTRY_PASS" >"$r/htpasswd" 2>/dev/null
  conf="version: 0.1
log: {level: info, formatter: text, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: $r/data}, delete: {enabled: true}}
http: {addr: \"$HOST:$REGISTRY_PORT\", tls: {certificate: $tls/server.crt, key: $tls/server.key}}
auth: {htpasswd: {realm: faice-test, path: $r/htpasswd}}"
  if write_if_changed "$r/config.yml" "$conf"; then restart=1; fi
  if ((restart == 0)) && registry_ok; then
    say registry "ok (https://$REGISTRY, user $REGISTRY_USER)"
  else
    stop_pidfile registry "$r/registry.pid" docker-registry
    port_open $REGISTRY_PORT && die "port $REGISTRY_PORT is taken by a process that is not ours"
    spawn "$r/registry.log" bash -c 'echo $$ >"$0"; exec docker-registry serve "$1"' "$r/registry.pid" "$r/config.yml"
    wait_until 15 port_open $REGISTRY_PORT || die "the registry did not start, see $r/registry.log"
    say registry "started (https://$REGISTRY, user $REGISTRY_USER)"
  fi
  # its own description too: env.json is rewritten by whichever infra.sh runs last
  write_if_changed "$r/env.json" "{\"FAICE_TEST_REGISTRY\": \"$REGISTRY\", \"FAICE_TEST_REGISTRY_USER\": \"$REGISTRY_USER\",
 \"FAICE_TEST_REGISTRY_PASSWORD\": \"$REGISTRY_PASS\", \"FAICE_TEST_REGISTRY_LOG\": \"$r/registry.log\",
 \"FAICE_TEST_REGISTRY_IMAGE\": \"$REGISTRY/$BASE_IMAGE\"}" || true
  registry_images
}

# The test images, pushed once per image id (skopeo reads them from dockerd; the password
# goes through an auth file, never a command line).
registry_images() {
  local img id auth=$STATE/registry/auth.json
  printf '{"auths": {"%s": {"auth": "%s"}}}\n' "$REGISTRY" \
    "$(printf '%s:%s' "$REGISTRY_USER" "$REGISTRY_PASS" | base64 -w0)" >"$auth.tmp"
  chmod 600 "$auth.tmp"; mv -f "$auth.tmp" "$auth"
  for img in "$BASE_IMAGE" "$USER_IMAGE"; do
    id=$(docker image inspect -f '{{.Id}}' "$img")
    if [[ $(cat "$STATE/registry/pushed-${img//[\/:]/_}" 2>/dev/null) == "$id" ]]; then continue; fi
    skopeo copy -q --dest-authfile "$auth" "docker-daemon:$img" "docker://$REGISTRY/$img" \
      >>"$STATE/registry/push.log" 2>&1 || die "pushing $img failed, see $STATE/registry/push.log"
    printf '%s\n' "$id" >"$STATE/registry/pushed-${img//[\/:]/_}"
    say registry "pushed $REGISTRY/$img"
  done
}

# ---------------------------------------------------------------- env.sh / env.json
write_env() {
  local keys=() k slurm=0 key_id secret _pid
  [[ $WANT_SLURM == 0 ]] || slurm=1
  { read -r _pid; read -r key_id; read -r secret; } <"$STATE/moto-auth.keys"
  setv() { keys+=("$1"); printf -v "$1" '%s' "$2"; export "${1?}"; }
  setv FAICE_INFRA_DIR "$STATE"
  setv FAICE_TEST_SSH_HOST "$HOST"
  setv FAICE_TEST_SSH_PORT "$SSH_PORT"
  setv FAICE_TEST_SSH_USER "$SSH_PW_USER"
  setv FAICE_TEST_SSH_PASSWORD "$SSH_PW_PASS"
  setv FAICE_TEST_SSH_HOME_PASSWORD_USER "/home/$SSH_PW_USER"
  setv FAICE_TEST_SSH_KEY_USER "$SSH_KEY_USER"
  setv FAICE_TEST_SSH_HOME_KEY_USER "/home/$SSH_KEY_USER"
  setv FAICE_TEST_SSH_KEY_ED25519 "$STATE/ssh/id_ed25519"
  setv FAICE_TEST_SSH_KEY_RSA "$STATE/ssh/id_rsa"
  setv FAICE_TEST_SSH_KEY_ED25519_ENC "$STATE/ssh/id_ed25519_enc"
  setv FAICE_TEST_SSH_KEY_PASSPHRASE "$SSH_KEY_PASS"
  setv FAICE_TEST_SSH_KNOWN_HOSTS "$STATE/ssh/known_hosts"
  setv FAICE_TEST_SSH_HOST_KEY_PUB "$STATE/ssh/host_ed25519_key.pub"
  setv FAICE_TEST_HTTP_URL "http://$HOST:$HTTP_PORT"
  setv FAICE_TEST_HTTP_JSON_URL "http://$HOST:$HTTP_PORT/json"
  setv FAICE_TEST_HTTPS_URL "https://$HOST:$HTTPS_PORT"
  setv FAICE_TEST_HTTPS_CA "$STATE/nginx/tls/ca.crt"
  setv FAICE_TEST_HTTP_USER "$HTTP_USER"
  setv FAICE_TEST_HTTP_PASSWORD "$HTTP_PASS"
  setv FAICE_TEST_HTTP_ROOT "$STATE/nginx/data"
  setv FAICE_TEST_S3_URL "http://$HOST:$S3_PORT"
  setv FAICE_TEST_S3_REGION us-east-1
  setv FAICE_TEST_S3_AUTH_URL "http://$HOST:$S3_AUTH_PORT"
  setv FAICE_TEST_S3_AUTH_KEY_ID "$key_id"
  setv FAICE_TEST_S3_AUTH_SECRET "$secret"
  setv FAICE_TEST_IMAGE "$BASE_IMAGE"
  setv FAICE_TEST_USER_IMAGE "$USER_IMAGE"
  setv FAICE_TEST_SLURM "$slurm"
  setv FAICE_TEST_REGISTRY "$REGISTRY"
  setv FAICE_TEST_REGISTRY_USER "$REGISTRY_USER"
  setv FAICE_TEST_REGISTRY_PASSWORD "$REGISTRY_PASS"
  setv FAICE_TEST_REGISTRY_LOG "$STATE/registry/registry.log"
  setv FAICE_TEST_REGISTRY_IMAGE "$REGISTRY/$BASE_IMAGE"
  setv FAICE_TEST_SLURM_PARTITION debug
  for k in "${keys[@]}"; do printf 'export %s=%q\n' "$k" "${!k}"; done >"$STATE/env.sh.tmp"
  python3 -c 'import json, os, sys; print(json.dumps({k: os.environ[k] for k in sys.argv[1:]}, indent=2))' \
    "${keys[@]}" >"$STATE/env.json.tmp"
  mv -f "$STATE/env.sh.tmp" "$STATE/env.sh"
  mv -f "$STATE/env.json.tmp" "$STATE/env.json"
  say env "$STATE/env.sh, $STATE/env.json"
}

# ---------------------------------------------------------------- commands
cmd_up() {
  local t0=$SECONDS
  [[ $(id -u) == 0 ]] || die "infra.sh needs root"
  lock_state
  apt_packages
  docker_up
  images_up
  sshd_up
  nginx_up
  moto_up
  podman_up
  registry_up
  if [[ $WANT_SLURM != 0 ]]; then slurm_up; else say slurm "skipped (FAICE_INFRA_SLURM=0)"; fi
  write_env
  say up "done in $((SECONDS - t0)) s"
}

# Only what `faice exec` needs on the local engine: Docker and the base images (scripts/demo.sh).
cmd_engine() {
  local t0=$SECONDS
  [[ $(id -u) == 0 ]] || die "infra.sh needs root"
  lock_state
  apt_packages docker.io debootstrap sshfs fuse3
  docker_up
  images_up
  say engine "done in $((SECONDS - t0)) s"
}

# Only the registry and the runtimes that pull from it (with Docker and the images they serve).
cmd_registry() {
  [[ $(id -u) == 0 ]] || die "infra.sh needs root"
  lock_state
  docker_up
  images_up
  podman_up
  registry_up
}

cmd_down() {
  local ids m
  lock_state
  if docker_ok; then
    ids=$( (docker ps -aq --filter "label=$TEST_LABEL"; docker ps -aq --filter label=org.faice.run) | sort -u)
    if [[ -n $ids ]]; then
      # shellcheck disable=SC2086
      docker rm -f $ids >/dev/null 2>&1 || true
      say docker "removed $(wc -w <<<"$ids") test container(s)"
    fi
  fi
  for m in $(findmnt -rn -t fuse.sshfs -o TARGET | grep -F -- "$STATE/" | sort -r || true); do
    fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    say sshfs "unmounted $m"
  done
  stop_pidfile s3auth "$STATE/moto-auth.pid" moto_server
  rm -f "$STATE/moto-auth.keys"
  stop_pidfile s3 "$STATE/moto.pid" moto_server
  stop_pidfile nginx "$STATE/nginx/nginx.pid" nginx
  stop_pidfile registry "$STATE/registry/registry.pid" docker-registry
  stop_pidfile sshd "$STATE/ssh/sshd.pid" sshd
  stop_pidfile slurmd "$STATE/slurm/slurmd.pid" slurmd
  stop_pidfile slurmctld "$STATE/slurm/slurmctld.pid" slurmctld
  stop_pidfile munge "$STATE/munged.pid" munged
  stop_pidfile docker "$STATE/dockerd.pid" dockerd
  rm -f "$STATE/env.sh" "$STATE/env.json"
  say down "done"
}

image_ok() { docker image inspect "$1" >/dev/null 2>&1; }

cmd_status() {
  local bad=0
  check() { # check NAME DETAIL CMD...
    local name=$1 detail=$2; shift 2
    if "$@"; then say "$name" "ok${detail:+ $detail}"; else say "$name" "DOWN${detail:+ $detail}"; bad=1; fi
  }
  check docker "" docker_ok
  check image "$BASE_IMAGE" image_ok "$BASE_IMAGE"
  check image "$USER_IMAGE" image_ok "$USER_IMAGE"
  check sshd "$HOST:$SSH_PORT" sshd_ok
  check nginx "$HOST:$HTTP_PORT $HOST:$HTTPS_PORT" nginx_ok
  check s3 "$HOST:$S3_PORT" moto_ok
  check s3auth "$HOST:$S3_AUTH_PORT" moto_auth_ok
  check registry "$REGISTRY" registry_ok
  if [[ $WANT_SLURM != 0 ]]; then
    check munge "" munge_ok
    check slurm "" slurm_ok
  fi
  check env "$STATE/env.json" test -s "$STATE/env.json"
  return $bad
}

case ${1:-} in
  up) cmd_up ;;
  engine) cmd_engine ;;
  registry) cmd_registry ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|engine|registry|down|status" >&2; exit 2 ;;
esac
