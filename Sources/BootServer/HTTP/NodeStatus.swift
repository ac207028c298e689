import BootProtocols
import Foundation
import ImageBuildKit

/// One node as `GET /api/v1/nodes` reports it (and `imagebuild status` prints it). Times are Unix
/// seconds, durations seconds, so the status page's JavaScript needs no date parsing.
public struct NodeStatus: Codable, Sendable, Equatable {
    public var mac: String
    public var hostname: String?
    public var ip: String?
    /// In nodes.yaml (false: only seen on the network).
    public var registered: Bool
    public var stage: BootStage
    public var since: Double?
    public var secondsInStage: Double?
    public var lastSeen: Double?
    public var boot: Int
    /// First event of the current boot to `up`, once up.
    public var bootSeconds: Double?
    /// The current boot so far, while not up.
    public var bootElapsed: Double?
    public var stuck: Bool
    public var hint: String?
    public var image: String?
    public var failure: String?
    public var lastEvent: String?
    public var lastDHCPStep: DHCPStep?

    public init(mac: String, hostname: String?, ip: String?, registered: Bool, stage: BootStage, since: Double?,
                secondsInStage: Double?, lastSeen: Double?, boot: Int, bootSeconds: Double?, bootElapsed: Double?,
                stuck: Bool, hint: String?, image: String?, failure: String?, lastEvent: String?, lastDHCPStep: DHCPStep?) {
        self.mac = mac
        self.hostname = hostname
        self.ip = ip
        self.registered = registered
        self.stage = stage
        self.since = since
        self.secondsInStage = secondsInStage
        self.lastSeen = lastSeen
        self.boot = boot
        self.bootSeconds = bootSeconds
        self.bootElapsed = bootElapsed
        self.stuck = stuck
        self.hint = hint
        self.image = image
        self.failure = failure
        self.lastEvent = lastEvent
        self.lastDHCPStep = lastDHCPStep
    }

    /// Every inventory node (seen or not) and every MAC seen, stuck ones first, then by name.
    public static func list(inventory: Inventory?, states: [NodeBootState], now: Date) -> [NodeStatus] {
        var byMAC: [MACAddress: NodeBootState] = [:]
        for state in states { byMAC[state.mac] = state }
        var result: [NodeStatus] = []
        var listed = Set<MACAddress>()
        for node in inventory?.nodes ?? [] {
            listed.insert(node.mac)
            result.append(make(mac: node.mac, state: byMAC[node.mac], node: node, now: now))
        }
        for state in states where !listed.contains(state.mac) {
            result.append(make(mac: state.mac, state: state, node: nil, now: now))
        }
        return result.sorted(by: ordered)
    }

    /// Stuck first (failed before slow), then hostname (unnamed last), then MAC.
    static func ordered(_ a: NodeStatus, _ b: NodeStatus) -> Bool {
        if a.stuck != b.stuck { return a.stuck }
        if a.stuck && (a.stage == .failed) != (b.stage == .failed) { return a.stage == .failed }
        switch (a.hostname, b.hostname) {
        case let (x?, y?) where x != y: return x.localizedStandardCompare(y) == .orderedAscending
        case (_?, nil): return true
        case (nil, _?): return false
        default: return a.mac < b.mac
        }
    }

    public static func make(mac: MACAddress, state: NodeBootState?, node: Inventory.Node?, now: Date) -> NodeStatus {
        let stage = state?.stage ?? .unseen
        let stuck = state?.isStuck(now: now) ?? false
        return NodeStatus(
            mac: mac.description, hostname: node?.hostname, ip: state?.address?.description ?? node?.ip?.description,
            registered: node != nil, stage: stage, since: state?.stageSince?.timeIntervalSince1970,
            secondsInStage: state?.timeInStage(now: now), lastSeen: state?.lastSeen?.timeIntervalSince1970,
            boot: state?.boot ?? 0, bootSeconds: state?.bootDuration,
            bootElapsed: stage == .up || stage == .unseen ? nil : state?.bootStarted.map { max(0, now.timeIntervalSince($0)) },
            stuck: stuck, hint: stuck || stage == .failed ? state?.hint : nil, image: state?.image, failure: state?.failure,
            lastEvent: state?.lastEvent, lastDHCPStep: state?.lastDHCPStep)
    }
}

/// `GET /api/v1/nodes`.
public struct NodesResponse: Codable, Sendable {
    public var now: Double
    public var nodes: [NodeStatus]
    public init(now: Double, nodes: [NodeStatus]) {
        self.now = now
        self.nodes = nodes
    }
}

/// `GET /api/v1/nodes/MAC`.
public struct NodeTimelineResponse: Codable, Sendable {
    public var now: Double
    public var node: NodeStatus
    public var events: [BootEvent]
}

/// The text table `imagebuild status` prints; here so the formatting is tested with the data types.
public enum NodeStatusTable {
    public static func render(_ nodes: [NodeStatus], now: Double) -> String {
        let header = ["HOSTNAME", "MAC", "IP", "STAGE", "IN STAGE", "LAST SEEN", "BOOT TIME"]
        var rows: [[String]] = []
        for node in nodes {
            let stage = node.stuck ? "\(node.stage.rawValue) (stuck)" : node.stage.rawValue
            let boot = node.bootSeconds.map(duration) ?? node.bootElapsed.map { duration($0) + "…" } ?? "-"
            rows.append([node.hostname ?? "-", node.mac, node.ip ?? "-", stage, node.secondsInStage.map(duration) ?? "-",
                         node.lastSeen.map { duration(max(0, now - $0)) + " ago" } ?? "never", boot])
        }
        var widths = header.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, cell in
                i == cells.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        var out = line(header) + "\n"
        for (row, node) in zip(rows, nodes) {
            out += line(row) + "\n"
            if let hint = node.hint { out += "    \(node.failure.map { "failed: \($0); " } ?? "")hint: \(hint)\n" }
        }
        if nodes.isEmpty { out += "(no nodes: none in nodes.yaml and none seen yet)\n" }
        let stuck = nodes.filter(\.stuck).count
        let up = nodes.filter { $0.stage == .up }.count
        out += "\(nodes.count) nodes, \(up) up, \(stuck) stuck\n"
        return out
    }

    /// `42s`, `3m05s`, `2h07m`, `3d04h`.
    public static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded(.down))
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m\(String(format: "%02d", s % 60))s" }
        if s < 86400 { return "\(s / 3600)h\(String(format: "%02d", s % 3600 / 60))m" }
        return "\(s / 86400)d\(String(format: "%02d", s % 86400 / 3600))h"
    }
}
