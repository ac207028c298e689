import Foundation
@testable import ImageBuildKit
import NetworkAddresses
import NIOCore
import ServiceLifecycle
import Testing
import TestSupport
@testable import BootServer

/// The server's BitTorrent seeder: the peer wire protocol byte for byte, its slots given to the
/// poorest nodes, the peers it refuses, and a real aria2c fetching a whole image from it alone.
@Suite struct SwarmSeederTests {
    static let aria2c = ProcessRunner.which("aria2c")

    @Test func theWireIsSplitIntoMessagesWhateverTheReadsAre() throws {
        var stream = ByteBuffer()
        PeerWireEncoder.handshake(infoHash: [UInt8](0..<20), peerID: [UInt8](repeating: 0x41, count: 20), into: &stream)
        stream.writeBytes([0, 0, 0, 0])  // keep-alive
        stream.writeBytes([0, 0, 0, 1, 2])  // interested
        stream.writeBytes([0, 0, 0, 5, 4, 0, 0, 1, 0])  // have 256
        stream.writeBytes([0, 0, 0, 3, 5, 0xf0, 0x01])  // bitfield
        stream.writeBytes([0, 0, 0, 13, 6, 0, 0, 0, 7, 0, 0, 0x40, 0, 0, 0, 0x40, 0])  // request 7 @16384 ×16384
        stream.writeBytes([0, 0, 0, 13, 8, 0, 0, 0, 7, 0, 0, 0x40, 0, 0, 0, 0x40, 0])  // cancel
        stream.writeBytes([0, 0, 0, 3, 9, 0x1a, 0xe1])  // port (DHT)
        let expected: [PeerMessage] = [
            .handshake(infoHash: [UInt8](0..<20)), .keepAlive, .interested, .have(index: 256), .bitfield([0xf0, 0x01]),
            .request(BlockRequest(index: 7, begin: 16_384, length: 16_384)), .cancel(BlockRequest(index: 7, begin: 16_384, length: 16_384)),
            .other(id: 9),
        ]
        // Fed one byte at a time, and all at once: the same messages.
        for step in [1, stream.readableBytes] {
            var fed = ByteBuffer()
            var greeted = false
            var messages: [PeerMessage] = []
            var rest = stream
            while rest.readableBytes > 0 {
                var chunk = rest.readSlice(length: min(step, rest.readableBytes))!
                fed.writeBuffer(&chunk)
                while let message = try PeerWireDecoder.next(from: &fed, greeted: &greeted) { messages.append(message) }
            }
            #expect(messages == expected, "fed \(step) at a time")
        }
        func error(_ bytes: [UInt8], greeted: Bool = true) -> String? {
            var buffer = ByteBuffer(bytes: bytes)
            var greeted = greeted
            do { _ = try PeerWireDecoder.next(from: &buffer, greeted: &greeted); return nil } catch { return error.description }
        }
        #expect(error([4] + Array("HTTP".utf8), greeted: false) == "not a BitTorrent handshake (protocol name of 4 bytes)")
        #expect(error([19] + Array("BitTorrent protocoX".utf8) + [UInt8](repeating: 0, count: 48), greeted: false)
                == "not a BitTorrent handshake (another protocol name)")
        #expect(error([0, 1, 0, 0, 5]) == "a message of 65536 bytes")
        #expect(error([0, 0, 0, 2, 2, 0]) == "interested of 2 bytes")
        #expect(error([0, 0, 0, 4, 6, 0, 0, 0]) == "request of 4 bytes")

