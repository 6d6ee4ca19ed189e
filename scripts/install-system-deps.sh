#!/usr/bin/env bash
# Installs the system packages Bastion's tests and demo need (SoftHSM2, the NATS server), and
# makes sure the local PostgreSQL used by the backend tests and the NATS JetStream server the
# egress destination is tested against (127.0.0.1:4222) are running.
set -euo pipefail
if [ ! -e /usr/lib/softhsm/libsofthsm2.so ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q softhsm2 >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q softhsm2 >/dev/null; }
fi
if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi
# NATS with JetStream (-js) on 127.0.0.1:4222: the egress destination's tests run against it,
# and under CI=true they must run, not skip. A server already listening there is left alone.
nats_up() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }
if ! nats_up; then
  if ! command -v nats-server >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get install -y -q nats-server >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q nats-server >/dev/null; }
  fi
  NATS_DIR="${TMPDIR:-/tmp}/bastion-nats"
  mkdir -p "$NATS_DIR"
  nohup nats-server -a 127.0.0.1 -p 4222 -js -sd "$NATS_DIR/jetstream" >"$NATS_DIR/server.log" 2>&1 &
  for _ in $(seq 50); do nats_up && break; sleep 0.2; done
  nats_up || { echo "nats-server did not start; see $NATS_DIR/server.log" >&2; exit 1; }
fi
