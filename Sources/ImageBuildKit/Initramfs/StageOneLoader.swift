import Foundation

/// Stage 1's image loader, `imagebuild-fetch` (`Sources/imagebuild-fetch/main.c`): streams the
/// stage-2 image in one pass (download, SHA-256 and unpack at once, no compressed copy in RAM)
/// and continues a broken download from the byte it reached with an HTTP Range request.
///
/// It is a small C program linked with the host's libc and Nettle, compiled when the package is
/// built and carried inside the `imagebuild` binary (as the stage-1 scripts are); the build puts
/// it into every initramfs at `initramfsPath` with its shared libraries (the same ELF closure as
/// `initramfs.binaries`). busybox's wget
/// cannot resume into a pipe and its sha256sum runs at a sixth of a 10 Gbit/s link, which is
/// why stage 1 has a loader of its own.
public enum StageOneLoader {
    public static let name = "imagebuild-fetch"
    /// Where `/load_img.sh` finds it.
    public static let initramfsPath = "/usr/bin/imagebuild-fetch"
    /// The program, compiled at package build time by the StageOneLoader plugin.
    public static let binary: [UInt8] = stageOneLoaderBinary
    /// Its C source: a build for another architecture compiles it against that architecture's sysroot
    /// (`Sysroot.compileLoader`).
    public static let source: [UInt8] = stageOneLoaderSource

    /// The host's shared libraries the loader needs (its ELF closure in "/", the loader itself left
    /// out), found once per process: they go into every initramfs next to it.
    public static func libraries() throws(BuildError) -> [ELFClosure.Entry] {
        try cachedLibraries.get()
    }

    private static let cachedLibraries: Result<[ELFClosure.Entry], BuildError> = {
        let directory = NSTemporaryDirectory() + "imagebuild-fetch." + UUID().uuidString
        let file = directory + "/" + name
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try Data(binary).write(to: URL(fileURLWithPath: file))
            var walker = ELFDependencies(root: "/")
            let closure = try walker.closure(of: [file])
            return .success(closure.entries.filter { !$0.path.hasPrefix(directory + "/") && !(directory + "/").hasPrefix($0.path + "/") })
        } catch {
            return .failure(BuildError.stageOne("stage 1's image loader: \(error)"))
        }
    }()

    /// Writes the loader to `path` (mode 0755), for running it on the host (tests, benchmarks).
    public static func install(at path: String) throws {
        try Data(binary).write(to: URL(fileURLWithPath: path))
        chmod(path, 0o755)
    }
}
