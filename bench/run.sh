#!/usr/bin/env bash
# Throughput and latency of parley's main endpoints against a bare axum 204 server.
#
# usage: bench/run.sh
#
# Settings (environment):
#   BENCH_CONNECTIONS       open connections per run                       (default 4)
#   BENCH_DURATION          length of each run, in wrk syntax              (default 10s)
#   BENCH_THREADS           wrk threads (at most the connections)          (default: nproc)
#   BENCH_IDS               ids seeded for each delete run at first; a run
#                           that uses them all is discarded and redone
#                           with twice as many                              (default 3000)
#   BENCH_ATTEMPTS          most tries of a delete run                      (default 4)
#   BENCH_SEED_CONNECTIONS  connections the seeder uses                     (default 8)
#   BENCH_TIMEOUT           wrk per-request timeout                         (default 10s)
#   BENCH_OUT_DIR           where latest.md goes                            (default bench/out)
#   CARGO_TARGET_DIR        cargo's target directory                        (default ./target)
#
# Every run uses the same connection count and duration. Only 2xx responses count towards
# req/s; non-2xx responses and socket errors are reported in their own column.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=$ROOT/bench
CONNECTIONS=${BENCH_CONNECTIONS:-4}
DURATION=${BENCH_DURATION:-10s}
THREADS=${BENCH_THREADS:-$(nproc)}
((THREADS > CONNECTIONS)) && THREADS=$CONNECTIONS
IDS=${BENCH_IDS:-3000}
ATTEMPTS=${BENCH_ATTEMPTS:-4}
SEED_CONNECTIONS=${BENCH_SEED_CONNECTIONS:-8}
TIMEOUT=${BENCH_TIMEOUT:-10s}
OUT_DIR=${BENCH_OUT_DIR:-$BENCH_DIR/out}
CARGO_TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")
export CARGO_TARGET_DIR

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------- processes and cleanup

WORK=$(mktemp -d "${TMPDIR:-/tmp}/parley-bench.XXXXXX")
PIDS=()

