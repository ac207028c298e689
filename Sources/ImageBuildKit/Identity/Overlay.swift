import CArchive
import Crypto
import Foundation

/// A compressed tar of files laid over a node's new root by stage 1 before `switch_root`.
///
/// Entries are the files only, paths relative to the root, in path order, with mode and numeric
/// owner; parent folders are not entries (extracting one would reset the mode of a folder the image
/// already has, `/etc/munge` at 0700 say), so tar creates the missing ones. Files owned by a *name*
/// carry uid/gid 0 and a line `OWNER PATH` in `etc/imagebuild/owners`, which stage 1 applies with
/// the image's own user database after laying each archive. Same files, same bytes: the mtime is
/// fixed and neither gzip's nor xz's header has a time or a name, so publish is reproducible.
public enum OverlayArchive {
    /// Where the owners list goes in each archive.
    public static let ownersPath = "etc/imagebuild/owners"

    /// Above this many bytes of file content, an archive made at publish is xz'd rather than
    /// gzip'd. Every node of a storm fetches the shared archive: `/etc/hosts` and a Slurm node
    /// list over 10,000 nodes are 600 KB, 96 KB gzip'd and 20 KB xz'd. Below it, gzip: xz's
    /// encoder set-up costs a millisecond an archive, ten seconds over 10,000 nodes' own
    /// archives, to save a few bytes of each.
    public static let xzAbove = 64 * 1024

    /// An archive's bytes and their compression (`.gzip` or `.xz`), which names the file
    /// (`OverlayPlan.path`) and tells stage 1 how to unpack it.
    public struct Packed: Sendable {
        public var bytes: [UInt8]
        public var compression: Compression
    }

    /// When an archive is made, which decides its compression.
    public enum Use: Sendable {
        /// At publish, made once and fetched at every boot: xz above `xzAbove` bytes of content,
        /// else gzip -9.
        case published
        /// Per request (a node's secrets), where the server's CPU counts: gzip without compression
        /// (stored blocks), still a .tar.gz with its CRC-32 for stage 1. A node's keys are a few
        /// KiB that compress poorly; deflating 2.5 KiB of tar took 22 microseconds at -1 and 34 at
        /// -9 here, storing it 2 (zlib, a kept stream), for 2.6 KiB sent instead of 1.1.
        case perRequest
    }

    /// `files` as a compressed tar. `mtime` is `SOURCE_DATE_EPOCH` (or 0) at publish, the same for
    /// secrets.
    public static func make(_ files: [NodeTemplates.Rendered], mtime: Int64, use: Use) throws -> Packed {
        let xz = use == .published && files.reduce(0) { $0 + $1.bytes.count } > xzAbove
        var out: [UInt8] = []
        let writer = try ArchiveWriter(format: .paxRestricted, filter: xz ? .xz(preset: 6) : .none) { out.append(contentsOf: $0) }
        var owners = ""
        var inode: Int64 = 1
        func add(_ path: String, _ bytes: [UInt8], mode: UInt32, uid: UInt32, gid: UInt32) throws {
            try writer.write(path: path, kind: .regular, permissions: mode, uid: uid, gid: gid, mtime: mtime, inode: inode,
                             size: Int64(bytes.count)) { feed in try bytes.withUnsafeBytes { try feed($0) } }
            inode += 1
        }
        for rendered in files.sorted(by: { $0.file.path < $1.file.path }) {
            let file = rendered.file
            if let ids = file.owner.numeric {
                try add(file.archivePath, rendered.bytes, mode: file.mode, uid: ids.uid, gid: ids.gid)
            } else {
                try add(file.archivePath, rendered.bytes, mode: file.mode, uid: 0, gid: 0)
                owners += "\(file.owner) \(file.archivePath)\n"
            }
        }
        if !owners.isEmpty { try add(ownersPath, Array(owners.utf8), mode: 0o644, uid: 0, gid: 0) }
        try writer.close()
        return xz ? Packed(bytes: out, compression: .xz) : Packed(bytes: try Gzip.compress(out, level: use == .published ? 9 : 0), compression: .gzip)
    }
}

