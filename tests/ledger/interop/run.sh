#!/usr/bin/env bash
# Optional interop check (needs Go and golang.org/x/mod, Debian: golang-golang-x-mod-dev):
# Go's reference tlog client verifies live Bastion logs of several sizes over HTTP.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
work="$(mktemp -d)"
mkdir -p "$work/src/tilesclient"
cp "$here/tiles_client.go" "$work/src/tilesclient/main.go"
(cd "$work/src/tilesclient" && GO111MODULE=off GOPATH="$work:/usr/share/gocode" go build -o "$work/client" .)
port=$((20000 + RANDOM % 20000))
for n in 1 255 256 257 70123 ${SIZES:-}; do
  "$repo/.venv/bin/python" "$here/serve_log.py" "$n" "$port" > "$work/vkey" &
  server=$!
  for _ in $(seq 1 300); do
    if [ -s "$work/vkey" ] && curl -sf "http://127.0.0.1:$port/log/checkpoint" > /dev/null; then break; fi
    sleep 0.1
  done
  "$work/client" "http://127.0.0.1:$port" "$(head -1 "$work/vkey")" || { kill "$server"; exit 1; }
  kill "$server"; wait "$server" 2>/dev/null || true
done
rm -rf "$work"
