import Foundation

/// How an initramfs (or any stream the packer writes) is compressed.
///
/// Every choice here is one the Linux kernel's initramfs unpacker reads, with
/// the settings it needs, and gives the same bytes for the same input:
/// - `gzip`: in-process `ParallelGzipWriter`, level 6, deterministic header.
///   Every kernel reads it (CONFIG_RD_GZIP is on everywhere).
/// - `zstd`: `zstd -q -19 -T2`. Level 19 keeps the window at 8 MiB (windowLog
///   23); the kernel refuses frames whose window exceeds its maximum and has
///   to allocate the whole window, so `--ultra`/`--long` levels are avoided.
///   zstd's multi-threaded mode writes one frame whose bytes do not depend on
///   the worker count (checked: -T1, -T2 and -T4 agree), with the XXH64
///   checksum the kernel's decoder verifies. Needs Linux 5.9+.
/// - `xz`: `xz -q --check=crc32 -6 -T2`. The kernel's XZ decoder supports
///   only CRC32 (or no) integrity checks, not xz's default CRC64, and only the
///   LZMA2/BCJ filters, which is what the preset gives. Multi-threaded xz cuts
///   the input into blocks of a size fixed by the preset (not by the thread
///   count), so -T2 and -T4 give the same bytes; the kernel decodes multi-block
///   streams. libarchive's xz filter is not used because it always writes
///   CRC64, which the kernel rejects.
/// - `none`: the cpio as is.
///
/// zstd and xz run as child processes (Debian's `zstd` and `xz-utils`), so
/// their output is exactly what those tools make and compression runs on
/// their own threads, overlapping with archive writing.
public enum Compression: String, Sendable, CaseIterable, Codable {
    case gzip
    case zstd
    case xz
    case none

    /// The usual file name suffix, e.g. for `initramfs.cpio.gz`.
    public var fileExtension: String {
        switch self {
        case .gzip: return ".gz"
        case .zstd: return ".zst"
        case .xz: return ".xz"
        case .none: return ""
        }
    }

    /// What the compressed stream is for: the kernel unpacks an initramfs (whose limits the
    /// settings above respect), stage 1 unpacks an image with the ordinary tools.
    public enum Purpose: Sendable {
        case initramfs
        /// A stage-2 image: zstd at level 3 (zstd's default: at 1 Gbit/s a higher level saves less
        /// transfer time than it costs to build: on a 1.3 GiB tree level 19 took 298 s, level 3 4 s)
        /// on every core. zstd's multi-threaded frames do not depend on the number of workers, so
        /// the bytes are the same on any machine with the same zstd.
        case image
    }

    /// The external command used for `zstd` and `xz`: tool, arguments, and the
    /// Debian package that ships it. Nil for the in-process codecs.
    public func externalCommand(for purpose: Purpose = .initramfs) -> (tool: String, arguments: [String], package: String)? {
        switch (self, purpose) {
        case (.zstd, .initramfs): return ("zstd", ["-q", "-19", "-T2", "-c"], "zstd")
        case (.zstd, .image): return ("zstd", ["-q", "-3", "-T0", "-c"], "zstd")
        case (.xz, _): return ("xz", ["-q", "--check=crc32", "-6", "-T2", "-c"], "xz-utils")
        case (.gzip, _), (.none, _): return nil
        }
    }

    /// A sink that compresses into `file` and finishes it on `finish()`.
    /// - Parameters:
    ///   - purpose: picks the external tools' settings (`externalCommand(for:)`).
    ///   - gzipLevel: only for `gzip`.
    ///   - gzipMaxChain: only for `gzip`: see `ParallelGzipWriter.init`.
    ///   - threads: only for `gzip`; the external tools choose their own (a fixed
    ///     two, or every core for image zstd, whose output does not depend on it).
    public func makeSink(
        into file: FileSink, purpose: Purpose = .initramfs, gzipLevel: Int32 = 6, gzipMaxChain: Int32? = nil,
        threads: Int = ProcessInfo.processInfo.activeProcessorCount
    ) throws -> ByteSink {
        switch self {
        case .gzip:
            return try ParallelGzipWriter(level: gzipLevel, maxChain: gzipMaxChain, threads: threads, into: file)
        case .none:
            return PassthroughSink(file)
        case .zstd, .xz:
            let command = externalCommand(for: purpose)!
            return try ProcessFilterSink(tool: command.tool, arguments: command.arguments, package: command.package, downstream: file)
        }
    }
}

