import BootProtocols
import Foundation
import ImageBuildKit
import Synchronization

/// One node as `GET /api/v1/nodes?since=CURSOR` sends it: what the status page shows, without the
/// fields that only move with the clock (the page derives time in stage, time since last seen and
/// the boot so far from `since`, `lastSeen`, `bootStarted` and the response's `now`), so a node that
/// did nothing is not sent again. `hint` is an id into the summary's hint groups.
public struct NodeRow: Codable, Sendable, Equatable {
    public var mac: String
    public var hostname: String?
    public var ip: String?
    public var registered: Bool
    public var stage: BootStage
    public var since: Double?
    public var lastSeen: Double?
    public var boot: Int
    public var bootStarted: Double?
    public var bootSeconds: Double?
    /// As `NodeStatus.stuck`: over the stage's time limit, or failed.
    public var stuck: Bool
    public var hint: Int?
    public var image: String?
    public var lastEvent: String?

    private enum CodingKeys: String, CodingKey {
        case mac, hostname, ip, registered, stage, since, lastSeen, boot, bootStarted, bootSeconds, stuck, hint, image, lastEvent
    }

    public init(mac: String, hostname: String?, ip: String?, registered: Bool, stage: BootStage, since: Double?, lastSeen: Double?,
                boot: Int, bootStarted: Double?, bootSeconds: Double?, stuck: Bool, hint: Int?, image: String?, lastEvent: String?) {
        self.mac = mac
        self.hostname = hostname
        self.ip = ip
        self.registered = registered
        self.stage = stage
        self.since = since
        self.lastSeen = lastSeen
        self.boot = boot
        self.bootStarted = bootStarted
        self.bootSeconds = bootSeconds
        self.stuck = stuck
        self.hint = hint
        self.image = image
        self.lastEvent = lastEvent
    }

    /// Absent fields and `false` flags are left out: the first answer carries every node.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(mac, forKey: .mac)
        try c.encodeIfPresent(hostname, forKey: .hostname)
        try c.encodeIfPresent(ip, forKey: .ip)
        if registered { try c.encode(true, forKey: .registered) }
        try c.encode(stage, forKey: .stage)
        try c.encodeIfPresent(since, forKey: .since)
        try c.encodeIfPresent(lastSeen, forKey: .lastSeen)
        if boot != 0 { try c.encode(boot, forKey: .boot) }
        try c.encodeIfPresent(bootStarted, forKey: .bootStarted)
        try c.encodeIfPresent(bootSeconds, forKey: .bootSeconds)
        if stuck { try c.encode(true, forKey: .stuck) }
        try c.encodeIfPresent(hint, forKey: .hint)
        try c.encodeIfPresent(image, forKey: .image)
        try c.encodeIfPresent(lastEvent, forKey: .lastEvent)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        mac = try c.decode(String.self, forKey: .mac)
        hostname = try c.decodeIfPresent(String.self, forKey: .hostname)
        ip = try c.decodeIfPresent(String.self, forKey: .ip)
        registered = try c.decodeIfPresent(Bool.self, forKey: .registered) ?? false
        stage = try c.decode(BootStage.self, forKey: .stage)
        since = try c.decodeIfPresent(Double.self, forKey: .since)
        lastSeen = try c.decodeIfPresent(Double.self, forKey: .lastSeen)
        boot = try c.decodeIfPresent(Int.self, forKey: .boot) ?? 0
        bootStarted = try c.decodeIfPresent(Double.self, forKey: .bootStarted)
        bootSeconds = try c.decodeIfPresent(Double.self, forKey: .bootSeconds)
        stuck = try c.decodeIfPresent(Bool.self, forKey: .stuck) ?? false
        hint = try c.decodeIfPresent(Int.self, forKey: .hint)
        image = try c.decodeIfPresent(String.self, forKey: .image)
        lastEvent = try c.decodeIfPresent(String.self, forKey: .lastEvent)
    }
}

/// Counts over every node, computed by the server on each poll (the page never counts 10,000 rows).
public struct NodeSummary: Codable, Sendable, Equatable {
    public struct StageCount: Codable, Sendable, Equatable {
        public var stage: BootStage
        public var count: Int
    }

    /// Nodes sharing one hint (`StuckHints`), most first: the page shows the text once with the count.
    public struct HintGroup: Codable, Sendable, Equatable {
        public var id: Int
        public var count: Int
        public var stage: BootStage
        /// In a full answer, and in an incremental one when the hint is new since the cursor (the text
        /// of an id never changes while the server runs).
        public var hint: String?
    }

