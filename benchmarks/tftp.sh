#!/usr/bin/env bash
# TFTP throughput on loopback: our server against tftpd-hpa and dnsmasq, same client, same CPU split.
#
# Runs in a private network namespace (its loopback only). Three tables:
#   1. single download, MB/s (median of RUNS): 8 and 64 MiB, curl at blksize 512 and 1468, atftp at
#      blksize 1468 with windowsize 16 and 64 (RFC 7440; a server without it answers in lock-step);
#   2. N concurrent downloads (curl, one source address each, like a boot storm): aggregate MB/s and
#      failures, for N = 10, 100, 500;
#   3. memory with 500 concurrent 64 MiB downloads in flight: the server's peak RSS.
# Each row prints our ratio against each reference (ours / reference MB/s; above 1 means ours is faster).
#
#   benchmarks/tftp.sh
#   RUNS=5 CONCURRENCY="10 100" SKIP_MEMORY=1 benchmarks/tftp.sh
#
# Environment: IMAGEBUILD, RUNS (default 3), SINGLE_SIZES (MiB, "8 64"), CONCURRENCY ("10 100 500"),
# CONCURRENT_MIB (file size per concurrent client, 4), MEMORY_CLIENTS (500), MEMORY_SECONDS (how long the
# memory run lets the downloads run before sampling, 20), TIMEOUT (per download or batch, 300),
# SERVER_CPUS / CLIENT_CPUS (taskset lists, default 0 and 1), SKIP_MEMORY=1.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/tftp-common.sh"

if [[ ${1:-} != --inner ]]; then
    find_imagebuild
    export IMAGEBUILD
    run_in_namespace "$0" "$@"
    exit $?
fi

RUNS=${RUNS:-3}
SINGLE_SIZES=${SINGLE_SIZES:-"8 64"}
CONCURRENCY=${CONCURRENCY:-"10 100 500"}
CONCURRENT_MIB=${CONCURRENT_MIB:-4}
MEMORY_CLIENTS=${MEMORY_CLIENTS:-500}
MEMORY_SECONDS=${MEMORY_SECONDS:-20}
TIMEOUT=${TIMEOUT:-300}

WORK=$(mktemp -d /tmp/tftp-bench.XXXXXX)
ROOT=$WORK/root
mkdir -p "$ROOT"
chmod 755 "$WORK" "$ROOT"
trap 'stop_all_servers; rm -rf "$WORK"' EXIT
echo probe >"$ROOT/probe"
for size in $SINGLE_SIZES $CONCURRENT_MIB 64; do
    [[ -f $ROOT/file-${size}M ]] || head -c "$((size << 20))" /dev/urandom >"$ROOT/file-${size}M"
