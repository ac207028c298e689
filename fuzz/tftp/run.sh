#!/usr/bin/env bash
# Builds and runs the libFuzzer target over TFTPPacket.decode and TFTPReadSession.
#
#   fuzz/tftp/run.sh SECONDS [extra libFuzzer flags]
#
# The TFTP sources of BootProtocols and FuzzTFTP.swift are compiled as one module with
# `swiftc -sanitize=fuzzer,address`; NIOCore (their only dependency) comes from a package build in
# .build-fuzz. The seed corpus in fuzz/tftp/corpus is read, never written: new inputs go to a scratch
# corpus under .build-fuzz, crashes to .build-fuzz/tftp-artifacts. Exit status is libFuzzer's (0: no crash).
set -euo pipefail
SECONDS_TO_RUN=${1:?usage: fuzz/tftp/run.sh SECONDS [libFuzzer flags]}
shift
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# FUZZ_SCRATCH may point at an existing release scratch directory (e.g. .build-rel) to reuse its NIOCore.
SCRATCH=${FUZZ_SCRATCH:-$REPO/.build-fuzz}
SWIFT_BIN=${SWIFT_BIN:-$(dirname "$(command -v swiftc)")}

# NIOCore and its dependencies, built once (release: the fuzzer should spend its time in our code).
swift build -c release --package-path "$REPO" --scratch-path "$SCRATCH" --target NIOCore >&2
BUILD=$SCRATCH/release
# Only NIOCore's dependency closure: the scratch directory may hold other products with their own main.
objects=() modulemaps=() includes=()
for target in NIOCore NIOConcurrencyHelpers CNIOAtomics _NIODataStructures _NIOBase64 CNIOLinux CNIODarwin CNIOWindows \
    CNIOWASI CNIOOpenBSD CNIOFreeBSD Atomics _AtomicsShims DequeModule InternalCollectionsUtilities; do
    [[ -d $BUILD/$target.build ]] || continue
    while IFS= read -r -d '' object; do objects+=("$object"); done < <(find "$BUILD/$target.build" -name '*.o' -print0)
    # C targets: SwiftPM's generated module map, or the package's own one next to its headers.
    [[ -f $BUILD/$target.build/module.modulemap ]] && modulemaps+=(-Xcc "-fmodule-map-file=$BUILD/$target.build/module.modulemap")
    while IFS= read -r -d '' include; do
        includes+=(-Xcc "-I$include")
        [[ -f $include/module.modulemap ]] && modulemaps+=(-Xcc "-fmodule-map-file=$include/module.modulemap")
    done < <(find "$SCRATCH/checkouts" -path "*/Sources/$target/include" -type d -print0)
done

binary=$SCRATCH/tftp-fuzzer
"$SWIFT_BIN/swiftc" -O -g -parse-as-library -sanitize=fuzzer,address -module-name TFTPFuzz \
    -I "$BUILD/Modules" "${modulemaps[@]}" "${includes[@]}" \
    "$REPO"/Sources/BootProtocols/TFTP/*.swift "$HERE/FuzzTFTP.swift" \
    "${objects[@]}" -o "$binary"

mkdir -p "$SCRATCH/tftp-corpus" "$SCRATCH/tftp-artifacts"
cd "$SCRATCH"
"$binary" -max_total_time="$SECONDS_TO_RUN" -max_len=4096 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$SCRATCH/tftp-artifacts/" "$@" "$SCRATCH/tftp-corpus" "$HERE/corpus"
