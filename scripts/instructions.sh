#!/usr/bin/env bash
# Instructions per message of the end-to-end throughput bench, counted by callgrind: repeatable
# for the same binary and inputs, whatever else the machine is doing (BENCHMARKS.md, "Instruction
# counts"). Per message = (instructions of the bench process at N = 10,000 minus at N = 2,000)
# / 8,000, which cancels start-up and teardown. The broker runs outside valgrind.
#
# Usage: scripts/instructions.sh [BENCH_BINARY...]
#   Without arguments it builds and measures the current tree's `throughput` bench. Several
#   binaries (say, an older commit's, built into another target dir) are measured in turn, in
#   the same sitting. Environment: VERSIONS (v4 v5), QOS (0), SHAPE (spawned or main), VARIANTS (plain wire noop off
#   rec), REPEAT (3: the median of that many slopes is printed, with min..max).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
[ -x "$mosquitto_bin" ] || { echo "mosquitto is needed (apt-get install mosquitto)" >&2; exit 2; }

if [ "$#" -eq 0 ]; then
    cargo bench --bench throughput --no-run 2>/dev/null
    set -- "$(ls -t target/release/deps/throughput-* | grep -v '\.d$' | head -1)"
fi

work="$(mktemp -d)"
broker_pid=""
cleanup() {
    [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A free port: bind port 0, read it back, release it; mosquitto then binds it (retried on a clash).
for attempt in 1 2 3 4 5; do
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nlog_type none\n' "$port" >"$work/mosquitto.conf"
    "$mosquitto_bin" -c "$work/mosquitto.conf" >"$work/broker.log" 2>&1 &
    broker_pid=$!
    for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break 2; fi
        kill -0 "$broker_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$broker_pid" 2>/dev/null || true
    broker_pid=""
done
[ -n "$broker_pid" ] || { echo "mosquitto did not start" >&2; cat "$work/broker.log" >&2; exit 1; }

instructions() { # binary version qos variant n -> total Ir
    local out="$work/cg.out"
    THROUGHPUT_BROKER_PORT="$port" THROUGHPUT_VERSIONS="$2" THROUGHPUT_QOS="$3" \
        THROUGHPUT_VARIANTS="$4" THROUGHPUT_RUNS=1 THROUGHPUT_WARMUP=0 THROUGHPUT_NODELAY=0 \
        THROUGHPUT_SHAPE="${SHAPE:-spawned}" \
        THROUGHPUT_QOS0_N="$5" THROUGHPUT_QOS1_N="$5" \
        valgrind --tool=callgrind --callgrind-out-file="$out" "$1" >/dev/null 2>"$work/valgrind.log"
    grep -m1 '^summary:' "$out" | awk '{print $2}'
}

printf '%-12s %-4s %-4s %-8s %10s %s\n' binary ver qos variant instr/msg "(min..max of ${REPEAT:-3})"
for binary in "$@"; do
    for version in ${VERSIONS:-v4 v5}; do
        for qos in ${QOS:-0}; do
            for variant in ${VARIANTS:-plain wire noop off rec}; do
                slopes=()
                for _ in $(seq "${REPEAT:-3}"); do
                    small="$(instructions "$binary" "$version" "$qos" "$variant" 2000)"
                    large="$(instructions "$binary" "$version" "$qos" "$variant" 10000)"
                    slopes+=("$(( (large - small) / 8000 ))")
                done
                sorted="$(printf '%s\n' "${slopes[@]}" | sort -n)"
                median="$(echo "$sorted" | sed -n "$(( (${#slopes[@]} + 1) / 2 ))p")"
                printf '%-12s %-4s %-4s %-8s %10s (%s..%s)\n' "$(basename "$binary" | cut -c1-12)" \
                    "$version" "$qos" "$variant" "$median" "$(echo "$sorted" | head -1)" "$(echo "$sorted" | tail -1)"
            done
        done
    done
done
