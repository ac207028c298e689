import Foundation
import ImageBuildKit
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import Synchronization

/// `imagebuild serve` as one value: the settings (every default applied once, here), the servers they
/// switch on, how they are wired to the inventory and the boot timeline, and reload. The CLI only
/// parses flags, sets up process-wide logging and metrics, and prints; tests run the whole server in
/// process (`BootServicesTests`).
public final class BootServices: Sendable {
    /// The settings in force: flags over `server.yaml` over the defaults below.
    public struct Settings: Sendable, Equatable {
        public var root: String
        public var nodes: String
        /// nodes.yaml is read even when only TFTP is served (a file named explicitly must exist).
        public var nodesNamed: Bool
        public var listen: String
        public var interface: String?
        public var stateDirectory: String
        public var pollInterval: Double
        /// `text` or `json` (the CLI sets up logging with it before anything logs).
        public var logFormat: String
        public var logLevel: Logger.Level
        public var dhcp: Bool
        public var proxyDHCP: Bool
        public var dhcpPort: Int
        public var tftp: Bool
        public var tftpPort: Int
        public var http: Bool
        /// nil: the inventory's `network.http_port`, which is what nodes are told.
        public var httpPort: Int?
        public var httpMaximumConnections: Int?
        public var reportTokens: Bool
        /// Seed published torrents over BitTorrent (`SwarmSeeder`), on the first free port from `seedPort`.
        public var seed: Bool
        public var seedPort: Int
        /// The merged file the settings came from: the DHCP knobs, and what a reload compares against.
        public var source: ServerConfigFile

        /// Applies the defaults and checks that the combination can run.
        public init(_ merged: ServerConfigFile) throws(StartupError) {
            source = merged
            root = merged.root ?? "tftpboot"
            nodes = merged.nodes ?? "nodes.yaml"
            nodesNamed = merged.nodes != nil
            listen = merged.listen ?? "0.0.0.0"
            interface = merged.interface
            stateDirectory = merged.resolvedStateDirectory
            pollInterval = merged.inventoryPollInterval ?? 0.5
            logFormat = merged.logFormat ?? "text"
            logLevel = merged.logLevel ?? .info
            dhcp = merged.dhcp.enabled ?? true
            proxyDHCP = merged.dhcp.proxy ?? false
            dhcpPort = merged.dhcp.port ?? 67
            tftp = merged.tftp.enabled ?? true
            tftpPort = merged.tftp.port ?? 69
            http = merged.http.enabled ?? true
            httpPort = merged.http.port
            httpMaximumConnections = merged.http.maximumConnections
            reportTokens = merged.http.reportTokens ?? false
            seed = merged.swarm.seed ?? true
            seedPort = merged.swarm.seedPort ?? 6881
            if !dhcp && !tftp && !http { throw StartupError("DHCP, TFTP and HTTP are all switched off: nothing to serve") }
            if proxyDHCP && !dhcp { throw StartupError("proxyDHCP is on but DHCP is switched off") }
        }

        /// The command line's settings over `server.yaml`'s (when given), defaults applied.
        public static func load(flags: ServerConfigFile, configPath: String?) throws -> Settings {
            try Settings(ServerConfigFile.merged(flags: flags, configPath: configPath))
        }

        /// Node SSH host keys (`HostKeyStore`): where `imagebuild nodes known-hosts` finds them too.
        public var hostKeyDirectory: String { HostKeyStore.directory(inStateDirectory: stateDirectory) }

        /// DHCP's settings before the file's policy knobs: a knob removed from the file on reload falls back to these.
        var dhcpBaseline: DHCPServerConfiguration {
            var c = DHCPServerConfiguration(stateDirectory: stateDirectory + "/dhcp", mode: proxyDHCP ? .proxy : .authoritative,
                                            interfaces: interface.map { [$0] } ?? [], port: dhcpPort)
            if listen != "0.0.0.0" { c.listenAddress = listen }
            return c
        }
    }

