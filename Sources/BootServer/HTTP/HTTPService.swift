import BootProtocols
import Foundation
import Hummingbird
import HummingbirdCore
import ImageBuildKit
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import Prometheus
import ServiceLifecycle
import Synchronization

/// Settings of the HTTP service.
public struct HTTPServiceConfiguration: Sendable {
    /// The boot root served (the same one TFTP serves). Nothing outside it is readable.
    public var root: String
    public var host: String
    public var port: Int
    /// Connections served at once; past it new ones wait in the listen backlog.
    public var maximumConnections = 4096
    public var backlog = 1024
    public var timeouts = HTTPTimeouts()
    public var unknownMACPolicy = UnknownMACPolicy.defaultImage
    /// `POST /api/v1/events` bodies larger than this get 413 (a report is ~200 bytes).
    public var maximumEventBodySize = 4096
    /// Files up to this size are served from memory (boot loaders, configs, scripts).
    public var smallFileLimit = 256 * 1024
    public var smallFileCacheLimit = 64 << 20
    /// Largest read when streaming large files; it shrinks as concurrent downloads multiply so their
    /// buffers stay within 64 MiB in all.
    public var chunkSize = 512 * 1024
    /// Where `/metrics` comes from. Pass the registry `MetricsSystem` was bootstrapped with
    /// (`PrometheusMetricsFactory(registry:)`) so TFTP and DHCP counters show up on the same page.
    public var metrics: PrometheusCollectorRegistry
    /// Overrides the inventory's `http://server:port` in retry URLs (tests on loopback).
    public var publicBaseURL: String?
    public var serverName: String? = "imagebuild"
    /// How long after a node's DHCP acknowledgement (or first boot file) it may fetch its secrets.
    public var secretWindow: TimeInterval = 300
    /// How many times one boot may fetch its secrets.
    public var secretsPerBoot = 1

    public init(root: String, host: String = "0.0.0.0", port: Int = 80,
                metrics: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.root = root
        self.host = host
        self.port = port
        self.metrics = metrics
    }
}

public enum HTTPServiceError: Error, CustomStringConvertible {
    case rootNotFound(String)
    case alreadyBound

    public var description: String {
        switch self {
        case .rootNotFound(let path): "HTTP root '\(path)' does not exist or cannot be resolved"
        case .alreadyBound: "the HTTP service is already bound"
        }
    }
}

/// The per-request context: Hummingbird's core storage plus the client's address (for the timeline).
public struct BootRequestContext: RequestContext, RemoteAddressRequestContext, EventLoopRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?
    public let eventLoop: any EventLoop

    public init(source: ApplicationRequestContextSource) {
        coreContext = CoreRequestContextStorage(source: source)
        remoteAddress = source.channel.remoteAddress
        eventLoop = source.channel.eventLoop
    }
}

/// HTTP for the boot server, on Hummingbird: static files from the boot root (Range, ETag, conditional
/// requests, HEAD), per-node iPXE scripts built from the live inventory, node stage reports, the boot
/// timeline as JSON, Prometheus metrics and a status page. A `BootService`: `bind()` opens the listening
/// socket on NIO's own bootstrap (Hummingbird's `Application` binds only when it runs), `run()` accepts
/// connections into `BootHTTPChannel`, as Hummingbird's `Server` does.
public final class HTTPService: BootService, Sendable {
    public let name = "HTTP"
    public let configuration: HTTPServiceConfiguration
    public let timeline: BootTimeline
    let inventory: @Sendable () -> Inventory?
    /// Changes whenever the inventory in force does (`InventoryStore`'s generation).
    let inventoryGeneration: @Sendable () -> Int
    private let hostKeyFiles: SecretDelivery.HostKeyFiles?
    private let leases: BoundLeaseIndex?
    private let reportTokens: ReportTokens?
    private let inventoryRejection: @Sendable () -> String?
    private let discovered: @Sendable () -> DiscoveryListing?
    let logger: Logger
    private let eventLoopGroup: any EventLoopGroup
    let threadPool: NIOThreadPool
    let metrics: HTTPMetrics
    /// The BitTorrent tracker of the published images (`distribution: p2p`).
    let tracker = SwarmTracker()
    /// The generation the root serves (`publish.json`), read again when it changes.
    let publishIndex: PublishIndexCache
    private let state = Mutex<ListenerState>(.idle)

