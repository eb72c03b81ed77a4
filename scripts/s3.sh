#!/usr/bin/env bash
# A throwaway S3-compatible server (moto, from PyPI) for tests.
#   scripts/s3.sh start DIR PORT BUCKET   install (once) and start it, create BUCKET, print the endpoint
#   scripts/s3.sh stop DIR                stop it
set -euo pipefail

cmd="${1:?usage: s3.sh start DIR PORT BUCKET | stop DIR}"
dir="${2:?missing DIR}"
mkdir -p "$dir"

case "$cmd" in
  start)
    port="${3:?missing PORT}"
    bucket="${4:?missing BUCKET}"
    venv="${PARLEY_S3_VENV:-$dir/venv}"
    if [ ! -x "$venv/bin/moto_server" ]; then
      python3 -m venv "$venv"
      "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]'
    fi
    if [ -f "$dir/moto.pid" ] && kill -0 "$(cat "$dir/moto.pid")" 2>/dev/null; then
      echo "http://127.0.0.1:$port"
      exit 0
    fi
    # Something else answering on the port would pass the readiness check below as ours.
    if curl -s "http://127.0.0.1:$port/" >/dev/null 2>&1; then
      echo "s3.sh: port $port is already in use" >&2
      exit 1
    fi
    nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    pid=$!
    echo $pid >"$dir/moto.pid"
    # A loaded machine can take a while to import moto; ours must still be running when it answers.
    for _ in $(seq 600); do
      kill -0 "$pid" 2>/dev/null || break
      curl -sf "http://127.0.0.1:$port/" >/dev/null 2>&1 && break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && curl -sf "http://127.0.0.1:$port/" >/dev/null 2>&1 ||
      { cat "$dir/moto.log" >&2; rm -f "$dir/moto.pid"; echo "s3.sh: moto did not start" >&2; exit 1; }
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$venv/bin/python" - "$port" "$bucket" <<'PY'
import sys, boto3
port, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=bucket)
PY
    echo "http://127.0.0.1:$port"
    ;;
  stop)
    if [ -f "$dir/moto.pid" ]; then
      kill "$(cat "$dir/moto.pid")" 2>/dev/null || true
      rm -f "$dir/moto.pid"
    fi
    ;;
  *)
    echo "usage: s3.sh start DIR PORT BUCKET | stop DIR" >&2
    exit 2
    ;;
esac
