import Foundation

/// `nodes.yaml`: the network the boot server serves and the nodes it knows.
/// Read by `publish` (to render boot files) and by `serve` (DHCP, boot scripts).
public struct Inventory: Sendable, Equatable {
    public struct Network: Sendable, Equatable {
        public var server: IPv4Address
        public var subnet: IPv4Network
        public var router: IPv4Address?
        public var dns: [IPv4Address]
        public var domain: String?
        /// Dynamic addresses for machines not listed (inclusive); nil: unknown machines get none.
        public var pool: ClosedRange<IPv4Address>?
        public var leaseTime: Int
        public var httpPort: Int
        /// What BIOS PXE clients load: lpxelinux.0 (kernel and initrd over HTTP) or pxelinux.0 (TFTP).
        public var biosLoader: String
        /// `http://server[:port]`, the base of every URL nodes are given.
        public var httpBase: String { server.httpBase(port: httpPort) }
    }

    /// Boot settings at any level (defaults, group, range, node); nil inherits.
    public struct Settings: Sendable, Equatable {
        public var image: String?
        /// Replaces the inherited command line.
        public var cmdline: String?
        /// Appended to the command line at every level.
        public var append: String?
        /// How a machine boots when its firmware leaves a choice (defaults, groups and nodes only:
        /// DHCP picks it before the machine has an address, so a range cannot).
        public var loader: Loader?
        /// Variables, files, interfaces and host keys (merged by `NodeIdentity`).
        public var identity = IdentitySettings()
        /// How to reach the node's BMC (`bmc:`), merged field by field like the identity.
        public var bmc = BMCSettings()
        /// How stage 1 fetches the image (`distribution:`), and where that was said.
        public var distribution: Distribution?
        public var distributionLocation: ConfigLocation?
        /// Seconds a node keeps seeding its image after it has it (`seed_time:`, p2p only).
        public var seedTime: Int?
        /// The machines' architecture (`arch:`), and where that was said: publish refuses an image of
        /// another one. nil: whatever the image is.
        public var arch: Architecture?
        public var archLocation: ConfigLocation?
        public var location: ConfigLocation?
        public init(image: String? = nil, cmdline: String? = nil, append: String? = nil, loader: Loader? = nil) {
            self.image = image
            self.cmdline = cmdline
            self.append = append
            self.loader = loader
        }
    }

    /// The BIOS boot path a site chooses for a machine. Without one, firmware PXE gets
    /// `network.bios_loader` and a NIC ROM that is iPXE already (QEMU, Proxmox, flashed NICs) gets its
    /// boot script.
    public enum Loader: String, Sendable, Equatable, CaseIterable {
        /// pxelinux whatever the firmware, iPXE ROMs included: the `pxelinux.cfg/` walk decides.
        case pxelinux
        /// iPXE whatever the firmware: BIOS PXE ROMs chainload `ipxe/undionly.kpxe`, then the boot script.
        case ipxe
        /// The Secure Boot chain for x86-64 UEFI PXE: Debian's signed shim, then its signed GRUB, which
        /// walks `grub/grub.cfg-…` and boots the image's (signed) kernel. BIOS machines boot as with no
        /// `loader:` (GRUB here is the UEFI build only).
        case grub
    }

    /// How a node's stage 1 fetches its image (docs/swarm.md).
    public enum Distribution: String, Sendable, Equatable, CaseIterable {
        /// From the boot server over HTTP (resumable, one pass).
        case http
        /// From the swarm of nodes booting the same image (BitTorrent; the server is tracker and web
        /// seed, so every byte can still come over HTTP), then kept seeding for `seed_time` seconds.
        case p2p
    }

    /// How long a p2p node keeps seeding after it has its image, unless `seed_time:` says otherwise.
    public static let defaultSeedTime = 600

    public struct Node: Sendable, Equatable {
        public var mac: MACAddress
        public var hostname: String
        public var ip: IPv4Address?
        public var group: String?
        public var settings: Settings
        /// SMBIOS values the node must present to fetch its secrets (`smbios:`), when set.
        public var smbios: SMBIOSIdentity = SMBIOSIdentity()
        public var location: ConfigLocation
    }

    /// A pxelinux config for every address under a prefix (`C0A8016` for 192.168.1.96/28):
    /// machines without a per-MAC file find it through pxelinux's hex-IP walk.
    public struct Range: Sendable, Equatable {
        public var network: IPv4Network
        public var group: String?
        public var settings: Settings
        public var location: ConfigLocation
        /// The pxelinux file name: the prefix's hex digits (the prefix length must be a multiple of 4).
        public var pxelinuxName: String { network.pxelinuxName }
    }

