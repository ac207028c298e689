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
        /// The cache already holds this version's head (`FastPath` answers it from now on).
        var headKnown = false
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

    func getFileIdentifier(_ path: String) -> FileIdentifier? { identify(path) }

    /// What `FastPath` sends for a plain GET or HEAD.
    enum FastFile {
        /// A small file from memory, with its head.
        case content(head: ByteBuffer, content: ByteBuffer)
        /// A HEAD of a file sent with sendfile.
        case head(ByteBuffer)
        /// A file opened for sendfile: a large one, or one under an `observe`d path (every download of
        /// those is reported, and the delivery report needs the bytes actually sent).
        case open(OpenFile)
    }

    struct OpenFile {
        var relative: String
        var version: FileStat
        var head: ByteBuffer
        /// The caller closes it.
        var descriptor: CInt
    }

    /// The answer `FastPath` may send without the router: for a file version the router already
    /// answered a plain GET of (its head is cached), while the name still leads to that version and it
    /// may still be served (one `fstatat`, plus `openat2` and `fstat` to open a file); and for a small
    /// file not asked for yet (`firstRead`).
    /// - Parameter name: relative to the root (the request path without its leading '/'s).
    func fastFile(named name: String, open: Bool) -> FastFile? {
        guard let entry = reader.cached(name, needing: .head), let head = entry.head else { return firstRead(name) }
        if let content = entry.content, !observe(name) { return .content(head: head, content: content) }
        guard open else { return .head(head) }
        guard let descriptor = reader.openDescriptor(name, matching: entry.version) else { return nil }
        return .open(OpenFile(relative: name, version: entry.version, head: head, descriptor: descriptor))
    }

    /// A small file no plain GET has reached in this version, read and cached here as the router
    /// would (`openat2`, `fstat`, one `pread` of at most the cache's file limit): a node's own overlay
    /// archive or iPXE script is asked for once per boot, and the router's way (the HTTP codec, a task,
    /// a hop to the thread pool) cost a boot storm more than the file. nil, for the router to answer,
    /// for anything else: a refusal or a missing file (the router says which), a large file, an
    /// observed one (its deliveries are reported as they end).
    private func firstRead(_ name: String) -> FastFile? {
        guard !observe(name), let file = try? reader.open(name), file.version.size <= cache.fileLimit,
              let content = try? reader.readWhole(file) else { return nil }
        cache.insert(name, version: file.version, content: content)
        return .content(head: recordHead(name, version: file.version), content: content)
    }

    /// The request path without its leading '/'s: the name the reader takes.
    static func relativeName(_ path: String) -> String {
        guard path.utf8.first == UInt8(ascii: "/") else { return path }
        var relative = Substring(path)
        while relative.first == "/" { relative = relative.dropFirst() }
        return String(relative)
    }

    private func identify(_ path: String) -> FileIdentifier? {
        let name = Self.relativeName(path)
        // An unchanged small file already read: one fstatat.
        if let entry = reader.cached(name), let content = entry.content {
            return FileIdentifier(relative: name, resolved: reader.joined(name), cached: content, headKnown: entry.head != nil,
                                  stat: entry.version)
        }
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

    /// The whole file: `FileMiddleware` answers 200. From now on `FastPath` answers plain GETs and
    /// HEADs of this version, with the head `ResponseHead.file` makes (the one `FileMiddleware` sends).
    func loadFile(id: FileIdentifier, context: some RequestContext) async throws -> ResponseBody {
        guard let stat = id.stat else { return ResponseBody() }
        let body = stat.size > 0 ? try await loadFile(id: id, range: 0...Int(stat.size - 1), context: context) : ResponseBody()
        if !id.headKnown { recordHead(id.relative, version: stat) }
        return body
    }

    /// Keeps the head of a 200 for this version of `relative` (`FastPath` answers it from now on).
    @discardableResult
    func recordHead(_ relative: String, version: FileStat) -> ByteBuffer {
        let head = ResponseHead.file(path: "/" + relative, version: version)
        if version.size <= cache.fileLimit && !observe(relative) {
            cache.record(head: head, for: relative, matching: version)
        } else {
            cache.recordLarge(head: head, for: relative, version: version)
        }
        return head
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

}

extension BootRootReader {
    /// The root-joined path of `relative`, for messages.
    func joined(_ relative: String) -> String { root == "/" ? "/" + relative : root + "/" + relative }
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
