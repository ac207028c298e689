import CArchive
import Foundation

/// Errors while assembling a root filesystem.
public enum RootfsError: Error, CustomStringConvertible, Equatable {
    case escapes(entry: String, source: String)
    case symlinkLoop(path: String)
    case notADirectory(path: String)
    case system(operation: String, path: String, errno: Int32)
    case unknownOwner(name: String, kind: String, location: ConfigLocation?)
    case commandFailed(command: String, status: Int32, location: ConfigLocation?)
    case notRemovable(path: String)
    /// A file name or link target that is not UTF-8 (the archives imagebuild writes name files by UTF-8
    /// strings); `path` shows the bad bytes as U+FFFD.
    case notUTF8(path: String, what: String)

    public var description: String {
        switch self {
        case .escapes(let entry, let source):
            return "\(source): entry '\(entry)' would be written outside the root filesystem; refused"
        case .symlinkLoop(let path):
            return "\(path): too many levels of symbolic links inside the root filesystem"
        case .notADirectory(let path):
            return "\(path): a path component is not a directory"
        case .system(let operation, let path, let code):
            return "\(operation) \(path): \(String(cString: strerror(code)))"
        case .unknownOwner(let name, let kind, let location):
            return "\(location.map { "\($0): " } ?? "")unknown \(kind) '\(name)' (not in the rootfs's /etc/\(kind == "user" ? "passwd" : "group"))"
        case .commandFailed(let command, let status, let location):
            return "\(location.map { "\($0): " } ?? "")command failed with status \(status): \(command)"
        case .notRemovable(let path):
            return "\(path): names the root filesystem itself or what holds it, not a file in it; not removed"
        case .notUTF8(let path, let what):
            return "\(path): its \(what) is not valid UTF-8 (shown here with U+FFFD); a tar image or an initramfs needs UTF-8 "
                + "names and link targets: rename it in the tree, or build the image as squashfs or erofs, which keep names as bytes"
        }
    }
}

/// A root filesystem being assembled in a host directory.
///
/// Every write goes through `resolve`, which follows symlinks the way the
/// kernel would inside a chroot of this tree: an absolute link target starts
/// at the tree's root and `..` stops there. So a hostile archive (absolute
/// names, `..`, a symlink to `/etc` followed by `etc/passwd`) can never touch
/// the build host. Ownership and device nodes are also recorded in `overrides`,
/// so an unprivileged build still produces archives with the right owners.
public final class RootfsTree {
    public let root: String
    public struct Override: Sendable, Equatable {
        public var uid: UInt32
        public var gid: UInt32
        public var device: EntryKind?
    }
    /// Keyed by the path inside the tree ("/etc/shadow").
    public private(set) var overrides: [String: Override] = [:]
    let privileged = geteuid() == 0

    public init(root: String) throws {
        self.root = root
        do {
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        } catch {
            throw RootfsError.system(operation: "mkdir", path: root, errno: EACCES)
        }
    }

    public func hostPath(_ inner: String) -> String { inner == "/" ? root : root + inner }

    static func posix(_ operation: String, _ path: String, _ body: () -> Bool) throws {
        if !body() { throw RootfsError.system(operation: operation, path: path, errno: errno) }
    }

    /// Normalises an archive member name to an absolute path inside the tree.
    /// Leading `/` and `./` are dropped as tar does; a `..` that climbs out is refused.
    public static func memberPath(_ name: String, source: String) throws -> String {
        var parts: [Substring] = []
        for part in name.split(separator: "/") where part != "." && !part.isEmpty {
            if part == ".." {
                if parts.isEmpty { throw RootfsError.escapes(entry: name, source: source) }
                parts.removeLast()
            } else {
                parts.append(part)
            }
        }
        return "/" + parts.joined(separator: "/")
    }

