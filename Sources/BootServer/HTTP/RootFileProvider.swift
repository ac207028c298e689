import BootProtocols
import Foundation
import Hummingbird
import NIOCore
import NIOPosix
import Synchronization

/// Serves files for Hummingbird's `FileMiddleware` (which does ETag, If-None-Match, If-Modified-Since,
/// Range and HEAD) from the boot root, with small files from memory and large ones streamed in chunks
/// read on the thread pool (a multi-GB image never sits in memory).
///
/// What is served is `BootRootReader`'s decision, the same as TFTP's: confined to the root by
/// `openat2(RESOLVE_BENEATH)`, regular world-readable files only, withheld names answered as missing.
/// Here only HTTP's side: the path (already percent-decoded by `FileMiddleware`, which also refuses
/// `..`) loses its leading '/'; a refusal becomes 404 (missing, withheld, a directory) or 403.
struct RootFileProvider: FileProvider {
    struct FileAttributes: FileMiddlewareFileAttributes, Sendable {
        let isFolder: Bool
        let size: Int
        let modificationDate: Date
    }

    /// The request, resolved once in `getFileIdentifier`.
    struct FileIdentifier: Sendable {
        /// The path as asked, relative to the root.
        var relative: String
        /// The root-joined path, for messages (nil: refused, see `refusal`). Files are opened below the
        /// root by `relative`, never by this path.
        var resolved: String?
        var refusal: String?
        /// The cached content when the file is small and unchanged since it was cached.
        var cached: ByteBuffer?
        /// The headers `FileMiddleware` answered a plain GET of this file version with, once recorded
        /// (see `StaticFastPath`).
        var cachedHeaders: HTTPFields?
        /// The same headers as HTTP/1.1 bytes, status line first, without `Date` and `Server` and the
        /// blank line (see `EarlyStaticFastPath`).
        var cachedHead: ByteBuffer?
        var stat: FileStat?
        /// The file, opened by the reader when it was not answered from the cache: what `loadFile`
        /// reads, so the bytes are the version the headers describe.
        var file: BootRootFile?
    }

    typealias FileStat = BootFileVersion

    /// One finished (or abandoned) body, for the timeline and the byte counters.
    struct Delivery: Sendable {
        var relative: String
        var remote: SocketAddress?
        var bytes: UInt64
        var expected: UInt64
        var error: (any Error)?
    }

    let reader: BootRootReader
    let threadPool: NIOThreadPool
    let budget: StreamBudget
    /// Called once per body served (completed or not) for paths `observe` selects; keep it short.
    let observe: @Sendable (String) -> Bool
    let delivered: @Sendable (Delivery) -> Void

    var root: String { reader.root }
    var cache: SmallFileCache { reader.cache }

    /// - Parameter root: must be canonical (realpath of the configured root).
    init(root: String, threadPool: NIOThreadPool, cache: SmallFileCache, chunkSize: Int = 512 * 1024,
         observe: @escaping @Sendable (String) -> Bool, delivered: @escaping @Sendable (Delivery) -> Void) {
        reader = BootRootReader(root: root, cache: cache)
        self.threadPool = threadPool
        budget = StreamBudget(maximumChunk: chunkSize)
        self.observe = observe
        self.delivered = delivered
    }

    func getFileIdentifier(_ path: String) -> FileIdentifier? { identify(path, cachedOnly: false) }

    /// A file the small-file cache does not hold (larger, or under `images/`) that the router already
    /// answered with a plain 200: the version it was, and the head it was sent with.
    struct LargeFile: Sendable {
        var relative: String
        /// The root-joined path, for messages.
        var resolved: String
        var stat: FileStat
        var head: ByteBuffer
    }

    /// Heads recorded by `StaticFileGuard`, for `EarlyStaticFastPath` to send such files with sendfile.
    var largeFiles: LargeFileHeads { LargeFileHeads(cache: reader.cache) }

    /// The recorded file behind `path`, if the file there is still the very version recorded (same
    /// inode, size and mtime: a publish or an edit makes the router answer again first) and may still be
    /// served. One `fstatat`.
    func recordedLargeFile(_ path: String) -> LargeFile? {
        let name = Self.relativeName(path)
        guard let entry = reader.cached(name, needing: .head), let head = entry.head else { return nil }
        return LargeFile(relative: name, resolved: reader.joined(name), stat: entry.version, head: head)
    }

    /// A recorded large file, opened (`openat2` and `fstat`) if it is still the recorded version and may
    /// still be served: what `EarlyStaticFastPath` sends with sendfile. The caller closes `descriptor`.
    func openRecordedLargeFile(_ path: String) -> (relative: String, version: FileStat, head: ByteBuffer, descriptor: CInt)? {
        let name = Self.relativeName(path)
        guard let entry = reader.cache.entry(name), let head = entry.head,
              let descriptor = reader.openDescriptor(name, matching: entry.version) else { return nil }
        return (name, entry.version, head, descriptor)
    }

