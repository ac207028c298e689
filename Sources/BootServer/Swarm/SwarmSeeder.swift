import Foundation
import Logging
import NetworkAddresses
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The boot server's own BitTorrent seeder (BEP 3, seeding only; docs/swarm.md): one listening port
/// for every published torrent, in this process, reading each image where publish put it.
///
/// Why a seeder at all: a web seed sends every node that asks whatever pieces it asks for, so in a
/// storm the server's uplink is spread over hundreds of half-fetched pieces and the nodes have little
/// to give each other. A seeder sends a piece to a few peers at a time, who pass it on.
///
/// Why our own and not a general client's: a BitTorrent client unchokes the peers that upload to it
/// or download fastest (tit-for-tat). In a cluster every node is ours and the goal is the *last*
/// node's time, so this seeder gives its slots to the nodes that hold the least of the image: a node
/// every peer chokes (it has nothing to trade) gets pieces from the server, which it asks for rarest
/// first, and so becomes worth trading with. (With an aria2c child as the seeder, the last node of
/// 100 came in at 3.0-3.5 times one node's time; see docs/benchmarks.md.)
///
/// Only nodes of the cluster (a fixed address in nodes.yaml or a live lease) may connect, like the
/// tracker. The seeder announces itself to the server's tracker in-process, which hands it to every
/// downloader first. Everything runs on one event loop, so its state needs no lock; a block is sent
/// from the file with sendfile, never copied through the process.
public actor SwarmSeeder: BootService {
    public nonisolated let name = "BitTorrent seeder"

    public struct Configuration: Sendable {
        public var host: String
        /// The first port tried (0: the kernel's choice).
        public var port: Int
        /// How many downloaders are unchoked at once (the poorest first).
        public var slots = 8
        /// How often the slots are handed out again, keep-alives sent and the tracker told.
        public var tick: TimeAmount = .seconds(10)
        /// A peer silent this long is dropped (clients send a keep-alive every two minutes).
        public var idleLimit: TimeAmount = .seconds(300)
        /// At most this many connections at once.
        public var maximumPeers = 4_096

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    /// What the seeder needs from the rest of the server.
    public struct Sources: Sendable {
        /// The published torrents by info-hash (read again when the generation changes).
        var torrents: @Sendable () -> [[UInt8]: SwarmTracker.Published]
        /// Whether an address may connect: a node of the cluster.
        var admits: @Sendable (IPv4Address) -> Bool
        /// Tells the tracker the seeder serves `infoHash` on `port`, having sent `uploaded` bytes of it.
        var announce: @Sendable (_ infoHash: [UInt8], _ port: Int, _ uploaded: Int64) -> Void
    }

    /// The ports tried from `Configuration.port` on, the first free one taken.
    static let portsTried = 64

    public nonisolated let configuration: Configuration
    private let sources: Sources
    private let logger: Logger
    private let loop: any EventLoop
    private var listener: (channel: any Channel, core: NIOLoopBound<SeedCore>)?

    init(configuration: Configuration, sources: Sources, logger: Logger,
         eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.configuration = configuration
        self.sources = sources
        self.logger = logger
        loop = eventLoopGroup.next()
    }

    /// Binds the listening port; connections wait until `run()`.
    @discardableResult
    public func bind() async throws -> [SocketAddress] {
        guard listener == nil else { throw BootServiceNotBound(service: name) }
        let (configuration, sources, logger, loop) = (configuration, sources, logger, loop)
        let core = try await loop.submit { NIOLoopBound(SeedCore(configuration: configuration, sources: sources, logger: logger), eventLoop: loop) }.get()
        let bootstrap = ServerBootstrap(group: loop)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.autoRead, value: false)  // `run()` turns accepting on
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = SeedPeerHandler(core: core.value)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(PeerWireDecoder()))
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        // Peers learn the port from the tracker, so any of a few will do: a BitTorrent client of the
        // administrator's on 6881 does not stop the boot server.
        var channel: (any Channel)?
        for port in configuration.port == 0 ? [0] : Array(configuration.port..<min(configuration.port + Self.portsTried, 65_536)) {
            do {
                channel = try await bootstrap.bind(host: configuration.host, port: port).get()
                break
            } catch let error as IOError where error.errnoCode == EADDRINUSE && port + 1 < configuration.port + Self.portsTried {
                continue
            }
        }
        guard let channel else { throw IOError(errnoCode: EADDRINUSE, reason: "bind") }
        listener = (channel, core)
        let address = channel.localAddress!
        logger.info("BitTorrent seeder listening", metadata: ["address": "\(address)"])
        return [address]
    }

    /// The bound address while running.
    public var localAddress: SocketAddress? { listener?.channel.localAddress }

    /// Seeds until the task is cancelled, the group shuts down gracefully, or `stop()`.
    public func run() async throws {
        guard let listener else { throw BootServiceNotBound(service: name) }
        let (channel, core) = (listener.channel, listener.core)
        let port = channel.localAddress?.port ?? configuration.port
        let tick = configuration.tick
        let task = try await channel.eventLoop.submit {
            core.value.port = port
            core.value.tick()
            return channel.eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { _ in core.value.tick() }
        }.get()
        try await channel.setOption(.autoRead, value: true).get()
        await cancelWhenGracefulShutdown {
            await withTaskCancellationHandler {
                try? await channel.closeFuture.get()
            } onCancel: {
                channel.close(promise: nil)
            }
        }
        task.cancel()
        await stop()
    }

    /// Closes the listening port and every peer connection.
    public func stop() async {
        guard let listener else { return }
        self.listener = nil
        let core = listener.core
        try? await listener.channel.close()
        try? await loop.submit { core.value.closeAll() }.get()
        logger.info("BitTorrent seeder stopped")
    }

    /// Bytes sent per info-hash since start (tests).
    func uploaded() async throws -> [[UInt8]: Int64] {
        guard let core = listener?.core else { return [:] }
        return try await loop.submit { core.value.uploaded }.get()
    }
}

