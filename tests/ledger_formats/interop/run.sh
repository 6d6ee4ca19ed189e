#!/usr/bin/env bash
# Optional interop check (not part of the test suite: it needs Go). Debian packages:
#   apt-get install -y golang-go golang-golang-x-mod-dev
# Builds logs of several sizes with Bastion's formats, then has Go's sumdb/note and sumdb/tlog
# open the checkpoint, authenticate every tile it reads, recompute the tree hash, check entries,
# and compare Bastion's inclusion and consistency proofs with Go's own.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/sumdbcheck"
cp "$here/sumdb_check.go" "$work/src/sumdbcheck/main.go"
for n in 1 2 256 257 70123 ${SIZES:-}; do
  "$repo/.venv/bin/python" "$here/make_log.py" "$work/log$n" "$n"
  GO111MODULE=off GOPATH="$work:/usr/share/gocode" go run sumdbcheck "$work/log$n" "$work/log$n/spec.json"
done
