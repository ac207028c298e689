import BootProtocols
import Foundation
import ImageBuildKit
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// DHCPv4 server (authoritative or proxyDHCP) on SwiftNIO.
///
/// Every socket (one per interface and port) lives on ONE event loop, and so does all decision state
/// (lease store, inventory view, rate limiter): decisions are serialised without locks, which is what
/// makes "one address never goes to two clients" a local property. The work per packet is bounded:
/// one decode, one policy call, one encode. Disk writes happen on the lease journal's thread; an ACK
/// that binds a lease is sent when the fsync covering it completes (group commit).
public actor DHCPServer: BootService {
    public nonisolated let name = "DHCP"
    public nonisolated let configuration: DHCPServerConfiguration
    private let inventory: InventoryStore
    private let logger: Logger
    private let loop: any EventLoop
    private let observer: (@Sendable (DHCPEvent) -> Void)?
    /// Machines nodes.yaml does not list: recorded, and bound when nodes.yaml has `discover:`.
    public nonisolated let discovery: DiscoveryStore?
    private var channels: [any Channel] = []
    private var engine: NIOLoopBound<DHCPEngine>?
    private var subscription: ObservationToken?
    /// The bound leases, readable from any thread: a stage report for a MAC is trusted from the address
    /// it holds a lease on (see `ReportAdmission`).
    public nonisolated let leaseIndex = BoundLeaseIndex()

    /// - Parameters:
    ///   - inventory: where hosts, subnet and boot settings come from; changes apply to the next packet.
    ///   - discovery: records unknown machines (and binds them under `discover:`); nil: neither.
    ///   - observer: called once per received packet with the decision, on the server's event loop.
    public init(configuration: DHCPServerConfiguration, inventory: InventoryStore, logger: Logger,
                eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                discovery: DiscoveryStore? = nil,
                observer: (@Sendable (DHCPEvent) -> Void)? = nil) {
        self.configuration = configuration
        self.discovery = discovery
        self.inventory = inventory
        self.logger = logger
        self.loop = eventLoopGroup.next()
        self.observer = observer
    }

    /// Loads the leases and binds the sockets; returns their addresses (the DHCP port's first; with
    /// port 0, the port the kernel chose). Packets wait until `run()`. On a failure nothing stays open.
    @discardableResult
    public func bind() async throws -> [SocketAddress] {
        guard engine == nil else { throw DHCPServerError.alreadyRunning }
        let configuration = self.configuration
        let logger = self.logger
        let observer = self.observer
        let loop = self.loop
        let snapshot = inventory.current
        let leaseIndex = self.leaseIndex
        let discovery = self.discovery

        // Interfaces: named ones, plus the one holding the listen address.
        let all = try DHCPInterface.all()
        var names = configuration.interfaces
        if let listen = configuration.listenAddress {
            guard let address = IPv4Address(listen), let holder = all.first(where: { $0.addresses.contains(address) }) else {
                throw DHCPServerError.noInterfaceHolds(listen)
            }
            if !names.contains(holder.name) { names.append(holder.name) }
        }
        var interfaces: [DHCPInterface] = []
        for name in names {
            guard let interface = all.first(where: { $0.name == name }) else { throw DHCPServerError.unknownInterface(name) }
            interfaces.append(interface)
        }

        let engine = try await loop.submit {
            let store = try LeaseStore(
                configuration: {
                    var c = LeaseStoreConfiguration(directory: configuration.stateDirectory)
                    c.compactAfterRecords = configuration.compactAfterRecords
                    c.index = leaseIndex
                    return c
                }(), logger: logger)
            let engine = DHCPEngine(configuration: configuration, leases: store, logger: logger, observer: observer,
                                    loop: loop, knownInterfaces: all, snapshot: snapshot, discovery: discovery)
            return NIOLoopBound(engine, eventLoop: loop)
        }.get()
        self.engine = engine
        let loaded = try await loop.submit { (engine.value.leases.loaded.records.count, engine.value.leases.journalPath) }.get()
        logger.info("DHCP lease journal loaded", metadata: ["file": "\(loaded.1)", "records": "\(loaded.0)"])

        // Sockets: per interface, or one wildcard socket that learns the interface from IP_PKTINFO.
        var ports = [configuration.port]
        if configuration.mode == .proxy { ports.append(configuration.pxePort) }
        var addresses: [SocketAddress] = []
        do {
            for port in ports {
                let targets: [DHCPInterface?] = interfaces.isEmpty ? [nil] : interfaces
                for interface in targets {
                    let fd = try DHCPSocket.open(port: port, interface: interface?.name,
                                                 receiveBufferSize: configuration.receiveBufferSize, packetInfo: interface == nil)
                    let actualPort = DHCPSocket.boundPort(fd)
                    let serverPort: DHCPServerPort = port == configuration.port ? .dhcp : .pxe
                    let channel = try await DatagramBootstrap(group: loop)
                        .channelOption(.receivePacketInfo, value: interface == nil)
                        .channelOption(.datagramVectorReadMessageCount, value: 32)
                        .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 32 * 2048))
                        .channelOption(.maxMessagesPerRead, value: 4)
                        .channelOption(.autoRead, value: false)  // `run()` turns reading on
                        .channelInitializer { channel in
                            channel.eventLoop.makeCompletedFuture {
                                let handler = DHCPChannelHandler(engine: engine.value, port: serverPort, interface: interface)
                                try channel.pipeline.syncOperations.addHandler(handler)
                            }
                        }
                        .withBoundSocket(fd)
                        .get()
                    channels.append(channel)
                    if let address = channel.localAddress { addresses.append(address) }
                    logger.info("DHCP server listening", metadata: [
                        "port": "\(actualPort)", "interface": "\(interface?.name ?? "*")", "mode": "\(configuration.mode.rawValue)",
                    ])
                }
            }
        } catch {
            await stop()
            throw error
        }

        // Inventory changes: build the DHCP view off the loop, swap it in on the loop.
        subscription = inventory.onChange { snapshot in
            loop.execute { engine.value.install(snapshot) }
        }
        return addresses
    }

    /// Applies the settings that need no new socket (unknown clients, Rapid Commit, hold times, rate
    /// limit) from `new` to the next packet; mode, ports, interfaces and state directory stay as
    /// started (`configuration` keeps reporting the started values for those). Per-MAC rate-limit
    /// buckets start afresh when the limit changes.
    public func reconfigure(_ new: DHCPServerConfiguration) async {
        guard let engine else { return }
        try? await loop.submit { engine.value.reconfigure(new) }.get()
    }

    /// Closes the sockets, then writes what the journal has queued.
    public func stop() async {
        subscription?.cancel()
        subscription = nil
        for channel in channels { try? await channel.close() }
        channels = []
        guard let engine else { return }
        self.engine = nil
        let store = try? await loop.submit { UnsafeTransfer(engine.value.leases) }.get()
        if let store {
            let discovery = self.discovery
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                // close() waits for the last fsync: keep it off the cooperative pool and the loop.
                Thread.detachNewThread {
                    store.value.close()
                    discovery?.close()
                    continuation.resume()
                }
            }
        }
        logger.info("DHCP server stopped")
    }

    /// Serves the bound sockets until the task is cancelled, the group shuts down gracefully, or `stop()`.
    public func run() async throws {
        guard engine != nil else { throw BootServiceNotBound(service: name) }
        let channels = self.channels
        for channel in channels { try await channel.setOption(.autoRead, value: true).get() }
        await cancelWhenGracefulShutdown {
            await withTaskCancellationHandler {
                for channel in channels { try? await channel.closeFuture.get() }
            } onCancel: {
                for channel in channels { channel.close(promise: nil) }
            }
        }
        await stop()  // the lease journal's last fsync
    }

    /// Totals since start.
    public func statistics() async throws -> DHCPServerStatistics {
        guard let engine else { return DHCPServerStatistics() }
        return try await loop.submit { engine.value.snapshot() }.get()
    }

    /// Live leases (for the status page and tests).
    public func leases() async throws -> [DHCPLease] {
        guard let engine else { return [] }
        return try await loop.submit {
            engine.value.leases.leases(at: DHCPTimestamp(secondsSinceEpoch: Int64(time(nil))))
        }.get()
    }
}

