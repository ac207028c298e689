import ArgumentParser
import BootServer
import Dispatch
import Metrics
import Prometheus
import Foundation
import ImageBuildKit
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a boot root over DHCP, TFTP and HTTP from one process.",
        discussion: """
            Serves what 'imagebuild publish' laid into --root: TFTP for firmware and
            pxelinux, HTTP for kernels, initramfs and images (and iPXE boot scripts),
            DHCP with the addresses and boot files of nodes.yaml. SIGTERM or SIGINT
            shut down gracefully; SIGHUP reloads nodes.yaml and --config (log level and
            DHCP policy knobs apply at once; the log names settings that need a restart).
            Ports below 1024 need root (or CAP_NET_BIND_SERVICE).

            Example (a lab network on eth1 with address 10.77.0.1):
              imagebuild serve --root tftpboot --nodes nodes.yaml --listen 10.77.0.1 --interface eth1
              imagebuild serve --config /etc/imagebuild/server.yaml    (see contrib/server.yaml)
            """)

    @Option(help: "Server settings in YAML (every flag below, plus DHCP policy knobs); flags given here win. Reloaded on SIGHUP.")
    var config: String?

    @Option(help: "The boot root laid out by 'imagebuild publish' (default: tftpboot).")
    var root: String?

    @Option(help: "The node inventory (default: nodes.yaml); not read with both --no-dhcp and --no-http unless given.")
    var nodes: String?

    @Option(help: "Address to listen on for TFTP and HTTP; DHCP serves the interface holding it (default: 0.0.0.0).")
    var listen: String?

    @Option(help: "Network interface for DHCP (binds the DHCP socket to it).")
    var interface: String?

    @Option(help: "DHCP server port (default: 67).")
    var dhcpPort: Int?

    @Option(help: "TFTP server port (default: 69).")
    var tftpPort: Int?

    @Option(help: "HTTP server port (default: the inventory's network.http_port, which is what nodes are told).")
    var httpPort: Int?

    @Flag(help: "Do not serve DHCP (another DHCP server hands out addresses and boot files).")
    var noDhcp = false

    @Flag(help: "Do not serve TFTP.")
    var noTftp = false

    @Flag(help: "Do not serve HTTP.")
    var noHttp = false

    @Flag(help: "proxyDHCP: answer only the PXE part (ports 67 and 4011) next to an existing DHCP server.")
    var proxyDhcp = false

    @Option(help: "Where leases and the boot timeline are kept (default: /var/lib/imagebuild).")
    var stateDir: String?

    @Option(help: "Seconds between checks of the inventory file for changes; 0: reload on SIGHUP only (default: 0.5).")
    var pollInterval: Double?

    @Option(help: "Log format: text or json (default: text).")
    var logFormat: LogFormat?

    @Option(help: "Log level: trace, debug, info, notice, warning, error (default: info).")
    var logLevel: Logger.Level?

    func validate() throws {
        for (name, port) in [("--dhcp-port", dhcpPort), ("--tftp-port", tftpPort), ("--http-port", httpPort)] {
            if let port, !(1...65535).contains(port) { throw ValidationError("\(name) must be between 1 and 65535") }
        }
        if let pollInterval, !(0...3600).contains(pollInterval) { throw ValidationError("--poll-interval must be between 0 and 3600 seconds") }
    }

    /// The settings given on the command line, in the file's shape, so that `flags.overriding(file)`
    /// is the whole merge rule. A `--no-*` flag can only switch a service off.
    var flagSettings: ServerConfigFile {
        var s = ServerConfigFile()
        s.root = root
        s.nodes = nodes
        s.listen = listen
        s.interface = interface
        s.stateDirectory = stateDir
        s.logFormat = logFormat?.rawValue
        s.logLevel = logLevel
        s.inventoryPollInterval = pollInterval
        s.dhcp.port = dhcpPort
        s.dhcp.enabled = noDhcp ? false : nil
        s.dhcp.proxy = proxyDhcp ? true : nil
        s.tftp.port = tftpPort
        s.tftp.enabled = noTftp ? false : nil
        s.http.port = httpPort
        s.http.enabled = noHttp ? false : nil
        return s
    }

    func run() async throws {
        // One event loop per CPU this process may run on: NIO counts the machine's CPUs, and under
        // `taskset` or a cpuset two loops sharing one CPU would only switch between each other.
        if let usable = Self.usableCPUs() { NIOSingletons.groupLoopCountSuggestion = usable }
        var settings = flagSettings
        if let config {
            do { settings = settings.overriding(try ServerConfigFile.load(path: config)) } catch { fail(error) }
        }
        let serveDHCP = settings.dhcp.enabled ?? true, serveTFTP = settings.tftp.enabled ?? true, serveHTTP = settings.http.enabled ?? true
        if !serveDHCP && !serveTFTP && !serveHTTP { fail(ValidationError("DHCP, TFTP and HTTP are all switched off: nothing to serve")) }
        if settings.dhcp.proxy == true && !serveDHCP { fail(ValidationError("proxyDHCP is on but DHCP is switched off")) }
        let root = settings.root ?? "tftpboot"
        let nodes = settings.nodes ?? "nodes.yaml"
        let listen = settings.listen ?? "0.0.0.0"
        let stateDir = settings.stateDirectory ?? "/var/lib/imagebuild"
        let tftpPort = settings.tftp.port ?? 69
        let dhcpPort = settings.dhcp.port ?? 67

        let format = LogFormat(rawValue: settings.logFormat ?? "text") ?? .text
        let levelControl = LogLevelControl(settings.logLevel ?? .info)
        LoggingSystem.bootstrap { label in
            let handler: LogHandler = format == .json ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            return ControlledLevelLogHandler(inner: handler, control: levelControl)
        }
        let logger = Logger(label: "imagebuild.serve")
        do {
            try checkRoot(root, nodes: nodes)
            try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
            let registry = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(BootServerMetricsFactory(registry: registry))
            // Only DHCP and HTTP read the inventory: TFTP alone serves files, so it needs no nodes.yaml
            // unless one was named.
            let inventory: InventoryStore?
            do {
                inventory = serveDHCP || serveHTTP || settings.nodes != nil
                    ? try InventoryStore(path: nodes, pollInterval: .milliseconds(Int((settings.inventoryPollInterval ?? 0.5) * 1000)),
                                         logger: Logger(label: "imagebuild.inventory"))
                    : nil
            } catch {
                throw StartupError("\(error)")
            }
            let timeline: BootTimeline
            do {
                timeline = try BootTimeline(configuration: .init(stateDirectory: stateDir + "/timeline"),
                                            logger: Logger(label: "imagebuild.timeline"))
            } catch {
                throw StartupError("boot timeline in \(stateDir)/timeline: \(error)")
            }
            var services: [any Service] = [timeline]
            if let inventory { services.append(inventory) }

            if serveTFTP {
                var configuration = TFTPServerConfiguration(root: root, host: listen, port: tftpPort)
                configuration.maximumTransfers = 10_000
                let server = TFTPServer(configuration: configuration, logger: Logger(label: "imagebuild.tftp")) { report in
                    _ = timeline.record(report)
                }
                do { try await server.start() } catch {
                    throw StartupError.bind(error, service: "TFTP", host: listen, port: tftpPort, flag: "--tftp-port")
                }
                services.append(ServerService(name: "tftp") { try await server.run() })
            }
            var dhcpServer: DHCPServer?
            // The DHCP settings before the file's knobs: a knob removed from the file on reload falls back to these.
            var dhcpBaseline = DHCPServerConfiguration(stateDirectory: stateDir + "/dhcp", mode: settings.dhcp.proxy == true ? .proxy : .authoritative,
                                                       interfaces: settings.interface.map { [$0] } ?? [], port: dhcpPort)
            if listen != "0.0.0.0" { dhcpBaseline.listenAddress = listen }
            if serveDHCP, let inventory {
                let server = DHCPServer(configuration: settings.applyDHCP(to: dhcpBaseline), inventory: inventory,
                                        logger: Logger(label: "imagebuild.dhcp")) { event in
                    timeline.record(event)
                }
                do { try await server.start() } catch {
                    if error is DHCPServerError { throw StartupError("DHCP: \(error)") }
                    throw StartupError.bind(error, service: "DHCP", host: listen, port: dhcpPort, flag: "--dhcp-port")
                }
                services.append(ServerService(name: "dhcp") { try await server.run() })
                dhcpServer = server
            }

            // SIGHUP: the inventory, then server.yaml (its reloadable keys; the rest is reported).
            let reloader = ConfigReloader(path: config, flags: flagSettings, current: settings, baseline: dhcpBaseline,
                                          levels: levelControl, dhcp: dhcpServer, logger: logger)
            let hangup: ObservationToken
            do {
                hangup = try HangupSignal.observe {
                    logger.notice("SIGHUP: reloading")
                    inventory?.reload()
                    reloader.reload()
                }
            } catch {
                throw StartupError("\(error)")
            }
            defer { hangup.cancel() }

            var httpPort: Int?
            if serveHTTP, let inventory {
                let port = settings.http.port ?? inventory.current.inventory.network.httpPort
                var configuration = HTTPServiceConfiguration(root: root, host: listen, port: port, metrics: registry)
                if let limit = settings.http.maximumConnections { configuration.maximumConnections = limit }
                var tokens: ReportTokens?
                if settings.http.reportTokens == true {
                    tokens = try ReportTokens(keyFile: stateDir + "/report-token.key")
                }
                let http = HTTPService(configuration: configuration, timeline: timeline,
                                       inventory: { inventory.current.inventory }, leases: dhcpServer?.leaseIndex,
                                       reportTokens: tokens, inventoryRejection: { inventory.lastError },
                                       logger: Logger(label: "imagebuild.http"))
                services.append(http)
                httpPort = port
            }
            let group = ServiceGroup(configuration: .init(services: services.map { .init(service: $0) },
                                                          gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            logger.info("serving \(root)")
            do { try await group.run() } catch let error as IOError where httpPort != nil {
                // A bind failure of the HTTP listener surfaces from the group; phrase it like the others.
                throw StartupError.bind(error, service: "HTTP", host: listen, port: httpPort!, flag: "--http-port")
            }
        } catch let error as StartupError {
            fail(error)
        }
    }

    /// A missing or empty root is the commonest first-day mistake: say what to run.
    func checkRoot(_ root: String, nodes: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw StartupError("the boot root '\(root)' does not exist: run 'imagebuild publish artifacts/NAME --root \(root) --nodes \(nodes)' first")
        }
        if ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).isEmpty {
            throw StartupError("the boot root '\(root)' is empty: run 'imagebuild publish artifacts/NAME --root \(root) --nodes \(nodes)' first")
        }
    }
}

