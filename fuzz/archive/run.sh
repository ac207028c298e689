#!/bin/bash
# Builds the archive libFuzzer target (fuzz/archive/FuzzArchive.swift) with coverage instrumentation and
# AddressSanitizer, then fuzzes one ImageBuildKit entry point, or each in turn:
#
#   fuzz/archive/run.sh ENTRY [SECONDS] [extra libFuzzer flags...]     default 60 s per entry point
#
#   ENTRY   inspect   ArchiveReader(path:), next(), readData: what `imagebuild inspect` reads
#           tarball   a build's `base: tarball` (RootfsAssembler -> RootfsTree.extract) into a scratch tree
#           oci       a build's `base: oci-archive` (OCI layout or docker save: layers, whiteouts)
#           deb       DebPackage.extract (`base: debs`) and KernelImage.read(debPackage:) (`kernel: {deb:}`)
#           all       the four, one after the other, SECONDS each
#
# e.g. the 10 minutes per entry point of benchmarks/results/fuzz-archive-2026-12-05.txt:
#   nice -n 10 fuzz/archive/run.sh all 600
#
# Seeds are made at run time from real archives (tar, tar.gz/xz/zst/bz2, cpio, ar, zip made with the
# host's tools; an OCI layout and a docker save archive assembled by hand; a kernel .deb made with ar, and
# real .debs from `apt-get download`, which a host without a mirror skips) into .build-fuzz/archive-seeds.
# New inputs go to .build-fuzz/archive-corpus/ENTRY, crashes to .build-fuzz/archive-crashes/ENTRY
# (libFuzzer's crash-/timeout-/leak-<sha1> files), each run's output to .build-fuzz/archive-logs/ENTRY.log.
# Replay one input (prints its error, or the finding) with:
#   fuzz/archive/run.sh replay ENTRY .build-fuzz/archive-crashes/ENTRY/crash-...
#
# Each input is written to a file on a 256 MiB tmpfs and extracted there, so a decompression bomb fills
# the tmpfs (a thrown error) rather than the disk. The fuzzer runs in a private mount namespace (as root;
# otherwise in a user namespace) where every other mount is read-only: a write that escapes the tree
# fails with EROFS, which the target reports as a finding. Exit status: 0 when every run found nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENTRY=${1:?usage: fuzz/archive/run.sh inspect|tarball|oci|deb|all|replay [SECONDS] [libFuzzer flags]}
shift
REPLAY=()
if [[ $ENTRY == replay ]]; then
    ENTRY=${1:?usage: fuzz/archive/run.sh replay ENTRY INPUT...}
    shift
    REPLAY=("$@")
    set --
fi
RUN_SECONDS=${1:-60}
shift || true
SCRATCH=$(mkdir -p .build-fuzz && cd .build-fuzz && pwd -P)
CONFIG=release
ENTRIES=(inspect tarball oci deb)
case $ENTRY in
    all) ;;
    inspect | tarball | oci | deb) ENTRIES=("$ENTRY") ;;
    *) echo "unknown entry point '$ENTRY' (inspect, tarball, oci, deb or all)" >&2; exit 2 ;;
esac

# 1. ImageBuildKit and its dependencies, Swift code instrumented for libFuzzer + ASan (the flags of
#    fuzz/run.sh, so the two share .build-fuzz without rebuilding each other's objects).
swift build --target ImageBuildKit -c $CONFIG --scratch-path "$SCRATCH" \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library >&2
BIN=$(cd "$SCRATCH/$CONFIG" && pwd -P)

