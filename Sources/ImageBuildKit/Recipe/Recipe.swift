import Foundation

/// A build recipe: everything `imagebuild build` needs to turn a base root
/// filesystem into kernel + initramfs + stage-2 image. Loaded and validated by
/// `RecipeLoader`; every path in it is already absolute on the build host.
public struct Recipe: Sendable, Equatable {
    public var name: String
    public var file: String
    public var base: BaseSource
    public var packages: [String]
    /// Install a static busybox and its applet links into the rootfs.
    public var busybox: BusyboxSource?
    public var directories: [DirectorySpec]
    public var files: [FileSpec]
    public var symlinks: [SymlinkSpec]
    public var remove: [RemoveSpec]
    public var authorizedKeys: [AuthorizedKeysSpec]
    public var run: [RunSpec]
    public var kernel: KernelSpec
    public var initramfs: InitramfsSpec
    public var image: ImageSpec
    public var cmdline: String
    /// The architecture the image is built for (`arch:`, default this machine's).
    public var arch: Architecture = Architecture.host ?? .amd64
    /// Where a build for another architecture takes what it would take from this machine (`sysroot:`).
    public var sysroot: SysrootSpec = SysrootSpec()
}

/// The Debian packages that stand in for this machine when a recipe builds for another architecture:
/// fetched as files for `arch` and unpacked into a sysroot, never installed or run (`Sysroot`). There,
/// the recipe's host paths (`busybox: host`, `kernel.path`, `kernel.modules`, `initramfs.binaries`) are
/// read in the sysroot.
public struct SysrootSpec: Sendable, Equatable {
    /// The Debian suite; nil: this machine's own (`VERSION_CODENAME` of /etc/os-release), else bookworm.
    public var suite: String?
    /// nil: Debian's mirror, with the suite's updates and security archives (as mmdebstrap adds them).
    public var mirror: String?
    /// Packages besides those imagebuild itself needs (`Sysroot.requiredPackages`); the default brings
    /// the architecture's generic kernel.
    public var packages: [String]?
    public var location: ConfigLocation?
    public init(suite: String? = nil, mirror: String? = nil, packages: [String]? = nil, location: ConfigLocation? = nil) {
        self.suite = suite
        self.mirror = mirror
        self.packages = packages
        self.location = location
    }
}

/// Where the root filesystem starts from.
public enum BaseSource: Sendable, Equatable {
    /// An empty tree: everything comes from `files`, `busybox`, ...
    case scratch
    /// A directory copied as-is (owners preserved when running as root).
    case directory(String)
    /// Any archive libarchive reads: tar, tar.gz, tar.xz, tar.zst, cpio, zip.
    case tarball(String)
    /// `docker save` / OCI image layout tarball: layers applied in order, whiteouts honoured.
    case ociArchive(String)
    /// `.deb` files unpacked with libarchive (no dpkg, no root needed) plus
    /// packages fetched with `apt-get download` with their dependencies.
    case debs(files: [String], packages: [String])
    /// A full Debian system from mmdebstrap or debootstrap.
    case bootstrap(tool: BootstrapTool, suite: String, mirror: String?, variant: String?, components: [String])
}

public enum BootstrapTool: String, Sendable, Equatable { case mmdebstrap, debootstrap }

public enum BusyboxSource: String, Sendable, Equatable, CaseIterable {
    case host, rootfs
}

/// Ownership as written in a recipe: numbers, or names resolved against the
/// rootfs's own /etc/passwd and /etc/group once the base is in place.
public struct Owner: Sendable, Equatable, CustomStringConvertible {
    public enum ID: Sendable, Equatable { case number(UInt32), name(String) }
    public var user: ID
    public var group: ID
    public static let root = Owner(user: .number(0), group: .number(0))
    public var description: String {
        func text(_ id: ID) -> String { switch id { case .number(let n): "\(n)"; case .name(let s): s } }
        return "\(text(user)):\(text(group))"
    }
}

public struct DirectorySpec: Sendable, Equatable {
    public var path: String
    public var mode: UInt32
    public var owner: Owner
    public var location: ConfigLocation
}

public struct FileSpec: Sendable, Equatable {
    public enum Content: Sendable, Equatable {
        case inline(String)
        /// A file on the build host (relative names resolved against the recipe's folder).
        case source(String)
    }
    public var path: String
    public var content: Content
    public var mode: UInt32
    public var owner: Owner
    public var location: ConfigLocation
}

public struct SymlinkSpec: Sendable, Equatable {
    public var path: String
    public var target: String
    public var location: ConfigLocation
}

public struct RemoveSpec: Sendable, Equatable {
    public var path: String
    public var location: ConfigLocation
}

