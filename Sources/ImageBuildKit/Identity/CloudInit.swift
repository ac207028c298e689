import Crypto
import Foundation
import Yams

/// `cloud_init:` at one level of nodes.yaml; each sub-key is taken from the nearest level that sets it
/// (`NodeIdentity.cloudInit`).
public struct CloudInitSettings: Sendable, Equatable {
    public var enabled: Bool?
    /// A Mustache template over the node's data, like `files` (path `user-data` in error messages).
    public var userData: NodeFile?
    public var vendorData: NodeFile?

    public init() {}
}

extension InventoryLoader {
    static func parseCloudInit(_ value: YAMLValue, baseDirectory: String) throws -> CloudInitSettings {
        let map = try value.map(allowed: ["enabled", "user_data", "vendor_data"])
        var settings = CloudInitSettings()
        settings.enabled = try map.bool("enabled")
        settings.userData = try map["user_data"].map { try parseCloudInitDocument($0, name: "user-data", baseDirectory: baseDirectory) }
        settings.vendorData = try map["vendor_data"].map { try parseCloudInitDocument($0, name: "vendor-data", baseDirectory: baseDirectory) }
        return settings
    }

    /// `user_data: TEXT`, or `{content: TEXT}` / `{source: PATH}` with an optional `template: false`.
    static func parseCloudInitDocument(_ value: YAMLValue, name: String, baseDirectory: String) throws -> NodeFile {
        var content: NodeFile.Content
        var template = true
        if case .scalar = value.node {
            content = try inlineContent(value)
        } else {
            let map = try value.map(allowed: ["content", "source", "template"])
            switch (map["content"], map["source"]) {
            case (let inline?, nil): content = try inlineContent(inline)
            case (nil, let source?):
                let text = try source.string()
                guard !text.isEmpty else { throw source.error("empty source path") }
                content = .source(resolve(text, against: baseDirectory))
            case (.some, .some): throw map.keyLocation("source")!.error("\(name) has 'content' or 'source', not both")
            case (nil, nil): throw value.error("\(name) has neither 'content' nor 'source'")
            }
            template = try map.bool("template") ?? true
        }
        if case .inline(let text, _) = content, let problem = CloudInit.userDataProblem(Array(text.utf8)) {
            throw value.error("\(name) \(problem)", hint: CloudInit.userDataHint)
        }
        return NodeFile(path: name, content: content, mode: 0o644, owner: .root, secret: false, template: template,
                        location: value.location)
    }
}

/// A node's cloud-init NoCloud datasource, as `imagebuild serve` answers `GET /cloud-init/<mac>/<name>`.
public struct CloudInitDocuments: Sendable, Equatable {
    public var metaData: String
    public var userData: [UInt8]
    public var vendorData: [UInt8]
    public var networkConfig: String
    public var instanceID: String

    /// The document `name` (`meta-data`, `user-data`, `vendor-data`, `network-config`); nil for others.
    public func document(named name: String) -> [UInt8]? {
        switch name {
        case "meta-data": Array(metaData.utf8)
        case "user-data": userData
        case "vendor-data": vendorData
        case "network-config": Array(networkConfig.utf8)
        default: nil
        }
    }
}

/// cloud-init's NoCloud datasource over HTTP: the node's kernel command line names
/// `ds=nocloud-net;s=<http base>/cloud-init/<mac>/` and cloud-init fetches the documents below it.
///
/// Nothing in it is secret: templates see the node's data (hostname, addresses, vars), never a
/// file's content, and `user_data`/`vendor_data` are not `secret:` files. Secrets come with the secrets
/// overlay, which stage 1 lays before `switch_root`, so before cloud-init runs.
public enum CloudInit {
    public static let prefix = "/cloud-init/"
    public static let documentNames = ["meta-data", "user-data", "vendor-data", "network-config"]
    /// What a node without `user_data` (or `vendor_data`) gets: valid cloud-config that does nothing.
    public static let emptyCloudConfig = "#cloud-config\n{}\n"

