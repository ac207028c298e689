import Foundation
import ImageBuildKit
import Logging

/// `server.yaml`: every `imagebuild serve` setting as a file, so a unit file or a config-management
/// tool does not have to build a command line. Every key is optional; a command-line flag given
/// explicitly wins over the file (`overriding(_:)`), built-in defaults fill what neither sets.
///
/// Strict like the recipe loader: unknown keys and wrong types are `ConfigError`s located at the
/// node (`server.yaml:7:3: unknown key 'rapid_comit' (did you mean 'rapid_commit'?)`). Relative
/// paths resolve against the file's folder, so the file means the same from any working directory.
///
///     root: /srv/tftpboot
///     nodes: nodes.yaml
///     listen: 10.77.0.1
///     interface: eth1
///     state_dir: /var/lib/imagebuild
///     log: {format: json, level: info}
///     inventory: {poll_interval: 0.5}
///     dhcp: {port: 67, proxy: false, rapid_commit: true, pxelinux_reboot_time: 30, rate_limit: {burst: 20, per_second: 5}}
///     tftp: {port: 69}
///     http: {port: 80, max_connections: 4096}
///     swarm: {seed: true, seed_port: 6881}
public struct ServerConfigFile: Sendable, Equatable {
    public var root: String?
    public var nodes: String?
    public var listen: String?
    public var interface: String?
    public var stateDirectory: String?
    public var logFormat: String?
    public var logLevel: Logger.Level?
    /// Seconds between looks at nodes.yaml; 0 turns polling off (reload on SIGHUP only).
    public var inventoryPollInterval: Double?
    public var dhcp = DHCP()
    public var tftp = Listener()
    public var http = HTTP()
    public var swarm = Swarm()

    /// The server's own BitTorrent seeder for `distribution: p2p` images (`SwarmSeeder`).
    public struct Swarm: Sendable, Equatable {
        /// Seed the published torrents over BitTorrent from this process (default true).
        public var seed: Bool?
        /// The first port the seeder tries (one port for every torrent): it takes the first free one of the 64 from here.
        public var seedPort: Int?
        public init() {}
    }

    public struct DHCP: Sendable, Equatable {
        public var enabled: Bool?
        public var port: Int?
        public var proxy: Bool?
        public var ignoreUnknownClients: Bool?
        public var rapidCommit: Bool?
        public var offerHoldTime: Int?
        public var declineHoldTime: Int?
        /// Seconds; 0 sends nothing, so pxelinux keeps its own 300 s.
        public var pxelinuxRebootTime: Int?
        public var rateLimitBurst: Double?
        public var rateLimitPerSecond: Double?
        public init() {}
    }

    public struct Listener: Sendable, Equatable {
        public var enabled: Bool?
        public var port: Int?
        public init() {}
    }

    public struct HTTP: Sendable, Equatable {
        public var enabled: Bool?
        public var port: Int?
        public var maximumConnections: Int?
        /// Stage reports may carry a per-boot token instead of coming from the node's own address
        /// (sites where reports pass NAT or a relay). Off by default: see `ReportTokens`.
        public var reportTokens: Bool?
        /// Seconds after a node's DHCP acknowledgement during which it may fetch its secrets.
        public var secretWindow: Double?
        /// Secrets fetches allowed per boot.
        public var secretsPerBoot: Int?
        public init() {}
    }

    public init() {}

    /// Where the server keeps leases, the boot timeline and node host keys when neither `--state-dir`
    /// nor `state_dir` says.
    public static let defaultStateDirectory = "/var/lib/imagebuild"

    /// `state_dir` with the default applied: the one rule `serve` and `nodes known-hosts` share, so
    /// both find the same host keys.
    public var resolvedStateDirectory: String { stateDirectory ?? Self.defaultStateDirectory }

    /// The command line's settings over `server.yaml`'s when a file is given: the merge `serve` and
    /// the commands that read the server's state share.
    public static func merged(flags: ServerConfigFile, configPath: String?) throws -> ServerConfigFile {
        guard let configPath else { return flags }
        return flags.overriding(try load(path: configPath))
    }