/// Lets a value cross to another thread when the code guarantees only one side uses it at a time.
struct UnsafeTransfer<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// Per-socket handler: knows its port and interface and hands packets to the shared engine.
final class DHCPChannelHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private let engine: DHCPEngine
    let port: DHCPServerPort
    let interface: DHCPInterface?

    init(engine: DHCPEngine, port: DHCPServerPort, interface: DHCPInterface?) {
        self.engine = engine
        self.port = port
        self.interface = interface
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        engine.handle(unwrapInboundIn(data), from: self, channel: context.channel)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ICMP errors on UDP (a client gone) surface here; they concern one send, not the socket.
        engine.logger.debug("DHCP socket error", metadata: ["error": "\(error)"])
    }
}

/// All decision state; confined to the server's event loop.
final class DHCPEngine {
    private(set) var configuration: DHCPServerConfiguration
    let leases: LeaseStore
    let logger: Logger
    private let observer: (@Sendable (DHCPEvent) -> Void)?
    private let loop: any EventLoop
    private let metrics = DHCPServerMetrics()
    private var statistics = DHCPServerStatistics()
    private var view: DHCPServerInventory
    private var inventory: Inventory
    private var policy: DHCPPolicy
    private var generation = 0
    private var baseGeneration = 0
    private var rateLimiter: DHCPRateLimiter
    private let arp: ARPInjector?
    /// Interfaces by index, for the wildcard socket's IP_PKTINFO; refreshed at most once a second on a miss.
    private var interfacesByIndex: [Int: DHCPInterface]
    private var interfacesRefreshed = NIODeadline.now()
    private let discovery: DiscoveryStore?
    /// MACs whose new binding is being written: their packets wait for the held first one's answer.
    /// Cleared on the loop once the binding is in the installed inventory (the install is queued
    /// on the loop before the held packet's replay).
    private var binding = Set<MACAddress>()

