import Foundation
import Logging

/// Applies a recipe to an empty `RootfsTree`: the base first, then busybox,
/// directories, files, symlinks, SSH keys, `run:` commands, and removals last
/// (so commands can use files and removals can clean up after commands).
public struct RootfsAssembler {
    public let recipe: Recipe
    public let tree: RootfsTree
    public let scratch: String
    public let logger: Logger
    public var progress: (String) -> Void
    /// Where `busybox: host` comes from: this machine, or the sysroot of a build for another architecture.
    public let host: BuildHost

    public init(recipe: Recipe, tree: RootfsTree, scratch: String, logger: Logger, host: BuildHost = .native,
                progress: @escaping (String) -> Void = { _ in }) {
        self.recipe = recipe
        self.tree = tree
        self.scratch = scratch
        self.logger = logger
        self.host = host
        self.progress = progress
    }

    /// What assembling learnt that the build cache needs.
    public struct Result: Sendable {
        /// For a bootstrap base: the sha256 of each release file (`dists/<suite>/InRelease` or
        /// `Release`) the tool installed from, as it kept them; empty when they could not be read.
        public var bootstrapReleases: Set<String>?
    }

    @discardableResult
    public func assemble() throws -> Result {
        var result = Result()
        try applyBase(&result)
        if recipe.busybox == .host { try installBusybox(from: try host.busybox()) }
        // Content first, owners after: a recipe may write the /etc/passwd that names its owners.
        var owners: [(inner: String, owner: Owner, mode: UInt32, location: ConfigLocation)] = []
        for dir in recipe.directories {
            owners.append((try tree.makeDirectories(dir.path, mode: dir.mode), dir.owner, dir.mode, dir.location))
        }
        for file in recipe.files {
            switch file.content {
            case .inline(let text): try tree.writeFile(file.path, data: Data(text.utf8), mode: file.mode)
            case .source(let host): try tree.copyFile(from: host, to: file.path, mode: file.mode)
            }
            owners.append((try tree.resolve(file.path, followLast: true), file.owner, file.mode, file.location))
        }
        let accounts = Accounts(tree: tree)
        for entry in owners where entry.owner != .root {
            let (uid, gid) = try accounts.ids(entry.owner, location: entry.location)
            tree.setOwner(entry.inner, uid: uid, gid: gid)
            // chown cleared setuid/setgid bits; put the recipe's mode back.
            chmod(tree.hostPath(entry.inner), mode_t(entry.mode))
        }
        for link in recipe.symlinks { try tree.symlink(link.path, target: link.target) }
        for keys in recipe.authorizedKeys { try installKeys(keys, accounts: accounts) }
        if !recipe.run.isEmpty { try runCommands() }
        for removal in recipe.remove { try tree.remove(removal.path) }
        return result
    }

    // MARK: base

    func applyBase(_ result: inout Result) throws {
        switch recipe.base {
        case .scratch:
            for dir in ["/bin", "/dev", "/etc", "/proc", "/root", "/run", "/sbin", "/sys", "/tmp", "/usr/bin", "/usr/sbin", "/var"] {
                try tree.makeDirectories(dir, mode: dir == "/tmp" ? 0o1777 : (dir == "/root" ? 0o700 : 0o755))
            }
        case .directory(let source):
            progress("copying \(source)")
            // cp -a keeps hard links, xattrs and owners; the tree is new, so nothing can be followed out of it.
            try Tool.run(["cp", "-a", "--no-target-directory", source, tree.root])
        case .tarball(let path):
            progress("extracting \(path)")
            try tree.extract(archive: try ArchiveReader(path: path), source: path)
        case .ociArchive(let path):
            try OCIArchive(path: path, scratch: scratch).apply(to: tree, progress: progress)
        case .debs(let files, let packages):
            var debs = files
            if !packages.isEmpty { debs += try AptDownloader(scratch: scratch).download(packages, progress: progress) }
            for deb in debs.sorted(by: { ($0 as NSString).lastPathComponent < ($1 as NSString).lastPathComponent }) {
                progress("unpacking \((deb as NSString).lastPathComponent)")
                try DebPackage(path: deb).extract(into: tree)
            }
        case .bootstrap(let tool, let suite, _, let variant, let components):
            progress("\(tool.rawValue) \(suite) (this downloads a Debian system)")
            // The sources are decided once (AptSource.sources) and given explicitly, so the build cache
            // digests exactly the suites the tool installs from.
            let sources = recipe.base.bootstrapSources ?? []
            var options: [String] = []
            if let variant { options.append("--variant=\(variant)") }
            if !components.isEmpty { options.append("--components=\(components.joined(separator: ","))") }
            if !recipe.packages.isEmpty { options.append("--include=\(recipe.packages.joined(separator: ","))") }
            if tool == .mmdebstrap {
                result.bootstrapReleases = try Self.mmdebstrap(options, suite: suite, into: tree.root, sources: sources, scratch: scratch)
            } else {
                var environment = ProcessInfo.processInfo.environment
                environment["SOURCE_DATE_EPOCH"] = environment["SOURCE_DATE_EPOCH"] ?? "0"
                try Tool.run([tool.rawValue] + options + [suite, tree.root] + sources.prefix(1).map(\.uri), environment: environment, passOutput: true)
                // debootstrap leaves its package lists in the tree.
                let inner = try? tree.resolve("/var/lib/apt/lists", followLast: true)
                result.bootstrapReleases = inner.map { Self.releaseFileDigests(in: tree.hostPath($0)) } ?? []
            }
        }
    }

