import Foundation
import Yams

/// What makes a node itself at boot, as `nodes.yaml` says it at one level (defaults, a group, a
/// range or a node): template variables, files, extra interfaces and SSH host keys. Levels merge
/// defaults < group < range < node (`NodeIdentity`), key by key for `vars`, path by path for
/// `files`, interface by interface for `interfaces`, sub-key by sub-key for `cloud_init`; the nearest
/// `ssh_host_keys`/`ssh_host_ca` wins.
public struct IdentitySettings: Sendable, Equatable {
    public var vars: [String: TemplateValue] = [:]
    public var files: [NodeFile] = []
    public var interfaces: [InterfaceSettings] = []
    public var sshHostKeys: HostKeysMode?
    /// The site CA's private key that signs host certificates (a path, relative to nodes.yaml's folder).
    public var sshHostCA: String?
    public var sshHostCALocation: ConfigLocation?
    public var cloudInit = CloudInitSettings()

    public init() {}

    public var isEmpty: Bool { self == IdentitySettings() }

    public static let keys = ["vars", "files", "interfaces", "ssh_host_keys", "ssh_host_ca", "cloud_init"]
}

/// `ssh_host_keys:`: `persistent` (the default) keeps each node's host keys in the server's state
/// directory and hands them to the node as secrets at every boot; `none` leaves the image's own.
public enum HostKeysMode: String, Sendable, Equatable, CaseIterable {
    case persistent
    case none
}

/// A `vars:` value: YAML scalars stay text (templates print them as written), lists and maps nest.
public enum TemplateValue: Sendable, Equatable {
    case text(String)
    case bool(Bool)
    case list([TemplateValue])
    case map([String: TemplateValue])
}

/// One file a node gets in its root (`files:`).
public struct NodeFile: Sendable, Equatable {
    public enum Content: Sendable, Equatable {
        /// `content:` in nodes.yaml; `firstLine` is the line of nodes.yaml its first line is on.
        case inline(String, firstLine: Int)
        /// `source:`, resolved against nodes.yaml's folder.
        case source(String)
    }

    /// Where on the node, absolute and normalised (`/etc/munge/munge.key`).
    public var path: String
    public var content: Content
    /// Permission bits on the node (default 0644, 0600 for a secret).
    public var mode: UInt32
    public var owner: FileOwner
    /// Delivered only by the live server, to the node itself (see `SecretAdmission`); never written
    /// into the boot root. Its source is read when the node asks, so a rotated key needs no publish.
    public var secret: Bool
    /// Rendered as a template (the default); `template: false` copies the bytes (binary keys).
    public var template: Bool
    public var location: ConfigLocation

    /// The path inside an overlay archive: relative to the node's root.
    public var archivePath: String { String(path.dropFirst()) }
}

/// `owner:` of a file: numeric ids are written into the archive; names are resolved on the node
/// against the image's own `/etc/passwd` (the server cannot know them), by stage 1.
public struct FileOwner: Sendable, Equatable, CustomStringConvertible {
    public var user: String
    public var group: String?

    public static let root = FileOwner(user: "0", group: "0")

    /// `root`, `0`, `0:0`, `munge`, `munge:munge`, `1000:users`.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard (1...2).contains(parts.count), parts.allSatisfy(Self.isName) else { return nil }
        self.init(user: parts[0], group: parts.count == 2 ? parts[1] : nil)
    }

    init(user: String, group: String?) {
        self.user = user
        self.group = group
    }

    static func isName(_ part: String) -> Bool {
        guard let first = part.utf8.first, part.utf8.count <= 32 else { return false }
        return first != UInt8(ascii: "-") && part.utf8.allSatisfy {
            ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5f || $0 == 0x2d || $0 == 0x2e
        }
    }

    /// Numeric ids, where both parts are numbers (or `root`); nil when a name must be resolved on the node.
    public var numeric: (uid: UInt32, gid: UInt32)? {
        func id(_ text: String) -> UInt32? { text == "root" ? 0 : UInt32(text) }
        guard let uid = id(user) else { return nil }
        guard let group else { return (uid, uid == 0 ? 0 : uid) }
        guard let gid = id(group) else { return nil }
        return (uid, gid)
    }

    public var description: String { group.map { "\(user):\($0)" } ?? user }
}

