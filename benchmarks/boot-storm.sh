#!/usr/bin/env bash
# benchmarks/boot-storm.sh: N simulated PXE nodes boot against `imagebuild serve` and, in the same
# run, against the reference stack (dnsmasq for DHCP + TFTP, nginx for HTTP) serving the same boot
# root. Prints, per server: nodes booted, failures by stage, p50/p99 per stage, nodes per minute;
# then the ratio of nodes per minute and the servers' peak RSS (VmHWM).
#
#   benchmarks/boot-storm.sh                         1,000 then 10,000 nodes, both servers
#   NODES="200" SERVERS="ours" benchmarks/boot-storm.sh
#   REGISTERED=1 NODES=10000 SERVERS="ours ours-nofiles" benchmarks/boot-storm.sh
#                                                    every node listed in nodes.yaml with its own files
#                                                    (a per-node template, a cluster-wide one, a secret):
#                                                    ours fetches secrets and overlays as stage 1 does,
#                                                    ours-nofiles skips them; the ratio of the two
#
# Network: two namespaces of its own joined by a veth pair (server 10.200.0.1/16 on srv0, simulator
# 10.200.0.2/16 on cl0); nothing touches a host interface. The dynamic pool 10.200.64.1-10.200.127.254
# is routed as local on the simulator side (`ip route add local 10.200.64.0/18 dev lo`), so each node
# talks TFTP and HTTP from its own leased address and the servers' per-client limits see one client
# per node; the server side routes the pool via 10.200.0.2 (one neighbour entry instead of 10,000).
# The server is pinned to CPU 0 and the simulator to CPU 1 (taskset; see TEST-NOTES: 2-vCPU VMs).
# Every run is bounded: node count, and TIME_LIMIT seconds of wall clock per storm.
#
# Environment:
#   NODES ("1000 10000"), SERVERS ("ours reference"), CONCURRENCY (500), RATE (500 nodes/s),
#   TIME_LIMIT (1200 s per storm), KERNEL_KIB (64), INITRD_KIB (256), IMAGE_KIB (1024),
#   SERVER_CPU (0), CLIENT_CPU (1), OUT (also append the report to this file),
#   IMAGEBUILD / STORM (binaries; default .build/release/...), SKIP_BUILD=1 (do not build),
#   SCRATCH (swift build --scratch-path, default .build), STORM_ARGS (more imagebuild-storm options for
#   both servers, e.g. "--no-events" to compare like for like), REGISTERED (1: list the nodes, see
#   above), HOST_KEYS (with REGISTERED: none, the default, or persistent: generated before the storm)
# The reference gets no stage events (nginx cannot take POST /api/v1/events): its table says so.
set -uo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-"1000 10000"}
SERVERS=${SERVERS:-"ours reference"}
CONCURRENCY=${CONCURRENCY:-500}
RATE=${RATE:-500}
TIME_LIMIT=${TIME_LIMIT:-1200}
KERNEL_KIB=${KERNEL_KIB:-64}
INITRD_KIB=${INITRD_KIB:-256}
IMAGE_KIB=${IMAGE_KIB:-1024}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SCRATCH=${SCRATCH:-.build}
REGISTERED=${REGISTERED:-0}
HOST_KEYS=${HOST_KEYS:-none}
IMAGEBUILD=${IMAGEBUILD:-$SCRATCH/release/imagebuild}
STORM=${STORM:-$SCRATCH/release/imagebuild-storm}
OUT=${OUT:-}

tools="ip taskset curl sha256sum"
case " $SERVERS " in *" reference "*) tools="$tools dnsmasq nginx" ;; esac   # the reference stack only
for tool in $tools; do
    command -v "$tool" >/dev/null || { echo "boot-storm.sh: $tool is missing (apt-get install iproute2 util-linux dnsmasq-base nginx-light curl coreutils)" >&2; exit 1; }
done
[ -e /usr/lib/PXELINUX/lpxelinux.0 ] || { echo "boot-storm.sh: apt-get install pxelinux syslinux-common ipxe (publish copies the boot loaders)" >&2; exit 1; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    swift build -c release --scratch-path "$SCRATCH" --product imagebuild >&2 || exit 1
    swift build -c release --scratch-path "$SCRATCH" --product imagebuild-storm >&2 || exit 1
fi
for binary in "$IMAGEBUILD" "$STORM"; do
    [ -x "$binary" ] || { echo "boot-storm.sh: $binary not found (build it, or set IMAGEBUILD / STORM)" >&2; exit 1; }
done
IMAGEBUILD=$(realpath "$IMAGEBUILD")
STORM=$(realpath "$STORM")
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

ID=ibs$$
SNS=${ID}s
CNS=${ID}c
WORK=$(mktemp -d /tmp/boot-storm.XXXXXX)
chmod 755 "$WORK"   # nginx workers and dnsmasq drop privileges: they must read the root
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    ip netns del "$SNS" 2>/dev/null
    ip netns del "$CNS" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "$*" >&2; }