    public var total: Int
    /// Every stage in boot order, zeros included.
    public var stages: [StageCount]
    /// Over their stage's time limit, failed ones not counted (those are `failed`).
    public var stuck: Int
    public var failed: Int
    /// Seen on the network, not in nodes.yaml.
    public var unregistered: Int
    public var hints: [HintGroup]

    public func count(_ stage: BootStage) -> Int { stages.first { $0.stage == stage }?.count ?? 0 }
}

/// `GET /api/v1/nodes?since=CURSOR`: the summary, and the nodes that changed since the poll that
/// returned `CURSOR` (all of them when `full`: no cursor, a cursor from before a server restart, or
/// one too old to tell what was removed since).
public struct NodeChangesResponse: Codable, Sendable {
    public var now: Double
    /// Pass back as `since` on the next poll.
    public var cursor: String
    public var full: Bool
    public var summary: NodeSummary
    public var nodes: [NodeRow]
    /// MACs no longer listed (forgotten by the timeline and not in nodes.yaml, or removed from it).
    public var removed: [String]
}

/// Tells which nodes changed between polls without anything on the recording path: each poll compares
/// every node's state (and its inventory entry, and whether it is stuck) with what the previous poll
/// saw, and numbers the ones that differ. One pass over the nodes per poll, under this tracker's own
/// lock (the timeline's is held only while `BootTimeline.nodes()` copies them, as for `/api/v1/nodes`).
/// Cursors are `<epoch>-<sequence>`; the epoch is random per tracker, so a restarted server answers a
/// stale cursor with everything.
public final class NodeChangeTracker: Sendable {
    private struct Entry {
        var state: NodeBootState?
        var hostname: String?
        var fixedIP: IPv4Address?
        var stuck: Bool
        var version: UInt64
        var row: NodeRow
        var pass: UInt64
    }

    private struct State {
        var sequence: UInt64 = 0
        var pass: UInt64 = 0
        var entries: [MACAddress: Entry] = [:]
        /// MACs in the order they were first listed (inventory order, then by MAC), for stable answers.
        var order: [MACAddress] = []
        var removed: [(mac: String, version: UInt64)] = []
        /// Cursors below this cannot be answered incrementally (their removals were trimmed).
        var removedFloor: UInt64 = 0
        var hintIDs: [String: Int] = [:]
        /// By id: the hint, the stage of the first node it was given for, and the sequence number then.
        var hints: [(text: String, stage: BootStage, introduced: UInt64)] = []
    }

    /// Removals remembered for incremental answers; an older cursor gets a full answer.
    let removalsKept: Int
    public let epoch: String
    private let state = Mutex(State())

    public init(removalsKept: Int = 10_000) {
        self.removalsKept = removalsKept
        epoch = String(UInt32.random(in: 1...UInt32.max), radix: 16)
    }