# 2. Link the target against ImageBuildKit's dependency closure (Yams, swift-crypto, swift-log) and the
#    system libarchive and zlib, as fuzz/run.sh does for BootProtocols.
OBJECTS=()
MODULE_MAPS=(-Xcc "-fmodule-map-file=Sources/CArchive/module.modulemap")
for target in ImageBuildKit Yams CYaml Crypto CCryptoBoringSSL CCryptoBoringSSLShims CryptoBoringWrapper Logging; do
    [[ -d $BIN/$target.build ]] || continue
    while IFS= read -r -d '' object; do OBJECTS+=("$object"); done < <(find "$BIN/$target.build" -name '*.o' -print0)
    [[ -f $BIN/$target.build/module.modulemap ]] && MODULE_MAPS+=(-Xcc "-fmodule-map-file=$BIN/$target.build/module.modulemap")
    while IFS= read -r -d '' include; do
        MODULE_MAPS+=(-Xcc "-I$include")
        [[ -f $include/module.modulemap ]] && MODULE_MAPS+=(-Xcc "-fmodule-map-file=$include/module.modulemap")
    done < <(find "$SCRATCH/checkouts" -path "*/Sources/$target/include" -type d -print0)
done
read -r -a LIBARCHIVE <<< "$(pkg-config --libs libarchive)"
FUZZER=$SCRATCH/archive-fuzz
swiftc -O -g -sanitize=fuzzer,address -parse-as-library fuzz/archive/FuzzArchive.swift -module-name ArchiveFuzz \
    -I "$BIN/Modules" "${MODULE_MAPS[@]}" "${OBJECTS[@]}" "${LIBARCHIVE[@]}" -lz -lstdc++ -o "$FUZZER" >&2

# Leaks of the toolchain's own (listed with the reason in lsan.supp) are not findings.
LSAN=suppressions=$PWD/fuzz/archive/lsan.supp

# Runs the fuzzer with its work directory on a fresh size-limited tmpfs, everything else read-only.
# Swift's backtracer is off: it reads memory ASan flags, and libFuzzer prints the stack of a trap itself.
run_confined() {
    local entry=$1 mountpoint
    shift
    mountpoint=$(mktemp -d /dev/shm/imagebuild-fuzz-archive.XXXXXX)
    local namespace=(unshare --mount --propagation private)
    [[ $(id -u) == 0 ]] || namespace=(unshare --user --map-root-user --mount --propagation private)
    local status=0
    if "${namespace[@]}" true 2>/dev/null; then
        # shellcheck disable=SC2016  # expanded by the inner shell
        FUZZ_ARCHIVE_ENTRY=$entry FUZZ_ARCHIVE_WORK=$mountpoint/work SWIFT_BACKTRACE=enable=no LSAN_OPTIONS=$LSAN \
            "${namespace[@]}" bash -c '
            set -eu
            mountpoint=$1 scratch=$2
            shift 2
            mount -t tmpfs -o size=256m,mode=0700 imagebuild-fuzz "$mountpoint"
            mount --bind "$scratch" "$scratch"
            # Every other mount read-only (a bind remount changes only this namespace'"'"'s view).
            while read -r _ _ _ _ point _; do
                point=$(printf "%b" "${point//\\/\\0}")
                [[ $point == "$mountpoint" || $point == "$scratch" ]] && continue
                mount -o remount,bind,ro "$point" 2>/dev/null || true
            done < /proc/self/mountinfo
            exec "$@"' confined "$mountpoint" "$SCRATCH" "$@" || status=$?
    else
        echo "warning: no mount namespace here: extracting to $mountpoint unbounded, other mounts writable" >&2
        FUZZ_ARCHIVE_ENTRY=$entry FUZZ_ARCHIVE_WORK=$mountpoint/work SWIFT_BACKTRACE=enable=no LSAN_OPTIONS=$LSAN \
            "$@" || status=$?
        rm -rf "$mountpoint/work"
    fi
    rmdir "$mountpoint"
    return $status
}