/// An extra interface of a node (`interfaces:`), by kernel name or MAC, with a static address.
/// Levels merge field by field for the same key, so a group can set `mtu` and a node its address.
public struct InterfaceSettings: Sendable, Equatable {
    public var name: String?
    public var mac: MACAddress?
    public var address: IPv4Address?
    public var prefix: Int?
    public var gateway: IPv4Address?
    public var mtu: Int?
    public var location: ConfigLocation

    /// What levels merge on: the name, else the MAC.
    public var key: String { name ?? mac?.description ?? "" }
}

extension InventoryLoader {
    /// The identity keys of one level's mapping (the caller opened it with `IdentitySettings.keys` allowed).
    static func parseIdentity(_ map: YAMLMap, baseDirectory: String) throws -> IdentitySettings {
        var identity = IdentitySettings()
        if let vars = map["vars"] {
            for pair in try vars.pairs() {
                let key = try pair.key.string()
                guard isVariableName(key) else {
                    throw pair.key.error("'\(key)' is not a variable name", hint: "letters, digits and '_', not starting with a digit")
                }
                identity.vars[key] = try templateValue(pair.value)
            }
        }
        var paths: [String: ConfigLocation] = [:]
        for value in try map["files"]?.list() ?? [] {
            let file = try parseFile(value, baseDirectory: baseDirectory)
            if let other = paths[file.path] {
                throw value.error("duplicate file \(file.path): also at \(other)")
            }
            paths[file.path] = file.location
            identity.files.append(file)
        }
        var interfaceKeys: [String: ConfigLocation] = [:]
        for value in try map["interfaces"]?.list() ?? [] {
            let interface = try parseInterface(value)
            if let other = interfaceKeys[interface.key] {
                throw value.error("duplicate interface \(interface.key): also at \(other)")
            }
            interfaceKeys[interface.key] = interface.location
            identity.interfaces.append(interface)
        }
        if let modeValue = map["ssh_host_keys"] {
            let text = try modeValue.string()
            guard let mode = HostKeysMode(rawValue: text) else {
                throw modeValue.error("unknown ssh_host_keys '\(text)'", hint: "persistent (the default) or none")
            }
            identity.sshHostKeys = mode
        }
        if let caValue = map["ssh_host_ca"] {
            identity.sshHostCA = resolve(try caValue.string(), against: baseDirectory)
            identity.sshHostCALocation = caValue.location
        }
        if let cloudInit = map["cloud_init"] {
            identity.cloudInit = try parseCloudInit(cloudInit, baseDirectory: baseDirectory)
        }
        return identity
    }

