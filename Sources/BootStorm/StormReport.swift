import Foundation

/// The summary of one storm: pure, so the numbers come from the node results alone.
struct StormReport {
    var label: String
    var requested: Int
    var results: [NodeResult]
    var wall: Double
    var eventsPosted: Bool

    var booted: Int { results.filter { $0.failure == nil }.count }

    /// Booted nodes over the time from the first node's start to the last node's end.
    var nodesPerMinute: Double {
        guard let first = results.map(\.started).min(), let last = results.map(\.ended).max() else { return 0 }
        let span = seconds(last - first)
        return span > 0 ? Double(booted) * 60 / span : 0
    }

    /// Nearest-rank percentile of sorted values.
    static func percentile(_ sorted: [Double], _ p: Double) -> Double? {
        guard !sorted.isEmpty else { return nil }
        let rank = Int((p * Double(sorted.count)).rounded(.up))
        return sorted[min(max(rank, 1), sorted.count) - 1]
    }

    func render(concurrency: Int, rate: Double) -> String {
        var out = ""
        let rateText = rate > 0 ? String(format: "%.0f/s", rate) : "unlimited"
        out += "== \(label): \(booted)/\(requested) nodes booted (concurrency \(concurrency), arrival \(rateText), wall \(String(format: "%.1f", wall)) s)\n"
        out += pad("stage", 16) + lpad("done", 7) + lpad("failed", 8) + lpad("p50 ms", 10) + lpad("p99 ms", 10) + "\n"
        var failures: [Int] = Array(repeating: 0, count: Stage.allCases.count)
        var reasons: [String: Int] = [:]
        for result in results {
            if let failure = result.failure {
                failures[failure.stage.rawValue] += 1
                reasons["\(failure.stage.name): \(Self.generalise(failure.reason))", default: 0] += 1
            }
        }
        for stage in Stage.allCases {
            let values = results.compactMap { $0.durations[stage.rawValue] }.sorted()
            if stage == .events && !eventsPosted {
                out += pad(stage.name, 16) + lpad("-", 7) + lpad("-", 8) + lpad("skipped", 10) + lpad("", 10) + "  (not posted: --no-events)\n"
                continue
            }
            out += pad(stage.name, 16) + lpad(String(values.count), 7) + lpad(String(failures[stage.rawValue]), 8)
                + lpad(Self.ms(Self.percentile(values, 0.5)), 10) + lpad(Self.ms(Self.percentile(values, 0.99)), 10) + "\n"
        }
        let totals = results.filter { $0.failure == nil }.map { seconds($0.ended - $0.started) }.sorted()
        out += pad("total", 16) + lpad(String(totals.count), 7) + lpad(String(results.count - booted), 8)
            + lpad(Self.ms(Self.percentile(totals, 0.5)), 10) + lpad(Self.ms(Self.percentile(totals, 0.99)), 10) + "\n"
        let notStarted = requested - results.count
        if notStarted > 0 { out += "not started (wall-clock limit): \(notStarted)\n" }
        let retries = results.reduce(0) { $0 + $1.dhcpRetries }
        let tftp = results.reduce(0) { $0 + $1.tftpRequests }
        out += "nodes per minute: \(String(format: "%.1f", nodesPerMinute))   DHCP re-sends: \(retries)   TFTP reads: \(tftp)\n"
        for (reason, count) in reasons.sorted(by: { $0.value > $1.value }).prefix(5) {
            out += "  failure x\(count): \(reason)\n"
        }
        out += "RESULT label=\(label) nodes=\(requested) booted=\(booted) failed=\(results.count - booted) not_started=\(notStarted)"
            + " nodes_per_min=\(String(format: "%.1f", nodesPerMinute)) wall_s=\(String(format: "%.1f", wall))\n"
        return out
    }

    /// Reasons differ by node only in numbers and addresses; drop digits so they group.
    static func generalise(_ reason: String) -> String {
        var out = ""
        var lastWasDigit = false
        for ch in reason.prefix(200) {
            if ch.isHexDigit && ch.isNumber {
                if !lastWasDigit { out.append("#") }
                lastWasDigit = true
            } else {
                out.append(ch)
                lastWasDigit = false
            }
        }
        return out
    }

    static func ms(_ value: Double?) -> String { value.map { String(format: "%.0f", $0 * 1000) } ?? "-" }
    private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
    private func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
}
