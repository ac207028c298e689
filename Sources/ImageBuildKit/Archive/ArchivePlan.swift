import Foundation

/// An archive planned in memory before a byte is written, as u-root plans its
/// cpio: path → entry, written in sorted order with parents first and
/// deterministic inode numbers, so the same inputs always give the same bytes.
public struct ArchivePlan {
    public enum Content: Equatable {
        case none
        case data(Data)
        /// A file on the build host, read when the archive is written.
        case hostFile(String)
    }
    public struct Entry: Equatable {
        public var kind: EntryKind
        public var mode: UInt32
        public var uid: UInt32
        public var gid: UInt32
        public var mtime: Int64
        public var size: Int64
        public var content: Content
    }

    public private(set) var entries: [String: Entry] = [:]
    /// mtimes are clamped to this (SOURCE_DATE_EPOCH).
    public let epoch: Int64

    public init(epoch: Int64) { self.epoch = epoch }

    static func normalise(_ path: String) -> String {
        "/" + path.split(separator: "/").filter { $0 != "." && !$0.isEmpty }.joined(separator: "/")
    }

    public var count: Int { entries.count }
    public func contains(_ path: String) -> Bool { entries[Self.normalise(path)] != nil }
    public subscript(_ path: String) -> Entry? { entries[Self.normalise(path)] }

    /// Adds or replaces an entry; missing parents are added as 0755 root directories.
    public mutating func add(_ path: String, _ entry: Entry) {
        let path = Self.normalise(path)
        guard path != "/" else { return }
        var clamped = entry
        clamped.mtime = min(entry.mtime, epoch)
        entries[path] = clamped
        var parent = (path as NSString).deletingLastPathComponent
        while parent != "/" && !parent.isEmpty && entries[parent] == nil {
            entries[parent] = Entry(kind: .directory, mode: 0o755, uid: 0, gid: 0, mtime: epoch, size: 0, content: .none)
            parent = (parent as NSString).deletingLastPathComponent
        }
    }

    public mutating func addDirectory(_ path: String, mode: UInt32 = 0o755, uid: UInt32 = 0, gid: UInt32 = 0) {
        add(path, Entry(kind: .directory, mode: mode, uid: uid, gid: gid, mtime: epoch, size: 0, content: .none))
    }

    public mutating func addData(_ path: String, _ data: Data, mode: UInt32, uid: UInt32 = 0, gid: UInt32 = 0) {
        add(path, Entry(kind: .regular, mode: mode, uid: uid, gid: gid, mtime: epoch, size: Int64(data.count), content: .data(data)))
    }

    public mutating func addText(_ path: String, _ text: String, mode: UInt32 = 0o644) {
        addData(path, Data(text.utf8), mode: mode)
    }

    public mutating func addSymlink(_ path: String, target: String) {
        add(path, Entry(kind: .symlink(target: target), mode: 0o777, uid: 0, gid: 0, mtime: epoch, size: 0, content: .none))
    }

    public mutating func addDevice(_ path: String, _ kind: EntryKind, mode: UInt32) {
        add(path, Entry(kind: kind, mode: mode, uid: 0, gid: 0, mtime: epoch, size: 0, content: .none))
    }

    /// Adds a host file (regular file or symlink) as it is on disk, owned by root.
    public mutating func addHostFile(_ path: String, from host: String, mode: UInt32? = nil) throws {
        var info = stat()
        guard lstat(host, &info) == 0 else { throw RootfsError.system(operation: "stat", path: host, errno: errno) }
        if (info.st_mode & S_IFMT) == S_IFLNK {
            let target = try FileManager.default.destinationOfSymbolicLink(atPath: host)
            add(path, Entry(kind: .symlink(target: target), mode: 0o777, uid: 0, gid: 0, mtime: Int64(info.st_mtim.tv_sec), size: 0, content: .none))
        } else {
            add(path, Entry(kind: .regular, mode: mode ?? UInt32(info.st_mode & 0o7777), uid: 0, gid: 0,
                            mtime: Int64(info.st_mtim.tv_sec), size: Int64(info.st_size), content: .hostFile(host)))
        }
    }

