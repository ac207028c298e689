import Foundation

/// Where a build takes what a recipe calls "host" files: the static busybox, the kernel named by
/// `kernel.path`, its modules, `initramfs.binaries` and stage 1's own programs with their libraries.
///
/// For this machine's architecture that is this machine (`root` "/"). For another one it is a
/// `Sysroot` of that architecture's Debian packages: the same paths, read under its root, and the
/// programs are never run here (a busybox lists its applets through QEMU's user-mode emulator).
public struct BuildHost: Sendable {
    /// "/" for this machine, else the sysroot's folder.
    public let root: String
    public let architecture: Architecture

    public static let native = BuildHost(root: "/", architecture: Architecture.host ?? .amd64)

    public var isNative: Bool { root == "/" }

    /// A host path (`/boot/vmlinuz-*`) as this machine reaches it.
    public func path(_ hostPath: String) -> String { isNative ? hostPath : root + hostPath }

    /// Paths matching a host glob, as this machine reaches them.
    func glob(_ pattern: String) -> [String] { HostGlob.matches(path(pattern)) }

    /// The static busybox stage 1 and `busybox: host` use.
    public func busybox() throws -> String { try HostBusybox.path(in: root) }

    /// A busybox's applets (absolute paths), as the binary itself lists them: run here, or for another
    /// architecture through `qemu-<arch>` (Debian `qemu-user`), which a static binary needs nothing else for.
    public func applets(of busybox: String) throws -> [String] {
        guard !isNative else { return try HostBusybox.applets(of: busybox) }
        guard Tool.find(architecture.qemuUser) != nil else {
            throw ToolError(command: [architecture.qemuUser], status: 127,
                            stderr: "listing an \(architecture) busybox's applets needs \(architecture.qemuUser): apt-get install qemu-user")
        }
        return try HostBusybox.applets(of: busybox, through: architecture.qemuUser)
    }
}

/// Another architecture's Debian packages, fetched as files and unpacked (mmdebstrap's `extract`
/// variant: nothing is configured or run), standing in for this machine in a foreign build
/// (`BuildHost`). It is made in the build's work folder and goes with it; the build cache digests it
/// by the release files of its suites, as it does a `mmdebstrap` base (`InputDigest`).
///
/// Besides the recipe's `sysroot.packages` (default: the architecture's generic kernel) it holds what
/// imagebuild needs for stage 1 (`requiredPackages`): a static busybox, the C library, Nettle and
/// GCC's runtime files to compile the image loader against, the image format's and the swarm's
/// programs, and the architecture's network GRUB for publish to lay into the boot root.
public struct Sysroot {
    public let root: String
    public let architecture: Architecture

    /// The suite a sysroot takes when the recipe names none: this machine's Debian release, else bookworm.
    static let defaultSuite: String = {
        let text = (try? String(contentsOfFile: "/etc/os-release", encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") where line.hasPrefix("VERSION_CODENAME=") {
            let name = line.dropFirst("VERSION_CODENAME=".count).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
            if !name.isEmpty { return name }
        }
        return "bookworm"
    }()

    /// Every package the sysroot of `recipe` is made of, sorted.
    static func packages(for recipe: Recipe) -> [String] {
        var names = recipe.sysroot.packages ?? [recipe.arch.kernelPackage]
        // stage 1: busybox, and what the image loader is compiled and linked against (gcc brings GCC's
        // runtime files in whatever version the suite has)
        names += ["busybox-static", "libc6-dev", "nettle-dev", "gcc"]
        names += recipe.image.format.stageOnePrograms.isEmpty ? [] : ["zstd"]
        if recipe.initramfs.p2p { names.append("aria2") }
        if let grub = recipe.arch.networkGRUB { names += [grub.signedPackage, grub.modulesPackage] }
        return Array(Set(names)).sorted()
    }

    /// The apt sources it is fetched from (`AptSource.sources`, as for a `mmdebstrap` base).
    static func sources(for recipe: Recipe) -> [AptSource] {
        AptSource.sources(tool: .mmdebstrap, suite: recipe.sysroot.suite ?? defaultSuite, mirror: recipe.sysroot.mirror, components: [])
    }

    /// Fetches and unpacks the sysroot of `recipe` into `root` (which must not exist yet), then writes the
    /// module indexes depmod would have (nothing was configured). Returns it with the sha256 of the
    /// release files it came from (`RootfsAssembler.mmdebstrap`).
    static func fetch(for recipe: Recipe, into root: String, scratch: String) throws -> (Sysroot, releases: Set<String>) {
        let suite = recipe.sysroot.suite ?? defaultSuite
        var options = ["--variant=extract", "--architectures=\(recipe.arch.rawValue)", "--include=\(packages(for: recipe).joined(separator: ","))"]
        // Merged /usr, as stage 1 lays it out (`/lib -> usr/lib`): packages that still ship /lib land in
        // /usr/lib, where their library closure then finds them. Nothing sets it up in an extract.
        if FileManager.default.fileExists(atPath: mergedUsrHooks) { options.append("--hook-dir=\(mergedUsrHooks)") }
        let releases = try RootfsAssembler.mmdebstrap(options, suite: suite, into: root, sources: sources(for: recipe), scratch: scratch)
        let sysroot = Sysroot(root: root, architecture: recipe.arch)
        try sysroot.indexModules()
        return (sysroot, releases)
    }

    /// mmdebstrap's hook that makes /bin, /lib and /sbin links into /usr before anything is unpacked.
    static let mergedUsrHooks = "/usr/share/mmdebstrap/hooks/merged-usr"

    public var host: BuildHost { BuildHost(root: root, architecture: architecture) }

    /// `depmod -b` for each kernel whose modules have no `modules.dep` (a package's postinst makes it,
    /// and nothing here ran): depmod reads modules of any architecture.
    func indexModules() throws {
        let modules = root + "/lib/modules"
        for version in ((try? FileManager.default.contentsOfDirectory(atPath: modules)) ?? []).sorted()
        where !FileManager.default.fileExists(atPath: "\(modules)/\(version)/modules.dep") {
            guard Tool.find("depmod") != nil else {
                throw ToolError(command: ["depmod"], status: 127, stderr: "indexing the \(architecture) kernel's modules needs depmod: apt-get install kmod")
            }
            try Tool.run(["depmod", "-b", root, version])
        }
    }

    /// Compiles stage 1's image loader for the sysroot's architecture (clang and lld, as the Swift
    /// toolchain carries them, against the sysroot's C library and Nettle) into `path`, which must be
    /// inside the sysroot so its library closure can be found there. The same compiler and sysroot
    /// give the same bytes (`-s`: no symbols or paths of this machine).
    func compileLoader(to path: String, scratch: String) throws {
        for tool in ["clang", "ld.lld"] where Tool.find(tool) == nil {
            throw BuildError.stageOne("building for \(architecture) compiles stage 1's image loader with clang and lld (the Swift toolchain has both): \(tool) is not on PATH")
        }
        let source = scratch + "/\(StageOneLoader.name).c"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        try Data(StageOneLoader.source).write(to: URL(fileURLWithPath: source))
        do {
            try Tool.run(["clang", "--target=\(architecture.clangTarget)", "--sysroot=\(root)", "-fuse-ld=lld",
                          "-std=c11", "-O2", "-Wall", "-Wextra", "-s", "-o", path, source, "-lnettle"])
        } catch {
            throw BuildError.stageOne("compiling stage 1's image loader for \(architecture): \(error)")
        }
    }

}
