// Benchmark helper for benchmarks/compress.sh: not part of the package.
//
// Compiled by the script with `swiftc -O` together with the library's
// compression and archive sources, so it measures exactly that code in an
// optimised build without a Package.swift target.
//
//   gzbench compress [--threads N] [--level L] [--max-chain C] [--block BYTES] INPUT OUTPUT
//       streams INPUT (a file, or - for stdin) in 64 KiB reads, like
//       libarchive's write callback, through ParallelGzipWriter into OUTPUT.
//   gzbench pack [--threads N] [--level L] [--max-chain C] DIR OUTPUT
//       a stand-in for `imagebuild pack` until it exists: walks DIR in sorted
//       order and writes a reproducible newc cpio (uid/gid 0, mtime 0, inode
//       numbers by position) through ArchiveWriter -> ParallelGzipWriter ->
//       FileSink.
// Both print "seconds=<wall> in=<bytes> out=<bytes>" to stderr.

import CArchive
import Foundation

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("gzbench: \(message)\n".utf8))
    exit(2)
}

var arguments = Array(CommandLine.arguments.dropFirst())
guard let mode = arguments.first else { fail("usage: gzbench compress|pack [options] INPUT OUTPUT") }
arguments.removeFirst()
var threads = ProcessInfo.processInfo.activeProcessorCount
var level: Int32 = 6
var blockSize = ParallelGzipWriter.defaultBlockSize
var maxChain: Int32?
var positional: [String] = []
var index = 0
while index < arguments.count {
    let argument = arguments[index]
    func value() -> String {
        index += 1
        guard index < arguments.count else { fail("\(argument) needs a value") }
        return arguments[index]
    }
    switch argument {
    case "--threads": guard let n = Int(value()) else { fail("bad --threads") }; threads = n
    case "--level": guard let n = Int32(value()) else { fail("bad --level") }; level = n
    case "--max-chain": guard let n = Int32(value()) else { fail("bad --max-chain") }; maxChain = n
    case "--block": guard let n = Int(value()) else { fail("bad --block") }; blockSize = n
    default: positional.append(argument)
    }
    index += 1
}
guard positional.count == 2 else { fail("expected INPUT OUTPUT") }

func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

let started = monotonicSeconds()
let file = try FileSink(path: positional[1])
let gzip = try ParallelGzipWriter(level: level, maxChain: maxChain, blockSize: blockSize, threads: threads, into: file)
var bytesIn: Int64 = 0
let chunk = 64 << 10
let buffer = UnsafeMutableRawPointer.allocate(byteCount: 256 << 10, alignment: 64)

/// Reads `fd` to EOF in `size` pieces, handing each to `body`.
func pump(_ fd: Int32, size: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
    while true {
        let n = read(fd, buffer, size)
        if n == 0 { return }
        if n < 0 {
            if errno == EINTR { continue }
            fail("read: \(String(cString: strerror(errno)))")
        }
        try body(UnsafeRawBufferPointer(start: buffer, count: n))
    }
}

switch mode {
case "compress":
    let fd = positional[0] == "-" ? 0 : open(positional[0], O_RDONLY)
    if fd < 0 { fail("\(positional[0]): \(String(cString: strerror(errno)))") }
    try pump(fd, size: chunk) { bytes in
        bytesIn += Int64(bytes.count)
        try gzip.write(bytes)
    }
    try gzip.finish()

case "pack":
    let root = positional[0]
    let fm = FileManager.default
    guard let walker = fm.enumerator(atPath: root) else { fail("cannot walk \(root)") }
    var paths: [String] = []
    for case let relative as String in walker { paths.append(relative) }
    paths.sort { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    let archive = try ArchiveWriter(format: .cpioNewc) { bytes in
        bytesIn += Int64(bytes.count)
        try gzip.write(bytes)
    }
    var inode: Int64 = 0
    for relative in paths {
        let full = root + "/" + relative
        var info = stat()
        guard lstat(full, &info) == 0 else { fail("\(full): \(String(cString: strerror(errno)))") }
        inode += 1
        let permissions = UInt32(info.st_mode) & 0o7777
        switch UInt32(info.st_mode) & 0o170000 {
        case 0o040000:
            try archive.write(path: relative, kind: .directory, permissions: permissions, uid: 0, gid: 0, mtime: 0, inode: inode)
        case 0o120000:
            let target = try fm.destinationOfSymbolicLink(atPath: full)
            try archive.write(path: relative, kind: .symlink(target: target), permissions: 0o777, uid: 0, gid: 0, mtime: 0, inode: inode)
        case 0o100000:
            let fd = open(full, O_RDONLY | O_CLOEXEC)
            if fd < 0 { fail("\(full): \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            try archive.write(path: relative, kind: .regular, permissions: permissions, uid: 0, gid: 0, mtime: 0,
                              inode: inode, size: Int64(info.st_size)) { body in
                try pump(fd, size: 256 << 10, body)
            }
        default:
            continue
        }
    }
    try archive.close()
    try gzip.finish()

default:
    fail("unknown mode \(mode)")
}
let elapsed = monotonicSeconds() - started
FileHandle.standardError.write(Data(String(format: "seconds=%.3f in=%lld out=%lld\n", elapsed, bytesIn, file.bytesWritten).utf8))