/// Pipes bytes through an external filter (zstd, xz) into a downstream sink.
///
/// `write` pushes into the child's stdin on the caller's thread; a reader
/// thread copies the child's stdout into `downstream`; another collects
/// stderr (bounded) for the error message. `finish` closes stdin, joins the
/// readers, reaps the child and checks its exit status, then finishes the
/// downstream sink.
///
/// SIGPIPE: if the child dies, writing to its stdin raises SIGPIPE, whose
/// default action kills the whole process. Rather than ignore it process-wide
/// (a library must not change that for its host), each write blocks SIGPIPE
/// in the calling thread, turns EPIPE into an error and consumes the pending
/// signal before unblocking.
public final class ProcessFilterSink: ByteSink {
    public let tool: String
    private let process: Process
    private let stdinFD: Int32
    private let relay: FilterRelay
    private var closed = false

    public init(tool: String, arguments: [String], package: String, downstream: ByteSink) throws {
        guard let url = ProcessFilterSink.locate(tool) else {
            throw CompressionError.toolMissing(tool: tool, package: package)
        }
        self.tool = tool
        let process = Process()
        process.executableURL = url
        process.arguments = arguments
        let input = Pipe(), output = Pipe(), errors = Pipe()
        process.standardInput = input
        // Into a file: the child writes it itself (as `tar | zstd > file` does), rather than through a
        // pipe and a thread of ours copying every compressed byte once more.
        let file = (downstream as? FileSink)?.descriptorForDirectWrites()
        process.standardOutput = file.map { FileHandle(fileDescriptor: $0, closeOnDealloc: false) } ?? output
        process.standardError = errors
        do {
            try process.run()
        } catch {
            throw CompressionError.spawnFailed(tool: tool, reason: "\(error)")
        }
        self.process = process
        // Keep our own close-on-exec copy of the write end, so a child spawned
        // later by another thread (outside Foundation) cannot hold it open.
        // Foundation's run() has already closed the child's ends in this process.
        let fd = fcntl(input.fileHandleForWriting.fileDescriptor, F_DUPFD_CLOEXEC, 0)
        if fd < 0 {
            let code = errno
            process.terminate()
            throw CompressionError.io(operation: "fcntl(F_DUPFD_CLOEXEC)", path: "<\(tool) stdin>", errno: code)
        }
        stdinFD = fd
        // A 1 MiB pipe instead of 64 KiB: the archive writer and the compressor take turns far less often.
        _ = fcntl(fd, 1031 /* F_SETPIPE_SZ, a Linux name Glibc does not export to Swift */, Int32(1 << 20))
        try? input.fileHandleForWriting.close()
        relay = FilterRelay(tool: tool, downstream: downstream,
                            stdout: file == nil ? output.fileHandleForReading : nil, stderr: errors.fileHandleForReading)
        if file != nil { try? output.fileHandleForReading.close() }
        relay.start()
    }

    deinit {
        if !closed {
            close(stdinFD)
            process.terminate()
            relay.join()
            process.waitUntilExit()
        }
    }

