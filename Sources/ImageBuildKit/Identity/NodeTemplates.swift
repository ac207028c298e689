import Foundation
import Mustache

/// Renders a node's files: Mustache templates (hummingbird-project/swift-mustache) over the node's
/// data, strict where Mustache is lenient.
///
/// **Data a template sees**: `hostname`, `fqdn` (with `network.domain`), `ip`, `mac`, `group`,
/// `image`, `domain`, `ip_octets` (`1`-`4`), `interfaces` (`name`, `mac`, `address`, `prefix`, `cidr`, `netmask`,
/// `gateway`, `mtu`), `vars`, `network` (`server`, `subnet`, `prefix`, `netmask`, `router`, `dns`,
/// `domain`) and `nodes`, every node of the inventory with the same fields as the node itself.
///
/// **Strict**: plain Mustache prints an unknown name as nothing; here a name no level defines
/// (`{{hostnmae}}`, `{{vars.rack}}` on a node without `rack`) is an error naming the node and the
/// file. A field a node lacks (`ip` of a node without a fixed address) is empty, not inherited from
/// the enclosing node, so `{{#nodes}}{{#ip}}…{{/ip}}{{/nodes}}` skips it. Output is text: no HTML
/// escaping.
///
/// **Render once**: a template whose output depends only on data every node shares (`nodes`,
/// `network`, `domain`: `/etc/hosts` over the cluster) is rendered once for all nodes. Which names a
/// render looked up is recorded, so this is decided by what the template did, not by guessing.
public final class NodeTemplates {
    public let inventory: Inventory
    private let nodeItems: [NodeItem]
    private let network: [String: Any]
    private var compiled: [String: MustacheTemplate] = [:]
    /// Output of node-independent templates, by template key.
    private var shared: [String: [UInt8]] = [:]

    /// Names whose value is the same for every node.
    static let sharedNames: Set<String> = ["nodes", "network", "domain"]

    public init(inventory: Inventory) {
        self.inventory = inventory
        let domain = inventory.network.domain
        var items: [NodeItem] = []
        items.reserveCapacity(inventory.nodes.count)
        for node in inventory.nodes {
            let identity = try? inventory.identity(of: node)
            items.append(NodeItem(node: node, domain: domain, image: inventory.resolved(node).image,
                                  vars: VarsContext(identity?.vars ?? [:], strict: nil),
                                  interfaces: (identity?.interfaces ?? []).map(InterfaceItem.init)))
        }
        nodeItems = items
        let net = inventory.network
        var network: [String: Any] = [
            "server": net.server.description, "subnet": net.subnet.description, "prefix": String(net.subnet.prefix),
            "netmask": net.subnet.mask.description, "dns": net.dns.map(\.description),
        ]
        network["router"] = net.router?.description ?? Absent()
        network["domain"] = net.domain ?? Absent()
        self.network = network
    }

    /// One rendered file.
    public struct Rendered: Sendable, Equatable {
        public var file: NodeFile
        public var bytes: [UInt8]
        /// The same bytes for every node (rendered once, or not a template and not per node).
        public var shared: Bool

        public init(file: NodeFile, bytes: [UInt8], shared: Bool) {
            self.file = file
            self.bytes = bytes
            self.shared = shared
        }

        /// A host-key file (key, public key, certificate, sshd drop-in) as a file of the node's secrets.
        public init(_ hostKey: HostKeyFile) {
            let file = NodeFile(path: "/" + hostKey.path, content: .inline("", firstLine: 0), mode: hostKey.mode,
                                owner: FileOwner(hostKey.owner) ?? .root, secret: true, template: false,
                                location: ConfigLocation(file: "host keys", line: 0, column: 0))
            self.init(file: file, bytes: hostKey.bytes, shared: false)
        }
    }