    init(configuration: DHCPServerConfiguration, leases: LeaseStore, logger: Logger,
         observer: (@Sendable (DHCPEvent) -> Void)?, loop: any EventLoop, knownInterfaces: [DHCPInterface],
         snapshot: InventoryStore.Snapshot, discovery: DiscoveryStore? = nil) {
        self.configuration = configuration
        self.discovery = discovery
        self.leases = leases
        self.logger = logger
        self.observer = observer
        self.loop = loop
        self.rateLimiter = DHCPRateLimiter(burst: configuration.rateLimitBurst, perSecond: configuration.rateLimitPerSecond)
        self.arp = configuration.unicastDelivery == .arpInjection ? ARPInjector() : nil
        self.interfacesByIndex = Dictionary(knownInterfaces.map { ($0.index, $0) }, uniquingKeysWith: { a, _ in a })
        view = DHCPServerInventory(snapshot.inventory)
        inventory = snapshot.inventory
        policy = DHCPPolicy(inventory: snapshot.inventory, configuration: configuration)
        generation = snapshot.generation
        baseGeneration = snapshot.baseGeneration
        statistics.inventoryGeneration = generation
    }

    /// Takes the reloadable settings of `new` (see `DHCPServer.reconfigure`).
    func reconfigure(_ new: DHCPServerConfiguration) {
        var c = configuration
        c.ignoreUnknownClients = new.ignoreUnknownClients
        c.rapidCommit = new.rapidCommit
        c.offerHoldTime = new.offerHoldTime
        c.declineHoldTime = new.declineHoldTime
        c.pxelinuxRebootTime = new.pxelinuxRebootTime
        if c.rateLimitBurst != new.rateLimitBurst || c.rateLimitPerSecond != new.rateLimitPerSecond {
            c.rateLimitBurst = new.rateLimitBurst
            c.rateLimitPerSecond = new.rateLimitPerSecond
            rateLimiter = DHCPRateLimiter(burst: c.rateLimitBurst, perSecond: c.rateLimitPerSecond)
        }
        configuration = c
        policy = DHCPPolicy(inventory: inventory, configuration: c)
    }

