#!/usr/bin/env bash
# benchmarks/swarm.sh: N nodes load one image at once, over HTTP from the boot server alone and from
# the swarm (distribution: p2p, the server as tracker, first seeder and web seed). Per mode it prints the time until
# the last node holds a verified image, one node's time alone, and the server's egress in image
# copies (bytes it sent ÷ image size):
#
#   mode=http|p2p nodes=N image_mib=M rate=R last_s=... single_s=... egress_copies=... cpu_pct=... failed=...
#       p50_s=... p90_s=... (when half and nine tenths of the nodes were done) [p2p: webseed_copies= webseed_nodes=]
#
#   swift build -c release --product imagebuild && sudo benchmarks/swarm.sh
#
# An image of IMAGE_MIB of incompressible data (squashfs, initramfs.p2p) is built by `imagebuild
# build`, published for NODES nodes by `imagebuild publish` and served by `imagebuild serve` in a
# namespace. Each node is a namespace of its own on one bridge, running the initramfs's own stage 1
# (its busybox, aria2c, imagebuild-fetch and /load_img.sh, chrooted into the unpacked initramfs, in a
# private mount namespace) up to the moment it would mount the image; its /newroot is a folder on
# disk, not a tmpfs, so NODES copies fit this machine. Every node's link and the server's uplink are
# shaped with tbf to RATE in both directions, low enough that the links and not the CPUs are the
# limit (cpu_pct shows how busy the machine was). A p2p node keeps seeding (imagebuild.seed=) after
# it has its image, as on a real node after switch_root; the run ends when the last node is done,
# and every process of the run is then stopped.
#
# Environment:
#   IMAGEBUILD  the binary (default .build/release/imagebuild)
#   NODES       simulated nodes (default 20); IMAGE_MIB image size (default 256); RATE tc rate (100mbit)
#   MODES       (default "http p2p"); SEED seconds a p2p node seeds (default 600)
#   TIMEOUT     seconds a run may take before it is stopped (default 3600)
# Needs root (namespaces, tc, mounts), iproute2, curl, cpio, aria2 and the tools of scripts/setup.
# Everything listens inside the namespaces this script creates; nothing touches a real interface.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGEBUILD=$(realpath "${IMAGEBUILD:-.build/release/imagebuild}")
NODES=${NODES:-20}
IMAGE_MIB=${IMAGE_MIB:-256}
RATE=${RATE:-100mbit}
MODES=${MODES:-"http p2p"}
SEED=${SEED:-600}
TIMEOUT=${TIMEOUT:-3600}
[ -x "$IMAGEBUILD" ] || { echo "swarm.sh: $IMAGEBUILD not found: swift build -c release --product imagebuild" >&2; exit 1; }
for tool in ip tc curl cpio unshare chroot aria2c; do
  command -v "$tool" >/dev/null || { echo "swarm.sh: $tool is missing" >&2; exit 1; }
done
if [ "$NODES" -lt 1 ] || [ "$NODES" -gt 200 ]; then echo "swarm.sh: NODES is 1 to 200" >&2; exit 1; fi