    /// Renders `file` for `identity`'s node. `read` reads a `source:` (the server passes one that
    /// reads secrets at request time). Errors are `ConfigError`s located in nodes.yaml or the source.
    public func render(_ file: NodeFile, for identity: NodeIdentity,
                       read: (String) throws -> [UInt8] = NodeTemplates.readSource) throws -> Rendered {
        let raw: [UInt8]
        let key: String
        switch file.content {
        case .inline(let text, _):
            key = "\(file.location)|\(file.path)"
            // Not shared: literal text is mostly one node's own (its interface units), and a file in
            // the shared archive that differs per node would split that archive per node.
            if !file.template { return Rendered(file: file, bytes: Array(text.utf8), shared: false) }
            raw = []  // the template text is in `file`
        case .source(let path):
            do { raw = try read(path) } catch {
                throw ConfigError(file.location, "cannot read \(path) for \(file.path): \(Self.reason(error))")
            }
            if !file.template { return Rendered(file: file, bytes: raw, shared: !file.secret) }
            key = Self.sourceKey(path, raw)
        }
        if let bytes = shared[key] { return Rendered(file: file, bytes: bytes, shared: true) }
        let template = try compile(file, key: key, source: raw)
        let recorder = Recorder()
        let context = NodeContext(identity: identity, domain: inventory.network.domain, nodes: nodeItems,
                                  network: network, recorder: recorder)
        let text = template.render(context)
        if let name = recorder.unknown.first {
            let hint = closestMatch(to: name, in: context.knownNames(for: name)).map { "did you mean '\($0)'?" }
                ?? (name.hasPrefix("vars.") ? "define it in defaults, the node's group or the node (vars:)" : nil)
            throw ConfigError(file.location, "\(file.path) for node \(identity.node.hostname): unknown variable '\(name)'", hint: hint)
        }
        let bytes = Array(text.utf8)
        let isShared = !file.secret && recorder.rootNames.isSubset(of: Self.sharedNames)
        if isShared { shared[key] = bytes }
        return Rendered(file: file, bytes: bytes, shared: isShared)
    }

    /// Checks that `file`'s template parses (publish and `nodes check` call this for each file once).
    public func check(_ file: NodeFile, read: (String) throws -> [UInt8] = NodeTemplates.readSource) throws {
        guard file.template else { return }
        switch file.content {
        case .inline: _ = try compile(file, key: "\(file.location)|\(file.path)", source: [])
        case .source(let path):
            let bytes: [UInt8]
            do { bytes = try read(path) } catch {
                throw ConfigError(file.location, "cannot read \(path) for \(file.path): \(Self.reason(error))")
            }
            _ = try compile(file, key: Self.sourceKey(path, bytes), source: bytes)
        }
    }

    /// A source template's cache key: its path and its content, so a file changed while the server
    /// keeps these templates (a rotated secret, new user-data) is compiled and rendered anew.
    static func sourceKey(_ path: String, _ bytes: [UInt8]) -> String { "\(path)|\(bytes.count)|\(bytes.hashValue)" }

    public static func readSource(_ path: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw RootfsError.system(operation: "read", path: path, errno: access(path, R_OK) == 0 ? EISDIR : errno)
        }
        return Array(data)
    }

    static func reason(_ error: Error) -> String {
        if case RootfsError.system(_, _, let code) = error { return String(cString: strerror(code)) }
        return "\(error)"
    }

    /// Text templates: the pragma turns off Mustache's HTML escaping.
    private static let pragma = "{{% CONTENT_TYPE: TEXT }}"

    static func describe(_ error: Error) -> String {
        switch error as? MustacheTemplate.Error {
        case .expectedSectionEnd?: "a section is not closed: {{#name}} or {{^name}} needs its {{/name}}"
        case .sectionCloseNameIncorrect?: "{{/name}} closes a section that is not the one open"
        case .unfinishedName?: "a tag is not closed with }}"
        case .invalidSetDelimiter?: "a {{=<% %>=}} delimiter change is malformed"
        default: "\(error)"
        }
    }

    private func compile(_ file: NodeFile, key: String, source: [UInt8]) throws -> MustacheTemplate {
        if let template = compiled[key] { return template }
        let text: String
        switch file.content {
        case .inline(let inline, _): text = inline
        case .source(let path):
            guard let decoded = String(validating: source, as: UTF8.self) else {
                throw ConfigError(ConfigLocation(file: path, line: 0, column: 0), "not UTF-8 text, so not a template",
                                  hint: "set 'template: false' on \(file.path) (\(file.location)) to copy it as it is")
            }
            text = decoded
        }
        do {
            let template = try MustacheTemplate(string: Self.pragma + text)
            compiled[key] = template
            return template
        } catch let error as MustacheTemplate.ParserError {
            let line = error.context.lineNumber
            let column = line == 1 ? max(1, error.context.columnNumber - Self.pragma.count) : error.context.columnNumber
            let location: ConfigLocation
            switch file.content {
            case .inline(_, let firstLine): location = ConfigLocation(file: file.location.file, line: firstLine + line - 1, column: column)
            case .source(let path): location = ConfigLocation(file: path, line: line, column: column)
            }
            throw ConfigError(location, "template of \(file.path): \(Self.describe(error.error))")
        }
    }
}

/// What a render looked up, to tell unknown names and node-independent templates apart.
final class Recorder {
    var rootNames: Set<String> = []
    var unknown: [String] = []
}

/// An empty value that stops Mustache's lookup from climbing to the enclosing object: a node in
/// `nodes` without `ip` must print nothing, not the rendering node's address.
struct Absent: MustacheCustomRenderable {
    var renderText: String { "" }
    var isNull: Bool { true }
}