    public let settings: Settings
    public let timeline: BootTimeline
    /// nil when neither DHCP nor HTTP needs nodes.yaml and none was named.
    public let inventory: InventoryStore?
    public let dhcp: DHCPServer?
    /// Machines nodes.yaml does not list, as DHCP saw them (nil without DHCP).
    public let discovery: DiscoveryStore?
    public let tftp: TFTPServer?
    public let http: HTTPService?
    /// The BitTorrent seeder of `distribution: p2p` images (with HTTP, unless `swarm.seed: false`).
    public let seeder: SwarmSeeder?
    /// The bound addresses of each running service (with port 0 in the settings, the kernel's choice).
    public let dhcpAddresses: [SocketAddress]
    public let tftpAddress: SocketAddress?
    public let httpAddress: SocketAddress?
    /// The services switched on (TFTP, DHCP, HTTP), bound, and their addresses.
    private let services: [(service: any BootService, addresses: [SocketAddress])]
    /// Each node's SSH host keys, made once and kept in the state directory.
    private let hostKeys: HostKeyStore
    private let reloader: ConfigReloader
    private let logger: Logger
    private let loggers: @Sendable (String) -> Logger
    /// SIGHUPs and `requestReload()` calls, consumed one at a time by the reload service.
    private let reloads: AsyncStream<Void>
    private let reloadRequests: AsyncStream<Void>.Continuation
    /// The running group, for `shutdown()`.
    private let group = Mutex<ServiceGroup?>(nil)

