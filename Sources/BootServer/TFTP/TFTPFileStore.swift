import BootProtocols
import NIOCore
import NIOPosix

/// Why a requested file is not served; each maps to the TFTP error code the client gets.
public enum TFTPFileError: Error, Hashable, CustomStringConvertible {
    case notFound(path: String)
    case escapesRoot(path: String)
    case symlinkLeavesRoot(path: String, target: String)
    case notRegularFile(path: String)
    case notWorldReadable(path: String)
    case permissionDenied(path: String)
    case readFailed(path: String, errno: CInt)

    public var errorCode: TFTPErrorCode {
        switch self {
        case .notFound: .fileNotFound
        case .escapesRoot, .symlinkLeavesRoot, .notRegularFile, .notWorldReadable, .permissionDenied: .accessViolation
        case .readFailed: .notDefined
        }
    }

    /// What the client is told: short, and never the server's absolute paths.
    public var clientMessage: String {
        switch self {
        case .notFound: "file not found"
        case .escapesRoot, .symlinkLeavesRoot: "access outside the TFTP root"
        case .notRegularFile: "not a regular file"
        case .notWorldReadable, .permissionDenied: "permission denied"
        case .readFailed: "read error"
        }
    }

    public var description: String {
        switch self {
        case .notFound(let path): "'\(path)': no such file in the TFTP root"
        case .escapesRoot(let path): "'\(path)': '..' would leave the TFTP root"
        case .symlinkLeavesRoot(let path, let target): "'\(path)': resolves to '\(target)', outside the TFTP root"
        case .notRegularFile(let path): "'\(path)': not a regular file (directory, device or FIFO)"
        case .notWorldReadable(let path): "'\(path)': not world-readable, refused (as tftp-hpa does without -p)"
        case .permissionDenied(let path): "'\(path)': permission denied"
        case .readFailed(let path, let code): "'\(path)': read failed: \(String(cString: strerror(code)))"
        }
    }
}

/// What a transfer reads from: a cached buffer (slices, no copy) or an open file (one pread per block).
enum TFTPServedContent: TFTPContentSource, Sendable {
    case memory(ByteBuffer)
    case file(BootRootFile)

    var size: UInt64 {
        switch self {
        case .memory(let buffer): UInt64(buffer.readableBytes)
        case .file(let file): file.size
        }
    }

    func read(offset: UInt64, count: Int) throws(TFTPContentError) -> ByteBuffer {
        switch self {
        case .memory(let buffer):
            guard let slice = buffer.getSlice(at: buffer.readerIndex + Int(offset), length: count) else {
                throw TFTPContentError("bytes \(offset)..<\(offset + UInt64(count)) outside cached content")
            }
            return slice
        case .file(let file):
            let (buffer, error) = preadBuffer(file.descriptor, offset: Int(offset), count: count)
            guard buffer.readableBytes == count else {
                if error != 0 { throw TFTPContentError("pread at \(offset): \(String(cString: strerror(error)))") }
                throw TFTPContentError("file shrank: \(buffer.readableBytes) of \(count) bytes at offset \(offset)")
            }
            return buffer
        }
    }
}

/// TFTP's side of the boot root: its path syntax, as tftp-hpa with `-s` (backslashes become '/', a
/// leading '/' is relative to the root, `.` and empty components go), then `BootRootReader` decides
/// what is served (the rule HTTP uses too) and keeps small files in memory.
///
/// Confined to the listener's event loop (its counters are not locked).
final class TFTPFileStore {
    let reader: BootRootReader
    private(set) var cacheHits: UInt64 = 0
    private(set) var cacheMisses: UInt64 = 0

    var root: String { reader.root }

    /// `root` must already be canonical (see `canonicalRoot`).
    init(root: String, cacheFileLimit: Int, cacheTotalLimit: Int, requireWorldReadable: Bool) {
        reader = BootRootReader(root: root, cache: BootRootCache(fileLimit: Int64(cacheFileLimit), totalLimit: cacheTotalLimit),
                                requireWorldReadable: requireWorldReadable)
    }

    /// The root with symlinks resolved, or nil if it does not exist.
    static func canonicalRoot(_ path: String) -> String? { BootRootReader.canonicalRoot(path) }

    /// The request's path relative to the root: backslashes as '/', no leading '/', no `.` or empty
    /// components. Unchanged (no allocation) when it is already so, as every PXE client asks.
    static func normalise(_ requested: String) -> String {
        var length = 0, firstIsDot = false  // of the current component
        var plain = true
        for byte in requested.utf8 {
            if byte == UInt8(ascii: "\\") {
                plain = false
                break
            }
            if byte == UInt8(ascii: "/") {
                if length == 0 || (length == 1 && firstIsDot) {  // a leading '/', "//", "./"
                    plain = false
                    break
                }
                length = 0
            } else {
                if length == 0 { firstIsDot = byte == UInt8(ascii: ".") }
                length += 1
            }
        }
        if plain && length > 0 && !(length == 1 && firstIsDot) { return requested }
        // `..` stays, for the reader to refuse.
        return requested.replacingBackslashes().split(separator: "/").filter { $0 != "." }.joined(separator: "/")
    }

    /// Opens `requested` for serving.
    func open(_ requested: String) throws(TFTPFileError) -> TFTPServedContent {
        let relative = Self.normalise(requested)
        do {
            switch try reader.content(relative) {
            case .cached(let content):
                cacheHits += 1
                return .memory(content)
            case .read(let content):
                cacheMisses += 1
                return .memory(content)
            case .file(let file):
                return .file(file)
            }
        } catch {
            throw TFTPFileError(error, path: relative.isEmpty || error == .escapesRoot ? requested : relative)
        }
    }
}

extension TFTPFileError {
    /// The reader's refusal, as TFTP tells it.
    init(_ refusal: BootRootRefusal, path: String) {
        switch refusal {
        case .notFound: self = .notFound(path: path)
        case .escapesRoot: self = .escapesRoot(path: path)
        case .leavesRoot(let target): self = .symlinkLeavesRoot(path: path, target: target)
        case .notRegularFile: self = .notRegularFile(path: path)
        case .notWorldReadable: self = .notWorldReadable(path: path)
        case .permissionDenied: self = .permissionDenied(path: path)
        case .readFailed(let code): self = .readFailed(path: path, errno: code)
        }
    }
}

extension String {
    /// DOS and Windows PXE clients send `pxelinux.cfg\default`.
    fileprivate func replacingBackslashes() -> String {
        guard utf8.contains(0x5C) else { return self }
        return String(decoding: utf8.map { $0 == 0x5C ? 0x2F : $0 }, as: UTF8.self)
    }
}
