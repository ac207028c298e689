import BootProtocols
import Foundation
import Hummingbird
import ImageBuildKit
import NIOCore

/// Stage reports (`POST /api/v1/events`) read, checked, attributed and recorded the same way whether
/// the router or `FastPath` (before the HTTP decoder) reads them. Synchronous: the
/// timeline only takes a short lock, so the fast path records on the event loop without a hop.
struct EventIntake: Sendable {
    let timeline: BootTimeline
    /// Who may report for which MAC (see `ReportAdmission`).
    let admission: ReportAdmission
    let maximumBodySize: Int

    /// One report, or a batch: `events` instead of `stage`, each with its own `stage`, `detail` and
    /// `ago`, under the body's one `mac` and `token`.
    private struct Body: Decodable {
        var mac: String?
        var stage: String?
        var detail: String?
        var token: String?
        var ago: Double?
        var events: [Report]?
    }

    private struct Report: Decodable {
        var stage: String?
        var detail: String?
        var ago: Double?
    }

    /// At most this many reports in one batch (stage 1 sends up to four).
    static let maximumBatch = 16
    /// `ago` is at most this (seconds): a step that old is not news for a booting node.
    static let maximumAgo: Double = 3600

    /// What was recorded: the events, and whether the body was a batch (its answer is then a list).
    struct Accepted {
        var events: [BootEvent]
        var batch: Bool
    }

    /// Records the report (or batch of reports) in `body` from `remote`; an `HTTPError` says what is
    /// wrong with it (400: the report; 403: the sender may not report for that MAC), and nothing is
    /// recorded then, not even the batch's good reports.
    func accept(_ body: ByteBuffer, from remote: IPv4Address?) throws(HTTPError) -> Accepted {
        let decoded: Body
        do {
            decoded = try JSONDecoder().decode(Body.self, from: Data(buffer: body, byteTransferStrategy: .noCopy))
        } catch {
            throw HTTPError(.badRequest, message: "the body is not a JSON object {\"mac\":…, \"stage\":…, \"detail\":…}: \(error)")
        }
        let reports: [Report]
        if let events = decoded.events {
            guard decoded.stage == nil else { throw HTTPError(.badRequest, message: "give \"stage\" (one report) or \"events\" (several), not both") }
            guard (1...Self.maximumBatch).contains(events.count) else {
                throw HTTPError(.badRequest, message: "\"events\" holds 1 to \(Self.maximumBatch) reports, not \(events.count)")
            }
            reports = events
        } else {
            reports = [Report(stage: decoded.stage, detail: decoded.detail, ago: decoded.ago)]
        }
        let checked = try reports.map { report throws(HTTPError) -> (NodeReport, String?, Double) in
            guard let stageText = report.stage else { throw HTTPError(.badRequest, message: "missing \"stage\" (one of: \(Self.stages))") }
            guard let stage = NodeReport(rawValue: stageText) else {
                throw HTTPError(.badRequest, message: "unknown stage '\(stageText.prefix(40))' (one of: \(Self.stages))")
            }
            let ago = report.ago ?? 0
            guard ago >= 0, ago <= Self.maximumAgo else {
                throw HTTPError(.badRequest, message: "\"ago\" is the seconds since the step, 0 to \(Int(Self.maximumAgo)), not \(ago)")
            }
            let detail = report.detail.map { String($0.prefix(500)) }.flatMap { $0.isEmpty ? nil : $0 }
            return (stage, detail, ago)
        }
        let remote = remote.flatMap { $0.isAny ? nil : $0 }
        let mac: MACAddress
        switch admission.decide(mac: decoded.mac, token: decoded.token, from: remote) {
        case .accept(let admitted): mac = admitted
        case .malformed(let why): throw HTTPError(.badRequest, message: why)
        case .refused(let why): throw HTTPError(.forbidden, message: why)
        }
        let events = checked.map { stage, detail, ago in
            timeline.record(.report(stage, detail: detail), mac: mac, source: remote, ago: ago)
        }
        // An admitted sender is that node: its later downloads are attributed to it (with a token, the
        // sender's address may be known no other way).
        if let remote { timeline.learn(ip: remote, mac: mac) }
        return Accepted(events: events, batch: decoded.events != nil)
    }

    private static let stages = NodeReport.allCases.map(\.rawValue).joined(separator: ", ")

    /// The 202 answer's body: the recorded event as `/api/v1/nodes/<mac>` lists it; for a batch, a
    /// JSON array of them.
    static func responseBody(_ accepted: Accepted) -> ByteBuffer {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(256 * accepted.events.count + 2)
        if accepted.batch { bytes.append(UInt8(ascii: "[")) }
        for (index, event) in accepted.events.enumerated() {
            if index > 0 { bytes.append(UInt8(ascii: ",")) }
            event.writeJSON(into: &bytes, includeSummary: true)
        }
        if accepted.batch { bytes.append(UInt8(ascii: "]")) }
        return ByteBuffer(bytes: bytes)
    }
}
