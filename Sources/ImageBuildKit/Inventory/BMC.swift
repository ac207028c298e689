import Foundation

/// `bmc:` in nodes.yaml: how to reach a node's baseboard management controller, at any level
/// (defaults, group, range, node). Levels merge field by field, nearest wins, so a group can say
/// `protocol: redfish` and `user: admin` once and each node only its `address`.
///
/// The password is never in nodes.yaml: `password_file` names a file (mode 0600 or stricter, checked
/// when the password is read) so the inventory can be shared, versioned and printed.
public struct BMCSettings: Sendable, Equatable {
    /// Host name or IPv4 address; a template over the node's data (`10.78.{{ip_octets.3}}.{{ip_octets.4}}`,
    /// `{{hostname}}-ipmi`, `{{vars.bmc}}`), rendered per node.
    public var address: String?
    public var `protocol`: BMCProtocol?
    /// UDP port for IPMI (623), TCP port for Redfish (443).
    public var port: Int?
    public var user: String?
    /// Absolute (resolved against nodes.yaml's folder).
    public var passwordFile: String?
    /// Redfish: the ComputerSystem's id under /redfish/v1/Systems/; default: the BMC's only system.
    public var system: String?
    public var tls: BMCTLS?
    /// The mode of the one-time network boot (`--pxe`); nil: the firmware's current mode.
    public var bootMode: BMCBootMode?
    /// IPMI: the RMCP+ cipher suite (`ipmitool -C`); nil: ipmitool asks the BMC. BMCs that do not
    /// answer that question cost a 5 s wait per command without it (3 is the common choice).
    public var cipherSuite: Int?
    /// Where each field was set, for errors about a merged value.
    public var locations: [String: ConfigLocation] = [:]

    public init() {}

    public var isEmpty: Bool { self == BMCSettings() }

    static let keys = ["address", "protocol", "port", "user", "password_file", "system", "tls", "boot_mode", "cipher_suite"]

    /// `self` with every field `nearer` sets taken from it.
    func merged(with nearer: BMCSettings) -> BMCSettings {
        var result = self
        if let value = nearer.address { result.address = value }
        if let value = nearer.protocol { result.protocol = value }
        if let value = nearer.port { result.port = value }
        if let value = nearer.user { result.user = value }
        if let value = nearer.passwordFile { result.passwordFile = value }
        if let value = nearer.system { result.system = value }
        if let value = nearer.tls { result.tls = value }
        if let value = nearer.bootMode { result.bootMode = value }
        if let value = nearer.cipherSuite { result.cipherSuite = value }
        result.locations.merge(nearer.locations) { _, new in new }
        return result
    }
}

public enum BMCProtocol: String, Sendable, Equatable, CaseIterable {
    /// IPMI 2.0 over LAN (RMCP+, `ipmitool -I lanplus`).
    case ipmi
    /// DMTF Redfish over HTTPS.
    case redfish
}

/// How a Redfish BMC's certificate is checked. BMCs mostly carry self-signed certificates, so a site
/// either pins one (its own CA, or the BMC's certificate itself) or, in a lab, turns the check off.
public enum BMCTLS: Sendable, Equatable {
    /// The system's trust roots and the host name (the default).
    case verify
    /// Only certificates this PEM file's certificates sign (a site CA, or the BMC's own certificate).
    case pinned(String)
    /// No check at all (`tls: insecure`): anyone on the path can read the password.
    case insecure
}

/// The firmware mode a one-time network boot asks for: IPMI's EFI flag, Redfish's
/// `BootSourceOverrideMode`.
public enum BMCBootMode: String, Sendable, Equatable, CaseIterable {
    case uefi
    case bios
}

/// One node's BMC, merged and rendered: everything `imagebuild power` needs but the password itself.
public struct BMCTarget: Sendable, Equatable {
    public var hostname: String
    public var address: String
    public var `protocol`: BMCProtocol
    public var port: Int?
    public var user: String
    public var passwordFile: String
    public var system: String?
    public var tls: BMCTLS
    public var bootMode: BMCBootMode?
    public var cipherSuite: Int?