    /// Adds every entry of a rootfs tree, with the owners it recorded. Hard links
    /// become link entries when `hardlinks` is set (tar), copies otherwise (cpio).
    /// Adds an ELF closure's files (read from `root` on the host) and symbolic links at their paths.
    public mutating func addClosure(_ entries: [ELFClosure.Entry], root: String) throws {
        for entry in entries {
            switch entry {
            case .file(let inner): try addHostFile(inner, from: root == "/" ? inner : root + inner)
            case .symlink(let inner, let target): addSymlink(inner, target: target)
            }
        }
    }

    public mutating func addTree(_ tree: RootfsTree, excluding excluded: [String] = [], hardlinks: Bool) throws {
        var seen: [String: String] = [:]   // "dev:ino" -> first path
        let excludedSet = Set(excluded.map(Self.normalise))
        // The walk makes normalised paths, parents first: `add`'s normalising and parent checks (a
        // third of the walk's time on a 50,000-file tree, before the first byte is written) are not needed.
        func insert(_ path: String, _ entry: Entry) {
            var clamped = entry
            clamped.mtime = min(entry.mtime, epoch)
            entries[path] = clamped
        }
        func walk(_ inner: String) throws {
            for name in Self.inByteOrder(try tree.names(in: inner)) {
                let path = inner == "/" ? "/" + name : inner + "/" + name
                if excludedSet.contains(path) { continue }
                var info = stat()
                guard lstat(tree.hostPath(path), &info) == 0 else {
                    throw RootfsError.system(operation: "stat", path: path, errno: errno)
                }
                let override = tree.overrides[path]
                let uid = override?.uid ?? (tree.privileged ? info.st_uid : 0)
                let gid = override?.gid ?? (tree.privileged ? info.st_gid : 0)
                let mode = UInt32(info.st_mode & 0o7777)
                let mtime = Int64(info.st_mtim.tv_sec)
                switch info.st_mode & S_IFMT {
                case S_IFDIR:
                    insert(path, Entry(kind: .directory, mode: mode, uid: uid, gid: gid, mtime: mtime, size: 0, content: .none))
                    try walk(path)
                case S_IFLNK:
                    let target = try tree.readLink(path)
                    insert(path, Entry(kind: .symlink(target: target), mode: 0o777, uid: uid, gid: gid, mtime: mtime, size: 0, content: .none))
                case S_IFREG:
                    if let device = override?.device {
                        insert(path, Entry(kind: device, mode: mode, uid: uid, gid: gid, mtime: mtime, size: 0, content: .none))
                        continue
                    }
                    let key = "\(info.st_dev):\(info.st_ino)"
                    if hardlinks, info.st_nlink > 1, let first = seen[key] {
                        insert(path, Entry(kind: .hardlink(target: first), mode: mode, uid: uid, gid: gid, mtime: mtime, size: 0, content: .none))
                        continue
                    }
                    if info.st_nlink > 1 { seen[key] = path }
                    insert(path, Entry(kind: .regular, mode: mode, uid: uid, gid: gid, mtime: mtime, size: Int64(info.st_size),
                                    content: .hostFile(tree.hostPath(path))))
                case S_IFCHR, S_IFBLK:
                    let major = UInt32(truncatingIfNeeded: (info.st_rdev >> 8) & 0xfff) | UInt32(truncatingIfNeeded: (info.st_rdev >> 32) & ~0xfff)
                    let minor = UInt32(truncatingIfNeeded: info.st_rdev & 0xff) | UInt32(truncatingIfNeeded: (info.st_rdev >> 12) & ~0xff)
                    let kind: EntryKind = (info.st_mode & S_IFMT) == S_IFCHR ? .characterDevice(major: major, minor: minor) : .blockDevice(major: major, minor: minor)
                    insert(path, Entry(kind: kind, mode: mode, uid: uid, gid: gid, mtime: mtime, size: 0, content: .none))
                case S_IFIFO:
                    insert(path, Entry(kind: .fifo, mode: mode, uid: uid, gid: gid, mtime: mtime, size: 0, content: .none))
                default:
                    continue  // sockets do not belong in an image
                }
            }
        }
        try walk("/")
    }