/// One-shot gzip of a small buffer (an overlay, a node's secrets): zlib's gzip wrapper writes no
/// time and no name.
///
/// The zlib streams are kept and reset rather than set up anew: a stream holds 256 KiB of state,
/// and setting one up and ending it took 37 microseconds on this 2-vCPU VM (a C loop storing
/// 10 KiB) against 4 for a kept one reset: many times what storing a node's secrets takes. `deflateReset` clears what a stream remembers, so the bytes are the same.
enum Gzip {
    static func compress(_ input: [UInt8], level: Int32) throws -> [UInt8] {
        let stream = try idle.take(level) ?? Deflater(level: level)
        let output = try stream.compress(input)
        idle.give(stream)
        return output
    }

    /// Idle streams by level, a few of each (as many as compress at once: the event loops and
    /// the thread pool, or publish's one thread).
    private static let idle = IdleDeflaters()

    private final class IdleDeflaters: @unchecked Sendable {
        private let lock = NSLock()
        private var streams: [Int32: [Deflater]] = [:]
        private let keep = 8

        func take(_ level: Int32) -> Deflater? {
            lock.withLock { streams[level]?.popLast() }
        }

        func give(_ stream: Deflater) {
            lock.withLock {
                if streams[stream.level, default: []].count < keep { streams[stream.level, default: []].append(stream) }
            }
        }
    }

    /// A zlib deflate stream writing gzip, used by one caller at a time. Its `z_stream` lives at a
    /// fixed address: zlib keeps a pointer back to it and checks it on every call.
    private final class Deflater: @unchecked Sendable {
        let level: Int32
        private let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)

        init(level: Int32) throws {
            self.level = level
            stream.initialize(to: z_stream())
            guard ib_deflateInit2(stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK else {
                stream.deinitialize(count: 1)
                stream.deallocate()
                throw CompressionError.invalidParameter(name: "gzip", value: "deflateInit2", reason: "zlib refused")
            }
        }

        deinit {
            deflateEnd(stream)
            stream.deinitialize(count: 1)
            stream.deallocate()
        }

        func compress(_ input: [UInt8]) throws -> [UInt8] {
            guard deflateReset(stream) == Z_OK else {
                throw CompressionError.invalidParameter(name: "gzip", value: "deflateReset", reason: "zlib refused")
            }
            var output = [UInt8](repeating: 0, count: Int(deflateBound(stream, uLong(input.count))) + 32)
            let status = input.withUnsafeBufferPointer { source in
                output.withUnsafeMutableBufferPointer { target in
                    stream.pointee.next_in = UnsafeMutablePointer(mutating: source.baseAddress)
                    stream.pointee.avail_in = uInt(source.count)
                    stream.pointee.next_out = target.baseAddress
                    stream.pointee.avail_out = uInt(target.count)
                    return deflate(stream, Z_FINISH)
                }
            }
            // No pointer into `input` or `output` stays behind in the kept stream.
            stream.pointee.next_in = nil
            stream.pointee.next_out = nil
            guard status == Z_STREAM_END else {
                throw CompressionError.invalidParameter(name: "gzip", value: "deflate", reason: "zlib status \(status)")
            }
            output.removeSubrange(Int(stream.pointee.total_out)...)
            return output
        }
    }
}

/// The overlays of one publish: for each node, the archives it lays over its root, in order.
///
/// Files every node renders alike (`/etc/hosts` over the cluster, a site file) go into archives
/// shared by all nodes with the same such set; the rest go into the node's own. Archives are
/// content-addressed (`overlays/<sha256>.tar.gz`, or `.tar.xz` above `OverlayArchive.xzAbove`),
/// so 10,000 nodes with one `/etc/hosts` store it once, and the digest in the name is what stage 1
/// checks (`imagebuild-fetch -s`).
public struct OverlayPlan: Sendable {
    /// Folder of the generation (and top-level link) holding the archives.
    public static let folder = "overlays"

    public struct Archive: Sendable {
        public var path: String
        public var sha256: String
        public var bytes: [UInt8]
    }

    /// Archives by path, each once.
    public var archives: [String: Archive] = [:]
    /// Per node: the archive paths, shared first.
    public var nodes: [MACAddress: [String]] = [:]

    public init() {}

    public static func path(sha256: String, compression: Compression) -> String {
        "\(folder)/\(sha256).tar\(compression.fileExtension)"
    }