    public var file: String
    public var network: Network
    public var defaults: Settings
    public var groups: [String: Settings]
    public var ranges: [Range]
    /// `discover:`: where the server binds machines nodes.yaml does not list (nil: it only records them).
    public var discover: Discover?
    public var nodes: [Node] { didSet { lookup = Lookup(nodes) } }
    /// Where each MAC and fixed address sits in `nodes`: the server asks per request (boot scripts,
    /// stage reports), and a 10,000-node inventory makes a scan per request count.
    private var lookup: Lookup

    private struct Lookup: Sendable, Equatable {
        var byMAC: [MACAddress: Int] = [:]
        var byIP: [IPv4Address: Int] = [:]
        init(_ nodes: [Node]) {
            // The first of duplicates wins, as a scan from the front would find it.
            for (index, node) in nodes.enumerated() {
                if byMAC[node.mac] == nil { byMAC[node.mac] = index }
                if let ip = node.ip, byIP[ip] == nil { byIP[ip] = index }
            }
        }
    }

    public init(file: String, network: Network, defaults: Settings, groups: [String: Settings], ranges: [Range], nodes: [Node],
                discover: Discover? = nil) {
        self.file = file
        self.discover = discover
        self.network = network
        self.defaults = defaults
        self.groups = groups
        self.ranges = ranges
        self.nodes = nodes
        lookup = Lookup(nodes)
    }

    public func node(mac: MACAddress) -> Node? { lookup.byMAC[mac].map { nodes[$0] } }

    /// The node whose fixed address (`ip:` in nodes.yaml) is `ip`.
    public func node(ip: IPv4Address) -> Node? { lookup.byIP[ip].map { nodes[$0] } }

    /// The loader choice for a node (node > group > defaults); `nil` node: a machine not listed.
    public func loader(for node: Node?) -> Loader? {
        guard let node else { return defaults.loader }
        return node.settings.loader ?? node.group.flatMap { groups[$0]?.loader } ?? defaults.loader
    }

    /// The pxelinux binary `loader: pxelinux` machines get: `bios_loader` when it is a pxelinux,
    /// else lpxelinux.0 (kernel and initrd over HTTP).
    public var pxelinuxLoader: String { network.biosLoader == "undionly.kpxe" ? "lpxelinux.0" : network.biosLoader }

    /// What a node, range or unknown machine boots, as the inventory says.
    public struct Resolution: Sendable, Equatable {
        public var image: String?
        /// The inventory's part of the kernel command line: the nearest `cmdline`, then every `append`.
        public var cmdline: String
        /// A `cmdline` is set (node, group or defaults): it replaces the recipe's command line, and only
        /// the build's own `imagebuild.*` parameters of the image are kept. Without one, `append` adds
        /// to the recipe's line.
        public var replacesImageCommandLine: Bool
        /// How stage 1 fetches the image (the nearest `distribution:`, else HTTP), and where it was set.
        public var distribution: Distribution = .http
        public var distributionLocation: ConfigLocation?
        /// The nearest `seed_time:`, else `Inventory.defaultSeedTime`.
        public var seedTime: Int = Inventory.defaultSeedTime
        /// The nearest `arch:` and where it was set; nil: not said.
        public var arch: Architecture?
        public var archLocation: ConfigLocation?

        public init(image: String?, cmdline: String, replacesImageCommandLine: Bool = false) {
            self.image = image
            self.cmdline = cmdline
            self.replacesImageCommandLine = replacesImageCommandLine
        }
    }

    /// Effective image and command line for a node (node > group > defaults); its distribution also
    /// takes the range holding its fixed address (node > range > group > defaults), as its identity does.
    public func resolved(_ node: Node) -> Resolution {
        var resolution = resolve(node.settings, group: node.group)
        resolution.applyNearest(from: settingsLevels(of: node).map(\.1))
        return resolution
    }

    public func resolved(_ range: Range) -> Resolution {
        resolve(range.settings, group: range.group)
    }

