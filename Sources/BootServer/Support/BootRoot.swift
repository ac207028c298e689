import CLinux
import Glibc
import NIOCore
import Synchronization

/// One version of one file: what the cache keys its entries on and checks on every hit. A publish
/// switches `.publish/current` (new inodes behind the same names); an edit in place changes the size or
/// the mtime. Either is a new version.
struct BootFileVersion: Hashable, Sendable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modifiedSeconds: Int
    var modifiedNanoseconds: Int

    init(_ info: stat) {
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        modifiedSeconds = info.st_mtim.tv_sec
        modifiedNanoseconds = info.st_mtim.tv_nsec
    }
}

/// Why `BootRootReader` does not serve a path. Each protocol maps it to its own answer (TFTP error
/// codes in `TFTPFileError`, HTTP statuses in `RootFileProvider`).
enum BootRootRefusal: Error, Hashable {
    /// Nothing there, or a withheld name (`ServedNames`): answered as missing.
    case notFound
    /// A `..` component, a NUL byte, or an absolute name.
    case escapesRoot
    /// A symlink that resolves to `target`, outside the root.
    case leavesRoot(target: String)
    /// A directory, device, FIFO or socket.
    case notRegularFile(isDirectory: Bool)
    case notWorldReadable
    case permissionDenied
    case readFailed(errno: CInt)
}

/// A served file, open; closed when the last user lets go.
final class BootRootFile: Sendable {
    let descriptor: CInt
    let version: BootFileVersion
    /// The name it was opened by, relative to the root (for messages).
    let relative: String

    init(descriptor: CInt, version: BootFileVersion, relative: String) {
        self.descriptor = descriptor
        self.version = version
        self.relative = relative
    }

    deinit { close(descriptor) }

    var size: UInt64 { UInt64(version.size) }

    /// Exactly `count` bytes at `offset`, or an error (a read error, or the file shrank).
    func read(at offset: Int, count: Int) throws(FileReadError) -> ByteBuffer {
        let (buffer, failure) = preadBuffer(descriptor, offset: offset, count: count)
        guard buffer.readableBytes == count else {
            throw FileReadError(path: relative, offset: offset, message: failure != 0 ? String(cString: strerror(failure)) : "file shrank")
        }
        return buffer
    }
}

/// What was read from the root, by name: small files' bytes, and what HTTP answered a plain GET of a
/// file version with. Every entry holds the version it was made from; `BootRootReader.cached` hands it
/// out only while the name still leads to that version, so a publish or an edit is seen on the next
/// request. Bounded: content bytes by `totalLimit` (least recently used out first), entries without
/// content (large files' recorded heads) by `headLimit` (all dropped when it is reached: the router
/// records them again).
final class BootRootCache: Sendable {
    struct Entry: Sendable {
        var version: BootFileVersion
        /// The whole file, when it is at most `fileLimit` bytes; nil for a large file known by its head.
        var content: ByteBuffer?
        /// HTTP: the head of a 200 answer to a plain GET of this version, once the router served it
        /// (`ResponseHead.file`): from then on `FastPath` answers the file.
        var head: ByteBuffer?
        var lastUse: UInt64
    }

    private struct State {
        var entries: [String: Entry] = [:]
        var bytes = 0
        var headOnly = 0
        var clock: UInt64 = 0

        mutating func remove(_ relative: String) {
            guard let old = entries.removeValue(forKey: relative) else { return }
            if let content = old.content { bytes -= content.readableBytes } else { headOnly -= 1 }
        }

        func leastRecentlyUsedContent() -> String? {
            var victim: (name: String, lastUse: UInt64)?
            for (name, entry) in entries where entry.content != nil && entry.lastUse < victim?.lastUse ?? .max {
                victim = (name, entry.lastUse)
            }
            return victim?.name
        }
    }

    let fileLimit: Int64
    let totalLimit: Int
    let headLimit: Int
    private let state = Mutex(State())

