import BootProtocols
@testable import BootServer
import Foundation
import ImageBuildKit
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// A boot root laid out like `publish` makes it: content-addressed images, a generation folder behind
/// `.publish/current`, and top-level symlinks into it. Plus traps outside the root.
struct HTTPTestRoot {
    let base: String
    var root: String { base + "/root" }
    var state: String { base + "/state" }
    static let digest = "0123456789abcdef"
    var imageDir: String { "images/compute/\(Self.digest)" }

    init() throws {
        base = NSTemporaryDirectory() + "http-test-" + UUID().uuidString
        let fm = FileManager.default
        try fm.createDirectory(atPath: base + "/root/.publish/gen-1/pxelinux.cfg", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: base + "/root/.publish/gen-1/ipxe", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: base + "/root/images/compute/\(Self.digest)", withIntermediateDirectories: true)
        try write(".publish/gen-1/pxelinux.cfg/default", "DEFAULT imagebuild\n")
        try write(".publish/gen-1/ipxe/boot.ipxe", "#!ipxe\nchain nodes/${mac:hexhyp}.ipxe\n")
        let index = #"""
            {"generation": 1, "defaultImage": null, "nodes": [], "ranges": [],
             "images": {"compute": {"name": "compute", "digest": "\#(Self.digest)", "kernelVersion": "6.1.0",
                                    "cmdline": "console=ttyS0 imagebuild.sha256=abcd", "imageFile": "image.tar.gz"}}}
            """#
        try write(".publish/gen-1/publish.json", index)
        try link("gen-1", at: ".publish/current")
        try link(".publish/current/pxelinux.cfg", at: "pxelinux.cfg")
        try link(".publish/current/ipxe", at: "ipxe")
        try link(".publish/current/publish.json", at: "publish.json")
        // Outside the root, and links that lead there.
        try Data("top secret\n".utf8).write(to: URL(fileURLWithPath: base + "/secret.txt"))
        try link("../secret.txt", at: "escape.txt")
        try link(base, at: "escape-dir")
        try link("/etc/passwd", at: "passwd")
    }

    func write(_ relative: String, _ text: String) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: root + "/" + relative))
    }

    /// A file of `size` pseudo-random bytes (so a misplaced range cannot go unnoticed).
    @discardableResult
    func writeBinary(_ relative: String, size: Int, seed: UInt64 = 1) throws -> [UInt8] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        var bytes = [UInt8](repeating: 0, count: size)
        for index in 0..<size {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            bytes[index] = UInt8(truncatingIfNeeded: state)
        }
        try Data(bytes).write(to: URL(fileURLWithPath: root + "/" + relative))
        return bytes
    }

    func link(_ target: String, at relative: String) throws {
        try FileManager.default.createSymbolicLink(atPath: root + "/" + relative, withDestinationPath: target)
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: base) }
}

/// The inventory in force, swapped by tests while the server runs.
final class InventoryBox: Sendable {
    private let value: Mutex<Inventory?>
    init(_ inventory: Inventory?) { value = Mutex(inventory) }
    var current: Inventory? { value.withLock { $0 } }
    func set(_ inventory: Inventory?) { value.withLock { $0 = inventory } }
}

func httpTestInventory(extraNodes: String = "") throws -> Inventory {
    try InventoryLoader.parse("""
        network:
          server: 127.0.0.1
          subnet: 127.0.0.0/8
          http_port: 8080
        nodes:
          - mac: 52:54:00:aa:00:01
            hostname: alpha
            image: compute
            append: alpha.flag
        \(extraNodes)
        """, file: "nodes.yaml")
}

let quietLogger = testLogger("http-test")

/// Leases as the DHCP server would hold them: alpha (52:54:00:aa:00:01) on 127.0.0.1, where the tests'
/// requests come from by default, so alpha may report its stages; other nodes report from their own
/// 127/8 address (`RawHTTP.post(from:)`) after `lease`.
func testLeases(_ extra: [(MACAddress, IPv4Address)] = []) -> BoundLeaseIndex {
    let index = BoundLeaseIndex()
    let until = DHCPTimestamp(secondsSinceEpoch: Int64(time(nil)) + 3600)
    index.bind(MACAddress(0x52, 0x54, 0, 0xaa, 0, 1), IPv4Address(127, 0, 0, 1), until: until)
    for (mac, address) in extra { index.bind(mac, address, until: until) }
    return index
}

/// Runs an HTTPService (and its timeline's writer) on 127.0.0.1, an ephemeral port, for `body`.
func withHTTPService<T: Sendable>(
    root: HTTPTestRoot, inventory: InventoryBox, policy: UnknownMACPolicy = .defaultImage,
    leases: BoundLeaseIndex = testLeases(), reportTokens: ReportTokens? = nil,
    inventoryRejection: @escaping @Sendable () -> String? = { nil },
    configure: (inout HTTPServiceConfiguration) -> Void = { _ in },
    _ body: @Sendable (Int, HTTPService) async throws -> T
) async throws -> T {
    var timelineConfiguration = BootTimelineConfiguration(stateDirectory: root.state)
    timelineConfiguration.flushInterval = .milliseconds(100)
    let timeline = try BootTimeline(configuration: timelineConfiguration, logger: quietLogger)
    var configuration = HTTPServiceConfiguration(root: root.root, host: "127.0.0.1", port: 0)
    configuration.unknownMACPolicy = policy
    configure(&configuration)
    let service = HTTPService(configuration: configuration, timeline: timeline, inventory: { inventory.current }, leases: leases,
                              reportTokens: reportTokens, inventoryRejection: inventoryRejection, logger: quietLogger)
    let port = try await service.bind()[0].port!
    let group = ServiceGroup(configuration: .init(services: [service, timeline], gracefulShutdownSignals: [], logger: quietLogger))
    return try await withThrowingTaskGroup(of: T?.self) { tasks in
        tasks.addTask {
            try await group.run()
            return nil
        }
        let result: T
        do {
            result = try await body(port, service)
        } catch {
            await group.triggerGracefulShutdown()
            throw error
        }
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
        return result
    }
}

/// One response as it came off the wire.
struct RawResponse: Sendable {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
    func header(_ name: String) -> String? { headers[name.lowercased()] }
}

/// A minimal HTTP/1.1 client over a raw NIO channel, so tests control every byte sent (odd paths,
/// HEAD, partial heads) and see exactly what the server sends back.
enum RawHTTP {
    /// Sends `request` (a full request head, plus body) with `Connection: close` and reads to EOF.
    static func send(port: Int, _ request: String, headRequest: Bool = false) async throws -> RawResponse {
        let bytes = try await exchange(port: port, chunks: [request])
        return try parse(bytes, headRequest: headRequest)
    }

    static func get(port: Int, _ path: String, headers: [String: String] = [:], method: String = "GET") async throws -> RawResponse {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) { head += "\(name): \(value)\r\n" }
        return try await send(port: port, head + "\r\n", headRequest: method == "HEAD")
    }

    /// - Parameter from: the source address (any 127/8 address on loopback), as a node sending from its own.
    static func post(port: Int, _ path: String, json: String, from source: String? = nil) async throws -> RawResponse {
        let body = Array(json.utf8)
        let head = "POST \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n"
        return try parse(try await exchangeTimed(port: port, chunks: [head + json], from: source).bytes)
    }

    /// Writes `chunks` with `pause` between them, then reads until the server closes; returns the bytes
    /// and how long after the first write the connection closed.
    static func exchange(port: Int, chunks: [String], pause: Duration = .zero) async throws -> [UInt8] {
        try await exchangeTimed(port: port, chunks: chunks, pause: pause).bytes
    }

    /// The connection is closed from this side after `deadline`, so a server that never answers fails
    /// the test instead of hanging it.
    static func exchangeTimed(port: Int, chunks: [String], pause: Duration = .zero,
                              deadline: Duration = .seconds(20), from source: String? = nil) async throws -> (bytes: [UInt8], closedAfter: Duration) {
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        if let source { bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: source, port: 0)) }
        let channel = try await bootstrap
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let start = ContinuousClock.now
        let underlying = channel.channel
        let watchdog = Task {
            try await Task.sleep(for: deadline)
            try await underlying.close()
        }
        defer { watchdog.cancel() }
        return try await channel.executeThenClose { inbound, outbound in
            var received: [UInt8] = []
            async let reading: [UInt8] = {
                var bytes: [UInt8] = []
                do {
                    for try await buffer in inbound { bytes += buffer.readableBytesView }
                } catch {
                    // A reset after the server closes is the end too.
                }
                return bytes
            }()
            for (index, chunk) in chunks.enumerated() {
                if index > 0 && pause > .zero { try await Task.sleep(for: pause) }
                do { try await outbound.write(ByteBuffer(string: chunk)) } catch { break }
            }
            received = await reading
            return (received, ContinuousClock.now - start)
        }
    }

    /// Sends `request`, reads until `bytes` bytes arrived, then hangs up (a node rebooting mid-download).
    static func abandon(port: Int, _ request: String, after bytes: Int) async throws -> Int {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: request))
            var received = 0
            for try await buffer in inbound {
                received += buffer.readableBytes
                if received >= bytes { break }
            }
            return received
        }
    }

    /// A connected client that sends nothing (holds one of the server's connection slots).
    static func idleConnection(port: Int) async throws -> any Channel {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port).get()
    }

    /// Every response in `bytes` (pipelined answers on one connection), each cut at its Content-Length.
    static func parseAll(_ bytes: [UInt8]) throws -> [RawResponse] {
        var rest = bytes, all: [RawResponse] = []
        while !rest.isEmpty {
            var response = try parse(rest)
            guard let length = response.header("content-length").flatMap({ Int($0) }) else {
                throw RawHTTPError("a pipelined response without Content-Length: \(response.headers)")
            }
            rest = Array(response.body.dropFirst(length))
            response.body = Array(response.body.prefix(length))
            all.append(response)
        }
        return all
    }

    static func parse(_ bytes: [UInt8], headRequest: Bool = false) throws -> RawResponse {
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        guard let end = bytes.firstRange(of: separator) else {
            throw RawHTTPError("no complete response head in \(bytes.count) bytes: \(String(decoding: bytes.prefix(200), as: UTF8.self))")
        }
        let head = String(decoding: bytes[..<end.lowerBound], as: UTF8.self)
        var lines = head.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw RawHTTPError("bad status line in \(head)") }
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = Array(bytes[end.upperBound...])
        if headers["transfer-encoding"] == "chunked" { body = try dechunk(body) }
        return RawResponse(status: status, headers: headers, body: body)
    }

    static func dechunk(_ bytes: [UInt8]) throws -> [UInt8] {
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            guard let lineEnd = bytes[index...].firstRange(of: Array("\r\n".utf8)) else { throw RawHTTPError("bad chunk") }
            let sizeText = String(decoding: bytes[index..<lineEnd.lowerBound], as: UTF8.self).split(separator: ";")[0]
            guard let size = Int(sizeText, radix: 16) else { throw RawHTTPError("bad chunk size '\(sizeText)'") }
            index = lineEnd.upperBound
            if size == 0 { break }
            out += bytes[index..<(index + size)]
            index += size + 2
        }
        return out
    }
}

struct RawHTTPError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension HTTPTimeouts {
    /// All four limits, in seconds.
    init(idle: Int64, header: Int64, body: Int64, send: Int64) {
        self.init()
        self.idle = .seconds(idle)
        self.header = .seconds(header)
        self.body = .seconds(body)
        self.send = .seconds(send)
    }
}