    /// Swaps in a new inventory generation (older ones arriving late are ignored).
    func install(_ snapshot: InventoryStore.Snapshot) {
        guard snapshot.generation > generation else { return }
        generation = snapshot.generation
        baseGeneration = snapshot.baseGeneration
        view = DHCPServerInventory(snapshot.inventory)
        inventory = snapshot.inventory
        policy = DHCPPolicy(inventory: snapshot.inventory, configuration: configuration)
        statistics.inventoryGeneration = generation
        logger.debug("DHCP inventory installed", metadata: ["generation": "\(generation)", "hosts": "\(view.hosts.count)"])
    }

    func snapshot() -> DHCPServerStatistics {
        var s = statistics
        s.journal = leases.statistics
        return s
    }

    /// - Parameter held: the packet was held for discovery's disk write and comes back now: it was
    ///   counted, rate-limited and recorded the first time.
    func handle(_ envelope: AddressedEnvelope<ByteBuffer>, from handler: DHCPChannelHandler, channel: any Channel, held: Bool = false) {
        if !held { statistics.received += 1 }
        let interface = handler.interface ?? envelope.metadata?.packetInfo.flatMap { interfaceFor(index: $0.interfaceIndex) }
        let message: DHCPMessage
        do {
            message = try DHCPMessage(decoding: envelope.data)
        } catch {
            statistics.malformed += 1
            metrics.received(nil)
            metrics.ignored("malformed")
            logger.debug("DHCP packet dropped", metadata: ["from": "\(envelope.remoteAddress)", "reason": "\(error)"])
            report(DHCPEvent(mac: nil, messageType: nil, address: nil, outcome: .malformed(error), interface: interface?.name))
            return
        }
        let type = message.messageType
        if !held { metrics.received(type) }
        let mac = message.clientMAC
        let nowDeadline = NIODeadline.now()
        if !held, let mac, !rateLimiter.allow(mac, at: nowDeadline) {
            statistics.rateLimited += 1
            metrics.ignored("rate_limited")
            logger.debug("DHCP packet dropped: rate limit", metadata: ["mac": "\(mac)"])
            report(DHCPEvent(mac: mac, messageType: type, address: nil, outcome: .rateLimited, interface: interface?.name))
            return
        }
        guard case .v4(let source) = envelope.remoteAddress else { return }
        let received = DHCPReceived(
            message: message, port: handler.port,
            sourceAddress: IPv4Address(rawValue: UInt32(bigEndian: source.address.sin_addr.s_addr)),
            sourcePort: UInt16(bigEndian: source.address.sin_port),
            interfaceAddress: interface?.address(in: view.subnets))
        let now = DHCPTimestamp(secondsSinceEpoch: Int64(time(nil)))
        if !held, let discovery, let mac, view.host(for: mac) == nil,
           discover(mac, message, interface: interface, at: now, discovery: discovery, envelope: envelope, handler: handler, channel: channel) {
            return
        }
        let decision = policy.decide(received, now: now, inventory: view, leases: leases)

        switch decision {
        case .ignore(let reason):
            statistics.ignored += 1
            metrics.ignored(reason.metricLabel)
            logger.debug("DHCP \(type.map(\.description) ?? "packet") ignored", metadata: [
                "mac": "\(mac.map(\.description) ?? "?")", "reason": "\(reason)", "interface": "\(interface?.name ?? "?")",
            ])
            report(DHCPEvent(mac: mac, messageType: type, address: nil, outcome: .ignored(reason), interface: interface?.name))

        case .record(let action):
            do {
                try leases.apply(action, at: now)
                count(action)
                logger.info("DHCP \(type.map(\.description) ?? "")", metadata: ["mac": "\(mac.map(\.description) ?? "?")", "action": "\(action)"])
                report(DHCPEvent(mac: mac, messageType: type, address: address(of: action), outcome: .recorded(action), interface: interface?.name))
            } catch {
                fail(mac: mac, type: type, interface: interface, "\(error)")
            }

        case .reply(let reply):
            guard let action = reply.leaseAction else {
                send(reply, mac: mac, requestType: type, interface: interface, channel: channel)
                return
            }
            let event = (mac, type, interface)
            do {
                if case .commit = action {
                    // The ACK leaves only once the journal holds the lease (group-committed fsync).
                    let loopBound = NIOLoopBound(self, eventLoop: loop)
                    let loop = self.loop
                    try leases.apply(action, at: now) { result in
                        loop.execute {
                            let engine = loopBound.value
                            switch result {
                            case .success:
                                engine.send(reply, mac: event.0, requestType: event.1, interface: event.2, channel: channel)
                            case .failure(let error):
                                engine.metrics.journalFailures.increment()
                                engine.fail(mac: event.0, type: event.1, interface: event.2, "lease not durable, reply withheld: \(error)")
                            }
                        }
                    }
                    count(action)
                    metrics.boundLeases.record(leases.boundCount)
                } else {
                    try leases.apply(action, at: now)
                    count(action)
                    send(reply, mac: mac, requestType: type, interface: interface, channel: channel)
                }
            } catch {
                fail(mac: mac, type: type, interface: interface, "\(error)")
            }
        }
    }