    init(fileLimit: Int64, totalLimit: Int, headLimit: Int = 4096) {
        self.fileLimit = fileLimit
        self.totalLimit = totalLimit
        self.headLimit = headLimit
    }

    /// The entry kept for `relative`, whatever version it is of (marked used); no file system access.
    func entry(_ relative: String) -> Entry? {
        state.withLock { state in
            guard let index = state.entries.index(forKey: relative) else { return nil }
            state.clock += 1
            state.entries.values[index].lastUse = state.clock
            return state.entries.values[index]
        }
    }

    /// Keeps a small file's bytes (replacing what was kept for the name).
    func insert(_ relative: String, version: BootFileVersion, content: ByteBuffer) {
        let size = content.readableBytes
        guard size <= totalLimit else { return }
        state.withLock { state in
            state.remove(relative)
            // Least recently used content out until it fits; the cache holds at most a few hundred files.
            while state.bytes + size > totalLimit, let victim = state.leastRecentlyUsedContent() {
                state.remove(victim)
            }
            state.clock += 1
            state.entries[relative] = Entry(version: version, content: content, lastUse: state.clock)
            state.bytes += size
        }
    }

    /// Keeps HTTP's head for a plain GET of this version of a cached small file.
    func record(head: ByteBuffer, for relative: String, matching version: BootFileVersion) {
        state.withLock { state in
            guard let index = state.entries.index(forKey: relative), state.entries.values[index].version == version,
                  state.entries.values[index].content != nil else { return }
            state.entries.values[index].head = head
        }
    }

    /// Keeps HTTP's answer to a plain GET of a file sent with sendfile next time: a large one (an entry
    /// without content) or a small one HTTP wants to see every download of (`images/`; its content stays).
    func recordLarge(head: ByteBuffer, for relative: String, version: BootFileVersion) {
        state.withLock { state in
            if let index = state.entries.index(forKey: relative), state.entries.values[index].version == version,
               state.entries.values[index].content != nil {
                state.entries.values[index].head = head
                return
            }
            if state.headOnly >= headLimit {
                state.entries = state.entries.filter { $0.value.content != nil }
                state.headOnly = 0
            }
            state.remove(relative)
            state.clock += 1
            state.entries[relative] = Entry(version: version, content: nil, head: head, lastUse: state.clock)
            state.headOnly += 1
        }
    }

    /// Content bytes held.
    var bytes: Int { state.withLock { $0.bytes } }
}

/// The one reader of the boot root, for TFTP and HTTP alike: it decides what may be served, and keeps
/// what was read. Protocol layers turn their request syntax (TFTP's backslashes and leading `/`,
/// HTTP's percent-encoding and query) into a path relative to the root, hand it here, and map a
/// `BootRootRefusal` to their own answer.
///
/// The rule, the same for both protocols:
/// - Names: a NUL byte, any `..` component or an absolute name is refused; withheld names
///   (`ServedNames`: hidden components, `publish.json`) answer as missing.
/// - Confinement: one `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` below a descriptor of the
///   root, so the kernel refuses anything that leaves it, and a miss costs one system call. Symlinks
///   that stay inside are followed. What openat2 refuses but may still be inside (an absolute symlink
///   into the root) or cannot do (ENOSYS) is resolved with realpath(3), checked to be under the root,
///   and opened beneath the root again, so the answers are the same either way.
/// - Files: regular files only (no directories, devices, FIFOs, sockets), world-readable only (as
///   tftp-hpa without `-p`: the server usually runs as root, so permissions are the admin's way to keep
///   a file out of reach). Checked on the `fstat` after the open, and on every cache hit.
///
/// A cached name costs one `fstatat` per request: its entry is used while that finds the same version
/// (device, inode, size, mtime) and a mode that may still be served. That the name still leads to that
/// very inode is enough: its bytes were confined when they were read. Safe to use from any thread.
final class BootRootReader: Sendable {
    let root: String
    let cache: BootRootCache
    let requireWorldReadable: Bool
    private let rootState = Mutex(RootState())

