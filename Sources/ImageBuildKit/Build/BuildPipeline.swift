import Crypto
import Foundation
import Logging

/// Receives progress from a build; the CLI renders it (bar, plain lines or JSON).
public protocol BuildReporter: AnyObject {
    func step(_ name: String, _ detail: String)
    func progress(_ label: String, done: Int64, total: Int64)
    func warning(_ message: String)
}

public struct BuildOptions: Sendable {
    /// Where `<name>/` is written (default `artifacts`).
    public var outputRoot: String
    /// SOURCE_DATE_EPOCH; nil means the newest mtime among the inputs.
    public var sourceDateEpoch: Int64?
    /// Rebuild even when the input digest matches the existing artifacts.
    public var force: Bool = false
    /// Keep the assembled rootfs next to the artifacts for inspection.
    public var keepRootfs: Bool = false
    public init(outputRoot: String, sourceDateEpoch: Int64? = nil, force: Bool = false) {
        self.outputRoot = outputRoot
        self.sourceDateEpoch = sourceDateEpoch
        self.force = force
    }
}

public struct BuildResult: Sendable {
    public var directory: String
    public var manifest: Manifest
    /// True when the existing artifacts already matched the inputs.
    public var upToDate: Bool
    public var seconds: Double
}

public enum BuildError: Error, CustomStringConvertible {
    case kernel(String)
    case busybox(String)
    case modules(String)
    case locked(String)
    /// Stage 1's own programs (the image loader).
    case stageOne(String)

    public var description: String {
        switch self {
        case .kernel(let m), .busybox(let m), .modules(let m), .locked(let m), .stageOne(let m): return m
        }
    }
}

/// recipe → rootfs → kernel + stage-2 image + stage-1 initramfs → artifacts/<name>/.
///
/// Everything is written in a private work folder and swapped into place at
/// the end, so a failed or killed build leaves the previous artifacts as they were.
public final class BuildPipeline {
    public let recipe: Recipe
    public let options: BuildOptions
    let logger: Logger
    let reporter: BuildReporter?

    public init(recipe: Recipe, options: BuildOptions, logger: Logger = Logger(label: "imagebuild.build"), reporter: BuildReporter? = nil) {
        self.recipe = recipe
        self.options = options
        self.logger = logger
        self.reporter = reporter
    }

    func step(_ name: String, _ detail: String) {
        logger.info("\(name): \(detail)")
        reporter?.step(name, detail)
    }

