import Foundation
import ImageBuildKit
import Testing
import TestSupport
@testable import BootServer

/// The tracker: announces parsed byte-exactly, peers handed out rack-local first, only to nodes, for
/// published torrents only; and two real aria2c clients moving a file between them through it.
@Suite struct SwarmTrackerTests {
    static let hash = [UInt8](0..<20)
    static let peerID = [UInt8](repeating: 0x41, count: 20)

    static func escaped(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%%%02X", $0) }.joined() }

    @Test func announcesAreParsedByteForByte() throws {
        let query = "info_hash=\(Self.escaped(Self.hash))&peer_id=-AR1360-%00%FFabcdefghij&port=6881&uploaded=10&downloaded=20&left=30"
            + "&event=started&numwant=500&compact=1&ip=10.0.0.66&key=x"
        let announce = try Announce(query: Substring(query))
        #expect(announce.infoHash == Self.hash)
        #expect(announce.peerID == Array("-AR1360-".utf8) + [0, 255] + Array("abcdefghij".utf8))
        #expect(announce.port == 6881 && announce.uploaded == 10 && announce.downloaded == 20 && announce.left == 30)
        #expect(announce.event == .started && announce.numwant == Announce.maximumNumwant)
        let good = "info_hash=\(Self.escaped(Self.hash))&peer_id=\(Self.escaped(Self.peerID))&uploaded=0&downloaded=0&left=0"
        for (query, expected) in [
            (good, "no port"), (good + "&port=0", "port must be 1 to 65535"), (good + "&port=70000", "port must be 1 to 65535"),
            ("info_hash=abc&" + good.dropFirst(70) + "&port=1", "info_hash must be 20 bytes, not 3"),
            (good + "&port=1&event=paused", "unknown event 'paused'"), (good + "&port=1&left=-1", "left is not a non-negative number"),
            (good + "&port=%zz", "bad percent-encoding in 'port'"),
        ] {
            #expect(throws: Announce.Malformed(description: expected), "\(query)") { try Announce(query: Substring(query)) }
        }
    }

    static func peers(_ compact: [UInt8]) -> [String] {
        stride(from: 0, to: compact.count, by: 6).map { i in
            "\(compact[i]).\(compact[i + 1]).\(compact[i + 2]).\(compact[i + 3]):\(Int(compact[i + 4]) << 8 | Int(compact[i + 5]))"
        }
    }

    @Test func peersAreRackLocalFirstAndTheSwarmIsCounted() {
        let tracker = SwarmTracker()
        tracker.publish([Self.hash: .init(image: "fs", digest: "d", length: 100, file: "/nowhere", pieceLength: 1 << 18)], generation: 1)
        let now = Date(timeIntervalSince1970: 1_000_000)
        func asker(_ last: UInt8) -> SwarmTracker.Asker { .init(address: IPv4Address(10, 0, 0, last), mac: MACAddress(2, 0, 0, 0, 0, last)) }
        // Peers .1-.6; .1-.3 are "rack 1" (tier 0 for .1), .4 is in its range (tier 1), the rest far.
        let tier: (SwarmTracker.Peer) -> Int = { peer in
            let last = peer.address.rawValue & 0xff
            return last <= 3 ? 0 : last == 4 ? 1 : 2
        }
        for last in UInt8(2)...6 {
            _ = tracker.announce(Announce(infoHash: Self.hash, peerID: Self.peerID, port: 6881, left: last == 6 ? 0 : 100, event: .started),
                                 from: asker(last), now: now, tier: tier)
        }
        let outcome = tracker.announce(Announce(infoHash: Self.hash, peerID: Self.peerID, port: 6881, left: 100, event: .started),
                                       from: asker(1), now: now, tier: tier)
        guard case .peers(let compact, let complete, let incomplete, let note) = outcome else { Issue.record("\(outcome)"); return }
        let list = Self.peers(compact)
        #expect(Set(list.prefix(2)) == ["10.0.0.2:6881", "10.0.0.3:6881"], "same rack first: \(list)")
        #expect(list[2] == "10.0.0.4:6881", "then the same range: \(list)")
        #expect(Set(list.suffix(2)) == ["10.0.0.5:6881", "10.0.0.6:6881"] && !list.contains("10.0.0.1:6881"))
        #expect(complete == 1 && incomplete == 5)
        #expect(note?.hasPrefix("joined the swarm of fs") == true)
        #expect(String(decoding: SwarmTracker.body(outcome), as: UTF8.self).hasPrefix("d8:completei1e10:incompletei5e8:intervali30e12:min intervali10e5:peers30:"))

        // A seeder is given downloaders only; numwant bounds the list.
        guard case .peers(let forSeeder, _, _, _) = tracker.announce(
            Announce(infoHash: Self.hash, peerID: Self.peerID, port: 6881, left: 0, numwant: 3), from: asker(6), now: now, tier: tier) else { return }
        #expect(Self.peers(forSeeder).count == 3 && !Self.peers(forSeeder).contains("10.0.0.6:6881"))

        // Uploads are what each peer's counter grew by; a stopped peer leaves, a silent one expires.
        _ = tracker.announce(Announce(infoHash: Self.hash, peerID: Self.peerID, port: 6881, uploaded: 40, left: 0),
                             from: asker(6), now: now, tier: tier)
        _ = tracker.announce(Announce(infoHash: Self.hash, peerID: Self.peerID, port: 6881, uploaded: 70, left: 0, event: .stopped),
                             from: asker(6), now: now.addingTimeInterval(5), tier: tier)
        var view = tracker.view(now: now.addingTimeInterval(5)).images[0]
        #expect(view.uploaded == 70 && view.seeders == 0 && view.downloaders == 5)
        _ = tracker.announce(Announce(infoHash: Self.hash, peerID: Self.peerID, port: 6881, left: 50), from: asker(1),
                             now: now.addingTimeInterval(SwarmTracker.expiry + 1), tier: tier)
        view = tracker.view(now: now.addingTimeInterval(SwarmTracker.expiry + 1)).images[0]
        #expect(view.peers.map(\.ip) == ["10.0.0.1"], "silent peers expired: \(view.peers.map(\.ip))")

        // Only published torrents; a new generation drops the swarms of the old.
        let unknown = tracker.announce(Announce(infoHash: [UInt8](repeating: 9, count: 20), peerID: Self.peerID, port: 1, left: 1),
                                       from: asker(1), now: now, tier: tier)
        #expect(unknown == .refused(reason: .unknownTorrent, message: "unknown torrent (not published here)"))
        tracker.publish([:], generation: 2)
        #expect(tracker.view(now: now).images.isEmpty)
    }

    /// A client the tracker does not know (expired, or announcing to a restarted server) brings its
    /// totals so far: they were counted before, so counting starts from them; one that starts counts
    /// from zero. A client restarted on another port replaces its node's entry.
    @Test func reportsAreNeverCountedTwice() {
        let tracker = SwarmTracker()
        tracker.publish([Self.hash: .init(image: "fs", digest: "d", length: 100, file: "/nowhere", pieceLength: 1 << 18)], generation: 1)
        let now = Date(timeIntervalSince1970: 1_000_000)
        let asker = SwarmTracker.Asker(address: IPv4Address(10, 0, 0, 9), mac: MACAddress(2, 0, 0, 0, 0, 9))
        func send(_ uploaded: Int64, port: UInt16 = 6881, event: Announce.Event? = nil) {
            _ = tracker.announce(Announce(infoHash: Self.hash, peerID: Self.peerID, port: port, uploaded: uploaded, left: 0, event: event),
                                 from: asker, now: now) { _ in 2 }
        }
        send(100)
        #expect(tracker.view(now: now).images[0].uploaded == 0, "an unknown client's totals were counted again")
        send(150)
        #expect(tracker.view(now: now).images[0].uploaded == 50)
        send(30, port: 6999, event: .started)
        send(40, port: 6999)
        let view = tracker.view(now: now).images[0]
        #expect(view.uploaded == 90 && view.peers.count == 1 && view.peers[0].port == 6999, "\(view)")
    }

    /// The server's own seeder (an asker without a MAC) comes first in every downloader's list, even
    /// when the downloader wants one peer, and never in a seeder's; it counts as a seeder of the swarm
    /// but not among the nodes; it leaves when it says it stops, or when it is not heard from.
    @Test func theServersSeederComesFirstForDownloaders() {
        let tracker = SwarmTracker()
        tracker.publish([Self.hash: .init(image: "fs", digest: "d", length: 100, file: "/nowhere", pieceLength: 1 << 18)], generation: 1)
        let now = Date(timeIntervalSince1970: 1_000_000)
        let server = SwarmTracker.Asker(address: IPv4Address(10, 0, 0, 1), mac: nil)
        func node(_ last: UInt8) -> SwarmTracker.Asker { .init(address: IPv4Address(10, 0, 0, last), mac: MACAddress(2, 0, 0, 0, 0, last)) }
        func announce(_ asker: SwarmTracker.Asker, left: Int64, numwant: Int = 50, event: Announce.Event? = nil, at time: Date = now) -> SwarmTracker.Outcome {
            tracker.announce(Announce(infoHash: Self.hash, peerID: Self.peerID, port: asker.mac == nil ? 6890 : 6881, left: left, event: event,
                                      numwant: numwant), from: asker, now: time) { _ in 0 }
        }
        for last in UInt8(2)...4 { _ = announce(node(last), left: 100, event: .started) }
        guard case .peers(let toServer, let complete, let incomplete, let note) = announce(server, left: 0, event: .started) else {
            Issue.record("the server's seeder was refused"); return
        }
        #expect(Set(Self.peers(toServer)) == ["10.0.0.2:6881", "10.0.0.3:6881", "10.0.0.4:6881"] && complete == 1 && incomplete == 3 && note == nil)
        guard case .peers(let one, _, _, _) = announce(node(5), left: 100, numwant: 1, event: .started),
              case .peers(let many, let seeders, _, _) = announce(node(6), left: 100, event: .started),
              case .peers(let toSeeder, _, _, _) = announce(node(7), left: 0, event: .started) else { Issue.record("refused"); return }
        #expect(Self.peers(one) == ["10.0.0.1:6890"], "\(Self.peers(one))")
        #expect(Self.peers(many).first == "10.0.0.1:6890" && many.count == 5 * 6 && seeders == 1, "\(Self.peers(many))")
        #expect(!Self.peers(toSeeder).contains("10.0.0.1:6890"), "a seeder was given the server's seeder")
        var view = tracker.view(now: now).images[0]
        #expect(view.server?.port == 6890 && view.seeders == 1 && view.downloaders == 5, "\(view)")
        #expect(!view.peers.contains { $0.ip == "10.0.0.1" }, "the server listed as a node")
        _ = announce(server, left: 0, event: .stopped)
        guard case .peers(let after, _, _, _) = announce(node(2), left: 100) else { Issue.record("refused"); return }
        #expect(!Self.peers(after).contains("10.0.0.1:6890") && tracker.view(now: now).images[0].server == nil)
        // Not heard from for longer than the expiry: gone, like any peer.
        _ = announce(server, left: 0, event: .started)
        let later = now.addingTimeInterval(SwarmTracker.expiry + 60)
        _ = announce(node(3), left: 100, at: later)
        view = tracker.view(now: later).images[0]
        #expect(view.server == nil, "\(view)")
    }

    static let aria2c = ProcessRunner.which("aria2c")

    /// A real swarm of two: aria2c seeding on 127.0.0.2, aria2c fetching on 127.0.0.3, both nodes of the
    /// inventory, the torrent's web seed a closed port: every byte moves between the two, through the
    /// peers the tracker handed out. A stranger's announce is refused.
    @Test(.enabled(if: aria2c != nil, "needs aria2 (scripts/setup installs it)"), .timeLimit(.minutes(2)))
    func twoRealClientsShareAFileThroughTheTracker() async throws {
        let root = try HTTPTestRoot()
        defer { root.cleanup() }
        let work = root.base + "/swarm"
        for folder in ["seed", "fetch"] { try FileManager.default.createDirectory(atPath: work + "/" + folder, withIntermediateDirectories: true) }
        var generator = SystemRandomNumberGenerator()
        let content = Data((0..<(5 << 20 | 4321)).map { _ in UInt8.random(in: 0...255, using: &generator) })
        try content.write(to: URL(fileURLWithPath: work + "/seed/image.tar.gz"))
        let info = try Torrent.info(ofFile: work + "/seed/image.tar.gz", name: "image.tar.gz")
        let inventory = InventoryBox(try httpTestInventory(extraNodes: """
              - {mac: "52:54:00:aa:00:12", hostname: seeder, ip: 127.0.0.2}
              - {mac: "52:54:00:aa:00:13", hostname: fetcher, ip: 127.0.0.3}
            """))
        try await withHTTPService(root: root, inventory: inventory) { port, service in
            let torrentPath = root.root + "/torrents/compute-\(HTTPTestRoot.digest).torrent"
            try FileManager.default.createDirectory(atPath: root.root + "/torrents", withIntermediateDirectories: true)
            try Data(Torrent.file(info: info, announce: "http://127.0.0.1:\(port)\(Torrent.announcePath)",
                                  webSeed: "http://127.0.0.1:1/image.tar.gz", sha256: nil)).write(to: URL(fileURLWithPath: torrentPath))
            let common = ["--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
                          "--console-log-level=warn", "--summary-interval=0", "--seed-ratio=0.0", "--bt-stop-timeout=60", "-T", torrentPath]
            let seeder = try ChildProcess(Self.aria2c!, ["--interface=127.0.0.2", "--listen-port=16881", "--dir=\(work)/seed",
                                                         "--check-integrity=true", "--seed-time=5", "--bt-tracker-interval=1"] + common,
                                          stdout: work + "/seeder.log", stderr: work + "/seeder.log")
            defer { seeder.kill(SIGKILL); _ = seeder.wait() }
            // The seeder has announced (the tracker lists it) before the fetcher starts.
            let deadline = Date().addingTimeInterval(30)
            while service.tracker.view(now: Date()).images.first?.seeders != 1 && Date() < deadline { try await Task.sleep(for: .milliseconds(100)) }
            let seederLog = (try? String(contentsOfFile: work + "/seeder.log", encoding: .utf8)) ?? ""
            #expect(service.tracker.view(now: Date()).images.first?.seeders == 1, "the seeder never announced: \(seederLog)")
            let fetched = try await ProcessRunner.run(Self.aria2c!, ["--interface=127.0.0.3", "--listen-port=16882", "--dir=\(work)/fetch",
                                                                      "--seed-time=0"] + common, timeout: 60)
            #expect(fetched.status == 0, "aria2c did not fetch: \(fetched.output.suffix(2000))")
            #expect(try Data(contentsOf: URL(fileURLWithPath: work + "/fetch/image.tar.gz")) == content, "the fetched file differs")
            // The seeder says how much it sent at its next announce (every second here, 30 s by the tracker).
            let reported = Date().addingTimeInterval(20)
            while (service.tracker.view(now: Date()).images.first?.uploaded ?? 0) < Int64(content.count) && Date() < reported {
                try await Task.sleep(for: .milliseconds(200))
            }
            let view = service.tracker.view(now: Date()).images.first
            let seederNotes = service.timeline.events(for: MACAddress(0x52, 0x54, 0, 0xaa, 0, 0x12)).map(\.observation.summary)
            #expect((view?.uploaded ?? 0) >= Int64(content.count), "the seeder reported \(view?.uploaded ?? 0) bytes sent, not the whole file: \(seederNotes)\n\((try? String(contentsOfFile: work + "/seeder.log", encoding: .utf8)) ?? "")")
            #expect((view?.downloaded ?? 0) >= Int64(content.count))
            let api = try await RawHTTP.send(port: port, "GET /api/v1/swarm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            #expect(api.text.contains("\"name\":\"compute\"") && api.text.contains("\"uploaded\":\(view?.uploaded ?? -1)"), "\(api.text)")
            let metrics = try await RawHTTP.send(port: port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").text
            #expect(metrics.contains("imagebuild_swarm_peer_uploaded_bytes{image=\"compute\",digest=\"\(HTTPTestRoot.digest)\"} \(view?.uploaded ?? -1)")
                    || metrics.contains("imagebuild_swarm_peer_uploaded_bytes{digest=\"\(HTTPTestRoot.digest)\",image=\"compute\"} \(view?.uploaded ?? -1)"),
                    "\(metrics.split(separator: "\n").filter { $0.contains("swarm") })")
            let fetcherMAC = MACAddress(0x52, 0x54, 0, 0xaa, 0, 0x13)
            let notes = service.timeline.events(for: fetcherMAC).map(\.observation.summary)
            #expect(notes.contains { $0.hasPrefix("swarm: started (joined the swarm of compute") } && notes.contains { $0.hasPrefix("swarm: stopped") }, "\(notes)")

            // Not a node: refused, with the reason, and counted.
            let stranger = try await ProcessRunner.run("curl", ["-s", "--interface", "127.0.0.9", "http://127.0.0.1:\(port)\(Torrent.announcePath)?info_hash=\(Self.escaped(Torrent.infoHash(info)))&peer_id=\(Self.escaped(Self.peerID))&port=1&uploaded=0&downloaded=0&left=1"], timeout: 10)
            #expect(stranger.stdout == "d14:failure reason87:127.0.0.9 is not a node of this cluster (no fixed address in nodes.yaml, no live lease)e", "\(stranger.output)")
            let counted = try await RawHTTP.send(port: port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").text
            #expect(counted.contains("imagebuild_swarm_announces_total{outcome=\"not_a_node\"} 1"), "\(counted.split(separator: "\n").filter { $0.contains("announces") })")
        }
    }
}