/// Public keys appended to `~user/.ssh/authorized_keys` with the modes sshd insists on.
public struct AuthorizedKeysSpec: Sendable, Equatable {
    public var user: String
    public var keys: [String]
    public var location: ConfigLocation
}

public struct RunSpec: Sendable, Equatable {
    public var command: String
    public var location: ConfigLocation
}

public struct KernelSpec: Sendable, Equatable {
    public enum Source: Sendable, Equatable {
        /// `/boot/vmlinuz-*` inside the rootfs; modules from the rootfs's /lib/modules.
        case rootfs
        /// A kernel image on the host (a glob picks the newest version).
        case path(String)
        /// A linux-image .deb: vmlinuz and its modules are taken from it.
        case deb(String)
    }
    public var source: Source
    /// A specific version (`6.1.0-56-amd64`); the newest if nil.
    public var version: String?
    /// A host directory holding `<version>/modules.dep`; nil means the rootfs's /lib/modules
    /// (or the .deb's, for a .deb kernel).
    public var modulesDirectory: String?
}

public enum OnFail: String, Sendable, Equatable, CaseIterable {
    case shell, reboot
}

public struct InitramfsSpec: Sendable, Equatable {
    public var busybox: BusyboxSource = .host
    public var modules: [String] = []
    public var compression: Compression = .gzip
    /// Extra programs copied in with their shared-library closure.
    public var binaries: [String] = []
    public var binariesFrom: BusyboxSource = .host
    public var files: [FileSpec] = []
    /// Replacements for the built-in `/init` and `/load_img.sh` (host paths).
    public var initTemplate: String?
    public var loadImageTemplate: String?
    public var onFail: OnFail = .reboot
    public var onFailDelay: Int = 30
    /// Download attempts before the node gives up (each with a growing back-off).
    public var downloadRetries: Int = 8
    /// Carry the host's BitTorrent client (aria2c, Debian `aria2`) with its libraries, so nodes can
    /// fetch the image from each other (`distribution: p2p` in nodes.yaml).
    public var p2p: Bool = false
    public static let p2pClientName = "aria2c"
    public static let p2pClientPath = "/usr/bin/aria2c"
    public var location: ConfigLocation?
}

/// How the stage-2 image is packed, and so how stage 1 loads it (`imagebuild.format=`).
///
/// Archives are streamed into a tmpfs by stage 1 (download, sha256 and unpack in one pass): the
/// node's RAM holds the unpacked tree only. File systems are downloaded into the tmpfs as one file
/// and mounted read-only under a tmpfs overlay: RAM holds the compressed image, and files are
/// decompressed as they are read.
public enum ImageFormat: String, Sendable, Equatable, CaseIterable {
    /// tar, gzip (in-process, parallel, reproducible). Read by every stage 1 with busybox alone.
    case tarGz = "tar.gz"
    /// tar, zstd (`zstd -3 -T0`); stage 1 gets the host's `zstd` to decompress it.
    case tarZst = "tar.zst"
    /// squashfs, zstd level 9 in 1 MiB blocks (`mksquashfs`, every core); the default. Measured on a
    /// 1.3 GiB tree of 46,594 real files (2 CPUs): 445 MB in 28 CPU-seconds, where xz gave 413 MB in
    /// 289, gzip 486 MB in 145, zstd 15 445 MB in 145; zstd also decompresses several times faster
    /// than xz each time a node first reads a file. See docs/recipe.md for the choice of default.
    case squashfs
    /// EROFS, lz4hc (`mkfs.erofs` from erofs-utils).
    case erofs

    public var fileName: String { "image." + rawValue }

    /// Mounted (a file system) rather than unpacked (an archive).
    public var isFileSystem: Bool { self == .squashfs || self == .erofs }

    /// The kernel modules stage 1 needs for this format, on top of the recipe's.
    public var stageOneModules: [String] {
        switch self {
        case .tarGz, .tarZst: return []
        case .squashfs: return ["loop", "squashfs", "overlay"]
        case .erofs: return ["loop", "erofs", "overlay"]
        }
    }

    /// Host programs stage 1 needs for this format beyond busybox (copied with their libraries).
    public var stageOnePrograms: [String] { self == .tarZst ? ["/usr/bin/zstd"] : [] }
}

public struct ImageSpec: Sendable, Equatable {
    /// squashfs: of the four, it loads closest to the wire time and leaves the node the most RAM
    /// (the compressed image, not the unpacked tree). The numbers are in docs/benchmarks.md.
    public var format: ImageFormat = .squashfs
    /// Paths left out of the stage-2 image (e.g. /boot, the kernel is served separately).
    public var exclude: [String] = []
}