    private final class RootHandle: Sendable {
        let descriptor: CInt
        init(_ descriptor: CInt) { self.descriptor = descriptor }
        deinit { close(descriptor) }
    }

    /// An `O_PATH` descriptor of the root, checked against the root's path at most once a second, so a
    /// root removed and made again (or a directory mounted over it) is followed as the path would be.
    private struct RootState {
        var handle: RootHandle?
        var device: UInt64 = 0
        var inode: UInt64 = 0
        var checkedAt = NIODeadline.uptimeNanoseconds(0)
    }

    /// - Parameter root: must already be canonical (see `canonicalRoot`).
    init(root: String, cache: BootRootCache, requireWorldReadable: Bool = true) {
        self.root = root
        self.cache = cache
        self.requireWorldReadable = requireWorldReadable
    }

    /// The root with symlinks resolved, or nil if it does not exist.
    static func canonicalRoot(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// Why a file of this mode is not served, or nil.
    func refusal(mode: mode_t) -> BootRootRefusal? {
        let type = mode & S_IFMT
        guard type == S_IFREG else { return .notRegularFile(isDirectory: type == S_IFDIR) }
        guard !requireWorldReadable || mode & S_IROTH != 0 else { return .notWorldReadable }
        return nil
    }

    /// Why the name alone is not served, or nil.
    static func refusal(name relative: String) -> BootRootRefusal? {
        if relative.utf8.first == UInt8(ascii: "/") { return .escapesRoot }
        switch ServedNames.classify(relative) {
        case .servable: return nil
        case .withheld: return .notFound
        case .escapes: return .escapesRoot
        case .root: return .notRegularFile(isDirectory: true)
        }
    }

    /// What an entry must hold to be of use to the caller.
    enum Need {
        /// A small file's bytes.
        case content
        /// HTTP's recorded head.
        case head
    }

    /// What the cache keeps for `relative`, if it holds what the caller needs and the name still leads
    /// to that version and it may still be served: one `fstatat`, and none when the cache has nothing
    /// of use for the name.
    func cached(_ relative: String, needing need: Need = .content) -> BootRootCache.Entry? {
        guard Self.refusal(name: relative) == nil, let entry = cache.entry(relative),
              need == .content ? entry.content != nil : entry.head != nil,
              let handle = rootHandle() else { return nil }
        var info = stat()
        guard fstatat(handle.descriptor, relative, &info, 0) == 0, refusal(mode: info.st_mode) == nil,
              BootFileVersion(info) == entry.version else { return nil }
        return entry
    }

    /// Opens `relative` if it may be served.
    func open(_ relative: String) throws(BootRootRefusal) -> BootRootFile {
        let (descriptor, version) = try openDescriptor(relative)
        return BootRootFile(descriptor: descriptor, version: version, relative: relative)
    }

    /// `open`, handing the caller the descriptor to close.
    func openDescriptor(_ relative: String) throws(BootRootRefusal) -> (descriptor: CInt, version: BootFileVersion) {
        if let refusal = Self.refusal(name: relative) { throw refusal }
        let flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY  // O_NONBLOCK: a FIFO cannot block in open()
        let handle = rootHandle()
        var descriptor: CInt = -1
        if let handle {
            descriptor = ib_open_beneath(handle.descriptor, relative, flags)
            if descriptor < 0 {
                switch errno {
                case ENOENT, ENOTDIR: throw .notFound
                case EACCES, EPERM: throw .permissionDenied
                default: break  // EXDEV, ELOOP, EAGAIN, ENOSYS...: resolve it the long way for the exact answer
                }
            }
        }
        if descriptor < 0 {
            descriptor = try openResolvingPath(relative, flags: flags, beneath: handle)
        }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else {
            let code = errno
            close(descriptor)
            throw .readFailed(errno: code)
        }
        if let refusal = refusal(mode: info.st_mode) {
            close(descriptor)
            throw refusal
        }
        return (descriptor, BootFileVersion(info))
    }

    /// A descriptor of `relative` if it is still `version` and may be served (HTTP's recorded large files).
    func openDescriptor(_ relative: String, matching version: BootFileVersion) -> CInt? {
        guard let (descriptor, current) = try? openDescriptor(relative) else { return nil }
        guard current == version else {
            close(descriptor)
            return nil
        }
        return descriptor
    }

    enum Content {
        /// From the cache.
        case cached(ByteBuffer)
        /// Read now (and cached).
        case read(ByteBuffer)
        /// Larger than the cache's file limit: read it as it is sent.
        case file(BootRootFile)
    }

    /// A small file's bytes (from the cache, or read whole and cached), or a larger file open.
    func content(_ relative: String) throws(BootRootRefusal) -> Content {
        if let entry = cached(relative), let content = entry.content { return .cached(content) }
        let file = try open(relative)
        guard file.version.size <= cache.fileLimit else { return .file(file) }
        let content = try readWhole(file)
        cache.insert(relative, version: file.version, content: content)
        return .read(content)
    }

    /// All of `file` (its size when opened; a file that shrank since is a read error).
    func readWhole(_ file: BootRootFile) throws(BootRootRefusal) -> ByteBuffer {
        let (buffer, failure) = preadBuffer(file.descriptor, offset: 0, count: Int(file.version.size))
        if failure != 0 { throw .readFailed(errno: failure) }
        guard buffer.readableBytes == Int(file.version.size) else { throw .readFailed(errno: EIO) }
        return buffer
    }

    /// The realpath way: resolve, check the result is under the root, open it below the root.
    private func openResolvingPath(_ relative: String, flags: CInt, beneath handle: RootHandle?) throws(BootRootRefusal) -> CInt {
        let prefix = root == "/" ? "/" : root + "/"
        guard let resolvedPointer = realpath(prefix + relative, nil) else {
            switch errno {
            case EACCES: throw .permissionDenied
            default: throw .notFound  // ENOENT, ENOTDIR, ELOOP: nothing servable there
            }
        }
        let resolved = String(cString: resolvedPointer)
        free(resolvedPointer)
        if resolved == root { throw .notRegularFile(isDirectory: true) }
        guard resolved.utf8.starts(with: prefix.utf8) else { throw .leavesRoot(target: resolved) }
        var descriptor: CInt = -1
        var code: CInt = ENOSYS
        if let handle {
            // Below the root again: a symlink swapped in since realpath cannot lead out.
            descriptor = ib_open_beneath(handle.descriptor, String(decoding: resolved.utf8.dropFirst(prefix.utf8.count), as: UTF8.self), flags)
            code = descriptor < 0 ? errno : 0
        }
        if descriptor < 0 && code == ENOSYS {
            descriptor = Glibc.open(resolved, flags)
            code = descriptor < 0 ? errno : 0
        }
        guard descriptor >= 0 else {
            switch code {
            case EACCES, EPERM: throw .permissionDenied
            case ENOENT, ENOTDIR: throw .notFound
            case EXDEV, ELOOP: throw .leavesRoot(target: resolved)
            default: throw .readFailed(errno: code)
            }
        }
        return descriptor
    }

    /// The root's descriptor for `openat2` and `fstatat`, re-opened when the path names another
    /// directory than it did; nil while the root does not exist.
    private func rootHandle() -> RootHandle? {
        let now = NIODeadline.now()
        return rootState.withLock { state in
            if state.handle != nil, now - state.checkedAt < .seconds(1) { return state.handle }
            state.checkedAt = now
            var info = stat()
            guard stat(root, &info) == 0 else {
                state.handle = nil
                return nil
            }
            if state.handle != nil, UInt64(info.st_dev) == state.device, UInt64(info.st_ino) == state.inode { return state.handle }
            let descriptor = ib_open_directory_path(root)
            state.handle = descriptor >= 0 ? RootHandle(descriptor) : nil
            state.device = UInt64(info.st_dev)
            state.inode = UInt64(info.st_ino)
            return state.handle
        }
    }
}
