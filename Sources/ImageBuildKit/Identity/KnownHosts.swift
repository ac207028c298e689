import Foundation

/// `ssh_known_hosts` lines for the inventory's nodes, from the keys in a `HostKeyStore`.
public enum KnownHosts {
    /// The names users reach a node by: its hostname, `hostname.domain` when the network has a domain,
    /// and its fixed address. Also the principals of its host certificate, so known_hosts and
    /// certificates accept the same names.
    public static func names(of node: Inventory.Node, domain: String?) -> [String] {
        let host = node.hostname.lowercased()
        var names = [host]
        if let domain = domain?.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: ".")), !domain.isEmpty {
            names.append(host + "." + domain)
        }
        if let ip = node.ip { names.append(ip.description) }
        return names
    }

    /// Hostnames that get no host keys (`ssh_host_keys: none`, or an entry whose identity does not
    /// resolve): left out of known_hosts and never generated.
    public static func hostnamesWithoutKeys(in inventory: Inventory) -> Set<String> {
        Set(inventory.nodes.filter { (try? inventory.identity(of: $0))?.hostKeys != .persistent }.map(\.hostname))
    }

    /// The nodes that have host keys, in inventory order.
    public static func nodes(of inventory: Inventory, skipping: Set<String>) -> [Inventory.Node] {
        let skip = Set(skipping.map { $0.lowercased() })
        return inventory.nodes.filter { !skip.contains($0.hostname.lowercased()) }
    }

    /// One `NAMES TYPE BASE64` line per key (no comment: the names say whose it is).
    public static func lines(names: [String], keys: HostKeySet) -> [String] {
        keys.keys.map { "\(names.joined(separator: ",")) \($0.algorithm) \($0.publicKeyBase64)" }
    }

    /// `@cert-authority PATTERNS CA-PUBLIC-KEY`: hosts matching the patterns are trusted when their
    /// certificate is signed by that CA.
    public static func certificateAuthorityLine(patterns: [String], caPublicKey: String) -> String {
        "@cert-authority \(patterns.joined(separator: ",")) \(caPublicKey)"
    }
}
