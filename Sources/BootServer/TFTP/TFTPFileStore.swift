import BootProtocols
import CLinux
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

/// An open file, closed when the last transfer using it lets go.
final class TFTPOpenFile: Sendable {
    let descriptor: CInt
    let size: UInt64

    init(descriptor: CInt, size: UInt64) {
        self.descriptor = descriptor
        self.size = size
    }

    deinit {
        close(descriptor)
    }
}

/// What a transfer reads from: a cached buffer (slices, no copy) or an open file (one pread per block).
enum TFTPServedContent: TFTPContentSource, Sendable {
    case memory(ByteBuffer)
    case file(TFTPOpenFile)

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
            var buffer = ByteBufferAllocator().buffer(capacity: count)
            var error: CInt = 0
            let copied = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { pointer -> Int in
                var done = 0
                while done < count {
                    let result = pread(file.descriptor, pointer.baseAddress! + done, count - done, off_t(offset) + off_t(done))
                    if result > 0 {
                        done += result
                    } else if result == 0 {
                        break  // the file shrank under us
                    } else if errno != EINTR {
                        error = errno
                        break
                    }
                }
                return done
            }
            guard copied == count else {
                if error != 0 { throw TFTPContentError("pread at \(offset): \(String(cString: strerror(error)))") }
                throw TFTPContentError("file shrank: \(copied) of \(count) bytes at offset \(offset)")
            }
            return buffer
        }
    }
}

/// Resolves request paths inside the root and opens them, keeping small files in memory.
///
/// Confined to the listener's event loop (not thread-safe). Path rules, as tftp-hpa with `-s`:
/// backslashes become '/', a leading '/' is relative to the root, any '..' component is refused, and the
/// resolved path (symlinks followed) must still be inside the root.
///
/// A request is one `openat2(RESOLVE_BENEATH)` below a descriptor of the root: the kernel enforces the
/// confinement, so a miss costs one system call instead of realpath's readlink per path component (a
/// pxelinux config walk is ten misses per node). What it refuses (an absolute symlink, even one that
/// points inside) or cannot do (ENOSYS) goes the realpath way, which gives the exact same answers.
final class TFTPFileStore {
    struct CacheEntry {
        var size: Int64
        var modified: timespec
        var content: ByteBuffer
        var lastUse: UInt64
    }

    /// Cache key: the file itself, however it was reached (symlinks, generations, either resolution).
    struct FileKey: Hashable {
        var device: UInt64
        var inode: UInt64
    }

    let root: String
    let cacheFileLimit: Int
    let cacheTotalLimit: Int
    let requireWorldReadable: Bool
    private var cache: [FileKey: CacheEntry] = [:]
    private var cachedBytes = 0
    private var useCounter: UInt64 = 0
    private(set) var cacheHits: UInt64 = 0
    private(set) var cacheMisses: UInt64 = 0
    /// An `O_PATH` descriptor of the root, checked against the root's path at most once a second, so a
    /// root removed and made again (or a directory mounted over it) is followed as the path would be.
    private var rootDescriptor: CInt = -1
    private var rootIdentity: FileKey?
    private var rootCheckedAt = NIODeadline.uptimeNanoseconds(0)

    /// `root` must already be canonical (see `canonicalRoot`).
    init(root: String, cacheFileLimit: Int, cacheTotalLimit: Int, requireWorldReadable: Bool) {
        self.root = root
        self.cacheFileLimit = cacheFileLimit
        self.cacheTotalLimit = cacheTotalLimit
        self.requireWorldReadable = requireWorldReadable
    }

    deinit {
        if rootDescriptor >= 0 { close(rootDescriptor) }
    }