    /// Runs mmdebstrap with `options` for `suite` from exactly `sources` into `root`, and returns the
    /// sha256 of each release file it worked from, for the cache to check against what it digested
    /// (`InputDigest.confirm`; empty when they could not be kept). mmdebstrap removes its package lists
    /// before it exits: a hook copies them out first. The one way a base and a sysroot (`Sysroot`) are
    /// fetched.
    static func mmdebstrap(_ options: [String], suite: String, into root: String, sources: [AptSource], scratch: String) throws -> Set<String> {
        var arguments = ["mmdebstrap"] + options + ["--mode=\(geteuid() == 0 ? "root" : "unshare")", "--skip=output/dev"]
        let lists = scratch + "/apt-lists-\(UUID().uuidString)"
        // A special hook's arguments are split at blanks.
        let listsCopied = !lists.contains(where: \.isWhitespace)
        if listsCopied {
            try FileManager.default.createDirectory(atPath: lists, withIntermediateDirectories: true)
            // The extract hook runs in every variant (a customize hook not in `extract`), with the lists
            // the packages were chosen from.
            arguments.append("--extract-hook=sync-out /var/lib/apt/lists \(lists)")
        }
        // One argument of lines: mmdebstrap writes it into sources.list as it is (one argument per line
        // would get a blank line between them).
        arguments += [suite, root, sources.map(\.line).joined(separator: "\n")]
        var environment = ProcessInfo.processInfo.environment
        environment["SOURCE_DATE_EPOCH"] = environment["SOURCE_DATE_EPOCH"] ?? "0"
        try Tool.run(arguments, environment: environment, passOutput: true)
        return listsCopied ? releaseFileDigests(in: lists) : []
    }

    /// The sha256 of every release file (`*InRelease`, `*Release`) in an apt lists folder.
    static func releaseFileDigests(in folder: String) -> Set<String> {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return Set(names.filter { $0.hasSuffix("Release") }.compactMap { name in
            var info = stat()
            guard lstat(folder + "/" + name, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
            return try? sha256File(folder + "/" + name).digest
        })
    }

    func installBusybox(from binary: String) throws {
        try tree.copyFile(from: binary, to: "/bin/busybox", mode: 0o755)
        for applet in try host.applets(of: binary) where applet != "/bin/busybox" {
            let inner = try tree.resolve(applet, followLast: false)
            if tree.fileType(inner) == nil { try tree.symlink(applet, target: "/bin/busybox") }
        }
    }

    func installKeys(_ spec: AuthorizedKeysSpec, accounts: Accounts) throws {
        let (uid, gid) = try accounts.ids(Owner(user: .name(spec.user), group: .name(spec.user)), location: spec.location,
                                          groupFallbackToUser: true)
        let home = accounts.home(of: spec.user) ?? (spec.user == "root" ? "/root" : "/home/\(spec.user)")
        let sshDir = try tree.makeDirectories(home + "/.ssh", mode: 0o700)
        tree.setOwner(sshDir, uid: uid, gid: gid)
        let file = sshDir + "/authorized_keys"
        var existing = ""
        if tree.fileType(file) == S_IFREG { existing = (try? String(contentsOfFile: tree.hostPath(file), encoding: .utf8)) ?? "" }
        let lines = existing.split(separator: "\n").map(String.init)
        let merged = lines + spec.keys.filter { !lines.contains($0) }
        try tree.writeFile(file, data: Data((merged.joined(separator: "\n") + "\n").utf8), mode: 0o600, uid: uid, gid: gid)
    }

    // MARK: run

    /// Runs commands inside the rootfs with /proc, /sys and /dev mounted for
    /// them, and unmounts whatever happens (also when a command fails).
    func runCommands() throws {
        guard geteuid() == 0 else {
            throw RootfsError.commandFailed(command: "run: needs root (chroot and mounts)", status: 1, location: recipe.run.first?.location)
        }
        var mounted: [String] = []
        defer {
            for point in mounted.reversed() { _ = try? Tool.run(["umount", "-l", point]) }
        }
        for (fs, point, options) in [("proc", "/proc", ["-t", "proc"]), ("sysfs", "/sys", ["-t", "sysfs"]), ("/dev", "/dev", ["--rbind"])] {
            let inner = try tree.makeDirectories(point, mode: 0o755)
            let host = tree.hostPath(inner)
            try Tool.run(["mount"] + options + [fs, host])
            mounted.append(host)
            if point == "/dev" { _ = try? Tool.run(["mount", "--make-rslave", host]) }
        }
        let shell = tree.fileType(try tree.resolve("/bin/sh", followLast: true)) != nil ? "/bin/sh" : "/bin/busybox"
        for command in recipe.run {
            progress("run: \(command.command)")
            let environment = ["PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                               "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "TERM": "dumb"]
            do {
                let arguments = shell == "/bin/sh" ? ["chroot", tree.root, "/bin/sh", "-ec", command.command]
                                                   : ["chroot", tree.root, "/bin/busybox", "sh", "-ec", command.command]
                try Tool.run(arguments, environment: environment, passOutput: true)
            } catch let error as ToolError {
                throw RootfsError.commandFailed(command: command.command + (error.stderr.isEmpty ? "" : "\n    " + error.stderr.trimmingCharacters(in: .whitespacesAndNewlines)), status: error.status, location: command.location)
            }
        }
    }
}

/// Users and groups of the rootfs being built (not of the build host).
struct Accounts {
    let users: [String: (uid: UInt32, gid: UInt32, home: String)]
    let groups: [String: UInt32]

