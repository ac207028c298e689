import BootProtocols
import NIOCore
import NIOPosix

/// The one UDP port 68 every simulated node shares, as all firmware on one wire shares the broadcast
/// domain: requests go to 255.255.255.255:67 with the broadcast flag, replies are matched to their
/// node by xid and chaddr. State is confined to the channel's event loop.
final class DHCPPort: @unchecked Sendable {
    private struct Waiter {
        var mac: MACAddress
        var accepts: @Sendable (DHCPMessage) -> Bool
        var promise: EventLoopPromise<DHCPMessage?>
        var timer: Scheduled<Void>?
    }

    let channel: any Channel
    private var waiters: [UInt32: Waiter] = [:]
    private let destination: SocketAddress
    private(set) var undecodable = 0

    private init(channel: any Channel, destination: SocketAddress) {
        self.channel = channel
        self.destination = destination
    }

    /// Binds `0.0.0.0:port` (68 unless testing) with SO_BROADCAST; `serverPort` is the DHCP server's.
    /// The broadcast leaves by the namespace's route for 255.255.255.255 (the driver script adds one).
    static func open(group: any EventLoopGroup, port: Int = 68, serverPort: Int = 67) async throws -> DHCPPort {
        let box = PortBox()
        let channel = try await DatagramBootstrap(group: group.next())
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.socketOption(.so_broadcast), value: 1)
            .channelOption(.socketOption(.so_rcvbuf), value: 8 << 20)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(DHCPPortHandler(box: box)) }
            }
            .bind(host: "0.0.0.0", port: port).get()
        let dhcp = DHCPPort(channel: channel, destination: try SocketAddress(ipAddress: "255.255.255.255", port: serverPort))
        box.port = dhcp
        return dhcp
    }

    /// Broadcasts `request` and waits up to `timeout` for a reply with its xid and chaddr that `accepts`
    /// takes; nil on time-out. One outstanding exchange per xid (each node owns its xid).
    func exchange(_ request: DHCPMessage, timeout: TimeAmount,
                  accepts: @escaping @Sendable (DHCPMessage) -> Bool) async -> DHCPMessage? {
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: DHCPMessage?.self)
        loop.execute { [self] in
            var buffer = channel.allocator.buffer(capacity: 600)
            do { try request.encode(into: &buffer) } catch {
                promise.succeed(nil)
                return
            }
            let xid = request.xid
            waiters[xid]?.timer?.cancel()
            waiters[xid]?.promise.succeed(nil)
            let timer = loop.scheduleTask(in: timeout) { [self] in
                if let waiter = waiters.removeValue(forKey: xid) { waiter.promise.succeed(nil) }
            }
            waiters[xid] = Waiter(mac: request.chaddr.mac, accepts: accepts, promise: promise, timer: timer)
            channel.writeAndFlush(AddressedEnvelope(remoteAddress: destination, data: buffer), promise: nil)
        }
        return (try? await promise.futureResult.get()) ?? nil
    }

    /// On the loop: hands a reply to the node waiting for it.
    fileprivate func deliver(_ buffer: ByteBuffer) {
        guard let message = try? DHCPMessage(decoding: buffer), message.op == .bootReply else {
            undecodable += 1
            return
        }
        guard let waiter = waiters[message.xid], waiter.mac == message.chaddr.mac, waiter.accepts(message) else { return }
        waiters.removeValue(forKey: message.xid)
        waiter.timer?.cancel()
        waiter.promise.succeed(message)
    }

    func close() async {
        try? await channel.close()
    }
}

/// Set once the port exists; the handler only runs after that (nothing is sent before).
private final class PortBox: @unchecked Sendable {
    var port: DHCPPort?
}

private final class DHCPPortHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let box: PortBox
    init(box: PortBox) { self.box = box }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        box.port?.deliver(unwrapInboundIn(data).data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ICMP errors on a broadcast socket are not fatal: the node's time-out handles a lost reply.
    }
}