    /// The seed URL's path for a node (`s=` on its command line); ends in `/`, as cloud-init appends the names.
    public static func seedPath(_ mac: MACAddress) -> String { prefix + mac.hyphenated + "/" }

    /// The kernel parameter. `;` is plain text to pxelinux's APPEND and to iPXE (which splits a line at
    /// whitespace and ends a command only at a `;` token of its own), so the documented form is used.
    public static func kernelParameter(seedURL: String) -> String { "ds=nocloud-net;s=\(seedURL)" }

    /// First lines cloud-init acts on; any other user-data is logged as unhandled and ignored, so a
    /// node would boot without its configuration: an error at load, `nodes check` and publish.
    static let knownStarts = ["#cloud-config", "#!", "#include", "#cloud-boothook", "#part-handler", "## template: jinja",
                              "Content-Type:", "MIME-Version:"]
    static let userDataHint = "start it with #cloud-config (or #!, #include, #cloud-boothook, a MIME multipart)"

    /// Why `bytes` is no user-data cloud-init acts on; nil when it is (gzip'd data is left to cloud-init).
    static func userDataProblem(_ bytes: [UInt8]) -> String? {
        if bytes.starts(with: [0x1f, 0x8b]) { return nil }
        let first = String(decoding: bytes.prefix(120), as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).first ?? ""
        if knownStarts.contains(where: { first.hasPrefix($0) }) { return nil }
        return first.isEmpty ? "is empty or starts with an empty line, which cloud-init ignores"
            : "starts with '\(first.prefix(40))', which cloud-init ignores"
    }

    /// The documents of `identity`'s node. Templates render as `files` do (strict names, located errors,
    /// `read` for a `source:`); the instance-id is `imagebuild-<hostname>-<12 hex of sha256 of the rest>`.
    public static func documents(for identity: NodeIdentity, network: Inventory.Network, templates: NodeTemplates,
                                 read: (String) throws -> [UInt8] = NodeTemplates.readSource) throws -> CloudInitDocuments {
        func render(_ file: NodeFile?) throws -> [UInt8] {
            guard let file else { return Array(emptyCloudConfig.utf8) }
            let bytes = try templates.render(file, for: identity, read: read).bytes
            if let problem = userDataProblem(bytes) {
                let origin = if case .source(let path) = file.content { " (\(path))" } else { "" }
                throw ConfigError(file.location, "\(file.path)\(origin) for node \(identity.node.hostname) \(problem)", hint: userDataHint)
            }
            return bytes
        }
        let userData = try render(identity.cloudInit.userData)
        let vendorData = try render(identity.cloudInit.vendorData)
        let networkConfig = networkConfig(for: identity, network: network)
        let name = network.domain.map { "\(identity.node.hostname).\($0)" } ?? identity.node.hostname
        var fields: [(String, Node)] = [("local-hostname", string(name)), ("hostname", string(name))]
        if let eni = networkInterfaces(for: identity) { fields.append(("network-interfaces", Node(eni, Tag(.str), .literal))) }
        let rest = emit(mapping(fields))
        var hash = SHA256()
        for part in [Array(rest.utf8), userData, vendorData, Array(networkConfig.utf8)] {
            hash.update(data: Array(String(part.count).utf8) + [0])
            hash.update(data: part)
        }
        let digest = hash.finalize().prefix(6).map { String(format: "%02x", $0) }.joined()
        let instanceID = "imagebuild-\(identity.node.hostname)-\(digest)"
        return CloudInitDocuments(metaData: emit(mapping([("instance-id", string(instanceID))] + fields)), userData: userData,
                                  vendorData: vendorData, networkConfig: networkConfig, instanceID: instanceID)
    }