    public func resolve(_ own: Settings, group: String?) -> Resolution {
        let groupSettings = group.flatMap { groups[$0] } ?? Settings()
        let image = own.image ?? groupSettings.image ?? defaults.image
        let replacement = own.cmdline ?? groupSettings.cmdline ?? defaults.cmdline
        var cmdline = replacement ?? ""
        for append in [defaults.append, groupSettings.append, own.append].compactMap({ $0 }) where !append.isEmpty {
            cmdline += cmdline.isEmpty ? append : " " + append
        }
        var resolution = Resolution(image: image, cmdline: cmdline, replacesImageCommandLine: replacement != nil)
        resolution.applyNearest(from: [defaults, groupSettings, own])
        return resolution
    }

    /// Every image name the inventory refers to, with where (for "unknown image" errors).
    public var imageReferences: [(name: String, location: ConfigLocation?)] {
        var refs: [(String, ConfigLocation?)] = []
        if let image = defaults.image { refs.append((image, defaults.location)) }
        for (_, settings) in groups.sorted(by: { $0.key < $1.key }) { if let image = settings.image { refs.append((image, settings.location)) } }
        for range in ranges { if let image = range.settings.image { refs.append((image, range.location)) } }
        for node in nodes { if let image = node.settings.image { refs.append((image, node.location)) } }
        return refs
    }

    /// Every reference to an image that is not in `images`, and every node left without one (one
    /// error, or `ConfigErrors` for several).
    public func checkImages(_ images: Set<String>) throws {
        var errors: [ConfigError] = []
        for ref in imageReferences where !images.contains(ref.name) {
            let hint = closestMatch(to: ref.name, in: Array(images)).map { "did you mean '\($0)'?" }
                ?? (images.isEmpty ? "no images are published" : "published: \(images.sorted().joined(separator: ", "))")
            errors.append(ConfigError(ref.location ?? ConfigLocation(file: file, line: 0, column: 0), "unknown image '\(ref.name)'", hint: hint))
        }
        for node in nodes where resolved(node).image == nil {
            errors.append(ConfigError(node.location, "node \(node.hostname) has no image", hint: "set 'image' on the node, its group or in 'defaults'"))
        }
        try ConfigErrors.throwIfAny(errors)
    }
}

extension Inventory.Resolution {
    /// The nearest `distribution:`, `seed_time:` and `arch:` of `levels`, given farthest first.
    mutating func applyNearest(from levels: [Inventory.Settings]) {
        for level in levels {
            if let mode = level.distribution { distribution = mode; distributionLocation = level.distributionLocation }
            if let seconds = level.seedTime { seedTime = seconds }
            if let arch = level.arch { self.arch = arch; archLocation = level.archLocation }
        }
    }
}

