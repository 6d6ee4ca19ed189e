#!/usr/bin/env bash
# Create a SoftHSM2 token for a Bastion home that uses the PKCS#11 provider.
#
#   scripts/softhsm-token.sh DIR [LABEL]
#
# Makes DIR/tokens and DIR/softhsm2.conf, initializes a token with random PINs, and prints
# the environment to export before `bastion init` (keys are then generated in the token).
# Tests do not need this: they create throwaway tokens themselves (bastion.keys.softhsm).
set -euo pipefail
dir="$(realpath -m "${1:?usage: $0 DIR [LABEL]}")"
label="${2:-bastion}"
command -v softhsm2-util >/dev/null || { echo "softhsm2-util not found: run make system" >&2; exit 1; }
mkdir -p "$dir/tokens"
chmod 700 "$dir" "$dir/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' \
  "$dir/tokens" > "$dir/softhsm2.conf"
pin="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
so_pin="$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SOFTHSM2_CONF="$dir/softhsm2.conf" softhsm2-util --init-token --free --label "$label" \
  --pin "$pin" --so-pin "$so_pin" >/dev/null
umask 077
printf '%s\n' "$so_pin" > "$dir/so-pin"
cat <<ENV
export SOFTHSM2_CONF=$dir/softhsm2.conf
export BASTION_KEY_PROVIDER=pkcs11
export BASTION_PKCS11_LIB=/usr/lib/softhsm/libsofthsm2.so
export BASTION_PKCS11_TOKEN=$label
export BASTION_PKCS11_PIN=$pin
ENV
