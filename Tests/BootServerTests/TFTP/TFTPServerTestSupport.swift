import BootProtocols
import BootServer
import Foundation
import Logging
import NIOCore
import NIOPosix

/// A temporary TFTP root, removed by `cleanup()`.
struct TemporaryRoot {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "tftp-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    /// Writes a file whose every 8-byte word is its own index, so a misplaced block cannot go unnoticed.
    @discardableResult
    func write(_ relative: String, size: Int, salt: UInt64 = 0, mode: Int = 0o644) throws -> Data {
        var data = Data(count: size)
        data.withUnsafeMutableBytes { raw in
            let words = size / 8
            let pointer = raw.baseAddress!
            for index in 0..<words {
                var value = (UInt64(index) &* 0x9E37_79B9_7F4A_7C15) ^ salt
                withUnsafeBytes(of: &value) { pointer.advanced(by: index * 8).copyMemory(from: $0.baseAddress!, byteCount: 8) }
            }
            for index in (words * 8)..<size { raw[index] = UInt8(truncatingIfNeeded: index &+ Int(salt)) }
        }
        try write(relative, data: data, mode: mode)
        return data
    }

    func write(_ relative: String, data: Data, mode: Int = 0o644) throws {
        let full = path + "/" + relative
        try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try data.write(to: URL(fileURLWithPath: full))
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: full)
    }

    func cleanup() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Collects transfer reports from the server's observer hook.
final class ReportBox: @unchecked Sendable {
    private let lock = NSLock()
    private var reports: [TFTPTransferReport] = []

    func append(_ report: TFTPTransferReport) {
        lock.lock()
        reports.append(report)
        lock.unlock()
    }

    var all: [TFTPTransferReport] {
        lock.lock()
        defer { lock.unlock() }
        return reports
    }

    /// Waits (bounded) until a report for `path` arrives; the observer runs after the client finished.
    func waitFor(_ path: String, timeout: Duration = .seconds(5)) async -> TFTPTransferReport? {
        let clock = ContinuousClock()
        let end = clock.now + timeout
        while clock.now < end {
            if let report = all.last(where: { $0.path == path }) { return report }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return nil
    }
}

/// Serves on 127.0.0.1 with an ephemeral port while `body` runs.
func withTFTPServer<T>(
    root: TemporaryRoot, configure: (inout TFTPServerConfiguration) -> Void = { _ in },
    _ body: (TFTPServer, SocketAddress, ReportBox) async throws -> T
) async throws -> T {
    var configuration = TFTPServerConfiguration(root: root.path, host: "127.0.0.1", port: 0)
    configure(&configuration)
    let logger = testLogger("tftp-test")
    let reports = ReportBox()
    let server = TFTPServer(configuration: configuration, logger: logger, observer: { reports.append($0) })
    return try await serving(server) { addresses in try await body(server, addresses[0], reports) }
}

/// Polls `condition` until it holds or `timeout` passes; server-side bookkeeping finishes a moment
/// after the client has its last packet.
func eventually(timeout: Duration = .seconds(5), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let clock = ContinuousClock()
    let end = clock.now + timeout
    while clock.now < end {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

struct CommandResult {
    var status: Int32
    var output: String
}

/// Runs a command (bounded by coreutils `timeout`) without blocking a cooperative thread.
func runCommand(_ arguments: [String], timeoutSeconds: Int = 60) async throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/timeout")
    process.arguments = ["-k", "5", String(timeoutSeconds)] + arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    process.standardInput = FileHandle.nullDevice
    return try await withCheckedThrowingContinuation { continuation in
        process.terminationHandler = { process in
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            continuation.resume(returning: CommandResult(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self)))
        }
        do {
            try process.run()
        } catch {
            process.terminationHandler = nil
            continuation.resume(throwing: error)
        }
    }
}

/// A bare UDP endpoint speaking raw TFTP packets, for the cases no real client can produce.
final class RawTFTPClient {
    private enum Item: Sendable {
        case datagram(AddressedEnvelope<ByteBuffer>)
        case timeout(Int)
    }