    /// Brings the tracker up to date with `states` and `inventory` at `now`, and answers a poll.
    /// - Parameter since: the cursor of the client's last answer; nil or unreadable: everything.
    public func changes(since cursor: String?, inventory: Inventory?, states: [NodeBootState], now: Date) -> NodeChangesResponse {
        var byMAC: [MACAddress: NodeBootState] = [:]
        byMAC.reserveCapacity(states.count)
        for state in states { byMAC[state.mac] = state }
        let nodes = inventory?.nodes ?? []
        return state.withLock { tracker in
            tracker.pass &+= 1
            let pass = tracker.pass
            var listed = 0
            func visit(_ mac: MACAddress, _ state: NodeBootState?, _ node: Inventory.Node?) {
                listed += 1
                let stuck = state?.isStuck(now: now) ?? false
                if var entry = tracker.entries[mac] {
                    entry.pass = pass
                    if entry.state == state && entry.stuck == stuck && entry.hostname == node?.hostname && entry.fixedIP == node?.ip
                        && entry.row.registered == (node != nil) {
                        tracker.entries[mac] = entry
                        return
                    }
                }
                tracker.sequence += 1
                let row = Self.row(mac: mac, state: state, node: node, stuck: stuck, tracker: &tracker)
                if tracker.entries[mac] == nil { tracker.order.append(mac) }
                tracker.entries[mac] = Entry(state: state, hostname: node?.hostname, fixedIP: node?.ip, stuck: stuck,
                                             version: tracker.sequence, row: row, pass: pass)
            }
            var inInventory = Set<MACAddress>()
            inInventory.reserveCapacity(nodes.count)
            for node in nodes {
                guard inInventory.insert(node.mac).inserted else { continue }
                visit(node.mac, byMAC[node.mac], node)
            }
            for state in states where !inInventory.contains(state.mac) {
                visit(state.mac, state, nil)
            }
            if tracker.entries.count > listed {
                // Gone from both the inventory and the timeline.
                for (mac, entry) in tracker.entries where entry.pass != pass {
                    tracker.sequence += 1
                    tracker.entries.removeValue(forKey: mac)
                    tracker.removed.append((entry.row.mac, tracker.sequence))
                }
                let entries = tracker.entries
                tracker.order.removeAll { entries[$0] == nil }
                if tracker.removed.count > removalsKept {
                    let trimmed = tracker.removed.count - removalsKept
                    tracker.removedFloor = tracker.removed[trimmed - 1].version
                    tracker.removed.removeFirst(trimmed)
                }
            }

            let after = Self.parse(cursor, epoch: epoch).flatMap { $0 >= tracker.removedFloor && $0 <= tracker.sequence ? $0 : nil }
            var rows: [NodeRow] = []
            var stageCounts = [Int](repeating: 0, count: BootStage.allCases.count)
            var stuck = 0, failed = 0, unregistered = 0
            var hintCounts: [Int: Int] = [:]
            for mac in tracker.order {
                guard let entry = tracker.entries[mac] else { continue }
                let row = entry.row
                if after.map({ entry.version > $0 }) ?? true { rows.append(row) }
                stageCounts[Self.stageIndex[row.stage]!] += 1
                if row.stage == .failed { failed += 1 } else if row.stuck { stuck += 1 }
                if !row.registered { unregistered += 1 }
                if let hint = row.hint { hintCounts[hint, default: 0] += 1 }
            }
            var hints: [NodeSummary.HintGroup] = []
            for (id, count) in hintCounts {
                let hint = tracker.hints[id]
                let known = after.map { hint.introduced <= $0 } ?? false
                hints.append(NodeSummary.HintGroup(id: id, count: count, stage: hint.stage, hint: known ? nil : hint.text))
            }
            hints.sort { $0.count != $1.count ? $0.count > $1.count : $0.id < $1.id }
            let summary = NodeSummary(
                total: tracker.entries.count,
                stages: zip(BootStage.allCases, stageCounts).map { NodeSummary.StageCount(stage: $0, count: $1) },
                stuck: stuck, failed: failed, unregistered: unregistered, hints: hints)
            let removed = after.map { cursor in tracker.removed.filter { $0.version > cursor }.map(\.mac) } ?? []
            return NodeChangesResponse(now: Self.rounded(now.timeIntervalSince1970), cursor: "\(epoch)-\(tracker.sequence)",
                                       full: after == nil, summary: summary, nodes: rows, removed: removed)
        }
    }

    private static let stageIndex = Dictionary(uniqueKeysWithValues: BootStage.allCases.enumerated().map { ($1, $0) })

    static func parse(_ cursor: String?, epoch: String) -> UInt64? {
        guard let cursor, let dash = cursor.lastIndex(of: "-"), cursor[..<dash] == epoch else { return nil }
        return UInt64(cursor[cursor.index(after: dash)...])
    }

    /// Milliseconds are plenty for the page, and half the digits of a full `Double`.
    static func rounded(_ seconds: Double) -> Double { (seconds * 1000).rounded() / 1000 }

    private static func row(mac: MACAddress, state: NodeBootState?, node: Inventory.Node?, stuck: Bool, tracker: inout State) -> NodeRow {
        let stage = state?.stage ?? .unseen
        var hintID: Int?
        // The same rule as `NodeStatus.make`: a hint for a stuck or failed node only.
        if stuck || stage == .failed, let hint = state?.hint {
            if let id = tracker.hintIDs[hint] {
                hintID = id
            } else {
                hintID = tracker.hints.count
                tracker.hintIDs[hint] = tracker.hints.count
                tracker.hints.append((hint, stage, tracker.sequence))
            }
        }
        return NodeRow(
            mac: mac.description, hostname: node?.hostname, ip: state?.address?.description ?? node?.ip?.description,
            registered: node != nil, stage: stage, since: state?.stageSince.map { rounded($0.timeIntervalSince1970) },
            lastSeen: state?.lastSeen.map { rounded($0.timeIntervalSince1970) }, boot: state?.boot ?? 0,
            bootStarted: stage == .unseen ? nil : state?.bootStarted.map { rounded($0.timeIntervalSince1970) },
            bootSeconds: state?.bootDuration.map(rounded), stuck: stuck, hint: hintID, image: state?.image,
            lastEvent: state?.lastEvent)
    }
}
