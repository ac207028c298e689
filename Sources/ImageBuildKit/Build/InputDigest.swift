import Crypto
import Foundation

/// The digest of everything a build reads, so an unchanged recipe is not rebuilt.
/// Bases fetched from the network (apt, mmdebstrap) have no digest: always rebuilt.
struct InputDigest {
    let recipeDigest: String
    private var hasher = SHA256()
    private(set) var newestMtime: Int64 = 0
    private var cacheable = true

    init(recipe: Recipe) throws {
        let recipeData = try Data(contentsOf: URL(fileURLWithPath: recipe.file))
        recipeDigest = SHA256.hash(data: recipeData).hex
        hasher.update(data: Data("imagebuild \(ImageBuildVersion.current)\n".utf8))
        // The stage-1 programs built into this binary go into the initramfs: a binary with other
        // scripts must not reuse artifacts built with the old ones, whatever its version string says.
        for script in [StageOneScripts.initScript, StageOneScripts.loadImageScript, StageOneScripts.udhcpcScript] {
            hasher.update(data: Data(script.utf8))
        }
        hasher.update(data: recipeData)
        try add(recipe.file, contentHash: false)
        var files: [String] = []
        switch recipe.base {
        case .scratch: break
        case .directory(let dir): try addTree(dir)
        case .tarball(let path), .ociArchive(let path): files.append(path)
        case .debs(let debs, let packages): files += debs; if !packages.isEmpty { cacheable = false }
        case .bootstrap: cacheable = false
        }
        for file in recipe.files + recipe.initramfs.files { if case .source(let path) = file.content { files.append(path) } }
        files += [recipe.initramfs.initTemplate, recipe.initramfs.loadImageTemplate].compactMap { $0 }
        switch recipe.kernel.source {
        case .rootfs: break
        case .path(let pattern): files += HostGlob.matches(pattern)
        case .deb(let deb): files.append(deb)
        }
        if let modules = recipe.kernel.modulesDirectory {
            for dep in HostGlob.matches(modules + "/*/modules.dep") { files.append(dep) }
        }
        if recipe.busybox == .host || recipe.initramfs.busybox == .host, let busybox = try? HostBusybox.path() { files.append(busybox) }
        if !recipe.initramfs.binaries.isEmpty { cacheable = false }
        // stage 1's image loader and the host files it brings into the initramfs
        hasher.update(data: Data(StageOneLoader.binary))
        files += try BuildPipeline.stageOneHostPrograms(for: recipe.image.format).compactMap {
            if case .file(let path) = $0 { return path } else { return nil }
        }
        for file in files.sorted() { try add(file, contentHash: true) }
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
        guard cacheable else { return nil }
        var copy = hasher
        copy.update(data: Data("epoch \(epoch)\n".utf8))
        return copy.finalize().hex
    }
}
