#!/usr/bin/env sh
# Tumult Analytics for the clean-room comparison, in a venv of its own: it pins pyspark 3.5,
# pandas 1.5 and numpy 1.26, which must not leak into Bastion's environment.
set -eu
cd "$(dirname "$0")/.."
[ -x .venv-tumult/bin/python ] || python3 -m venv .venv-tumult
.venv-tumult/bin/pip install -q "tmlt.analytics>=0.21"
echo "ready: .venv/bin/python bench/bench_cleanroom.py --systems bastion,opendp,tumult"