    /// A small file already in memory and unchanged, and not one `observe` selects: what
    /// `StaticFastPath` may answer without the router. One `fstatat`, none for a name not cached; nil
    /// otherwise.
    func cachedFileIdentifier(_ path: String) -> FileIdentifier? { identify(path, cachedOnly: true) }

    /// The request path without its leading '/'s: the name the reader takes.
    static func relativeName(_ path: String) -> String {
        guard path.utf8.first == UInt8(ascii: "/") else { return path }
        var relative = Substring(path)
        while relative.first == "/" { relative = relative.dropFirst() }
        return String(relative)
    }

    private func identify(_ path: String, cachedOnly: Bool) -> FileIdentifier? {
        let name = Self.relativeName(path)
        if cachedOnly && observe(name) { return nil }
        // An unchanged small file already read: one fstatat.
        if let entry = reader.cached(name), let content = entry.content {
            return FileIdentifier(relative: name, resolved: cachedOnly ? nil : reader.joined(name), cached: content,
                                  cachedHeaders: entry.headers, cachedHead: entry.head, stat: entry.version)
        }
        if cachedOnly { return nil }
        let file: BootRootFile
        do {
            file = try reader.open(name)
        } catch {
            let refusal: String
            switch error {
            case .notFound, .notRegularFile(isDirectory: true): return nil  // 404, as for a file that is not there
            case .escapesRoot: refusal = "'\(name)' leaves the root"
            case .leavesRoot: refusal = "'\(name)' resolves outside the root"
            case .notRegularFile: refusal = "'\(name)' is not a regular file"
            case .notWorldReadable: refusal = "'\(name)' is not world-readable"
            case .permissionDenied: refusal = "'\(name)': permission denied"
            case .readFailed(let code): refusal = "'\(name)': \(String(cString: strerror(code)))"
            }
            return FileIdentifier(relative: name, refusal: refusal)
        }
        return FileIdentifier(relative: name, resolved: reader.joined(name), stat: file.version, file: file)
    }

    func getAttributes(id: FileIdentifier) async throws -> FileAttributes? {
        if let refusal = id.refusal { throw HTTPError(.forbidden, message: refusal) }
        guard let stat = id.stat else { return nil }
        return FileAttributes(isFolder: false, size: Int(stat.size), modificationDate: stat.modificationDate)
    }

    func loadFile(id: FileIdentifier, context: some RequestContext) async throws -> ResponseBody {
        guard let stat = id.stat, stat.size > 0 else { return ResponseBody() }
        return try await loadFile(id: id, range: 0...Int(stat.size - 1), context: context)
    }

    func loadFile(id: FileIdentifier, range: ClosedRange<Int>, context: some RequestContext) async throws -> ResponseBody {
        guard let stat = id.stat else { throw HTTPError(.notFound) }
        let remote = (context as? any RemoteAddressRequestContext)?.remoteAddress
        let observed = observe(id.relative)
        let range = range.clamped(to: 0...max(0, Int(stat.size) - 1))
        let content: ByteBuffer?
        if let cached = id.cached {
            content = cached
        } else if let file = id.file, stat.size <= cache.fileLimit {
            let whole = try await threadPool.runIfActive { try file.read(at: 0, count: Int(stat.size)) }
            cache.insert(id.relative, version: stat, content: whole)
            content = whole
        } else {
            content = nil
        }
        if let content {
            let slice = content.getSlice(at: content.readerIndex + range.lowerBound, length: range.count) ?? content
            if !observed {
                delivered(Delivery(relative: id.relative, remote: remote, bytes: UInt64(slice.readableBytes),
                                   expected: UInt64(range.count), error: nil))
                return ResponseBody(byteBuffer: slice)
            }
            let delivered = self.delivered
            let relative = id.relative
            return ResponseBody(contentLength: slice.readableBytes) { writer in
                do {
                    try await writer.write(slice)
                    try await writer.finish(nil)
                } catch {
                    delivered(Delivery(relative: relative, remote: remote, bytes: 0, expected: UInt64(range.count), error: error))
                    throw error
                }
                delivered(Delivery(relative: relative, remote: remote, bytes: UInt64(range.count), expected: UInt64(range.count), error: nil))
            }
        }
        guard let file = id.file else { throw HTTPError(.notFound) }
        return streamBody(file: file, relative: id.relative, range: range, remote: remote,
                          eventLoop: (context as? any EventLoopRequestContext)?.eventLoop)
    }