    public func run() throws -> BuildResult {
        let start = Date()
        let outputRoot = URL(fileURLWithPath: options.outputRoot).standardizedFileURL.path
        try FileManager.default.createDirectory(atPath: outputRoot, withIntermediateDirectories: true)
        let destination = outputRoot + "/" + recipe.name
        try removeStaleWorkFolders(in: outputRoot)

        var inputs = try InputDigest(recipe: recipe)
        let epoch = options.sourceDateEpoch ?? inputs.newestMtime
        if !options.force, let digest = inputs.digest(epoch: epoch), let existing = try? Manifest.read(from: destination),
           existing.inputDigest == digest, Self.filesIntact(existing, in: destination) {
            step("cache", "\(recipe.name) is up to date (inputs unchanged)")
            return BuildResult(directory: destination, manifest: existing, upToDate: true, seconds: Date().timeIntervalSince(start))
        }
        for reason in inputs.uncacheable { step("cache", "not cacheable: \(reason)") }
        if inputs.uncacheable.isEmpty, !options.force, let existing = try? Manifest.read(from: destination) {
            step("cache", existing.inputDigest == inputs.digest(epoch: epoch) ? "\(destination) is incomplete: rebuilding"
                                                                             : "inputs changed since \(destination) was built")
        }

        let work = outputRoot + "/.\(recipe.name).build-\(getpid())"
        try SafeFileSystem.removeTree(work)
        try FileManager.default.createDirectory(atPath: work + "/out", withIntermediateDirectories: true)
        var succeeded = false
        defer { if !succeeded || !options.keepRootfs { try? SafeFileSystem.removeTree(work) } }

        // 0. For another architecture, the sysroot that stands in for this machine.
        var host = BuildHost.native
        var sysrootReleases = Set<String>()
        if recipe.arch.isForeign {
            let packages = Sysroot.packages(for: recipe)
            step("sysroot", "fetching \(packages.count) \(recipe.arch) packages (\(packages.joined(separator: " "))) from \(Sysroot.sources(for: recipe).map(\.description).joined(separator: ", "))")
            let sysroot: Sysroot
            (sysroot, sysrootReleases) = try Sysroot.fetch(for: recipe, into: work + "/sysroot", scratch: work + "/scratch")
            host = sysroot.host
        }

        // 1. Root filesystem.
        step("rootfs", "assembling from \(recipe.base.summary)")
        let tree = try RootfsTree(root: work + "/rootfs")
        var assembly = try RootfsAssembler(recipe: recipe, tree: tree, scratch: work + "/scratch", logger: logger, host: host,
                                           progress: { [weak self] in self?.step("rootfs", $0) }).assemble()
        let wasCacheable = inputs.uncacheable.isEmpty
        if recipe.arch.isForeign { assembly.bootstrapReleases = (assembly.bootstrapReleases ?? []).union(sysrootReleases) }
        inputs.confirm(assembly)
        if wasCacheable { for reason in inputs.uncacheable { step("cache", "not cacheable: \(reason)") } }

        // 2. Kernel.
        let kernel = try locateKernel(tree: tree, work: work, host: host)
        step("kernel", "\(kernel.version) from \(kernel.path)")
        try tree.copyHostFile(kernel.path, to: work + "/out/vmlinuz")

        // 3. Stage-2 image.
        let out = work + "/out"
        let imagePath = out + "/" + recipe.image.format.fileName
        let archiveNeed = try buildImage(tree: tree, epoch: epoch, to: imagePath)
        let image = try sha256File(imagePath)
        // What the loaded image occupies in the node's tmpfs: the unpacked files of an archive (their
        // pages and the kernel's memory for their names), the file of a file system. Stage 1 checks
        // it against the node's memory before it starts.
        let loadedSize = archiveNeed ?? image.size

        // 4. Stage-1 initramfs.
        let modules = try buildInitramfs(tree: tree, kernel: kernel, epoch: epoch, host: host, work: work, to: out + "/initramfs.img")

        // The architecture's own network loaders, where this machine's packages have none (arm64's GRUB).
        let loaderFiles = try buildLoaders(host: host, tree: tree, into: out)

        // 5. Command line and manifest.
        var cmdline = recipe.cmdline + " imagebuild.sha256=\(image.digest)"
        if recipe.image.format != .tarGz { cmdline += " imagebuild.format=\(recipe.image.format.rawValue)" }
        cmdline += " imagebuild.need=\(loadedSize)"
        try Data((cmdline + "\n").utf8).write(to: URL(fileURLWithPath: out + "/cmdline"))
        var files: [String: Manifest.FileInfo] = [:]
        for name in ["vmlinuz", "initramfs.img", recipe.image.format.fileName, "cmdline"] + loaderFiles {
            let info = name == recipe.image.format.fileName ? image : try sha256File(out + "/" + name)
            files[name] = Manifest.FileInfo(sha256: info.digest, size: info.size)
            try SafeFileSystem.fsyncFile(out + "/" + name)
        }
        let manifest = Manifest(
            name: recipe.name, toolVersion: ImageBuildVersion.current, recipeDigest: inputs.recipeDigest,
            inputDigest: inputs.digest(epoch: epoch), sourceDateEpoch: epoch, kernelVersion: kernel.version, cmdline: cmdline,
            imageFormat: recipe.image.format.rawValue, initramfsCompression: recipe.initramfs.compression.rawValue,
            modules: modules, files: files, loadedSize: loadedSize,
            p2pClient: recipe.initramfs.p2p ? InitramfsSpec.p2pClientName : nil, arch: recipe.arch)
        try manifest.encoded().write(to: URL(fileURLWithPath: out + "/" + Manifest.fileName))
        try SafeFileSystem.fsyncFile(out + "/" + Manifest.fileName)
        SafeFileSystem.fsyncDirectory(out)

        // 6. Into place, atomically; the old artifacts are dropped only afterwards.
        if try SafeFileSystem.swapInto(out, destination: destination) {
            try SafeFileSystem.removeTree(out)
        }
        succeeded = true
        step("done", "\(destination) (\(String(format: "%.1f", Date().timeIntervalSince(start))) s)")
        return BuildResult(directory: destination, manifest: manifest, upToDate: false, seconds: Date().timeIntervalSince(start))
    }