/// Strict loader for `nodes.yaml`, with the same located errors as recipes.
public enum InventoryLoader {
    public static func load(path: String) throws -> Inventory {
        let text: String
        do { text = try readTextFile(path) } catch {
            throw ConfigError(ConfigLocation(file: path, line: 0, column: 0), "cannot read the inventory: \(error)")
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws -> Inventory {
        let root = try YAMLValue.parse(text, file: file)
        let top = try root.map(allowed: ["network", "defaults", "groups", "ranges", "nodes", "discover"])
        let network = try parseNetwork(try top.required("network"))
        let directory = URL(fileURLWithPath: file).deletingLastPathComponent().path
        func parseSettings(_ value: YAMLValue, extra: [String]) throws -> (Inventory.Settings, YAMLMap) {
            try Self.parseSettings(value, extra: extra, baseDirectory: directory)
        }
        let defaults = try top["defaults"].map { try parseSettings($0, extra: []) }?.0 ?? Inventory.Settings()

        // Each group, range and node is checked on its own, so one run reports every broken entry
        // (the file's structure and `network` must hold first: everything else depends on them).
        var errors: [ConfigError] = []
        func collecting(_ body: () throws -> Void) throws {
            do { try body() } catch let error as ConfigError { errors.append(error) }
        }
        var groups: [String: Inventory.Settings] = [:]
        for pair in try top["groups"]?.pairs() ?? [] {
            try collecting {
                let name = try nonEmpty(pair.key)
                groups[name] = try parseSettings(pair.value, extra: []).0
            }
        }
        func checkGroup(_ value: YAMLValue?) throws -> String? {
            guard let value else { return nil }
            let name = try value.string()
            guard groups[name] != nil else {
                let hint = closestMatch(to: name, in: Array(groups.keys)).map { "did you mean '\($0)'?" }
                    ?? (groups.isEmpty ? "no groups are defined" : "groups: \(groups.keys.sorted().joined(separator: ", "))")
                throw value.error("unknown group '\(name)'", hint: hint)
            }
            return name
        }

        var ranges: [Inventory.Range] = []
        for value in try top["ranges"]?.list() ?? [] { try collecting {
            let (settings, map) = try parseSettings(value, extra: ["cidr", "group"])
            if let loaderValue = map["loader"] {
                throw loaderValue.error("a range cannot choose the loader", hint: "DHCP picks the loader before the machine has an address; set 'loader' in defaults, a group or a node")
            }
            let cidrValue = try map.required("cidr")
            guard let cidr = IPv4Network(try cidrValue.string()) else {
                throw cidrValue.error("'\(try cidrValue.string())' is not a network like 10.77.0.96/28")
            }
            guard cidr.prefix % 4 == 0, cidr.prefix >= 4 else {
                throw cidrValue.error("prefix /\(cidr.prefix) has no pxelinux file name", hint: "pxelinux drops one hex digit at a time: use /4, /8, ... /28")
            }
            guard network.subnet.contains(cidr.address) else {
                throw cidrValue.error("\(cidr) is outside the subnet \(network.subnet)")
            }
            if let other = ranges.first(where: { $0.network.prefix == cidr.prefix && $0.network.contains(cidr.address) }) {
                throw cidrValue.error("duplicate range \(cidr): also at \(other.location)", hint: "both would write pxelinux.cfg/\(other.pxelinuxName); merge them")
            }
            ranges.append(Inventory.Range(network: cidr, group: try checkGroup(map["group"]), settings: settings, location: value.location))
        } }

        var nodes: [Inventory.Node] = []
        var byMAC: [MACAddress: Inventory.Node] = [:], byName: [String: Inventory.Node] = [:], byIP: [IPv4Address: Inventory.Node] = [:]
        for value in try top["nodes"]?.list() ?? [] { try collecting {
            let (settings, map) = try parseSettings(value, extra: ["mac", "hostname", "ip", "group", "smbios"])
            let macValue = try map.required("mac")
            guard let mac = MACAddress(try macValue.string()) else {
                throw macValue.error("malformed MAC '\(try macValue.string())'", hint: "six hex bytes, e.g. 52:54:00:77:00:01")
            }
            let nameValue = try map.required("hostname")
            let hostname = try nonEmpty(nameValue)
            guard hostname.count <= 63, hostname.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }), hostname.first != "-" else {
                throw nameValue.error("invalid hostname '\(hostname)'", hint: "letters, digits and '-', at most 63")
            }
            var ip: IPv4Address?
            if let ipValue = map["ip"] {
                guard let parsed = IPv4Address(try ipValue.string()) else { throw ipValue.error("malformed IP address '\(try ipValue.string())'") }
                guard network.subnet.contains(parsed) else {
                    throw ipValue.error("\(parsed) is outside the subnet \(network.subnet)")
                }
                if parsed == network.subnet.address || parsed == network.subnet.broadcast || parsed == network.server {
                    throw ipValue.error("\(parsed) is the \(parsed == network.server ? "server's own address" : "network or broadcast address")")
                }
                if let pool = network.pool, pool.contains(parsed) {
                    throw ipValue.error("\(parsed) is inside the dynamic pool \(pool.lowerBound)-\(pool.upperBound)", hint: "fixed addresses must be outside the pool")
                }
                ip = parsed
            }
            var node = Inventory.Node(mac: mac, hostname: hostname, ip: ip, group: try checkGroup(map["group"]),
                                      settings: settings, location: value.location)
            if let smbios = map["smbios"] { node.smbios = try parseSMBIOS(smbios) }
            if let other = byMAC[mac] {
                throw macValue.error("duplicate MAC \(mac): \(hostname) and \(other.hostname) (\(other.location))")
            }
            if let other = byName[hostname.lowercased()] {
                throw nameValue.error("duplicate hostname '\(hostname)': also \(other.mac) (\(other.location))")
            }
            if let ip, let other = byIP[ip] {
                throw map["ip"]!.error("duplicate IP \(ip): \(hostname) and \(other.hostname) (\(other.location))")
            }
            byMAC[mac] = node
            byName[hostname.lowercased()] = node
            if let ip { byIP[ip] = node }
            nodes.append(node)
        } }
        var discover: Inventory.Discover?
        if let value = top["discover"] { try collecting { discover = try parseDiscover(value, network: network, groups: groups) } }
        try ConfigErrors.throwIfAny(errors)
        return Inventory(file: file, network: network, defaults: defaults, groups: groups, ranges: ranges, nodes: nodes, discover: discover)
    }

    static func parseNetwork(_ value: YAMLValue) throws -> Inventory.Network {
        let map = try value.map(allowed: ["server", "subnet", "router", "dns", "domain", "pool", "lease_time", "http_port", "bios_loader"])
        func ip(_ value: YAMLValue) throws -> IPv4Address {
            guard let ip = IPv4Address(try value.string()) else { throw value.error("malformed IP address '\(try value.string())'") }
            return ip
        }
        let subnetValue = try map.required("subnet")
        guard let subnet = IPv4Network(try subnetValue.string()) else {
            throw subnetValue.error("'\(try subnetValue.string())' is not a network like 10.77.0.0/24")
        }
        let serverValue = try map.required("server")
        let server = try ip(serverValue)
        guard subnet.contains(server) else { throw serverValue.error("the server \(server) is outside the subnet \(subnet)") }
        var pool: ClosedRange<IPv4Address>?
        if let poolValue = map["pool"] {
            let parts = try poolValue.string().split(separator: "-").map { IPv4Address(String($0).trimmingCharacters(in: .whitespaces)) }
            guard parts.count == 2, let low = parts[0], let high = parts[1], low <= high else {
                throw poolValue.error("'\(try poolValue.string())' is not a range like 10.77.0.100-10.77.0.199")
            }
            guard subnet.contains(low), subnet.contains(high) else { throw poolValue.error("the pool is outside the subnet \(subnet)") }
            if (low...high).contains(server) { throw poolValue.error("the pool contains the server's own address \(server)") }
            pool = low...high
        }
        let loader = try map.string("bios_loader") ?? "lpxelinux.0"
        guard ["pxelinux.0", "lpxelinux.0", "undionly.kpxe"].contains(loader) else {
            throw map["bios_loader"]!.error("unknown BIOS loader '\(loader)'", hint: "pxelinux.0, lpxelinux.0 or undionly.kpxe")
        }
        return Inventory.Network(
            server: server, subnet: subnet, router: try map["router"].map(ip),
            dns: try map["dns"]?.list().map(ip) ?? [], domain: try map.string("domain"), pool: pool,
            leaseTime: try map.int("lease_time", in: 60...31_536_000) ?? 3600,
            httpPort: try map.int("http_port", in: 1...65535) ?? 80, biosLoader: loader)
    }

    static func parseSettings(_ value: YAMLValue, extra: [String], baseDirectory: String) throws -> (Inventory.Settings, YAMLMap) {
        let map = try value.map(allowed: ["image", "cmdline", "append", "loader", "bmc", "distribution", "seed_time", "arch"] + IdentitySettings.keys + extra)
        var settings = Inventory.Settings(image: try map.string("image"), cmdline: try map.string("cmdline"), append: try map.string("append"))
        settings.location = value.location
        settings.identity = try parseIdentity(map, baseDirectory: baseDirectory)
        if let bmc = map["bmc"] { settings.bmc = try parseBMC(bmc, baseDirectory: baseDirectory) }
        if let loaderValue = map["loader"] {
            let name = try loaderValue.string()
            guard let loader = Inventory.Loader(rawValue: name) else {
                throw loaderValue.error("unknown loader '\(name)'", hint: "pxelinux, ipxe or grub (or leave it out: the firmware decides)")
            }
            settings.loader = loader
        }
        if let value = map["distribution"] {
            let name = try value.string()
            guard let mode = Inventory.Distribution(rawValue: name) else {
                throw value.error("unknown distribution '\(name)'", hint: "http (from the boot server) or p2p (BitTorrent among the nodes, the server as web seed)")
            }
            settings.distribution = mode
            settings.distributionLocation = value.location
        }
        settings.seedTime = try map.int("seed_time", in: 0...86_400)
        if let value = map["arch"] {
            let name = try value.string()
            guard let arch = Architecture(rawValue: name) else {
                throw value.error("unknown architecture '\(name)'", hint: Architecture.allCases.map(\.rawValue).joined(separator: " or ") + ", as Debian names them")
            }
            settings.arch = arch
            settings.archLocation = value.location
        }
        for key in ["cmdline", "append"] where (try map.string(key))?.contains("\n") == true {
            throw map[key]!.error("the kernel command line must be one line")
        }
        return (settings, map)
    }
}