# -timeout is the 2 s a slow input is allowed. The malloc limit is above libFuzzer's default (the RSS
# limit): libarchive reserves read-ahead buffers for sizes a header declares (a cpio name size of 2 GiB
# made it malloc 2.2 GB, untouched), which is not a finding; memory actually used is held to 2 GiB.
LIMITS=(-timeout=2 -rss_limit_mb=2048 -malloc_limit_mb=8192)
if [[ ${#REPLAY[@]} -gt 0 ]]; then
    FUZZ_ARCHIVE_VERBOSE=1 run_confined "$ENTRY" "$FUZZER" "${LIMITS[@]}" "${REPLAY[@]}"
    exit
fi

# 3. Seed corpus from real archives, made fresh each run.
SEEDS=$SCRATCH/archive-seeds
rm -rf "$SEEDS"
mkdir -p "$SEEDS"/{inspect,tarball,oci,deb}
MAKE=$(mktemp -d)
trap 'rm -rf "$MAKE"' EXIT
(
    set -e
    cd "$MAKE"
    # A small root filesystem with every entry kind the tree handles.
    mkdir -p tree/etc tree/bin tree/usr/lib tree/var/empty tree/boot
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n' > tree/etc/passwd
    printf 'root:x:0:\n' > tree/etc/group
    printf '#!/bin/sh\necho hi\n' > tree/bin/hello
    chmod 4755 tree/bin/hello
    ln tree/bin/hello tree/bin/hello-again
    ln -s ../bin/hello tree/usr/lib/relative-link
    ln -s /etc/passwd tree/usr/lib/absolute-link
    mkfifo tree/var/fifo
    chmod 0 tree/var/empty
    head -c 3000 /dev/urandom > tree/usr/lib/random.bin
    truncate -s 70000 tree/usr/lib/sparse && printf 'end' >> tree/usr/lib/sparse
    mkdir -p "tree/usr/share/a-long-directory-name-past-the-ustar-limit-of-one-hundred-characters/and/more/levels"
    echo long > "tree/usr/share/a-long-directory-name-past-the-ustar-limit-of-one-hundred-characters/and/more/levels/file"
    if mknod tree/boot/null c 1 3 2>/dev/null; then :; fi
    # A bzImage-shaped kernel: "HdrS" at 0x202, protocol 2.15, kernel_version at 0x100 + 0x200.
    head -c 1024 /dev/zero > vmlinuz
    printf 'HdrS\x0f\x02' | dd of=vmlinuz bs=1 seek=$((0x202)) conv=notrunc status=none
    printf '\x00\x01' | dd of=vmlinuz bs=1 seek=$((0x20E)) conv=notrunc status=none
    printf '6.1.0-fuzz-amd64 (fuzz@example.org) #1 SMP\0' | dd of=vmlinuz bs=1 seek=$((0x300)) conv=notrunc status=none
    cp vmlinuz tree/boot/vmlinuz-6.1.0-fuzz-amd64

    tar -C tree -cf base.tar .
    tar -C tree --format=gnu --sparse -cf base-gnu-sparse.tar .
    tar -C tree --format=pax -czf base.tar.gz .
    tar -C tree --format=ustar -cf base-ustar.tar ./etc ./bin 2>/dev/null
    tar -C tree -cf - . | xz -1 > base.tar.xz
    tar -C tree -cf - . | zstd -q -1 > base.tar.zst
    tar -C tree -cf - ./etc ./bin | bzip2 > base.tar.bz2
    tar -C tree -cf - ./etc ./bin | lz4 -q > base.tar.lz4
    (cd tree && find . | cpio --quiet -o -H newc) > base.cpio
    (cd tree && find ./etc ./bin | cpio --quiet -o -H odc) > base-odc.cpio
    (cd tree && find . | cpio --quiet -o -H newc | gzip) > initramfs.img
    (cd tree && zip -q -r -y ../base.zip etc bin usr/lib)
    ar rc base.a tree/etc/passwd tree/bin/hello
    # Hostile names the tree must refuse or contain.
    tar -cf hostile.tar -P --transform 's,^tree/etc/group,../../escape,;s,^tree/etc/passwd,/etc/absolute,' tree/etc/group tree/etc/passwd
    head -c 100 base.tar.gz > truncated.tar.gz
    printf 'just some text, not an archive\n' > text.txt
    : > empty
    cp base.tar base.tar.gz base.tar.xz base.tar.zst base.tar.bz2 base.tar.lz4 base-gnu-sparse.tar base-ustar.tar \
        base.cpio base-odc.cpio initramfs.img base.zip base.a hostile.tar truncated.tar.gz text.txt empty "$SEEDS/inspect/"
    cp base.tar base.tar.gz base.tar.zst base-gnu-sparse.tar base.cpio base.zip hostile.tar truncated.tar.gz "$SEEDS/tarball/"

    # OCI image layout: index.json -> manifest blob -> layers (a base, then whiteouts over it).
    digest_of() { sha256sum "$1" | cut -c1-64; }
    mkdir -p layer2/etc layer2/usr/lib layer2/bin oci/blobs/sha256
    printf 'replaced\n' > layer2/etc/passwd
    : > layer2/usr/lib/.wh.random.bin
    : > layer2/bin/.wh..wh..opq
    tar -C tree -czf layer1.tar.gz ./etc ./bin ./usr/lib
    tar -C layer2 -cf layer2.tar .
    printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' > config.json
    for blob in layer1.tar.gz layer2.tar config.json; do cp "$blob" "oci/blobs/sha256/$(digest_of "$blob")"; done
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' \
        "$(digest_of config.json)" "$(stat -c %s config.json)" "$(digest_of layer1.tar.gz)" "$(stat -c %s layer1.tar.gz)" \
        "$(digest_of layer2.tar)" "$(stat -c %s layer2.tar)" > manifest.json
    cp manifest.json "oci/blobs/sha256/$(digest_of manifest.json)"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d}]}' \
        "$(digest_of manifest.json)" "$(stat -c %s manifest.json)" > oci/index.json
    printf '{"imageLayoutVersion":"1.0.0"}' > oci/oci-layout
    tar -C oci -cf oci-layout.tar .
    # The same with an image index (multi-platform) between index.json and the manifest.
    cp -r oci oci-nested
    printf '{"schemaVersion":2,"manifests":[{"digest":"sha256:%s","platform":{"architecture":"arm64","os":"linux"}},{"digest":"sha256:%s","platform":{"architecture":"amd64","os":"linux"}}]}' \
        "$(digest_of manifest.json)" "$(digest_of manifest.json)" > image-index.json
    cp image-index.json "oci-nested/blobs/sha256/$(digest_of image-index.json)"
    printf '{"schemaVersion":2,"manifests":[{"digest":"sha256:%s"}]}' "$(digest_of image-index.json)" > oci-nested/index.json
    tar -C oci-nested -cf oci-nested.tar .
    # docker save: manifest.json lists layer files by relative path.
    mkdir -p docker/aaaa docker/bbbb
    cp layer1.tar.gz docker/aaaa/layer.tar
    cp layer2.tar docker/bbbb/layer.tar
    printf '[{"Config":"config.json","RepoTags":["fuzz:latest"],"Layers":["aaaa/layer.tar","bbbb/layer.tar"]}]' > docker/manifest.json
    cp config.json docker/config.json
    tar -C docker -cf docker-save.tar .
    # Hostile layouts (each once let a build read a host file, block, or remove outside the tree): a digest
    # and a symlinked blob that lead to the target's host-secret.tar next to the work tree, a FIFO blob,
    # a whiteout named ".wh...", and a docker save layer path with "..".
    hostile() {
        mkdir -p "$1/blobs/sha256"
        printf '{"layers":[{"digest":"%s"}]}' "$2" > "$1/blobs/sha256/m"
        printf '{"manifests":[{"digest":"sha256:m"}]}' > "$1/index.json"
    }
    hostile traversal "sha256:../../../../host-secret.tar"
    hostile symlink sha256:aa && ln -s ../../../../host-secret.tar symlink/blobs/sha256/aa
    hostile fifo sha256:aa && mkfifo fifo/blobs/sha256/aa
    for whiteout in .wh... .wh..; do
        mkdir -p "layer$whiteout" && : > "layer$whiteout/$whiteout" && tar -C "layer$whiteout" -cf "layer$whiteout.tar" .
        hostile "whiteout$whiteout" sha256:aa && cp "layer$whiteout.tar" "whiteout$whiteout/blobs/sha256/aa"
    done
    mkdir -p docker-escape && printf '[{"Layers":["../../host-secret.tar"]}]' > docker-escape/manifest.json
    for layout in traversal symlink fifo whiteout.wh... whiteout.wh.. docker-escape; do
        tar -C "$layout" -cf "$SEEDS/oci/hostile-$layout.tar" .
    done
    cp oci-layout.tar oci-nested.tar docker-save.tar "$SEEDS/oci/"
    tar -C oci -czf "$SEEDS/oci/oci-layout.tar.gz" .

    # Debian packages: a kernel package made with ar (data.tar.xz, .gz and .zst), one without data.tar.
    mkdir -p deb/control
    printf '2.0\n' > debian-binary
    printf 'Package: linux-image-fuzz\nVersion: 1\nArchitecture: amd64\nDescription: fuzz seed\n' > deb/control/control
    tar -C deb/control -czf control.tar.gz ./control
    mkdir -p deb/data/boot deb/data/lib/modules/6.1.0-fuzz-amd64
    cp vmlinuz deb/data/boot/vmlinuz-6.1.0-fuzz-amd64
    printf 'kernel/drivers/net/virtio_net.ko:\n' > deb/data/lib/modules/6.1.0-fuzz-amd64/modules.dep
    ln -s vmlinuz-6.1.0-fuzz-amd64 deb/data/boot/vmlinuz
    tar -C deb/data -cJf data.tar.xz .
    ar rc linux-image-fuzz.deb debian-binary control.tar.gz data.tar.xz
    tar -C deb/data -czf data.tar.gz .
    ar rc linux-image-fuzz-gz.deb debian-binary control.tar.gz data.tar.gz
    tar -C deb/data -cf - . | zstd -q > data.tar.zst
    ar rc linux-image-fuzz-zst.deb debian-binary control.tar.gz data.tar.zst
    ar rc no-data.deb debian-binary control.tar.gz
    cp linux-image-fuzz.deb linux-image-fuzz-gz.deb linux-image-fuzz-zst.deb no-data.deb truncated.tar.gz "$SEEDS/deb/"
    # Real packages (inputs past -max_len are cut there by libFuzzer: busybox-static's is ~900 KiB).
    mkdir -p real
    (cd real && timeout 120 apt-get download -q busybox-static netbase >/dev/null 2>&1) || true
    for deb in real/*.deb; do [[ -f $deb ]] && cp "$deb" "$SEEDS/deb/"; done
    cp "$SEEDS"/deb/*.deb "$SEEDS/inspect/"
)
echo "seeds: $(for e in inspect tarball oci deb; do printf '%s %s  ' "$e" "$(find "$SEEDS/$e" -type f | wc -l)"; done)" >&2

# 4. Run each entry point. -max_len fits the seeds but the real packages.
STATUS=0
for entry in "${ENTRIES[@]}"; do
    mkdir -p "$SCRATCH/archive-corpus/$entry" "$SCRATCH/archive-crashes/$entry" "$SCRATCH/archive-logs"
    echo "== $entry: $RUN_SECONDS s" >&2
    run_confined "$entry" "$FUZZER" "$SCRATCH/archive-corpus/$entry" "$SEEDS/$entry" \
        -max_total_time="$RUN_SECONDS" -max_len=65536 "${LIMITS[@]}" \
        -artifact_prefix="$SCRATCH/archive-crashes/$entry/" -print_final_stats=1 "$@" \
        2>&1 | tee "$SCRATCH/archive-logs/$entry.log" >&2 || STATUS=1
done
exit $STATUS