    /// Resolves `path` inside the tree with chroot semantics. The last component
    /// is followed only when `followLast` is set (writes replace a final symlink).
    public func resolve(_ path: String, followLast: Bool) throws -> String {
        var pending = path.split(separator: "/").map(String.init).reversed() as [String]
        var resolved: [String] = []
        var hops = 0
        while let part = pending.popLast() {
            if part == "." || part.isEmpty { continue }
            if part == ".." { if !resolved.isEmpty { resolved.removeLast() }; continue }
            let candidate = "/" + (resolved + [part]).joined(separator: "/")
            let isLast = pending.isEmpty
            var info = stat()
            if (followLast || !isLast), lstat(hostPath(candidate), &info) == 0, (info.st_mode & S_IFMT) == S_IFLNK {
                hops += 1
                if hops > 40 { throw RootfsError.symlinkLoop(path: path) }
                let target = try readLink(candidate)
                if target.hasPrefix("/") { resolved.removeAll() }
                pending.append(contentsOf: target.split(separator: "/").map(String.init).reversed())
                continue
            }
            resolved.append(part)
        }
        return "/" + resolved.joined(separator: "/")
    }

    func readLink(_ inner: String) throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(hostPath(inner), &buffer, buffer.count - 1)
        if n < 0 { throw RootfsError.system(operation: "readlink", path: inner, errno: errno) }
        let bytes = buffer[0..<n].map { UInt8(bitPattern: $0) }
        // Never a target silently changed into another one (U+FFFD for the bad bytes).
        guard let target = String(validating: bytes, as: UTF8.self) else { throw RootfsError.notUTF8(path: inner, what: "link target") }
        return target
    }

    /// The names in the tree's directory `inner`, as the directory holds them (no "." or ".."); a name
    /// that is not UTF-8 is an error naming it, never a name decoded into another one.
    func names(in inner: String) throws -> [String] {
        guard let directory = opendir(hostPath(inner)) else { throw RootfsError.system(operation: "list", path: inner, errno: errno) }
        defer { closedir(directory) }
        var names: [String] = []
        while true {
            errno = 0
            guard let entry = readdir(directory) else {
                if errno != 0 { throw RootfsError.system(operation: "list", path: inner, errno: errno) }
                return names
            }
            let bytes = withUnsafeBytes(of: &entry.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
            if bytes == Array(".".utf8) || bytes == Array("..".utf8) { continue }
            guard let name = String(validating: bytes, as: UTF8.self) else {
                throw RootfsError.notUTF8(path: (inner == "/" ? "/" : inner + "/") + String(decoding: bytes, as: UTF8.self), what: "name")
            }
            names.append(name)
        }
    }

    func fileType(_ inner: String) -> mode_t? {
        var info = stat()
        return lstat(hostPath(inner), &info) == 0 ? info.st_mode & S_IFMT : nil
    }

    /// Creates `inner` and its missing parents as directories (parents 0755).
    @discardableResult
    public func makeDirectories(_ path: String, mode: UInt32 = 0o755) throws -> String {
        let inner = try resolve(path, followLast: true)
        var current = ""
        for part in inner.split(separator: "/") {
            current += "/" + part
            switch fileType(current) {
            case S_IFDIR: continue
            case nil:
                try Self.posix("mkdir", current) { mkdir(hostPath(current), 0o755) == 0 || errno == EEXIST }
            default:
                // A file where a directory must be: replaced, as tar does.
                try removeTree(current)
                try Self.posix("mkdir", current) { mkdir(hostPath(current), 0o755) == 0 }
            }
        }
        try Self.posix("chmod", inner) { chmod(hostPath(inner), mode_t(mode)) == 0 }
        return inner
    }

    /// The place to create a new entry named `path`: parents resolved and
    /// created, whatever stands at the final name removed (unless a directory
    /// is wanted and one is there).
    func prepareEntry(_ path: String, keepDirectory: Bool = false) throws -> String {
        let parent = (path as NSString).deletingLastPathComponent
        let name = (path as NSString).lastPathComponent
        let resolvedParent = try makeDirectories(parent.isEmpty ? "/" : parent, mode: 0o755, keepMode: true)
        let inner = resolvedParent == "/" ? "/" + name : resolvedParent + "/" + name
        if let type = fileType(inner), !(keepDirectory && type == S_IFDIR) {
            try removeTree(inner)
        }
        return inner
    }

    func makeDirectories(_ path: String, mode: UInt32, keepMode: Bool) throws -> String {
        if !keepMode { return try makeDirectories(path, mode: mode) }
        let inner = try resolve(path, followLast: true)
        if fileType(inner) == S_IFDIR { return inner }
        var current = ""
        for part in inner.split(separator: "/") {
            current += "/" + part
            if fileType(current) == S_IFDIR { continue }
            if fileType(current) != nil { try removeTree(current) }
            try Self.posix("mkdir", current) { mkdir(hostPath(current), 0o755) == 0 || errno == EEXIST }
        }
        return inner
    }

    /// Removes a file, link or whole directory inside the tree (never follows links).
    public func removeTree(_ inner: String) throws {
        let host = hostPath(inner)
        guard let type = fileType(inner) else { return }
        if type == S_IFDIR {
            for name in try FileManager.default.contentsOfDirectory(atPath: host) {
                try removeTree(inner == "/" ? "/" + name : inner + "/" + name)
            }
            if inner != "/" { try Self.posix("rmdir", inner) { rmdir(host) == 0 } }
        } else {
            try Self.posix("unlink", inner) { unlink(host) == 0 }
        }
        let prefix = inner + "/"
        overrides = overrides.filter { $0.key != inner && !$0.key.hasPrefix(prefix) }
    }

    /// Removes `path` as a recipe asks: a symlink itself, not its target.
    public func remove(_ path: String) throws {
        let name = (path as NSString).lastPathComponent
        // Joined to the resolved parent, "/.." would name the folder holding the tree, "/." or "/" the tree.
        guard !["", ".", "..", "/"].contains(name) else { throw RootfsError.notRemovable(path: path) }
        let parent = try resolve((path as NSString).deletingLastPathComponent, followLast: true)
        let inner = (parent == "/" ? "" : parent) + "/" + name
        try removeTree(inner)
    }

    public func setOwner(_ inner: String, uid: UInt32, gid: UInt32) {
        if privileged { _ = lchown(hostPath(inner), uid, gid) }
        if uid != 0 || gid != 0 || !privileged {
            var entry = overrides[inner] ?? Override(uid: uid, gid: gid, device: nil)
            entry.uid = uid
            entry.gid = gid
            overrides[inner] = entry
        }
    }

    /// Writes a regular file, streaming its content.
    public func writeFile(_ path: String, mode: UInt32, uid: UInt32 = 0, gid: UInt32 = 0, mtime: Int64? = nil,
                          content: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
        let inner = try prepareEntry(path)
        let host = hostPath(inner)
        let fd = open(host, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if fd < 0 { throw RootfsError.system(operation: "create", path: inner, errno: errno) }
        var closed = false
        defer { if !closed { close(fd) } }
        try content { chunk in
            var offset = 0
            while offset < chunk.count {
                let n = Foundation.write(fd, chunk.baseAddress! + offset, chunk.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw RootfsError.system(operation: "write", path: inner, errno: errno)
                }
                offset += n
            }
        }
        // Owner before mode: chown clears the setuid and setgid bits.
        setOwner(inner, uid: uid, gid: gid)
        try Self.posix("chmod", inner) { fchmod(fd, mode_t(mode & 0o7777)) == 0 }
        closed = true
        try Self.posix("close", inner) { close(fd) == 0 }
        if let mtime { setMtime(inner, mtime) }
    }

    public func writeFile(_ path: String, data: Data, mode: UInt32, uid: UInt32 = 0, gid: UInt32 = 0) throws {
        try writeFile(path, mode: mode, uid: uid, gid: gid) { sink in try data.withUnsafeBytes(sink) }
    }

    /// Copies a host file in (content, not ownership: that comes from the recipe).
    public func copyFile(from source: String, to path: String, mode: UInt32, uid: UInt32 = 0, gid: UInt32 = 0) throws {
        let fd = open(source, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw RootfsError.system(operation: "open", path: source, errno: errno) }
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        try writeFile(path, mode: mode, uid: uid, gid: gid) { sink in
            while true {
                let n = read(fd, buffer.baseAddress, buffer.count)
                if n < 0 { if errno == EINTR { continue }; throw RootfsError.system(operation: "read", path: source, errno: errno) }
                if n == 0 { break }
                try sink(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            }
        }
    }

    public func symlink(_ path: String, target: String, uid: UInt32 = 0, gid: UInt32 = 0, mtime: Int64? = nil) throws {
        let inner = try prepareEntry(path)
        try Self.posix("symlink", inner) { Foundation.symlink(target, hostPath(inner)) == 0 }
        setOwner(inner, uid: uid, gid: gid)
        if let mtime { setMtime(inner, mtime) }
    }

    public func hardlink(_ path: String, to existing: String, source: String) throws {
        let target = try resolve(existing, followLast: false)
        guard fileType(target) != nil else {
            throw RootfsError.system(operation: "link to", path: existing, errno: ENOENT)
        }
        let inner = try prepareEntry(path)
        try Self.posix("link", inner) { link(hostPath(target), hostPath(inner)) == 0 }
        if let entry = overrides[target] { overrides[inner] = entry }
    }

    /// Device nodes and FIFOs: created for real when privileged, else recorded
    /// and stood in for by an empty file so archives still carry them.
    public func special(_ path: String, kind: EntryKind, mode: UInt32, uid: UInt32, gid: UInt32) throws {
        let inner = try prepareEntry(path)
        var created = false
        if privileged {
            switch kind {
            case .characterDevice(let major, let minor):
                created = mknod(hostPath(inner), S_IFCHR | mode_t(mode), ib_makedev(major, minor)) == 0
            case .blockDevice(let major, let minor):
                created = mknod(hostPath(inner), S_IFBLK | mode_t(mode), ib_makedev(major, minor)) == 0
            case .fifo:
                created = mkfifo(hostPath(inner), mode_t(mode)) == 0
            default: return
            }
        }
        if !created {
            try writeFile(path, mode: mode) { _ in }
            overrides[inner] = Override(uid: uid, gid: gid, device: kind)
        } else {
            setOwner(inner, uid: uid, gid: gid)
        }
    }

    func setMtime(_ inner: String, _ mtime: Int64) {
        var times = [timespec(tv_sec: Int(mtime), tv_nsec: 0), timespec(tv_sec: Int(mtime), tv_nsec: 0)]
        _ = utimensat(AT_FDCWD, hostPath(inner), &times, AT_SYMLINK_NOFOLLOW)
    }

    /// Unpacks any archive libarchive reads into the tree (see `resolve` for why this is safe).
    /// `entryFilter` lets OCI layers handle whiteouts; returning false skips an entry.
    public func extract(archive: ArchiveReader, source: String,
                        entryFilter: ((String, ArchiveEntryHeader) throws -> Bool)? = nil) throws {
        while let header = try archive.next() {
            let path = try Self.memberPath(header.path, source: source)
            if path == "/" {
                if case .directory = header.kind { try Self.posix("chmod", "/") { chmod(root, mode_t(header.permissions)) == 0 } }
                continue
            }
            if let entryFilter, try !entryFilter(path, header) { continue }
            switch header.kind {
            case .directory:
                let inner = try prepareEntry(path, keepDirectory: true)
                if fileType(inner) == nil { try Self.posix("mkdir", inner) { mkdir(hostPath(inner), 0o755) == 0 } }
                setOwner(inner, uid: header.uid, gid: header.gid)
                try Self.posix("chmod", inner) { chmod(hostPath(inner), mode_t(header.permissions)) == 0 }
            case .regular:
                try writeFile(path, mode: header.permissions, uid: header.uid, gid: header.gid, mtime: header.mtime) { sink in
                    try archive.readData(sink)
                }
            case .symlink(let target):
                try symlink(path, target: target, uid: header.uid, gid: header.gid, mtime: header.mtime)
            case .hardlink(let target):
                try hardlink(path, to: try Self.memberPath(target, source: source), source: source)
            case .characterDevice, .blockDevice, .fifo:
                try special(path, kind: header.kind, mode: header.permissions, uid: header.uid, gid: header.gid)
            case .socket:
                continue
            }
        }
    }
}