    /// Keys that a running server applies on SIGHUP; every other key needs a restart (it rebinds a
    /// socket, moves state, or changes what the process is).
    public static let reloadableKeys: Set<String> = [
        "log.level", "dhcp.ignore_unknown_clients", "dhcp.rapid_commit", "dhcp.offer_hold_time",
        "dhcp.decline_hold_time", "dhcp.pxelinux_reboot_time", "dhcp.rate_limit.burst", "dhcp.rate_limit.per_second",
    ]

    /// This configuration with the `reloadableKeys` taken from `next`: what a running server switches
    /// to on SIGHUP (the other keys keep their running values until a restart).
    public func takingReloadable(from next: ServerConfigFile) -> ServerConfigFile {
        var r = self
        r.logLevel = next.logLevel
        r.dhcp.ignoreUnknownClients = next.dhcp.ignoreUnknownClients
        r.dhcp.rapidCommit = next.dhcp.rapidCommit
        r.dhcp.offerHoldTime = next.dhcp.offerHoldTime
        r.dhcp.declineHoldTime = next.dhcp.declineHoldTime
        r.dhcp.pxelinuxRebootTime = next.dhcp.pxelinuxRebootTime
        r.dhcp.rateLimitBurst = next.dhcp.rateLimitBurst
        r.dhcp.rateLimitPerSecond = next.dhcp.rateLimitPerSecond
        return r
    }

    public static func load(path: String) throws -> ServerConfigFile {
        let url = URL(fileURLWithPath: path).standardizedFileURL
        let text: String
        do {
            text = try String(contentsOfFile: url.path, encoding: .utf8)
        } catch {
            throw ConfigError(ConfigLocation(file: path, line: 0, column: 0),
                              "cannot read the server configuration: \(String(cString: strerror(errno)))")
        }
        return try parse(text, file: path, folder: url.deletingLastPathComponent().path)
    }

    /// Parses `server.yaml` text; `folder` is where relative paths resolve.
    public static func parse(_ text: String, file: String, folder: String) throws -> ServerConfigFile {
        let top = try YAMLValue.parse(text, file: file)
            .map(allowed: ["root", "nodes", "listen", "interface", "state_dir", "log", "inventory", "dhcp", "tftp", "http", "swarm"])
        var config = ServerConfigFile()
        func path(_ key: String) throws -> String? {
            guard let value = top[key] else { return nil }
            let text = try value.string()
            if text.isEmpty { throw value.error("'\(key)' must not be empty") }
            if text.hasPrefix("/") { return text }
            return URL(fileURLWithPath: folder).appendingPathComponent(text).standardizedFileURL.path
        }
        config.root = try path("root")
        config.nodes = try path("nodes")
        config.stateDirectory = try path("state_dir")
        if let value = top["listen"] {
            let text = try value.string()
            guard IPv4Address(text) != nil else { throw value.error("'\(text)' is not an IPv4 address") }
            config.listen = text
        }
        config.interface = try top.string("interface")

        if let log = try top["log"]?.map(allowed: ["format", "level"]) {
            if let value = log["format"] {
                let text = try value.string()
                guard ["text", "json"].contains(text) else { throw value.error("unknown log format '\(text)'", hint: "text or json") }
                config.logFormat = text
            }
            if let value = log["level"] {
                let text = try value.string()
                guard let level = Logger.Level(rawValue: text) else {
                    throw value.error("unknown log level '\(text)'", hint: "trace, debug, info, notice, warning, error or critical")
                }
                config.logLevel = level
            }
        }
        if let inventory = try top["inventory"]?.map(allowed: ["poll_interval"]), let value = inventory["poll_interval"] {
            config.inventoryPollInterval = try seconds(value, in: 0...3600)
        }
        if let dhcp = try top["dhcp"]?.map(allowed: ["enabled", "port", "proxy", "ignore_unknown_clients", "rapid_commit",
                                                    "offer_hold_time", "decline_hold_time", "pxelinux_reboot_time", "rate_limit"]) {
            config.dhcp.enabled = try dhcp.bool("enabled")
            config.dhcp.port = try dhcp.int("port", in: 1...65535)
            config.dhcp.proxy = try dhcp.bool("proxy")
            config.dhcp.ignoreUnknownClients = try dhcp.bool("ignore_unknown_clients")
            config.dhcp.rapidCommit = try dhcp.bool("rapid_commit")
            config.dhcp.offerHoldTime = try dhcp.int("offer_hold_time", in: 1...86_400)
            config.dhcp.declineHoldTime = try dhcp.int("decline_hold_time", in: 1...31_536_000)
            config.dhcp.pxelinuxRebootTime = try dhcp.int("pxelinux_reboot_time", in: 0...86_400)
            if let limit = try dhcp["rate_limit"]?.map(allowed: ["burst", "per_second"]) {
                config.dhcp.rateLimitBurst = try limit["burst"].map { try seconds($0, in: 1...100_000) }
                config.dhcp.rateLimitPerSecond = try limit["per_second"].map { try seconds($0, in: 0.001...100_000) }
            }
        }
        if let tftp = try top["tftp"]?.map(allowed: ["enabled", "port"]) {
            config.tftp.enabled = try tftp.bool("enabled")
            config.tftp.port = try tftp.int("port", in: 1...65535)
        }
        if let http = try top["http"]?.map(allowed: ["enabled", "port", "max_connections", "report_tokens", "secret_window", "secrets_per_boot"]) {
            config.http.enabled = try http.bool("enabled")
            config.http.port = try http.int("port", in: 1...65535)
            config.http.maximumConnections = try http.int("max_connections", in: 1...1_000_000)
            config.http.reportTokens = try http.bool("report_tokens")
            config.http.secretWindow = try http["secret_window"].map { try seconds($0, in: 10...86_400) }
            config.http.secretsPerBoot = try http.int("secrets_per_boot", in: 1...10)
        }
        if let swarm = try top["swarm"]?.map(allowed: ["seed", "seed_port"]) {
            config.swarm.seed = try swarm.bool("seed")
            config.swarm.seedPort = try swarm.int("seed_port", in: 1024...65_000)
        }
        if config.dhcp.enabled == false && config.tftp.enabled == false && config.http.enabled == false, let dhcp = top["dhcp"] {
            throw dhcp.error("dhcp, tftp and http are all disabled: nothing to serve")
        }
        return config
    }

