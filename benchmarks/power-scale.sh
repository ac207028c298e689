#!/usr/bin/env bash
# benchmarks/power-scale.sh: `imagebuild power status all` against NODES (1000) Redfish BMCs, and the
# hand-made reference next to it: the same GET per node with curl through `xargs -P` (what a site's
# loop does), at the same parallelism.
#
# The BMCs: benchmarks/redfish-fake.py, one asyncio HTTPS server in a network namespace of its own
# with only a loopback, listening on all of that namespace's addresses, so each node has a BMC
# address of its own (127.1.x.y: one TLS connection per BMC, as with real ones) and nothing touches a
# real interface. (sushy-tools, which the functional tests use, does TLS handshakes one at a time
# in its accept loop: a model of one slow BMC, not of 1,000.) Both sides run inside the namespace.
# Printed: wall time, peak memory (RSS) of imagebuild, nodes answered, for RUNS (3) runs and their
# medians, and the ratio of the medians (reference / imagebuild: above 1, imagebuild is faster).
# Environment: NODES (1000), PARALLEL (64), RUNS (3), OUT (append the report there),
# IMAGEBUILD (default .build/release/imagebuild), SKIP_BUILD=1, SCRATCH (default .build). Run as root.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
NODES=${NODES:-1000}
PARALLEL=${PARALLEL:-64}
RUNS=${RUNS:-3}
SCRATCH=${SCRATCH:-.build}
IMAGEBUILD=${IMAGEBUILD:-$SCRATCH/release/imagebuild}
OUT=${OUT:-}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    swift build -c release --scratch-path "$SCRATCH" --product imagebuild >&2 || exit 1
fi
[ -x "$IMAGEBUILD" ] || { echo "power-scale.sh: $IMAGEBUILD not found" >&2; exit 1; }
IMAGEBUILD=$(realpath "$IMAGEBUILD")
WORK=$(mktemp -d /tmp/power-scale.XXXXXX)
NS=ibpower$$
BMC_PID=
cleanup() {
    [ -n "$BMC_PID" ] && kill "$BMC_PID" 2>/dev/null && wait "$BMC_PID" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
emit() { echo "$*"; [ -n "$OUT" ] && echo "$*" >> "$OUT"; return 0; }
in_ns() { ip netns exec "$NS" "$@"; }

ip netns add "$NS" && ip -n "$NS" link set lo up || exit 1
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bmc.test \
    -addext subjectAltName=DNS:bmc.test -keyout "$WORK/bmc.key" -out "$WORK/bmc.pem" 2>/dev/null || exit 1
PASSWORD=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$PASSWORD" > "$WORK/bmc-password" && chmod 600 "$WORK/bmc-password"
# curl reads the login from a netrc file, so no password is on a command line.
printf 'machine bmc.test login admin password %s\n' "$PASSWORD" > "$WORK/netrc" && chmod 600 "$WORK/netrc"

# Node i: BMC address 127.1.(i/250).(i%250+1), system id ...-<i>.
address() { echo "127.1.$(( $1 / 250 )).$(( $1 % 250 + 1 ))"; }
uuid() { printf '5a1e0000-0000-4000-8000-%012d' "$1"; }
{
    echo "network: {server: 10.77.0.1, subnet: 10.77.0.0/16}"
    echo "defaults:"
    echo "  bmc: {protocol: redfish, port: 8443, user: admin, password_file: $WORK/bmc-password, tls: $WORK/bmc.pem}"
    echo "nodes:"
    for ((i = 0; i < NODES; i++)); do
        printf '  - {mac: "52:54:01:%02x:%02x:%02x", hostname: node%05d, bmc: {address: %s, system: %s}}\n' \
            $((i >> 16 & 255)) $((i >> 8 & 255)) $((i & 255)) "$i" "$(address "$i")" "$(uuid "$i")"
    done
} > "$WORK/nodes.yaml"
for ((i = 0; i < NODES; i++)); do echo "$(address "$i") $(uuid "$i")"; done > "$WORK/targets"

# Started directly (not through in_ns) so that $! is the server's own PID (ip netns exec execs it).
ip netns exec "$NS" python3 benchmarks/redfish-fake.py 8443 "$WORK/bmc.pem" "$WORK/bmc.key" "$WORK/bmc-password" > "$WORK/bmc.log" 2>&1 &
BMC_PID=$!
for _ in $(seq 100); do
    in_ns curl -sk -o /dev/null https://127.1.0.1:8443/redfish/v1/ 2>/dev/null && break
    sleep 0.2
done
in_ns curl -sk -o /dev/null https://127.1.0.1:8443/redfish/v1/ || { echo "power-scale.sh: the BMCs do not answer" >&2; cat "$WORK/bmc.log" >&2; exit 1; }

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
emit "power-scale $(date -u +%FT%TZ): $NODES Redfish BMCs (benchmarks/redfish-fake.py, HTTPS), parallel $PARALLEL, $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg)"
: > "$WORK/ours" ; : > "$WORK/ref"
for run in $(seq "$RUNS"); do
    # imagebuild: wall time and peak RSS from GNU time; nodes answered from its JSON.
    /usr/bin/time -f '%e %M' -o "$WORK/time" ip netns exec "$NS" "$IMAGEBUILD" power status all --nodes "$WORK/nodes.yaml" \
        --parallel "$PARALLEL" --json > "$WORK/out.json" 2> "$WORK/err"
    # GNU time puts "Command exited with non-zero status N" first when a node failed.
    read -r seconds rss < <(tail -n 1 "$WORK/time")
    ok=$(grep -c '"ok" : true' "$WORK/out.json")
    if [ "$ok" != "$NODES" ]; then
        echo "power-scale.sh: $((NODES - ok)) nodes failed; the first errors:" >&2
        grep -m 5 '"error"' "$WORK/out.json" >&2
        head -5 "$WORK/err" >&2
    fi
    grep -q "$PASSWORD" "$WORK/out.json" "$WORK/err" && { echo "power-scale.sh: the password appeared in the output" >&2; exit 1; }
    emit "  run $run imagebuild: ${seconds} s, peak RSS $((rss / 1024)) MiB, $ok of $NODES answered"
    echo "$seconds" >> "$WORK/ours"
    # The reference: one curl per node, the same GET, the same parallelism.
    start=$(date +%s.%N)
    # shellcheck disable=SC2016
    in_ns xargs -P "$PARALLEL" -L 1 sh -c 'curl -s --cacert "$0" --netrc-file "$1" -o /dev/null -w "%{http_code}\n" --resolve "bmc.test:8443:$2" "https://bmc.test:8443/redfish/v1/Systems/$3"' \
        "$WORK/bmc.pem" "$WORK/netrc" < "$WORK/targets" > "$WORK/codes"
    end=$(date +%s.%N)
    ref=$(echo "$end - $start" | bc)
    emit "  run $run curl | xargs -P $PARALLEL: ${ref} s, $(grep -c '^200$' "$WORK/codes") of $NODES answered"
    echo "$ref" >> "$WORK/ref"
done
ours=$(median < "$WORK/ours"); ref=$(median < "$WORK/ref")
emit "  median: imagebuild ${ours} s, curl ${ref} s, ratio (curl / imagebuild) $(echo "scale=2; $ref / $ours" | bc)"