    private final class Forward: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let continuation: AsyncStream<Item>.Continuation
        init(_ continuation: AsyncStream<Item>.Continuation) { self.continuation = continuation }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            continuation.yield(.datagram(unwrapInboundIn(data)))
        }
    }

    let channel: any Channel
    private let continuation: AsyncStream<Item>.Continuation
    private var iterator: AsyncStream<Item>.AsyncIterator
    private var timeoutCounter = 0

    init() async throws {
        let (stream, continuation) = AsyncStream.makeStream(of: Item.self)
        self.continuation = continuation
        self.iterator = stream.makeAsyncIterator()
        self.channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Forward(continuation)) }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
    }

    func send(_ packet: TFTPPacket, to address: SocketAddress) async throws {
        try await channel.writeAndFlush(AddressedEnvelope(remoteAddress: address, data: packet.encoded()))
    }

    /// The next packet from `sender` matching `wanted`, skipping others (a loaded server legitimately
    /// retransmits, so a test must not assume the next datagram is the one it waits for).
    func receive(from sender: SocketAddress? = nil, notFrom excluded: SocketAddress? = nil, timeout: TimeAmount = .seconds(3),
                 where wanted: (TFTPPacket) -> Bool) async throws -> (packet: TFTPPacket, from: SocketAddress)? {
        let deadline = NIODeadline.now() + timeout
        while NIODeadline.now() < deadline {
            guard let received = try await receive(timeout: deadline - .now()) else { return nil }
            if let sender, received.from != sender { continue }
            if let excluded, received.from == excluded { continue }
            if wanted(received.packet) { return received }
        }
        return nil
    }

    /// The next packet and its sender, or nil after `timeout`.
    func receive(timeout: TimeAmount = .seconds(3)) async throws -> (packet: TFTPPacket, from: SocketAddress)? {
        timeoutCounter += 1
        let token = timeoutCounter
        let continuation = self.continuation
        let scheduled = channel.eventLoop.scheduleTask(in: timeout) { continuation.yield(.timeout(token)) }
        defer { scheduled.cancel() }
        while let item = await iterator.next() {
            switch item {
            case .datagram(let envelope):
                return (try TFTPPacket.decode(envelope.data), envelope.remoteAddress)
            case .timeout(let fired) where fired == token:
                return nil
            case .timeout:
                continue
            }
        }
        return nil
    }

    /// A complete lock-step download (ACKs every DATA), for load tests. Like real clients it re-sends
    /// its last packet (RRQ or ACK) when nothing arrives for a second, at most five times in a row.
    func download(_ path: String, from server: SocketAddress, options: TFTPOptions = [:]) async throws -> [UInt8]? {
        var last = TFTPPacket.readRequest(TFTPRequest(filename: path, mode: .octet, options: options))
        var lastTarget = server
        try await send(last, to: lastTarget)
        var expected: UInt16 = 1
        var data: [UInt8] = []
        var retries = 0
        let blockSize = Int(options["blksize"] ?? "512")!
        while retries < 5 {
            guard let (packet, from) = try await receive(timeout: .seconds(1)) else {
                retries += 1
                try await send(last, to: lastTarget)
                continue
            }
            retries = 0
            switch packet {
            case .optionAcknowledgement:
                last = .acknowledgement(block: 0)
            case .data(let block, let payload):
                if block == expected {
                    data += payload.readableBytesView
                    expected &+= 1
                }
                last = .acknowledgement(block: block)
                if block == expected &- 1, payload.readableBytes < blockSize {
                    try await send(last, to: from)
                    return data
                }
            default:
                return nil
            }
            lastTarget = from
            try await send(last, to: lastTarget)
        }
        return nil
    }

    func close() async {
        continuation.finish()
        try? await channel.close()
    }
}
