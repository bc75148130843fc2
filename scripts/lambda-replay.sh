#!/usr/bin/env bash
# Replays every event of events/expected-status.txt through the real Lambda path:
# `cargo lambda watch` runs the binary in Lambda mode (lambda_http's event parsing, the
# runtime API loop) with the local defaults of scripts/lambda-local.env, replies go to a
# Graph API stub (scripts/graph-stub.py), and `cargo lambda invoke --data-file` sends each
# events/NAME.json. Prints one line per event, then "N passed, M failed"; exits non-zero on
# any failure. Ports are free ones picked at start; both helpers are stopped on exit.
#
# Environment: READY_TIMEOUT (s, default 900: the first start may compile the binary),
# INVOKE_TIMEOUT (s per event, default 60), KEEP_LOGS=1 keeps the temporary log folder,
# EXPECTED (default events/expected-status.txt) another list of "NAME STATUS" lines.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$root/.venv/bin:$PATH"
export SAM_CLI_TELEMETRY=0
ready_timeout=${READY_TIMEOUT:-900}
invoke_timeout=${INVOKE_TIMEOUT:-60}
host=127.0.0.1
expected_file=${EXPECTED:-events/expected-status.txt}

bash scripts/ensure-deploy-tools.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/lambda-replay.XXXXXX")
stub_pid=""
watch_pid=""
cleanup() {
    local status=$?
    # cargo lambda watch runs cargo, which runs the function: the whole process group
    # (started with setsid below, so it holds only those) is ended.
    if [ -n "$watch_pid" ]; then
        kill -TERM -- "-$watch_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 -- "-$watch_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$watch_pid" 2>/dev/null || true
    fi
    if [ -n "$stub_pid" ]; then
        kill "$stub_pid" 2>/dev/null || true
    fi
    if [ "${KEEP_LOGS:-0}" = 1 ] || [ "$status" -ne 0 ]; then
        echo "lambda-replay: logs kept in $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Bounded poll: run "$@" every 0.2 s until it succeeds or $1 seconds passed.
poll() {
    local limit=$1
    shift
    local deadline=$((SECONDS + limit))
    until "$@"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.2
    done
}

port_open() {
    python3 -c 'import socket, sys
s = socket.socket()
s.settimeout(0.5)
sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)' "$1" "$2"
}

# --- the Graph API stub
python3 scripts/graph-stub.py 0 "$work/stub.port" >/dev/null 2>"$work/stub.log" &
stub_pid=$!
if ! poll 20 test -s "$work/stub.port"; then
    echo "lambda-replay: the Graph API stub did not start" >&2
    cat "$work/stub.log" >&2
    exit 1
fi
stub_port=$(cat "$work/stub.port")

# --- the function under cargo lambda watch (no reload: the sources may change meanwhile)
invoke_port=$(free_port)
echo "lambda-replay: Graph API stub on $host:$stub_port; cargo lambda watch on $host:$invoke_port"
setsid cargo lambda watch --ignore-changes \
    --invoke-address "$host" --invoke-port "$invoke_port" \
    --env-file scripts/lambda-local.env \
    --env-var "WHATSAPP_GRAPH_API_BASE=http://$host:$stub_port" \
    >"$work/watch.log" 2>&1 </dev/null &
watch_pid=$!

watch_alive() {
    kill -0 "$watch_pid" 2>/dev/null
}

# invoke NAME OUTFILE: one event through the invoke server; the response JSON in OUTFILE.
invoke() {
    timeout "$invoke_timeout" cargo lambda invoke \
        --invoke-address "$host" --invoke-port "$invoke_port" \
        --data-file "events/$1.json" >"$2" 2>"$2.err"
}

# statusCode of the response JSON printed by cargo lambda invoke (empty when none).
status_of() {
    python3 -c 'import json, sys
text = open(sys.argv[1]).read()
start = text.find("{")
try:
    print(json.loads(text[start:])["statusCode"] if start >= 0 else "")
except Exception:
    print("")' "$1"
}

# The function process ended (e.g. a configuration error at start): cargo lambda watch
# logs "ERROR command exited code=N" and does not restart it.
function_exited() {
    grep -q "command exited" "$work/watch.log"
}

ready() {
    watch_alive || return 2
    function_exited && return 3
    port_open "$host" "$invoke_port" || return 1
    # The first invoke also waits for the function to be compiled and started.
    invoke verify-ok "$work/ready.out" || { function_exited && return 3; return 1; }
    [ -n "$(status_of "$work/ready.out")" ]
}

started=$SECONDS
ready_status=0
deadline=$((SECONDS + ready_timeout))
while :; do
    ready_status=0
    ready || ready_status=$?
    if [ "$ready_status" -eq 0 ]; then
        break
    fi
    if [ "$ready_status" -ge 2 ] || [ "$SECONDS" -ge "$deadline" ]; then
        if [ "$ready_status" -eq 2 ]; then
            echo "lambda-replay: cargo lambda watch exited" >&2
        elif [ "$ready_status" -eq 3 ]; then
            echo "lambda-replay: the function exited (see its last lines below)" >&2
        else
            echo "lambda-replay: not ready after ${ready_timeout}s" >&2
        fi
        echo "--- last invoke:" >&2
        cat "$work/ready.out" "$work/ready.out.err" 2>/dev/null | tail -n 20 >&2 || true
        echo "--- cargo lambda watch:" >&2
        tail -n 40 "$work/watch.log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "lambda-replay: ready after $((SECONDS - started))s"

# --- every event
passed=0
failed=0
while read -r name expected _; do
    case "$name" in '' | '#'*) continue ;; esac
    out="$work/$name.out"
    if [ ! -f "events/$name.json" ]; then
        echo "FAIL  $name: events/$name.json is missing"
        failed=$((failed + 1))
        continue
    fi
    got=""
    if invoke "$name" "$out"; then
        got=$(status_of "$out")
    fi
    if [ "$got" = "$expected" ]; then
        echo "ok    $name $got"
        passed=$((passed + 1))
    else
        echo "FAIL  $name: expected $expected, got ${got:-no statusCode}"
        tail -n 5 "$out" "$out.err" 2>/dev/null | sed 's/^/      /'
        failed=$((failed + 1))
    fi
done <"$expected_file"

if [ "$failed" -gt 0 ]; then
    echo "--- cargo lambda watch (last lines):"
    tail -n 30 "$work/watch.log"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