    /// The root with symlinks resolved, or nil if it does not exist.
    static func canonicalRoot(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// The request's path relative to the root, normalised, or why it is refused.
    static func normalise(_ requested: String) throws(TFTPFileError) -> String {
        var components: [Substring] = []
        let slashed = requested.replacingBackslashes()
        for component in slashed.split(separator: "/", omittingEmptySubsequences: true) {
            if component == "." { continue }
            if component == ".." { throw .escapesRoot(path: requested) }
            components.append(component)
        }
        guard !components.isEmpty else { throw .notRegularFile(path: requested) }
        let relative = components.joined(separator: "/")
        // Withheld names answer as a file that is not there, like HTTP's 404.
        if ServedNames.isWithheld(relative) { throw .notFound(path: relative) }
        return relative
    }

    /// Opens `requested` for serving.
    func open(_ requested: String) throws(TFTPFileError) -> TFTPServedContent {
        let relative = try Self.normalise(requested)
        let flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY  // O_NONBLOCK: a FIFO cannot block the loop in open()
        var descriptor: CInt = -1
        if let directory = currentRootDescriptor() {
            descriptor = ib_open_beneath(directory, relative, flags)
            if descriptor < 0 {
                switch errno {
                case ENOENT, ENOTDIR: throw .notFound(path: relative)
                case EACCES, EPERM: throw .permissionDenied(path: relative)
                default: break  // EXDEV, ELOOP, EAGAIN, ENOSYS...: resolve it the long way for the exact answer
                }
            }
        }
        if descriptor < 0 {
            descriptor = try openResolvingPath(relative, flags: flags)
        }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else {
            let code = errno
            close(descriptor)
            throw .readFailed(path: relative, errno: code)
        }
        let fileTypeMask: mode_t = 0o170000, regularFile: mode_t = 0o100000, othersRead: mode_t = 0o004
        guard info.st_mode & fileTypeMask == regularFile else {
            close(descriptor)
            throw .notRegularFile(path: relative)
        }
        guard !requireWorldReadable || info.st_mode & othersRead != 0 else {
            close(descriptor)
            throw .notWorldReadable(path: relative)
        }
        let size = Int64(info.st_size)
        guard size <= Int64(cacheFileLimit) else {
            return .file(TFTPOpenFile(descriptor: descriptor, size: UInt64(size)))
        }
        defer { close(descriptor) }
        useCounter += 1
        // Keyed by the file and checked against size and mtime, so an atomic rename (publish) or an edit
        // in place is seen on the next request.
        let key = FileKey(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
        if var entry = cache[key], entry.size == size,
           entry.modified.tv_sec == info.st_mtim.tv_sec, entry.modified.tv_nsec == info.st_mtim.tv_nsec {
            cacheHits += 1
            entry.lastUse = useCounter
            cache[key] = entry
            return .memory(entry.content)
        }
        cacheMisses += 1
        let content = try readWhole(descriptor, size: Int(size), path: relative)
        insert(CacheEntry(size: size, modified: info.st_mtim, content: content, lastUse: useCounter), for: key)
        return .memory(content)
    }

    /// The realpath way: resolve, check the result is under the root, open it.
    private func openResolvingPath(_ relative: String, flags: CInt) throws(TFTPFileError) -> CInt {
        let joined = root == "/" ? "/" + relative : root + "/" + relative
        guard let resolvedPointer = realpath(joined, nil) else {
            switch errno {
            case EACCES: throw .permissionDenied(path: relative)
            default: throw .notFound(path: relative)  // ENOENT, ENOTDIR, ELOOP: nothing servable there
            }
        }
        let resolved = String(cString: resolvedPointer)
        free(resolvedPointer)
        guard root == "/" || resolved.hasPrefix(root + "/") else {
            throw .symlinkLeavesRoot(path: relative, target: resolved)
        }
        let descriptor = Glibc.open(resolved, flags)
        guard descriptor >= 0 else {
            switch errno {
            case EACCES, EPERM: throw .permissionDenied(path: relative)
            case ENOENT: throw .notFound(path: relative)
            default: throw .readFailed(path: relative, errno: errno)
            }
        }
        return descriptor
    }

    /// The root's descriptor for `openat2`, re-opened when the path names another directory than it did.
    private func currentRootDescriptor() -> CInt? {
        let now = NIODeadline.now()
        if rootDescriptor >= 0, now - rootCheckedAt < .seconds(1) { return rootDescriptor }
        rootCheckedAt = now
        var info = stat()
        guard stat(root, &info) == 0 else { return nil }
        let identity = FileKey(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
        if rootDescriptor >= 0, identity == rootIdentity { return rootDescriptor }
        if rootDescriptor >= 0 { close(rootDescriptor) }
        rootDescriptor = ib_open_directory_path(root)
        rootIdentity = rootDescriptor >= 0 ? identity : nil
        return rootDescriptor >= 0 ? rootDescriptor : nil
    }

    private func readWhole(_ descriptor: CInt, size: Int, path: String) throws(TFTPFileError) -> ByteBuffer {
        let (buffer, failure) = preadBuffer(descriptor, offset: 0, count: size)
        if failure != 0 { throw .readFailed(path: path, errno: failure) }
        return buffer
    }

    private func insert(_ entry: CacheEntry, for key: FileKey) {
        if let old = cache.removeValue(forKey: key) { cachedBytes -= old.content.readableBytes }
        let size = entry.content.readableBytes
        guard size <= cacheTotalLimit else { return }
        // Evict least recently used entries until it fits; the cache holds at most a few hundred files.
        while cachedBytes + size > cacheTotalLimit, let victim = cache.min(by: { $0.value.lastUse < $1.value.lastUse }) {
            cache.removeValue(forKey: victim.key)
            cachedBytes -= victim.value.content.readableBytes
        }
        cache[key] = entry
        cachedBytes += size
    }
}

extension String {
    /// DOS and Windows PXE clients send `pxelinux.cfg\default`.
    fileprivate func replacingBackslashes() -> String {
        guard utf8.contains(0x5C) else { return self }
        return String(decoding: utf8.map { $0 == 0x5C ? 0x2F : $0 }, as: UTF8.self)
    }
}