    /// Network config version 2: the boot interface by its MAC with DHCP (and the inventory's DNS), then
    /// each of `interfaces:` by name (a MAC too: matched by MAC and renamed), or by MAC alone.
    public static func networkConfig(for identity: NodeIdentity, network: Inventory.Network) -> String {
        let extraKeys = identity.interfaces.map(key)
        let bootKey = extraKeys.contains("boot") ? "boot-\(identity.node.mac.hyphenated)" : "boot"
        var boot: [(String, Node)] = [("match", mapping([("macaddress", string(identity.node.mac.description))])),
                                      ("dhcp4", Node("true", Tag(.bool)))]
        if !network.dns.isEmpty || network.domain != nil {
            var nameservers: [(String, Node)] = []
            if !network.dns.isEmpty { nameservers.append(("addresses", list(network.dns.map { string($0.description) }))) }
            if let domain = network.domain { nameservers.append(("search", list([string(domain)]))) }
            boot.append(("nameservers", mapping(nameservers)))
        }
        var ethernets: [(String, Node)] = [(bootKey, mapping(boot))]
        for (interface, key) in zip(identity.interfaces, extraKeys) {
            var fields: [(String, Node)] = []
            if let mac = interface.mac {
                fields.append(("match", mapping([("macaddress", string(mac.description))])))
                if let name = interface.name { fields.append(("set-name", string(name))) }
            }
            fields.append(("addresses", list([string("\(interface.address)/\(interface.prefix)")])))
            if let mtu = interface.mtu { fields.append(("mtu", Node(String(mtu), Tag(.int)))) }
            if let gateway = interface.gateway {
                fields.append(("routes", Node.sequence(.init([mapping([("to", string("0.0.0.0/0")), ("via", string(gateway.description))])]))))
            }
            ethernets.append((key, mapping(fields)))
        }
        return emit(mapping([("version", Node("2", Tag(.int))), ("ethernets", mapping(ethernets))]))
    }

    // YAML through Yams, keys in the order given. Every string double-quoted: YAML 1.1, which
    // cloud-init reads, takes an unquoted MAC such as 52:54:00:12:34:56 for a base-60 number.
    static func string(_ text: String) -> Node { Node(text, Tag(.str), .doubleQuoted) }
    static func list(_ items: [Node]) -> Node { .sequence(.init(items, Tag(.seq), .flow)) }
    static func mapping(_ pairs: [(String, Node)]) -> Node { .mapping(.init(pairs.map { (Node($0.0), $0.1) })) }
    static func emit(_ node: Node) -> String {
        // Serializing a tree of plain scalars cannot fail; an empty document would be refused by tests.
        (try? Yams.serialize(node: node, width: -1)) ?? ""
    }

    /// The same extra interfaces as `/etc/network/interfaces` text, for meta-data's `network-interfaces`:
    /// cloud-init before 24.3 (Debian 12 has 22.4) fetches no `network-config` from a network seed and
    /// reads this instead. Only interfaces with a name (this format has no MAC match without renaming),
    /// and no MTU (cloud-init's converter drops it); nil when there are none.
    static func networkInterfaces(for identity: NodeIdentity) -> String? {
        let named = identity.interfaces.filter { $0.name != nil }
        guard !named.isEmpty else { return nil }
        return named.map { interface in
            var stanza = "auto \(interface.name!)\niface \(interface.name!) inet static\n    address \(interface.address)/\(interface.prefix)\n"
            if let gateway = interface.gateway { stanza += "    gateway \(gateway)\n" }
            return stanza
        }.joined()
    }

    static func key(_ interface: NodeIdentity.Interface) -> String {
        interface.name ?? "mac-" + (interface.mac?.hyphenated.replacingOccurrences(of: "-", with: "") ?? "")
    }

    /// Renders every enabled node's documents once (publish and `nodes check`): unknown names, templates
    /// that do not parse, unreadable sources and user-data cloud-init would ignore, each located.
    public static func check(_ inventory: Inventory, templates: NodeTemplates) -> [ConfigError] {
        var errors: [ConfigError] = []
        for node in inventory.nodes {
            // A node whose identity does not merge is reported by the caller.
            guard let identity = try? inventory.identity(of: node), identity.cloudInit.enabled else { continue }
            do {
                _ = try documents(for: identity, network: inventory.network, templates: templates)
            } catch let error as ConfigError {
                if !errors.contains(error) { errors.append(error) }
            } catch {
                errors.append(ConfigError(node.location, "cloud-init data of \(node.hostname): \(error)"))
            }
        }
        return errors
    }
}