    init(tree: RootfsTree) {
        func read(_ path: String) -> [[String]] {
            guard let inner = try? tree.resolve(path, followLast: true),
                  let text = try? String(contentsOfFile: tree.hostPath(inner), encoding: .utf8) else { return [] }
            return text.split(separator: "\n").map { $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init) }
        }
        var users: [String: (UInt32, UInt32, String)] = [:]
        for fields in read("/etc/passwd") where fields.count >= 6 {
            if let uid = UInt32(fields[2]), let gid = UInt32(fields[3]) { users[fields[0]] = (uid, gid, fields[5]) }
        }
        var groups: [String: UInt32] = [:]
        for fields in read("/etc/group") where fields.count >= 3 {
            if let gid = UInt32(fields[2]) { groups[fields[0]] = gid }
        }
        users["root"] = users["root"] ?? (0, 0, "/root")
        groups["root"] = groups["root"] ?? 0
        self.users = users.mapValues { (uid: $0.0, gid: $0.1, home: $0.2) }
        self.groups = groups
    }

    func home(of user: String) -> String? { users[user]?.home }

    func ids(_ owner: Owner, location: ConfigLocation?, groupFallbackToUser: Bool = false) throws -> (UInt32, UInt32) {
        let uid: UInt32
        switch owner.user {
        case .number(let n): uid = n
        case .name(let name):
            guard let user = users[name] else { throw RootfsError.unknownOwner(name: name, kind: "user", location: location) }
            uid = user.uid
        }
        let gid: UInt32
        switch owner.group {
        case .number(let n): gid = n
        case .name(let name):
            if let group = groups[name] { gid = group }
            else if case .name(let userName) = owner.user, userName == name, let user = users[name] { gid = user.gid }
            else { throw RootfsError.unknownOwner(name: name, kind: "group", location: location) }
        }
        return (uid, gid)
    }
}

/// The build host's static busybox, used for stage 1 and `busybox: host`.
public enum HostBusybox {
    /// The busybox under `root` ("/": this machine; else a sysroot, `BuildHost`), as this machine reaches it.
    public static func path(in root: String = "/") throws -> String {
        let prefix = root == "/" ? "" : root
        for candidate in ["/bin/busybox", "/usr/bin/busybox"] where FileManager.default.isExecutableFile(atPath: prefix + candidate) {
            return prefix + candidate
        }
        throw ToolError(command: ["busybox"], status: 127, stderr: root == "/" ? "no busybox on this host: apt-get install busybox-static"
                                                                         : "no busybox in \(root) (is busybox-static among its packages?)")
    }

    /// Absolute applet paths (`/usr/bin/wget`...) as the binary itself lists them; `emulator` runs a
    /// binary of another architecture (`qemu-aarch64`).
    public static func applets(of binary: String, through emulator: String? = nil) throws -> [String] {
        let output = try Tool.run([emulator, binary].compactMap { $0 } + ["--list-full"])
        return output.split(separator: "\n").map { "/" + $0.trimmingCharacters(in: .whitespaces) }.filter { $0.count > 1 }.sorted()
    }
}
