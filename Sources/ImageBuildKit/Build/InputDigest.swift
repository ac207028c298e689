import Crypto
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The digest of everything a build reads, so an unchanged recipe is not rebuilt.
///
/// A build may be reused only when the digest covers every input its artifacts depend on; when
/// something cannot be digested, the build is not cacheable (`uncacheable` says why) and is rebuilt.
/// Recipe bytes, the version, the image-making code and the stage-1 programs of this binary, local files by content, a
/// directory base by names, modes, sizes, owners and times (cheap, and any edit changes it).
///
/// **Network bases.** A `mmdebstrap`/`debootstrap` base is a function of what the mirror publishes
/// for the suites it installs from: each suite's release file (`dists/<suite>/InRelease`, else
/// `Release`) names every package index by its sha256, and each index names every package by its
/// sha256. So the digest covers the release file of each source in `AptSource.sources` (the very
/// list the tool is given), fetched from the mirror when the build starts, plus what resolves and
/// unpacks them on this host: the tool (its file), apt (`apt-get --version`, mmdebstrap resolves
/// with the host's apt), the architecture, and the host's `/etc/resolv.conf` and `/etc/hostname`,
/// which both tools copy into the tree. A mirror that cannot be reached makes the build not cacheable
/// (rebuilt, never reused on a guess). After the tool ran, `confirm` checks that it installed from
/// exactly the release files digested: a suite published in between, or a mirror network whose
/// nodes disagree for a moment, leaves the artifacts without a digest, so they are not reused.
/// `debs` with `packages` (resolved from the host's own apt lists) and `initramfs.binaries` are not
/// cacheable.
struct InputDigest {
    let recipeDigest: String
    private var hasher = SHA256()
    private(set) var newestMtime: Int64 = 0
    /// Why this build may not be reused; empty when it may.
    private(set) var uncacheable: [String] = []
    /// A bootstrap base's release files as the mirror published them when the build started.
    private(set) var releases: [(url: String, sha256: String)] = []

    /// `fetchTimeout` bounds the fetch of each release file, in seconds.
    init(recipe: Recipe, fetchTimeout: Double = 20) throws {
        let recipeData = try Data(contentsOf: URL(fileURLWithPath: recipe.file))
        recipeDigest = SHA256.hash(data: recipeData).hex
        hasher.update(data: Data("imagebuild \(ImageBuildVersion.current)\n".utf8))
        // The code that makes artifacts (ImageBuildKit's sources, digested when the binary is built):
        // a binary that writes images, initramfs files or loaders otherwise must not reuse old ones.
        hasher.update(data: Data("code \(imageBuildCodeDigest)\n".utf8))
        // The stage-1 programs built into this binary go into the initramfs: a binary with other
        // scripts must not reuse artifacts built with the old ones, whatever its version string says.
        for script in [StageOneScripts.initScript, StageOneScripts.loadImageScript, StageOneScripts.udhcpcScript] {
            hasher.update(data: Data(script.utf8))
        }
        hasher.update(data: recipeData)
        try add(recipe.file, contentHash: false)
        // Keys named by file are read when the recipe is loaded: the recipe's bytes hold only the names.
        for spec in recipe.authorizedKeys {
            hasher.update(data: Data("authorized_keys \(spec.user)\n\(spec.keys.joined(separator: "\n"))\n".utf8))
        }
        var files: [String] = []
        switch recipe.base {
        case .scratch: break
        case .directory(let dir): try addTree(dir)
        case .tarball(let path), .ociArchive(let path): files.append(path)
        case .debs(let debs, let packages):
            files += debs
            if !packages.isEmpty { uncacheable.append("'debs' fetches packages with the host's apt") }
        case .bootstrap(let tool, _, _, _, _):
            addBootstrap(tool: tool, sources: recipe.base.bootstrapSources ?? [], fetchTimeout: fetchTimeout)
        }
        for file in recipe.files + recipe.initramfs.files { if case .source(let path) = file.content { files.append(path) } }
        files += [recipe.initramfs.initTemplate, recipe.initramfs.loadImageTemplate].compactMap { $0 }
        hasher.update(data: Data("arch \(recipe.arch)\n".utf8))
        if recipe.arch.isForeign {
            addSysroot(recipe, fetchTimeout: fetchTimeout)
        } else {
            files += try nativeHostFiles(recipe)
        }
        for file in files.sorted() { try add(file, contentHash: true) }
    }

