import BootProtocols
import NIOCore
import NIOPosix

/// Runs one `TFTPFetch` on its own UDP socket (a new client transfer ID per read, as firmware does),
/// bound to the node's leased address. Every packet is handled on the channel's event loop.
final class TFTPFetchHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private var fetch: TFTPFetch
    private var peer: SocketAddress
    private let promise: EventLoopPromise<TFTPFetch.Outcome>
    private let timeout: TimeAmount
    private var timer: Scheduled<Void>?
    /// When the current packet's wait ends; the one scheduled task is moved only when it would fire too
    /// late, so a transfer in lock step does not schedule (and allocate) a task per block.
    private var deadline = NIODeadline.distantFuture
    private var timerDeadline: NIODeadline?
    private var finished = false

    init(fetch: TFTPFetch, server: SocketAddress, timeout: TimeAmount, promise: EventLoopPromise<TFTPFetch.Outcome>) {
        self.fetch = fetch
        self.peer = server
        self.timeout = timeout
        self.promise = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        let request = fetch.start()
        write(request, context: context)
        arm(context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard !finished, let port = envelope.remoteAddress.port else { return }
        guard let packet = try? TFTPPacket.decode(envelope.data) else { return }
        let firstReply = fetch.serverPort == nil
        let action = fetch.receive(packet, fromPort: port)
        if firstReply, fetch.serverPort == port { peer = envelope.remoteAddress }
        perform(action, context: context)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(.failed("socket error: \(error)"), context: context)
    }

    /// Also runs when the bind failed and the channel never became active: the promise is always kept.
    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        if !finished {
            finished = true
            promise.succeed(.failed("socket closed"))
        }
    }

    private func perform(_ action: TFTPFetch.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            return
        case .send(let packet):
            write(packet, context: context)
            arm(context: context)
        case .finish(let outcome, let packet):
            if let packet { write(packet, context: context) }
            finish(outcome, context: context)
        }
    }

    private func finish(_ outcome: TFTPFetch.Outcome, context: ChannelHandlerContext) {
        guard !finished else { return }
        finished = true
        timer?.cancel()
        promise.succeed(outcome)
        context.close(promise: nil)
    }

    private func write(_ packet: TFTPPacket, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: packet.encodedSize)
        packet.encode(into: &buffer)
        context.writeAndFlush(wrapOutboundOut(AddressedEnvelope(remoteAddress: peer, data: buffer)), promise: nil)
    }

    /// Exponential back-off from `timeout`: lock-step TFTP waits on every block, so a fixed long wait
    /// would hide server stalls and a fixed short one would flood a loaded server.
    private func arm(context: ChannelHandlerContext) {
        deadline = .now() + timeout * Int64(1 << min(fetch.retransmissions, 5))
        schedule(context: context)
    }

    private func schedule(context: ChannelHandlerContext) {
        if let timerDeadline, timerDeadline <= deadline { return }  // fires first, then re-arms for the rest
        timer?.cancel()
        timerDeadline = deadline
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) {
            let (handler, context) = loopBound.value
            handler.timer = nil
            handler.timerDeadline = nil
            guard !handler.finished else { return }
            if NIODeadline.now() < handler.deadline {
                handler.schedule(context: context)  // the packet it was set for was answered
                return
            }
            let action = handler.fetch.timeout()
            handler.perform(action, context: context)
        }
    }
}

enum TFTPClient {
    /// Reads (or probes) `filename` from `server`, the socket bound to `source` (nil: any address).
    static func fetch(_ fetch: TFTPFetch, server: SocketAddress, source: SocketAddress?, timeout: TimeAmount,
                      group: any EventLoopGroup) async -> TFTPFetch.Outcome {
        let loop = group.any()  // the loop this node's task runs on (EventLoopExecutor): no hop
        let promise = loop.makePromise(of: TFTPFetch.Outcome.self)
        let bootstrap = DatagramBootstrap(group: loop)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            // One datagram per wake-up in lock step: reading on until EAGAIN would cost a second recvmsg
            // per packet (epoll is level-triggered, so anything left queued wakes the loop again).
            .channelOption(.maxMessagesPerRead, value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        TFTPFetchHandler(fetch: fetch, server: server, timeout: timeout, promise: promise))
                }
            }
        do {
            let bindAddress = try source ?? SocketAddress(ipAddress: "0.0.0.0", port: 0)
            _ = try await bootstrap.bind(to: bindAddress).get()
        } catch {
            // Not awaiting the promise: if socket creation failed the initializer never ran.
            return .failed("bind: \(error)")
        }
        return (try? await promise.futureResult.get()) ?? .failed("no outcome")
    }
}