done
chmod 644 "$ROOT"/*

REFERENCES=()
command -v in.tftpd >/dev/null && REFERENCES+=(tftpd-hpa) || note "tftpd-hpa not installed: column left out"
command -v dnsmasq >/dev/null && REFERENCES+=(dnsmasq) || note "dnsmasq not installed: column left out"
SERVERS=("${REFERENCES[@]}" ours)
for server in "${SERVERS[@]}"; do start_server "$server" "$ROOT"; done
note "servers: ${SERVERS[*]} (CPUs $SERVER_CPUS), clients on CPUs $CLIENT_CPUS, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"

mbps() { awk -v mib="$1" -v s="$2" 'BEGIN { if (s == "FAIL" || s <= 0) print "FAIL"; else printf "%.1f\n", mib * 1.048576 / s }'; }

# One row: label, then MB/s per server, then ratios. Values are "MB/s" or FAIL.
declare -A CELL=()
print_row() {
    local label=$1 server ratio
    printf '%-34s' "$label"
    for server in "${SERVERS[@]}"; do printf '%-12s' "${CELL[$server]}"; done
    for server in "${REFERENCES[@]}"; do
        ratio=$(awk -v o="${CELL[ours]}" -v r="${CELL[$server]}" 'BEGIN {
            if (o == "FAIL" || o == "-") print "-"; else if (r == "FAIL" || r == "-" || r == 0) print "inf"; else printf "%.2fx", o / r }')
        printf '%-14s' "$ratio"
    done
    echo
}
print_header() {
    local server
    printf '%-34s' "$1"
    for server in "${SERVERS[@]}"; do printf '%-12s' "$server"; done
    for server in "${REFERENCES[@]}"; do printf '%-14s' "vs $server"; done
    echo
}

# --- 1. Single downloads -------------------------------------------------------------------------
ROWS=()
for size in $SINGLE_SIZES; do
    ROWS+=("curl $size 512 1" "curl $size 1468 1" "atftp $size 1468 16" "atftp $size 1468 64")
done
declare -A SINGLE=()
for row in "${ROWS[@]}"; do
    read -r client size blksize window <<<"$row"
    for run in $(seq 1 "$RUNS"); do
        # Interleaved, so background load on this shared machine falls on every server alike.
        for server in "${SERVERS[@]}"; do
            SINGLE[$row.$server]+="$(mbps "$size" "$(fetch "$client" "$server" "file-${size}M" "$WORK/out" "$blksize" "$window" "$TIMEOUT")") "
        done
    done
done

echo
echo "1. Single download, MB/s (median of $RUNS; ratio = ours / reference)"
print_header "client file blksize windowsize"
for row in "${ROWS[@]}"; do
    read -r client size blksize window <<<"$row"
    for server in "${SERVERS[@]}"; do
        # Median of MB/s; a failed run counts as 0 MB/s.
        CELL[$server]=$(printf '%s\n' ${SINGLE[$row.$server]} | sed 's/FAIL/0/' | sort -g | awk '{ v[NR] = $1 } END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; if (m == 0) print "FAIL"; else printf "%.1f\n", m }')
    done
    label="$client ${size}M blksize $blksize"
    [[ $window -gt 1 ]] && label+=" ws $window"
    print_row "$label"
done

# --- 2. Concurrent downloads ---------------------------------------------------------------------
# Client i binds 127.1.x.y: distinct source addresses, as in a boot storm (our per-client limit is per IP).
client_address() { echo "127.1.$(($1 / 250)).$(($1 % 250 + 1))"; }

# concurrent SERVER N FILE MIB: prints "MB/s failures seconds".
concurrent() {
    local server=$1 count=$2 file=$3 mib=$4 port=${PORT[$1]} i started ended failures=0 pids=()
    rm -f "$WORK"/conc.*
    started=$EPOCHREALTIME
    for i in $(seq 0 $((count - 1))); do
        (
            timeout -k 5 "$TIMEOUT" taskset -c "$CLIENT_CPUS" curl -s --interface "$(client_address "$i")" \
                --tftp-blksize 1468 -o - "tftp://$ADDR:$port/$file" | cmp -s - "$ROOT/$file"
            [[ ${PIPESTATUS[0]} -eq 0 && ${PIPESTATUS[1]} -eq 0 ]] || touch "$WORK/conc.fail.$i"
        ) &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i"; done
    ended=$EPOCHREALTIME
    failures=$(find "$WORK" -maxdepth 1 -name 'conc.fail.*' | wc -l)
    awk -v n="$count" -v f="$failures" -v mib="$mib" -v a="$started" -v b="$ended" \
        'BEGIN { printf "%.1f %d %.2f\n", (n - f) * mib * 1.048576 / (b - a), f, b - a }'
}

declare -A CONC=()
for count in $CONCURRENCY; do
    for run in $(seq 1 "$RUNS"); do
        for server in "${SERVERS[@]}"; do
            CONC[$count.$server]+="$(concurrent "$server" "$count" "file-${CONCURRENT_MIB}M" "$CONCURRENT_MIB"),"
        done
    done
done

echo
echo "2. Concurrent downloads of ${CONCURRENT_MIB} MiB (curl, blksize 1468): aggregate MB/s (median of $RUNS), failures over all runs"
print_header "clients"
for count in $CONCURRENCY; do
    failures_line=""
    for server in "${SERVERS[@]}"; do
        CELL[$server]=$(echo "${CONC[$count.$server]}" | tr ',' '\n' | awk 'NF { print $1 }' | sort -g | awk '{ v[NR] = $1 } END {
            printf "%.1f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
        failed=$(echo "${CONC[$count.$server]}" | tr ',' '\n' | awk 'NF { f += $2 } END { print f + 0 }')
        failures_line+="$server $failed/$((count * RUNS)) failed; "
    done
    print_row "$count clients"
    printf '%-34s%s\n' "" "$failures_line"
done

# --- 3. Memory ----------------------------------------------------------------------------------
[[ ${SKIP_MEMORY:-0} -eq 1 ]] && exit 0
# Peak RSS of a server's whole process tree (tftpd-hpa forks one process per transfer).
tree_rss_kib() {
    local pid=$1 total=0 child
    total=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
    for child in $(pgrep -P "$pid"); do total=$((total + $(tree_rss_kib "$child"))); done
    echo "$total"
}
echo
echo "3. Memory with $MEMORY_CLIENTS concurrent 64 MiB downloads, sampled after ${MEMORY_SECONDS} s"
printf '%-12s %-14s %-16s %s\n' server "peak RSS MiB" "RSS now MiB" "downloads still running"
for server in "${SERVERS[@]}"; do
    # A fresh server, so the peak is this run's.
    stop_server "$server"
    start_server "$server" "$ROOT"
    pid=${SERVER_PID[$server]}
    pids=()
    for i in $(seq 0 $((MEMORY_CLIENTS - 1))); do
        timeout -k 5 "$((MEMORY_SECONDS + 30))" taskset -c "$CLIENT_CPUS" curl -s --interface "$(client_address "$i")" \
            --tftp-blksize 1468 -o /dev/null "tftp://$ADDR:${PORT[$server]}/file-64M" &
        pids+=($!)
    done
    peak_tree=0
    for _ in $(seq 1 "$MEMORY_SECONDS"); do
        sleep 1
        now=$(tree_rss_kib "$pid")
        ((now > peak_tree)) && peak_tree=$now
    done
    running=0
    for i in "${pids[@]}"; do kill -0 "$i" 2>/dev/null && running=$((running + 1)); done
    hwm=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
    # For a single process VmHWM is the exact peak; for a forking server, the largest sampled tree sum.
    [[ $server == tftpd-hpa ]] && hwm=$peak_tree
    printf '%-12s %-14s %-16s %s\n' "$server" "$((hwm / 1024))" "$(($(tree_rss_kib "$pid") / 1024))" "$running/$MEMORY_CLIENTS"
    for i in "${pids[@]}"; do kill "$i" 2>/dev/null; done
    for i in "${pids[@]}"; do wait "$i" 2>/dev/null; done
done
