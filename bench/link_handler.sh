#!/usr/bin/env bash
# GET of a Rinnova link page under gunicorn, with wrk on loopback, against a bare Flask
# route that verifies the same token under the same gunicorn settings.
#
#   bench/link_handler.sh [--mailboxes N] [--links K] [--database-url URL] [--duration 10s]
#                         [--connections C] [--rounds R] [--workers W] [--threads T] [--worker-class K]
#                         [--profile DIR]
#
# Seeds PostgreSQL (a database whose name contains "bench"; default pec_bench_link) with N
# renewable mailboxes unless it already holds N, signs K real links with the project's
# LinkSigner, starts the apps with `gunicorn -c python:worker.web.gunicorn_conf`, then
# alternates wrk runs (baseline, read floor, app, baseline, read floor, app, ...) of the same
# length and connections.  The read floor (bench/link_handler_baseline.py, create_app(read=True))
# is the bare route plus the link page's own read of the mailbox, and nothing else: read_floor_ratio
# (read floor / baseline) is the most any page that reads the mailbox could reach here.
# --workers/--threads/--worker-class override gunicorn_conf for every app alike.
# --profile DIR records the app's gunicorn workers with py-spy during the first app run: the first
# worker's every thread (DIR/app-worker.txt), the second's GIL holder only (DIR/app-worker-gil.txt).
# Progress goes to stderr; the last line of stdout is the JSON summary (ratio = app / baseline;
# app_to_read_floor = app / read floor, whose target is 0.55: the page, plain Flask with its session and
# Flask-WTF's CSRF token, against the bare route plus the page's one read).
# Each side's CPU time per request (its gunicorn processes' user + system time over the run,
# from /proc) is reported beside it: on a loaded machine the throughput moves with the load,
# the CPU a request costs much less.
# The bench database's PostgreSQL backends (the app's reads) are measured the same way: db_cpu_ms_per_request,
# and cpu_ratio_with_db, the CPU ratio with them counted on the app's side.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
GUNICORN=${GUNICORN:-.venv/bin/gunicorn}
WRK=${WRK:-wrk}
mailboxes=100000
links=1000
database_url=${PEC_RENEWAL_BENCH_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/pec_bench_link}
duration=10s
connections=32
rounds=2
# One wrk thread per core: with a single thread the same run gave the bare route 7,100 or 2,300
# requests/s from one round to the next on an idle machine; two gave 6,700-7,200 every time.
wrk_threads=$(nproc)
app_port=8101
baseline_port=8102
read_floor_port=8103
profile=""
gunicorn_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --mailboxes) mailboxes=$2; shift 2 ;;
        --links) links=$2; shift 2 ;;
        --database-url) database_url=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --workers) gunicorn_args+=(--workers "$2"); shift 2 ;;
        --threads) gunicorn_args+=(--threads "$2"); shift 2 ;;
        --worker-class) gunicorn_args+=(--worker-class "$2"); shift 2 ;;
        --app-port) app_port=$2; shift 2 ;;
        --baseline-port) baseline_port=$2; shift 2 ;;
        --read-floor-port) read_floor_port=$2; shift 2 ;;
        --profile) profile=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

export PEC_RENEWAL_DATABASE_URL=$database_url
export PEC_RENEWAL_BASE_URL=http://127.0.0.1:$app_port
# A fresh key for this run unless one is given: the links are signed and checked with it.
PEC_RENEWAL_SECRET_KEYS=${PEC_RENEWAL_SECRET_KEYS:-$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(48))')}
export PEC_RENEWAL_SECRET_KEYS

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

echo "seeding $mailboxes mailboxes and signing $links links..." >&2
first_path=$("$PYTHON" bench/link_handler_tool.py seed --database-url "$database_url" \
    --mailboxes "$mailboxes" --links "$links" --lua "$work/links.lua")

"$GUNICORN" -c python:worker.web.gunicorn_conf --bind "127.0.0.1:$app_port" ${gunicorn_args[@]+"${gunicorn_args[@]}"} \
    'worker.web:create_app()' >"$work/app.log" 2>&1 &
app_pid=$!
pids+=("$app_pid")
"$GUNICORN" -c python:worker.web.gunicorn_conf --bind "127.0.0.1:$baseline_port" ${gunicorn_args[@]+"${gunicorn_args[@]}"} \
    --pythonpath bench 'link_handler_baseline:create_app()' >"$work/baseline.log" 2>&1 &
baseline_pid=$!
pids+=("$baseline_pid")
"$GUNICORN" -c python:worker.web.gunicorn_conf --bind "127.0.0.1:$read_floor_port" ${gunicorn_args[@]+"${gunicorn_args[@]}"} \
    --pythonpath bench 'link_handler_baseline:create_app(read=True)' >"$work/read-floor.log" 2>&1 &
read_floor_pid=$!
pids+=("$read_floor_pid")

