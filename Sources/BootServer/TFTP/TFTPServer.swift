import BootProtocols
import DatagramIO
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Read-only TFTP server (RFC 1350, 2347, 2348, 2349, 7440) on SwiftNIO.
///
/// One listening socket (a NIO channel) takes requests; each transfer gets its own socket on an
/// ephemeral port (RFC 1350's transfer ID), all run by one `DatagramReactor` thread: no thread or
/// process per transfer, and no per-packet allocation. The protocol itself is `TFTPReadSession`
/// (BootProtocols); the listener and `TFTPTransfer` only carry out its actions.
public actor TFTPServer: BootService {
    public nonisolated let name = "TFTP"
    public nonisolated let configuration: TFTPServerConfiguration
    private let logger: Logger
    private let group: any EventLoopGroup
    private let observer: (@Sendable (TFTPTransferReport) -> Void)?
    private var listener: (channel: any Channel, handler: NIOLoopBound<TFTPListenerHandler>, reactor: DatagramReactor)?

    /// - Parameter observer: called once per request (served, aborted, failed or refused), on an event
    ///   loop thread: keep it short (the boot timeline appends a record).
    public init(configuration: TFTPServerConfiguration, logger: Logger,
                eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                observer: (@Sendable (TFTPTransferReport) -> Void)? = nil) {
        self.configuration = configuration
        self.logger = logger
        self.group = eventLoopGroup
        self.observer = observer
    }

    /// Binds the listening socket; returns its address (useful with port 0). Requests wait until `run()`.
    @discardableResult
    public func bind() async throws -> [SocketAddress] {
        guard listener == nil else { throw TFTPServerError.alreadyRunning }
        guard let root = TFTPFileStore.canonicalRoot(configuration.root) else {
            throw TFTPServerError.rootNotFound(configuration.root)
        }
        let configuration = self.configuration
        let logger = self.logger
        let group = self.group
        let observer = self.observer
        let reactor = try DatagramReactor(name: "tftp-transfers")
        // The socket is made on one of the group's threads, never the caller's: a socket lives in the network
        // namespace of the thread that creates it, so a group whose threads joined a namespace serves inside
        // it (the loss tests run the server so). Transfer sockets are made on the listener's loop too.
        let bound = group.next().flatSubmit {
            // No SO_REUSEADDR: for UDP it lets a second server bind the same port and silently take
            // half the requests; a clear "port in use" at start-up is what an administrator needs.
            DatagramBootstrap(group: group)
                // A boot storm sends hundreds of RRQs at once; the kernel's default buffer (~200 KiB, a few
                // hundred datagrams) drops the rest, and each drop costs that client a multi-second retry.
                .channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(configuration.listenerReceiveBufferSize))
                .channelOption(.datagramVectorReadMessageCount, value: 32)
                // Vector reads split one receive buffer evenly between the messages: give each 2 KiB, more
                // than any request (RFC 1350 requests fit 512 bytes), or long RRQs arrive truncated.
                .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 32 * 2048))
                .channelOption(.maxMessagesPerRead, value: 8)
                .channelOption(.autoRead, value: false)  // `run()` turns reading on
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let store = TFTPFileStore(root: root, cacheFileLimit: configuration.cacheFileSizeLimit,
                                                  cacheTotalLimit: configuration.cacheTotalSizeLimit,
                                                  requireWorldReadable: configuration.requireWorldReadable)
                        let handler = TFTPListenerHandler(configuration: configuration, store: store, reactor: reactor,
                                                          logger: logger, observer: observer)
                        try channel.pipeline.syncOperations.addHandler(handler)
                    }
                }
                .bind(host: configuration.host, port: configuration.port)
        }
        let channel: any Channel
        do {
            channel = try await bound.get()
        } catch {
            reactor.shutdown()
            throw error
        }
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: TFTPListenerHandler.self), eventLoop: channel.eventLoop)
        }.get()
        listener = (channel, handler, reactor)
        let address = channel.localAddress!
        logger.info("TFTP server listening", metadata: ["address": "\(address)", "root": "\(root)"])
        return [address]
    }

    /// Closes the listening socket and every running transfer.
    public func stop() async {
        guard let listener else { return }
        self.listener = nil
        let handler = listener.handler
        try? await listener.channel.eventLoop.submit { handler.value.closeTransfers() }.get()
        try? await listener.channel.close()
        listener.reactor.shutdown()  // runs the transfers' cancellations queued above first
        logger.info("TFTP server stopped")
    }

    /// Serves the bound socket until the task is cancelled, the group shuts down gracefully, or `stop()`.
    public func run() async throws {
        guard let listener else { throw BootServiceNotBound(service: name) }
        let (channel, handler) = (listener.channel, listener.handler)
        try await channel.setOption(.autoRead, value: true).get()
        await cancelWhenGracefulShutdown {
            await withTaskCancellationHandler {
                try? await channel.closeFuture.get()
            } onCancel: {
                // Transfers first, then the listener, as `stop()` does; `stop()` below waits for the rest.
                channel.eventLoop.execute {
                    handler.value.closeTransfers()
                    channel.close(promise: nil)
                }
            }
        }
        await stop()
    }

    /// The bound address while running.
    public var localAddress: SocketAddress? { listener?.channel.localAddress }

    /// Totals since start.
    public func statistics() async throws -> TFTPServerStatistics {
        guard let listener else { return TFTPServerStatistics() }
        let handler = listener.handler
        return try await listener.channel.eventLoop.submit { handler.value.snapshot() }.get()
    }
}

