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
            shut down gracefully. Ports below 1024 need root (or CAP_NET_BIND_SERVICE).

            Example (a lab network on eth1 with address 10.77.0.1):
              imagebuild serve --root tftpboot --nodes nodes.yaml --listen 10.77.0.1 --interface eth1
            """)

    @Option(help: "The boot root laid out by 'imagebuild publish'.")
    var root: String = "tftpboot"

    @Option(help: "The node inventory.")
    var nodes: String = "nodes.yaml"

    @Option(help: "Address to listen on for TFTP and HTTP (DHCP listens on all addresses of --interface).")
    var listen: String = "0.0.0.0"

    @Option(help: "Network interface for DHCP (binds the DHCP socket to it).")
    var interface: String?

    @Option(help: "DHCP server port.")
    var dhcpPort: Int = 67

    @Option(help: "TFTP server port.")
    var tftpPort: Int = 69

    @Option(help: "HTTP server port (the inventory's network.http_port is what nodes are told).")
    var httpPort: Int?

    @Flag(help: "Do not serve DHCP (another DHCP server hands out addresses and boot files).")
    var noDhcp = false

    @Flag(help: "Do not serve TFTP.")
    var noTftp = false

    @Flag(help: "Do not serve HTTP.")
    var noHttp = false

    @Flag(help: "proxyDHCP: answer only the PXE part (ports 67 and 4011) next to an existing DHCP server.")
    var proxyDhcp = false

    @Option(help: "Where leases and the boot timeline are kept.")
    var stateDir: String = "/var/lib/imagebuild"

    @Option(help: "Log format: text or json.")
    var logFormat: LogFormat = .text

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        if noDhcp && noTftp && noHttp { throw ValidationError("--no-dhcp, --no-tftp and --no-http together leave nothing to serve") }
        if proxyDhcp && noDhcp { throw ValidationError("--proxy-dhcp and --no-dhcp contradict each other") }
        for (name, port) in [("--dhcp-port", dhcpPort), ("--tftp-port", tftpPort), ("--http-port", httpPort ?? 80)] where !(1...65535).contains(port) {
            throw ValidationError("\(name) must be between 1 and 65535")
        }
    }

    func run() async throws {
        let format = logFormat
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler: LogHandler = format == .json ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "imagebuild.serve")
        do {
            try checkRoot()
            try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
            let registry = PrometheusCollectorRegistry()
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
            let inventory: InventoryStore
            do {
                inventory = try InventoryStore(path: nodes, logger: Logger(label: "imagebuild.inventory"))
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
            var services: [any Service] = [inventory, timeline]

            if !noTftp {
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
            if !noDhcp {
                var configuration = DHCPServerConfiguration(stateDirectory: stateDir + "/dhcp", mode: proxyDhcp ? .proxy : .authoritative,
                                                            interfaces: interface.map { [$0] } ?? [], port: dhcpPort)
                if listen != "0.0.0.0" { configuration.listenAddress = listen }
                let server = DHCPServer(configuration: configuration, inventory: inventory, logger: Logger(label: "imagebuild.dhcp")) { event in
                    timeline.record(event)
                }
                do { try await server.start() } catch {
                    if error is DHCPServerError { throw StartupError("DHCP: \(error)") }
                    throw StartupError.bind(error, service: "DHCP", host: listen, port: dhcpPort, flag: "--dhcp-port")
                }
                services.append(ServerService(name: "dhcp") { try await server.run() })
            }
            if !noHttp {
                let port = httpPort ?? inventory.current.inventory.network.httpPort
                let configuration = HTTPServiceConfiguration(root: root, host: listen, port: port, metrics: registry)
                let http = HTTPService(configuration: configuration, timeline: timeline,
                                       inventory: { inventory.current.inventory }, logger: Logger(label: "imagebuild.http"))
                services.append(http)
                let group = ServiceGroup(configuration: .init(services: services.map { .init(service: $0) },
                                                              gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
                logger.info("serving \(root)")
                // A bind failure of the HTTP listener surfaces from the group; phrase it like the others.
                do { try await group.run() } catch let error as IOError {
                    throw StartupError.bind(error, service: "HTTP", host: listen, port: port, flag: "--http-port")
                }
                return
            }
            let group = ServiceGroup(configuration: .init(services: services.map { .init(service: $0) },
                                                          gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            logger.info("serving \(root)")
            try await group.run()
        } catch let error as StartupError {
            fail(error)
        }
    }

    /// A missing or empty root is the commonest first-day mistake: say what to run.
    func checkRoot() throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw StartupError("the boot root '\(root)' does not exist: run 'imagebuild publish artifacts/NAME --root \(root) --nodes \(nodes)' first")
        }
        if ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).isEmpty {
            throw StartupError("the boot root '\(root)' is empty: run 'imagebuild publish artifacts/NAME --root \(root) --nodes \(nodes)' first")
        }
    }
}