# Each must answer 200 to a real link before anything is measured.
"$PYTHON" - "$app_port" "$baseline_port" "$read_floor_port" "$first_path" <<'EOF' || { cat "$work/app.log" "$work/baseline.log" "$work/read-floor.log" >&2; exit 1; }
import sys, time, urllib.request, urllib.error
app_port, baseline_port, read_floor_port, path = sys.argv[1:]
for port in (app_port, baseline_port, read_floor_port):
    for attempt in range(300):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                assert response.status == 200, response.status
                body = response.read().decode()
            break
        except (ConnectionError, urllib.error.URLError) as error:
            if isinstance(error, urllib.error.HTTPError):
                sys.exit(f"port {port}: HTTP {error.code} for a valid link")
            time.sleep(0.1)
    else:
        sys.exit(f"port {port}: gunicorn did not start")
    if port == app_port and "casella" not in body:
        sys.exit("the app's link page does not show the mailbox")
    if port == read_floor_port and not body.rstrip().endswith("renewable"):
        sys.exit(f"the read floor did not read the mailbox: {body!r}")
EOF

cpu_ticks() {  # the CPU time (user + system, in clock ticks) of a gunicorn master and its workers so far
    local pid total=0
    for pid in "$1" $(pgrep -P "$1"); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# The bench database's name: its PostgreSQL backends ("postgres: [CLUSTER: ]USER DBNAME HOST(PORT) STATE") serve the app's
# reads, on the same cores as both gunicorns; the baseline has none.
database_name=${database_url##*/}
database_name=${database_name%%\?*}
db_cpu_ticks() {  # the CPU time (user + system, in clock ticks) of the bench database's backends so far
    local pid total=0
    for pid in $(pgrep -f "^postgres: ([^ ]+: )?[^ ]+ $database_name [^ ]+\\(" || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

run_wrk() {  # port, output file, duration, gunicorn master pid (its CPU goes to OUTPUT.cpu, the database's to OUTPUT.dbcpu)
    local before db_before
    before=$(cpu_ticks "$4")
    db_before=$(db_cpu_ticks)
    "$WRK" --latency -t"$wrk_threads" -c"$connections" -d"$3" -s "$work/links.lua" "http://127.0.0.1:$1" >"$2"
    echo $(($(cpu_ticks "$4") - before)) >"$2.cpu"
    echo $(($(db_cpu_ticks) - db_before)) >"$2.dbcpu"
}

echo "warming up the apps..." >&2
run_wrk "$baseline_port" "$work/warm-baseline.txt" 3s "$baseline_pid"
run_wrk "$read_floor_port" "$work/warm-read-floor.txt" 3s "$read_floor_pid"
run_wrk "$app_port" "$work/warm-app.txt" 3s "$app_pid"

baseline_runs=()
read_floor_runs=()
app_runs=()
for round in $(seq 1 "$rounds"); do
    run_wrk "$baseline_port" "$work/baseline-$round.txt" "$duration" "$baseline_pid"
    baseline_runs+=("$work/baseline-$round.txt")
    run_wrk "$read_floor_port" "$work/read-floor-$round.txt" "$duration" "$read_floor_pid"
    read_floor_runs+=("$work/read-floor-$round.txt")
    if [ -n "$profile" ] && [ "$round" = 1 ]; then
        mkdir -p "$profile"
        py_spy=${PY_SPY:-$(dirname "$PYTHON")/py-spy}
        spy_pids=()
        # Two views of two identical workers: every thread's stack (waits included), and only the
        # thread holding the GIL, which is where the worker's Python CPU goes.
        worker_view=0
        for worker_pid in $(pgrep -P "$app_pid" | head -n 2); do
            gil=(); name=app-worker
            if [ "$worker_view" = 1 ]; then gil=(--gil); name=app-worker-gil; fi
            "$py_spy" record --pid "$worker_pid" --duration "${duration%s}" --rate 250 --format raw ${gil[@]+"${gil[@]}"} \
                --output "$profile/$name.txt" --nonblocking >"$profile/$name.log" 2>&1 &
            spy_pids+=("$!")
            worker_view=$((worker_view + 1))
        done
    fi
    run_wrk "$app_port" "$work/app-$round.txt" "$duration" "$app_pid"
    app_runs+=("$work/app-$round.txt")
    if [ -n "$profile" ] && [ "$round" = 1 ]; then for pid in "${spy_pids[@]}"; do wait "$pid" || true; done; fi
    echo "round $round: baseline $(grep Requests/sec "$work/baseline-$round.txt" | awk '{print $2}') req/s," \
        "read floor $(grep Requests/sec "$work/read-floor-$round.txt" | awk '{print $2}') req/s," \
        "app $(grep Requests/sec "$work/app-$round.txt" | awk '{print $2}') req/s" >&2
done

workers=$("$PYTHON" -c 'import worker.web.gunicorn_conf as c; print(c.workers, c.worker_class, c.threads)')
extra=$("$PYTHON" -c 'import json, sys; print(json.dumps({"mailboxes": int(sys.argv[1]), "links": int(sys.argv[2]), "duration": sys.argv[3], "connections": int(sys.argv[4]), "rounds": int(sys.argv[5]), "gunicorn_conf": sys.argv[6], "gunicorn_overrides": sys.argv[7]}))' \
    "$mailboxes" "$links" "$duration" "$connections" "$rounds" "$workers" "${gunicorn_args[*]:-}")
"$PYTHON" bench/link_handler_tool.py summary --baseline "${baseline_runs[@]}" --read-floor "${read_floor_runs[@]}" \
    --app "${app_runs[@]}" --extra "$extra"