        var bitfield = ByteBuffer()
        PeerWireEncoder.fullBitfield(pieces: 10, into: &bitfield)
        #expect(Array(bitfield.readableBytesView) == [0, 0, 0, 3, 5, 0xff, 0xc0], "the spare bits of the last byte are clear")
    }

    /// The inventory's nodes on loopback: the fetcher and three raw peers.
    static let nodes = """
          - {mac: "52:54:00:aa:00:13", hostname: fetcher, ip: 127.0.0.3}
          - {mac: "52:54:00:aa:00:14", hostname: poor, ip: 127.0.0.4}
          - {mac: "52:54:00:aa:00:15", hostname: rich, ip: 127.0.0.5}
          - {mac: "52:54:00:aa:00:16", hostname: middle, ip: 127.0.0.6}
        """

    /// Publishes a torrent of the test root's image (`size` pseudo-random bytes, pieces of 256 KiB) whose
    /// web seed is a closed port, runs the HTTP service (the tracker) and a seeder with `slots`, then `body`.
    static func withSeeder(size: Int, slots: Int = 8,
                           _ body: @Sendable (_ root: HTTPTestRoot, _ content: [UInt8], _ torrent: String, _ info: Bencode,
                                              _ seeder: SwarmSeeder, _ seederPort: Int, _ service: HTTPService) async throws -> Void) async throws {
        let root = try HTTPTestRoot()
        defer { root.cleanup() }
        let content = try root.writeBinary(root.imageDir + "/image.tar.gz", size: size)
        let info = try Torrent.info(ofFile: root.root + "/" + root.imageDir + "/image.tar.gz", name: "image.tar.gz")
        let inventory = InventoryBox(try httpTestInventory(extraNodes: nodes))
        try await withHTTPService(root: root, inventory: inventory) { port, service in
            let torrent = root.root + "/torrents/compute-\(HTTPTestRoot.digest).torrent"
            try FileManager.default.createDirectory(atPath: root.root + "/torrents", withIntermediateDirectories: true)
            try Data(Torrent.file(info: info, announce: "http://127.0.0.1:\(port)\(Torrent.announcePath)",
                                  webSeed: "http://127.0.0.1:1/image.tar.gz", sha256: nil)).write(to: URL(fileURLWithPath: torrent))
            var configuration = SwarmSeeder.Configuration(host: "127.0.0.1", port: 0)
            configuration.slots = slots
            configuration.tick = .milliseconds(300)
            let seeder = SwarmSeeder(configuration: configuration, sources: service.seederSources(), logger: testLogger("swarm"))
            let seederPort = try await seeder.bind()[0].port!
            let group = ServiceGroup(configuration: .init(services: [seeder], gracefulShutdownSignals: [], logger: testLogger("swarm")))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                do {
                    try await body(root, content, torrent, info, seeder, seederPort, service)
                } catch {
                    await group.triggerGracefulShutdown()
                    throw error
                }
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
        }
    }

    /// A real aria2c on a node's address, the web seed a closed port: every byte of the image comes from
    /// the seeder, which the tracker handed it, and the tracker shows what the seeder sent.
    @Test(.enabled(if: aria2c != nil, "needs aria2 (scripts/setup installs it)"), .timeLimit(.minutes(2)))
    func aRealClientFetchesTheWholeImageFromTheSeeder() async throws {
        try await Self.withSeeder(size: 5 << 20 | 4321) { root, content, torrent, info, seeder, seederPort, service in
            let work = root.base + "/fetch"
            try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
            // The seeder is in the tracker's swarm from its first tick.
            let deadline = Date().addingTimeInterval(10)
            while service.tracker.view(now: Date()).images.first?.server == nil && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
            let listed = service.tracker.view(now: Date()).images.first?.server
            #expect(listed?.ip == "127.0.0.1" && listed?.port == seederPort, "\(String(describing: listed))")
            let fetched = try await ProcessRunner.run(Self.aria2c!, [
                "--interface=127.0.0.3", "--listen-port=16883", "--dir=\(work)", "--seed-time=0", "--enable-dht=false", "--enable-dht6=false",
                "--bt-enable-lpd=false", "--enable-peer-exchange=false", "--console-log-level=warn", "--summary-interval=0", "-T", torrent,
            ], timeout: 60)
            #expect(fetched.status == 0, "aria2c did not fetch: \(fetched.output.suffix(2000))")
            #expect(Array(try Data(contentsOf: URL(fileURLWithPath: work + "/image.tar.gz"))) == content, "the fetched file differs")
            let sent = try await seeder.uploaded()[Torrent.infoHash(info)] ?? 0
            #expect(sent == Int64(content.count), "the seeder sent \(sent) bytes for an image of \(content.count)")
            // ... and tells the tracker at its next tick.
            let told = Date().addingTimeInterval(10)
            while (service.tracker.view(now: Date()).images.first?.server?.uploaded ?? 0) < sent && Date() < told {
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(service.tracker.view(now: Date()).images.first?.server?.uploaded == sent)
        }
    }

    /// Raw peers on the wire: one slot, given to whoever holds the least; blocks served from the file;
    /// strangers, unknown torrents, bad requests and complete peers cut off.
    @Test(.timeLimit(.minutes(1)))
    func theSlotGoesToThePoorestNode() async throws {
        try await Self.withSeeder(size: 10 << 18, slots: 1) { _, content, _, info, _, seederPort, _ in
            let hash = Torrent.infoHash(info)
            try await ProcessRunner.onOwnThread {
                // Not a node: closed before any byte of ours.
                let stranger = try WirePeer(from: "127.0.0.9", port: seederPort)
                stranger.send(WirePeer.handshake(hash))
                #expect(stranger.closedWithoutAnswer(), "a stranger was answered")
                // A node asking for another torrent: closed.
                let lost = try WirePeer(from: "127.0.0.3", port: seederPort)
                lost.send(WirePeer.handshake([UInt8](repeating: 7, count: 20)))
                #expect(lost.closedWithoutAnswer(), "a torrent not published here was answered")

                // 10 pieces. rich holds 8, middle 4, poor none; rich is interested first and gets the free slot at once.
                func peer(_ address: String, holding: Int) throws -> WirePeer {
                    let peer = try WirePeer(from: address, port: seederPort)
                    peer.send(WirePeer.handshake(hash))
                    let greeting = try peer.read(68)
                    #expect(Array(greeting[28..<48]) == hash)
                    #expect(try peer.message() == [5, 0xff, 0xc0], "not a full bitfield of 10 pieces")
                    var bits = [UInt8](repeating: 0, count: 2)
                    for index in 0..<holding { bits[index >> 3] |= 0x80 >> UInt8(index & 7) }
                    peer.send([0, 0, 0, 3, 5] + bits + [0, 0, 0, 1, 2])  // bitfield, interested
                    return peer
                }
                let rich = try peer("127.0.0.5", holding: 8)
                #expect(try rich.message() == [1], "the free slot was not given at once")
                let middle = try peer("127.0.0.6", holding: 4)
                #expect(try rich.message() == [0], "rich kept the slot though middle holds less")
                #expect(try middle.message() == [1])
                let poor = try peer("127.0.0.4", holding: 0)
                #expect(try middle.message() == [0], "middle kept the slot though poor holds nothing")
                #expect(try poor.message() == [1])

                // A block of piece 3, from the file.
                poor.send([0, 0, 0, 13, 6, 0, 0, 0, 3, 0, 0, 0x10, 0, 0, 0, 0x40, 0])
                let block = try poor.message()
                #expect(Array(block.prefix(9)) == [7, 0, 0, 0, 3, 0, 0, 0x10, 0])
                #expect(Array(block.dropFirst(9)) == Array(content[(3 << 18 + 0x1000)..<(3 << 18 + 0x1000 + 0x4000)]), "the block's bytes differ")
                // poor wants nothing more: the slot goes to middle, the poorer of the two left.
                poor.send([0, 0, 0, 1, 3])
                #expect(try poor.message() == [0])
                #expect(try middle.message() == [1])
                // A block past the piece's end: cut off.
                middle.send([0, 0, 0, 13, 6, 0, 0, 0, 9, 0, 3, 0xf0, 0, 0, 0, 0x40, 0])
                #expect(middle.closedWithoutAnswer(), "a request past the piece was answered")
                // A peer that has every piece: nothing to give it, cut off.
                let full = try WirePeer(from: "127.0.0.3", port: seederPort)
                full.send(WirePeer.handshake(hash))
                _ = try full.read(68)
                _ = try full.message()
                full.send([0, 0, 0, 3, 5, 0xff, 0xc0])
                #expect(full.closedWithoutAnswer(), "a complete peer stayed connected")
                #expect(try rich.message() == [1], "the slot did not go back to rich")
            }
        }
    }
}

