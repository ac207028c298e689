import BootProtocols
import Foundation
import Hummingbird
import NIOCore
import NIOPosix
import Synchronization

/// Serves files for Hummingbird's `FileMiddleware` (which does ETag, If-None-Match, If-Modified-Since,
/// Range and HEAD) from the boot root, confined to it, with small files from memory and large ones
/// streamed in chunks read on the thread pool (a multi-GB image never sits in memory).
///
/// Confinement: `FileMiddleware` refuses `..` after percent-decoding; here the path is resolved with
/// realpath(3) and must stay under the root's own realpath. Symlinks inside the root work (the root is
/// built from them: `pxelinux.cfg -> .publish/current/pxelinux.cfg`); a link that leaves it is refused
/// with 403.
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
        /// Where it resolves to (nil: refused, see `refusal`).
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
    }

    struct FileStat: Sendable, Equatable {
        var device: UInt64
        var inode: UInt64
        var size: Int64
        var modifiedSeconds: Int
        var modifiedNanoseconds: Int
        var isDirectory: Bool
        var isRegular: Bool

        init(_ info: stat) {
            device = UInt64(info.st_dev)
            inode = UInt64(info.st_ino)
            size = Int64(info.st_size)
            modifiedSeconds = info.st_mtim.tv_sec
            modifiedNanoseconds = info.st_mtim.tv_nsec
            let type = info.st_mode & 0o170000
            isDirectory = type == 0o040000
            isRegular = type == 0o100000
        }

        var modificationDate: Date {
            Date(timeIntervalSince1970: Double(modifiedSeconds) + Double(modifiedNanoseconds) / 1e9)
        }
    }

    /// One finished (or abandoned) body, for the timeline and the byte counters.
    struct Delivery: Sendable {
        var relative: String
        var remote: SocketAddress?
        var bytes: UInt64
        var expected: UInt64
        var error: (any Error)?
    }

    let root: String
    let threadPool: NIOThreadPool
    let cache: SmallFileCache
    let budget: StreamBudget
    /// Called once per body served (completed or not) for paths `observe` selects; keep it short.
    let observe: @Sendable (String) -> Bool
    let delivered: @Sendable (Delivery) -> Void

    /// - Parameter root: must be canonical (realpath of the configured root).
    init(root: String, threadPool: NIOThreadPool, cache: SmallFileCache, chunkSize: Int = 512 * 1024,
         observe: @escaping @Sendable (String) -> Bool, delivered: @escaping @Sendable (Delivery) -> Void) {
        self.root = root
        self.threadPool = threadPool
        self.cache = cache
        budget = StreamBudget(maximumChunk: chunkSize)
        self.observe = observe
        self.delivered = delivered
    }

    func getFileIdentifier(_ path: String) -> FileIdentifier? { identify(path, cachedOnly: false) }

    /// A file the small-file cache does not hold (larger, or under `images/`) that the router already
    /// answered with a plain 200: where it resolved, the version it was, and the head it was sent with.
    struct LargeFile: Sendable {
        var relative: String
        var resolved: String
        var stat: FileStat
        var head: ByteBuffer
    }

    /// Heads recorded by `StaticFileGuard`, for `EarlyStaticFastPath` to send such files with sendfile.
    let largeFiles = LargeFileHeads()

    /// The recorded file behind `path`, if the file there is still the very version recorded (same
    /// inode, size and mtime: a publish or an edit makes the router answer again first). Safe without
    /// realpath for the same reason as the small-file cache.
    func recordedLargeFile(_ path: String) -> LargeFile? {
        var relative = Substring(path)
        while relative.first == "/" { relative = relative.dropFirst() }
        let name = String(relative)
        guard !Self.unsafeName(name.utf8), let file = largeFiles[name] else { return nil }
        var info = stat()
        guard stat(root + "/" + name, &info) == 0, FileStat(info) == file.stat else { return nil }
        return file
    }

    /// A small file already in memory and unchanged, and not one `observe` selects: what
    /// `StaticFastPath` may answer without the router. One `stat`, never a realpath; nil otherwise.
    func cachedFileIdentifier(_ path: String) -> FileIdentifier? { identify(path, cachedOnly: true) }

    private func identify(_ path: String, cachedOnly: Bool) -> FileIdentifier? {
        var relative = Substring(path)
        while relative.first == "/" { relative = relative.dropFirst() }
        let name = String(relative)
        // A NUL would end the C string early; '..' is already refused by FileMiddleware, checked again
        // here per component so this provider is safe on its own.
        if Self.unsafeName(name.utf8) {
            return cachedOnly ? nil : FileIdentifier(relative: name, refusal: "'\(name)' leaves the root")
        }
        if ServedNames.isWithheld(name) { return nil }  // 404, as for a file that is not there
        if cachedOnly && observe(name) { return nil }
        let joined = name.isEmpty ? root : root + "/" + name
        // Fast path: an unchanged small file we already resolved and read (same inode, size, mtime).
        // Safe without realpath: it is the very file that was checked to be inside the root.
        var info = stat()
        guard stat(joined, &info) == 0 else { return nil }
        let current = FileStat(info)
        if current.isRegular, let hit = cache.lookup(name, matching: current) {
            return FileIdentifier(relative: name, resolved: hit.resolved, cached: hit.content, cachedHeaders: hit.headers,
                                  cachedHead: hit.head, stat: current)
        }
        if cachedOnly { return nil }
        guard let pointer = realpath(joined, nil) else { return nil }
        let resolved = String(cString: pointer)
        free(pointer)
        guard resolved == root || resolved.hasPrefix(root == "/" ? "/" : root + "/") else {
            return FileIdentifier(relative: name, refusal: "'\(name)' resolves outside the root")
        }
        return FileIdentifier(relative: name, resolved: resolved, stat: current)
    }

    /// A NUL or a `..` component, found in one pass over the bytes (this runs for every request).
    static func unsafeName(_ bytes: String.UTF8View) -> Bool {
        var dots = 0  // dots since the last '/', -1 once the component has anything else
        for byte in bytes {
            switch byte {
            case 0: return true
            case UInt8(ascii: "/"):
                if dots == 2 { return true }
                dots = 0
            case UInt8(ascii: "."):
                if dots >= 0 { dots += 1 }
            default:
                dots = -1
            }
        }
        return dots == 2
    }

    func getAttributes(id: FileIdentifier) async throws -> FileAttributes? {
        if let refusal = id.refusal { throw HTTPError(.forbidden, message: refusal) }
        guard let stat = id.stat else { return nil }
        guard stat.isDirectory || stat.isRegular else { throw HTTPError(.forbidden, message: "'\(id.relative)' is not a regular file") }
        return FileAttributes(isFolder: stat.isDirectory, size: Int(stat.size), modificationDate: stat.modificationDate)
    }

    func loadFile(id: FileIdentifier, context: some RequestContext) async throws -> ResponseBody {
        guard let stat = id.stat, stat.size > 0 else { return ResponseBody() }
        return try await loadFile(id: id, range: 0...Int(stat.size - 1), context: context)
    }

    func loadFile(id: FileIdentifier, range: ClosedRange<Int>, context: some RequestContext) async throws -> ResponseBody {
        guard let resolved = id.resolved, let stat = id.stat else { throw HTTPError(.notFound) }
        let remote = (context as? any RemoteAddressRequestContext)?.remoteAddress
        let observed = observe(id.relative)
        let range = range.clamped(to: 0...max(0, Int(stat.size) - 1))
        let content: ByteBuffer?
        if let cached = id.cached {
            content = cached
        } else if stat.size <= cache.fileLimit {
            let whole = try await threadPool.runIfActive { try Self.readWhole(resolved, expected: stat) }
            cache.insert(id.relative, resolved: resolved, stat: stat, content: whole)
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
        return streamBody(resolved: resolved, relative: id.relative, stat: stat, range: range, remote: remote,
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
    private func streamBody(resolved: String, relative: String, stat: FileStat, range: ClosedRange<Int>,
                            remote: SocketAddress?, eventLoop: (any EventLoop)?) -> ResponseBody {
        let threadPool = self.threadPool
        let budget = self.budget
        let delivered = self.delivered
        return ResponseBody(contentLength: range.count) { writer in
            let file = try await threadPool.runIfActive { try OpenFile(path: resolved, expected: stat) }
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

    static func readWhole(_ path: String, expected: FileStat) throws -> ByteBuffer {
        let file = try OpenFile(path: path, expected: expected)
        return try file.read(at: 0, count: Int(expected.size))
    }
}

/// A request context that knows its connection's event loop (see `RootFileProvider.streamBody`).
protocol EventLoopRequestContext {
    var eventLoop: any EventLoop { get }
}

/// A file open for one download, closed when the last chunk read lets go of it.
final class OpenFile: Sendable {
    let descriptor: CInt
    let path: String

    init(path: String, expected: RootFileProvider.FileStat) throws {
        // O_NONBLOCK: a FIFO swapped in after the stat must not block a thread in open().
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else { throw HTTPError(errno == EACCES ? .forbidden : .notFound) }
        var info = stat()
        guard fstat(fd, &info) == 0, RootFileProvider.FileStat(info).isRegular,
              UInt64(info.st_ino) == expected.inode, UInt64(info.st_dev) == expected.device else {
            // Replaced between the stat and the open (a publish switched it): the headers already
            // promised the old size, so fail this request rather than send the wrong bytes.
            close(fd)
            throw HTTPError(.serviceUnavailable, message: "file changed while being opened; retry")
        }
        descriptor = fd
        self.path = path
    }

    deinit { close(descriptor) }

    func read(at offset: Int, count: Int) throws -> ByteBuffer {
        let (buffer, failure) = preadBuffer(descriptor, offset: offset, count: count)
        guard buffer.readableBytes == count else {
            throw FileReadError(path: path, offset: offset, message: failure != 0 ? String(cString: strerror(failure)) : "file shrank")
        }
        return buffer
    }
}

struct FileReadError: Error, CustomStringConvertible {
    var path: String
    var offset: Int
    var message: String
    var description: String { "reading '\(path)' at \(offset): \(message)" }
}

/// Response heads of large files, by path relative to the root. Bounded: past `limit` entries it
/// starts over (the router records again on the next request of each).
final class LargeFileHeads: Sendable {
    private let entries = Mutex([String: RootFileProvider.LargeFile]())
    let limit: Int

    init(limit: Int = 4096) { self.limit = limit }

    subscript(relative: String) -> RootFileProvider.LargeFile? {
        entries.withLock { $0[relative] }
    }

    func record(_ file: RootFileProvider.LargeFile) {
        entries.withLock { entries in
            if entries.count >= limit { entries.removeAll(keepingCapacity: true) }
            entries[file.relative] = file
        }
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

/// Small files (boot loaders, configs, scripts: what every node fetches) kept in memory, checked against
/// inode, size and mtime on every hit so a publish or an edit is seen at once.
final class SmallFileCache: Sendable {
    struct Entry {
        var resolved: String
        var stat: RootFileProvider.FileStat
        var content: ByteBuffer
        var headers: HTTPFields?
        var head: ByteBuffer?
        var lastUse: UInt64
    }

    struct State {
        var entries: [String: Entry] = [:]
        var bytes = 0
        var clock: UInt64 = 0
    }

    let fileLimit: Int64
    let totalLimit: Int
    private let state = Mutex(State())

    init(fileLimit: Int64, totalLimit: Int) {
        self.fileLimit = fileLimit
        self.totalLimit = totalLimit
    }

    func lookup(_ relative: String, matching stat: RootFileProvider.FileStat)
        -> (resolved: String, content: ByteBuffer, headers: HTTPFields?, head: ByteBuffer?)? {
        state.withLock { state in
            guard let index = state.entries.index(forKey: relative), state.entries.values[index].stat == stat else { return nil }
            state.clock += 1
            state.entries.values[index].lastUse = state.clock
            let entry = state.entries.values[index]
            return (entry.resolved, entry.content, entry.headers, entry.head)
        }
    }

    /// Keeps the response headers of a plain GET with the entry for this file version (a changed file
    /// has a new entry, without them, until the router answers it again).
    func record(headers: HTTPFields, for relative: String, matching stat: RootFileProvider.FileStat) {
        state.withLock { state in
            guard let index = state.entries.index(forKey: relative), state.entries.values[index].stat == stat else { return }
            state.entries.values[index].headers = headers
            state.entries.values[index].head = Self.encodeHead(headers, size: state.entries.values[index].content.readableBytes)
        }
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

    func insert(_ relative: String, resolved: String, stat: RootFileProvider.FileStat, content: ByteBuffer) {
        let size = content.readableBytes
        guard size <= totalLimit else { return }
        state.withLock { state in
            if let old = state.entries.removeValue(forKey: relative) { state.bytes -= old.content.readableBytes }
            while state.bytes + size > totalLimit,
                  let victim = state.entries.min(by: { $0.value.lastUse < $1.value.lastUse }) {
                state.entries.removeValue(forKey: victim.key)
                state.bytes -= victim.value.content.readableBytes
            }
            state.clock += 1
            state.entries[relative] = Entry(resolved: resolved, stat: stat, content: content, lastUse: state.clock)
            state.bytes += size
        }
    }
}