/// Takes requests on the listening port. Owns all cross-transfer state (limits, cache, totals) and lives
/// on one event loop, so none of it needs a lock; transfers (on the reactor's thread) report back with
/// `execute`.
final class TFTPListenerHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private let configuration: TFTPServerConfiguration
    private let store: TFTPFileStore
    private let reactor: DatagramReactor
    private let logger: Logger
    private let observer: (@Sendable (TFTPTransferReport) -> Void)?
    private let metrics = TFTPServerMetrics()
    private var context: ChannelHandlerContext?
    /// A running transfer (owned by the reactor's thread once added).
    private struct Transfer {
        var id: UInt64
        var request: TFTPRequest
        var endpoint: TFTPTransfer
    }

    /// Running transfers by client endpoint.
    private var transfers: [SocketAddress: Transfer] = [:]
    private var nextTransferID: UInt64 = 0
    private var transfersPerClient: [ClientKey: Int] = [:]
    /// Where transfer sockets are bound: the listener's host, an ephemeral port.
    private var transferAddress: SocketAddress?
    private var statistics = TFTPServerStatistics()
    private var closing = false

    init(configuration: TFTPServerConfiguration, store: TFTPFileStore, reactor: DatagramReactor,
         logger: Logger, observer: (@Sendable (TFTPTransferReport) -> Void)?) {
        self.configuration = configuration
        self.store = store
        self.reactor = reactor
        self.logger = logger
        self.observer = observer
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func snapshot() -> TFTPServerStatistics {
        var snapshot = statistics
        snapshot.activeTransfers = transfers.count
        snapshot.cacheHits = store.cacheHits
        snapshot.cacheMisses = store.cacheMisses
        return snapshot
    }

    func closeTransfers() {
        closing = true
        let reactor = self.reactor
        for transfer in transfers.values.map(\.endpoint) {
            reactor.execute { transfer.cancel(reactor) }
        }
    }

    /// Per-client limits count by address, not port: a client's transfers come from many ports.
    private enum ClientKey: Hashable {
        case v4(UInt32)
        case other(String)

        init(_ address: SocketAddress) {
            if case .v4(let v4) = address {
                self = .v4(v4.address.sin_addr.s_addr)
            } else {
                self = .other(address.ipAddress ?? "\(address)")
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let client = envelope.remoteAddress
        let packet: TFTPPacket
        do {
            packet = try TFTPPacket.decode(envelope.data)
        } catch {
            // Answer only what claims to be a request; anything else on this port is noise.
            if let opcode = envelope.data.getInteger(at: envelope.data.readerIndex, as: UInt16.self), opcode == 1 || opcode == 2 {
                reject(client: client, path: "", code: .illegalOperation, message: error.description,
                       reason: "malformed request: \(error)", level: .notice)
            } else {
                logger.debug("ignoring undecodable datagram on the TFTP port", metadata: ["client": "\(client)", "reason": "\(error)"])
            }
            return
        }
        switch packet {
        case .readRequest(let request):
            read(request, from: client, context: context)
        case .writeRequest(let request):
            reject(client: client, path: request.filename, code: .accessViolation, message: "read-only server",
                   reason: "write request refused: this server is read-only", level: .notice)
        case .data, .acknowledgement, .error, .optionAcknowledgement:
            logger.debug("ignoring \(packet.opcode) on the TFTP request port", metadata: ["client": "\(client)"])
        }
    }

    private func read(_ request: TFTPRequest, from client: SocketAddress, context: ChannelHandlerContext) {
        let clientKey = ClientKey(client)
        if let running = transfers[client] {
            if running.request == request {
                // The client re-sent its RRQ: our first answer (or all of them) did not reach it. A second
                // transfer would only compete with the first; the running session repeats its answer at once.
                statistics.duplicateRequests += 1
                logger.debug("repeated read request passed to its transfer", metadata: ["client": "\(client)", "file": "\(request.filename)"])
                let reactor = self.reactor, endpoint = running.endpoint
                reactor.execute { endpoint.requestRepeated(reactor) }
                return
            }
            // A different request from the same port: the client has moved on (PXE ROMs send the real
            // RRQ from the probe's port right after aborting it, and that ERROR may still be queued on
            // the transfer's socket). The old transfer is superseded.
            transfers[client] = nil
            release(clientKey)
            // On the reactor, after anything the old transfer is still doing: the report says why it ended.
            let reactor = self.reactor, endpoint = running.endpoint
            reactor.execute { endpoint.superseded(reactor) }
        }
        guard !closing else { return }
        guard transfersPerClient[clientKey, default: 0] < configuration.maximumTransfersPerClient else {
            reject(client: client, path: request.filename, code: .notDefined, message: "too many concurrent transfers",
                   reason: "client already has \(configuration.maximumTransfersPerClient) transfers running", level: .warning)
            return
        }
        guard transfers.count < configuration.maximumTransfers else {
            reject(client: client, path: request.filename, code: .notDefined, message: "server busy",
                   reason: "\(configuration.maximumTransfers) transfers running", level: .warning)
            return
        }
        guard request.mode != .mail else {
            reject(client: client, path: request.filename, code: .illegalOperation, message: "mail mode is not supported",
                   reason: "mail mode requested", level: .notice)
            return
        }
        let content: TFTPServedContent
        do {
            content = try store.open(request.filename)
        } catch {
            // pxelinux probes many config names per boot; the misses are expected, not news.
            let expectedMiss: Bool
            if case .notFound = error {
                expectedMiss = request.filename.replacingOccurrencesOfBackslash().contains("pxelinux.cfg/")
            } else {
                expectedMiss = false
            }
            let level: Logger.Level = expectedMiss ? .debug : (error.errorCode == .accessViolation ? .warning : .info)
            reject(client: client, path: request.filename, code: error.errorCode, message: error.clientMessage,
                   reason: error.description, level: level)
            return
        }

        let socket: CInt
        do {
            socket = try UDPSocket.open(boundTo: transferBindAddress(context: context))
        } catch {
            reject(client: client, path: request.filename, code: .notDefined,
                   message: "cannot open transfer socket", reason: "\(error)", level: .error)
            return
        }
        nextTransferID += 1
        let id = nextTransferID
        let listener = NIOLoopBound(self, eventLoop: context.eventLoop)
        let onEnd: @Sendable (TFTPTransferReport) -> Void = { report in
            listener.eventLoop.execute { listener.value.transferEnded(report, id: id) }
        }
        let transfer = TFTPTransfer(descriptor: socket, request: request, client: client, content: content,
                                    configuration: configuration.session, onEnd: onEnd)
        transfers[client] = Transfer(id: id, request: request, endpoint: transfer)
        transfersPerClient[clientKey, default: 0] += 1
        reactor.add(transfer)
    }

    /// The listening socket's address with port 0, worked out once.
    private func transferBindAddress(context: ChannelHandlerContext) throws -> SocketAddress {
        if let transferAddress { return transferAddress }
        var address = try context.channel.localAddress ?? SocketAddress(ipAddress: "0.0.0.0", port: 0)
        address.port = 0
        transferAddress = address
        return address
    }

    private func release(_ clientKey: ClientKey) {
        let remaining = transfersPerClient[clientKey, default: 1] - 1
        transfersPerClient[clientKey] = remaining > 0 ? remaining : nil
    }

    /// Refuses a request with an ERROR from the listening port. Clients take the first answer's port as
    /// the server's transfer ID, so this is accepted, and it costs no socket for the common misses.
    private func reject(client: SocketAddress, path: String, code: TFTPErrorCode, message: String, reason: String, level: Logger.Level) {
        if let context {
            let packet = TFTPPacket.error(code: code, message: message)
            var buffer = context.channel.allocator.buffer(capacity: packet.encodedSize)
            packet.encode(into: &buffer)
            context.writeAndFlush(wrapOutboundOut(AddressedEnvelope(remoteAddress: client, data: buffer)), promise: nil)
        }
        finished(TFTPTransferReport(client: client, path: path, bytes: 0, result: .rejected(code: code, reason: reason),
                                    blockSize: 0, windowSize: 0, duration: .zero, retransmissions: 0, timeouts: 0),
                 level: level)
    }

    private func transferEnded(_ report: TFTPTransferReport, id: UInt64) {
        // A superseded transfer was already released; its endpoint may belong to a newer one now.
        if transfers[report.client]?.id == id {
            transfers[report.client] = nil
            release(ClientKey(report.client))
        }
        let level: Logger.Level
        switch report.result {
        case .completed, .delivered, .abortedByClient, .superseded, .cancelled, .rejected: level = .info
        case .failed: level = .warning
        }
        finished(report, level: level)
    }

    private func finished(_ report: TFTPTransferReport, level: Logger.Level) {
        switch report.result {
        case .completed, .delivered: statistics.completed += 1
        case .abortedByClient, .superseded: statistics.abortedByClient += 1
        case .failed, .cancelled: statistics.failed += 1
        case .rejected: statistics.rejected += 1
        }
        statistics.bytesSent += report.bytes
        statistics.retransmissions += report.retransmissions
        statistics.timeouts += report.timeouts
        metrics.record(report)
        logger.log(level: level, "TFTP \(report.result.label)", metadata: [
            "client": "\(report.client)",
            "file": "\(report.path)",
            "bytes": "\(report.bytes)",
            "blksize": "\(report.blockSize)",
            "windowsize": "\(report.windowSize)",
            "duration_ms": "\(report.duration.nanoseconds / 1_000_000)",
            "retransmissions": "\(report.retransmissions)",
            "outcome": "\(report.result)",
        ])
        observer?(report)
    }
}

/// One read transfer on its own ephemeral-port socket (RFC 1350's transfer ID), run by the server's
/// `DatagramReactor`: feeds the session what arrives and carries out what it returns. Per block: one
/// `recvfrom` into the reactor's buffer, one `sendmsg` of a 4-byte header and the block's bytes where
/// they lie (a slice of the cached file, or one pread), nothing allocated. Reactor thread only, after
/// the listener hands it over.
final class TFTPTransfer: DatagramEndpoint {
    typealias Session = TFTPReadSession<TFTPServedContent>

    let descriptor: CInt
    private var session: Session
    private let client: SocketAddress
    private let peer: DatagramPeer
    private let onEnd: @Sendable (TFTPTransferReport) -> Void
    private var actions: [Session.Action] = []
    private var encoded = ByteBuffer()
    private var startedAt = NIODeadline.now()
    private var ended = false

    init(descriptor: CInt, request: TFTPRequest, client: SocketAddress, content: TFTPServedContent,
         configuration: TFTPSessionConfiguration, onEnd: @escaping @Sendable (TFTPTransferReport) -> Void) {
        self.descriptor = descriptor
        self.session = Session(request: request, fileSize: content.size, content: content, configuration: configuration)
        self.client = client
        self.peer = DatagramPeer(client)
        self.onEnd = onEnd
        actions.reserveCapacity(session.negotiated.windowSize + 2)
    }

    func start(_ reactor: DatagramReactor, now: NIODeadline) {
        startedAt = now
        run(.start(now), reactor: reactor)
    }

    func readable(_ reactor: DatagramReactor, scratch: UnsafeMutableRawBufferPointer, now: NIODeadline) {
        var sender = sockaddr_storage()
        var senderLength = socklen_t(0)
        guard let count = UDPSocket.receive(descriptor, into: scratch, from: &sender, senderLength: &senderLength) else { return }
        guard peer.matches(&sender, length: senderLength) else {
            // RFC 1350 §4: answer a stranger with "unknown transfer ID" without disturbing the transfer.
            encoded.clear()
            TFTPPacket.error(code: .unknownTransferID, message: "unknown transfer ID").encode(into: &encoded)
            let stranger = DatagramPeer(storage: sender, length: senderLength)
            encoded.withUnsafeReadableBytes { _ = UDPSocket.send(descriptor, head: $0, body: nil, to: stranger) }
            return
        }
        let packet: TFTPPacket
        if count == 4, scratch[0] == 0, scratch[1] == UInt8(TFTPOpcode.acknowledgement.rawValue) {
            packet = .acknowledgement(block: UInt16(scratch[2]) << 8 | UInt16(scratch[3]))  // the common case, decoded in place
        } else {
            // A datagram that does not decode is dropped, like a corrupted one: the session's timer recovers.
            guard let decoded = try? TFTPPacket.decode(ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: scratch[0..<count]))) else { return }
            packet = decoded
        }
        run(.packet(packet, now), reactor: reactor)
    }

    func deadlineReached(_ reactor: DatagramReactor, now: NIODeadline) {
        run(.timerFired(now), reactor: reactor)
    }

    func cancelled() {
        end(.cancelled)
    }

    /// The listener saw this transfer's client repeat its request.
    func requestRepeated(_ reactor: DatagramReactor) {
        guard reactor.isRegistered(self) else { return }
        run(.requestRepeated(.now()), reactor: reactor)
    }

    /// The client sent a different request from this transfer's client port: it moved on.
    func superseded(_ reactor: DatagramReactor) {
        end(.superseded)
        reactor.remove(self)
    }

    /// The server is stopping.
    func cancel(_ reactor: DatagramReactor) {
        end(.cancelled)
        reactor.remove(self)
    }

    private func run(_ event: Session.Event, reactor: DatagramReactor) {
        actions.removeAll(keepingCapacity: true)
        session.handle(event, into: &actions)
        for action in actions {
            switch action {
            case .send(let packet):
                send(packet)
            case .armTimer(let deadline):
                reactor.setDeadline(deadline, for: self)
            case .finish(let outcome):
                switch outcome {
                case .completed: end(.completed)
                case .delivered: end(.delivered)
                case .abortedByClient(let code, let message): end(.abortedByClient(code: code, message: message))
                }
            case .fail(let failure):
                end(.failed(failure))
            }
        }
        if ended { reactor.remove(self) }
    }

    private func send(_ packet: TFTPPacket) {
        if case .data(let block, let payload) = packet {
            var head: (UInt8, UInt8, UInt8, UInt8) = (0, UInt8(TFTPOpcode.data.rawValue), UInt8(block >> 8), UInt8(block & 0xFF))
            withUnsafeBytes(of: &head) { _ = UDPSocket.send(descriptor, head: $0, body: payload, to: peer) }
            return
        }
        encoded.clear()
        packet.encode(into: &encoded)
        encoded.withUnsafeReadableBytes { _ = UDPSocket.send(descriptor, head: $0, body: nil, to: peer) }
    }

    private func end(_ result: TFTPTransferResult) {
        guard !ended else { return }
        ended = true
        let statistics = session.statistics
        let now = NIODeadline.now()
        var report = TFTPTransferReport(
            client: client, path: session.request.filename, bytes: statistics.bytesAcknowledged, result: result,
            blockSize: session.negotiated.blockSize, windowSize: session.negotiated.windowSize,
            duration: now - startedAt, retransmissions: statistics.retransmissions, timeouts: statistics.timeouts)
        if result == .delivered, let sent = statistics.finalBlockFirstSent {
            report.bytes = session.fileSize
            report.finishedAgo = now - sent
        }
        onEnd(report)
    }
}

extension String {
    fileprivate func replacingOccurrencesOfBackslash() -> String {
        String(decoding: utf8.map { $0 == 0x5C ? 0x2F : $0 }, as: UTF8.self)
    }
}