work=${WORK:-$(mktemp -d /tmp/imagebuild-swarm.XXXXXX)}
ns=ibs$$
server_pid=
cleanup() {
  for n in $(ip netns list | awk -v p="$ns-" 'index($1, p) == 1 { print $1 }'); do
    for pid in $(ip netns pids "$n" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  done
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  sleep 0.5
  for n in $(ip netns list | awk -v p="$ns-" 'index($1, p) == 1 { print $1 }'); do
    for pid in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$n" 2>/dev/null || true
  done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
echo "# swarm.sh $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) CPUs, $(uname -r); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# work folder $work; $NODES nodes, $IMAGE_MIB MiB, $RATE per link, seeding $SEED s"

# 1. The image: IMAGE_MIB of random bytes (squashfs cannot shrink them), stage 1 with aria2c.
name=swarm-$IMAGE_MIB
if [ ! -f "$work/artifacts/$name/manifest.json" ]; then
  mkdir -p "$work/tree/data" "$work/tree/sbin"
  head -c $((IMAGE_MIB << 20)) /dev/urandom > "$work/tree/data/blob"
  cat > "$work/$name.yaml" <<EOF
name: $name
base: {directory: $work/tree}
busybox: host
kernel: {path: /boot/vmlinuz-*, modules: /lib/modules}
initramfs: {busybox: host, modules: [], compression: gzip, p2p: true}
image: {format: squashfs}
EOF
  "$IMAGEBUILD" build "$work/$name.yaml" --out "$work/artifacts" >/dev/null
fi
size=$(stat -c %s "$work/artifacts/$name/image.squashfs")
rm -rf "$work/stage1" && mkdir -p "$work/stage1"
(cd "$work/stage1" && zcat "$work/artifacts/$name/initramfs.img" | cpio -idm --quiet)
echo "# image: $size bytes; initramfs $(stat -c %s "$work/artifacts/$name/initramfs.img") bytes with aria2c"

# 2. The inventory (every node listed: the tracker answers nodes only) and the boot root.
{
  echo "network: {server: 10.98.0.1, subnet: 10.98.0.0/16, http_port: 8080}"
  echo "defaults: {image: $name, distribution: p2p, seed_time: $SEED}"
  echo "nodes:"
  for i in $(seq "$NODES"); do
    printf '  - {mac: "02:00:00:00:%02x:%02x", hostname: n%03d, ip: 10.98.%d.%d}\n' $((i / 256)) $((i % 256)) "$i" $((1 + i / 200)) $((i % 200 + 10))
  done
} > "$work/nodes.yaml"
"$IMAGEBUILD" publish --root "$work/root" --nodes "$work/nodes.yaml" --state-dir "$work/state" "$work/artifacts/$name" >/dev/null
cmdline=$(cat "$work/artifacts/$name/cmdline")
sha=$(echo "$cmdline" | sed -n 's/.*imagebuild.sha256=\([0-9a-f]*\).*/\1/p')
digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["images"][sys.argv[2]]["digest"])' "$work/root/publish.json" "$name")
image_url=http://10.98.0.1:8080/images/$name/$digest/image.squashfs
torrent_url=http://10.98.0.1:8080/torrents/$name-$digest.torrent

# 3. A bridge in a namespace of its own, the server and every node on it; tbf both ways on each link.
bytes_per_s=$(( $(echo "$RATE" | sed 's/gbit/000000000/; s/mbit/000000/; s/kbit/000/') / 8 ))
# The burst holds a whole 64 KiB GSO packet of the veth: with less, tbf cuts each into MTU packets and
# that alone kept both CPUs busy at 100 nodes (the times did not change, the CPU use fell from 60 to 39 %).
shape() { tc -n "$1" qdisc replace dev "$2" root tbf rate "$RATE" burst $((bytes_per_s / 100 + 131072)) latency 50ms; }
ip netns add "$ns-br"
ip -n "$ns-br" link add br0 type bridge stp_state 0 forward_delay 0
ip -n "$ns-br" link set br0 up
join() {  # namespace, address
  ip netns add "$1"
  ip -n "$ns-br" link add "p-${1##*-}" type veth peer name eth0 netns "$1"
  ip -n "$ns-br" link set "p-${1##*-}" master br0 up
  ip -n "$1" addr add "$2/16" dev eth0
  ip -n "$1" link set lo up
  ip -n "$1" link set eth0 up
  shape "$1" eth0
  shape "$ns-br" "p-${1##*-}"
}
join "$ns-srv" 10.98.0.1
ip netns exec "$ns-srv" "$IMAGEBUILD" serve --root "$work/root" --nodes "$work/nodes.yaml" --listen 10.98.0.1 \
  --no-dhcp --no-tftp --state-dir "$work/state" --log-level warning 2>"$work/serve.log" &
server_pid=$!
for i in $(seq "$NODES"); do join "$ns-n$i" "$(sed -n "s/.*hostname: n$(printf %03d "$i"), ip: \([0-9.]*\)}/\1/p" "$work/nodes.yaml")"; done
for _ in $(seq 100); do ip netns exec "$ns-n1" curl -s -o /dev/null http://10.98.0.1:8080/ && break; sleep 0.2; done

# The stage-1 side: /load_img.sh sourced as /init does, stopping where it would mount the image
# (the image is then downloaded and verified); aria2c, started by it, goes on seeding.
cat > "$work/stage1/bench-load.sh" <<'EOF'
#!/bin/sh
say() { case "$*" in swarm:*) echo "$*" >&2 ;; esac; }  # the swarm's own messages only: web seed joining, fallbacks
step() { [ "$1" = unpack ] && exit 0; STEP=$1; }
report() { :; }
report_later() { :; }
fail() { echo "FAILED at step '$STEP': $*" >&2; exit 1; }
STEP=start
# shellcheck source=/dev/null
. /load_img.sh
EOF
# $1 node namespace, $2 its /newroot folder on disk, $3 the unpacked initramfs (every node's, so each
# gets a /tmp and /run of its own), then the settings stage 1 reads from the command line.
cat > "$work/enter.sh" <<'EOF'
#!/bin/sh
netns=$1 newroot=$2 dir=$3
shift 3
exec ip netns exec "$netns" unshare -m sh -c 'mount --make-rprivate / && mount -t proc proc "$0/proc" &&
  mount -t tmpfs tmpfs "$0/tmp" && mount -t tmpfs tmpfs "$0/run" && mount --bind "$1" "$0/newroot" && shift && exec env -i PATH=/sbin:/bin:/usr/sbin:/usr/bin "$@" chroot "$0" /bin/sh /bench-load.sh' "$dir" "$newroot" "$@"