    /// Builds every service the settings switch on and binds them all (`bind(_:)`); none serves before
    /// `run()`. Throws `StartupError`s phrased for the administrator: a missing root, a port in use, ...
    ///
    /// - Parameters:
    ///   - settings: from `Settings.load(flags:configPath:)`.
    ///   - flags: the command line's settings, kept so a reload merges them over the new file again.
    ///   - configPath: `server.yaml`, re-read on reload; nil: reload re-reads nodes.yaml only.
    ///   - logLevel: the process's shared level, which a reload changes.
    ///   - metrics: the registry `/metrics` serves.
    ///   - loggers: each service's logger by label; tests pass quiet ones, since only the command line
    ///     bootstraps the process's logging.
    public init(settings: Settings, flags: ServerConfigFile, configPath: String?, logLevel: LogLevelControl,
                metrics: PrometheusCollectorRegistry,
                loggers: @escaping @Sendable (String) -> Logger = { Logger(label: $0) }) async throws {
        self.settings = settings
        let logger = loggers("imagebuild.serve")
        self.logger = logger
        self.loggers = loggers
        logLevel.level = settings.logLevel
        try Self.checkRoot(settings.root, nodes: settings.nodes)
        do {
            try FileManager.default.createDirectory(atPath: settings.stateDirectory, withIntermediateDirectories: true)
        } catch {
            throw StartupError("the state directory '\(settings.stateDirectory)': \(error.localizedDescription)")
        }

        // Only DHCP and HTTP read the inventory: TFTP alone serves files.
        let inventory: InventoryStore?
        do {
            inventory = settings.dhcp || settings.http || settings.nodesNamed
                ? try InventoryStore(path: settings.nodes, bindingsPath: NodeBindingJournal.path(inStateDirectory: settings.stateDirectory),
                                     pollInterval: .milliseconds(Int(settings.pollInterval * 1000)),
                                     logger: loggers("imagebuild.inventory"))
                : nil
        } catch {
            throw StartupError("\(error)")
        }
        self.inventory = inventory
        hostKeys = HostKeyStore(directory: settings.hostKeyDirectory)
        let timeline: BootTimeline
        do {
            timeline = try BootTimeline(configuration: .init(stateDirectory: settings.stateDirectory + "/timeline"),
                                        logger: loggers("imagebuild.timeline"))
        } catch {
            throw StartupError("boot timeline in \(settings.stateDirectory)/timeline: \(error)")
        }
        self.timeline = timeline

        // Each service with the port and flag its bind failure names; bound in this order.
        var listeners: [Listener] = []
        if settings.tftp {
            var configuration = TFTPServerConfiguration(root: settings.root, host: settings.listen, port: settings.tftpPort)
            configuration.maximumTransfers = 10_000
            let server = TFTPServer(configuration: configuration, logger: loggers("imagebuild.tftp")) { report in
                _ = timeline.record(report)
            }
            listeners.append(Listener(service: server, port: settings.tftpPort, flag: "--tftp-port"))
            tftp = server
        } else {
            tftp = nil
        }

        if settings.dhcp, let inventory {
            // Machines nodes.yaml does not list: recorded, and bound under `discover:`; a new binding is
            // read into the live inventory before the packet that caused it is answered.
            let discovery: DiscoveryStore
            do {
                discovery = try DiscoveryStore(directory: NodeBindingJournal.directory(inStateDirectory: settings.stateDirectory),
                                               logger: loggers("imagebuild.discovery")) { inventory.addBindings($0, journal: $1) }
            } catch {
                throw StartupError("discovery in \(settings.stateDirectory)/discovery: \(error)")
            }
            self.discovery = discovery
            let server = DHCPServer(configuration: settings.source.applyDHCP(to: settings.dhcpBaseline), inventory: inventory,
                                    logger: loggers("imagebuild.dhcp"), discovery: discovery) { event in
                timeline.record(event)
            }
            listeners.append(Listener(service: server, port: settings.dhcpPort, flag: "--dhcp-port"))
            dhcp = server
        } else {
            dhcp = nil
            discovery = nil
        }

        if settings.http, let inventory {
            let port = settings.httpPort ?? inventory.current.inventory.network.httpPort
            var configuration = HTTPServiceConfiguration(root: settings.root, host: settings.listen, port: port, metrics: metrics)
            if let limit = settings.httpMaximumConnections { configuration.maximumConnections = limit }
            if let window = settings.source.http.secretWindow { configuration.secretWindow = window }
            if let count = settings.source.http.secretsPerBoot { configuration.secretsPerBoot = count }
            let tokens = settings.reportTokens ? try ReportTokens(keyFile: settings.stateDirectory + "/report-token.key") : nil
            let keys = hostKeys
            // A node's host keys as files of its secrets, with certificates when nodes.yaml names a CA.
            let hostKeyFiles = SecretDelivery.HostKeyFiles(files: { identity in
                let set = try keys.keys(for: identity.node.hostname)
                var files = set.files
                if let ca = identity.hostCA {
                    let principals = KnownHosts.names(of: identity.node, domain: inventory.current.inventory.network.domain)
                    files += try keys.certify(set, principals: principals, ca: ca)
                }
                return files.map(NodeTemplates.Rendered.init)
            }, stored: { identity in
                // certify runs ssh-keygen each time (to read the CA's public key)
                identity.hostCA == nil && keys.hasKeys(for: identity.node.hostname)
            })
            let service = HTTPService(configuration: configuration, timeline: timeline,
                                      inventory: { inventory.current.inventory }, inventoryGeneration: { inventory.current.generation },
                                      leases: dhcp?.leaseIndex, hostKeyFiles: hostKeyFiles,
                                      reportTokens: tokens, inventoryRejection: { inventory.lastError },
                                      discovered: { [discovery] in
                                          discovery.map { DiscoveryListing(machines: $0.discovered(), bindings: inventory.currentBindings,
                                                                           inventory: inventory.baseInventory) }
                                      },
                                      logger: loggers("imagebuild.http"))
            listeners.append(Listener(service: service, port: port, flag: "--http-port"))
            http = service
            if settings.seed {
                let seeder = SwarmSeeder(configuration: .init(host: settings.listen, port: settings.seedPort), sources: service.seederSources(),
                                         logger: loggers("imagebuild.swarm"))
                listeners.append(Listener(service: seeder, port: settings.seedPort, flag: "swarm.seed_port (server.yaml)"))
                self.seeder = seeder
            } else {
                seeder = nil
            }
        } else {
            http = nil
            seeder = nil
        }

        let services = try await Self.bind(listeners, host: settings.listen)
        func addresses(_ service: (any BootService)?) -> [SocketAddress] { services.first { $0.service === service }?.addresses ?? [] }
        dhcpAddresses = addresses(dhcp)
        tftpAddress = addresses(tftp).first
        httpAddress = addresses(http).first
        self.services = services

        reloader = ConfigReloader(path: configPath, flags: flags, current: settings.source, baseline: settings.dhcpBaseline,
                                  levels: logLevel, dhcp: dhcp, logger: logger)
        (reloads, reloadRequests) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// A service to bind, with what its bind failure tells the administrator to change.
    private struct Listener {
        let service: any BootService
        let port: Int
        let flag: String
    }

    /// Binds every service in order. When one fails, it and those bound before it are stopped, so
    /// nothing stays bound, and its error names the service, the port and the flag.
    private static func bind(_ listeners: [Listener], host: String) async throws(StartupError)
        -> [(service: any BootService, addresses: [SocketAddress])] {
        var bound: [(service: any BootService, addresses: [SocketAddress])] = []
        for (index, listener) in listeners.enumerated() {
            do {
                bound.append((listener.service, try await listener.service.bind()))
            } catch {
                for bound in listeners[...index].reversed() { await bound.service.stop() }
                throw StartupError.bind(error, service: listener.service.name, host: host, port: listener.port, flag: listener.flag)
            }
        }
        return bound
    }

    /// Serves until SIGTERM or SIGINT (with `signals`) or until the task is cancelled; SIGHUP reloads
    /// (`reload()`) meanwhile. Tests run without `signals`: the process's signals are not theirs.
    public func run(signals: Bool = true) async throws {
        var services: [any Service] = [timeline]
        if let inventory { services.append(inventory) }
        services += self.services.map(\.service)
        if let inventory, http != nil {
            // Host keys the nodes lack are made in the background, at start and after each change of
            // nodes.yaml, one at a time (an RSA key is most of a CPU-second): a node booting before its
            // turn gets its keys made when it asks.
            var keys = hostKeys
            keys.niceness = 19
            let logger = self.logger
            services.append(ServerService(name: "host-keys") { [keys] in
                func ensure(_ inventory: Inventory) async {
                    let without = KnownHosts.hostnamesWithoutKeys(in: inventory)
                    let hostnames = inventory.nodes.map(\.hostname).filter { !without.contains($0) }
                    do {
                        let made = try await keys.ensureKeys(for: hostnames, concurrency: 1)
                        if made > 0 { logger.info("made SSH host keys for \(made) node(s)", metadata: ["directory": "\(keys.directory)"]) }
                    } catch {
                        logger.error("SSH host keys: \(error)")
                    }
                }
                let updates = inventory.updates()
                await ensure(inventory.current.inventory)
                for await snapshot in updates { await ensure(snapshot.inventory) }
            })
        }
        let reloads = self.reloads
        services.append(ServerService(name: "reload") { [self] in
            for await _ in reloads { await reload() }
        })
        let requests = reloadRequests
        let hangup = signals ? try HangupSignal.observe { requests.yield() } : nil
        defer { hangup?.cancel() }
        let group = ServiceGroup(configuration: .init(services: services.map { .init(service: $0) },
                                                      gracefulShutdownSignals: signals ? [.sigterm, .sigint] : [], logger: logger))
        self.group.withLock { $0 = group }
        let listening = self.services.map { service in
            "\(service.service.name) " + service.addresses.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" }.joined(separator: ", ")
        }
        logger.info("serving \(settings.root): \(listening.joined(separator: "; "))")
        try await group.run()
    }

    /// Shuts the running server down as SIGTERM does: listeners close, transfers end, state is flushed.
    public func shutdown() async {
        await group.withLock { $0 }?.triggerGracefulShutdown()
    }

    /// Asks the running server to reload, as SIGHUP does; reloads run one at a time, and requests
    /// that arrive while one runs are coalesced into one more.
    public func requestReload() { reloadRequests.yield() }

    /// What SIGHUP does: nodes.yaml, then server.yaml's reloadable keys (the log names the others).
    public func reload() async {
        logger.notice("reloading")
        _ = inventory?.reload()
        await reloader.reload()
    }

    /// A missing or empty root is the commonest first-day mistake: say what to run.
    static func checkRoot(_ root: String, nodes: String) throws(StartupError) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw StartupError("the boot root '\(root)' does not exist: run 'imagebuild publish artifacts/NAME --root \(root) --nodes \(nodes)' first")
        }
        if ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).isEmpty {
            throw StartupError("the boot root '\(root)' is empty: run 'imagebuild publish artifacts/NAME --root \(root) --nodes \(nodes)' first")
        }
    }
}

