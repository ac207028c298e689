import Foundation
import ImageBuildKit

/// Follows a set of nodes through the boot that a power command started, from the server's
/// `GET /api/v1/nodes` answers (`imagebuild reboot --wait`). Pure: answers in, per-node outcomes out.
///
/// Only what the server saw after the node's own power command returned (`powered(_:at:)`, on the
/// server's clock) counts: a node that was `up`, or half-way through a boot, before the reboot is
/// `waiting` until its new boot shows, and is done when it is `up` again since then. A node's time-out
/// runs from that moment too.
public struct RebootWatch: Sendable {
    public enum Outcome: Sendable, Equatable {
        /// Nothing seen from it since the power command.
        case waiting
        case booting(BootStage)
        case up(seconds: Double)
        case failed(String)
        /// No `up` within the node's time-out; the last stage it reached since the power command.
        case timedOut(BootStage?)
        /// The power command itself failed for this node.
        case notPowered(String)

        public var isFinal: Bool {
            switch self {
            case .waiting, .booting: false
            case .up, .failed, .timedOut, .notPowered: true
            }
        }
    }

    public struct Node: Sendable, Equatable {
        public var hostname: String
        public var mac: String
        public var outcome: Outcome = .waiting
        /// When its power command returned (server clock); nil: not yet.
        public var start: Double?
        /// When the current stage began (server clock), for the table.
        public var stageSince: Double?
        public var hint: String?
    }

    public private(set) var nodes: [Node]
    public let nodeTimeout: Double

    public init(nodes: [(hostname: String, mac: String)], nodeTimeout: Double) {
        self.nodes = nodes.map { Node(hostname: $0.hostname, mac: $0.mac.lowercased()) }
        self.nodeTimeout = nodeTimeout
    }

    /// The node's power command returned at `time` (server clock): its new boot starts here.
    public mutating func powered(_ hostname: String, at time: Double) {
        guard let index = nodes.firstIndex(where: { $0.hostname == hostname }) else { return }
        nodes[index].start = time
    }

    /// Marks a node whose power command failed: it is not followed.
    public mutating func powerFailed(_ hostname: String, _ reason: String) {
        guard let index = nodes.firstIndex(where: { $0.hostname == hostname }) else { return }
        nodes[index].outcome = .notPowered(reason)
    }

    /// Applies one answer of the server; returns the indices of nodes whose outcome changed.
    @discardableResult
    public mutating func update(_ response: NodesResponse) -> [Int] {
        var byMAC: [String: NodeStatus] = [:]
        for status in response.nodes { byMAC[status.mac.lowercased()] = status }
        var changed: [Int] = []
        for index in nodes.indices where !nodes[index].outcome.isFinal {
            guard let start = nodes[index].start else { continue }
            let before = nodes[index].outcome
            let status = byMAC[nodes[index].mac]
            if let status, let since = status.since, since >= start {
                switch status.stage {
                case .up: nodes[index].outcome = .up(seconds: since - start)
                case .failed:
                    nodes[index].outcome = .failed(status.failure ?? "failed")
                    nodes[index].hint = status.hint
                case .unseen: break
                default:
                    nodes[index].outcome = .booting(status.stage)
                    nodes[index].hint = status.hint
                }
                nodes[index].stageSince = since
            }
            if !nodes[index].outcome.isFinal, response.now - start > nodeTimeout {
                if case .booting(let stage) = nodes[index].outcome {
                    nodes[index].outcome = .timedOut(stage)
                } else {
                    nodes[index].outcome = .timedOut(nil)
                }
                nodes[index].hint = nodes[index].hint ?? status?.hint
            }
            if nodes[index].outcome != before { changed.append(index) }
        }
        return changed
    }

    public var finished: Bool { nodes.allSatisfy(\.outcome.isFinal) }
    public var allUp: Bool { nodes.allSatisfy { if case .up = $0.outcome { true } else { false } } }

    /// `up 41s`, `kernel`, `waiting`, `FAILED: ...`: one cell of the table or one progress line.
    public static func describe(_ outcome: Outcome) -> String {
        switch outcome {
        case .waiting: "waiting"
        case .booting(let stage): stage.rawValue
        case .up(let seconds): "up in \(NodeStatusTable.duration(seconds))"
        case .failed(let reason): "FAILED: \(reason)"
        case .timedOut(let stage): "TIMED OUT " + (stage.map { "at \($0.rawValue)" } ?? "with no sign of a boot")
        case .notPowered(let reason): "NOT POWERED: \(reason)"
        }
    }

    /// The short stage name counted in the summary line.
    public static func bucket(_ outcome: Outcome) -> String {
        switch outcome {
        case .waiting: "waiting"
        case .booting(let stage): stage.rawValue
        case .up: "up"
        case .failed, .notPowered: "failed"
        case .timedOut: "timed out"
        }
    }

    /// `3 up, 2 kernel, 1 waiting`: the stages in boot order, then the endings.
    public var summary: String {
        var counts: [String: Int] = [:]
        for node in nodes { counts[Self.bucket(node.outcome), default: 0] += 1 }
        let order = ["up"] + BootStage.allCases.reversed().filter { $0 != .up && $0 != .failed && $0 != .unseen }.map(\.rawValue)
            + ["waiting", "failed", "timed out"]
        return order.compactMap { name in counts[name].map { "\($0) \(name)" } }.joined(separator: ", ")
    }

    /// The table a terminal shows (redrawn): every node not up yet, then the up ones, at most `limit` rows.
    public func table(now: Double, limit: Int = 40) -> String {
        let order = nodes.sorted { a, b in
            let aUp = { if case .up = a.outcome { true } else { false } }(), bUp = { if case .up = b.outcome { true } else { false } }()
            return aUp != bUp ? !aUp : a.hostname.localizedStandardCompare(b.hostname) == .orderedAscending
        }
        let width = max(4, nodes.map(\.hostname.count).max() ?? 4)
        var text = "NODE".padding(toLength: width, withPad: " ", startingAt: 0) + "  STAGE\n"
        for node in order.prefix(limit) {
            var cell = Self.describe(node.outcome)
            if case .booting = node.outcome, let since = node.stageSince { cell += " (\(NodeStatusTable.duration(max(0, now - since))))" }
            text += node.hostname.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + cell + "\n"
        }
        if order.count > limit { text += "... and \(order.count - limit) more\n" }
        return text
    }
}
