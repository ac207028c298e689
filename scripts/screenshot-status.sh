#!/usr/bin/env bash
# scripts/screenshot-status.sh: a PNG of the status page during a boot storm.
#
#   IMAGEBUILD=.build/debug/imagebuild scripts/screenshot-status.sh [OUT.png]   # default: status.png
#
# With IMAGEBUILD (and nothing answering at SERVER), starts a scratch server on a temporary root,
# filled by benchmarks/status-page.py with NODES nodes in every stage (a journal left mid-storm: some
# stuck, some failed, 1% not in nodes.yaml), and stops it afterwards. Without it, shoots the server at
# SERVER as it is (nothing is posted to it). Rendered by headless Chromium (scripts/setup installs it).
#
# Environment:
#   SERVER      the server's base URL (default http://127.0.0.1:18080)
#   IMAGEBUILD  binary for the scratch server (`serve --no-dhcp --no-tftp --root DIR --nodes NODES --http-port N`)
#   NODES       nodes in the scratch storm (default 10000)
#   WIDTH, HEIGHT  window size (default 1400x900)
#   QUERY       the page's filter and search (e.g. "?filter=stuck"; default none)
#   SELECT      the node whose timeline is shown beside the table (default: the first failed one)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-status.png}
SERVER=${SERVER:-http://127.0.0.1:18080}
WIDTH=${WIDTH:-1400}
HEIGHT=${HEIGHT:-900}
NODES=${NODES:-10000}

chrome=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$chrome" ] || { echo "screenshot-status.sh: no Chromium (apt-get install chromium)" >&2; exit 1; }

work=$(mktemp -d /tmp/imagebuild-screenshot.XXXXXX)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if ! curl -fsS -o /dev/null "$SERVER/api/v1/nodes" 2>/dev/null; then
  [ -n "${IMAGEBUILD:-}" ] || { echo "screenshot-status.sh: nothing answers at $SERVER (start 'imagebuild serve', or set IMAGEBUILD)" >&2; exit 1; }
  port=${SERVER##*:}
  port=${port%%/*}
  python3 benchmarks/status-page.py fill "$work/storm" --nodes "$NODES" --http-port "$port" > /dev/null
  "$IMAGEBUILD" serve --no-dhcp --no-tftp --listen 127.0.0.1 --root "$work/storm/root" --nodes "$work/storm/nodes.yaml" \
    --state-dir "$work/storm/state" --http-port "$port" --poll-interval 0 > "$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 240); do
    curl -fsS -o /dev/null "$SERVER/api/v1/nodes?since=x" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.5
  done
  curl -fsS -o /dev/null "$SERVER/api/v1/nodes?since=x" || { cat "$work/server.log" >&2; exit 1; }
fi

select=${SELECT:-$(curl -fsS "$SERVER/api/v1/nodes?since=" | python3 -c '
import json, sys
nodes = json.load(sys.stdin)["nodes"]
print(next((n["mac"] for n in nodes if n["stage"] == "failed" and n.get("hostname")), ""))')}

# --virtual-time-budget lets the page's first poll, a later one and the timeline's fetch finish before the shot.
"$chrome" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
  --user-data-dir="$work/chromium" --window-size="$WIDTH,$HEIGHT" --virtual-time-budget=5000 \
  --screenshot="$work/shot.png" "$SERVER/${QUERY:-}${select:+#$select}" > "$work/chrome.log" 2>&1 || { cat "$work/chrome.log" >&2; exit 1; }
mv "$work/shot.png" "$out"
echo "$out"