    /// The host files a build for this machine's architecture reads: the kernel, its module index,
    /// busybox, stage 1's loader (this binary's) and the libraries and programs it brings.
    mutating func nativeHostFiles(_ recipe: Recipe) throws -> [String] {
        var files: [String] = []
        switch recipe.kernel.source {
        case .rootfs: break
        case .path(let pattern): files += HostGlob.matches(pattern)
        case .deb(let deb): files.append(deb)
        }
        if let modules = recipe.kernel.modulesDirectory {
            for dep in HostGlob.matches(modules + "/*/modules.dep") { files.append(dep) }
        }
        if recipe.busybox == .host || recipe.initramfs.busybox == .host, let busybox = try? HostBusybox.path() { files.append(busybox) }
        if !recipe.initramfs.binaries.isEmpty { uncacheable.append("initramfs.binaries are copied with their libraries from the host") }
        // stage 1's image loader and the host files it brings into the initramfs
        hasher.update(data: Data(StageOneLoader.binary))
        files += try BuildPipeline.stageOneHostPrograms(for: recipe.initramfs, format: recipe.image.format).compactMap {
            if case .file(let path) = $0 { return path } else { return nil }
        }
        return files
    }

    /// A build for another architecture reads its host files from a sysroot it fetches (`Sysroot`):
    /// digested like a `mmdebstrap` base, by the release files of its suites and the packages asked
    /// for, plus the compiler stage 1's loader is built with and the loader's source. A `kernel.deb`
    /// file and `kernel.modules` are read as given (the latter in the sysroot, digested with it).
    mutating func addSysroot(_ recipe: Recipe, fetchTimeout: Double) {
        hasher.update(data: Data("sysroot \(Sysroot.packages(for: recipe).joined(separator: " "))\n".utf8))
        addBootstrap(tool: .mmdebstrap, sources: Sysroot.sources(for: recipe), fetchTimeout: fetchTimeout)
        if let output = try? Tool.run(["clang", "--version"]), let line = output.split(separator: "\n").first {
            hasher.update(data: Data("clang: \(line)\n".utf8))
        } else {
            uncacheable.append("cannot run clang --version")
        }
        hasher.update(data: Data(StageOneLoader.source))
        if case .deb(let deb) = recipe.kernel.source, let digest = try? sha256File(deb).digest {
            hasher.update(data: Data("\(deb) \(digest)\n".utf8))
        }
        if !recipe.initramfs.binaries.isEmpty {
            hasher.update(data: Data("binaries \(recipe.initramfs.binaries.joined(separator: " "))\n".utf8))
        }
    }

    mutating func add(_ path: String, contentHash: Bool) throws {
        var info = stat()
        guard stat(path, &info) == 0 else { throw RootfsError.system(operation: "stat", path: path, errno: errno) }
        newestMtime = max(newestMtime, Int64(info.st_mtim.tv_sec))
        guard contentHash else { return }
        hasher.update(data: Data("\(path)\n".utf8))
        if (info.st_mode & S_IFMT) == S_IFREG {
            hasher.update(data: Data(try sha256File(path).digest.utf8))
        }
    }

    /// A directory base is digested by names, sizes and mtimes, not contents: cheap, and any edit changes it.
    mutating func addTree(_ dir: String) throws {
        guard let walker = FileManager.default.enumerator(atPath: dir) else { return }
        var lines: [String] = []
        while let name = walker.nextObject() as? String {
            var info = stat()
            if lstat(dir + "/" + name, &info) == 0 {
                lines.append("\(name) \(info.st_mode) \(info.st_size) \(info.st_mtim.tv_sec) \(info.st_uid):\(info.st_gid)")
                newestMtime = max(newestMtime, Int64(info.st_mtim.tv_sec))
            }
        }
        hasher.update(data: Data(lines.sorted().joined(separator: "\n").utf8))
    }

    func digest(epoch: Int64) -> String? {
        guard uncacheable.isEmpty else { return nil }
        var copy = hasher
        copy.update(data: Data("epoch \(epoch)\n".utf8))
        return copy.finalize().hex
    }
}

// MARK: network bases