emit() { echo "$*"; [ -n "$OUT" ] && echo "$*" >> "$OUT"; return 0; }

# --- Namespaces --------------------------------------------------------------------------------
ip netns add "$SNS" && ip netns add "$CNS" || { say "cannot create network namespaces (root needed)"; exit 1; }
ip -n "$SNS" link set lo up
ip -n "$CNS" link set lo up
ip -n "$SNS" link add srv0 type veth peer name cl0 netns "$CNS"
ip -n "$SNS" addr add 10.200.0.1/16 dev srv0
ip -n "$CNS" addr add 10.200.0.2/16 dev cl0
ip -n "$SNS" link set srv0 up
ip -n "$CNS" link set cl0 up
ip -n "$CNS" route add local 10.200.64.0/18 dev lo
ip -n "$CNS" route add local 10.200.128.0/18 dev lo   # fixed addresses of listed nodes (REGISTERED=1)
ip -n "$CNS" route add default dev cl0          # where 255.255.255.255 leaves
ip -n "$SNS" route add 10.200.64.0/18 via 10.200.0.2 dev srv0
ip -n "$SNS" route add 10.200.128.0/18 via 10.200.0.2 dev srv0
for ns in "$SNS" "$CNS"; do
    ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1
    ip netns exec "$ns" sysctl -qw net.core.somaxconn=8192 2>/dev/null
done

# --- Boot root: synthetic artifacts published with `imagebuild publish` -------------------------
# shellcheck source=benchmarks/lib-storm.sh
. benchmarks/lib-storm.sh
ART=$WORK/artifacts/storm
ROOT=$WORK/root
mkdir -p "$ROOT"
synthetic_artifacts "$ART" "$KERNEL_KIB" "$INITRD_KIB" "$IMAGE_KIB"
max=0; for n in $NODES; do [ "$n" -gt "$max" ] && max=$n; done
storm_nodes "$WORK/nodes.yaml" "$max" "$REGISTERED" "$HOST_KEYS" "$WORK/secrets"
publish_start=$(date +%s.%N)
"$IMAGEBUILD" publish "$ART" --root "$ROOT" --nodes "$WORK/nodes.yaml" >&2 || { say "imagebuild publish failed"; exit 1; }
PUBLISH_SECONDS=$(awk -v a="$publish_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
chmod -R a+rX "$ROOT"
cat "$ROOT"/pxelinux.cfg/default > /dev/null && find "$ROOT/" -type f -exec cat {} + > /dev/null   # warm the page cache

# --- Servers ----------------------------------------------------------------------------------
SERVER_PIDS=()
start_ours() {
    local state=$1
    ip netns exec "$SNS" taskset -c "$SERVER_CPU" "$IMAGEBUILD" serve --root "$ROOT" --nodes "$WORK/nodes.yaml" \
        --listen 10.200.0.1 --interface srv0 --http-port 80 --state-dir "$state" --log-level warning \
        > "$state.log" 2>&1 &
    SERVER_PIDS=($!)
    PIDS+=($!)
}

start_reference() {
    local state=$1
    mkdir -p "$state/nginx"
    # dnsmasq: DHCP (no ping before offers: it serialises storms, see TEST-NOTES) + TFTP of the same root.
    # Per-transaction logging off on both sides (ours runs at --log-level warning, nginx without access log).
    ip netns exec "$SNS" taskset -c "$SERVER_CPU" dnsmasq --no-daemon --conf-file=/dev/null --port=0 --user=root \
        --interface=srv0 --bind-interfaces --dhcp-range=10.200.64.1,10.200.127.254,255.255.0.0,1h \
        --dhcp-option=option:router,10.200.0.1 --no-ping --dhcp-lease-max=100000 --dhcp-leasefile="$state/leases" \
        --dhcp-boot=lpxelinux.0,,10.200.0.1 --dhcp-option=vendor:PXEClient,6,2b \
        --enable-tftp --tftp-root="$ROOT" --tftp-max=10000 --quiet-dhcp --quiet-tftp --log-facility="$state.dnsmasq.log" \
        > "$state.dnsmasq.out" 2>&1 &
    local dnsmasq=$!
    cat > "$state/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $state/nginx.pid;
error_log $state/nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_timeout 60s;
    client_body_temp_path $state/nginx/body;
    proxy_temp_path $state/nginx/proxy;
    fastcgi_temp_path $state/nginx/fastcgi;
    uwsgi_temp_path $state/nginx/uwsgi;
    scgi_temp_path $state/nginx/scgi;
    default_type application/octet-stream;
    server {
        listen 10.200.0.1:80 backlog=8192;
        root $ROOT;
    }
}
EOF
    ip netns exec "$SNS" taskset -c "$SERVER_CPU" nginx -c "$state/nginx.conf" > "$state.nginx.out" 2>&1 &
    local nginx=$!
    SERVER_PIDS=($dnsmasq $nginx)
    PIDS+=($dnsmasq $nginx)
}

