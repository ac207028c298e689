#!/usr/bin/env bash
# benchmarks/node-identity.sh: what node identity costs at cluster scale, on this machine.
#   1. publish of NODES (10,000) listed nodes, each with a file rendered per node, one rendered over
#      the whole cluster (a Slurm node list) and a secret: the first publish into an empty root, then
#      the median of RUNS (3) more into it (what an admin's next publish costs: each writes a whole
#      new generation), and the same inventory without node files (ssh_host_keys: none, no files:
#      only the two built-in files) for the ratio. Goal: under 10 s with node files.
#   2. SSH host keys: `imagebuild nodes known-hosts` making KEY_NODES (100) nodes' keys (ed25519,
#      ECDSA, RSA 3072), seconds per node: what pre-generating a cluster's keys takes.
#   3. unless STORM=0: benchmarks/boot-storm.sh with REGISTERED=1 at NODES, with node files fetched
#      (secrets from a privileged port, overlays) and without, and the ratio of nodes per minute.
#      Goal: within 10 %.
# Environment: NODES (10000), RUNS (3), KEY_NODES (100), STORM (1), OUT (append the report there),
# IMAGEBUILD (default .build/release/imagebuild), SKIP_BUILD=1, SCRATCH (default .build).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
NODES=${NODES:-10000}
RUNS=${RUNS:-3}
KEY_NODES=${KEY_NODES:-100}
STORM=${STORM:-1}
SCRATCH=${SCRATCH:-.build}
IMAGEBUILD=${IMAGEBUILD:-$SCRATCH/release/imagebuild}
OUT=${OUT:-}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    swift build -c release --scratch-path "$SCRATCH" --product imagebuild >&2 || exit 1
fi
[ -x "$IMAGEBUILD" ] || { echo "node-identity.sh: $IMAGEBUILD not found" >&2; exit 1; }
IMAGEBUILD=$(realpath "$IMAGEBUILD")
WORK=$(mktemp -d /tmp/node-identity.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
emit() { echo "$*"; [ -n "$OUT" ] && echo "$*" >> "$OUT"; return 0; }
# shellcheck source=benchmarks/lib-storm.sh
. benchmarks/lib-storm.sh

synthetic_artifacts "$WORK/artifacts/storm" 64 256 1024
storm_nodes "$WORK/files.yaml" "$NODES" 1 none "$WORK/secrets"
# The same nodes without node files: the listing only.
storm_nodes "$WORK/plain.yaml" 0 0 none "$WORK/secrets"
{ echo "  ssh_host_keys: none"; echo "nodes:"; grep '^  - {mac:' "$WORK/files.yaml"; } >> "$WORK/plain.yaml"

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
publish_times() {  # $1 nodes.yaml: 1 + RUNS publishes into one fresh root, one time a line (the first first)
    local start
    rm -rf "$WORK/root"
    sync
    for _ in $(seq $((RUNS + 1))); do
        start=$(date +%s.%N)
        SOURCE_DATE_EPOCH=0 "$IMAGEBUILD" publish "$WORK/artifacts/storm" --root "$WORK/root" --nodes "$1" >/dev/null 2>"$WORK/publish.err" ||
            { cat "$WORK/publish.err" >&2; return 1; }
        awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f\n", b - a }'
    done
}
emit "# node-identity $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) CPUs; $NODES nodes"
with=$(publish_times "$WORK/files.yaml") || exit 1
archives=$(find "$WORK/root/.publish/current/overlays" -type f | wc -l)
bytes=$(du -sk "$WORK/root/.publish/current/overlays" | cut -f1)
without=$(publish_times "$WORK/plain.yaml") || exit 1
w=$(echo "$with" | tail -n +2 | median) p=$(echo "$without" | tail -n +2 | median)
emit "publish, $NODES nodes with node files: first $(echo "$with" | head -n 1) s; then $(echo "$with" | tail -n +2 | tr '\n' ' ')s, median $w s ($archives overlay archives, $bytes KiB)"
emit "publish, $NODES nodes, built-in files only: first $(echo "$without" | head -n 1) s; then $(echo "$without" | tail -n +2 | tr '\n' ' ')s, median $p s"
emit "$(awk -v a="$w" -v b="$p" 'BEGIN { printf "publish ratio with/without node files: %.2fx; goal: under 10 s with files: %s\n", a / b, (a < 10 ? "met" : "NOT met") }')"

# Host keys for KEY_NODES nodes.
storm_nodes "$WORK/keys.yaml" "$KEY_NODES" 1 persistent "$WORK/secrets"
start=$(date +%s.%N)
"$IMAGEBUILD" nodes known-hosts --nodes "$WORK/keys.yaml" --state-dir "$WORK/state" > "$WORK/known_hosts" 2>"$WORK/keys.err" ||
    { cat "$WORK/keys.err" >&2; exit 1; }
emit "$(awk -v a="$start" -v b="$(date +%s.%N)" -v n="$KEY_NODES" -v lines="$(wc -l < "$WORK/known_hosts")" \
    'BEGIN { printf "host keys for %d nodes (ed25519, ECDSA, RSA 3072): %.1f s, %.3f s per node; %d known_hosts lines\n", n, b - a, (b - a) / n, lines }')"

if [ "$STORM" = 1 ]; then
    REGISTERED=1 NODES="$NODES" SERVERS="ours ours-nofiles" SKIP_BUILD="${SKIP_BUILD:-0}" SCRATCH="$SCRATCH" OUT="$OUT" benchmarks/boot-storm.sh
fi
