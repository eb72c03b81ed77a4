#!/usr/bin/env bash
# Throughput and latency of parley's main endpoints against a bare axum 204 server.
#
# usage: bench/run.sh
#
# Settings (environment):
#   BENCH_CONNECTIONS       open connections per run                       (default 64)
#   BENCH_DURATION          length of each run, in wrk syntax              (default 10s)
#   BENCH_THREADS           wrk threads (at most the connections)          (default: nproc)
#   BENCH_SOFT_IDS_PER_SEC  conversations seeded for the soft-delete run, per second of
#                           DURATION                                        (default 2000)
#   BENCH_HARD_IDS_PER_SEC  the same for the hard-delete run                (default 500)
#                           A delete run that uses up its ids is discarded and redone with
#                           twice as many; seeding is the slow part, so these are kept
#                           only a little above what the runs use.
#   BENCH_ATTEMPTS          most tries of a delete run                      (default 4)
#   BENCH_SEED_CONNECTIONS  connections the seeder uses                     (default 8)
#   BENCH_TIMEOUT           wrk per-request timeout                         (default 10s)
#   BENCH_OUT_DIR           where latest.md goes                            (default bench/out)
#   CARGO_TARGET_DIR        cargo's target directory                        (default ./target)
#
# Every run uses the same connection count and duration. Only 2xx responses count towards
# req/s; non-2xx responses and socket errors are reported in their own column. The CPU column
# says how many cores the server, wrk and everything else kept busy during the run: "other"
# well above 0 means something else was running and the numbers are not clean.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=$ROOT/bench
CONNECTIONS=${BENCH_CONNECTIONS:-64}
DURATION=${BENCH_DURATION:-10s}
THREADS=${BENCH_THREADS:-$(nproc)}
((THREADS > CONNECTIONS)) && THREADS=$CONNECTIONS
SOFT_IDS_PER_SEC=${BENCH_SOFT_IDS_PER_SEC:-2000}
HARD_IDS_PER_SEC=${BENCH_HARD_IDS_PER_SEC:-500}
ATTEMPTS=${BENCH_ATTEMPTS:-4}
SEED_CONNECTIONS=${BENCH_SEED_CONNECTIONS:-8}
TIMEOUT=${BENCH_TIMEOUT:-10s}
OUT_DIR=${BENCH_OUT_DIR:-$BENCH_DIR/out}
CARGO_TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")
export CARGO_TARGET_DIR

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

# wrk's duration syntax (10, 10s, 2m, 1h) in whole seconds.
seconds() {
    local n=${1%[smh]}
    [[ $n =~ ^[0-9]+$ ]] || die "cannot read duration $1"
    case $1 in
        *m) echo $((n * 60)) ;;
        *h) echo $((n * 3600)) ;;
        *) echo "$n" ;;
    esac
}
DURATION_SECS=$(seconds "$DURATION")

# ---------------------------------------------------------------- processes and cleanup

WORK=$(mktemp -d "${TMPDIR:-/tmp}/parley-bench.XXXXXX")
PIDS=()