/// Re-reads server.yaml on SIGHUP and applies what a running server can change: the log level and
/// the DHCP policy knobs. Keys that need a restart are named in the log; a broken file is rejected
/// with its located error and the settings in force stay.
final class ConfigReloader: @unchecked Sendable {
    private let path: String?
    private let flags: ServerConfigFile
    private let baseline: DHCPServerConfiguration
    private let levels: LogLevelControl
    private let dhcp: DHCPServer?
    private let logger: Logger
    private let lock = NSLock()
    /// What the running server was started with or last reloaded to (flags merged over the file).
    private var current: ServerConfigFile

    init(path: String?, flags: ServerConfigFile, current: ServerConfigFile, baseline: DHCPServerConfiguration,
         levels: LogLevelControl, dhcp: DHCPServer?, logger: Logger) {
        self.path = path
        self.flags = flags
        self.current = current
        self.baseline = baseline
        self.levels = levels
        self.dhcp = dhcp
        self.logger = logger
    }

    /// Runs on the signal thread; one reload at a time.
    func reload() {
        guard let path else { return }
        lock.lock()
        defer { lock.unlock() }
        let name = (path as NSString).lastPathComponent
        let next: ServerConfigFile
        do {
            next = flags.overriding(try ServerConfigFile.load(path: path))
        } catch {
            logger.error("\(name) rejected, the settings in force stay: \(error)")
            return
        }
        let (applied, restart) = next.changes(from: current)
        if applied.isEmpty && restart.isEmpty {
            logger.notice("reloaded \(name): no setting changed")
            return
        }
        // Keys that need a restart keep their running values until then.
        let running = current.takingReloadable(from: next)
        current = running
        levels.level = running.logLevel ?? .info
        if let dhcp {
            let configuration = running.applyDHCP(to: baseline)
            let done = DispatchSemaphore(value: 0)
            Task {
                await dhcp.reconfigure(configuration)
                done.signal()
            }
            done.wait()
        }
        var message = "reloaded \(name)"
        message += applied.isEmpty ? ": nothing applied" : ": applied \(applied.joined(separator: ", "))"
        if !restart.isEmpty { message += "; needs a restart to take effect: \(restart.joined(separator: ", "))" }
        logger.notice("\(message)")
    }
}

extension ServeCommand {
    /// CPUs in this process's affinity mask, from `Cpus_allowed` in /proc/self/status (Glibc's
    /// sched_getaffinity is not visible to Swift); nil when it cannot be read.
    static func usableCPUs() -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed:") }) else { return nil }
        let count = line.dropFirst("Cpus_allowed:".count).reduce(0) { sum, character in
            sum + (character.hexDigitValue?.nonzeroBitCount ?? 0)
        }
        return count > 0 ? count : nil
    }
}