    private enum ListenerState {
        case idle
        case binding
        case bound(Listener)
        case running(Listener)
        case stopped
    }

    /// The bound socket, the connection set-up its accepted connections get, and the helper that
    /// closes the socket and lets open connections finish their requests on shutdown.
    private struct Listener: Sendable {
        let channel: NIOAsyncChannel<BootHTTPChannel.Value, Never>
        let connections: BootHTTPChannel
        let quiesce: ServerQuiescingHelper
    }

    /// - Parameters:
    ///   - inventory: the inventory in force, asked on every request that needs it, so a reload is live
    ///     at once; nil when none is loaded.
    ///   - leases: the DHCP server's bound leases: a node may report its stages from the address it
    ///     holds a lease on (besides its fixed address in the inventory).
    ///   - reportTokens: per-boot tokens for stage reports (put on the kernel command line by the
    ///     bootscript endpoint); nil: off.
    ///   - inventoryRejection: the located error of the last rejected change to nodes.yaml, if any.
    ///   - inventoryGeneration: a number that changes with the inventory in force.
    ///   - hostKeyFiles: a node's persistent SSH host keys as files, for its secrets; nil: none kept.
    ///   - discovered: machines DHCP saw that nodes.yaml does not list, and the bindings (`GET
    ///     /api/v1/discovered`); nil: 404, no discovery (DHCP is off).
    public init(configuration: HTTPServiceConfiguration, timeline: BootTimeline,
                inventory: @escaping @Sendable () -> Inventory?, inventoryGeneration: @escaping @Sendable () -> Int = { 0 },
                leases: BoundLeaseIndex? = nil, hostKeyFiles: SecretDelivery.HostKeyFiles? = nil,
                reportTokens: ReportTokens? = nil, inventoryRejection: @escaping @Sendable () -> String? = { nil },
                discovered: @escaping @Sendable () -> DiscoveryListing? = { nil },
                logger: Logger = Logger(label: "imagebuild.http"),
                eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                threadPool: NIOThreadPool = .singleton) {
        self.configuration = configuration
        self.timeline = timeline
        self.inventory = inventory
        self.inventoryGeneration = inventoryGeneration
        self.hostKeyFiles = hostKeyFiles
        self.leases = leases
        self.reportTokens = reportTokens
        self.inventoryRejection = inventoryRejection
        self.discovered = discovered
        self.logger = logger
        self.eventLoopGroup = eventLoopGroup
        self.threadPool = threadPool
        publishIndex = PublishIndexCache(root: configuration.root)
        metrics = HTTPMetrics(registry: configuration.metrics)
        let bootDuration = metrics.bootDuration
        timeline.onBootCompleted { seconds in bootDuration.record(.milliseconds(Int64(seconds * 1000))) }
    }

    /// Builds the router and the fast routes and binds the listening socket (Hummingbird's settings:
    /// SO_REUSEADDR, the backlog, half-closure, at most `maximumConnections` at once). Connections the
    /// kernel accepts wait until `run()`.
    @discardableResult
    public func bind() async throws -> [SocketAddress] {
        try state.withLock { state in
            guard case .idle = state else { throw HTTPServiceError.alreadyBound }
            state = .binding
        }
        do {
            let (listener, root) = try await makeListener()
            state.withLock { $0 = .bound(listener) }
            let address = listener.channel.channel.localAddress!
            logger.info("HTTP service listening", metadata: ["address": "\(address)", "root": "\(root)"])
            return [address]
        } catch {
            state.withLock { $0 = .idle }
            throw error
        }
    }

