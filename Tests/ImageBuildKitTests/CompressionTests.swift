import CArchive
import Foundation
import TestSupport
import ImageBuildKit
import Testing

// MARK: - Helpers

/// Deterministic xorshift64* generator, so failing inputs can be reproduced.
struct TestRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 2_685_821_657_736_338_717
    }
}

enum TestData {
    /// Incompressible bytes.
    static func random(_ count: Int, seed: UInt64 = 1) -> [UInt8] {
        var rng = TestRandom(seed: seed)
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { raw in
            var i = 0
            while i + 8 <= count {
                raw.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self)
                i += 8
            }
            while i < count { raw[i] = UInt8(truncatingIfNeeded: rng.next()); i += 1 }
        }
        return bytes
    }

    /// Compressible, text-like bytes with repeats at all distances, including
    /// across block boundaries and beyond the 32 KiB window. Written into a
    /// preallocated buffer: debug builds are slow at element-wise appends.
    static func text(_ count: Int, seed: UInt64 = 2) -> [UInt8] {
        var rng = TestRandom(seed: seed)
        var words: [[UInt8]] = []
        for i in 0..<400 {
            let length = 2 + Int(rng.next() % 9)
            words.append((0..<length).map { _ in UInt8(97 + rng.next() % 26) } + [i % 13 == 0 ? 10 : 32])
        }
        return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            guard let base = buffer.baseAddress else { initialized = 0; return }
            var n = 0
            while n < count {
                let r = rng.next()
                if r % 7 == 0, n > 1000 {
                    // Copy an earlier stretch (a long-distance match).
                    let start = Int(rng.next() % UInt64(n - 200))
                    let length = min(40 + Int(r % 150), count - n)
                    (base + n).update(from: base + start, count: length)
                    n += length
                } else if r % 11 == 0 {
                    var noise = rng.next()
                    for _ in 0..<min(8, count - n) {
                        base[n] = UInt8(truncatingIfNeeded: noise)
                        noise >>= 8
                        n += 1
                    }
                } else {
                    let word = words[Int((r >> 8) % UInt64(words.count))]
                    let length = min(word.count, count - n)
                    word.withUnsafeBufferPointer { (base + n).update(from: $0.baseAddress!, count: length) }
                    n += length
                }
            }
            initialized = count
        }
    }
}

/// Compresses `input` in memory, feeding it in `chunk`-byte writes.
func parallelGzip(
    _ input: [UInt8], level: Int32 = 6, blockSize: Int = ParallelGzipWriter.defaultBlockSize,
    threads: Int = 2, chunk: Int = 64 << 10
) throws -> [UInt8] {
    var output: [UInt8] = []
    let writer = try ParallelGzipWriter(level: level, blockSize: blockSize, threads: threads) { bytes in
        output.append(contentsOf: bytes)
    }
    try input.withUnsafeBytes { raw in
        var offset = 0
        while offset < raw.count {
            let n = min(chunk, raw.count - offset)
            try writer.write(UnsafeRawBufferPointer(rebasing: raw[offset..<offset + n]))
            offset += n
        }
    }
    try writer.finish()
    return output
}

struct InflateFailure: Error, CustomStringConvertible {
    let description: String
}

/// Decodes a gzip stream with zlib (windowBits 31 = gzip wrapper only) and
/// checks that it ends exactly at the end of the data.
func zlibGunzip(_ gz: [UInt8]) throws -> [UInt8] {
    var stream = z_stream()
    guard ib_inflateInit2(&stream, 31) == Z_OK else { throw InflateFailure(description: "inflateInit2") }
    defer { inflateEnd(&stream) }
    var output: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    var status: Int32 = Z_OK
    try gz.withUnsafeBytes { input in
        stream.next_in = UnsafeMutablePointer(mutating: input.bindMemory(to: Bytef.self).baseAddress)
        stream.avail_in = uInt(input.count)
        repeat {
            try buffer.withUnsafeMutableBytes { out in
                stream.next_out = out.bindMemory(to: Bytef.self).baseAddress
                stream.avail_out = uInt(out.count)
                status = inflate(&stream, Z_NO_FLUSH)
                guard status == Z_OK || status == Z_STREAM_END else {
                    throw InflateFailure(description: "inflate: \(status)")
                }
                output.append(contentsOf: out.prefix(out.count - Int(stream.avail_out)))
            }
        } while status != Z_STREAM_END
    }
    guard stream.avail_in == 0 else { throw InflateFailure(description: "\(stream.avail_in) bytes after the gzip stream") }
    return output
}

