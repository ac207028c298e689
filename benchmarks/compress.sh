#!/usr/bin/env bash
# Compression benchmark (not a test): imagebuild's cpio.gz packer against
# `find | cpio | gzip -6 -n` and `... | pigz -6 -n`, and the raw throughput of
# ParallelGzipWriter against pigz on the same cpio stream.
#
# It builds a ~500 MB tree (a copy of /lib/modules/<ver>, busybox, and
# EXTRA_DIRS to top it up) in a temporary directory, runs every command RUNS
# times pinned with taskset to the same CPUs, and prints medians (wall and
# CPU seconds), throughput, output sizes and ratios, and whether two packer
# runs gave identical bytes. Last, a stage-2 image: `imagebuild pack --tar
# --compression zstd` against `tar --sort=name | zstd -T2 -3` (the level image
# zstd uses), ending in `zstd_ratio=` (reference wall time / ours).
#
# The packer is `imagebuild pack DIR --output FILE` from a release build when
# that subcommand exists; until then (or with PACKER=helper) it is
# benchmarks/gzbench, compiled with `swiftc -O -wmo` from the library's own
# compression and archive sources: it walks the tree in sorted order, writes a
# newc cpio with ArchiveWriter and compresses it with ParallelGzipWriter.
#
# Environment: RUNS (3), CPUS (taskset list, default all: 0-$(nproc)-1),
# PACKER (auto|imagebuild|helper), MAX_CHAIN (64: the tuned variant also
# measured; empty to skip), EXTRA_DIRS (/usr/lib/gcc), KVER (uname -r, else
# the newest in /lib/modules), WORK (a fresh temporary directory, removed at
# the end unless KEEP=1), SCRATCH (SwiftPM scratch path, .build-release).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
CPUS=${CPUS:-0-$(( $(nproc) - 1 ))}
PACKER=${PACKER:-auto}
MAX_CHAIN=${MAX_CHAIN-64}
EXTRA_DIRS=${EXTRA_DIRS:-/usr/lib/gcc}
SCRATCH=${SCRATCH:-.build-release}
KEEP=${KEEP:-0}

for tool in taskset cpio gzip pigz find sort swiftc cmp; do
    command -v "$tool" >/dev/null || { echo "compress.sh: $tool is required" >&2; exit 1; }
done