/// The seeder's peers and the choice of whom to unchoke. Lives on the seeder's event loop.
final class SeedCore {
    let configuration: SwarmSeeder.Configuration
    let sources: SwarmSeeder.Sources
    let logger: Logger
    /// Ours in every handshake: "-IB0001-" (Azureus style) and 12 random bytes.
    let peerID: [UInt8] = Array("-IB0001-".utf8) + (0..<12).map { _ in UInt8.random(in: 0...255) }
    var port = 0
    private var peers: [ObjectIdentifier: SeedPeerHandler] = [:]
    private(set) var uploaded: [[UInt8]: Int64] = [:]
    private var unchoked = 0

    init(configuration: SwarmSeeder.Configuration, sources: SwarmSeeder.Sources, logger: Logger) {
        self.configuration = configuration
        self.sources = sources
        self.logger = logger
    }

    var isFull: Bool { peers.count >= configuration.maximumPeers }

    func joined(_ peer: SeedPeerHandler) { peers[ObjectIdentifier(peer)] = peer }

    func left(_ peer: SeedPeerHandler) {
        guard peers.removeValue(forKey: ObjectIdentifier(peer)) != nil else { return }
        if peer.isUnchoked {
            unchoked -= 1
            fillSlots()
        }
    }

    func sent(_ bytes: Int, of infoHash: [UInt8]) { uploaded[infoHash, default: 0] += Int64(bytes) }

    /// A peer became interested: unchoked at once while a slot is free, else at the next tick.
    func interested(_ peer: SeedPeerHandler) {
        if unchoked < configuration.slots, !peer.isUnchoked { set(peer, unchoked: true) }
    }

    /// An unchoked peer no longer wants anything: its slot goes to the next.
    func satisfied(_ peer: SeedPeerHandler) {
        if peer.isUnchoked { set(peer, unchoked: false) }
        fillSlots()
    }

    private func set(_ peer: SeedPeerHandler, unchoked: Bool) {
        if peer.setUnchoked(unchoked) { self.unchoked += unchoked ? 1 : -1 }
    }

    /// The slots go to the interested peers holding the smallest share of their image; among equals,
    /// to the one unchoked longest ago (so nodes that all hold nothing take turns).
    static func ranked(_ peers: [SeedPeerHandler]) -> [SeedPeerHandler] {
        peers.filter(\.isInterested).sorted { ($0.share, $0.lastUnchoked) < ($1.share, $1.lastUnchoked) }
    }

    /// Hands out every slot again (each tick).
    func rechoke() {
        let chosen = Set(Self.ranked(Array(peers.values)).prefix(configuration.slots).map(ObjectIdentifier.init))
        for (id, peer) in peers where peer.isUnchoked && !chosen.contains(id) { set(peer, unchoked: false) }
        for (id, peer) in peers where !peer.isUnchoked && chosen.contains(id) { set(peer, unchoked: true) }
    }

