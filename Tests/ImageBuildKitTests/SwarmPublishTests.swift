import Foundation
import Testing
import TestSupport
@testable import ImageBuildKit

/// `distribution: p2p`: the inventory's setting, publish's refusals, and the torrents it writes (checked
/// by the real client, aria2c, which nodes run).
@Suite struct SwarmPublishTests {
    let dir = TemporaryDirectory("swarm-publish")

    static let inventoryText = """
        network: {server: 10.77.0.1, subnet: 10.77.0.0/24, http_port: 8080}
        defaults: {image: fs}
        groups:
          rack1: {distribution: p2p, seed_time: 120}
        ranges:
          - {cidr: 10.77.0.16/28, seed_time: 30}
        nodes:
          - {mac: "52:54:00:77:00:01", hostname: n1, ip: 10.77.0.11, group: rack1}
          - {mac: "52:54:00:77:00:02", hostname: n2, ip: 10.77.0.17, group: rack1}
          - {mac: "52:54:00:77:00:03", hostname: n3, ip: 10.77.0.18, group: rack1, distribution: http}
          - {mac: "52:54:00:77:00:04", hostname: n4, ip: 10.77.0.12}
        """

    @Test func bencodeIsCanonicalAndRoundTrips() throws {
        let value = Bencode.dictionary(["zeta": .integer(-3), "alpha": .list([.string("x"), .bytes([0, 255])]), "b": .dictionary([:])])
        #expect(value.encoded == Array("d5:alphal1:x2:".utf8) + [0, 255] + Array("e1:bde4:zetai-3ee".utf8))
        #expect(try Bencode.decode(value.encoded) == value)
        #expect(throws: Bencode.DecodeError(offset: 1, reason: "bad string length")) { try Bencode.decode(Array("l9:abce".utf8)) }
        #expect(throws: Bencode.DecodeError(offset: 3, reason: "data after the value")) { try Bencode.decode(Array("i1ex".utf8)) }
        #expect(throws: Bencode.DecodeError(offset: 1, reason: "a dictionary key must be a string")) { try Bencode.decode(Array("di1ei2ee".utf8)) }
        #expect(throws: Bencode.DecodeError.self) { try Bencode.decode(Array(repeating: UInt8(ascii: "l"), count: 100) + Array(repeating: UInt8(ascii: "e"), count: 100)) }
    }

    @Test func aCachedInfoIsKeptOnlyWhileItsPieceLengthIsTheRule() throws {
        let folder = dir.path + "/cached"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let size = (1 << 20) + 1
        try Data((0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }).write(to: URL(fileURLWithPath: folder + "/image.squashfs"))
        func cache(pieceLength: Int) throws {
            let info = Bencode.dictionary(["length": .integer(Int64(size)), "name": .string("image.squashfs"),
                                           "piece length": .integer(Int64(pieceLength)), "pieces": .bytes([UInt8](repeating: 7, count: 20))])
            try Data(info.encoded).write(to: URL(fileURLWithPath: folder + "/" + Torrent.infoFile))
        }
        // The rule's piece length: the cache is used as it is (its made-up hash shows it was not recomputed).
        try cache(pieceLength: Torrent.pieceLength(forSize: Int64(size)))
        #expect(try Torrent.info(ofImageIn: folder, imageFile: "image.squashfs")["pieces"] == .bytes([UInt8](repeating: 7, count: 20)))
        // Pieces of 1 MiB, cached by an earlier version: hashed again, and the cache replaced.
        try cache(pieceLength: 1 << 20)
        let info = try Torrent.info(ofImageIn: folder, imageFile: "image.squashfs")
        #expect(info == (try Torrent.info(ofFile: folder + "/image.squashfs", name: "image.squashfs")))
        #expect(info["piece length"] == .integer(256 << 10))
        #expect(try Bencode.decode(Data(contentsOf: URL(fileURLWithPath: folder + "/" + Torrent.infoFile))) == info)
    }

