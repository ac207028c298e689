import BootProtocols
@testable import BootServer
import Foundation
import ImageBuildKit
import NIOCore
import NIOEmbedded
import Testing

/// The DHCP socket's handler (`DHCPChannelHandler` feeding the `DHCPEngine`) in an `EmbeddedChannel`:
/// what goes out, to which address, and what is counted and reported, without sockets.
@Suite("DHCP channel handler (EmbeddedChannel)")
struct DHCPChannelHandlerTests {
    static let node = MACAddress(0x52, 0x54, 0x00, 0x77, 0x00, 0x01)
    static let interface = DHCPInterface(name: "boot0", index: 7, addresses: [IPv4Address(10, 77, 0, 1)])

    func withHandler(_ body: (EmbeddedChannel, DHCPEngine, DHCPBox<DHCPEvent>) throws -> Void) throws {
        let directory = try DHCPTemporaryDirectory("dhcp-handler")
        defer { directory.cleanup() }
        let inventory = try InventoryLoader.parse(dhcpInventoryYAML(nodes: [("52:54:00:77:00:01", "n1", "10.77.0.11")]),
                                                  file: "nodes.yaml")
        var configuration = DHCPServerConfiguration(stateDirectory: directory.path)
        configuration.unicastDelivery = .broadcast  // no ARP ioctl from a test
        let logger = dhcpTestLogger("dhcp-handler")
        let leases = try LeaseStore(configuration: LeaseStoreConfiguration(directory: directory.path), logger: logger)
        defer { leases.close() }
        let events = DHCPBox<DHCPEvent>()
        let channel = EmbeddedChannel()
        let engine = DHCPEngine(configuration: configuration, leases: leases, logger: logger, observer: { events.append($0) },
                                loop: channel.eventLoop, knownInterfaces: [Self.interface],
                                snapshot: InventoryStore.Snapshot(inventory: inventory, generation: 1, loadedAt: Date()))
        try channel.pipeline.syncOperations.addHandler(DHCPChannelHandler(engine: engine, port: .dhcp, interface: Self.interface))
        try body(channel, engine, events)
        _ = try channel.finish()
    }

    /// One datagram in, as a read burst of one (the handler flushes at the burst's end).
    func send(_ channel: EmbeddedChannel, _ bytes: ByteBuffer, from source: SocketAddress) throws {
        try channel.writeInbound(AddressedEnvelope(remoteAddress: source, data: bytes))
        channel.pipeline.fireChannelReadComplete()
    }

    func encoded(_ message: DHCPMessage) throws -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 600)
        try message.encode(into: &buffer)
        return buffer
    }

    @Test("a DISCOVER gets one OFFER of the node's address, broadcast to port 68, counted and reported")
    func discover() throws {
        try withHandler { channel, engine, events in
            try send(channel, encoded(dhcpDiscover(Self.node)), from: SocketAddress(ipAddress: "0.0.0.0", port: 68))
            let out = try #require(try channel.readOutbound(as: AddressedEnvelope<ByteBuffer>.self))
            #expect(out.remoteAddress == (try SocketAddress(ipAddress: "255.255.255.255", port: 68)))
            let offer = try DHCPMessage(decoding: out.data)
            #expect(offer.messageType == .offer)
            #expect(offer.xid == 0x1234 && offer.clientMAC == Self.node)
            #expect(offer.yiaddr == IPv4Address(10, 77, 0, 11))
            #expect(offer.options.serverIdentifier == IPv4Address(10, 77, 0, 1))
            #expect(try channel.readOutbound(as: AddressedEnvelope<ByteBuffer>.self) == nil, "one reply only")

            let statistics = engine.snapshot()
            #expect(statistics.received == 1 && statistics.sent == 1 && statistics.malformed == 0)
            #expect(events.all.count == 1)
            let event = try #require(events.all.first)
            #expect(event.mac == Self.node && event.messageType == .discover && event.address == IPv4Address(10, 77, 0, 11))
            #expect(event.interface == "boot0")
            guard case .replied(.offer, let destination) = event.outcome else { Issue.record("reported \(event.outcome)"); return }
            #expect(destination.kind == .broadcast)
        }
    }

    @Test("a relayed DISCOVER is answered to the relay agent's address on port 67")
    func relayed() throws {
        try withHandler { channel, _, events in
            var discover = dhcpDiscover(Self.node)
            discover.flags = []
            discover.hops = 1
            discover.giaddr = IPv4Address(10, 77, 0, 254)
            try send(channel, encoded(discover), from: SocketAddress(ipAddress: "10.77.0.254", port: 67))
            let out = try #require(try channel.readOutbound(as: AddressedEnvelope<ByteBuffer>.self))
            #expect(out.remoteAddress == (try SocketAddress(ipAddress: "10.77.0.254", port: 67)))
            #expect(try DHCPMessage(decoding: out.data).messageType == .offer)
            guard case .replied(.offer, let destination)? = events.all.first?.outcome else { Issue.record("\(events.all)"); return }
            #expect(destination.kind == .relay)
        }
    }

    @Test("a malformed packet gets no answer, is counted as malformed and reported once")
    func malformed() throws {
        try withHandler { channel, engine, events in
            var garbage = ByteBufferAllocator().buffer(capacity: 300)
            garbage.writeBytes([UInt8](repeating: 0xA5, count: 300))  // long enough, but opcode 0xA5
            try send(channel, garbage, from: SocketAddress(ipAddress: "10.77.0.50", port: 68))
            // A BOOTREQUEST cut short after its fixed header (no magic cookie, no options).
            var truncated = try encoded(dhcpDiscover(Self.node))
            truncated.moveWriterIndex(to: 236)
            try send(channel, truncated, from: SocketAddress(ipAddress: "0.0.0.0", port: 68))

            #expect(try channel.readOutbound(as: AddressedEnvelope<ByteBuffer>.self) == nil)
            let statistics = engine.snapshot()
            #expect(statistics.received == 2 && statistics.malformed == 2 && statistics.sent == 0)
            #expect(events.all.count == 2)
            #expect(events.all.allSatisfy { if case .malformed = $0.outcome { $0.mac == nil } else { false } })
        }
    }
}
