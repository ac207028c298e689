#!/usr/bin/env bash
# TFTP under packet loss: our server against tftpd-hpa, dnsmasq and atftpd, with curl and atftp.
#
# Runs in a private network namespace; loss is an nftables rule on its loopback (prerouting, so it
# hits both directions: DATA and ACK). Prints, per loss rate, the median download time and how many
# downloads finished with the right content, and our speed-up over the best reference
# (best reference median / our median; above 1 means ours is faster).
#
#   benchmarks/tftp-loss.sh                    # loss 0, 1, 5 %; 1 and 8 MiB; curl and atftp
#   LOSSES="10" SIZES=1 RUNS=5 benchmarks/tftp-loss.sh
#
# Environment: IMAGEBUILD (release binary; default .build-rel or .build release), LOSSES (per mille,
# default "0 10 50"), SIZES (MiB, default "1 8"), CLIENTS ("curl atftp"), RUNS (ours, and references
# without loss; default 5), REF_RUNS (references under loss; default 3), TIMEOUT (seconds per download,
# default 300), PARALLEL_REFERENCES (1: under loss, the reference downloads of one loss rate run at the
# same time, since they spend their time waiting on multi-second time-outs, not on CPU; 0: one by one),
# SERVER_CPUS / CLIENT_CPUS (taskset lists, default 0 and 1), REFERENCE_SERVERS (subset of
# "tftpd-hpa dnsmasq atftpd"; empty for ours alone).
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

LOSSES=${LOSSES:-"0 10 50"}
SIZES=${SIZES:-"1 8"}
CLIENTS=${CLIENTS:-"curl atftp"}
RUNS=${RUNS:-5}
REF_RUNS=${REF_RUNS:-3}
TIMEOUT=${TIMEOUT:-300}
PARALLEL_REFERENCES=${PARALLEL_REFERENCES:-1}
BLKSIZE=1468

WORK=$(mktemp -d /tmp/tftp-loss.XXXXXX)
ROOT=$WORK/root
mkdir -p "$ROOT" "$WORK/results"
chmod 755 "$WORK" "$ROOT"
trap 'stop_all_servers; rm -rf "$WORK"' EXIT
echo probe >"$ROOT/probe"
for size in $SIZES; do head -c "$((size << 20))" /dev/urandom >"$ROOT/file-${size}M"; done
chmod 644 "$ROOT"/*

read -r -a REFERENCES <<<"$(available_references)"
[[ -n ${REFERENCE_SERVERS+set} ]] && read -r -a REFERENCES <<<"$REFERENCE_SERVERS"  # e.g. "" for ours alone
SERVERS=("${REFERENCES[@]}" ours)
nft -f - <<'EOF' || die "cannot create the nftables loss table"
table inet tftploss {
    chain pre { type filter hook prerouting priority -300; policy accept; }
}
EOF
set_loss() {
    nft flush chain inet tftploss pre
    [[ $1 -gt 0 ]] && nft add rule inet tftploss pre meta l4proto udp numgen random mod 1000 "<" "$1" counter drop
    true
}
dropped() { nft list chain inet tftploss pre | awk '/counter/ { for (i = 1; i < NF; i++) if ($i == "packets") print $(i + 1) }'; }

for server in "${SERVERS[@]}"; do start_server "$server" "$ROOT"; done
note "servers: ${SERVERS[*]} (CPUs $SERVER_CPUS), clients: $CLIENTS (CPUs $CLIENT_CPUS), time-out ${TIMEOUT}s"

record() { echo "$5" >>"$WORK/results/$1.$2.$3.$4"; }
results() { cat "$WORK/results/$1.$2.$3.$4" 2>/dev/null | tr '\n' ' '; }

for loss in $LOSSES; do
    set_loss "$loss"
    started=$SECONDS
    # Ours first, one download at a time.
    for size in $SIZES; do for client in $CLIENTS; do for run in $(seq 1 "$RUNS"); do
        record "$loss" "$size" "$client" ours "$(fetch "$client" ours "file-${size}M" "$WORK/out.ours" $BLKSIZE 1 "$TIMEOUT")"
    done; done; done
    if [[ $loss -eq 0 || $PARALLEL_REFERENCES -eq 0 ]]; then
        runs=$RUNS; [[ $loss -gt 0 ]] && runs=$REF_RUNS
        for size in $SIZES; do for client in $CLIENTS; do for run in $(seq 1 "$runs"); do for server in "${REFERENCES[@]}"; do
            record "$loss" "$size" "$client" "$server" \
                "$(fetch "$client" "$server" "file-${size}M" "$WORK/out.$server" $BLKSIZE 1 "$TIMEOUT")"
        done; done; done; done
    else
        jobs=()
        for size in $SIZES; do for client in $CLIENTS; do for run in $(seq 1 "$REF_RUNS"); do for server in "${REFERENCES[@]}"; do
            ( record "$loss" "$size" "$client" "$server" \
                "$(fetch "$client" "$server" "file-${size}M" "$WORK/out.$server.$size.$client.$run" $BLKSIZE 1 "$TIMEOUT")" ) &
            jobs+=($!)
        done; done; done; done
        for job in "${jobs[@]}"; do wait "$job"; done
    fi
    note "loss $loss/1000: $(dropped) packets dropped, $((SECONDS - started)) s"
done

# The table: one block per loss rate.
printf '\nTFTP download time under loss (median seconds, finished/attempted; blksize %s; timeout %s s)\n' $BLKSIZE "$TIMEOUT"
for loss in $LOSSES; do
    printf '\nloss %s %%\n' "$(awk -v l="$loss" 'BEGIN { printf "%g", l / 10 }')"
    printf '%-12s' "file/client"
    for server in "${SERVERS[@]}"; do printf '%-18s' "$server"; done
    printf '%s\n' "speed-up vs best reference"
    for size in $SIZES; do for client in $CLIENTS; do
        printf '%-12s' "${size}M/$client"
        best=""
        for server in "${SERVERS[@]}"; do
            read -r -a values <<<"$(results "$loss" "$size" "$client" "$server")"
            median=$(median_of "$TIMEOUT" "${values[@]}")
            printf '%-18s' "$median ($(successes_of "${values[@]}"))"
            if [[ $server == ours ]]; then
                ours=${median#>}
            else
                value=${median#>}
                [[ -z $best ]] || awk -v a="$value" -v b="$best" 'BEGIN { exit !(a < b) }' && best=$value
            fi
        done
        if [[ -n $best ]]; then
            awk -v b="$best" -v o="$ours" 'BEGIN { printf "%.2fx\n", (o > 0 ? b / o : 0) }'
        else
            echo "-"
        fi
    done; done
done