    private func fillSlots() {
        guard unchoked < configuration.slots else { return }
        for peer in Self.ranked(peers.values.filter { !$0.isUnchoked }).prefix(configuration.slots - unchoked) { set(peer, unchoked: true) }
    }

    func tick() {
        let now = NIODeadline.now()
        let published = sources.torrents()
        for peer in peers.values { peer.tick(now: now, idleLimit: configuration.idleLimit, published: published) }
        rechoke()
        for infoHash in published.keys { sources.announce(infoHash, port, uploaded[infoHash] ?? 0) }
    }

    func closeAll() {
        for peer in peers.values { peer.close() }
    }
}

/// One peer's connection: handshake, its bitfield and haves, and the blocks it asks for while unchoked.
final class SeedPeerHandler: ChannelInboundHandler {
    typealias InboundIn = PeerMessage
    typealias OutboundOut = IOData

    /// A peer may have this many blocks queued for sending; one asking for more is cut off.
    static let maximumQueued = 512
    static let maximumBlock: UInt32 = 1 << 17

    /// Strong: the core holds its joined peers, each until its connection closes (`SeedCore.left`).
    private let core: SeedCore
    private var context: ChannelHandlerContext?
    private var remote = "?"
    private var infoHash: [UInt8] = []
    private var torrent: SwarmTracker.Published?
    private var file: NIOFileHandle?
    private var pieces = 0
    private var have: [UInt8] = []
    private var haveCount = 0
    private(set) var isInterested = false
    private(set) var isUnchoked = false
    private(set) var lastUnchoked = NIODeadline.uptimeNanoseconds(0)
    private var lastHeard = NIODeadline.now()
    private var lastWritten = NIODeadline.now()
    private var queued = 0

    init(core: SeedCore) { self.core = core }

    /// The share of the image the peer holds, 0...1.
    var share: Double { pieces == 0 ? 0 : Double(haveCount) / Double(pieces) }

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        let address = context.remoteAddress
        remote = address?.ipAddress ?? "?"
        guard let ip = address?.ipAddress.flatMap(IPv4Address.init), core.sources.admits(ip) else {
            core.logger.notice("swarm: refused a peer connection: not a node of this cluster", metadata: ["client": "\(remote)"])
            context.close(promise: nil)
            return
        }
        guard !core.isFull else {
            core.logger.warning("swarm: refused a peer connection: \(core.configuration.maximumPeers) peers already", metadata: ["client": "\(remote)"])
            context.close(promise: nil)
            return
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        core.left(self)
        try? file?.close()
        file = nil
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastHeard = .now()
        switch unwrapInboundIn(data) {
        case .handshake(let hash): greet(hash, context: context)
        case .keepAlive, .choke, .unchoke, .other: break
        case .interested:
            isInterested = true
            core.interested(self)
        case .notInterested:
            isInterested = false
            core.satisfied(self)
        case .have(let index):
            guard Int(index) < pieces else { return drop("have of piece \(index) of \(pieces)", context: context) }
            mark(Int(index))
        case .bitfield(let bits):
            guard bits.count == (pieces + 7) / 8 else { return drop("a bitfield of \(bits.count) bytes for \(pieces) pieces", context: context) }
            have = bits
            haveCount = 0
            for index in 0..<pieces where bits[index >> 3] & (0x80 >> (index & 7)) != 0 { haveCount += 1 }
            finishedCheck(context: context)
        case .request(let request): serve(request, context: context)
        // Blocks are written as they are asked for, so nothing waits to be taken back. (Queueing them
        // here until the socket took them, so that aria2c's end-game cancels and a choke took back
        // what had not left, made a 100-node storm slower: docs/swarm.md.)
        case .cancel: break
        case .piece: drop("sent a piece, which this seeder never asks for", context: context)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) { context.flush() }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let wire = error as? PeerWireError { core.logger.notice("swarm: peer dropped: \(wire)", metadata: ["client": "\(remote)"]) }
        context.close(promise: nil)
    }