# Peak resident memory of a process and its children (nginx workers), in MiB.
peak_rss() {
    local total=0 pid kib
    for pid in "$@" $(for p in "$@"; do pgrep -P "$p"; done); do
        kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
        total=$((total + ${kib:-0}))
    done
    awk -v k="$total" 'BEGIN { printf "%.1f", k / 1024 }'
}

# CPU seconds (user + system) a process and its children (nginx workers) have used so far.
cpu_seconds() {
    local ticks=0 pid t
    for pid in "$@" $(for p in "$@"; do pgrep -P "$p"; done); do
        t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null)
        ticks=$((ticks + ${t:-0}))
    done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }'
}

stop_servers() {
    for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${SERVER_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    SERVER_PIDS=()
}

wait_ready() {
    for _ in $(seq 100); do
        ip netns exec "$CNS" curl -sf -o /dev/null --max-time 1 http://10.200.0.1/pxelinux.cfg/default && return 0
        sleep 0.2
    done
    say "server did not answer HTTP within 20 s"
    return 1
}

declare -A RATE_RESULT
emit "# boot-storm $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) CPUs; kernel ${KERNEL_KIB} KiB, initrd ${INITRD_KIB} KiB, image ${IMAGE_KIB} KiB;" \
     "concurrency $CONCURRENCY, arrival $RATE/s; server on CPU $SERVER_CPU, simulator on CPU $CLIENT_CPU"
[ "$REGISTERED" = 1 ] && emit "# registered nodes with their own files (host keys: $HOST_KEYS); publish took $PUBLISH_SECONDS s"
for n in $NODES; do
    for server in $SERVERS; do
        state=$WORK/state-$server-$n
        mkdir -p "$state"
        extra=(${STORM_ARGS:-})
        case $server in
        ours) start_ours "$state"; label="imagebuild-serve" ;;
        ours-nofiles) start_ours "$state"; label="imagebuild-serve, node files not fetched"; extra+=(--no-node-files) ;;
        reference) start_reference "$state"; label="dnsmasq+nginx"; extra+=(--no-events --no-node-files) ;;
        *) say "unknown server '$server'"; continue ;;
        esac
        wait_ready || { stop_servers; continue; }
        load_before=$(cut -d' ' -f1-3 /proc/loadavg)
        report=$(ip netns exec "$CNS" taskset -c "$CLIENT_CPU" "$STORM" --nodes "$n" --concurrency "$CONCURRENCY" \
            --rate "$RATE" --time-limit "$TIME_LIMIT" --label "$label" "${extra[@]}" 2> "$state.storm.err")
        load_after=$(cut -d' ' -f1-3 /proc/loadavg)
        rss=$(peak_rss "${SERVER_PIDS[@]}")
        cpu=$(cpu_seconds "${SERVER_PIDS[@]}")
        metrics=
        if [ "$server" = ours ]; then   # the server's own counters: TFTP retransmissions and time-outs say where time went
            metrics=$(ip netns exec "$CNS" curl -s --max-time 5 http://10.200.0.1/metrics | grep -E '^(imagebuild_tftp_(retransmissions|timeouts|transfers)_total|imagebuild_dhcp_messages_(received|sent)_total\{type="(DISCOVER|REQUEST|OFFER|ACK|NAK)"\}|imagebuild_http_fast_path_responses_total|imagebuild_http_requests_total\{route="(files|events)",code="[245]xx"\} [1-9])' | head -n 30)
        fi
        stop_servers
        emit ""
        emit "$report"
        emit "peak RSS of the server process(es): $rss MiB; server CPU: $cpu s; load average before/after: $load_before / $load_after"
        [ -n "$metrics" ] && emit "server metrics:" && emit "$metrics"
        if [ "$server" = ours ] && [ -s "$state.log" ]; then
            emit "server log (warnings and errors, first 5 lines):"
            emit "$(head -n 5 "$state.log")"
        fi
        RATE_RESULT[$server,$n]=$(echo "$report" | sed -n 's/^RESULT .*nodes_per_min=\([0-9.]*\).*/\1/p')
    done
    if [ -n "${RATE_RESULT[ours,$n]:-}" ] && [ -n "${RATE_RESULT[ours-nofiles,$n]:-}" ]; then
        emit "$(awk -v a="${RATE_RESULT[ours,$n]}" -v b="${RATE_RESULT[ours-nofiles,$n]}" -v n="$n" \
            'BEGIN { printf "N=%d: nodes per minute with node files %.1f / without %.1f = %.2fx\n", n, a, b, (b > 0 ? a / b : 0) }')"
    fi
    if [ -n "${RATE_RESULT[ours,$n]:-}" ] && [ -n "${RATE_RESULT[reference,$n]:-}" ]; then
        emit "$(awk -v a="${RATE_RESULT[ours,$n]}" -v b="${RATE_RESULT[reference,$n]}" -v n="$n" \
            'BEGIN { printf "N=%d: nodes per minute imagebuild %.1f / reference %.1f = %.2fx\n", n, a, b, (b > 0 ? a / b : 0) }')"
    fi
done
