#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A destination for a stream of bytes: a file, a compressor in front of a file.
///
/// Synchronous on purpose: libarchive's write callback is synchronous, and the
/// initramfs writer pushes every cpio block through one of these from inside it.
/// A sink is used from one thread at a time; `finish()` flushes everything
/// below it and must be called exactly once, after the last `write`.
public protocol ByteSink: AnyObject {
    func write(_ bytes: UnsafeRawBufferPointer) throws
    func finish() throws
}

/// What went wrong while compressing or writing a byte stream.
public enum CompressionError: Error, CustomStringConvertible, Sendable, Equatable {
    /// A zlib call returned an error code.
    case zlib(call: String, code: Int32, message: String)
    /// A system call on a file or pipe failed.
    case io(operation: String, path: String, errno: Int32)
    /// A parameter is out of range.
    case invalidParameter(name: String, value: String, reason: String)
    /// `write` or `finish` was called after `finish`, or after an earlier failure.
    case sinkClosed
    /// The external compressor (zstd, xz) is not installed.
    case toolMissing(tool: String, package: String)
    /// The external compressor exited with an error.
    case toolFailed(tool: String, status: Int32, stderr: String)
    /// A process could not be started.
    case spawnFailed(tool: String, reason: String)

    public var description: String {
        switch self {
        case .zlib(let call, let code, let message):
            return "zlib \(call) failed with code \(code)\(message.isEmpty ? "" : ": \(message)")"
        case .io(let operation, let path, let errno):
            return "\(path): \(operation) failed: \(String(cString: strerror(errno))) (errno \(errno))"
        case .invalidParameter(let name, let value, let reason):
            return "invalid \(name) \(value): \(reason)"
        case .sinkClosed:
            return "write to a byte sink that is already finished or has failed"
        case .toolMissing(let tool, let package):
            return "\(tool) not found in PATH: install the Debian package '\(package)' to use \(tool) compression"
        case .toolFailed(let tool, let status, let stderr):
            let detail = stderr.isEmpty ? "" : ": \(stderr)"
            return "\(tool) exited with status \(status)\(detail)"
        case .spawnFailed(let tool, let reason):
            return "could not start \(tool): \(reason)"
        }
    }
}

/// Writes to a file descriptor in large buffered writes.
///
/// Compressors hand over many small pieces (a 10-byte gzip header, ~40 KiB
/// per block, an 8-byte trailer); coalescing them into `bufferSize` writes
/// keeps the syscall count per MiB low. Writes larger than the buffer go
/// straight through when the buffer is empty, without a copy.
public final class FileSink: ByteSink {
    public let path: String
    private let fd: Int32
    private let ownsDescriptor: Bool
    private let syncOnFinish: Bool
    private let buffer: UnsafeMutableRawPointer
    private let capacity: Int
    private var used = 0
    private var closed = false
    /// Bytes handed to the kernel so far (not counting what is still buffered).
    public private(set) var bytesWritten: Int64 = 0

    /// Creates (or truncates) `path` with mode 0644.
    /// - Parameter syncOnFinish: fsync before close, for files that are renamed into place.
    public convenience init(path: String, bufferSize: Int = 1 << 20, syncOnFinish: Bool = false) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if fd < 0 { throw CompressionError.io(operation: "open", path: path, errno: errno) }
        try self.init(fileDescriptor: fd, path: path, closeOnFinish: true, bufferSize: bufferSize, syncOnFinish: syncOnFinish)
    }

    /// Wraps an open descriptor. `path` only names it in errors.
    public init(fileDescriptor: Int32, path: String, closeOnFinish: Bool, bufferSize: Int = 1 << 20, syncOnFinish: Bool = false) throws {
        guard bufferSize > 0 else {
            throw CompressionError.invalidParameter(name: "bufferSize", value: "\(bufferSize)", reason: "must be positive")
        }
        self.fd = fileDescriptor
        self.path = path
        self.ownsDescriptor = closeOnFinish
        self.syncOnFinish = syncOnFinish
        self.capacity = bufferSize
        self.buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 64)
    }

    deinit {
        buffer.deallocate()
        if ownsDescriptor && !closed { close(fd) }
    }

    /// The descriptor, for a child process to write the file's bytes itself (`ProcessFilterSink`),
    /// when nothing has been written or buffered here; `finish` then syncs and closes it as usual.
    /// `bytesWritten` does not count what the child writes.
    func descriptorForDirectWrites() -> Int32? {
        closed || used > 0 || bytesWritten > 0 ? nil : fd
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard !closed else { throw CompressionError.sinkClosed }
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        if used + bytes.count <= capacity {
            (buffer + used).copyMemory(from: base, byteCount: bytes.count)
            used += bytes.count
            if used == capacity { try flush() }
            return
        }
        try flush()
        if bytes.count >= capacity {
            try writeAll(UnsafeRawBufferPointer(start: base, count: bytes.count))
        } else {
            buffer.copyMemory(from: base, byteCount: bytes.count)
            used = bytes.count
        }
    }

    /// Hands buffered bytes to the kernel.
    public func flush() throws {
        guard used > 0 else { return }
        let count = used
        used = 0
        try writeAll(UnsafeRawBufferPointer(start: buffer, count: count))
    }

    public func finish() throws {
        guard !closed else { throw CompressionError.sinkClosed }
        defer {
            closed = true
            if ownsDescriptor { close(fd) }
        }
        try flush()
        if syncOnFinish && fsync(fd) != 0 {
            throw CompressionError.io(operation: "fsync", path: path, errno: errno)
        }
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw CompressionError.io(operation: "write", path: path, errno: errno)
            }
            offset += n
        }
        bytesWritten += Int64(bytes.count)
    }
}

/// Passes bytes through unchanged to another sink: the `none` compression.
public final class PassthroughSink: ByteSink {
    private let downstream: ByteSink
    private var closed = false

    public init(_ downstream: ByteSink) { self.downstream = downstream }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard !closed else { throw CompressionError.sinkClosed }
        try downstream.write(bytes)
    }

    public func finish() throws {
        guard !closed else { throw CompressionError.sinkClosed }
        closed = true
        try downstream.finish()
    }
}
