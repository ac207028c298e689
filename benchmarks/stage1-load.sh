#!/usr/bin/env bash
# benchmarks/stage1-load.sh: how long stage 1 takes to load a real image, per image format and link
# rate, against the wire alone (curl > /dev/null over the same link), and the RAM it holds meanwhile.
#
# A tree of real files (default: this machine's /usr/lib/x86_64-linux-gnu and /usr/share, about
# 1.4 GiB) is built by `imagebuild build` in each format and served by `imagebuild serve` (HTTP only)
# in a network namespace. A second namespace, joined to it by a veth pair shaped with tbf on the
# server's side, runs the initramfs's own stage 1 (its busybox, imagebuild-fetch, zstd and
# /load_img.sh, chrooted into the unpacked initramfs, in a private mount namespace) up to the
# moment it would switch_root, inside a memory cgroup whose peak is the RAM column (the tmpfs
# pages and every process of the load). Each case runs ROUNDS times, load and wire alternating;
# the medians are printed, one line per format and rate ending in ratio=load/wire.
#
#   swift build -c release --product imagebuild && sudo benchmarks/stage1-load.sh
#
# Environment:
#   IMAGEBUILD  the binary (default .build/release/imagebuild)
#   TREE        folders copied into the image (default "/usr/lib/x86_64-linux-gnu /usr/share")
#   FORMATS     (default "tar.gz tar.zst squashfs erofs"), RATES (tc rates, default "1gbit 10gbit")
#   ROUNDS      (default 3), KEEP=1 keeps the work folder (built images) for another run
# Needs root (namespaces, tc, mounts, cgroups), iproute2, curl, cpio, and the image tools of
# scripts/setup. Everything listens inside the two namespaces; nothing touches a real interface.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGEBUILD=$(realpath "${IMAGEBUILD:-.build/release/imagebuild}")
TREE=${TREE:-"/usr/lib/x86_64-linux-gnu /usr/share"}
FORMATS=${FORMATS:-"tar.gz tar.zst squashfs erofs"}
RATES=${RATES:-"1gbit 10gbit"}
ROUNDS=${ROUNDS:-3}
[ -x "$IMAGEBUILD" ] || { echo "stage1-load.sh: $IMAGEBUILD not found: swift build -c release --product imagebuild" >&2; exit 1; }
for tool in ip tc curl cpio unshare chroot; do
  command -v "$tool" >/dev/null || { echo "stage1-load.sh: $tool is missing" >&2; exit 1; }
done
cgroup=/sys/fs/cgroup/memory
[ -d "$cgroup" ] || { echo "stage1-load.sh: needs the cgroup v1 memory controller at $cgroup" >&2; exit 1; }

work=${WORK:-$(mktemp -d /tmp/imagebuild-stage1-load.XXXXXX)}
ns=ibl$$
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  ip netns del "$ns-srv" 2>/dev/null || true
  ip netns del "$ns-cli" 2>/dev/null || true
  rmdir "$cgroup/$ns" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
echo "# stage1-load.sh $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) CPUs, $(uname -r); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# work folder $work"

# 1. The tree and one build per format.
if [ ! -d "$work/tree" ]; then
  mkdir -p "$work/tree.partial"
  for dir in $TREE; do mkdir -p "$work/tree.partial$(dirname "$dir")"; cp -a "$dir" "$work/tree.partial$dir"; done
  mv "$work/tree.partial" "$work/tree"
fi
echo "# tree: $(du -sh --apparent-size "$work/tree" | cut -f1), $(find "$work/tree" -type f | wc -l) files"
for format in $FORMATS; do
  name=bench-${format/./-}
  [ -f "$work/artifacts/$name/manifest.json" ] && continue
  cat > "$work/$name.yaml" <<EOF
name: $name
base: {directory: $work/tree}
busybox: host
kernel: {path: /boot/vmlinuz-*, modules: /lib/modules}
initramfs: {busybox: host, modules: [], compression: gzip}
image: {format: $format}
EOF
  start=$EPOCHREALTIME
  "$IMAGEBUILD" build "$work/$name.yaml" --out "$work/artifacts" >/dev/null
  echo "# built $format in $(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s: $(stat -c %s "$work/artifacts/$name/image.$format") bytes"
  mkdir -p "$work/stage1/$name"
  (cd "$work/stage1/$name" && zcat "$work/artifacts/$name/initramfs.img" | cpio -idm --quiet)
done

# 2. Two namespaces and a veth pair; the server serves the artifacts folder.
ip netns add "$ns-srv"
ip netns add "$ns-cli"
ip link add "$ns-s" type veth peer name "$ns-c"
ip link set "$ns-s" netns "$ns-srv"
ip link set "$ns-c" netns "$ns-cli"
ip -n "$ns-srv" addr add 10.99.0.1/24 dev "$ns-s"
ip -n "$ns-cli" addr add 10.99.0.2/24 dev "$ns-c"
for side in srv:s cli:c; do
  ip -n "$ns-${side%%:*}" link set lo up
  ip -n "$ns-${side%%:*}" link set "$ns-${side##*:}" up