    /// A non-negative number (integer or decimal) within `range`.
    static func seconds(_ value: YAMLValue, in range: ClosedRange<Double>) throws -> Double {
        let text = try value.string()
        guard let number = Double(text), number.isFinite else { throw value.error("expected a number, found '\(text)'") }
        guard range.contains(number) else { throw value.error("\(text) is out of range \(range.lowerBound)...\(range.upperBound)") }
        return number
    }

    /// This configuration with every unset key taken from `base` (flags given on the command line
    /// override the file: `flags.overriding(file)`).
    public func overriding(_ base: ServerConfigFile) -> ServerConfigFile {
        var r = self
        r.root = root ?? base.root
        r.nodes = nodes ?? base.nodes
        r.listen = listen ?? base.listen
        r.interface = interface ?? base.interface
        r.stateDirectory = stateDirectory ?? base.stateDirectory
        r.logFormat = logFormat ?? base.logFormat
        r.logLevel = logLevel ?? base.logLevel
        r.inventoryPollInterval = inventoryPollInterval ?? base.inventoryPollInterval
        r.dhcp.enabled = dhcp.enabled ?? base.dhcp.enabled
        r.dhcp.port = dhcp.port ?? base.dhcp.port
        r.dhcp.proxy = dhcp.proxy ?? base.dhcp.proxy
        r.dhcp.ignoreUnknownClients = dhcp.ignoreUnknownClients ?? base.dhcp.ignoreUnknownClients
        r.dhcp.rapidCommit = dhcp.rapidCommit ?? base.dhcp.rapidCommit
        r.dhcp.offerHoldTime = dhcp.offerHoldTime ?? base.dhcp.offerHoldTime
        r.dhcp.declineHoldTime = dhcp.declineHoldTime ?? base.dhcp.declineHoldTime
        r.dhcp.pxelinuxRebootTime = dhcp.pxelinuxRebootTime ?? base.dhcp.pxelinuxRebootTime
        r.dhcp.rateLimitBurst = dhcp.rateLimitBurst ?? base.dhcp.rateLimitBurst
        r.dhcp.rateLimitPerSecond = dhcp.rateLimitPerSecond ?? base.dhcp.rateLimitPerSecond
        r.tftp.enabled = tftp.enabled ?? base.tftp.enabled
        r.tftp.port = tftp.port ?? base.tftp.port
        r.http.enabled = http.enabled ?? base.http.enabled
        r.http.port = http.port ?? base.http.port
        r.http.maximumConnections = http.maximumConnections ?? base.http.maximumConnections
        r.http.reportTokens = http.reportTokens ?? base.http.reportTokens
        r.http.secretWindow = http.secretWindow ?? base.http.secretWindow
        r.http.secretsPerBoot = http.secretsPerBoot ?? base.http.secretsPerBoot
        r.swarm.seed = swarm.seed ?? base.swarm.seed
        r.swarm.seedPort = swarm.seedPort ?? base.swarm.seedPort
        return r
    }