func toolPath(_ name: String) -> String? { ProcessRunner.which(name) }

/// A temporary directory removed when the value is dropped.
final class TempDirectory {
    let url: URL
    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("ib-compression-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
    deinit { try? FileManager.default.removeItem(at: url) }
}

struct ToolResult {
    let status: Int32
    let stdout: [UInt8]
    let stderr: String
}

/// Runs a tool (`ProcessRunner`: output to files, so no pipe can fill up) with stdin from a file
/// (or /dev/null).
func runTool(_ tool: String, _ arguments: [String], stdinPath: String? = nil, in directory: TempDirectory) throws -> ToolResult {
    let result = try ProcessRunner.run(toolPath(tool)!, arguments, stdin: stdinPath, timeout: 600)
    return ToolResult(status: result.status, stdout: [UInt8](result.stdoutData), stderr: result.stderr)
}

func write(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// `gzip -dc` of `gz`, checked for a clean exit.
func toolGunzip(_ gz: [UInt8], in directory: TempDirectory) throws -> [UInt8] {
    let path = directory.path("in-\(UUID().uuidString).gz")
    try write(gz, to: path)
    defer { try? FileManager.default.removeItem(atPath: path) }
    let result = try runTool("gzip", ["-dc", path], in: directory)
    #expect(result.status == 0, "gzip -dc: \(result.stderr)")
    return result.stdout
}

/// A cpio (newc) of real files on this machine, made with the library's own
/// ArchiveWriter in sorted order, up to `limit` bytes of file data. Kernel
/// modules are the realistic initramfs payload; /usr/lib and /usr/bin stand in
/// where no modules are installed.
func realisticCpio(limit: Int) throws -> [UInt8]? {
    let fm = FileManager.default
    var roots: [String] = []
    if let kernels = try? fm.contentsOfDirectory(atPath: "/lib/modules").sorted() {
        roots += kernels.map { "/lib/modules/\($0)/kernel/drivers/net" }
    }
    roots += ["/usr/lib/x86_64-linux-gnu", "/usr/bin"]
    guard let root = roots.first(where: { fm.fileExists(atPath: $0) }) else { return nil }
    var paths: [String] = []
    if let walker = fm.enumerator(atPath: root) {
        for case let relative as String in walker { paths.append(relative) }
    }
    paths.sort()
    var output: [UInt8] = []
    let archive = try ArchiveWriter(format: .cpioNewc) { output.append(contentsOf: $0) }
    var total = 0
    var inode: Int64 = 1
    for relative in paths where total < limit {
        let full = root + "/" + relative
        guard let attributes = try? fm.attributesOfItem(atPath: full),
              let type = attributes[.type] as? FileAttributeType else { continue }
        inode += 1
        switch type {
        case .typeDirectory:
            try archive.write(path: relative, kind: .directory, permissions: 0o755, uid: 0, gid: 0, mtime: 0, inode: inode)
        case .typeRegular:
            guard let data = fm.contents(atPath: full) else { continue }
            total += data.count
            try archive.write(path: relative, kind: .regular, permissions: 0o644, uid: 0, gid: 0, mtime: 0,
                              inode: inode, size: Int64(data.count)) { body in
                try data.withUnsafeBytes { try body($0) }
            }
        default:
            continue
        }
    }
    try archive.close()
    return output
}

let hasGzip = toolPath("gzip") != nil
let hasXz = toolPath("xz") != nil
let hasZstd = toolPath("zstd") != nil

struct SinkFailure: Error, Equatable {}

// MARK: - Parallel gzip

@Suite("Parallel gzip")
struct ParallelGzipTests {
    static let block = 32 << 10

    /// Sizes around block boundaries, with a small block size so every case
    /// spans several blocks.
    static let edgeSizes: [Int] = [0, 1, 2, block - 1, block, block + 1, 2 * block, 3 * block, 3 * block + 7, 10 * block]

    @Test("round trip through zlib at block edges", arguments: edgeSizes)
    func roundTripZlib(size: Int) throws {
        let input = TestData.text(size)
        let gz = try parallelGzip(input, blockSize: Self.block)
        #expect(try zlibGunzip(gz) == input)
    }

    @Test("round trip through gzip -dc at block edges", .enabled(if: hasGzip, "gzip is not installed"), arguments: edgeSizes)
    func roundTripGzipTool(size: Int) throws {
        let directory = try TempDirectory()
        let input = TestData.text(size, seed: UInt64(size) + 3)
        let gz = try parallelGzip(input, blockSize: Self.block)
        #expect(try toolGunzip(gz, in: directory) == input)
    }

    @Test("empty input is a valid empty gzip stream")
    func emptyInput() throws {
        let gz = try parallelGzip([])
        // Header, one empty final fixed block (03 00), CRC 0, size 0.
        #expect(gz == [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0])
        #expect(try zlibGunzip(gz) == [])
    }

    @Test("header is gzip -n's: MTIME 0, no name, OS 3, XFL by level", arguments: [(Int32(1), UInt8(4)), (6, 0), (9, 2)])
    func header(level: Int32, xfl: UInt8) throws {
        let gz = try parallelGzip(TestData.text(1000), level: level)
        #expect(Array(gz.prefix(10)) == [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3])
    }

    @Test("header matches gzip -n byte for byte", .enabled(if: hasGzip, "gzip is not installed"), arguments: [Int32(1), 6, 9])
    func headerMatchesGzip(level: Int32) throws {
        let directory = try TempDirectory()
        let input = TestData.text(5000)
        try write(input, to: directory.path("in"))
        let reference = try runTool("gzip", ["-n", "-\(level)", "-c", directory.path("in")], in: directory)
        #expect(reference.status == 0)
        let gz = try parallelGzip(input, level: level)
        #expect(Array(gz.prefix(10)) == Array(reference.stdout.prefix(10)))
    }

    @Test("dictionary spans several blocks when blocks are smaller than the window")
    func smallBlocks() throws {
        let input = TestData.text(300_000, seed: 9)
        let small = try parallelGzip(input, blockSize: 1024, threads: 3)
        #expect(try zlibGunzip(small) == input)
        #expect(try parallelGzip(input, blockSize: 1024, threads: 1) == small)
    }

    @Test("incompressible random data, 5 MB")
    func randomData() throws {
        let input = TestData.random(5 << 20 + 123)
        let gz = try parallelGzip(input)
        #expect(try zlibGunzip(gz) == input)
        // Stored blocks: a little overhead, never blow-up.
        #expect(gz.count < input.count + input.count / 500 + 1024)
    }

    @Test("20 MB mixed stream through zlib and gzip -dc", .enabled(if: hasGzip, "gzip is not installed"))
    func twentyMegabytes() throws {
        let directory = try TempDirectory()
        var input = TestData.text(14 << 20, seed: 5)
        input += TestData.random(3 << 20, seed: 6)
        input += [UInt8](repeating: 0, count: 3 << 20)
        let gz = try parallelGzip(input, threads: 4, chunk: 1 << 20)
        #expect(try zlibGunzip(gz) == input)
        #expect(try toolGunzip(gz, in: directory) == input)
        let test = directory.path("t.gz")
        try write(gz, to: test)
        #expect(try runTool("gzip", ["-t", test], in: directory).status == 0)
    }

    @Test("output is identical for 1, 2 and 4 threads")
    func threadCountInvariance() throws {
        let input = TestData.text(3 << 20, seed: 11) + TestData.random(300_000, seed: 12)
        let one = try parallelGzip(input, threads: 1)
        #expect(try parallelGzip(input, threads: 2) == one)
        #expect(try parallelGzip(input, threads: 4) == one)
        #expect(try zlibGunzip(one) == input)
    }

    @Test("output is identical however the input is chunked", arguments: [1, 7, 4096, 65_536 + 13, 131_072, 1 << 30])
    func chunkingInvariance(chunk: Int) throws {
        // Exactly 5 blocks: the last block is full, so a chunking that ends on
        // a block boundary must still not emit an extra empty block.
        let input = TestData.text(5 * ParallelGzipWriter.defaultBlockSize, seed: 13)
        let reference = try parallelGzip(input, threads: 2, chunk: 1 << 30)
        #expect(try parallelGzip(input, threads: 3, chunk: chunk) == reference)
    }

    @Test("size is within 1% of gzip -6 -n on a realistic cpio", .enabled(if: hasGzip, "gzip is not installed"))
    func ratioAgainstGzip() throws {
        let directory = try TempDirectory()
        guard let cpio = try realisticCpio(limit: 24 << 20), cpio.count > 1 << 20 else {
            Issue.record("no real files found to build a cpio from")
            return
        }
        let path = directory.path("real.cpio")
        try write(cpio, to: path)
        let reference = try runTool("gzip", ["-6", "-n", "-c", path], in: directory)
        #expect(reference.status == 0)
        let ours = try parallelGzip(cpio, threads: 2)
        #expect(try zlibGunzip(ours) == cpio)
        let ratio = Double(ours.count) / Double(reference.stdout.count)
        #expect(ratio <= 1.01, "ours \(ours.count) bytes, gzip -6 -n \(reference.stdout.count) bytes, cpio \(cpio.count) bytes")
    }

    @Test("maxChain set to the level's own chain limit changes nothing (the tuning table matches zlib's)",
          arguments: [(Int32(4), Int32(16)), (5, 32), (6, 128), (7, 256), (8, 1024), (9, 4096)])
    func tuningTableMatchesZlib(level: Int32, chain: Int32) throws {
        let input = TestData.text(400_000, seed: 17)
        let plain = try parallelGzipTuned(input, level: level, maxChain: nil)
        #expect(try parallelGzipTuned(input, level: level, maxChain: chain) == plain)
    }

    @Test("a shorter chain round-trips, is thread-invariant, and trades a little size")
    func shorterChain() throws {
        let input = TestData.text(2 << 20, seed: 19)
        let tuned = try parallelGzipTuned(input, level: 6, maxChain: 8, threads: 1)
        #expect(try zlibGunzip(tuned) == input)
        #expect(try parallelGzipTuned(input, level: 6, maxChain: 8, threads: 3) == tuned)
        let plain = try parallelGzip(input)
        #expect(tuned != plain)
        #expect(tuned.count >= plain.count)
        #expect(throws: CompressionError.self) { _ = try ParallelGzipWriter(level: 6, maxChain: 0) { _ in } }
        #expect(throws: CompressionError.self) { _ = try ParallelGzipWriter(level: 3, maxChain: 64) { _ in } }
    }

    func parallelGzipTuned(_ input: [UInt8], level: Int32, maxChain: Int32?, threads: Int = 2) throws -> [UInt8] {
        var output: [UInt8] = []
        let writer = try ParallelGzipWriter(level: level, maxChain: maxChain, threads: threads) { output.append(contentsOf: $0) }
        try input.withUnsafeBytes { try writer.write($0) }
        try writer.finish()
        return output
    }

    @Test("a throwing sink fails write or finish, and the writer stays failed")
    func sinkError() throws {
        var calls = 0
        let writer = try ParallelGzipWriter(blockSize: 4096, threads: 2) { _ in
            calls += 1
            if calls == 3 { throw SinkFailure() }
        }
        let input = TestData.random(200_000)
        var thrown: Error?
        do {
            try input.withUnsafeBytes { raw in
                for start in stride(from: 0, to: raw.count, by: 1000) {
                    try writer.write(UnsafeRawBufferPointer(rebasing: raw[start..<min(start + 1000, raw.count)]))
                }
            }
            try writer.finish()
        } catch {
            thrown = error
        }
        #expect(thrown is SinkFailure)
        #expect(throws: SinkFailure.self) { try writer.write(UnsafeRawBufferPointer(start: nil, count: 0)) }
        #expect(throws: SinkFailure.self) { try writer.finish() }
    }

    @Test("output streams out before finish: blocks in flight are bounded")
    func bounded() throws {
        var received = 0
        let writer = try ParallelGzipWriter(blockSize: 4096, threads: 1) { received += $0.count }
        // 1 thread allows 4 blocks in flight; 40 blocks of input must force
        // the oldest ones out to the sink while writing.
        let input = TestData.random(40 * 4096, seed: 23)
        try input.withUnsafeBytes { raw in
            for start in stride(from: 0, to: raw.count, by: 4096) {
                try writer.write(UnsafeRawBufferPointer(rebasing: raw[start..<start + 4096]))
            }
        }
        #expect(received >= 30 * 4096)
        try writer.finish()
    }

    @Test("writing after finish is refused")
    func writeAfterFinish() throws {
        let writer = try ParallelGzipWriter(threads: 1) { _ in }
        try writer.finish()
        let byte: [UInt8] = [1]
        #expect(throws: CompressionError.sinkClosed) { try byte.withUnsafeBytes { try writer.write($0) } }
        #expect(throws: CompressionError.sinkClosed) { try writer.finish() }
    }

    @Test("invalid parameters are rejected with a reason")
    func invalidParameters() {
        #expect(throws: CompressionError.self) { _ = try ParallelGzipWriter(level: 10) { _ in } }
        #expect(throws: CompressionError.self) { _ = try ParallelGzipWriter(blockSize: 100) { _ in } }
        #expect(throws: CompressionError.self) { _ = try ParallelGzipWriter(threads: 0) { _ in } }
        do {
            _ = try ParallelGzipWriter(level: -2) { _ in }
        } catch {
            #expect("\(error)".contains("0...9"))
        }
    }

    @Test("abandoning a writer mid-stream stops its workers without hanging")
    func abandon() throws {
        var output = 0
        do {
            let writer = try ParallelGzipWriter(blockSize: 4096, threads: 2) { output += $0.count }
            let input = TestData.random(100_000)
            try input.withUnsafeBytes { try writer.write($0) }
        }
        // Dropped without finish: nothing to check but that we got here.
        #expect(output >= 0)
    }
}

// MARK: - Sinks and the compression factory

@Suite("Compression sinks")
struct CompressionSinkTests {
    static func compress(_ input: [UInt8], _ compression: Compression, to path: String, chunk: Int = 50_000) throws {
        let file = try FileSink(path: path, bufferSize: 64 << 10)
        let sink = try compression.makeSink(into: file, threads: 2)
        try input.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = min(chunk, raw.count - offset)
                try sink.write(UnsafeRawBufferPointer(rebasing: raw[offset..<offset + n]))
                offset += n
            }
        }
        try sink.finish()
    }