done
printf 'network: {server: 10.99.0.1, subnet: 10.99.0.0/24, http_port: 8080}\nnodes: []\n' > "$work/nodes.yaml"
ip netns exec "$ns-srv" "$IMAGEBUILD" serve --root "$work/artifacts" --nodes "$work/nodes.yaml" --listen 10.99.0.1 \
  --no-dhcp --no-tftp --state-dir "$work/state" --log-level warning &
server_pid=$!
for _ in $(seq 50); do ip netns exec "$ns-cli" curl -s -o /dev/null http://10.99.0.1:8080/ && break; sleep 0.2; done
mkdir "$cgroup/$ns"

# The stage-1 side: /load_img.sh sourced as /init does, with say/step/report/fail of its own;
# it stops where stage 1 would switch_root. Run in the client namespace, a private mount
# namespace and the memory cgroup; prints the seconds taken.
cat > "$work/load.sh" <<'EOF'
#!/bin/sh
say() { :; }
step() { [ "$1" = switch-root ] && exit 0; STEP=$1; }
report() { :; }
report_later() { :; }
fail() { echo "FAILED at step '$STEP': $*" >&2; exit 1; }
STEP=start
# shellcheck source=/dev/null
. /load_img.sh
EOF
# Joins the cgroup first (ip netns exec mounts a /sys of its own, without the cgroups), then the
# client namespace and a private mount namespace, then the chroot. $1 cgroup, $2 netns, $3 the
# unpacked initramfs, then the VAR=value settings stage 1 would have read from the command line.
cat > "$work/enter.sh" <<'EOF'
#!/bin/sh
echo $$ > "$1/cgroup.procs" || exit 1
netns=$2 dir=$3
shift 3
exec ip netns exec "$netns" unshare -m sh -c 'mount --make-rprivate / && mount -t proc proc "$0/proc" &&
  mount --rbind /dev "$0/dev" && exec env -i PATH=/sbin:/bin:/usr/sbin:/usr/bin "$@" chroot "$0" /bin/sh /bench-load.sh' "$dir" "$@"
EOF
load() {  # format → seconds
  local name=bench-${1/./-} dir cmdline start
  dir=$work/stage1/$name
  cmdline=$(cat "$work/artifacts/$name/cmdline")
  cp "$work/load.sh" "$dir/bench-load.sh"
  echo 0 > "$cgroup/$ns/memory.max_usage_in_bytes"
  start=$EPOCHREALTIME
  sh "$work/enter.sh" "$cgroup/$ns" "$ns-cli" "$dir" IMAGE_URL="http://10.99.0.1:8080/$name/image.$1" FORMAT="$1" \
    RETRIES=3 ROOTSIZE=90% NEWINIT=/sbin/init IMAGE_SHA256="$(echo "$cmdline" | sed -n 's/.*imagebuild.sha256=\([0-9a-f]*\).*/\1/p')" \
    NEED="$(echo "$cmdline" | sed -n 's/.*imagebuild.need=\([0-9]*\).*/\1/p')" >&2
  awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'
}
wire() {  # format → seconds
  local name=bench-${1/./-}
  ip netns exec "$ns-cli" curl -s -o /dev/null -w '%{time_total}' "http://10.99.0.1:8080/$name/image.$1"
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# 3. Each rate, each format: ROUNDS loads and wire times, alternating.
for rate in $RATES; do
  bytes_per_s=$(( $(echo "$rate" | sed 's/gbit/000000000/; s/mbit/000000/') / 8 ))
  tc -n "$ns-srv" qdisc replace dev "$ns-s" root tbf rate "$rate" burst $((bytes_per_s / 250 + 65536)) latency 20ms
  for format in $FORMATS; do
    name=bench-${format/./-}
    loads='' wires='' peaks=''
    for _ in $(seq "$ROUNDS"); do
      wires="$wires $(wire "$format")"
      loads="$loads $(load "$format")"
      peaks="$peaks $(cat "$cgroup/$ns/memory.max_usage_in_bytes")"
    done
    l=$(echo "$loads" | median) w=$(echo "$wires" | median) p=$(echo "$peaks" | median)
    size=$(stat -c %s "$work/artifacts/$name/image.$format")
    need=$(sed -n 's/.*imagebuild.need=\([0-9]*\).*/\1/p' "$work/artifacts/$name/cmdline")
    printf '%-8s %-7s image=%5d MiB loaded=%5d MiB load=%6.2f s (%s) wire=%6.2f s (%s) peak_ram=%5d MiB over_loaded=%+d MiB ratio=%.2f\n' \
      "$format" "$rate" $((size >> 20)) $((need >> 20)) "$l" "${loads# }" "$w" "${wires# }" $((p >> 20)) $(((p - need) >> 20)) \
      "$(awk -v l="$l" -v w="$w" 'BEGIN { print l / w }')"
  done
done
