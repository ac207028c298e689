#!/usr/bin/env bash
# benchmarks/http.sh: imagebuild's HTTP server against nginx (sendfile on), same files, same pinning.
#
# Serves one boot root from both servers on 127.0.0.1 and runs wrk against each, in the same run:
# a 64 MiB file (an image, under images/: the download-accounting path) and a 4 KiB file (a boot
# config), at 10, 100 and 1000 connections. Server and client are pinned to different CPUs with
# taskset (see TEST-NOTES.md: unpinned numbers swing several times on these 2-vCPU machines).
# Prints the median of ROUNDS runs per case and our/nginx ratio. Goal: >= 0.9x nginx for 64 MiB
# (bytes/s), >= 0.7x for 4 KiB (requests/s), and no errors.
#
#   swift build -c release --product imagebuild && benchmarks/http.sh
#
# Environment:
#   IMAGEBUILD    the binary (default .build/release/imagebuild), run as
#                 `imagebuild serve --no-dhcp --no-tftp --root DIR --nodes NODES --http-port N`
#   SERVER_CMD    instead of that, any command; {root} and {port} are replaced (e.g. a test harness)
#   SERVER_CPU, CLIENT_CPU (default 0, 1), ROUNDS (3), DURATION (10s), CONNECTIONS ("10 100 1000")
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGEBUILD=${IMAGEBUILD:-.build/release/imagebuild}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-"10 100 1000"}
OUR_PORT=${OUR_PORT:-18080}
NGINX_PORT=${NGINX_PORT:-18081}

for tool in wrk nginx taskset curl; do
  command -v "$tool" >/dev/null || { echo "http.sh: $tool is missing (apt-get install wrk nginx-light util-linux curl)" >&2; exit 1; }
done
if [ -z "${SERVER_CMD:-}" ] && [ ! -x "$IMAGEBUILD" ]; then
  echo "http.sh: $IMAGEBUILD not found: swift build -c release --product imagebuild (or set IMAGEBUILD/SERVER_CMD)" >&2
  exit 1
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/imagebuild-http-bench.XXXXXX)
# nginx workers drop to an unprivileged user: they must be able to read the root.
chmod 755 "$work"
our_pid= nginx_pid=
cleanup() {
  [ -n "$our_pid" ] && kill "$our_pid" 2>/dev/null && wait "$our_pid" 2>/dev/null
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

root=$work/root
large=images/bench/0123456789abcdef/image.tar.gz
small=boot/small.cfg
mkdir -p "$root/$(dirname "$large")" "$root/$(dirname "$small")" "$work/nginx"
head -c $((64 << 20)) /dev/urandom > "$root/$large"
head -c 4096 /dev/urandom > "$root/$small"
# Warm the page cache: both servers read from memory.
cat "$root/$large" "$root/$small" > /dev/null

cat > "$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 8192; }
http {
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    types { application/octet-stream gz cfg; }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        root $root;
    }
}
EOF

if [ -n "${SERVER_CMD:-}" ]; then
  cmd=${SERVER_CMD//\{root\}/$root}
  cmd=${cmd//\{port\}/$OUR_PORT}
else
  # serve needs an inventory (bootscripts, status page) even when only files are fetched.
  printf 'network:\n  server: 127.0.0.1\n  subnet: 127.0.0.0/8\ndefaults:\n  image: bench\nnodes: []\n' > "$work/nodes.yaml"
  cmd="$IMAGEBUILD serve --no-dhcp --no-tftp --listen 127.0.0.1 --root $root --nodes $work/nodes.yaml --state-dir $work/state --http-port $OUR_PORT --log-level warning"
fi
# shellcheck disable=SC2086
taskset -c "$SERVER_CPU" $cmd > "$work/ours.log" 2>&1 &
our_pid=$!
taskset -c "$SERVER_CPU" nginx -c "$work/nginx.conf" -p "$work/nginx" > "$work/nginx.log" 2>&1 &
nginx_pid=$!

wait_for() {
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$1/$small" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "http.sh: nothing answers on port $1; log:" >&2
  cat "$2" >&2
  exit 1
}
wait_for "$OUR_PORT" "$work/ours.log"
wait_for "$NGINX_PORT" "$work/nginx.log"

# Same bytes from both, or the comparison is meaningless.
for f in "$large" "$small"; do
  a=$(curl -fsS "http://127.0.0.1:$OUR_PORT/$f" | sha256sum)
  b=$(curl -fsS "http://127.0.0.1:$NGINX_PORT/$f" | sha256sum)
  [ "$a" = "$b" ] || { echo "http.sh: $f differs between the servers" >&2; exit 1; }
done

# One wrk run; prints "<requests/s> <bytes/s> <errors>".
run_wrk() {
  local port=$1 path=$2 conns=$3 out
  # 64 MiB at 1000 connections takes longer than wrk's default 2 s per response.
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$conns" -d"$DURATION" --timeout 60s "http://127.0.0.1:$port/$path" 2>&1)
  echo "$out" >> "$work/wrk.log"
  awk '
    function bytes(v) {
      if (v ~ /GB$/) return v * 1024 * 1024 * 1024
      if (v ~ /MB$/) return v * 1024 * 1024
      if (v ~ /KB$/) return v * 1024
      return v + 0
    }
    /^Requests\/sec:/ { rps = $2 }
    /^Transfer\/sec:/ { bps = bytes($2) }
    /Socket errors:/ { gsub(",", ""); errors += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { errors += $5 }
    END { printf "%.1f %.0f %d\n", rps, bps, errors }
  ' <<< "$out"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

printf "%-6s %6s  %14s %14s  %6s  %s\n" file conns imagebuild nginx ratio errors
status=0
for file in large small; do
  path=$large unit="MiB/s" goal=0.9
  [ $file = small ] && path=$small unit="req/s" goal=0.7
  for conns in $CONNECTIONS; do
    ours=() theirs=() errors=0
    for _ in $(seq 1 "$ROUNDS"); do
      # Alternate which server goes first so page-cache or thermal drift does not favour one.
      read -r r b e < <(run_wrk "$OUR_PORT" "$path" "$conns")
      ours+=("$([ $file = large ] && awk -v b="$b" 'BEGIN { printf "%.1f", b / 1048576 }' || echo "$r")")
      errors=$((errors + e))
      read -r r b e < <(run_wrk "$NGINX_PORT" "$path" "$conns")
      theirs+=("$([ $file = large ] && awk -v b="$b" 'BEGIN { printf "%.1f", b / 1048576 }' || echo "$r")")
      errors=$((errors + e))
    done
    a=$(printf "%s\n" "${ours[@]}" | median)
    b=$(printf "%s\n" "${theirs[@]}" | median)
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')
    verdict=ok
    awk -v r="$ratio" -v g="$goal" 'BEGIN { exit !(r >= g) }' || { verdict="below ${goal}x"; status=1; }
    [ "$errors" -eq 0 ] || { verdict="$verdict, errors"; status=1; }
    printf "%-6s %6s  %8s %-5s %8s %-5s  %5sx  %s (%s)\n" $file "$conns" "$a" "$unit" "$b" "$unit" "$ratio" "$errors" "$verdict"
  done
done
echo "(median of $ROUNDS x $DURATION per case; server on CPU $SERVER_CPU, wrk -t1 on CPU $CLIENT_CPU; wrk output in $work/wrk.log is removed on exit)"
our_rss=$(ps -o rss= -p "$our_pid" 2>/dev/null || echo 0)
echo "imagebuild RSS after the run: $((our_rss / 1024)) MiB"
exit $status
