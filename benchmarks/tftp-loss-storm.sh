#!/usr/bin/env bash
# Issue 4's loss proof: CLIENTS concurrent downloads of SIZE MiB from our server through LOSS per mille
# packet loss, every one checked by sha256. Exits 0 only when all finished with the right digest.
#
#   benchmarks/tftp-loss-storm.sh                 # 100 clients x 8 MiB at 5 % loss
#   CLIENTS=20 SIZE=1 benchmarks/tftp-loss-storm.sh
#
# Runs in a private network namespace (loss: nftables on its loopback, both directions). Each client
# binds its own 127.1.x.y source address, as nodes in a boot storm have their own IPs (the server limits
# transfers per IP). Environment: IMAGEBUILD, CLIENTS (100), SIZE (MiB, 8), LOSS (per mille, 50),
# TIMEOUT (seconds per download, 600), SERVER_CPUS / CLIENT_CPUS (taskset lists, 0 and 1).
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/tftp-common.sh"

if [[ ${1:-} != --inner ]]; then
    find_imagebuild
    command -v nft >/dev/null || die "needs nftables (nft) for the loss rule"
    export IMAGEBUILD
    run_in_namespace "$0" "$@"
    exit $?
fi

CLIENTS=${CLIENTS:-100}
SIZE=${SIZE:-8}
LOSS=${LOSS:-50}
TIMEOUT=${TIMEOUT:-600}

WORK=$(mktemp -d /tmp/tftp-storm.XXXXXX)
ROOT=$WORK/root
mkdir -p "$ROOT" "$WORK/digests"
chmod 755 "$WORK" "$ROOT"
trap 'stop_all_servers; rm -rf "$WORK"' EXIT
echo probe >"$ROOT/probe"
head -c "$((SIZE << 20))" /dev/urandom >"$ROOT/image"
chmod 644 "$ROOT"/*
expected=$(sha256sum <"$ROOT/image" | cut -d' ' -f1)

start_server ours "$ROOT"
nft -f - <<EOF || die "cannot create the nftables loss table"
table inet tftploss {
    chain pre {
        type filter hook prerouting priority -300; policy accept;
        meta l4proto udp numgen random mod 1000 < $LOSS counter drop
    }
}
EOF

note "$CLIENTS clients x $SIZE MiB, loss $LOSS/1000 each way, server CPUs $SERVER_CPUS, clients CPUs $CLIENT_CPUS"
started=$EPOCHREALTIME
pids=()
for i in $(seq 0 $((CLIENTS - 1))); do
    (
        begin=$EPOCHREALTIME
        digest=$(timeout -k 5 "$TIMEOUT" taskset -c "$CLIENT_CPUS" curl -s --interface "127.1.$((i / 250)).$((i % 250 + 1))" \
            --tftp-blksize 1468 -o - "tftp://$ADDR:${PORT[ours]}/image" | sha256sum | cut -d' ' -f1)
        status=${PIPESTATUS[0]}
        echo "$status $digest $(awk -v a="$begin" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')" >"$WORK/digests/$i"
    ) &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
elapsed=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
dropped=$(nft list chain inet tftploss pre | awk '/counter/ { for (i = 1; i < NF; i++) if ($i == "packets") print $(i + 1) }')

ok=0 bad=0
times=()
for i in $(seq 0 $((CLIENTS - 1))); do
    read -r status digest seconds <"$WORK/digests/$i"
    if [[ $status -eq 0 && $digest == "$expected" ]]; then ok=$((ok + 1)); times+=("$seconds"); else bad=$((bad + 1)); echo "client $i: exit $status, sha256 $digest" >&2; fi
done
stats=$(printf '%s\n' "${times[@]}" | sort -g | awk '{ v[NR] = $1 } END { if (NR) printf "min %.1f s, median %.1f s, max %.1f s", v[1], v[int((NR + 1) / 2)], v[NR] }')
# Server-side: transfers the server gave up (only ever the final ACK lost; the client is already done).
gave_up=$(grep -c 'TFTP failed' "$WORK/ours.log" || true)
echo
echo "TFTP loss storm: $CLIENTS concurrent x $SIZE MiB at $(awk -v l="$LOSS" 'BEGIN { printf "%g", l / 10 }') % loss"
echo "  finished with the right sha256: $ok/$CLIENTS, failures: $bad"
echo "  wall time: $elapsed s; per download: $stats"
echo "  datagrams dropped by the loss rule: $dropped; server-side time-outs after the last block: $gave_up"
[[ $bad -eq 0 ]]
