#!/usr/bin/env bash
# scripts/screenshot-status.sh: a PNG of the status page with nodes in several stages.
#
#   scripts/screenshot-status.sh [OUT.png]           # default: status.png
#
# Posts stage reports for a handful of made-up nodes to a running server (so the page has
# something to show: up, mid-boot, failed), waits for the page's own refresh, and renders it
# with headless Chromium (apt-get install chromium). Events are real timeline entries: use a
# scratch server, not production.
#
# Environment:
#   SERVER      the server's base URL (default http://127.0.0.1:18080); if nothing answers there
#               and IMAGEBUILD (or SERVER_CMD with {root} {port} {state}) is given, a scratch
#               server is started on a temporary root and stopped afterwards
#   IMAGEBUILD  binary for the scratch server (`serve --no-dhcp --no-tftp --root DIR --nodes NODES --http-port N`)
#   WIDTH, HEIGHT  window size (default 1400x800)
#   SELECT      the node whose timeline is shown beside the table (default one of the failed ones)
set -euo pipefail
out=${1:-status.png}
SERVER=${SERVER:-http://127.0.0.1:18080}
WIDTH=${WIDTH:-1400}
HEIGHT=${HEIGHT:-800}

chrome=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$chrome" ] || { echo "screenshot-status.sh: no Chromium (apt-get install chromium)" >&2; exit 1; }

work=$(mktemp -d /tmp/imagebuild-screenshot.XXXXXX)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

if ! curl -fsS -o /dev/null "$SERVER/api/v1/nodes" 2>/dev/null; then
  port=${SERVER##*:}
  port=${port%%/*}
  mkdir -p "$work/root" "$work/state"
  if [ -n "${SERVER_CMD:-}" ]; then
    cmd=${SERVER_CMD//\{root\}/$work/root}
    cmd=${cmd//\{port\}/$port}
    cmd=${cmd//\{state\}/$work/state}
  elif [ -n "${IMAGEBUILD:-}" ]; then
    # Hostnames for most of the made-up MACs below; 00:06 stays unregistered, 00:07 is never seen.
    {
      printf 'network:\n  server: 10.77.0.1\n  subnet: 10.77.0.0/24\n  http_port: %s\ndefaults:\n  image: compute\nnodes:\n' "$port"
      for i in 1 2 3 4 5 7; do printf '  - {mac: "52:54:00:77:00:0%s", hostname: node00%s, ip: 10.77.0.1%s}\n' $i $i $i; done
    } > "$work/nodes.yaml"
    echo x > "$work/root/.keep"
    cmd="$IMAGEBUILD serve --no-dhcp --no-tftp --listen 127.0.0.1 --root $work/root --nodes $work/nodes.yaml --state-dir $work/state --http-port $port"
  else
    echo "screenshot-status.sh: nothing answers at $SERVER (start 'imagebuild serve', or set IMAGEBUILD)" >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  $cmd > "$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$SERVER/api/v1/nodes" 2>/dev/null && break
    sleep 0.1
  done
  curl -fsS -o /dev/null "$SERVER/api/v1/nodes" || { cat "$work/server.log" >&2; exit 1; }
fi

post() {
  curl -fsS -o /dev/null -H 'Content-Type: application/json' \
    --data "{\"mac\":\"$1\",\"stage\":\"$2\",\"detail\":\"$3\"}" "$SERVER/api/v1/events"
}
# A node that finished, one mid-image, one that just switched root, and two that failed.
for stage in stage1-start image-downloaded image-verified switch-root up; do post 52:54:00:77:00:01 $stage ""; done
post 52:54:00:77:00:02 stage1-start "eth0 10.77.0.12 kernel 6.1.0-28-amd64"
post 52:54:00:77:00:03 stage1-start "eth0 10.77.0.13"
post 52:54:00:77:00:03 image-downloaded "318767104 bytes"
post 52:54:00:77:00:03 failed "verify: sha256 mismatch: expected 9f2c..., got 03b1... (corrupt or wrong image)"
post 52:54:00:77:00:04 stage1-start "eth0 10.77.0.14"
post 52:54:00:77:00:04 image-verified "9f2c"
post 52:54:00:77:00:04 switch-root "/sbin/init"
post 52:54:00:77:00:05 failed "network: no DHCP lease on any interface (udhcpc: no lease, failing)"
for stage in stage1-start image-downloaded image-verified switch-root up; do post 52:54:00:77:00:06 $stage ""; done

# --virtual-time-budget lets the page's fetch and first render finish before the shot.
"$chrome" --headless=new --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
  --window-size="$WIDTH,$HEIGHT" --virtual-time-budget=5000 --screenshot="$work/shot.png" "$SERVER/#${SELECT:-52:54:00:77:00:03}" \
  > "$work/chrome.log" 2>&1 || { cat "$work/chrome.log" >&2; exit 1; }
mv "$work/shot.png" "$out"
echo "$out"
