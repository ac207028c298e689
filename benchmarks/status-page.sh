#!/usr/bin/env bash
# benchmarks/status-page.sh: the status page's refresh cost with 10,000 nodes, before and after.
#
#   swift build --product imagebuild && benchmarks/status-page.sh [OUT.json]
#
# For each page, a fresh scratch server (`imagebuild serve --no-dhcp --no-tftp` on 127.0.0.1) is filled
# with NODES nodes in mixed stages (benchmarks/status-page.py fill: a journal left mid-storm, some
# nodes stuck, some failed, 1% unregistered) and the page is loaded in headless Chromium, driven over
# the DevTools protocol (status-page.py measure). While it runs, CHURN nodes a second send a stage
# report, each from its own address in 127.1.0.0/16 (~100 changed nodes per 3-s refresh). Measured per
# refresh: bytes of the nodes answer on the wire, refresh latency (request sent -> the frame after the
# page used the answer), and the renderer's main-thread time per refresh cycle; then the same with no
# churn (an idle storm). Prints medians; OUT.json (optional) gets every sample.
#
# "before" is the page as it was at BEFORE_COMMIT (it polls the full /api/v1/nodes every 3 s and
# rebuilds every row), served as a static file from the same server's boot root, so both pages read
# the same server and data. "after" is the page at GET /.
#
# Environment:
#   IMAGEBUILD      the binary (default .build/debug/imagebuild; a release build lowers the latency
#                   column, which includes the server's answer time, not the bytes or the page's work)
#   NODES (10000), REFRESHES (10), CHURN (33 per second), PORT (18090)
#   BEFORE_COMMIT   (default f069a49, the last commit with the old page)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGEBUILD=${IMAGEBUILD:-.build/debug/imagebuild}
NODES=${NODES:-10000}
REFRESHES=${REFRESHES:-10}
CHURN=${CHURN:-33}
PORT=${PORT:-18090}
BEFORE_COMMIT=${BEFORE_COMMIT:-f069a49}
out=${1:-}

[ -x "$IMAGEBUILD" ] || { echo "status-page.sh: $IMAGEBUILD not found (swift build --product imagebuild, or set IMAGEBUILD)" >&2; exit 1; }
command -v chromium >/dev/null || { echo "status-page.sh: no chromium (scripts/setup installs it)" >&2; exit 1; }

work=$(mktemp -d /tmp/imagebuild-status-bench.XXXXXX)
server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT

# The old page, as the Swift string literal held it (4 spaces of indentation stripped).
git show "$BEFORE_COMMIT:Sources/BootServer/HTTP/StatusPage.swift" \
  | sed -n '/static let html = #"""/,/^    """#/p' | sed '1d;$d' | sed 's/^    //' > "$work/status-before.html"
grep -q '/api/v1/nodes' "$work/status-before.html" || { echo "status-page.sh: no page at $BEFORE_COMMIT" >&2; exit 1; }

start_server() {
  local dir=$work/run
  rm -rf "$dir"
  python3 benchmarks/status-page.py fill "$dir" --nodes "$NODES" --http-port "$PORT" > "$work/fill.json"
  cp "$work/status-before.html" "$dir/root/status-before.html"
  "$IMAGEBUILD" serve --no-dhcp --no-tftp --listen 127.0.0.1 --root "$dir/root" --nodes "$dir/nodes.yaml" \
    --state-dir "$dir/state" --http-port "$PORT" --poll-interval 0 > "$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 240); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/api/v1/nodes?since=x" 2>/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.5
  done
  cat "$work/server.log" >&2
  exit 1
}

# The server's own time for each kind of answer (curl, median of 5), on a fresh server.
server_times() {
  local url=$1 times=()
  for _ in 1 2 3 4 5; do times+=("$(curl -fsS -o /dev/null -w '%{time_total}' "$url")"); done
  printf '%s\n' "${times[@]}" | sort -n | sed -n 3p
}

results=()
for page in before after; do
  path=/; [ "$page" = before ] && path=/status-before.html
  for churn in "$CHURN" 0; do
    start_server
    label="$page churn=$churn"
    refreshes=$REFRESHES; [ "$churn" = 0 ] && refreshes=$(( (REFRESHES + 1) / 2 ))
    echo "status-page.sh: $label ($refreshes refreshes)" >&2
    results+=("$(python3 benchmarks/status-page.py measure "http://127.0.0.1:$PORT$path" --nodes "$NODES" \
      --refreshes "$refreshes" --churn-per-second "$churn" --label "$label")")
    stop_server
  done
done
start_server
full=$(server_times "http://127.0.0.1:$PORT/api/v1/nodes")
cursor=$(curl -fsS "http://127.0.0.1:$PORT/api/v1/nodes?since=" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cursor"])')
incremental=$(server_times "http://127.0.0.1:$PORT/api/v1/nodes?since=$cursor")
stop_server

printf '%s\n' "${results[@]}" | python3 -c '
import json, sys
full, incremental, nodes = sys.argv[1], sys.argv[2], sys.argv[3]
runs = [json.loads(line) for line in sys.stdin if line.strip()]
print("%d nodes; medians over each run'"'"'s refreshes (the first load is separate)" % int(nodes))
print("%-18s %14s %12s %14s %12s %10s | %12s %12s %10s" % ("page", "bytes/refresh", "latency ms", "main-thread ms", "answer->frame", "DOM nodes",
      "1st load B", "1st rows ms", "1st main ms"))
for r in runs:
    m, f = r["median"], r["firstLoad"]
    print("%-18s %14d %12.0f %14.1f %12.1f %10d | %12d %12.0f %10.0f" % (r["label"], m["bytesPerRefresh"], m["refreshLatencyMs"],
          m["mainThreadMsPerRefresh"], m["answerToFrameMs"], m["domNodes"], f["bytes"] or 0, f["rowsShownMs"], f["mainThreadMs"]))
print("server answer time (curl, median of 5): /api/v1/nodes %.3f s, /api/v1/nodes?since=<cursor> (nothing changed) %.3f s" % (float(full), float(incremental)))
' "$full" "$incremental" "$NODES"
if [ -n "$out" ]; then printf '%s\n' "${results[@]}" > "$out"; echo "status-page.sh: samples in $out" >&2; fi