    @Test func distributionIsTheNearestLevelsAndTheRangeCountsForANode() throws {
        let inventory = try InventoryLoader.parse(Self.inventoryText, file: "nodes.yaml")
        let resolved = inventory.nodes.map { inventory.resolved($0) }
        #expect(resolved.map(\.distribution) == [.p2p, .p2p, .http, .http])
        #expect(resolved.map(\.seedTime) == [120, 30, 30, Inventory.defaultSeedTime], "node > range > group > defaults")
        #expect(resolved[0].distributionLocation == ConfigLocation(file: "nodes.yaml", line: 4, column: 25))
        let plan = BootPlan(inventory: inventory, images: ["fs": Self.image(mounted: true, client: true)])
        guard case .boot(let target, _) = plan.answer(mac: inventory.nodes[1].mac, ip: nil) else { Issue.record("n2 does not boot"); return }
        let line = plan.renderer.kernelCommandLine(target)
        #expect(line.contains("imagebuild.torrent=http://10.77.0.1:8080/torrents/fs-0123456789abcdef.torrent imagebuild.seed=30"), "\(line)")
        guard case .boot(let httpTarget, _) = plan.answer(mac: inventory.nodes[2].mac, ip: nil) else { Issue.record("n3 does not boot"); return }
        #expect(!plan.renderer.kernelCommandLine(httpTarget).contains("imagebuild.torrent="))
        #expect(plan.swarmImages.map(\.name) == ["fs"])
        // publish.json records which nodes' command lines name the torrent, so turning the swarm on or
        // off for a node is a change `nodes check` reports until the next publish.
        let index = plan.files(generation: 1).index
        #expect(index.nodes.map { $0.torrent != nil } == [true, true, false, false])
        #expect(InventoryDrift(inventory: inventory, published: index).changed.isEmpty)
        let switched = try InventoryLoader.parse(Self.inventoryText.replacingOccurrences(of: "hostname: n3, ip: 10.77.0.18, group: rack1, distribution: http",
                                                                                          with: "hostname: n3, ip: 10.77.0.18, group: rack1")
            .replacingOccurrences(of: "hostname: n4, ip: 10.77.0.12}", with: "hostname: n4, ip: 10.77.0.12, distribution: p2p}"), file: "nodes.yaml")
        #expect(InventoryDrift(inventory: switched, published: index).changed == [
            "n3 (52:54:00:77:00:03): distribution http -> p2p", "n4 (52:54:00:77:00:04): distribution http -> p2p",
        ])
    }

    @Test(arguments: [
        ("defaults: {image: fs, distribution: torrent}", "nodes.yaml:2:37: unknown distribution 'torrent'"),
        ("defaults: {image: fs, seed_time: -1}", "nodes.yaml:2:34: -1 is out of range 0...86400"),
    ])
    func badValuesAreLocated(line: String, expected: String) {
        let text = "network: {server: 10.77.0.1, subnet: 10.77.0.0/24}\n\(line)\nnodes: []\n"
        #expect { try InventoryLoader.parse(text, file: "nodes.yaml") } throws: { error in
            "\(error)".hasPrefix(expected) || { Issue.record("got: \(error)"); return false }()
        }
    }

    @Test func aSwarmNoNodeCouldSeedIsALocatedError() throws {
        let inventory = try InventoryLoader.parse(Self.inventoryText, file: "nodes.yaml")
        let unpacked = BootPlan(inventory: inventory, images: ["fs": Self.image(mounted: false, client: true)]).distributionProblems()
        #expect(unpacked.map(\.description) == [
            "nodes.yaml:4:25: distribution: p2p for n1 (52:54:00:77:00:01): image 'fs' is tar.gz, which stage 1 unpacks and cannot seed"
                + " (build it with image.format: squashfs (or erofs))",
        ])
        let noClient = BootPlan(inventory: inventory, images: ["fs": Self.image(mounted: true, client: false)]).distributionProblems()
        #expect(noClient.count == 1)
        #expect(noClient.first?.message.contains("has no BitTorrent client in its initramfs") == true)
        #expect(noClient.first?.hint?.contains("'p2p: true' under initramfs") == true)
        #expect(BootPlan(inventory: inventory, images: ["fs": Self.image(mounted: true, client: true)]).distributionProblems().isEmpty)
    }

    static func image(mounted: Bool, client: Bool) -> PublishedImage {
        var image = sampleImage("fs")
        image.imageFile = mounted ? "image.squashfs" : "image.tar.gz"
        image.p2pClient = client ? "aria2c" : nil
        return image
    }

    /// An artifact folder with a squashfs-named image of `size` pseudo-random bytes.
    func artifact(size: Int, client: Bool = true) throws -> String {
        let path = dir.path + "/artifacts/fs"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        var generator = SystemRandomNumberGenerator()
        var bytes = [UInt8](repeating: 0, count: size)
        for index in stride(from: 0, to: size, by: 8) {
            let word = generator.next() as UInt64
            for offset in 0..<min(8, size - index) { bytes[index + offset] = UInt8(truncatingIfNeeded: word >> (8 * offset)) }
        }
        try Data(bytes).write(to: URL(fileURLWithPath: path + "/image.squashfs"))
        var files: [String: Manifest.FileInfo] = [:]
        for file in ["vmlinuz", "initramfs.img", "cmdline"] { try Data("fs \(file)\n".utf8).write(to: URL(fileURLWithPath: path + "/" + file)) }
        for file in ["vmlinuz", "initramfs.img", "cmdline", "image.squashfs"] {
            let info = try sha256File(path + "/" + file)
            files[file] = .init(sha256: info.digest, size: info.size)
        }
        let manifest = Manifest(name: "fs", toolVersion: "t", recipeDigest: "r", inputDigest: nil, sourceDateEpoch: 0, kernelVersion: "6.1",
                                cmdline: "console=ttyS0 imagebuild.sha256=\(files["image.squashfs"]!.sha256) imagebuild.format=squashfs",
                                imageFormat: "squashfs", initramfsCompression: "gzip", modules: [], files: files,
                                p2pClient: client ? "aria2c" : nil)
        try manifest.encoded().write(to: URL(fileURLWithPath: path + "/manifest.json"))
        return path
    }

    static let aria2cInstalled = FileManager.default.isExecutableFile(atPath: "/usr/bin/aria2c")

    /// The torrent publish writes is what aria2c reads: the same info-hash, and the image it names passes
    /// aria2c's own check of every piece. Two roots get the same bytes; the pieces are hashed once per image.
    @Test(.enabled(if: PublisherTests.bootloadersInstalled && aria2cInstalled, "needs the boot loaders and aria2 (scripts/setup installs them)"))
    func publishWritesATorrentAria2cAccepts() throws {
        let inventory = try InventoryLoader.parse(Self.inventoryText, file: "nodes.yaml")
        let piece = Torrent.pieceLength(forSize: 1 << 20)
        let artifact = try artifact(size: 3 * piece + 12_345)  // four pieces, the last one short
        var torrents: [[UInt8]] = []
        for name in ["a", "b"] {
            let root = dir.path + "/\(name)/tftpboot"
            let index = try Publisher(root: root, inventory: inventory).publish(artifacts: [artifact])
            let image = index.images["fs"]!
            let torrentPath = root + "/" + Torrent.path(of: image)
            let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: torrentPath)))
            torrents.append(bytes)
            #expect(FileManager.default.fileExists(atPath: root + "/\(image.path)/\(Torrent.infoFile)"))

            let torrent = try Bencode.decode(bytes)
            #expect(torrent["announce"]?.stringValue == "http://10.77.0.1:8080/boot/v1/announce")
            #expect(torrent["url-list"] == .list([.string("http://10.77.0.1:8080/\(image.path)/image.squashfs")]))
            #expect(torrent["imagebuild sha256"]?.stringValue == image.sha256)
            #expect(piece == 256 << 10 && torrent["info"]?["piece length"] == .integer(Int64(piece)))

            let shown = try sh("aria2c -S \(torrentPath)")
            let hash = Torrent.infoHash(torrent["info"]!).map { String(format: "%02x", $0) }.joined()
            #expect(shown.contains("Info Hash: \(hash)"), "\(shown)")
            #expect(shown.contains("The Number of Pieces: 4"))
            let checked = try sh("aria2c --check-integrity=true --seed-time=0 --bt-exclude-tracker='*' --enable-dht=false --bt-enable-lpd=false"
                                 + " --console-log-level=warn --summary-interval=0 -d \(root)/\(image.path) -T \(torrentPath)")
            #expect(checked.contains("|OK  |"), "aria2c did not accept the image against the torrent: \(checked)")
        }
        #expect(torrents[0] == torrents[1], "two publishes wrote different torrents")

        // Without p2p anywhere, no torrent.
        let plain = try InventoryLoader.parse("network: {server: 10.77.0.1, subnet: 10.77.0.0/24}\ndefaults: {image: fs}\nnodes: []\n", file: "nodes.yaml")
        let root = dir.path + "/plain/tftpboot"
        try Publisher(root: root, inventory: plain).publish(artifacts: [artifact])
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/torrents").isEmpty)
    }

    /// Refused before anything is created: a root stays as it was.
    @Test func publishRefusesASwarmWithoutAClientAndCreatesNothing() throws {
        let inventory = try InventoryLoader.parse(Self.inventoryText, file: "nodes.yaml")
        let root = dir.path + "/refused"
        #expect { try Publisher(root: root, inventory: inventory).publish(artifacts: [try artifact(size: 1000, client: false)]) } throws: { error in
            "\(error)".contains("nodes.yaml:4:25: distribution: p2p for n1") && "\(error)".contains("no BitTorrent client")
        }
        #expect(!FileManager.default.fileExists(atPath: root))
    }
}