WORK=${WORK:-$(mktemp -d /tmp/ib-compress-bench.XXXXXX)}
mkdir -p "$WORK"
cleanup() { if [ "$KEEP" != 1 ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT

KVER=${KVER:-$(uname -r)}
if [ ! -d "/lib/modules/$KVER" ]; then
    KVER=$(ls /lib/modules | sort -V | tail -n 1)
    [ -n "$KVER" ] || { echo "compress.sh: no kernel modules in /lib/modules" >&2; exit 1; }
    echo "note: /lib/modules/$(uname -r) does not exist; using $KVER"
fi

# --- the tree -----------------------------------------------------------------
TREE=$WORK/tree
if [ ! -d "$TREE" ]; then
    mkdir -p "$TREE/lib/modules" "$TREE/bin"
    cp -a "/lib/modules/$KVER" "$TREE/lib/modules/"
    if command -v busybox >/dev/null; then cp "$(readlink -f "$(command -v busybox)")" "$TREE/bin/busybox"; fi
    for dir in $EXTRA_DIRS; do
        [ -d "$dir" ] || continue
        mkdir -p "$TREE$dir"
        cp -a "$dir/." "$TREE$dir/"
    done
fi
TREE_BYTES=$(du -sb "$TREE" | cut -f1)
FILES=$(find "$TREE" -type f | wc -l)
echo "tree: $TREE_BYTES bytes in $FILES files (modules $KVER, busybox, $EXTRA_DIRS)"
echo "cpus: $CPUS of $(nproc); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# --- the packer -----------------------------------------------------------------
PACK_CMD=""
if [ "$PACKER" != helper ]; then
    echo "building imagebuild (release)..."
    if (cd "$REPO" && swift build -c release --product imagebuild --scratch-path "$SCRATCH" >"$WORK/build.log" 2>&1); then
        BIN=$(cd "$REPO" && swift build -c release --scratch-path "$SCRATCH" --show-bin-path)/imagebuild
        if "$BIN" pack --help >/dev/null 2>&1; then
            PACK_CMD="'$BIN' pack '$TREE' --output"
        fi
    fi
    if [ -z "$PACK_CMD" ] && [ "$PACKER" = imagebuild ]; then
        echo "compress.sh: imagebuild pack is not available (see $WORK/build.log)" >&2; KEEP=1; exit 1
    fi
fi
echo "building gzbench (swiftc -O -wmo)..."
swiftc -O -wmo -module-name gzbench -I "$REPO/Sources/CArchive" \
    "$REPO/benchmarks/gzbench/main.swift" "$REPO"/Sources/ImageBuildKit/Compression/*.swift \
    "$REPO/Sources/ImageBuildKit/Archive/LibArchive.swift" -larchive -lz -o "$WORK/gzbench" 2>"$WORK/gzbench.log" \
    || { cat "$WORK/gzbench.log" >&2; exit 1; }
if [ -z "$PACK_CMD" ]; then
    echo "packer: gzbench pack (imagebuild pack not available yet)"
    PACK_CMD="'$WORK/gzbench' pack '$TREE'"
    PACK_LABEL="gzbench pack (level 6)"
else
    echo "packer: $BIN pack"
    PACK_LABEL="imagebuild pack"
fi

# --- timing -------------------------------------------------------------------
declare -A WALL CPU SIZE
ORDER=()

# measure NAME OUTPUT COMMAND: runs COMMAND (which writes OUTPUT.N for run N)
# RUNS times under taskset; keeps wall and user+sys seconds of each run.
measure() {
    local name=$1 output=$2 command=$3 walls=() cpus=() run
    ORDER+=("$name")
    for run in $(seq 1 "$RUNS"); do
        sync
        local line
        line=$( { TIMEFORMAT='%R %U %S'; time taskset -c "$CPUS" bash -c "${command//@OUT@/$output.$run}" >/dev/null 2>"$WORK/err"; } 2>&1 ) \
            || { echo "compress.sh: '$name' failed:" >&2; cat "$WORK/err" >&2; exit 1; }
        line=$(echo "$line" | tail -n 1)
        walls+=("$(echo "$line" | cut -d' ' -f1)")
        cpus+=("$(echo "$line" | awk '{ printf "%.3f", $2 + $3 }')")
        printf '  %-34s run %d: %6.2f s wall, %6.2f s cpu\n' "$name" "$run" "${walls[-1]}" "${cpus[-1]}"
    done
    WALL[$name]=$(printf '%s\n' "${walls[@]}" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    CPU[$name]=$(printf '%s\n' "${cpus[@]}" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    SIZE[$name]=$(stat -c %s "$output.1")
}

report() {
    local title=$1 reference=$2 input_bytes=$3 name
    echo
    echo "$title (median of $RUNS; input $input_bytes bytes)"
    printf '  %-34s %9s %9s %9s %13s %9s %9s\n' command wall_s cpu_s MB/s bytes vs_gzip6 speed
    for name in "${ORDER[@]}"; do
        printf '  %-34s %9.2f %9.2f %9.1f %13d %8.3f%% %8.2fx\n' "$name" "${WALL[$name]}" "${CPU[$name]}" \
            "$(awk -v b="$input_bytes" -v s="${WALL[$name]}" 'BEGIN { print b / s / 1e6 }')" "${SIZE[$name]}" \
            "$(awk -v a="${SIZE[$name]}" -v b="${SIZE[$reference]}" 'BEGIN { print (a / b - 1) * 100 }')" \
            "$(awk -v a="${WALL[$reference]}" -v b="${WALL[$name]}" 'BEGIN { print a / b }')"
    done
    echo "  (vs_gzip6: size against gzip -6 -n; speed: gzip -6 wall time / this wall time)"
}

# --- 1. whole pipelines: tree -> cpio.gz -------------------------------------------
echo
echo "pipelines: tree -> cpio.gz"
PIPE="cd '$TREE' && find . | LC_ALL=C sort | cpio -o -H newc --quiet"
measure "find|cpio|gzip -6 -n" "$WORK/gzip.cpio.gz" "$PIPE | gzip -6 -n > @OUT@"
measure "find|cpio|pigz -6 -n" "$WORK/pigz.cpio.gz" "$PIPE | pigz -6 -n > @OUT@"
measure "$PACK_LABEL" "$WORK/pack.cpio.gz" "$PACK_CMD @OUT@"
if [ -n "$MAX_CHAIN" ]; then
    measure "gzbench pack --max-chain $MAX_CHAIN" "$WORK/pack-chain.cpio.gz" \
        "'$WORK/gzbench' pack --max-chain $MAX_CHAIN '$TREE' @OUT@"
fi
CPIO_BYTES=$(gzip -dc "$WORK/gzip.cpio.gz.1" | wc -c)
report "pipelines" "find|cpio|gzip -6 -n" "$CPIO_BYTES"
gzip -t "$WORK/pack.cpio.gz.1"
if [ "$RUNS" -ge 2 ]; then
    if cmp -s "$WORK/pack.cpio.gz.1" "$WORK/pack.cpio.gz.2"; then
        echo "  reproducible: $PACK_LABEL runs 1 and 2 are byte-identical ($(sha256sum < "$WORK/pack.cpio.gz.1" | cut -c1-16)...)"
    else
        echo "  NOT REPRODUCIBLE: $PACK_LABEL runs 1 and 2 differ"; KEEP=1; exit 1
    fi
fi

# --- 2. raw compressor throughput on one cpio stream -------------------------------
WALL=(); CPU=(); SIZE=(); ORDER=()
(cd "$TREE" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$WORK/tree.cpio"
RAW=$WORK/tree.cpio
RAW_BYTES=$(stat -c %s "$RAW")
cat "$RAW" > /dev/null   # warm the page cache
echo
echo "raw: compress $RAW ($RAW_BYTES bytes), 2 compression threads"
measure "gzip -6 -n" "$WORK/raw-gzip.gz" "gzip -6 -n -c '$RAW' > @OUT@"
measure "pigz -6 -n -p 2" "$WORK/raw-pigz.gz" "pigz -6 -n -p 2 -c '$RAW' > @OUT@"
measure "ParallelGzipWriter 2 threads" "$WORK/raw-ours.gz" "'$WORK/gzbench' compress --threads 2 '$RAW' @OUT@"
if [ -n "$MAX_CHAIN" ]; then
    measure "ParallelGzipWriter 2 thr chain $MAX_CHAIN" "$WORK/raw-chain.gz" \
        "'$WORK/gzbench' compress --threads 2 --max-chain $MAX_CHAIN '$RAW' @OUT@"
fi
report "raw" "gzip -6 -n" "$RAW_BYTES"
gzip -dc "$WORK/raw-ours.gz.1" | cmp -s - "$RAW" && echo "  round trip: ParallelGzipWriter output decompresses to the input"

# --- 3. a stage-2 image as tar.zst: imagebuild pack against tar | zstd -T2 ---------
# Same level (3, the level image zstd uses) and two threads on both sides; the
# reference sorts names and clamps times like the packer, so the inputs match.
if [ "$PACK_LABEL" = "imagebuild pack" ] && command -v zstd >/dev/null; then
    WALL=(); CPU=(); SIZE=(); ORDER=()
    echo
    echo "image: tree -> tar.zst (level 3, 2 threads)"
    measure "tar --sort=name|zstd -T2 -3" "$WORK/ref.tar.zst" \
        "tar -C '$TREE' --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=pax -cf - . | zstd -q -T2 -3 -c > @OUT@"
    measure "imagebuild pack --tar zstd" "$WORK/pack.tar.zst" "$PACK_CMD @OUT@ --tar --compression zstd"
    TAR_BYTES=$(zstd -dc "$WORK/ref.tar.zst.1" | wc -c)
    report "image" "tar --sort=name|zstd -T2 -3" "$TAR_BYTES"
    echo "  (vs_gzip6 and speed here are against tar | zstd -T2 -3)"
    zstd -t -q "$WORK/pack.tar.zst.1"
    if [ "$RUNS" -ge 2 ]; then
        if cmp -s "$WORK/pack.tar.zst.1" "$WORK/pack.tar.zst.2"; then
            echo "  reproducible: imagebuild pack --tar --compression zstd runs 1 and 2 are byte-identical"
        else
            echo "  NOT REPRODUCIBLE: imagebuild pack --tar --compression zstd runs 1 and 2 differ"; KEEP=1; exit 1
        fi
    fi
    echo "zstd_ratio=$(awk -v a="${WALL[tar --sort=name|zstd -T2 -3]}" -v b="${WALL[imagebuild pack --tar zstd]}" 'BEGIN { printf "%.2f", a / b }') (reference wall / ours: at least 1 is the goal)"
fi