EOF
now() { cut -d' ' -f1 /proc/uptime; }
tx() { ip netns exec "$ns-srv" cat /sys/class/net/eth0/statistics/tx_bytes; }
# Image bytes the server sent over HTTP (the web seed, or the whole download in http mode), from its metrics.
http_bytes() {
  ip netns exec "$ns-srv" curl -s --max-time 5 http://10.98.0.1:8080/metrics \
    | awk '/^imagebuild_http_image_bytes_total/ { printf "%.0f", $2; found = 1 } END { if (!found) print 0 }'
}
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
stop_nodes() {  # every stage-1 process of the run (seeding aria2c included), then the copies
  for i in $(seq "$NODES"); do for pid in $(ip netns pids "$ns-n$i"); do kill "$pid" 2>/dev/null || true; done; done
  sleep 0.5
  rm -rf "$work/newroot"
}
# $1 mode, $2 node count → "last_s egress_bytes cpu_pct failures http_bytes webseed_nodes p50_s p90_s"
run() {
  local mode=$1 count=$2 torrent='' start tx0 http0 cpu0 i pids='' failures=0 times='' last p50 p90
  [ "$mode" = p2p ] && torrent=$torrent_url
  stop_nodes
  for i in $(seq "$count"); do mkdir -p "$work/newroot/$i"; done
  start=$(now) tx0=$(tx) http0=$(http_bytes) cpu0=$(busy)
  for i in $(seq "$count"); do
    (
      timeout "$TIMEOUT" sh "$work/enter.sh" "$ns-n$i" "$work/newroot/$i" "$work/stage1" IMAGE_URL="$image_url" TORRENT_URL="$torrent" \
        FORMAT=squashfs RETRIES=8 ROOTSIZE=90% NEWINIT=/sbin/init IMAGE_SHA256="$sha" SEED_TIME="$SEED" NEED= >"$work/node-$i.log" 2>&1 || exit 1
      now > "$work/done-$i"
    ) &
    pids="$pids $!"
  done
  for pid in $pids; do wait "$pid" || failures=$((failures + 1)); done
  for i in $(seq "$count"); do
    [ -f "$work/done-$i" ] && times="$times $(awk -v b="$(cat "$work/done-$i")" -v s="$start" 'BEGIN { print b - s }')"
    rm -f "$work/done-$i"
  done
  # the done times in order: the last, and when half and nine tenths of the nodes were done
  read -r last p50 p90 <<< "$(echo "$times" | tr ' ' '\n' | sed '/^$/d' | sort -n |
    awk '{ t[NR] = $1 } END { if (NR == 0) print 0, 0, 0; else print t[NR], t[int((NR + 1) / 2)], t[int((NR * 9 + 9) / 10)] }')"
  echo "$last $(( $(tx) - tx0 )) $(echo "$cpu0 $(busy)" | awk '{ printf "%.0f", 100 * ($3 - $1) / ($4 - $2) }') $failures" \
    "$(( $(http_bytes) - http0 ))" "$(grep -l "web seed joins" "$work"/node-*.log 2>/dev/null | wc -l)" "$p50 $p90"
  stop_nodes
}

# 4. One node alone (over HTTP: what a lone node gets either way), then each mode with every node.
read -r single _ _ _ _ _ _ _ <<< "$(run http 1)"
for mode in $MODES; do
  read -r last egress cpu failures http webseed_nodes p50 p90 <<< "$(run "$mode" "$NODES")"
  printf 'mode=%s nodes=%d image_mib=%d rate=%s last_s=%.1f single_s=%.1f egress_copies=%.2f cpu_pct=%d failed=%d' \
    "$mode" "$NODES" "$IMAGE_MIB" "$RATE" "$last" "$single" "$(awk -v e="$egress" -v s="$size" 'BEGIN { print e / s }')" "$cpu" "$failures"
  printf ' p50_s=%.1f p90_s=%.1f' "$p50" "$p90"
  # p2p: how much of the egress was the web seed (HTTP), and on how many nodes it had to join
  [ "$mode" = p2p ] && printf ' webseed_copies=%.2f webseed_nodes=%d' "$(awk -v e="$http" -v s="$size" 'BEGIN { print e / s }')" "$webseed_nodes"
  printf '\n'
done
