import Foundation

/// SMBIOS values a node must present (stage 1 reads them from `/sys/class/dmi/id/` and sends them
/// with its secrets request). Unset fields are not checked.
public struct SMBIOSIdentity: Sendable, Equatable {
    /// `product_uuid`, compared case-insensitively.
    public var productUUID: String?
    public var productSerial: String?
    public var assetTag: String?

    public init(productUUID: String? = nil, productSerial: String? = nil, assetTag: String? = nil) {
        self.productUUID = productUUID
        self.productSerial = productSerial
        self.assetTag = assetTag
    }

    public var isEmpty: Bool { productUUID == nil && productSerial == nil && assetTag == nil }
}

extension InventoryLoader {
    static func parseSMBIOS(_ value: YAMLValue) throws -> SMBIOSIdentity {
        let map = try value.map(allowed: ["product_uuid", "product_serial", "asset_tag"])
        var identity = SMBIOSIdentity()
        if let uuidValue = map["product_uuid"] {
            let text = try uuidValue.string().lowercased()
            guard UUID(uuidString: text) != nil else {
                throw uuidValue.error("'\(text)' is not a UUID", hint: "as /sys/class/dmi/id/product_uuid prints it")
            }
            identity.productUUID = text
        }
        identity.productSerial = try map.string("product_serial")
        identity.assetTag = try map.string("asset_tag")
        if identity.isEmpty { throw value.error("smbios names no value", hint: "product_uuid, product_serial or asset_tag") }
        return identity
    }
}

/// Where a merged value came from, for `nodes explain`.
public enum IdentityLevel: Sendable, Equatable, CustomStringConvertible {
    case builtIn
    case defaults
    case group(String)
    case range(IPv4Network)
    case node

    public var description: String {
        switch self {
        case .builtIn: "built in"
        case .defaults: "defaults"
        case .group(let name): "group \(name)"
        case .range(let network): "range \(network)"
        case .node: "node"
        }
    }
}

/// One node's identity, merged from every level that applies to it: defaults < group < range (the
/// most specific range holding the node's fixed address) < node. `NodeIdentity.resolve` is the one
/// place that decides the merge; publish, the server and `nodes explain` all ask it.
public struct NodeIdentity: Sendable, Equatable {
    public struct Interface: Sendable, Equatable {
        public var name: String?
        public var mac: MACAddress?
        public var address: IPv4Address
        public var prefix: Int
        public var gateway: IPv4Address?
        public var mtu: Int?

        /// `/etc/systemd/network/20-imagebuild-<name or mac>.network`: the interface by name (or MAC),
        /// its address, gateway and MTU.
        public var networkdFile: NodeFile {
            let key = name ?? mac!.hyphenated
            var text = "# imagebuild: from nodes.yaml (interfaces:)\n[Match]\n"
            text += name.map { "Name=\($0)\n" } ?? "MACAddress=\(mac!)\n"
            if let mtu { text += "\n[Link]\nMTUBytes=\(mtu)\n" }
            text += "\n[Network]\nAddress=\(address)/\(prefix)\n"
            if let gateway { text += "Gateway=\(gateway)\n" }
            return NodeFile(path: "/etc/systemd/network/20-imagebuild-\(key).network", content: .inline(text, firstLine: 0),
                            mode: 0o644, owner: .root, secret: false, template: false,
                            location: ConfigLocation(file: "built-in interface \(key)", line: 1, column: 1))
        }
    }

    public struct File: Sendable, Equatable {
        public var file: NodeFile
        public var level: IdentityLevel
    }

    public var node: Inventory.Node
    public var vars: [String: TemplateValue]
    /// Where each variable came from.
    public var varLevels: [String: IdentityLevel]
    /// By path, sorted: built-in files first replaced by any level's file with the same path.
    public var files: [File]
    public var interfaces: [Interface]
    public var hostKeys: HostKeysMode
    public var hostCA: String?
    /// The image the node boots (nil: none resolves).
    public var image: String?
    /// `cloud_init:`, each sub-key from the nearest level that sets it.
    public var cloudInit = CloudInit()

    public struct CloudInit: Sendable, Equatable {
        public var enabled = false
        public var userData: NodeFile?
        public var vendorData: NodeFile?

        /// Each key from the nearest of `levels` (nearest last) that sets it.
        init(merging levels: [(IdentityLevel, IdentitySettings)]) {
            for (_, settings) in levels {
                let level = settings.cloudInit
                if let enabled = level.enabled { self.enabled = enabled }
                if let userData = level.userData { self.userData = userData }
                if let vendorData = level.vendorData { self.vendorData = vendorData }
            }
        }

        init() {}
    }

    public var secretFiles: [File] { files.filter(\.file.secret) }
    public var publicFiles: [File] { files.filter { !$0.file.secret } }
    /// The node gets secrets from the live server: secret files or persistent host keys.
    public var hasSecrets: Bool { hostKeys == .persistent || files.contains(where: \.file.secret) }
}

