import ArgumentParser
import BootServer
import Metrics
import Prometheus
import Foundation
import Logging
import NIOCore
import NIOPosix

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve a boot root over DHCP, TFTP and HTTP from one process.",
        discussion: """
            Serves what 'imagebuild publish' laid into --root: TFTP for firmware and
            pxelinux, HTTP for kernels, initramfs and images (and iPXE boot scripts),
            DHCP with the addresses and boot files of nodes.yaml (plus the machines bound
            in the state directory: see 'imagebuild nodes discovered'). SIGTERM or SIGINT
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

    @Option(help: "Where leases, the boot timeline, node host keys, discovered machines and bindings are kept (default: /var/lib/imagebuild).")
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
        let settings: BootServices.Settings
        do { settings = try .load(flags: flagSettings, configPath: config) } catch { fail(error) }

        // Logging and metrics are process-wide: set up here, once, before any service logs.
        let levelControl = LogLevelControl(settings.logLevel)
        let json = settings.logFormat == LogFormat.json.rawValue
        LoggingSystem.bootstrap { label in
            let handler: LogHandler = json ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            return ControlledLevelLogHandler(inner: handler, control: levelControl)
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(BootServerMetricsFactory(registry: registry))
        do {
            let services = try await BootServices(settings: settings, flags: flagSettings, configPath: config,
                                                  logLevel: levelControl, metrics: registry)
            try await services.run()
        } catch let error as StartupError {
            fail(error)
        }
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