/// Re-reads server.yaml and applies what a running server can change: the log level and the DHCP
/// policy knobs. Keys that need a restart are named in the log; a broken file is rejected with its
/// located error and the settings in force stay.
final class ConfigReloader: Sendable {
    private let path: String?
    private let flags: ServerConfigFile
    private let baseline: DHCPServerConfiguration
    private let levels: LogLevelControl
    private let dhcp: DHCPServer?
    private let logger: Logger
    /// What the running server was started with or last reloaded to (flags merged over the file).
    private let current: Mutex<ServerConfigFile>

    init(path: String?, flags: ServerConfigFile, current: ServerConfigFile, baseline: DHCPServerConfiguration,
         levels: LogLevelControl, dhcp: DHCPServer?, logger: Logger) {
        self.path = path
        self.flags = flags
        self.current = Mutex(current)
        self.baseline = baseline
        self.levels = levels
        self.dhcp = dhcp
        self.logger = logger
    }

    /// Called by the one reload service, so reloads never overlap.
    func reload() async {
        guard let path else { return }
        let name = (path as NSString).lastPathComponent
        let next: ServerConfigFile
        do {
            next = flags.overriding(try ServerConfigFile.load(path: path))
        } catch {
            logger.error("\(name) rejected, the settings in force stay: \(error)")
            return
        }
        let (applied, restart, running) = current.withLock { current in
            let (applied, restart) = next.changes(from: current)
            // Keys that need a restart keep their running values until then.
            current = current.takingReloadable(from: next)
            return (applied, restart, current)
        }
        if applied.isEmpty && restart.isEmpty {
            logger.notice("reloaded \(name): no setting changed")
            return
        }
        levels.level = running.logLevel ?? .info
        await dhcp?.reconfigure(running.applyDHCP(to: baseline))
        var message = "reloaded \(name)"
        message += applied.isEmpty ? ": nothing applied" : ": applied \(applied.joined(separator: ", "))"
        if !restart.isEmpty { message += "; needs a restart to take effect: \(restart.joined(separator: ", "))" }
        logger.notice("\(message)")
    }
}

/// The log level of a running server, changeable on reload (server.yaml `log.level`): every logger
/// reads it on each call, so a reload applies to loggers created before it. An atomic, not a lock:
/// the level is checked on every log call, also on per-packet paths.
public final class LogLevelControl: Sendable {
    private let raw: Atomic<Int>

    public init(_ level: Logger.Level) { raw = Atomic(Self.all.firstIndex(of: level) ?? 2) }

    public var level: Logger.Level {
        get { Self.all[raw.load(ordering: .relaxed)] }
        set { raw.store(Self.all.firstIndex(of: newValue) ?? 2, ordering: .relaxed) }
    }

    private static let all = Logger.Level.allCases
}