/// A blocking TCP peer from a chosen 127/8 address, with a 5 s read time-out: every byte as sent.
final class WirePeer: @unchecked Sendable {
    private let socket: Int32

    init(from source: String, port: Int) throws {
        socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        func address(_ ip: String, _ port: Int) -> sockaddr_in {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            inet_pton(AF_INET, ip, &address.sin_addr)
            return address
        }
        var local = address(source, 0), remote = address("127.0.0.1", port)
        let bound = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        let connected = withUnsafePointer(to: &remote) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, connected == 0 else {
            close(socket)
            throw PeerWireError(description: "cannot connect from \(source) to port \(port): errno \(errno)")
        }
    }

    deinit { close(socket) }

    static func handshake(_ infoHash: [UInt8]) -> [UInt8] {
        var buffer = ByteBuffer()
        PeerWireEncoder.handshake(infoHash: infoHash, peerID: Array("-XX0000-raw-test-pee".utf8), into: &buffer)
        return Array(buffer.readableBytesView)
    }

    func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    func read(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = bytes.withUnsafeMutableBytes { recv(socket, $0.baseAddress! + got, count - got, 0) }
            guard n > 0 else { throw PeerWireError(description: n == 0 ? "closed after \(got) of \(count) bytes" : "no bytes in 5 s (errno \(errno))") }
            got += n
        }
        return bytes
    }

    /// The next message other than a keep-alive: its id and payload.
    func message() throws -> [UInt8] {
        while true {
            let length = try read(4).reduce(0) { $0 << 8 | Int($1) }
            if length > 0 { return try read(length) }
        }
    }

    /// True when the seeder closes the connection with nothing more sent (a reset when it closed
    /// with our bytes unread).
    func closedWithoutAnswer() -> Bool {
        var byte: UInt8 = 0
        let n = recv(socket, &byte, 1, 0)
        return n == 0 || (n < 0 && errno == ECONNRESET)
    }
}
