import BootProtocols
@testable import BootServer
import DatagramIO
import Foundation
import Logging
import NIOCore
import NIOEmbedded
import Synchronization
import Testing

/// The TFTP request port's handler in an `EmbeddedChannel`: what it answers on the listening socket
/// itself (refusals) and what it reports, without sockets or timing.
@Suite("TFTP listener handler (EmbeddedChannel)")
struct TFTPListenerHandlerTests {
    final class Reports: Sendable {
        private let list = Mutex<[TFTPTransferReport]>([])
        func append(_ report: TFTPTransferReport) { list.withLock { $0.append(report) } }
        var all: [TFTPTransferReport] { list.withLock { $0 } }
    }

    static let client = try! SocketAddress(ipAddress: "127.0.0.1", port: 40_000)

    func withHandler(_ body: (EmbeddedChannel, Reports) throws -> Void) throws {
        let root = NSTemporaryDirectory() + "tftp-handler-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root + "/pxelinux.cfg", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let canonical = try #require(TFTPFileStore.canonicalRoot(root))
        let configuration = TFTPServerConfiguration(root: canonical, host: "127.0.0.1", port: 0)
        let store = TFTPFileStore(root: canonical, cacheFileLimit: 1 << 20, cacheTotalLimit: 1 << 22, requireWorldReadable: true)
        let reactor = try DatagramReactor(name: "tftp-handler-test")
        defer { reactor.shutdown() }
        let reports = Reports()
        let handler = TFTPListenerHandler(configuration: configuration, store: store, reactor: reactor,
                                          logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() },
                                          observer: { reports.append($0) })
        let channel = EmbeddedChannel(handler: handler)
        try body(channel, reports)
        _ = try channel.finish()
    }

    func send(_ channel: EmbeddedChannel, _ bytes: ByteBuffer) throws {
        try channel.writeInbound(AddressedEnvelope(remoteAddress: Self.client, data: bytes))
    }

    /// The one datagram the handler wrote back, decoded, and to whom.
    func answer(_ channel: EmbeddedChannel) throws -> (packet: TFTPPacket, to: SocketAddress)? {
        guard let envelope = try channel.readOutbound(as: AddressedEnvelope<ByteBuffer>.self) else { return nil }
        return (try TFTPPacket.decode(envelope.data), envelope.remoteAddress)
    }

    @Test("refusals are answered from the request port, to the client, and reported once each")
    func refusals() throws {
        try withHandler { channel, reports in
            try send(channel, TFTPPacket.writeRequest(TFTPRequest(filename: "upload.bin")).encoded())
            let write = try #require(try answer(channel))
            #expect(write.packet == .error(code: .accessViolation, message: "read-only server") && write.to == Self.client)

            try send(channel, TFTPPacket.readRequest(TFTPRequest(filename: "pxelinux.cfg/default")).encoded())
            guard case .error(let code, _)? = try answer(channel)?.packet else { Issue.record("no error for a missing file"); return }
            #expect(code == .fileNotFound)

            try send(channel, TFTPPacket.readRequest(TFTPRequest(filename: "x", mode: .mail)).encoded())
            guard case .error(let mail, _)? = try answer(channel)?.packet else { Issue.record("no error for mail mode"); return }
            #expect(mail == .illegalOperation)

            // A request that does not decode: opcode 1 (RRQ) with no terminating NUL.
            var truncated = ByteBufferAllocator().buffer(capacity: 8)
            truncated.writeInteger(UInt16(1))
            truncated.writeString("abc")
            try send(channel, truncated)
            guard case .error(let malformed, _)? = try answer(channel)?.packet else { Issue.record("no error for a malformed RRQ"); return }
            #expect(malformed == .illegalOperation)

            #expect(reports.all.count == 4)
            #expect(reports.all.allSatisfy { if case .rejected = $0.result { return true } else { return false } })
            #expect(reports.all.map(\.path) == ["upload.bin", "pxelinux.cfg/default", "x", ""])
        }
    }

    @Test("noise on the request port (not a request) gets no answer and no report")
    func noise() throws {
        try withHandler { channel, reports in
            var garbage = ByteBufferAllocator().buffer(capacity: 4)
            garbage.writeInteger(UInt16(9))
            try send(channel, garbage)
            try send(channel, TFTPPacket.acknowledgement(block: 1).encoded())
            #expect(try answer(channel) == nil)
            #expect(reports.all.isEmpty)
        }
    }
}