    /// A request from a machine nodes.yaml does not list (nor a binding): recorded; bound to the next
    /// slot when nodes.yaml has `discover:` and it asks for an address. True when the packet is held
    /// until that is on disk (its first sighting, or a new binding): it comes back through `handle`
    /// then, and a new binding is in the live inventory by that time (so it is answered as the node).
    private func discover(_ mac: MACAddress, _ message: DHCPMessage, interface: DHCPInterface?, at now: DHCPTimestamp,
                          discovery: DiscoveryStore, envelope: AddressedEnvelope<ByteBuffer>, handler: DHCPChannelHandler,
                          channel: any Channel) -> Bool {
        var hold = discovery.observe(mac, message, interface: interface?.name, at: now.secondsSinceEpoch)
        let type = message.messageType
        if type == .discover || type == .request {
            switch discovery.bind(mac, in: inventory, baseGeneration: baseGeneration, at: now.secondsSinceEpoch) {
            case .bound(let binding):
                logger.notice("DHCP \(type!) from unknown \(mac): binding it as \(binding.hostname) \(binding.ip.map { "\($0)" } ?? "")")
                self.binding.insert(mac)
                hold = true
            case .alreadyBound(let binding):
                if self.binding.contains(mac) {
                    // The first packet is held until the binding is on disk; its answer covers this one.
                    statistics.ignored += 1
                    metrics.ignored("binding")
                    return true
                }
                logger.debug("DHCP \(mac) was bound as \(binding.hostname), but the inventory in force leaves that binding out (see the merge warning)")
            case .noFreeSlot(let summary):
                logger.log(level: hold ? .warning : .debug, "DHCP \(mac) not bound: no free slot left in \(summary); answered as an unknown machine")
            case .notConfigured:
                break
            }
        }
        guard hold else { return false }
        let transfer = UnsafeTransfer((self, handler))
        let loop = self.loop
        discovery.whenDurable { result in
            loop.execute {
                let (engine, handler) = transfer.value
                engine.binding.remove(mac)
                if case .failure(let error) = result {
                    engine.logger.error("DHCP \(mac): discovery record not durable, answering anyway", metadata: ["error": "\(error)"])
                }
                engine.handle(envelope, from: handler, channel: channel, held: true)
                // Outside a read burst nothing else flushes what the replay wrote.
                channel.flush()
            }
        }
        return true
    }

    private func count(_ action: DHCPLeaseAction) {
        switch action {
        case .offer: metrics.leasesOffered.increment()
        case .commit:
            metrics.leasesCommitted.increment()
            statistics.leasesCommitted += 1
        case .release: metrics.leasesReleased.increment()
        case .decline: metrics.leasesDeclined.increment()
        }
    }

    private func address(of action: DHCPLeaseAction) -> IPv4Address {
        switch action {
        case .offer(let lease), .commit(let lease): lease.address
        case .release(_, let address), .decline(_, let address, _): address
        }
    }

    private func fail(mac: MACAddress?, type: DHCPMessageType?, interface: DHCPInterface?, _ reason: String) {
        statistics.failed += 1
        logger.error("DHCP reply not sent", metadata: ["mac": "\(mac.map(\.description) ?? "?")", "reason": "\(reason)"])
        report(DHCPEvent(mac: mac, messageType: type, address: nil, outcome: .failed(reason), interface: interface?.name))
    }