    /// Renders every node's non-secret files. Errors are collected over all nodes and files
    /// (`ConfigErrors`), each naming its node.
    public static func render(_ inventory: Inventory, nodes: [Inventory.Node]? = nil, mtime: Int64) throws -> OverlayPlan {
        let templates = NodeTemplates(inventory: inventory)
        var plan = OverlayPlan()
        var errors: [ConfigError] = []
        var sharedArchives: [String: String] = [:]  // the shared files' key -> archive path
        func store(_ packed: OverlayArchive.Packed) -> String {
            let digest = SHA256.hash(data: packed.bytes).map { String(format: "%02x", $0) }.joined()
            let path = Self.path(sha256: digest, compression: packed.compression)
            if plan.archives[path] == nil { plan.archives[path] = Archive(path: path, sha256: digest, bytes: packed.bytes) }
            return path
        }
        for node in nodes ?? inventory.nodes {
            do {
                let identity = try inventory.identity(of: node)
                var shared: [NodeTemplates.Rendered] = [], own: [NodeTemplates.Rendered] = []
                for file in identity.publicFiles {
                    do {
                        let rendered = try templates.render(file.file, for: identity)
                        if rendered.shared { shared.append(rendered) } else { own.append(rendered) }
                    } catch let error as ConfigError { errors.append(error) }
                }
                var paths: [String] = []
                if !shared.isEmpty {
                    let key = shared.map { "\($0.file.path)\u{0}\($0.file.location)" }.joined(separator: "\u{1}")
                    if let path = sharedArchives[key] {
                        paths.append(path)
                    } else {
                        let path = store(try OverlayArchive.make(shared, mtime: mtime, use: .published))
                        sharedArchives[key] = path
                        paths.append(path)
                    }
                }
                if !own.isEmpty { paths.append(store(try OverlayArchive.make(own, mtime: mtime, use: .published))) }
                plan.nodes[node.mac] = paths
            } catch let error as ConfigError { errors.append(error) }
        }
        try ConfigErrors.throwIfAny(errors)
        return plan
    }
}

/// Checks every file the inventory names once (not once per node): sources exist, templates parse,
/// and secrets live where only root can read them and outside the boot root (which is served to
/// anyone on the boot network); then renders each cloud-init node's data (`CloudInit.check`). Publish
/// and `nodes check` run it; a secret's bytes are read by the server when its node asks, so a rotated
/// key needs no publish.
public enum NodeFileChecks {
    public static func check(_ inventory: Inventory, root: String?) throws {
        var files: [String: NodeFile] = [:]
        var levels: [IdentitySettings] = [inventory.defaults.identity] + inventory.groups.keys.sorted().map { inventory.groups[$0]!.identity }
        levels += inventory.ranges.map(\.settings.identity) + inventory.nodes.map(\.settings.identity)
        for level in levels { for file in level.files { files["\(file.location)"] = file } }
        let templates = NodeTemplates(inventory: inventory)
        let servedRoot = root.map { URL(fileURLWithPath: $0).resolvingSymlinksInPath().path + "/" }
        var errors: [ConfigError] = []
        for (_, file) in files.sorted(by: { $0.key < $1.key }) {
            do {
                if case .source(let path) = file.content, file.secret {
                    var info = stat()
                    guard stat(path, &info) == 0 else {
                        throw ConfigError(file.location, "cannot read the secret \(path) for \(file.path): \(String(cString: strerror(errno)))")
                    }
                    guard info.st_mode & S_IFMT == S_IFREG else { throw ConfigError(file.location, "the secret \(path) is not a regular file") }
                    if info.st_mode & 0o007 != 0 {
                        throw ConfigError(file.location, "the secret \(path) is readable by anyone on this server (mode \(String(info.st_mode & 0o777, radix: 8)))",
                                          hint: "chmod 600 \(path)")
                    }
                    let real = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
                    if let servedRoot, real.hasPrefix(servedRoot) {
                        throw ConfigError(file.location, "the secret \(path) is inside the boot root \(root!), which is served to every machine",
                                          hint: "keep secrets outside the root, e.g. in /etc/imagebuild/secrets/")
                    }
                }
                try templates.check(file)
            } catch let error as ConfigError { errors.append(error) }
        }
        for node in inventory.nodes {
            do { _ = try inventory.identity(of: node) } catch let error as ConfigError { errors.append(error) }
        }
        errors += CloudInit.check(inventory, templates: templates)
        try ConfigErrors.throwIfAny(errors)
    }
}