    private func makeListener() async throws -> (Listener, root: String) {
        guard let pointer = realpath(configuration.root, nil) else { throw HTTPServiceError.rootNotFound(configuration.root) }
        let root = String(cString: pointer)
        free(pointer)
        let provider = makeFileProvider(root: root)
        let delivery = SecretDelivery(
            admission: SecretAdmission(addressesOf: reportAdmission().addressesOf, window: configuration.secretWindow,
                                       perBoot: configuration.secretsPerBoot),
            hostKeyFiles: hostKeyFiles, metrics: metrics)
        let router = makeRouter(provider: provider, secrets: delivery)
        let metrics = self.metrics
        let logger = self.logger
        let connections = BootHTTPChannel(
            responder: BootHTTPChannel.routed(by: router.buildResponder(), serverName: configuration.serverName, logger: logger),
            fastRoutes: makeFastRoutes(provider: provider, secrets: delivery), serverName: configuration.serverName, timeouts: configuration.timeouts
        ) { reason, remote in
            metrics.timedOut(reason)
            // A node whose download stalls shows up here, not as an error of its own.
            logger.notice("HTTP connection closed by time-out", metadata: [
                "reason": "\(reason.rawValue)", "client": "\(remote?.ipAddress ?? "?")"])
        }
        let quiesce = ServerQuiescingHelper(group: eventLoopGroup)
        let limit = configuration.maximumConnections
        let channel = try await ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.backlog, value: Int32(configuration.backlog))
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let available = MaximumAvailableConnections(limit, logger: logger)
                    try channel.pipeline.syncOperations.addHandler(AvailableConnectionsChannelHandler(delegate: available))
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .bind(host: configuration.host, port: configuration.port, serverBackPressureStrategy: nil) { channel in
                connections.setup(channel: channel, logger: logger)
            }
        return (Listener(channel: channel, connections: connections, quiesce: quiesce), root)
    }

    /// Accepts connections on the bound socket until the task is cancelled, the group shuts down
    /// gracefully or `stop()`; on shutdown the socket closes and open connections finish their
    /// requests first (`HTTPConnectionStateHandler`).
    public func run() async throws {
        let listener = try state.withLock { state -> Listener in
            guard case .bound(let listener) = state else { throw BootServiceNotBound(service: name) }
            state = .running(listener)
            return listener
        }
        let logger = self.logger
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { connections in
                do {
                    try await listener.channel.executeThenClose { inbound in
                        for try await connection in inbound {
                            connections.addTask { await listener.connections.handle(value: connection, logger: logger) }
                        }
                    }
                } catch {
                    logger.error("HTTP listener: \(error)")
                }
            }
        } onGracefulShutdown: {
            listener.quiesce.initiateShutdown(promise: nil)
        }
        state.withLock { $0 = .stopped }
        logger.info("HTTP service stopped")
    }

    /// Closes a socket bound but not running; ends a running service as a graceful shutdown does.
    public func stop() async {
        let next = state.withLock { state -> ListenerState in
            let current = state
            if case .bound = current { state = .stopped }
            return current
        }
        switch next {
        case .bound(let listener): try? await listener.channel.executeThenClose { _ in }
        case .running(let listener): listener.quiesce.initiateShutdown(promise: nil)
        case .idle, .binding, .stopped: break
        }
    }

    // MARK: Routes

    /// The boot root's files, shared by the router's `FileMiddleware` and `FastPath`.
    func makeFileProvider(root: String) -> RootFileProvider {
        let timeline = self.timeline
        let attribute = self.attributor()
        let metrics = self.metrics
        let logger = self.logger
        return RootFileProvider(
            root: root, threadPool: threadPool,
            cache: SmallFileCache(fileLimit: Int64(configuration.smallFileLimit), totalLimit: configuration.smallFileCacheLimit),
            chunkSize: configuration.chunkSize,
            observe: Self.isObserved,
            delivered: { delivery in
                metrics.sent(.files, bytes: delivery.bytes)
                let image = delivery.relative.hasPrefix("images/")
                guard image || Self.isObserved(delivery.relative) else { return }
                let complete = delivery.error == nil && delivery.bytes == delivery.expected
                if image {
                    (complete ? metrics.downloadsCompleted : metrics.downloadsIncomplete).increment()
                    metrics.imageBytes.increment(by: Int64(delivery.bytes))
                }
                let ip = delivery.remote?.ipv4Address
                let mac = ip.flatMap(attribute)
                let outcome: TransferOutcome = complete ? .completed
                    : .incomplete(delivery.error.map { "\($0)" } ?? "\(delivery.bytes) of \(delivery.expected) bytes")
                // One line per loader, kernel, initramfs or image download, like the TFTP transfer log: the
                // admin's record of who fetched what, and where a boot stopped.
                logger.info("HTTP \(outcome.label)", metadata: [
                    "file": "\(delivery.relative)", "bytes": "\(delivery.bytes)", "size": "\(delivery.expected)",
                    "client": "\(ip.map { "\($0)" } ?? "?")", "mac": "\(mac.map { "\($0)" } ?? "unknown")",
                    "outcome": "\(outcome)"])
                guard let mac else { return }
                timeline.record(.transfer(.http, path: delivery.relative, bytes: delivery.bytes, size: delivery.expected, outcome: outcome),
                                mac: mac, source: ip)
            })
    }

    /// The files whose every download is logged and recorded in the node's timeline, as TFTP records
    /// every transfer: image files; boot loaders (UEFI HTTP Boot fetches its loader, `ipxe/ipxe.efi` or
    /// arm64's GRUB, here and not over TFTP: the node's `bootloader` stage); and GRUB's configuration,
    /// which a GRUB loaded by HTTP Boot reads over HTTP (its `config` stage). They are sent from the file,
    /// not the small-file cache, so each delivery is seen.
    @Sendable static func isObserved(_ relative: String) -> Bool {
        if relative.hasPrefix("images/") { return true }
        switch BootStage.forFile(relative) {
        case .bootloader: return true
        case .config: return relative.hasPrefix(BootPlan.grubFolder + "/")
        default: return false
        }
    }

    /// What `FastPath` answers before the router: files (`RootFileProvider.fastFile`), stage reports,
    /// recorded by the router's own `EventIntake` (a report it refuses goes to the router, which answers
    /// the error), and a node's secrets when nothing needs to block (`fastSecretsRoute`).
    func makeFastRoutes(provider: RootFileProvider, secrets: SecretDelivery) -> FastRoutes {
        let metrics = self.metrics
        let intake = eventIntake
        let report = FastRoutes.Post(path: Self.eventsPath, maximumBodySize: configuration.maximumEventBodySize) { body, remote in
            guard let accepted = try? intake.accept(body, from: remote?.ipv4Address) else { return nil }
            let reply = EventIntake.responseBody(accepted)
            metrics.request(.events, status: 202, bodyBytes: reply.readableBytes)
            metrics.fastPathResponses.increment()
            return FastRoutes.Reply(status: .accepted, fields: Self.eventAnswerFields, body: reply)
        }
        return FastRoutes(files: provider, posts: [report], gets: [fastSecretsRoute(delivery: secrets)],
                          fileAnswered: metrics.fastFileAnswered())
    }

    func makeRouter(provider: RootFileProvider, secrets delivery: SecretDelivery) -> Router<BootRequestContext> {
        let router = Router(context: BootRequestContext.self)
        let timeline = self.timeline
        let metrics = self.metrics
        router.add(middleware: MetricsMiddleware(metrics: metrics))
        router.add(middleware: StaticFileGuard(provider: provider))
        router.add(middleware: FileMiddleware(fileProvider: provider).withAdditionalMediaTypes(forFileExtensions: ResponseHead.mediaTypes))

        router.get("/") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
                     body: ResponseBody(byteBuffer: ByteBuffer(string: StatusPage.html)))
        }
        let publishIndex = self.publishIndex
        router.get("/metrics") { [self] _, _ in
            self.metrics.updateStages(self.nodeList(), unattributed: timeline.unattributedCount)
            self.metrics.update(self.inventoryStatus(publishIndex))
            self.refreshTorrents(publishIndex)
            self.metrics.update(self.tracker.view(now: timeline.currentTime))
            var bytes: [UInt8] = []
            self.metrics.registry.emit(into: &bytes)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
        }
        router.get("/api/v1/inventory") { [self] _, _ in
            try Self.json(self.inventoryStatus(publishIndex))
        }
        router.get("/api/v1/discovered") { [self] _, _ in
            guard let listing = self.discovered() else {
                return Response(status: .notFound, headers: [.contentType: "text/plain; charset=utf-8"],
                                body: ResponseBody(byteBuffer: ByteBuffer(string: "no discovery: this server does not serve DHCP\n")))
            }
            return try Self.json(listing)
        }
        router.get(RouterPath(BootPlan.bootScriptPath)) { [self] request, context in
            try self.bootScript(request, context: context, publishIndex: publishIndex)
        }
        router.get(RouterPath(BootPlan.secretsPrefix + ":mac")) { [self] request, context in
            try await self.secrets(request, context: context, delivery: delivery)
        }
        let cloudInit = CloudInitDelivery(address: NodeAddressRule(addressesOf: reportAdmission().addressesOf))
        router.get(RouterPath(CloudInit.prefix + ":mac/:document")) { [self] request, context in
            try self.cloudInit(request, context: context, delivery: cloudInit)
        }
        let admission = reportAdmission()
        router.get(RouterPath(Torrent.announcePath)) { [self] request, context in
            self.announce(request, context: context, admission: admission, publishIndex: publishIndex)
        }
        router.get("/api/v1/swarm") { [self] _, _ in
            self.refreshTorrents(publishIndex)
            return try Self.json(self.tracker.view(now: timeline.currentTime))
        }
        let intake = eventIntake
        router.post(RouterPath(Self.eventsPath)) { [self] request, context in
            try await self.postEvent(request, context: context, intake: intake)
        }
        // `?since=CURSOR` (the status page): the summary and only the nodes changed since that poll.
        let changes = NodeChangeTracker()
        router.get("/api/v1/nodes") { [self] request, _ in
            let now = timeline.currentTime
            if let since = request.uri.queryParameters.get("since") {
                return try Self.json(changes.changes(since: since, inventory: self.inventory(), states: timeline.nodes(), now: now))
            }
            return try Self.json(NodesResponse(now: now.timeIntervalSince1970, nodes: self.nodeList(now: now)))
        }
        router.get("/api/v1/nodes/:mac") { [self] _, context in
            let text = (context.parameters.get("mac") ?? "").removingPercentEncoding ?? ""
            guard let mac = MACAddress(text) else {
                throw HTTPError(.badRequest, message: "'\(text)' is not a MAC address")
            }
            let now = timeline.currentTime
            let node = self.inventory()?.node(mac: mac)
            let state = timeline.node(mac)
            guard node != nil || state != nil else { throw HTTPError(.notFound, message: "no node \(mac): not in nodes.yaml and never seen") }
            let response = NodeTimelineResponse(now: now.timeIntervalSince1970,
                                                node: NodeStatus.make(mac: mac, state: state, node: node, now: now),
                                                events: timeline.events(for: mac))
            return try Self.json(response)
        }
        return router
    }

    /// The MAC behind a client address: what DHCP acknowledged, else a fixed address from nodes.yaml.
    private func attributor() -> @Sendable (IPv4Address) -> MACAddress? {
        let timeline = self.timeline
        let inventory = self.inventory
        return { ip in
            if let mac = timeline.mac(for: ip) { return mac }
            return inventory()?.node(ip: ip)?.mac
        }
    }

    /// Who may report for which MAC: the inventory's fixed addresses and the live leases, and tokens
    /// when they are on. Each lookup reads the inventory and leases in force, so a reload or a new
    /// lease counts at once; made once per service, nothing is allocated per report for it.
    func reportAdmission() -> ReportAdmission {
        let inventory = self.inventory
        let leases = self.leases
        let tokens = self.reportTokens
        let timeline = self.timeline
        let macAt: @Sendable (IPv4Address) -> MACAddress? = { ip in
            if let node = inventory()?.node(ip: ip) { return node.mac }
            return leases?.mac(at: ip)
        }
        let addressesOf: @Sendable (MACAddress) -> [IPv4Address] = { mac in
            var addresses: [IPv4Address] = []
            if let ip = inventory()?.node(mac: mac)?.ip { addresses.append(ip) }
            if let leased = leases?.address(of: mac), !addresses.contains(leased) { addresses.append(leased) }
            return addresses
        }
        var verifyToken: (@Sendable (String, MACAddress) -> Bool)?
        if let tokens { verifyToken = { token, mac in tokens.verify(token, for: mac, at: timeline.currentTime) } }
        return ReportAdmission(macAt: macAt, addressesOf: addressesOf, verifyToken: verifyToken)
    }

    func inventoryStatus(_ publishIndex: PublishIndexCache) -> InventoryStatus {
        InventoryStatus(inventory: inventory(), rejected: inventoryRejection(), index: publishIndex.current())
    }

    func nodeList(now: Date? = nil) -> [NodeStatus] {
        NodeStatus.list(inventory: inventory(), states: timeline.nodes(), now: now ?? timeline.currentTime)
    }

    static func json(_ value: some Encodable) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.userInfo[BootEvent.includeSummary] = true
        let data = try encoder.encode(value)
        return Response(status: .ok, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                        body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    // MARK: Boot script

    private func bootScript(_ request: Request, context: BootRequestContext, publishIndex: PublishIndexCache) throws -> Response {
        let query = request.uri.queryParameters
        guard let text = query.get("mac") else {
            throw HTTPError(.badRequest, message: "missing ?mac= (iPXE: chain http://server\(BootPlan.bootScriptPath)?mac=${mac})")
        }
        guard let mac = MACAddress(text) else {
            throw HTTPError(.badRequest, message: "'\(text)' is not a MAC address")
        }
        let retry = query.get("retry").flatMap { Int($0) }.map { min(max($0, 0), 10_000) } ?? 0
        let clientIP = context.remoteAddress?.ipv4Address
        if let clientIP, !clientIP.isAny { timeline.learn(ip: clientIP, mac: mac) }
        let decision = BootScriptDecision.decide(
            mac: mac, clientIP: clientIP, retry: retry, inventory: inventory(),
            index: publishIndex.current(), policy: configuration.unknownMACPolicy, httpBaseOverride: configuration.publicBaseURL,
            reportToken: reportTokens?.issue(for: mac, at: timeline.currentTime))
        timeline.record(.bootScript(image: decision.image, detail: retry > 0 ? "\(decision.detail), retry \(retry)" : decision.detail),
                        mac: mac, source: clientIP.flatMap { $0.isAny ? nil : $0 })
        return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8", .cacheControl: "no-store"],
                        body: ResponseBody(byteBuffer: ByteBuffer(string: decision.script)))
    }

    // MARK: Events

    /// Where nodes post stage reports (a route of the router and of the fast path).
    static let eventsPath = "/api/v1/events"
    static let eventAnswerFields: HTTPFields = [.contentType: "application/json", .cacheControl: "no-store"]

    /// What the router and the fast path share for `POST /api/v1/events`.
    var eventIntake: EventIntake {
        EventIntake(timeline: timeline, admission: reportAdmission(), maximumBodySize: configuration.maximumEventBodySize)
    }

    private func postEvent(_ request: Request, context: BootRequestContext, intake: EventIntake) async throws -> Response {
        let body = try await request.body.collect(upTo: configuration.maximumEventBodySize)
        let accepted = try intake.accept(body, from: context.remoteAddress?.ipv4Address)
        return Response(status: .accepted, headers: Self.eventAnswerFields, body: ResponseBody(byteBuffer: EventIntake.responseBody(accepted)))
    }
}