    public init(hostname: String, address: String, protocol: BMCProtocol, port: Int? = nil, user: String,
                passwordFile: String, system: String? = nil, tls: BMCTLS = .verify, bootMode: BMCBootMode? = nil,
                cipherSuite: Int? = nil) {
        self.hostname = hostname
        self.address = address
        self.protocol = `protocol`
        self.port = port
        self.user = user
        self.passwordFile = passwordFile
        self.system = system
        self.tls = tls
        self.bootMode = bootMode
        self.cipherSuite = cipherSuite
    }

    /// `redfish://admin@10.78.0.5:8443` or `ipmi://admin@10.78.0.5`: what a table shows. No password.
    public var endpoint: String {
        "\(self.protocol.rawValue)://\(user)@\(address.contains(":") ? "[\(address)]" : address)" + (port.map { ":\($0)" } ?? "")
    }
}

extension Inventory {
    /// `node`'s BMC with every level merged (defaults < group < range < node) and its address
    /// rendered. `templates` renders the address; pass one `NodeTemplates` for many nodes.
    /// A missing field is a located error naming the node and where to set it.
    public func bmcTarget(for node: Node, templates: NodeTemplates) throws -> BMCTarget {
        var merged = BMCSettings()
        for (_, settings) in settingsLevels(of: node) { merged = merged.merged(with: settings.bmc) }
        func missing(_ field: String) -> ConfigError {
            ConfigError(node.location, "node \(node.hostname) has no bmc \(field)",
                        hint: "set 'bmc: {\(field): ...}' on the node, its group, its range or in defaults")
        }
        guard let template = merged.address else { throw missing("address") }
        guard let user = merged.user else { throw missing("user") }
        guard let passwordFile = merged.passwordFile else { throw missing("password_file") }
        let location = merged.locations["address"] ?? node.location
        let file = NodeFile(path: "/bmc-address", content: .inline(template, firstLine: location.line), mode: 0o644,
                            owner: .root, secret: false, template: true, location: location)
        let rendered: String
        do {
            rendered = String(decoding: try templates.render(file, for: try identity(of: node)).bytes, as: UTF8.self)
        } catch let error as ConfigError {
            throw ConfigError(error.location, error.message.replacingOccurrences(of: "/bmc-address", with: "bmc address"), hint: error.hint)
        }
        let address = rendered.trimmingCharacters(in: .whitespaces)
        guard BMCSettings.isHost(address) else {
            throw ConfigError(location, "bmc address for node \(node.hostname) is '\(address)', not a host name or IPv4 address",
                              hint: template.contains("{{") ? "the template '\(template)' rendered it" : nil)
        }
        return BMCTarget(hostname: node.hostname, address: address, protocol: merged.protocol ?? .ipmi, port: merged.port,
                         user: user, passwordFile: passwordFile, system: merged.system, tls: merged.tls ?? .verify,
                         bootMode: merged.bootMode, cipherSuite: merged.cipherSuite)
    }

    /// Every node whose levels set any `bmc:` field: its BMC resolves (a template renders to an address,
    /// nothing is missing) and its password file is private. `nodes check` reports these; `power` finds
    /// the same per node, as it acts.
    public func checkBMCs() throws {
        guard hasBMCSettings else { return }
        let templates = NodeTemplates(inventory: self)
        var errors: [ConfigError] = [], checkedFiles = Set<String>()
        for node in nodes {
            var merged = BMCSettings()
            for (_, settings) in settingsLevels(of: node) { merged = merged.merged(with: settings.bmc) }
            guard !merged.isEmpty else { continue }
            do {
                let target = try bmcTarget(for: node, templates: templates)
                if checkedFiles.insert(target.passwordFile).inserted, let problem = BMCSettings.passwordFileProblem(target.passwordFile) {
                    throw ConfigError(merged.locations["password_file"] ?? node.location, problem)
                }
            } catch let error as ConfigError { errors.append(error) }
        }
        try ConfigErrors.throwIfAny(errors)
    }

    /// Whether any level of the inventory sets a BMC field.
    public var hasBMCSettings: Bool {
        !defaults.bmc.isEmpty || groups.values.contains { !$0.bmc.isEmpty } || ranges.contains { !$0.settings.bmc.isEmpty }
            || nodes.contains { !$0.settings.bmc.isEmpty }
    }
}