/// ICU's data library emptied for the p2p client's initramfs: still a library the dynamic linker loads
/// and aria2c runs with, its package an empty table of contents, and nothing but zeros after it.
@Suite struct ICUStubDataTests {
    static let library = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/x86_64-linux-gnu"))?
        .filter { $0.hasPrefix("libicudata.so.") && $0.split(separator: ".").count == 3 }.first.map { "/usr/lib/x86_64-linux-gnu/" + $0 }

    @Test(.enabled(if: library != nil && SwarmPublishTests.aria2cInstalled, "needs libicu72 and aria2 (scripts/setup installs aria2, which brings it)"))
    func theStubLoadsAndIsEmpty() throws {
        let dir = TemporaryDirectory("icu-stub")
        let original = try Data(contentsOf: URL(fileURLWithPath: Self.library!))
        let stub = try #require(ICUStubData.stub(of: Self.library!))
        #expect(stub.count == original.count)
        let package = try #require(original.range(of: Data("CmnD".utf8))).lowerBound - 12
        let headerSize = Int(stub[package]) | Int(stub[package + 1]) << 8
        #expect(stub.prefix(package + headerSize) == original.prefix(package + headerSize), "the ELF file and the package header are kept")
        #expect(stub[(package + headerSize)..<(package + headerSize + 4)].allSatisfy { $0 == 0 }, "the table of contents is not empty")
        #expect(stub.suffix(from: package + headerSize).filter { $0 != 0 }.count < 4096, "the package's data remains")
        // The real client, with the stub in place of the library.
        try stub.write(to: URL(fileURLWithPath: dir.path + "/" + (Self.library! as NSString).lastPathComponent))
        let version = try sh("LD_LIBRARY_PATH=\(dir.path) aria2c --version")
        #expect(version.hasPrefix("aria2 version"), "\(version)")
        let loaded = try sh("LD_LIBRARY_PATH=\(dir.path) LD_DEBUG=files aria2c --version 2>&1 | grep 'calling init: .*libicudata' || true")
        #expect(loaded.contains(dir.path), "aria2c did not load the stub: \(loaded)")
        #expect(ICUStubData.stub(of: "/usr/bin/aria2c") == nil, "not ICU's data: carried unchanged")
    }
}