# Stops a process this script started (TERM, then KILL after 5 s) and forgets it, so its
# id is never signalled again once the system may have reused it.
stop_pid() {
    local pid=$1 kept=() p
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || kept+=("$p")
    done
    PIDS=("${kept[@]}")
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
    if ((status != 0)) && [[ -s ${PARLEY_LOG:-} ]]; then
        log "parley's log ended with:"
        tail -n 20 "$PARLEY_LOG" >&2
        if [[ -n ${PARLEY_PID:-} ]] && ! kill -0 "$PARLEY_PID" 2>/dev/null; then
            code=0
            wait "$PARLEY_PID" || code=$?
            log "parley is no longer running: it exited with status $code" \
                "$( ((code == 0)) && echo "(a clean exit: something outside this script sent it SIGTERM or SIGINT)")"
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
NOTES=()       # anything that went wrong on the way, for the report
BASELINE_RPS=

TICKS=$(getconf CLK_TCK)
# CPU time, in clock ticks, that the whole machine has spent busy.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
# CPU time, in clock ticks, of process $1 (all its threads).
proc_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# Runs wrk against URL with a script while SERVER_PID serves it; sets OK, BAD, EXHAUSTED,
# RPS, P50, P99, and SERVER_CPU, WRK_CPU, OTHER_CPU: the cores each kept busy on average
# (OTHER is everything else on the machine, which should be close to 0).
run_wrk() {
    local label=$1 url=$2 script=$3
    shift 3
    local out=$WORK/wrk-${label//[^A-Za-z0-9]/_}.txt
    log "wrk: $label ($CONNECTIONS connections, $THREADS threads, $DURATION)"
    local busy0 server0 start end wrk_secs
    busy0=$(busy_ticks)
    server0=$(proc_ticks "$SERVER_PID")
    start=$(date +%s.%N)
    local TIMEFORMAT='%U %S'
    { time wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --timeout "$TIMEOUT" \
        -H "x-api-key: ${KEY:-none}" -s "$script" "$url" -- "$@" >"$out" 2>"$out.err"; } 2>"$out.time"
    end=$(date +%s.%N)
    wrk_secs=$(awk '{ print $1 + $2 }' "$out.time")
    read -r SERVER_CPU WRK_CPU OTHER_CPU < <(awk -v t="$TICKS" -v s="$start" -v e="$end" \
        -v b0="$busy0" -v b1="$(busy_ticks)" -v p0="$server0" -v p1="$(proc_ticks "$SERVER_PID")" \
        -v w="$wrk_secs" 'BEGIN {
            d = e - s; server = (p1 - p0) / t / d; wrk = w / d; other = (b1 - b0) / t / d - server - wrk
            printf "%.2f %.2f %.2f\n", server, wrk, other < 0 ? 0 : other }')
    local line
    line=$(grep -m1 '^BENCH ' "$out") || { cat "$out" "$out.err" >&2; die "wrk printed no result"; }
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
    ROWS+=("$1|$RPS|$P50|$P99|$OK|$BAD|$SERVER_CPU|$WRK_CPU|$OTHER_CPU|$2")
}

# Seeds N conversations with recordings into FILE.
seed() {
    python3 "$BENCH_DIR/seed.py" "$PARLEY_ADDR" "$KEY" "$1" "$SEED_CONNECTIONS" "$2"
}

PARLEY_STARTS=0
# Starts parley on the data dir (the first start makes the account and its key).
start_parley() {
    local name=parley-$((++PARLEY_STARTS))
    start_server "$name" env NO_COLOR=1 "$PARLEY" serve --data-dir "$DATA" --key-store "$WORK/keys/keys.slots" --master-key-file "$WORK/master.key" --listen 127.0.0.1:0 \
        --max-concurrent-conversations 1000000 --replica-join-delay 0s --log warn
    PARLEY_ADDR=$ADDR
    PARLEY_PID=$PID
    SERVER_PID=$PID
    PARLEY_LOG=$WORK/$name.log
}

# wrk ends a run by closing connections with requests in flight, which cancels them inside
# parley. Checks that parley still accepts writes after the run named $1; if not, says so in
# the report and restarts parley on the same data so the remaining runs can go on.
check_writes() {
    if seed 1 "$WORK/probe.txt" 2>"$WORK/probe.err"; then
        return 0
    fi
    local error
    error=$(grep -m1 -E 'ERROR' "$PARLEY_LOG" | sed 's/^.*error="//; s/"$//' || true)
    NOTES+=("After the \`$1\` run parley no longer accepted writes ($(tail -n1 "$WORK/probe.err")); its log says: ${error:-nothing}. parley was restarted on the same data for the remaining runs.")
    log "parley refuses writes after the $1 run; restarting it"
    cat "$WORK/probe.err" >&2
    stop_pid "$PARLEY_PID"
    start_parley
    seed 1 "$WORK/probe.txt" 2>"$WORK/probe.err" || { cat "$WORK/probe.err" >&2; die "parley refuses writes even after a restart"; }
}

# A delete run (ROW names it in the table; QUERY follows each path) over the N ids in FILE,
# each used once. A run that used them all is discarded and redone with twice as many.
bench_delete() {
    local row=$1 query=$2 n=$3 file=$4 attempt
    for attempt in $(seq "$ATTEMPTS"); do
        if ((attempt > 1)); then
            file=$(mktemp "$WORK/ids-XXXXXX")
            log "seeding $n conversations"
            seed "$n" "$file"
        fi
        run_wrk "$row" "http://$PARLEY_ADDR/" "$BENCH_DIR/wrk/ids.lua" DELETE "$file" "$THREADS" "$query"
        check_writes "$row"
        if ((EXHAUSTED == 0)); then
            record "$row" "$n ids seeded, $OK used"
            return 0
        fi
        log "$row used all $n ids before the run ended; discarding the run"
        n=$((n * 2))
    done
    die "$row still ran out of ids after $ATTEMPTS tries; set BENCH_SOFT_IDS_PER_SEC or BENCH_HARD_IDS_PER_SEC higher"
}

# ---------------------------------------------------------------- baseline

start_server bare204 "$BARE" 127.0.0.1:0
BARE_PID=$PID
SERVER_PID=$BARE_PID
run_wrk "bare204" "http://$ADDR/" "$BENCH_DIR/wrk/report.lua"
BASELINE_RPS=$RPS
record "bare204 baseline (any request)" "axum, no auth, no storage"
stop_pid "$BARE_PID"

# ---------------------------------------------------------------- parley

DATA=$WORK/data
start_parley
KEY=$(grep -m1 -oE 'API key [0-9a-f]{32}' "$PARLEY_LOG" | awk '{print $3}') ||
    die "no API key in parley's output"

SOFT_IDS=$((SOFT_IDS_PER_SEC * DURATION_SECS))
log "seeding $SOFT_IDS conversations (for the soft-delete run; the reads see them too)"
seed "$SOFT_IDS" "$WORK/ids-soft.txt"
ONE_ID=$(head -n1 "$WORK/ids-soft.txt")

run_wrk "GET one" "http://$PARLEY_ADDR/v2/conversations/$ONE_ID" "$BENCH_DIR/wrk/report.lua"
record "GET /v2/conversations/{id}" "the same id every time"
run_wrk "GET list" "http://$PARLEY_ADDR/v2/conversations?limit=10" "$BENCH_DIR/wrk/report.lua"
record "GET /v2/conversations?limit=10" "$SOFT_IDS conversations in the account"

bench_delete "DELETE /v2/conversations/{id}" "" "$SOFT_IDS" "$WORK/ids-soft.txt"

HARD_IDS=$((HARD_IDS_PER_SEC * DURATION_SECS))
log "seeding $HARD_IDS conversations for the hard-delete run"
seed "$HARD_IDS" "$WORK/ids-hard.txt"
bench_delete "DELETE /v2/conversations/{id}?hard=true" "?hard=true" "$HARD_IDS" "$WORK/ids-hard.txt"

WARNINGS=$(cat "$WORK"/parley-*.log | grep -cE 'WARN|ERROR' || true)

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
    echo "| endpoint | req/s (2xx) | p50 | p99 | vs baseline | server CPU per request | 2xx | non-2xx + socket errors | CPU cores: server / wrk / other | notes |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r label rps p50 p99 ok bad server wrk other note <<<"$row"
        ratio=$(awk -v a="$rps" -v b="$BASELINE_RPS" 'BEGIN { printf "%.3f", a / b }')
        # Cores kept busy divided by requests a second: CPU time each request cost the server.
        per_req=$(awk -v c="$server" -v r="$rps" 'BEGIN { if (r > 0) printf "%.0f µs", c * 1e6 / r; else print "-" }')
        echo "| $label | $rps | $(us "$p50") | $(us "$p99") | $ratio | $per_req | $ok | $bad | $server / $wrk / $other | $note |"
    done
    if ((${#NOTES[@]} > 0)); then
        echo
        for note in "${NOTES[@]}"; do
            echo "- $note"
        done
    fi
} | tee "$WORK/latest.md"

if ((WARNINGS > 0)); then
    log "parley's warnings (first 5):"
    cat "$WORK"/parley-*.log | grep -E 'WARN|ERROR' | head -n5 >&2
fi
mkdir -p "$OUT_DIR"
cp "$WORK/latest.md" "$OUT_DIR/latest.md"
log "wrote $OUT_DIR/latest.md"