    /// Every key with its value ("" when unset), in file order: what a reload compares.
    public var flattened: KeyValuePairs<String, String> {
        func s<T>(_ value: T?) -> String { value.map { "\($0)" } ?? "" }
        return [
            "root": s(root), "nodes": s(nodes), "listen": s(listen), "interface": s(interface),
            "state_dir": s(stateDirectory), "log.format": s(logFormat), "log.level": s(logLevel),
            "inventory.poll_interval": s(inventoryPollInterval),
            "dhcp.enabled": s(dhcp.enabled), "dhcp.port": s(dhcp.port), "dhcp.proxy": s(dhcp.proxy),
            "dhcp.ignore_unknown_clients": s(dhcp.ignoreUnknownClients), "dhcp.rapid_commit": s(dhcp.rapidCommit),
            "dhcp.offer_hold_time": s(dhcp.offerHoldTime), "dhcp.decline_hold_time": s(dhcp.declineHoldTime),
            "dhcp.pxelinux_reboot_time": s(dhcp.pxelinuxRebootTime),
            "dhcp.rate_limit.burst": s(dhcp.rateLimitBurst), "dhcp.rate_limit.per_second": s(dhcp.rateLimitPerSecond),
            "tftp.enabled": s(tftp.enabled), "tftp.port": s(tftp.port),
            "http.enabled": s(http.enabled), "http.port": s(http.port), "http.max_connections": s(http.maximumConnections),
            "http.report_tokens": s(http.reportTokens), "http.secret_window": s(http.secretWindow),
            "http.secrets_per_boot": s(http.secretsPerBoot),
            "swarm.seed": s(swarm.seed), "swarm.seed_port": s(swarm.seedPort),
        ]
    }

    /// What changed from `old` to `self`, split into keys a running server applies and keys that
    /// need a restart.
    public func changes(from old: ServerConfigFile) -> (reloadable: [String], needRestart: [String]) {
        let before = Dictionary(uniqueKeysWithValues: old.flattened.map { ($0.key, $0.value) })
        let changed = flattened.filter { before[$0.key] != $0.value }.map(\.key)
        return (changed.filter(Self.reloadableKeys.contains), changed.filter { !Self.reloadableKeys.contains($0) })
    }

    /// The DHCP settings of this configuration applied to `base` (defaults for what is unset stay).
    public func applyDHCP(to base: DHCPServerConfiguration) -> DHCPServerConfiguration {
        var c = base
        if let value = dhcp.ignoreUnknownClients { c.ignoreUnknownClients = value }
        if let value = dhcp.rapidCommit { c.rapidCommit = value }
        if let value = dhcp.offerHoldTime { c.offerHoldTime = UInt32(value) }
        if let value = dhcp.declineHoldTime { c.declineHoldTime = UInt32(value) }
        if let value = dhcp.pxelinuxRebootTime { c.pxelinuxRebootTime = value == 0 ? nil : UInt32(value) }
        if let value = dhcp.rateLimitBurst { c.rateLimitBurst = value }
        if let value = dhcp.rateLimitPerSecond { c.rateLimitPerSecond = value }
        return c
    }
}
