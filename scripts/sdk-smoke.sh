#!/usr/bin/env bash
# Starts parley on a fresh data directory and drives it with the official Tavus Python SDK and CLI,
# and with the exact requests of the LiveKit and Pipecat plugins.
# Usage: scripts/sdk-smoke.sh [path/to/parley]   (default: target/debug/parley, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-target/debug/parley}"
[ -x "$bin" ] || cargo build -p parley-server --bin parley

venv="${PARLEY_SDK_VENV:-${TMPDIR:-/tmp}/parley-sdk-venv}"
if [ ! -x "$venv/bin/tavus" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check tavus-cli
fi

data="$(mktemp -d)"
log="$data/parley.log"
"$bin" serve --data-dir "$data/data" --key-store "$data/keys/keys.slots" --master-key-file "$data/master.key" --listen 127.0.0.1:0 --replica-join-delay 0s --document-allow-private 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT

for _ in $(seq 100); do
  grep -q "listening on" "$log" && break
  sleep 0.1
done
base="$(grep -o 'listening on http://[^ ]*' "$log" | cut -d' ' -f3)"
key="$(grep -o 'API key [0-9a-f]*' "$log" | cut -d' ' -f3)"
[ -n "$base" ] && [ -n "$key" ] || { cat "$log"; echo "parley did not start" >&2; exit 1; }

TAVUS_PUBLIC_API_BASE_URL="$base/v2" TAVUS_API_KEY="$key" PATH="$venv/bin:$PATH" \
  "$venv/bin/python" scripts/sdk_smoke.py
TAVUS_PUBLIC_API_BASE_URL="$base/v2" TAVUS_API_KEY="$key" PATH="$venv/bin:$PATH" \
  "$venv/bin/python" scripts/clients_smoke.py
