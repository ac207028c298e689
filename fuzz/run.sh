#!/bin/bash
# Builds the DHCP libFuzzer target (fuzz/DHCPFuzz.swift: decoder, encoder round trip, reply policy and
# the one-holder lease invariant) with coverage instrumentation and AddressSanitizer, then runs it.
#
#   fuzz/run.sh [SECONDS] [extra libFuzzer flags...]     default 60 s; corpus in .build-fuzz/corpus
#
# The seed corpus is every captured packet under Tests/BootProtocolsTests/Fixtures/DHCP (*.hex).
# Crashes land in .build-fuzz/crashes/ (libFuzzer's crash-<sha1> files): replay one with
#   .build-fuzz/dhcp-fuzz .build-fuzz/crashes/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_SECONDS=${1:-60}
shift || true
SCRATCH=.build-fuzz
CONFIG=release

# 1. BootProtocols and its dependencies, Swift code instrumented for libFuzzer + ASan.
swift build --target BootProtocols -c $CONFIG --scratch-path $SCRATCH \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library >&2
# Resolved: $SCRATCH/$CONFIG is a symlink, and find does not descend into a symlinked start point.
BIN=$(cd "$SCRATCH/$CONFIG" && pwd -P)

# 2. Link the target against the built objects (SwiftPM cannot add a fuzzer product without a
#    Package.swift target; this keeps the package untouched).
mapfile -t OBJECTS < <(find "$BIN" -name '*.o' -path '*.build/*' \
    \( -path '*/BootProtocols.build/*' -o -path '*/NetworkAddresses.build/*' -o -path '*/NIOCore.build/*' -o -path '*/NIOConcurrencyHelpers.build/*' \
       -o -path '*/_NIOBase64.build/*' -o -path '*/_NIODataStructures.build/*' -o -path '*/CNIOLinux.build/*' \
       -o -path '*/CNIOAtomics.build/*' \
       -o -path '*/DequeModule.build/*' -o -path '*/InternalCollectionsUtilities.build/*' \
       -o -path '*/Atomics.build/*' -o -path '*/_AtomicsShims.build/*' -o -path '*/CNIODarwin.build/*' \
       -o -path '*/CNIOWindows.build/*' \))
INCLUDES=()
# Only the C modules this closure imports: other module maps (e.g. the *-tool duplicates) collide.
for map in $(find "$BIN" .build-fuzz/checkouts -name module.modulemap 2>/dev/null \
        | grep -E '/(CNIOAtomics|CNIOLinux|CNIODarwin|CNIOWindows|CNIOWASI|CNIOFreeBSD|CNIOOpenBSD|_AtomicsShims)(\.build)?/'); do
    INCLUDES+=(-Xcc "-fmodule-map-file=$map")
done
while IFS= read -r dir; do
    INCLUDES+=(-Xcc -I"$dir")
done < <(find .build-fuzz/checkouts/swift-nio/Sources .build-fuzz/checkouts/swift-atomics/Sources -type d -name include 2>/dev/null)
swiftc -O -sanitize=fuzzer,address -parse-as-library fuzz/DHCPFuzz.swift -module-name DHCPFuzz \
    -I "$BIN/Modules" "${INCLUDES[@]}" "${OBJECTS[@]}" -o $SCRATCH/dhcp-fuzz >&2

# 3. Seed corpus from the captured fixtures (hex dumps -> binary).
mkdir -p $SCRATCH/corpus $SCRATCH/crashes
for hex in Tests/BootProtocolsTests/Fixtures/DHCP/*.hex; do
    grep -v "^#" "$hex" | xxd -r -p > "$SCRATCH/corpus/seed-$(basename "$hex" .hex)"
done

# 4. Run. -max_len covers a 1500-byte Ethernet payload; -timeout flags a slow input (bounded work per packet).
exec $SCRATCH/dhcp-fuzz $SCRATCH/corpus -max_total_time="$RUN_SECONDS" -max_len=1500 -timeout=2 \
    -artifact_prefix=$SCRATCH/crashes/ -print_final_stats=1 "$@"