extension InputDigest {
    mutating func addBootstrap(tool: BootstrapTool, sources: [AptSource], fetchTimeout: Double) {
        hasher.update(data: Data("bootstrap \(tool.rawValue)\n".utf8))
        if let path = Tool.find(tool.rawValue), let file = try? sha256File(path) {
            hasher.update(data: Data("\(path) \(file.digest)\n".utf8))
        } else {
            uncacheable.append("\(tool.rawValue) is not installed")
        }
        var commands = [["dpkg", "--print-architecture"]]
        if tool == .mmdebstrap { commands.append(["apt-get", "--version"]) }
        for command in commands {
            if let output = try? Tool.run(command), let line = output.split(separator: "\n").first {
                hasher.update(data: Data("\(command.joined(separator: " ")): \(line)\n".utf8))
            } else {
                uncacheable.append("cannot run \(command.joined(separator: " "))")
            }
        }
        for file in ["/etc/resolv.conf", "/etc/hostname"] {
            hasher.update(data: Data("\(file) \((try? sha256File(file).digest) ?? "absent")\n".utf8))
        }
        for source in sources {
            switch Self.fetchRelease(of: source, timeout: fetchTimeout) {
            case .success(let (url, data)):
                let digest = SHA256.hash(data: data).hex
                releases.append((url, digest))
                hasher.update(data: Data("\(url) \(digest)\n".utf8))
            case .failure(let failure):
                uncacheable.append(failure.reason)
            }
        }
    }

    /// Checks the release files the bootstrap tool installed from (`RootfsAssembler.Result`) against
    /// the ones digested; when one of them is not among the tool's, the build is not cacheable.
    mutating func confirm(_ assembly: RootfsAssembler.Result) {
        guard let used = assembly.bootstrapReleases else { return }
        for release in releases where !used.contains(release.sha256) {
            uncacheable.append("the bootstrap did not install from the \(release.url) digested when the build started"
                               + " (the mirror changed during the build, or its release files could not be read)")
        }
    }

    struct FetchFailure: Error { let reason: String }

    /// The release file of a suite: `InRelease`, else `Release` (only when the mirror says the first
    /// does not exist). http(s) mirrors are asked with a bounded GET that no cache answers; `file:`
    /// mirrors are read. Anything else fails: the caller then does not cache.
    static func fetchRelease(of source: AptSource, timeout: Double) -> Result<(url: String, data: Data), FetchFailure> {
        let urls = source.releaseFiles
        for (index, url) in urls.enumerated() {
            let last = index == urls.count - 1
            guard let parsed = URL(string: url), let scheme = parsed.scheme?.lowercased() else {
                return .failure(FetchFailure(reason: "cannot digest the mirror '\(source.uri)': not a URL"))
            }
            switch scheme {
            case "file":
                if let data = FileManager.default.contents(atPath: parsed.path) { return .success((url, data)) }
                if !last, !FileManager.default.fileExists(atPath: parsed.path) { continue }
                return .failure(FetchFailure(reason: "cannot read \(url)"))
            case "http", "https":
                let answer = httpGet(parsed, timeout: timeout)
                if answer.status == 200, let data = answer.data { return .success((url, data)) }
                if !last, answer.status == 404 || answer.status == 410 { continue }
                return .failure(FetchFailure(reason: "cannot fetch \(url): \(answer.error ?? "HTTP \(answer.status)")"))
            default:
                return .failure(FetchFailure(reason: "cannot digest a \(scheme): mirror (\(source.uri))"))
            }
        }
        return .failure(FetchFailure(reason: "no release file for \(source)"))
    }

    /// A GET bounded by `timeout` (request and whole exchange), never answered from a cache.
    static func httpGet(_ url: URL, timeout: Double) -> (status: Int, data: Data?, error: String?) {
        final class Answer: @unchecked Sendable {
            var status = 0
            var data: Data?
            var error: String?
        }
        let configuration = URLSessionConfiguration.ephemeral
        configuration.requestCachePolicy = .reloadIgnoringLocalAndRemoteCacheData
        configuration.urlCache = nil
        configuration.timeoutIntervalForRequest = timeout
        configuration.timeoutIntervalForResource = timeout
        let session = URLSession(configuration: configuration)
        defer { session.finishTasksAndInvalidate() }
        let answer = Answer()
        let done = DispatchSemaphore(value: 0)
        let task = session.dataTask(with: URLRequest(url: url, cachePolicy: .reloadIgnoringLocalAndRemoteCacheData, timeoutInterval: timeout)) { data, response, error in
            answer.status = (response as? HTTPURLResponse)?.statusCode ?? 0
            answer.data = data
            answer.error = error.map { $0.localizedDescription }
            done.signal()
        }
        task.resume()
        if done.wait(timeout: .now() + timeout + 5) == .timedOut {
            task.cancel()
            // The handler still runs after cancel; wait for it so `answer` is not written afterwards.
            _ = done.wait(timeout: .now() + 5)
            return (0, nil, "no answer within \(Int(timeout)) s")
        }
        return (answer.status, answer.data, answer.error)
    }
}