stop_pid() {
    local pid=$1
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$? pid code
    if ((status != 0)) && [[ -s $WORK/parley.log ]]; then
        log "parley's log ended with:"
        tail -n 20 "$WORK/parley.log" >&2
        if [[ -n ${PARLEY_PID:-} ]] && ! kill -0 "$PARLEY_PID" 2>/dev/null; then
            code=0
            wait "$PARLEY_PID" || code=$?
            log "parley is no longer running: it exited with status $code"
        fi
    fi
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts "$@" in the background with stderr in $1's log; sets ADDR to what it prints after
# "listening on http://" and PID to its process id.
start_server() {
    local name=$1 logfile=$WORK/$1.log
    shift
    "$@" >"$logfile" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    for _ in $(seq 300); do
        ADDR=$(grep -m1 -o 'listening on http://[^ ]*' "$logfile" | sed 's|listening on http://||' || true)
        [[ -n $ADDR ]] && return 0
        kill -0 "$PID" 2>/dev/null || { cat "$logfile" >&2; die "$name exited before listening"; }
        sleep 0.1
    done
    cat "$logfile" >&2
    die "$name did not start listening"
}

# ---------------------------------------------------------------- build and tools

log "building (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
(cd "$ROOT" && cargo build --release -p parley-server --bin parley --example bare204)
PARLEY=$CARGO_TARGET_DIR/release/parley
BARE=$CARGO_TARGET_DIR/release/examples/bare204

if ! command -v wrk >/dev/null; then
    log "installing wrk"
    SUDO=()
    ((EUID != 0)) && SUDO=(sudo)
    "${SUDO[@]}" apt-get install -y wrk || { "${SUDO[@]}" apt-get update && "${SUDO[@]}" apt-get install -y wrk; }
fi
command -v python3 >/dev/null || die "python3 is needed to seed conversations"

# ---------------------------------------------------------------- measuring

ROWS=()        # "label|rps|p50_us|p99_us|ok|bad|note"
BASELINE_RPS=

# Runs wrk against URL with a script; sets OK, BAD, EXHAUSTED, RPS, P50, P99.
run_wrk() {
    local label=$1 url=$2 script=$3
    shift 3
    local out=$WORK/wrk-${label// /_}.txt
    log "wrk: $label ($CONNECTIONS connections, $THREADS threads, $DURATION)"
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --timeout "$TIMEOUT" \
        -H "x-api-key: ${KEY:-none}" -s "$script" "$url" -- "$@" >"$out"
    local line
    line=$(grep -m1 '^BENCH ' "$out") || { cat "$out" >&2; die "wrk printed no result"; }
    field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<" ${line#BENCH }"; }
    local requests non2xx socket duration_us
    requests=$(field requests)
    non2xx=$(field non2xx)
    duration_us=$(field duration_us)
    socket=$(($(field connect) + $(field read) + $(field write) + $(field timeout)))
    EXHAUSTED=$(field exhausted)
    EXHAUSTED=${EXHAUSTED:-0}
    OK=$((requests - non2xx))
    BAD=$((non2xx + socket))
    P50=$(field p50_us)
    P99=$(field p99_us)
    RPS=$(awk -v ok="$OK" -v us="$duration_us" 'BEGIN { printf "%.0f", ok / (us / 1e6) }')
}

record() { # label note
    ROWS+=("$1|$RPS|$P50|$P99|$OK|$BAD|$2")
}

# Seeds N conversations with recordings into FILE.
seed() {
    python3 "$BENCH_DIR/seed.py" "$PARLEY_ADDR" "$KEY" "$1" "$SEED_CONNECTIONS" "$2"
}

# A delete run over fresh ids (LABEL names the seeded set, ROW the table row); retried with
# twice the ids if it ran out.
bench_delete() {
    local label=$1 row=$2 query=$3 n=$4 file attempt
    for attempt in $(seq "$ATTEMPTS"); do
        file=$WORK/ids-${label// /_}-$attempt.txt
        if [[ $attempt == 1 && -n ${SEEDED[$label]:-} ]]; then
            file=${SEEDED[$label]}
        else
            log "seeding $n conversations for $label"
            seed "$n" "$file"
        fi
        run_wrk "$label" "http://$PARLEY_ADDR/" "$BENCH_DIR/wrk/ids.lua" DELETE "$file" "$THREADS" "$query"
        if ((EXHAUSTED == 0)); then
            record "$row" "$n ids seeded, $OK used"
            return 0
        fi
        log "$label used all $n ids before the run ended; discarding the run"
        n=$((n * 2))
    done
    die "$label still ran out of ids after $ATTEMPTS tries; set BENCH_IDS higher"
}

# ---------------------------------------------------------------- baseline

start_server bare204 "$BARE" 127.0.0.1:0
BARE_PID=$PID
run_wrk "bare204" "http://$ADDR/" "$BENCH_DIR/wrk/report.lua"
BASELINE_RPS=$RPS
record "bare204 baseline (any request)" "axum, no auth, no storage"
stop_pid "$BARE_PID"

# ---------------------------------------------------------------- parley

DATA=$WORK/data
start_server parley env NO_COLOR=1 "$PARLEY" serve --data-dir "$DATA" --listen 127.0.0.1:0 \
    --max-concurrent-conversations 1000000 --replica-join-delay 0s --log warn
PARLEY_ADDR=$ADDR
PARLEY_PID=$PID
KEY=$(grep -m1 -oE 'API key [0-9a-f]{32}' "$WORK/parley.log" | awk '{print $3}') ||
    die "no API key in parley's output"

declare -A SEEDED
for label in "soft DELETE" "hard DELETE"; do
    log "seeding $IDS conversations for $label"
    SEEDED[$label]=$WORK/ids-${label// /_}-1.txt
    seed "$IDS" "${SEEDED[$label]}"
done
TOTAL=$((IDS * 2))
ONE_ID=$(head -n1 "${SEEDED[soft DELETE]}")

run_wrk "GET one" "http://$PARLEY_ADDR/v2/conversations/$ONE_ID" "$BENCH_DIR/wrk/report.lua"
record "GET /v2/conversations/{id}" "same id every time"
run_wrk "GET list" "http://$PARLEY_ADDR/v2/conversations?limit=10" "$BENCH_DIR/wrk/report.lua"
record "GET /v2/conversations?limit=10" "$TOTAL conversations in the account"

bench_delete "soft DELETE" "DELETE /v2/conversations/{id}" "" "$IDS"
bench_delete "hard DELETE" "DELETE /v2/conversations/{id}?hard=true" "?hard=true" "$IDS"

WARNINGS=$(grep -cE 'WARN|ERROR' "$WORK/parley.log" || true)

# ---------------------------------------------------------------- report

us() { awk -v u="$1" 'BEGIN { if (u < 1000) printf "%d µs", u; else printf "%.2f ms", u / 1000 }'; }

VERSION="$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown) ($("$PARLEY" --version))"
CPU=$(grep -m1 '^model name' /proc/cpuinfo | sed 's/.*: //' || true)
[[ -n $CPU ]] || CPU=$(uname -m)
FS=$(df -T "$WORK" | awk 'NR == 2 { print $2 " on " $1 }')
MEM=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)

{
    echo "## parley benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- parley: $VERSION"
    echo "- machine: $(nproc) CPUs ($CPU), $MEM RAM, $(uname -sr); data dir on $FS"
    echo "- load: $(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}'), $CONNECTIONS connections, $THREADS threads, $DURATION per run, on the same machine as the server"
    echo "- parley: --max-concurrent-conversations 1000000 --replica-join-delay 0s --log warn; $WARNINGS warning/error lines in its log"
    echo
    echo "| endpoint | req/s (2xx) | p50 | p99 | vs baseline | 2xx | non-2xx + socket errors | notes |"
    echo "|---|--:|--:|--:|--:|--:|--:|---|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r label rps p50 p99 ok bad note <<<"$row"
        ratio=$(awk -v a="$rps" -v b="$BASELINE_RPS" 'BEGIN { printf "%.3f", a / b }')
        echo "| $label | $rps | $(us "$p50") | $(us "$p99") | $ratio | $ok | $bad | $note |"
    done
} | tee "$WORK/latest.md"

if ((WARNINGS > 0)); then
    log "parley's warnings (first 5):"
    grep -E 'WARN|ERROR' "$WORK/parley.log" | head -n5 >&2
fi
mkdir -p "$OUT_DIR"
cp "$WORK/latest.md" "$OUT_DIR/latest.md"
log "wrote $OUT_DIR/latest.md"