    /// Streams `range` of a large file: one chunk is read ahead on the thread pool while the previous
    /// one is written, so disk and socket overlap and at most two chunks per download are in memory.
    /// Chunks shrink as downloads multiply (`StreamBudget`): a boot storm of 1000 image downloads holds
    /// tens of MiB, not GiB.
    ///
    /// `writer.write` returns as soon as the write is queued for the connection's event loop, and the
    /// writer only learns that the socket is full when that loop has run the write. A busy loop (a
    /// boot storm on one core) therefore let every download queue chunk after chunk: 1000 downloads of
    /// a 64 MiB image held 3.2 GB of chunks. Waiting for one round trip through the loop after each
    /// chunk lets the socket's back-pressure reach the reader.
    private func streamBody(file: BootRootFile, relative: String, range: ClosedRange<Int>,
                            remote: SocketAddress?, eventLoop: (any EventLoop)?) -> ResponseBody {
        let threadPool = self.threadPool
        let budget = self.budget
        let delivered = self.delivered
        return ResponseBody(contentLength: range.count) { writer in
            budget.begin()
            defer { budget.end() }
            var sent: UInt64 = 0
            do {
                var offset = range.lowerBound
                let end = range.upperBound + 1
                func read(_ at: Int) -> Task<ByteBuffer, any Error> {
                    let count = min(budget.chunkSize, end - at)
                    return Task { try await threadPool.runIfActive { try file.read(at: at, count: count) } }
                }
                var next: Task<ByteBuffer, any Error>? = read(offset)
                while let pending = next {
                    let chunk = try await pending.value
                    offset += chunk.readableBytes
                    next = offset < end ? read(offset) : nil
                    do {
                        try await writer.write(chunk)
                        if let eventLoop { try await eventLoop.submit {}.get() }
                    } catch {
                        next?.cancel()
                        throw error
                    }
                    sent += UInt64(chunk.readableBytes)
                }
                try await writer.finish(nil)
            } catch {
                delivered(Delivery(relative: relative, remote: remote, bytes: sent, expected: UInt64(range.count), error: error))
                throw error
            }
            delivered(Delivery(relative: relative, remote: remote, bytes: sent, expected: UInt64(range.count), error: nil))
        }
    }
}

/// A request context that knows its connection's event loop (see `RootFileProvider.streamBody`).
protocol EventLoopRequestContext {
    var eventLoop: any EventLoop { get }
}

extension BootFileVersion {
    var modificationDate: Date {
        Date(timeIntervalSince1970: Double(modifiedSeconds) + Double(modifiedNanoseconds) / 1e9)
    }

    /// Always true: the reader hands out regular files only (kept for `StaticFileGuard`, which checks).
    var isRegular: Bool { true }
}

extension BootRootReader {
    /// The root-joined path of `relative`, for messages.
    func joined(_ relative: String) -> String { root == "/" ? "/" + relative : root + "/" + relative }
}

/// Response heads of large files, by path relative to the root: entries without content in the
/// reader's cache (see `BootRootCache.recordLarge`).
struct LargeFileHeads: Sendable {
    let cache: BootRootCache

    func record(_ file: RootFileProvider.LargeFile) {
        cache.recordLarge(head: file.head, for: file.relative, version: file.stat)
    }
}

/// Read-buffer memory shared by all streamed downloads: each takes `budget / active` per chunk, between
/// 64 KiB (below that, per-chunk overhead dominates) and the configured chunk size.
final class StreamBudget: Sendable {
    let maximumChunk: Int
    let total: Int
    private let active = Mutex(0)

    init(maximumChunk: Int, total: Int = 64 << 20) {
        self.maximumChunk = max(64 * 1024, maximumChunk)
        self.total = total
    }

    func begin() { active.withLock { $0 += 1 } }
    func end() { active.withLock { $0 -= 1 } }

    var chunkSize: Int {
        let streams = max(1, active.withLock { $0 })
        return min(maximumChunk, max(64 * 1024, total / streams / 2))
    }
}

/// Small files (boot loaders, configs, scripts: what every node fetches) kept in memory: the reader's
/// cache, checked against inode, size and mtime on every hit so a publish or an edit is seen at once.
typealias SmallFileCache = BootRootCache

extension BootRootCache {
    /// Keeps the response headers of a plain GET with the entry for this file version (a changed file
    /// has a new entry, without them, until the router answers it again).
    func record(headers: HTTPFields, for relative: String, matching version: BootFileVersion) {
        record(headers: headers, head: Self.encodeHead(headers, size: Int(version.size)), for: relative, matching: version)
    }

    /// "HTTP/1.1 200 OK" and the header lines, as NIO's HTTP/1 encoder writes them, minus the two
    /// fields set per response.
    static func encodeHead(_ headers: HTTPFields, size: Int) -> ByteBuffer {
        var buffer = ByteBuffer(string: "HTTP/1.1 200 OK\r\n")
        for field in headers where field.name != .date && field.name != .server {
            buffer.writeString(field.name.rawName)
            buffer.writeString(": ")
            buffer.writeString(field.value)
            buffer.writeString("\r\n")
        }
        if headers[.contentLength] == nil { buffer.writeString("content-length: \(size)\r\n") }
        return buffer
    }
}