    static func filesIntact(_ manifest: Manifest, in directory: String) -> Bool {
        manifest.files.allSatisfy { name, info in
            var st = stat()
            return stat(directory + "/" + name, &st) == 0 && Int64(st.st_size) == info.size
        }
    }

    /// Work folders of builds that died (their pid is gone) are removed, mounts first.
    func removeStaleWorkFolders(in root: String) throws {
        let prefix = ".\(recipe.name).build-"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] where name.hasPrefix(prefix) {
            guard let pid = Int32(name.dropFirst(prefix.count)) else { continue }
            if pid == getpid() || kill(pid, 0) != 0 {
                try SafeFileSystem.removeTree(root + "/" + name)
            } else {
                throw BuildError.locked("another build of '\(recipe.name)' is running (pid \(pid)); wait for it or stop it")
            }
        }
    }

    // MARK: kernel

    struct LocatedKernel {
        var path: String
        var version: String
        /// `/lib/modules/<version>` on the host, if there is one.
        var modules: String?
    }

    func locateKernel(tree: RootfsTree, work: String, host: BuildHost) throws -> LocatedKernel {
        let spec = recipe.kernel
        var path: String
        var modulesRoot: String?
        do {
            switch spec.source {
            case .rootfs:
                let boot = tree.hostPath(try tree.resolve("/boot", followLast: true))
                path = try KernelImage.locate(in: URL(fileURLWithPath: boot), version: spec.version).path
                modulesRoot = tree.hostPath(try tree.resolve("/lib/modules", followLast: true))
            case .path(let pattern):
                let matches = host.glob(pattern).filter { !$0.hasSuffix(".old") }
                let versions = try matches.map { ($0, try KernelImage.read(bzImage: URL(fileURLWithPath: $0)).version) }
                let chosen = spec.version.flatMap { want in versions.first { $0.1 == want } }
                    ?? versions.max { KernelImage.versionPrecedes($0.1, $1.1) }
                guard let chosen, spec.version == nil || chosen.1 == spec.version else {
                    throw BuildError.kernel("\(recipe.file): no kernel \(spec.version ?? "") matches \(pattern) (found \(versions.map(\.1).joined(separator: ", ")))")
                }
                path = chosen.0
            case .deb(let deb):
                step("kernel", "unpacking \((deb as NSString).lastPathComponent)")
                let staging = try RootfsTree(root: work + "/kernel-deb")
                try DebPackage(path: deb).extract(into: staging)
                path = try KernelImage.locate(in: URL(fileURLWithPath: staging.root + "/boot"), version: spec.version).path
                modulesRoot = staging.root + "/lib/modules"
            }
        } catch let error as KernelImageError {
            throw BuildError.kernel("\(recipe.file): \(error)")
        }
        if let dir = spec.modulesDirectory { modulesRoot = host.path(dir) }
        let image: KernelImage
        do { image = try KernelImage.read(bzImage: URL(fileURLWithPath: path)) } catch {
            throw BuildError.kernel("\(recipe.file): \(error)")
        }
        guard image.architecture == recipe.arch else {
            throw BuildError.kernel("\(recipe.file): \(path) is an \(image.architecture) kernel, but the recipe builds for \(recipe.arch)"
                                    + " (set 'arch: \(image.architecture)', or give an \(recipe.arch) kernel)")
        }
        let version = image.version
        var modules: String?
        if let modulesRoot {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: modulesRoot + "/" + version, isDirectory: &isDirectory), isDirectory.boolValue {
                modules = modulesRoot + "/" + version
            }
        }
        if modules == nil, !recipe.initramfs.modules.isEmpty || !recipe.image.format.stageOneModules.isEmpty {
            let place = spec.modulesDirectory ?? (spec.source == .rootfs ? "the rootfs's /lib/modules" : "/lib/modules of the rootfs")
            throw BuildError.modules("\(recipe.file): modules are asked for, but there is no \(version)/ in \(place)"
                                     + " (install the kernel's modules, or set kernel.modules to a folder that has them)")
        }
        return LocatedKernel(path: path, version: version, modules: modules)
    }

    // MARK: loaders

    /// For an architecture whose loaders this machine's packages cannot give (`Architecture.networkGRUB`):
    /// Debian's signed network GRUB for PXE, and a GRUB with HTTP for UEFI HTTP Boot, made with
    /// `grub-mkimage` from Debian's modules (the same modules give the same bytes). Returns their
    /// artifact names.
    func buildLoaders(host: BuildHost, tree: RootfsTree, into out: String) throws -> [String] {
        guard let grub = recipe.arch.networkGRUB else { return [] }
        let signed = host.path(grub.signedPath), modules = host.path(grub.modulesPath)
        for (path, package) in [(signed, grub.signedPackage), (modules, grub.modulesPackage)] where !FileManager.default.fileExists(atPath: path) {
            throw BuildError.stageOne("\(recipe.file): \(recipe.arch) nodes boot through GRUB, but \(path) is missing (is \(package) installed?)")
        }
        step("loader", "\(grub.signedArtifact) from \(grub.signedPackage); \(grub.httpArtifact) from \(grub.modulesPackage) with grub-mkimage")
        try tree.copyHostFile(signed, to: out + "/" + grub.signedArtifact)
        guard Tool.find("grub-mkimage") != nil else {
            throw BuildError.stageOne("\(recipe.file): the \(recipe.arch) HTTP Boot loader is made with grub-mkimage: apt-get install grub-common")
        }
        // The prefix Debian's own network GRUB has: both read the same `grub/grub.cfg` walk.
        try Tool.run(["grub-mkimage", "-O", grub.mkimageFormat, "-d", modules, "-p", "/" + BootPlan.grubFolder,
                      "-o", out + "/" + grub.httpArtifact] + Architecture.NetworkGRUB.httpModules)
        chmod(out + "/" + grub.httpArtifact, 0o644)
        return [grub.signedArtifact, grub.httpArtifact]
    }

    // MARK: image

    /// Writes the stage-2 image; for an archive, returns the bytes its files take in a tmpfs.
    func buildImage(tree: RootfsTree, epoch: Int64, to path: String) throws -> Int64? {
        let format = recipe.image.format
        let name = (path as NSString).lastPathComponent
        var environment = ProcessInfo.processInfo.environment
        environment["SOURCE_DATE_EPOCH"] = String(epoch)
        switch format {
        case .tarGz, .tarZst:
            var plan = ArchivePlan(epoch: epoch)
            try plan.addTree(tree, excluding: recipe.image.exclude, hardlinks: true)
            let total = plan.contentBytes
            step("image", "\(plan.count) entries, \(formatBytes(total)) → \(name)")
            let output = try CompressedOutput(path: path, compression: format == .tarGz ? .gzip : .zstd, purpose: .image)
            try plan.write(format: .paxRestricted, sink: output.write) { [weak self] done in
                self?.reporter?.progress("image", done: done, total: total)
            }
            try output.finish()
            return plan.tmpfsBytes
        case .squashfs:
            step("image", "mksquashfs → \(name)")
            for excluded in recipe.image.exclude { try tree.remove(excluded) }
            try Tool.run(["mksquashfs", tree.root, path, "-noappend", "-comp", "zstd", "-Xcompression-level", "9", "-b", "1M",
                          "-no-progress", "-processors", String(ProcessInfo.processInfo.activeProcessorCount)]
                         + (tree.privileged ? [] : ["-all-root"]),
                         environment: environment)
            return nil
        case .erofs:
            step("image", "mkfs.erofs → \(name)")
            for excluded in recipe.image.exclude { try tree.remove(excluded) }
            // -T and -U fix the two values mkfs.erofs would take from the clock and from chance.
            try Tool.run(["mkfs.erofs", "--quiet", "-zlz4hc", "-T\(epoch)", "-U\(Self.uuid(recipe.name, epoch))"]
                         + (tree.privileged ? [] : ["--all-root"]) + [path, tree.root],
                         environment: environment)
            return nil
        }
    }

    /// A fixed file-system UUID for a recipe and epoch (mkfs tools pick a random one otherwise).
    static func uuid(_ name: String, _ epoch: Int64) -> String {
        let bytes = Array(SHA256.hash(data: Data("\(name) \(epoch)".utf8)).prefix(16))
        let hex = bytes.hex
        let parts = [hex.prefix(8), hex.dropFirst(8).prefix(4), hex.dropFirst(12).prefix(4), hex.dropFirst(16).prefix(4), hex.dropFirst(20)]
        return parts.joined(separator: "-")
    }

    // MARK: initramfs

    /// The host files stage 1 runs besides busybox: the image loader's libraries, and the programs
    /// the image format needs (`ImageFormat.stageOnePrograms`) with theirs.
    static func stageOneHostPrograms(for initramfs: InitramfsSpec, format: ImageFormat, host: BuildHost = .native,
                                     loaderLibraries: [ELFClosure.Entry]? = nil) throws(BuildError) -> [ELFClosure.Entry] {
        var entries: [ELFClosure.Entry]
        if let loaderLibraries { entries = loaderLibraries } else { entries = try StageOneLoader.libraries() }
        var programs = format.stageOnePrograms
        if initramfs.p2p { programs.append(InitramfsSpec.p2pClientPath) }
        if !programs.isEmpty {
            var walker = ELFDependencies(root: host.root)
            do { entries += try walker.closure(of: programs).entries } catch {
                let packages = (format.stageOnePrograms.isEmpty ? [] : ["zstd"]) + (initramfs.p2p ? ["aria2"] : [])
                throw BuildError.stageOne("stage 1 needs \(programs.joined(separator: ", ")) (image format \(format.rawValue)"
                                          + (initramfs.p2p ? ", initramfs.p2p" : "") + "): \(error) (apt-get install \(packages.joined(separator: " ")))")
            }
        }
        return entries
    }

    /// Stage 1's image loader for the build's architecture, and its libraries (paths in `host`): this
    /// binary's own for this machine, else compiled for the sysroot (`Sysroot.compileLoader`).
    func stageOneLoader(host: BuildHost, work: String) throws -> (binary: Data, libraries: [ELFClosure.Entry]) {
        if host.isNative { return (Data(StageOneLoader.binary), try StageOneLoader.libraries()) }
        let sysroot = Sysroot(root: host.root, architecture: host.architecture)
        try sysroot.compileLoader(to: host.path(StageOneLoader.initramfsPath), scratch: work + "/scratch")
        var walker = ELFDependencies(root: host.root)
        do {
            let closure = try walker.closure(of: [StageOneLoader.initramfsPath])
            return (try Data(contentsOf: URL(fileURLWithPath: host.path(StageOneLoader.initramfsPath))),
                    closure.entries.filter { $0.path != StageOneLoader.initramfsPath })
        } catch {
            throw BuildError.stageOne("stage 1's image loader for \(host.architecture): \(error)")
        }
    }

    /// Returns the names of the modules it carries.
    func buildInitramfs(tree: RootfsTree, kernel: LocatedKernel, epoch: Int64, host: BuildHost, work: String, to path: String) throws -> [String] {
        let spec = recipe.initramfs
        var plan = ArchivePlan(epoch: epoch)
        // Merged /usr, as Debian 12: a library closure bringing `/lib -> usr/lib`
        // then agrees with where the modules are.
        for dir in ["/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/lib/modules", "/etc", "/proc", "/sys", "/dev", "/run", "/newroot", "/root"] {
            plan.addDirectory(dir)
        }
        plan.addSymlink("/lib", target: "usr/lib")
        plan.addDirectory("/tmp", mode: 0o1777)
        plan.addDevice("/dev/console", .characterDevice(major: 5, minor: 1), mode: 0o600)
        plan.addDevice("/dev/null", .characterDevice(major: 1, minor: 3), mode: 0o666)

        // busybox and its applets
        let busybox: String
        switch spec.busybox {
        case .host: busybox = try host.busybox()
        case .rootfs: busybox = tree.hostPath(try tree.resolve("/bin/busybox", followLast: true))
        }
        let elf: ELFObject
        do { elf = try ELFObject.read(path: busybox) } catch {
            throw BuildError.busybox("\(recipe.file): busybox (\(spec.busybox.rawValue)): \(error)")
        }
        if !elf.isStatic {
            throw BuildError.busybox("\(recipe.file): \(busybox) is dynamically linked; stage 1 needs a static busybox (apt-get install busybox-static)")
        }
        if elf.machine != recipe.arch.elfMachine {
            throw BuildError.busybox("\(recipe.file): \(busybox) is not an \(recipe.arch) program (ELF machine \(elf.machine))")
        }
        try plan.addHostFile("/bin/busybox", from: busybox, mode: 0o755)
        for applet in try host.applets(of: busybox) where applet != "/bin/busybox" {
            plan.addSymlink(applet, target: "/bin/busybox")
        }

        // stage-1 programs
        plan.addText("/init", try spec.initTemplate.map(readTextFile) ?? StageOneScripts.initScript, mode: 0o755)
        plan.addText(StageOneScripts.configPath,
                     StageOneScripts.config(onFail: spec.onFail, onFailDelay: spec.onFailDelay, retries: spec.downloadRetries))
        plan.addText("/load_img.sh", try spec.loadImageTemplate.map(readTextFile) ?? StageOneScripts.loadImageScript, mode: 0o755)
        plan.addText("/etc/udhcpc.script", StageOneScripts.udhcpcScript, mode: 0o755)

        // kernel modules
        var wanted = spec.modules
        wanted += recipe.image.format.stageOneModules
        var moduleNames: [String] = []
        if !wanted.isEmpty, let dir = kernel.modules {
            let resolution: ModuleResolution
            do {
                resolution = try ModuleResolver(modulesDirectory: URL(fileURLWithPath: dir)).resolve(wanted)
            } catch {
                throw BuildError.modules("\(spec.location.map { "\($0)" } ?? recipe.file): \(error)")
            }
            for skip in resolution.skipped { reporter?.warning("module \(skip)") }
            let base = "/usr/lib/modules/\(kernel.version)"
            for module in resolution.modules {
                try plan.addHostFile(base + "/" + module.path, from: dir + "/" + module.path, mode: 0o644)
            }
            for file in resolution.metadataFiles { plan.addText(base + "/" + file.name, file.contents) }
            plan.addText("/modules.txt", resolution.modulesTxt)
            moduleNames = resolution.modules.map(\.name)
        } else {
            plan.addText("/modules.txt", "")
        }

        // extra binaries with their libraries
        var recipeFiles = Set<String>()
        if !spec.binaries.isEmpty {
            let root = spec.binariesFrom == .host ? host.root : tree.root
            var walker = ELFDependencies(root: root)
            let closure: ELFClosure
            do { closure = try walker.closure(of: spec.binaries) } catch {
                throw BuildError.busybox("\(spec.location.map { "\($0)" } ?? recipe.file): initramfs binaries: \(error)")
            }
            try plan.addClosure(closure.entries, root: root)
            for case .file(let path) in closure.entries { recipeFiles.insert(path) }
        }

        // stage 1's image loader and what the image format needs (zstd) with their libraries, after
        // the recipe's binaries: they come from the host, so where both need one (libc), the host's wins
        let loader = try stageOneLoader(host: host, work: work)
        let stageOne = try Self.stageOneHostPrograms(for: spec, format: recipe.image.format, host: host, loaderLibraries: loader.libraries)
        try plan.addClosure(stageOne, root: host.root)
        // The BitTorrent client reaches ICU only through libxml2, for what stage 1 never does: its 31 MiB
        // of data go in emptied (`ICUStubData`), unless one of the recipe's own binaries needs them.
        if spec.p2p {
            for case .file(let path) in stageOne where ICUStubData.isDataLibrary(path) && !recipeFiles.contains(path) {
                if let stub = ICUStubData.stub(of: path) { plan.addData(path, stub, mode: 0o644) }
            }
        }
        plan.addData(StageOneLoader.initramfsPath, loader.binary, mode: 0o755)

        // extra files
        for file in spec.files {
            switch file.content {
            case .inline(let text): plan.addData(file.path, Data(text.utf8), mode: file.mode)
            case .source(let host): try plan.addHostFile(file.path, from: host, mode: file.mode)
            }
        }

        let total = plan.contentBytes
        step("initramfs", "\(plan.count) entries, \(moduleNames.count) modules, \(formatBytes(total)), \(spec.compression.rawValue)")
        let output = try CompressedOutput(path: path, compression: spec.compression, purpose: .initramfs)
        try plan.write(format: .cpioNewc, sink: output.write) { [weak self] done in
            self?.reporter?.progress("initramfs", done: done, total: total)
        }
        try output.finish()
        return moduleNames
    }
}

extension BaseSource {
    var summary: String {
        switch self {
        case .scratch: return "scratch"
        case .directory(let p): return "directory \(p)"
        case .tarball(let p): return "tarball \(p)"
        case .ociArchive(let p): return "OCI archive \(p)"
        case .debs(let files, let packages): return "\(files.count) .deb files + \(packages.count) packages"
        case .bootstrap(let tool, let suite, _, _, _): return "\(tool.rawValue) \(suite)"
        }
    }
}

extension RootfsTree {
    /// Copies a host file to a host path outside the tree (artifacts).
    func copyHostFile(_ source: String, to destination: String) throws {
        try Tool.run(["cp", "--", source, destination])
        chmod(destination, 0o644)
    }
}

public func formatBytes(_ bytes: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}