extension BMCSettings {
    /// Why `path` may not hold a BMC password, or nil: a regular file only its owner can read or write
    /// (0600 or stricter, as ssh keys). `nodes check` and `power` apply this one rule.
    public static func passwordFileProblem(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return "password file \(path): \(String(cString: strerror(errno)))" }
        guard info.st_mode & S_IFMT == S_IFREG else { return "password file \(path) is not a regular file" }
        let mode = info.st_mode & 0o777
        guard mode & 0o077 == 0 else {
            return "password file \(path) has mode \(String(format: "%04o", mode)): others can read it (chmod 600 \(path))"
        }
        return nil
    }

    /// A DNS name (letters, digits, '-', '.') or a dotted IPv4 address.
    static func isHost(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 253, !text.hasPrefix("-"), !text.hasPrefix("."), !text.hasSuffix(".") else { return false }
        if IPv4Address(text) != nil { return true }
        if text.allSatisfy({ $0.isNumber || $0 == "." }) { return false }  // 10.78.0 or 10.78.0.300
        return text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            !label.isEmpty && label.count <= 63 && label.utf8.allSatisfy {
                ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d
            }
        }
    }
}

extension InventoryLoader {
    /// `bmc:` of one level.
    static func parseBMC(_ value: YAMLValue, baseDirectory: String) throws -> BMCSettings {
        // `password` is let in only to be refused with a better message than "unknown key".
        let map = try value.map(allowed: BMCSettings.keys + ["password"])
        var bmc = BMCSettings()
        for key in BMCSettings.keys { if let field = map[key] { bmc.locations[key] = field.location } }
        if let field = map["address"] {
            let text = try field.string().trimmingCharacters(in: .whitespaces)
            guard !text.isEmpty else { throw field.error("the bmc address is empty") }
            if !text.contains("{{"), !BMCSettings.isHost(text) {
                throw field.error("'\(text)' is not a host name or IPv4 address",
                                  hint: "a template over the node's data works too: 10.78.{{ip_octets.3}}.{{ip_octets.4}}")
            }
            bmc.address = text
        }
        if let field = map["protocol"] {
            let text = try field.string()
            guard let value = BMCProtocol(rawValue: text) else {
                throw field.error("unknown bmc protocol '\(text)'", hint: "ipmi (IPMI 2.0 lanplus) or redfish")
            }
            bmc.protocol = value
        }
        bmc.port = try map.int("port", in: 1...65535)
        if let field = map["user"] {
            let text = try field.string()
            guard !text.isEmpty, !text.contains(where: { $0.isNewline || $0 == "\0" }) else {
                throw field.error("the bmc user must be one non-empty line")
            }
            bmc.user = text
        }
        if let field = map["password_file"] {
            let text = try field.string()
            guard !text.isEmpty else { throw field.error("password_file is empty") }
            bmc.passwordFile = resolve(text, against: baseDirectory)
        }
        if let field = map["password"] {
            throw field.error("a password is never written in nodes.yaml", hint: "put it in a file (mode 0600) and name it: password_file")
        }
        bmc.system = try map.string("system")
        bmc.cipherSuite = try map.int("cipher_suite", in: 0...17)
        if let field = map["tls"] {
            let text = try field.string()
            switch text {
            case "verify": bmc.tls = .verify
            case "insecure": bmc.tls = .insecure
            default:
                guard text.hasPrefix("/") || text.hasPrefix(".") || text.contains("/") || text.hasSuffix(".pem") || text.hasSuffix(".crt") else {
                    throw field.error("unknown tls '\(text)'",
                                      hint: "verify (the default), insecure, or a PEM file of the CA or certificate to pin")
                }
                bmc.tls = .pinned(resolve(text, against: baseDirectory))
            }
        }
        if let field = map["boot_mode"] {
            let text = try field.string()
            guard let value = BMCBootMode(rawValue: text) else {
                throw field.error("unknown boot_mode '\(text)'", hint: "uefi or bios (or leave it out: the firmware's current mode)")
            }
            bmc.bootMode = value
        }
        return bmc
    }
}
