#!/bin/bash
# DHCP throughput: perfdhcp (Debian package kea-admin) in a private network namespace against our
# server, dnsmasq (--no-ping) and kea-dhcp4 (memfile, persist on), each with a 15,360-address pool.
# For 1,000 and 10,000 simulated clients it climbs a rate ladder and reports the highest DORA/s
# (4-way exchanges per second) that perfdhcp completed with zero drops; REPEAT runs, median shown.
#
#   benchmarks/dhcp.sh                   servers: ours dnsmasq kea
#   SERVERS="ours" REPEAT=1 benchmarks/dhcp.sh
#
# Our server: $IMAGEBUILD serve ... when IMAGEBUILD points at a binary with `serve`; otherwise the
# test-binary harness ($HARNESS, the BootServerTests child entry `dhcpServerChildProcess`), e.g.
#   swift build -c release --build-tests --scratch-path .build-release
#   HARNESS=.build-release/release/imagebuildPackageTests.xctest benchmarks/dhcp.sh
# Server and perfdhcp are pinned to different CPUs (see TEST-NOTES: 2-vCPU machines).
# DISCOVER=1 adds a discover: block to nodes.yaml (ours binds every client to a slot).
# OURS_CONFIG=server.yaml is passed to our server as --config: perfdhcp sends every MAC several
# DORAs a second, which the default per-MAC rate limit (burst 20, 5/s) drops by design; raise it
# there (dhcp: {rate_limit: {burst: 1000, per_second: 1000}}) to measure raw throughput.
set -uo pipefail
cd "$(dirname "$0")/.."
SERVERS=${SERVERS:-"ours dnsmasq kea"}
CLIENTS=${CLIENTS:-"1000 10000"}
RATES=${RATES:-"250 500 1000 2000 3000 4000 6000 8000 12000"}
PERIOD=${PERIOD:-5}
REPEAT=${REPEAT:-3}
ID=ibb$$
SNS=${ID}s
CNS=${ID}c
WORK=$(mktemp -d /tmp/dhcp-bench.XXXXXX)
SERVER_PID=

cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    ip netns del $SNS 2>/dev/null
    ip netns del $CNS 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v perfdhcp >/dev/null || { echo "perfdhcp missing: apt-get install kea-admin" >&2; exit 1; }
ip netns add $SNS && ip netns add $CNS || { echo "cannot create network namespaces" >&2; exit 1; }
ip -n $SNS link set lo up
ip -n $CNS link set lo up
ip -n $SNS link add srv0 type veth peer name cl0 netns $CNS
ip -n $SNS addr add 10.200.0.1/16 dev srv0
ip -n $CNS addr add 10.200.0.2/16 dev cl0
ip -n $SNS link set srv0 up
ip -n $CNS link set cl0 up

cat > "$WORK/nodes.yaml" <<YAML
network:
  server: 10.200.0.1
  subnet: 10.200.0.0/16
  router: 10.200.0.1
  pool: 10.200.1.0-10.200.60.255
  lease_time: 3600
defaults:
  image: compute
YAML
if [ -n "${DISCOVER:-}" ]; then
    # Every perfdhcp client is a machine nodes.yaml does not list: with DISCOVER=1 ours binds each to a
    # slot (a binding journalled and fsynced before its first answer), the worst case of discovery.
    cat >> "$WORK/nodes.yaml" <<YAML
discover:
  hostname: "n{n:05}"
  addresses: 10.200.61.0-10.200.120.255
YAML
fi

cat > "$WORK/kea.json" <<JSON
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "srv0" ], "dhcp-socket-type": "udp" },
    "lease-database": { "type": "memfile", "persist": true, "name": "$WORK/kea-leases.csv", "lfc-interval": 3600 },
    "valid-lifetime": 3600,
    "subnet4": [ { "id": 1, "subnet": "10.200.0.0/16", "pools": [ { "pool": "10.200.1.0 - 10.200.60.255" } ],
                   "option-data": [ { "name": "routers", "data": "10.200.0.1" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "WARN", "output_options": [ { "output": "$WORK/kea.log" } ] } ]
} }
JSON