    static func isVariableName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, !(first.properties.numericType != nil) else { return false }
        return name.unicodeScalars.allSatisfy { ($0.isASCII && ($0.properties.isAlphabetic || $0.properties.numericType != nil)) || $0 == "_" }
    }

    static func templateValue(_ value: YAMLValue) throws -> TemplateValue {
        switch value.node {
        case .scalar(let scalar):
            if scalar.style == .plain, ["true", "false"].contains(scalar.string) { return .bool(scalar.string == "true") }
            return .text(scalar.string)
        case .sequence:
            return .list(try value.list().map(templateValue))
        case .mapping:
            var map: [String: TemplateValue] = [:]
            for pair in try value.pairs() { map[try pair.key.string()] = try templateValue(pair.value) }
            return .map(map)
        case .alias:
            throw value.error("YAML aliases are not supported in vars")
        }
    }

    static func resolve(_ path: String, against directory: String) -> String {
        path.hasPrefix("/") ? path : URL(fileURLWithPath: directory).appendingPathComponent(path).standardizedFileURL.path
    }

    static func parseFile(_ value: YAMLValue, baseDirectory: String) throws -> NodeFile {
        let map = try value.map(allowed: ["path", "content", "source", "mode", "owner", "secret", "template"])
        let pathValue = try map.required("path")
        let path = try pathValue.string()
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard path.hasPrefix("/"), path.count > 1, !path.hasSuffix("/"),
              !parts.dropFirst().contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }),
              !path.utf8.contains(where: { $0 < 0x20 || $0 == 0x7f }) else {
            throw pathValue.error("'\(path)' is not an absolute file path", hint: "like /etc/slurm/slurm.conf: no '.', '..', '//' or trailing '/'")
        }
        if let top = parts.dropFirst().first, ["proc", "sys", "dev", "run"].contains(top) {
            throw pathValue.error("'\(path)' is under /\(top), which stage 2 mounts over", hint: "place files where the image keeps them (/etc, /usr/local, /opt, /var)")
        }
        let secret = try map.bool("secret") ?? false
        let content: NodeFile.Content
        switch (map["content"], map["source"]) {
        case (let inline?, nil):
            if secret {
                throw inline.error("a secret cannot be inline", hint: "nodes.yaml is readable by anyone who can read the config; put the secret in a file only root can read and name it with 'source:'")
            }
            content = try inlineContent(inline)
        case (nil, let source?):
            let text = try source.string()
            guard !text.isEmpty else { throw source.error("empty source path") }
            content = .source(resolve(text, against: baseDirectory))
        case (.some, .some):
            throw map.keyLocation("source")!.error("a file has 'content' or 'source', not both")
        case (nil, nil):
            throw value.error("the file \(path) has neither 'content' nor 'source'")
        }
        var mode: UInt32 = secret ? 0o600 : 0o644
        if let modeValue = map["mode"] {
            let text = try modeValue.string()
            guard (3...4).contains(text.count), let parsed = UInt32(text, radix: 8), parsed <= 0o7777 else {
                throw modeValue.error("bad mode '\(text)'", hint: "octal permission bits in quotes, like \"0640\"")
            }
            if secret && parsed & 0o004 != 0 {
                throw modeValue.error("a secret with mode \(text) would be world-readable on the node", hint: "use \"0600\", or \"0640\" with a group")
            }
            mode = parsed
        }
        var owner = FileOwner.root
        if let ownerValue = map["owner"] {
            let text = try ownerValue.string()
            guard let parsed = FileOwner(text) else {
                throw ownerValue.error("bad owner '\(text)'", hint: "user or user:group, by name or number (munge:munge, 0:0)")
            }
            owner = parsed
        }
        return NodeFile(path: path, content: content, mode: mode, owner: owner, secret: secret,
                        template: try map.bool("template") ?? true, location: value.location)
    }

    /// `content:` text, with the nodes.yaml line its first line is on (a `|` block starts on the next).
    static func inlineContent(_ value: YAMLValue) throws -> NodeFile.Content {
        var firstLine = value.location.line
        if case .scalar(let scalar) = value.node, scalar.style == .literal || scalar.style == .folded { firstLine += 1 }
        return .inline(try value.string(), firstLine: firstLine)
    }

    static func parseInterface(_ value: YAMLValue) throws -> InterfaceSettings {
        let map = try value.map(allowed: ["name", "mac", "address", "gateway", "mtu"])
        var interface = InterfaceSettings(location: value.location)
        if let nameValue = map["name"] {
            let name = try nameValue.string()
            guard (1...15).contains(name.utf8.count), name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: ":") }) else {
                throw nameValue.error("'\(name)' is not an interface name", hint: "a kernel name like ib0 or eth1 (at most 15 characters)")
            }
            interface.name = name
        }
        if let macValue = map["mac"] {
            guard let mac = MACAddress(try macValue.string()) else {
                throw macValue.error("malformed MAC '\(try macValue.string())'", hint: "six hex bytes, e.g. 52:54:00:77:00:01")
            }
            interface.mac = mac
        }
        guard interface.name != nil || interface.mac != nil else {
            throw value.error("an interface needs 'name' or 'mac'")
        }
        if let addressValue = map["address"] {
            let text = try addressValue.string()
            let parts = text.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 2, let address = IPv4Address(parts[0]), let network = IPv4Network(text),
                  network.prefix == 32 || (address != network.address && address != network.broadcast) else {
                throw addressValue.error("'\(text)' is not a host address with its prefix, like 10.78.0.11/24")
            }
            interface.address = address
            interface.prefix = network.prefix
        }
        if let gatewayValue = map["gateway"] {
            guard let gateway = IPv4Address(try gatewayValue.string()) else {
                throw gatewayValue.error("malformed IP address '\(try gatewayValue.string())'")
            }
            interface.gateway = gateway
        }
        interface.mtu = try map.int("mtu", in: 68...65520)
        return interface
    }
}
