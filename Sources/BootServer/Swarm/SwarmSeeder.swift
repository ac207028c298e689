import Foundation
import ImageBuildKit
import Logging
import Synchronization

/// The boot server seeds every published torrent over BitTorrent itself (docs/swarm.md): one
/// `aria2c` per torrent, a child of `imagebuild serve`, announcing to the server's own tracker, which
/// hands it to every downloader first.
///
/// Why not the web seed alone: a web seed sends every node that asks whatever pieces it asks for, so
/// in a storm the server's uplink is spread over hundreds of half-fetched pieces, nodes have little
/// to give each other, and the server sends many copies. A BitTorrent seeder unchokes a few peers at
/// a time and sends each piece to one of them, who pass it on: the server sends about one copy, and
/// stage 1 falls back to the web seed only when the swarm gives a node nothing (`load_img.sh`).
///
/// Each seeder reads the published image in place, through a symlink in the state directory (where
/// aria2c keeps its own files): nothing is written into the boot root. It seeds without re-hashing:
/// publish verified the image, and each node checks every piece and the whole file. A seeder that
/// exits is started again; one whose image is no longer published is stopped; all are stopped with
/// the server, and each exits by itself should the server die (`--stop-with-process`).
final class SwarmSeeder: Sendable {
    struct Configuration: Sendable {
        var root: String
        var stateDirectory: String
        /// The address to bind (nil: every address).
        var listen: String?
        /// The first port tried; each seeder takes the next free one of the 64 from here.
        var firstPort: Int
        var aria2c: String
        /// How often the published generation is compared with the running seeders.
        var checkInterval: Duration = .seconds(2)
        /// How long a seeder that exited waits before it is started again.
        var restartDelay: TimeInterval = 10
    }

    /// The `aria2c` on PATH, or nil.
    static func findClient(path: String? = ProcessInfo.processInfo.environment["PATH"]) -> String? {
        for folder in (path ?? "/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(folder)/aria2c"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    private struct Child {
        var process: Process
        var image: PublishedImage
        var exitedAt: Date?
    }

    let configuration: Configuration
    private let logger: Logger
    private let index: PublishIndexCache
    /// Running seeders by torrent path (which names the image and its digest).
    private let children = Mutex<[String: Child]>([:])

    init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        index = PublishIndexCache(root: configuration.root)
    }

    /// Seeds until cancelled, then stops every seeder.
    func run() async {
        defer { stopAll() }
        while !Task.isCancelled {
            reconcile()
            do { try await Task.sleep(for: configuration.checkInterval) } catch { break }
        }
    }

    /// Torrent paths of the seeders running now (tests).
    var seeding: [String] { children.withLock { $0.filter { $0.value.process.isRunning }.keys.sorted() } }

    /// Starts a seeder for each published torrent that has none (or whose seeder exited long enough
    /// ago), and stops those whose torrent is no longer published.
    func reconcile(now: Date = Date()) {
        var wanted: [String: PublishedImage] = [:]
        for image in (index.current()?.images ?? [:]).values {
            let torrent = Torrent.path(of: image)
            if access(configuration.root + "/" + torrent, R_OK) == 0 { wanted[torrent] = image }
        }
        let stale: [Process] = children.withLock { children in
            var stale: [Process] = []
            for (torrent, child) in children where wanted[torrent] == nil {
                stale.append(child.process)
                children[torrent] = nil
            }
            return stale
        }
        for process in stale { Self.stop(process) }
        for (torrent, image) in wanted.sorted(by: { $0.key < $1.key }) {
            let due: Bool = children.withLock { children in
                guard var child = children[torrent] else { return true }
                if child.process.isRunning { return false }
                if child.exitedAt == nil {
                    child.exitedAt = now
                    children[torrent] = child
                    logger.warning("swarm: the seeder of \(image.name) exited (status \(child.process.terminationStatus)); starting it again in \(Int(configuration.restartDelay)) s",
                                   metadata: ["log": "\(folder(of: image))/aria2c.log"])
                }
                return now.timeIntervalSince(child.exitedAt!) >= configuration.restartDelay
            }
            guard due else { continue }
            do {
                let process = try start(image, torrent: torrent)
                children.withLock { $0[torrent] = Child(process: process, image: image) }
                logger.info("swarm: seeding \(image.name) over BitTorrent", metadata: ["pid": "\(process.processIdentifier)", "torrent": "\(torrent)"])
            } catch {
                children.withLock { $0[torrent] = nil }
                logger.error("swarm: cannot seed \(image.name): \(error)")
            }
        }
    }

    func folder(of image: PublishedImage) -> String {
        configuration.stateDirectory + "/swarm/\(image.name)-\(image.digest)"
    }

    /// The aria2c command line of one seeder.
    func arguments(for image: PublishedImage, torrent: String) -> [String] {
        let folder = folder(of: image)
        var arguments = [
            "--dir=\(folder)", "--seed-ratio=0.0", "--bt-seed-unverified=true", "--check-integrity=false",
            "--file-allocation=none", "--allow-overwrite=false", "--auto-save-interval=0",
            // The tracker alone names peers: nodes of this cluster only.
            "--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
            "--disable-ipv6=true", "--listen-port=\(configuration.firstPort)-\(configuration.firstPort + 63)",
            "--bt-max-peers=200", "--stop-with-process=\(getpid())",
            "--summary-interval=0", "--console-log-level=error", "--log=\(folder)/aria2c.log", "--log-level=notice",
        ]
        if let listen = configuration.listen, listen != "0.0.0.0" { arguments.append("--interface=\(listen)") }
        arguments += ["-T", configuration.root + "/" + torrent]
        return arguments
    }

    private func start(_ image: PublishedImage, torrent: String) throws -> Process {
        let folder = folder(of: image)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        // The image, by the name the torrent gives it, read where publish put it.
        let link = folder + "/" + image.imageFile
        let target = configuration.root + "/" + image.path + "/" + image.imageFile
        if (try? FileManager.default.destinationOfSymbolicLink(atPath: link)) != target {
            unlink(link)
            try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        }
        unlink(link + ".aria2")  // a control file would have aria2c resume a download instead of seeding
        let process = Process()
        process.executableURL = URL(fileURLWithPath: configuration.aria2c)
        process.arguments = arguments(for: image, torrent: torrent)
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    private func stopAll() {
        let all = children.withLock { children in
            defer { children = [:] }
            return children.values.map(\.process)
        }
        for process in all { Self.stop(process) }
    }

    /// SIGTERM (aria2c then tells the tracker it stopped), SIGKILL after 3 s.
    private static func stop(_ process: Process) {
        guard process.isRunning else { return }
        process.terminate()
        for _ in 0..<30 where process.isRunning { usleep(100_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