    private func send(_ reply: DHCPReply, mac: MACAddress?, requestType: DHCPMessageType?, interface: DHCPInterface?, channel: any Channel) {
        var buffer = channel.allocator.buffer(capacity: 600)
        do {
            try reply.encode(into: &buffer)
        } catch {
            fail(mac: mac, type: requestType, interface: interface, "cannot encode the reply: \(error)")
            return
        }
        var destination = reply.destination
        if destination.kind == .clientHardwareAddress {
            // The client has no address yet: unicast needs an ARP entry we add ourselves, else broadcast.
            var injected = false
            if let arp, let mac, let name = interface?.name {
                let code = arp.set(destination.address, mac, interface: name)
                if code == 0 {
                    injected = true
                    statistics.arpEntriesInjected += 1
                } else {
                    logger.debug("ARP injection failed, broadcasting", metadata: ["errno": "\(code)", "interface": "\(name)"])
                }
            }
            if !injected { destination = DHCPDestination(kind: .broadcast, address: .broadcast, port: 68, broadcastFlag: false) }
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(destination.port.bigEndian)
        address.sin_addr.s_addr = destination.address.rawValue.bigEndian
        let socketAddress = SocketAddress(address, host: "")
        channel.write(AddressedEnvelope(remoteAddress: socketAddress, data: buffer), promise: nil)
        // Replies sent from a journal completion come outside a read burst: flush those now.
        if case .commit? = reply.leaseAction { channel.flush() }
        let replyType = reply.message.messageType ?? .ack
        statistics.sent += 1
        metrics.sent(replyType)
        logger.info("DHCP \(replyType)", metadata: [
            "mac": "\(mac.map(\.description) ?? "?")", "address": "\(reply.message.yiaddr)", "to": "\(destination)",
            "request": "\(requestType.map(\.description) ?? "?")",
        ])
        let address4: IPv4Address? = reply.message.yiaddr.isAny ? nil : reply.message.yiaddr
        report(DHCPEvent(mac: mac, messageType: requestType, address: address4, outcome: .replied(replyType, destination), interface: interface?.name))
    }

    private func report(_ event: DHCPEvent) {
        observer?(event)
    }

    private func interfaceFor(index: Int) -> DHCPInterface? {
        if let known = interfacesByIndex[index] { return known }
        let now = NIODeadline.now()
        guard now - interfacesRefreshed > .seconds(1) else { return nil }
        interfacesRefreshed = now
        if let all = try? DHCPInterface.all() {
            interfacesByIndex = Dictionary(all.map { ($0.index, $0) }, uniquingKeysWith: { a, _ in a })
        }
        return interfacesByIndex[index]
    }
}

/// Token bucket per MAC. The table is pruned of idle entries when it grows, so a flood of random
/// MACs costs bounded memory.
struct DHCPRateLimiter {
    private struct Bucket { var tokens: Double; var last: NIODeadline }
    private var buckets: [MACAddress: Bucket] = [:]
    let burst: Double
    let perSecond: Double
    var maximumEntries = 65_536

    init(burst: Double, perSecond: Double) {
        self.burst = burst
        self.perSecond = perSecond
    }

    mutating func allow(_ mac: MACAddress, at now: NIODeadline) -> Bool {
        guard burst > 0 else { return true }
        if buckets.count >= maximumEntries { prune(now) }
        var bucket = buckets[mac] ?? Bucket(tokens: burst, last: now)
        let elapsed = Double((now - bucket.last).nanoseconds) / 1e9
        bucket.tokens = min(burst, bucket.tokens + elapsed * perSecond)
        bucket.last = now
        let allowed = bucket.tokens >= 1
        if allowed { bucket.tokens -= 1 }
        buckets[mac] = bucket
        return allowed
    }

    /// Drops buckets that have refilled completely (idle long enough to be indistinguishable from new).
    private mutating func prune(_ now: NIODeadline) {
        let full = TimeAmount.nanoseconds(Int64(burst / max(perSecond, 0.001) * 1e9))
        buckets = buckets.filter { now - $0.value.last < full }
        if buckets.count >= maximumEntries { buckets.removeAll(keepingCapacity: true) }
    }
}