    private func greet(_ hash: [UInt8], context: ChannelHandlerContext) {
        guard torrent == nil else { return }
        guard let published = core.sources.torrents()[hash] else { return drop("asks for a torrent not published here", context: context) }
        let descriptor = open(published.file, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            core.logger.error("swarm: cannot read \(published.file): \(String(cString: strerror(errno)))")
            context.close(promise: nil)
            return
        }
        file = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: descriptor)
        infoHash = hash
        torrent = published
        pieces = Int((published.length + Int64(published.pieceLength) - 1) / Int64(published.pieceLength))
        have = [UInt8](repeating: 0, count: (pieces + 7) / 8)
        var buffer = context.channel.allocator.buffer(capacity: 68 + 5 + have.count)
        PeerWireEncoder.handshake(infoHash: hash, peerID: core.peerID, into: &buffer)
        PeerWireEncoder.fullBitfield(pieces: pieces, into: &buffer)
        write(buffer, context: context)
        context.flush()
        core.joined(self)
    }

    private func mark(_ index: Int) {
        guard have[index >> 3] & (0x80 >> (index & 7)) == 0 else { return }
        have[index >> 3] |= 0x80 >> (index & 7)
        haveCount += 1
        if let context { finishedCheck(context: context) }
    }

    /// A peer holding the whole image needs nothing from a seeder: the connection and its slot go.
    private func finishedCheck(context: ChannelHandlerContext) {
        if pieces > 0 && haveCount == pieces { context.close(promise: nil) }
    }

    private func serve(_ request: BlockRequest, context: ChannelHandlerContext) {
        guard let torrent, let file else { return drop("asked for a block before its handshake", context: context) }
        guard isUnchoked else { return }  // BEP 3: requests while choked are dropped; the peer asks again
        let pieceStart = Int64(request.index) * Int64(torrent.pieceLength)
        let pieceEnd = min(pieceStart + Int64(torrent.pieceLength), torrent.length)
        let start = pieceStart + Int64(request.begin)
        guard Int(request.index) < pieces, request.length > 0, request.length <= Self.maximumBlock,
              start + Int64(request.length) <= pieceEnd else {
            return drop("asked for \(request.length) bytes at \(request.begin) of piece \(request.index)", context: context)
        }
        guard queued < Self.maximumQueued else { return drop("more than \(Self.maximumQueued) blocks asked for at once", context: context) }
        var head = context.channel.allocator.buffer(capacity: 13)
        PeerWireEncoder.pieceHead(request, into: &head)
        write(head, context: context)
        queued += 1
        let promise = context.eventLoop.makePromise(of: Void.self)
        let length = Int(request.length)
        promise.futureResult.assumeIsolated().whenComplete { [self] result in
            queued -= 1
            if case .success = result { core.sent(length, of: infoHash) }
        }
        context.write(wrapOutboundOut(.fileRegion(FileRegion(fileHandle: file, readerIndex: Int(start), endIndex: Int(start) + length))),
                      promise: promise)
    }

    /// Tells the peer; false when it is gone already (nothing changed).
    func setUnchoked(_ unchoked: Bool) -> Bool {
        guard let context, unchoked != isUnchoked else { return false }
        isUnchoked = unchoked
        if unchoked { lastUnchoked = .now() }
        var buffer = context.channel.allocator.buffer(capacity: 5)
        PeerWireEncoder.choke(!unchoked, into: &buffer)
        write(buffer, context: context)
        context.flush()
        return true
    }

    /// Keep-alives, and the end of silent peers and of those whose torrent is no longer published.
    func tick(now: NIODeadline, idleLimit: TimeAmount, published: [[UInt8]: SwarmTracker.Published]) {
        guard let context else { return }
        if published[infoHash] == nil { return drop("its torrent is no longer published", context: context) }
        if now - lastHeard > idleLimit { return drop("silent for \(idleLimit.nanoseconds / 1_000_000_000) s", context: context) }
        if now - lastWritten > .seconds(90) {
            var buffer = context.channel.allocator.buffer(capacity: 4)
            PeerWireEncoder.keepAlive(into: &buffer)
            write(buffer, context: context)
            context.flush()
        }
    }

    func close() { context?.close(promise: nil) }

    private func write(_ buffer: ByteBuffer, context: ChannelHandlerContext) {
        lastWritten = .now()
        context.write(wrapOutboundOut(.byteBuffer(buffer)), promise: nil)
    }

    private func drop(_ why: String, context: ChannelHandlerContext) {
        core.logger.notice("swarm: peer dropped: \(why)", metadata: ["client": "\(remote)"])
        context.close(promise: nil)
    }
}