extension Inventory {
    /// Whether `node`'s command line names a cloud-init seed, without merging the rest of its identity.
    public func cloudInitEnabled(_ node: Node) -> Bool { NodeIdentity.CloudInit(merging: identityLevels(of: node)).enabled }

    /// The levels of nodes.yaml that apply to `node`, nearest last: defaults, its group, the most
    /// specific range holding its fixed address, the node. Identity and BMC settings merge over these.
    func settingsLevels(of node: Node) -> [(IdentityLevel, Settings)] {
        var levels: [(IdentityLevel, Settings)] = [(.defaults, defaults)]
        if let group = node.group, let settings = groups[group] { levels.append((.group(group), settings)) }
        if let ip = node.ip, let range = ranges.filter({ $0.network.contains(ip) }).max(by: { $0.network.prefix < $1.network.prefix }) {
            levels.append((.range(range.network), range.settings))
        }
        levels.append((.node, node.settings))
        return levels
    }

    func identityLevels(of node: Node) -> [(IdentityLevel, IdentitySettings)] {
        settingsLevels(of: node).map { ($0.0, $0.1.identity) }
    }

    /// The files every node gets unless a level replaces them (same path).
    public static let builtInFiles: [NodeFile] = [
        NodeFile(path: "/etc/hostname", content: .inline("{{hostname}}\n", firstLine: 0), mode: 0o644, owner: .root,
                 secret: false, template: true, location: ConfigLocation(file: "built-in /etc/hostname", line: 1, column: 1)),
        NodeFile(path: "/etc/hosts", content: .inline(builtInHosts, firstLine: 0), mode: 0o644, owner: .root,
                 secret: false, template: true, location: ConfigLocation(file: "built-in /etc/hosts", line: 1, column: 1)),
    ]

    static let builtInHosts = """
        127.0.0.1\tlocalhost
        ::1\tlocalhost ip6-localhost ip6-loopback
        {{#nodes}}
        {{#ip}}{{ip}}\t{{#fqdn}}{{fqdn}} {{/fqdn}}{{hostname}}
        {{/ip}}
        {{/nodes}}
        """

    /// `node`'s merged identity. Interfaces without an address after merging are an error located at
    /// the node (and the level that named the interface).
    public func identity(of node: Node) throws -> NodeIdentity {
        var vars: [String: TemplateValue] = [:], varLevels: [String: IdentityLevel] = [:]
        var files: [String: NodeIdentity.File] = [:]
        for file in Self.builtInFiles { files[file.path] = .init(file: file, level: .builtIn) }
        var interfaces: [String: InterfaceSettings] = [:], interfaceOrder: [String] = []
        var hostKeys = HostKeysMode.persistent
        var hostCA: String?
        let levels = identityLevels(of: node)
        for (level, settings) in levels {
            for (key, value) in settings.vars {
                vars[key] = value
                varLevels[key] = level
            }
            for file in settings.files { files[file.path] = .init(file: file, level: level) }
            for interface in settings.interfaces {
                guard var merged = interfaces[interface.key] else {
                    interfaces[interface.key] = interface
                    interfaceOrder.append(interface.key)
                    continue
                }
                merged.mac = interface.mac ?? merged.mac
                merged.name = interface.name ?? merged.name
                merged.address = interface.address ?? merged.address
                merged.prefix = interface.prefix ?? merged.prefix
                merged.gateway = interface.gateway ?? merged.gateway
                merged.mtu = interface.mtu ?? merged.mtu
                merged.location = interface.location
                interfaces[interface.key] = merged
            }
            if let mode = settings.sshHostKeys { hostKeys = mode }
            if let ca = settings.sshHostCA { hostCA = ca }
        }
        var resolvedInterfaces: [NodeIdentity.Interface] = []
        for key in interfaceOrder {
            let interface = interfaces[key]!
            guard let address = interface.address, let prefix = interface.prefix else {
                throw ConfigError(node.location, "interface \(key) of node \(node.hostname) has no address",
                                  hint: "set 'address' (like 10.78.0.11/24) on the node; the interface is named at \(interface.location)")
            }
            resolvedInterfaces.append(.init(name: interface.name, mac: interface.mac, address: address, prefix: prefix,
                                            gateway: interface.gateway, mtu: interface.mtu))
        }
        // Each extra interface as a systemd-networkd unit (what systemd images configure from), unless a
        // level gives a file of that path itself; cloud-init images get them in network-config too.
        for interface in resolvedInterfaces {
            let file = interface.networkdFile
            if files[file.path] == nil { files[file.path] = .init(file: file, level: .builtIn) }
        }
        return NodeIdentity(node: node, vars: vars, varLevels: varLevels,
                            files: files.values.sorted { $0.file.path < $1.file.path }, interfaces: resolvedInterfaces,
                            hostKeys: hostKeys, hostCA: hostCA, image: resolved(node).image,
                            cloudInit: NodeIdentity.CloudInit(merging: levels))
    }
}
