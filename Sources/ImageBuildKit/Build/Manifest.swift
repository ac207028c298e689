import Crypto
import Foundation

/// `artifacts/<name>/manifest.json`: what was built from what, so publish can
/// address images by content and a rebuild can tell that nothing changed.
public struct Manifest: Codable, Sendable, Equatable {
    public struct FileInfo: Codable, Sendable, Equatable {
        public var sha256: String
        public var size: Int64
    }
    public var name: String
    public var toolVersion: String
    /// sha256 of the recipe file's bytes.
    public var recipeDigest: String
    /// sha256 over the recipe and every input file; equal digests mean an equal build.
    public var inputDigest: String?
    public var sourceDateEpoch: Int64
    public var kernelVersion: String
    public var cmdline: String
    public var imageFormat: String
    public var initramfsCompression: String
    public var modules: [String]
    public var files: [String: FileInfo]
    /// Bytes the loaded image takes in a node's tmpfs (the unpacked files of an archive, the file
    /// of a file system); stage 1 gets it as `imagebuild.need=`. Absent in older manifests.
    public var loadedSize: Int64?
    /// The BitTorrent client the initramfs carries for `distribution: p2p` (`initramfs.p2p`, "aria2c");
    /// nil: none, the image loads over HTTP only.
    public var p2pClient: String?
    /// The architecture it runs on (the recipe's `arch:`); nil in manifests written before there was a
    /// choice, which were all amd64.
    public var arch: Architecture?

    public static let fileName = "manifest.json"

    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(self)
        data.append(0x0A)
        return data
    }

    public static func read(from directory: String) throws -> Manifest {
        let data = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + fileName))
        return try JSONDecoder().decode(Manifest.self, from: data)
    }

    /// The digest that names a published version: stable across rebuilds of the same inputs.
    public var contentDigest: String {
        var hasher = SHA256()
        for name in files.keys.sorted() {
            hasher.update(data: Data("\(name) \(files[name]!.sha256)\n".utf8))
        }
        hasher.update(data: Data(cmdline.utf8))
        return hasher.finalize().hex
    }
}

extension Sequence where Element == UInt8 {
    var hex: String { map { String(format: "%02x", $0) }.joined() }
}

extension Digest {
    var hex: String { Array(self.makeIterator()).hex }
}

/// Streaming sha256 of a file.
public func sha256File(_ path: String) throws -> (digest: String, size: Int64) {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { throw RootfsError.system(operation: "open", path: path, errno: errno) }
    defer { close(fd) }
    var hasher = SHA256()
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
    defer { buffer.deallocate() }
    var size: Int64 = 0
    while true {
        let n = read(fd, buffer.baseAddress, buffer.count)
        if n < 0 { if errno == EINTR { continue }; throw RootfsError.system(operation: "read", path: path, errno: errno) }
        if n == 0 { break }
        hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        size += Int64(n)
    }
    return (hasher.finalize().hex, size)
}

public enum ImageBuildVersion {
    public static let current = "0.1.0"
}