start_server() {
    local name=$1
    local state=$WORK/state-$name-$RANDOM
    mkdir -p "$state"
    case $name in
    ours)
        if [ -n "${IMAGEBUILD:-}" ]; then
            # shellcheck disable=SC2086
            ip netns exec $SNS taskset -c 0 "$IMAGEBUILD" serve --root "$WORK" --nodes "$WORK/nodes.yaml" --no-tftp --no-http \
                --listen 10.200.0.1 --state-dir "$state" ${OURS_CONFIG:+--config "$OURS_CONFIG"} > "$WORK/ours.log" 2>&1 &
        else
            HARNESS=${HARNESS:-.build-release/release/imagebuildPackageTests.xctest}
            IMAGEBUILD_DHCPD_CHILD=1 IMAGEBUILD_DHCPD_NODES=$WORK/nodes.yaml IMAGEBUILD_DHCPD_STATE=$state \
            IMAGEBUILD_DHCPD_INTERFACE=srv0 IMAGEBUILD_DHCPD_SECONDS=3600 \
                ip netns exec $SNS taskset -c 0 "$HARNESS" --testing-library swift-testing --filter dhcpServerChildProcess \
                > "$WORK/ours.log" 2>&1 &
        fi ;;
    dnsmasq)
        ip netns exec $SNS taskset -c 0 dnsmasq --no-daemon --conf-file=/dev/null --port=0 --interface=srv0 --bind-interfaces \
            --dhcp-range=10.200.1.0,10.200.60.255,255.255.0.0,3600 --no-ping --dhcp-lease-max=100000 \
            --dhcp-leasefile="$state/leases" --log-facility="$WORK/dnsmasq.log" > /dev/null 2>&1 & ;;
    kea)
        rm -f "$WORK"/kea-leases.csv*
        KEA_PIDFILE_DIR=$state KEA_LOCKFILE_DIR=$state ip netns exec $SNS taskset -c 0 kea-dhcp4 -c "$WORK/kea.json" \
            > "$WORK/kea.out" 2>&1 & ;;
    esac
    SERVER_PID=$!
    sleep 3
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
    SERVER_PID=
    sleep 0.5
}

# One perfdhcp run; prints "achieved_rate drops" (drops summed over DISCOVER-OFFER and REQUEST-ACK).
perf() {
    local rate=$1 clients=$2 out
    out=$(ip netns exec $CNS taskset -c 1 perfdhcp -4 -l cl0 -r "$rate" -R "$clients" -p "$PERIOD" -W 1000000 10.200.0.1 2>&1)
    local achieved drops
    achieved=$(echo "$out" | awk '/^Rate:/ {print $2; exit}')
    drops=$(echo "$out" | awk '/^drops:/ {s += $2} END {print s + 0}')
    echo "${achieved:-0} ${drops:-999999}"
}

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

declare -A RESULT
for server in $SERVERS; do
    if [ "$server" = kea ] && ! command -v kea-dhcp4 >/dev/null; then echo "kea-dhcp4 missing, skipped" >&2; continue; fi
    for clients in $CLIENTS; do
        best_runs=()
        for run in $(seq "$REPEAT"); do
            start_server "$server"
            best=0
            for rate in $RATES; do
                read -r achieved drops < <(perf "$rate" "$clients")
                echo "$server clients=$clients run=$run rate=$rate achieved=$achieved drops=$drops" >&2
                [ "$drops" = 0 ] || break
                best=$achieved
            done
            stop_server
            best_runs+=("$best")
        done
        RESULT[$server,$clients]=$(printf '%s\n' "${best_runs[@]}" | median)
        echo "$server clients=$clients zero-drop DORA/s runs: ${best_runs[*]} median ${RESULT[$server,$clients]}" >&2
    done
done

echo
printf '%-10s %-8s %16s %14s\n' server clients "DORA/s (median)" "ours/other"
for server in $SERVERS; do
    for clients in $CLIENTS; do
        value=${RESULT[$server,$clients]:-}
        [ -z "$value" ] && continue
        ours=${RESULT[ours,$clients]:-}
        ratio=-
        if [ -n "$ours" ] && [ "$server" != ours ]; then ratio=$(awk -v a="$ours" -v b="$value" 'BEGIN { printf (b > 0 ? "%.2f" : "-"), a / b }'); fi
        printf '%-10s %-8s %16s %14s\n' "$server" "$clients" "$value" "$ratio"
    done
done
