#!/usr/bin/env bash
# Installs the system packages Bastion's tests and demo need (SoftHSM2), and
# makes sure the local PostgreSQL used by the backend tests is running.
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