    @Test("raw values are the recipe spellings")
    func rawValues() {
        #expect(Compression(rawValue: "gzip") == .gzip)
        #expect(Compression(rawValue: "zstd") == .zstd)
        #expect(Compression(rawValue: "xz") == .xz)
        #expect(Compression(rawValue: "none") == Compression.none)
        #expect(Compression(rawValue: "bzip2") == nil)
    }

    @Test("FileSink writes small and large pieces in order")
    func fileSink() throws {
        let directory = try TempDirectory()
        let input = TestData.random(1_000_000, seed: 21)
        let path = directory.path("out")
        let sink = try FileSink(path: path, bufferSize: 4096, syncOnFinish: true)
        try input.withUnsafeBytes { raw in
            var offset = 0
            var step = 1
            while offset < raw.count {
                let n = min(step, raw.count - offset)
                try sink.write(UnsafeRawBufferPointer(rebasing: raw[offset..<offset + n]))
                offset += n
                step = step * 3 % 20_011 + 1   // mixes sizes below and above the buffer
            }
        }
        try sink.finish()
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) == input)
        #expect(sink.bytesWritten == Int64(input.count))
        #expect(throws: CompressionError.sinkClosed) { try sink.finish() }
    }

    @Test("FileSink reports the path when it cannot open")
    func fileSinkOpenError() {
        #expect {
            _ = try FileSink(path: "/nonexistent-dir-for-test/x")
        } throws: { error in
            "\(error)".contains("/nonexistent-dir-for-test/x") && "\(error)".contains("open")
        }
    }

    @Test("none passes bytes through")
    func none() throws {
        let directory = try TempDirectory()
        let input = TestData.text(300_000)
        try Self.compress(input, .none, to: directory.path("out"))
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: directory.path("out")))) == input)
    }

    @Test("gzip through the factory equals the writer's output", .enabled(if: hasGzip, "gzip is not installed"))
    func gzipFactory() throws {
        let directory = try TempDirectory()
        let input = TestData.text(1 << 20)
        try Self.compress(input, .gzip, to: directory.path("out.gz"))
        let file = [UInt8](try Data(contentsOf: URL(fileURLWithPath: directory.path("out.gz"))))
        #expect(file == (try parallelGzip(input)))
        #expect(try toolGunzip(file, in: directory) == input)
    }

    @Test("xz output decompresses with xz -dc, has a CRC32 check, and is reproducible", .enabled(if: hasXz, "xz is not installed"))
    func xz() throws {
        let directory = try TempDirectory()
        let input = TestData.text(3 << 20, seed: 31)
        try Self.compress(input, .xz, to: directory.path("a.xz"))
        try Self.compress(input, .xz, to: directory.path("b.xz"), chunk: 7777)
        let decoded = try runTool("xz", ["-dc", directory.path("a.xz")], in: directory)
        #expect(decoded.status == 0, "\(decoded.stderr)")
        #expect(decoded.stdout == input)
        // The kernel's XZ decoder accepts CRC32 or none, not the default CRC64.
        let list = try runTool("xz", ["--robot", "--list", directory.path("a.xz")], in: directory)
        let checks = String(decoding: list.stdout, as: UTF8.self).split(separator: "\n")
            .filter { $0.hasPrefix("file\t") }.map { $0.split(separator: "\t")[6] }
        #expect(checks == ["CRC32"])
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory.path("a.xz"))) ==
                Data(contentsOf: URL(fileURLWithPath: directory.path("b.xz"))))
    }

    @Test("zstd output decompresses with zstd -dc, one frame, window ≤ 8 MiB, reproducible", .enabled(if: hasZstd, "zstd is not installed"))
    func zstd() throws {
        let directory = try TempDirectory()
        let input = TestData.text(3 << 20, seed: 41)
        try Self.compress(input, .zstd, to: directory.path("a.zst"))
        try Self.compress(input, .zstd, to: directory.path("b.zst"), chunk: 7777)
        let decoded = try runTool("zstd", ["-dc", directory.path("a.zst")], in: directory)
        #expect(decoded.status == 0, "\(decoded.stderr)")
        #expect(decoded.stdout == input)
        let list = try runTool("zstd", ["-lv", directory.path("a.zst")], in: directory)
        let text = String(decoding: list.stdout, as: UTF8.self) + list.stderr
        #expect(text.contains("Zstandard Frames: 1"), "\(text)")
        // "Window Size: 8.00 MiB (8388608 B)"
        let window = text.split(separator: "\n").first { $0.hasPrefix("Window Size:") }
            .flatMap { $0.split(separator: "(").last?.split(separator: " ").first }
            .flatMap { Int($0) }
        #expect(window != nil && window! <= 8 << 20, "\(text)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory.path("a.zst"))) ==
                Data(contentsOf: URL(fileURLWithPath: directory.path("b.zst"))))
    }

    @Test("a filter that dies is reported with its status, not a SIGPIPE", .enabled(if: toolPath("sh") != nil, "sh is not installed"))
    func filterFailure() throws {
        let directory = try TempDirectory()
        let file = try FileSink(path: directory.path("out"))
        let sink = try ProcessFilterSink(tool: "sh", arguments: ["-c", "echo broken >&2; exit 3"], package: "dash", downstream: file)
        let chunk = TestData.random(1 << 20)
        #expect {
            for _ in 0..<64 { try chunk.withUnsafeBytes { try sink.write($0) } }
            try sink.finish()
        } throws: { error in
            guard case CompressionError.toolFailed(let tool, let status, let stderr) = error else { return false }
            return tool == "sh" && status == 3 && stderr == "broken"
        }
    }

    @Test("a missing tool names its Debian package")
    func missingTool() throws {
        let directory = try TempDirectory()
        let file = try FileSink(path: directory.path("out"))
        #expect(throws: CompressionError.toolMissing(tool: "imagebuild-no-such-tool", package: "nothing")) {
            _ = try ProcessFilterSink(tool: "imagebuild-no-such-tool", arguments: [], package: "nothing", downstream: file)
        }
    }
}
