import Foundation
import ImageBuildKit

/// `GET /api/v1/inventory`: is the nodes.yaml in force the one the administrator last wrote, and is it
/// what the boot root publishes? Read by `imagebuild status` and the status page; `/metrics` has the
/// same as gauges.
public struct InventoryStatus: Codable, Sendable, Equatable {
    /// The inventory file in force; nil when none is loaded.
    public var file: String?
    public var nodes: Int
    public var ranges: Int
    /// The located error of the last change to the file, which was rejected: the previous inventory
    /// stays in force until the file loads again.
    public var rejected: String?
    /// How the inventory in force differs from the published generation; nil when nothing is published.
    public var published: InventoryDrift?

    public init(inventory: Inventory?, rejected: String?, index: PublishIndex?) {
        file = inventory?.file
        nodes = inventory?.nodes.count ?? 0
        ranges = inventory?.ranges.count ?? 0
        self.rejected = rejected
        published = inventory.flatMap { inventory in index.map { InventoryDrift(inventory: inventory, published: $0) } }
    }

    /// What an administrator should do about it, one line each (nothing when all is well).
    public var warnings: [String] {
        var lines: [String] = []
        if let rejected { lines.append("inventory rejected at \(rejected) (the previous inventory is in force)") }
        if let drift = published, !drift.isEmpty {
            var parts: [String] = []
            if !drift.added.isEmpty { parts.append("\(drift.added.count) added") }
            if !drift.removed.isEmpty { parts.append("\(drift.removed.count) removed") }
            if !drift.changed.isEmpty { parts.append("\(drift.changed.count) changed") }
            lines.append("inventory newer than published generation \(drift.generation) (\(parts.joined(separator: ", "))): "
                         + "run 'imagebuild publish' to write their boot files")
        }
        return lines
    }
}