    /// `names` in the byte order of their UTF-8 (the archive's order, whatever the locale), compared as
    /// byte arrays made once each: comparing `String.UTF8View`s in the sort took twice as long as the
    /// whole tree walk around it.
    static func inByteOrder(_ names: some Collection<String>) -> [String] {
        var keyed = names.map { (name: $0, bytes: ContiguousArray($0.utf8)) }
        keyed.sort { $0.bytes.lexicographicallyPrecedes($1.bytes) }
        return keyed.map(\.name)
    }

    /// Total bytes of file content, for progress reporting.
    public var contentBytes: Int64 { entries.values.reduce(0) { $0 + $1.size } }

    /// What the tree takes once unpacked into a tmpfs (`imagebuild.need`, which stage 1 checks against
    /// the node's memory): each file's data in whole 4 KiB pages, and the kernel's own memory for each
    /// name, an inode and a dentry. Measured in a memory cgroup on Linux 6.18: 995 bytes for each empty
    /// file or folder, 1,587 for each symlink; a hard link adds only a dentry (192 bytes). For the
    /// 55,540 names of a 1.6 GiB tree of shared libraries and data that is some 57 MiB, which a count
    /// of data pages alone left out.
    public var tmpfsBytes: Int64 {
        entries.values.reduce(0) { total, entry in
            let name: Int64 = switch entry.kind {
            case .symlink: Self.tmpfsSymlinkBytes
            case .hardlink: Self.tmpfsHardlinkBytes
            default: Self.tmpfsInodeBytes
            }
            return total + (entry.size + 4095) / 4096 * 4096 + name
        }
    }
    static let tmpfsInodeBytes: Int64 = 1024, tmpfsSymlinkBytes: Int64 = 1600, tmpfsHardlinkBytes: Int64 = 256

    /// Writes the plan in sorted order. Names are relative ("bin/busybox"), as
    /// the kernel's initramfs unpacker and tar both expect.
    public func write(format: ArchiveFormat, sink: @escaping (UnsafeRawBufferPointer) throws -> Void,
                      progress: ((Int64) -> Void)? = nil) throws {
        let writer = try ArchiveWriter(format: format, sink: sink)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        var inode: Int64 = 1
        var done: Int64 = 0
        let sorted = Self.inByteOrder(entries.keys)
        for path in sorted {
            let entry = entries[path]!
            let name = String(path.dropFirst())
            var kind = entry.kind
            if case .hardlink(let target) = kind { kind = .hardlink(target: String(target.dropFirst())) }
            inode += 1
            switch entry.content {
            case .none:
                try writer.write(path: name, kind: kind, permissions: entry.mode, uid: entry.uid, gid: entry.gid,
                                 mtime: entry.mtime, inode: inode)
            case .data(let data):
                try writer.write(path: name, kind: kind, permissions: entry.mode, uid: entry.uid, gid: entry.gid,
                                 mtime: entry.mtime, inode: inode, size: Int64(data.count)) { chunk in
                    try data.withUnsafeBytes(chunk)
                }
            case .hostFile(let host):
                let fd = open(host, O_RDONLY | O_CLOEXEC)
                if fd < 0 { throw RootfsError.system(operation: "open", path: host, errno: errno) }
                defer { close(fd) }
                var info = stat()
                fstat(fd, &info)
                try writer.write(path: name, kind: kind, permissions: entry.mode, uid: entry.uid, gid: entry.gid,
                                 mtime: entry.mtime, inode: inode, size: Int64(info.st_size)) { chunk in
                    while true {
                        let n = read(fd, buffer.baseAddress, buffer.count)
                        if n < 0 { if errno == EINTR { continue }; throw RootfsError.system(operation: "read", path: host, errno: errno) }
                        if n == 0 { break }
                        try chunk(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                    }
                }
            }
            done += entry.size
            progress?(done)
        }
        try writer.close()
    }
}