    static func locate(_ tool: String) -> URL? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") + ["/usr/bin", "/bin"] {
            let candidate = "\(directory)/\(tool)"
            if access(candidate, X_OK) == 0 { return URL(fileURLWithPath: candidate) }
        }
        return nil
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard !closed else { throw CompressionError.sinkClosed }
        if let error = relay.error { throw error }
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        var blocked = sigset_t(), previous = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(stdinFD, base + offset, bytes.count - offset)
            if n < 0 {
                let code = errno
                if code == EINTR { continue }
                if code == EPIPE {
                    // Consume the SIGPIPE this write raised, unless it was
                    // already pending before we blocked it.
                    if sigismember(&previous, SIGPIPE) == 0 {
                        var timeout = timespec(tv_sec: 0, tv_nsec: 0)
                        _ = sigtimedwait(&blocked, nil, &timeout)
                    }
                    // The child died: its status says more than EPIPE does.
                    closed = true
                    close(stdinFD)
                    relay.join()
                    process.waitUntilExit()
                    if let error = relay.error { throw error }
                    throw CompressionError.toolFailed(tool: tool, status: process.terminationStatus, stderr: relay.stderrText)
                }
                throw CompressionError.io(operation: "write", path: "<\(tool) stdin>", errno: code)
            }
            offset += n
        }
    }

    public func finish() throws {
        guard !closed else { throw CompressionError.sinkClosed }
        closed = true
        close(stdinFD)
        relay.join()
        process.waitUntilExit()
        if let error = relay.error { throw error }
        if process.terminationReason != .exit || process.terminationStatus != 0 {
            throw CompressionError.toolFailed(tool: tool, status: process.terminationStatus, stderr: relay.stderrText)
        }
        try relay.downstream.finish()
    }
}

/// The threads that drain a filter's stdout (into the downstream sink) and
/// stderr (into a bounded buffer).
///
/// `@unchecked Sendable`: `downstream` is used only by the stdout thread until
/// `join()` returns, and only by the caller after; `error` and the stderr
/// text are guarded by `lock`.
final class FilterRelay: @unchecked Sendable {
    let tool: String
    let downstream: ByteSink
    /// nil: the child writes its output straight into the downstream file.
    private let stdout: FileHandle?
    private let stderr: FileHandle
    private let lock = NSCondition()
    private var running = 0
    private var failure: Error?
    private var stderrBytes: [UInt8] = []
    private static let stderrLimit = 16 << 10

    init(tool: String, downstream: ByteSink, stdout: FileHandle?, stderr: FileHandle) {
        self.tool = tool
        self.downstream = downstream
        self.stdout = stdout
        self.stderr = stderr
    }

    var error: Error? {
        lock.lock(); defer { lock.unlock() }
        return failure
    }

    var stderrText: String {
        lock.lock(); defer { lock.unlock() }
        return String(decoding: stderrBytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func start() {
        lock.lock(); running = stdout == nil ? 1 : 2; lock.unlock()
        if let stdout {
            let out = Thread { [self] in
                pump(stdout.fileDescriptor) { chunk in try downstream.write(chunk) }
            }
            out.name = "\(tool)-stdout"
            out.start()
        }
        let err = Thread { [self] in
            pump(stderr.fileDescriptor) { chunk in
                lock.lock(); defer { lock.unlock() }
                let room = Self.stderrLimit - stderrBytes.count
                if room > 0 { stderrBytes.append(contentsOf: chunk.prefix(room)) }
            }
        }
        err.name = "\(tool)-stderr"
        err.start()
    }

    /// Reads `fd` to EOF. After a downstream error it keeps reading (and
    /// dropping) so the child never blocks on a full pipe and can be reaped.
    private func pump(_ fd: Int32, _ body: (UnsafeRawBufferPointer) throws -> Void) {
        let capacity = 256 << 10
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 64)
        defer {
            buffer.deallocate()
            lock.lock(); running -= 1; lock.broadcast(); lock.unlock()
        }
        var failed = false
        while true {
            let n = read(fd, buffer, capacity)
            if n == 0 { return }
            if n < 0 {
                if errno == EINTR { continue }
                record(CompressionError.io(operation: "read", path: "<\(tool) output>", errno: errno))
                return
            }
            guard !failed else { continue }
            do {
                try body(UnsafeRawBufferPointer(start: buffer, count: n))
            } catch {
                failed = true
                record(error)
            }
        }
    }

    private func record(_ error: Error) {
        lock.lock(); defer { lock.unlock() }
        if failure == nil { failure = error }
    }

    func join() {
        lock.lock()
        while running > 0 { lock.wait() }
        lock.unlock()
    }
}