/// The root of a render: the node itself, plus the shared data.
final class NodeContext: MustacheParent {
    let identity: NodeIdentity
    let fields: [String: Any]
    let recorder: Recorder

    init(identity: NodeIdentity, domain: String?, nodes: [NodeItem], network: [String: Any], recorder: Recorder) {
        self.identity = identity
        self.recorder = recorder
        let node = identity.node
        var fields = NodeItem.fields(node: node, domain: domain, image: identity.image)
        fields["vars"] = VarsContext(identity.vars, strict: recorder)
        fields["interfaces"] = identity.interfaces.map(InterfaceItem.init)
        fields["domain"] = domain ?? Absent()
        fields["nodes"] = nodes
        fields["network"] = network
        self.fields = fields
    }

    func child(named name: String) -> Any? {
        recorder.rootNames.insert(name)
        if let value = fields[name] { return value }
        recorder.unknown.append(name)
        return nil
    }

    func knownNames(for name: String) -> [String] {
        guard name.hasPrefix("vars.") else { return Array(fields.keys) }
        return identity.vars.keys.map { "vars." + $0 }
    }
}

/// A node as an entry of `nodes`.
final class NodeItem: MustacheParent {
    let fields: [String: Any]

    init(node: Inventory.Node, domain: String?, image: String?, vars: VarsContext, interfaces: [InterfaceItem]) {
        var fields = Self.fields(node: node, domain: domain, image: image)
        fields["vars"] = vars
        fields["interfaces"] = interfaces
        self.fields = fields
    }

    static func fields(node: Inventory.Node, domain: String?, image: String?) -> [String: Any] {
        [
            "hostname": node.hostname, "mac": node.mac.description,
            "ip": node.ip?.description ?? Absent(), "group": node.group ?? Absent(), "image": image ?? Absent(),
            "fqdn": domain.map { "\(node.hostname).\($0)" } ?? Absent(),
            "ip_octets": node.ip.map(OctetsItem.init) ?? Absent(),
        ]
    }

    func child(named name: String) -> Any? { fields[name] }
}

/// `vars`. The rendering node's own are strict (`strict` records a missing key as unknown): a
/// typo is an error. Another node's (inside `nodes`) are lenient: a key only some nodes set prints
/// nothing for the rest. Maps inside vars let a miss climb, as Mustache does, since they are often
/// section contexts (`{{#vars.mounts}}{{path}} {{hostname}}{{/vars.mounts}}`).
final class VarsContext: MustacheParent {
    let values: [String: TemplateValue]
    let strict: Recorder?
    let top: Bool

    init(_ values: [String: TemplateValue], strict: Recorder?, top: Bool = true) {
        self.values = values
        self.strict = strict
        self.top = top
    }

    func child(named name: String) -> Any? {
        guard let value = values[name] else {
            guard top else { return nil }
            strict?.unknown.append("vars.\(name)")
            return Absent()
        }
        return Self.convert(value)
    }

    static func convert(_ value: TemplateValue) -> Any {
        switch value {
        case .text(let text): text
        case .bool(let bool): bool
        case .list(let list): list.map(convert)
        case .map(let map): VarsContext(map, strict: nil, top: false)
        }
    }
}

/// `ip_octets`: the fixed address's four numbers, `{{ip_octets.1}}` to `{{ip_octets.4}}`, so an
/// address in another subnet is a template (`bmc: {address: "10.78.{{ip_octets.3}}.{{ip_octets.4}}"}`).
final class OctetsItem: MustacheParent {
    let octets: [String]

    init(_ address: IPv4Address) {
        let value = address.rawValue
        octets = [24, 16, 8, 0].map { String((value >> $0) & 0xff) }
    }

    func child(named name: String) -> Any? {
        guard let index = Int(name), (1...4).contains(index) else { return nil }
        return octets[index - 1]
    }
}

/// An entry of `interfaces`.
final class InterfaceItem: MustacheParent {
    let fields: [String: Any]

    init(_ interface: NodeIdentity.Interface) {
        let netmask = IPv4Network(address: interface.address, prefix: interface.prefix)?.mask.description ?? ""
        fields = [
            "name": interface.name ?? Absent(), "mac": interface.mac?.description ?? Absent(),
            "address": interface.address.description, "prefix": String(interface.prefix),
            "cidr": "\(interface.address)/\(interface.prefix)", "netmask": netmask,
            "gateway": interface.gateway?.description ?? Absent(), "mtu": interface.mtu.map(String.init) ?? Absent(),
        ]
    }

    func child(named name: String) -> Any? { fields[name] }
}
