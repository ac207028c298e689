import Foundation

/// How nodes.yaml differs from the generation a boot root publishes: what `publish` would change.
///
/// A node added to nodes.yaml boots from the bootscript endpoint at once, but has no pxelinux.cfg
/// file until the next publish; `nodes check`, `imagebuild status`, the status page and `/metrics`
/// say so from this one comparison.
public struct InventoryDrift: Sendable, Equatable, Codable {
    /// The published generation compared against.
    public var generation: Int
    /// Nodes and ranges in nodes.yaml without boot files in the generation (a node whose image is not
    /// published counts: it has none either).
    public var added: [String]
    /// Nodes and ranges with boot files that nodes.yaml no longer lists.
    public var removed: [String]
    /// Nodes, ranges and the default whose image, hostname or address differ, with what changes.
    public var changed: [String]

    public var count: Int { added.count + removed.count + changed.count }
    public var isEmpty: Bool { count == 0 }

    public init(inventory: Inventory, published index: PublishIndex) {
        generation = index.generation
        added = []
        removed = []
        changed = []
        let publishedNodes = Dictionary(index.nodes.map { ($0.mac, $0) }, uniquingKeysWith: { first, _ in first })
        var listed = Set<String>()
        for node in inventory.nodes {
            let mac = node.mac.description
            listed.insert(mac)
            let name = "\(node.hostname) (\(mac))"
            guard let entry = publishedNodes[mac] else {
                added.append(name)
                continue
            }
            var differences: [String] = []
            if entry.hostname != node.hostname { differences.append("hostname \(entry.hostname) -> \(node.hostname)") }
            if entry.ip != node.ip?.description {
                differences.append("ip \(entry.ip ?? "none") -> \(node.ip?.description ?? "none")")
            }
            let image = inventory.resolved(node).image
            if entry.image != image { differences.append("image \(entry.image) -> \(image ?? "none")") }
            // Its command line names the seed only when on: turning it on or off needs a publish.
            let cloudInit = inventory.cloudInitEnabled(node)
            if (entry.cloudInit != nil) != cloudInit { differences.append("cloud-init \(cloudInit ? "off -> on" : "on -> off")") }
            // DHCP hands out the shim as soon as nodes.yaml says `loader: grub`; GRUB's file needs a publish.
            let grub = inventory.loader(for: node) == .grub
            if (entry.grub != nil) != grub { differences.append("GRUB file \(grub ? "missing (loader: grub)" : "left over (loader is no longer grub)")") }
            // Its command line names the torrent only with `distribution: p2p`.
            let swarm = inventory.resolved(node).distribution == .p2p
            if (entry.torrent != nil) != swarm { differences.append("distribution \(swarm ? "http -> p2p" : "p2p -> http")") }
            if !differences.isEmpty { changed.append("\(name): \(differences.joined(separator: ", "))") }
        }
        for entry in index.nodes where !listed.contains(entry.mac) {
            removed.append("\(entry.hostname) (\(entry.mac))")
        }

        let publishedRanges = Dictionary(index.ranges.map { ($0.cidr, $0) }, uniquingKeysWith: { first, _ in first })
        var listedRanges = Set<String>()
        for range in inventory.ranges {
            let cidr = range.network.description
            guard let image = inventory.resolved(range).image else { continue }  // publish writes no file for it
            listedRanges.insert(cidr)
            guard let entry = publishedRanges[cidr] else {
                added.append("range \(cidr)")
                continue
            }
            if entry.image != image { changed.append("range \(cidr): image \(entry.image) -> \(image)") }
        }
        for entry in index.ranges where !listedRanges.contains(entry.cidr) { removed.append("range \(entry.cidr)") }

        if index.defaultImage != inventory.defaults.image {
            changed.append("default image \(index.defaultImage ?? "none") -> \(inventory.defaults.image ?? "none")")
        }
    }
}
