import Foundation
@testable import ImageBuildKit
import Testing
import TestSupport
@testable import BootServer

/// The server's seeders as their supervisor keeps them, with the real aria2c: one per published torrent,
/// started again after it dies (not before `restartDelay`), stopped when its image is no longer published.
@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/aria2c")
                && FileManager.default.fileExists(atPath: "/usr/lib/PXELINUX/pxelinux.0"),
                "needs aria2 and the boot loaders (scripts/setup installs them)"))
struct SwarmSeederTests {
    static let inventory = """
        network: {server: 127.0.0.1, subnet: 127.0.0.0/8, http_port: 8080}
        defaults: {image: fs, distribution: DISTRIBUTION}
        nodes:
          - {mac: "52:54:00:77:00:01", hostname: node001, ip: 127.0.0.11}
        """

    /// An artifacts folder whose "squashfs" image is 1 MiB of random bytes, with aria2c in its initramfs.
    static func artifact(in dir: String) throws -> String {
        let path = dir + "/artifacts/fs"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        var generator = SystemRandomNumberGenerator()
        try Data((0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }).write(to: URL(fileURLWithPath: path + "/image.squashfs"))
        var files: [String: Manifest.FileInfo] = [:]
        for file in ["vmlinuz", "initramfs.img", "cmdline"] { try Data("fs \(file)\n".utf8).write(to: URL(fileURLWithPath: path + "/" + file)) }
        for file in ["vmlinuz", "initramfs.img", "cmdline", "image.squashfs"] {
            let info = try sha256File(path + "/" + file)
            files[file] = .init(sha256: info.digest, size: info.size)
        }
        let manifest = Manifest(name: "fs", toolVersion: "t", recipeDigest: "r", inputDigest: nil, sourceDateEpoch: 0, kernelVersion: "6.1",
                                cmdline: "console=ttyS0 imagebuild.sha256=\(files["image.squashfs"]!.sha256) imagebuild.format=squashfs",
                                imageFormat: "squashfs", initramfsCompression: "gzip", modules: [], files: files, p2pClient: "aria2c")
        try manifest.encoded().write(to: URL(fileURLWithPath: path + "/manifest.json"))
        return path
    }

    static func waitUntil(_ seconds: Double, _ condition: () -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        return condition()
    }

    /// The pids of aria2c processes seeding `torrent` from `state` (each seeder's command line names both).
    static func seederPIDs(_ state: String) throws -> [pid_t] {
        // "[r]": the pattern does not match the shell that runs pgrep, whose own command line holds it.
        try ProcessRunner.shell("pgrep -f -- '--di[r]=\(state)/swarm/'", timeout: 10).stdout.split(separator: "\n").compactMap { pid_t($0) }
    }

    @Test(.timeLimit(.minutes(1)))
    func aSeederThatDiesIsStartedAgainAndAnUnpublishedOneIsStopped() async throws {
        do {
            let dir = NSTemporaryDirectory() + "ib-seeder-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let root = dir + "/root", state = dir + "/state"
            let artifact = try Self.artifact(in: dir)
            let p2p = try InventoryLoader.parse(Self.inventory.replacingOccurrences(of: "DISTRIBUTION", with: "p2p"), file: "nodes.yaml")
            let index = try Publisher(root: root, inventory: p2p).publish(artifacts: [artifact])
            let torrent = Torrent.path(of: index.images["fs"]!)

            let seeder = SwarmSeeder(configuration: .init(root: root, stateDirectory: state, listen: "127.0.0.1", firstPort: 47_100,
                                                          aria2c: "/usr/bin/aria2c", restartDelay: 1),
                                     logger: testLogger("swarm"))
            seeder.reconcile()
            #expect(seeder.seeding == [torrent])
            let first = try Self.seederPIDs(state)
            #expect(first.count == 1, "one aria2c for the one torrent: \(first)")
            // The supervisor does not start a second one while the first runs.
            seeder.reconcile()
            #expect(try Self.seederPIDs(state) == first)

            // Killed: noticed at the next check, started again once restartDelay has passed, not before.
            kill(first[0], SIGKILL)
            #expect(try await Self.waitUntil(5) { seeder.seeding.isEmpty }, "the dead seeder is still counted")
            seeder.reconcile()
            #expect(seeder.seeding.isEmpty, "started again at once, before restartDelay")
            try await Task.sleep(for: .milliseconds(1_100))
            seeder.reconcile()
            #expect(seeder.seeding == [torrent], "not started again after restartDelay")
            let second = try Self.seederPIDs(state)
            #expect(second.count == 1 && second != first, "no new aria2c: \(second) (was \(first))")

            // A generation without the swarm: the torrent is gone, and so is its seeder.
            let http = try InventoryLoader.parse(Self.inventory.replacingOccurrences(of: "DISTRIBUTION", with: "http"), file: "nodes.yaml")
            try Publisher(root: root, inventory: http).publish(artifacts: [artifact])
            seeder.reconcile()
            #expect(seeder.seeding.isEmpty)
            #expect(try await Self.waitUntil(5) { ((try? Self.seederPIDs(state)) ?? [0]).isEmpty }, "the unpublished torrent's aria2c still runs")
        }
    }
}
