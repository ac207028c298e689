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

    private struct Body: Decodable {
        var mac: String?
        var stage: String?
        var detail: String?
        var token: String?
    }

    /// Records the report in `body` from `remote`; an `HTTPError` says what is wrong with it (400: the
    /// report; 403: the sender may not report for that MAC), and nothing is recorded then.
    func accept(_ body: ByteBuffer, from remote: IPv4Address?) throws(HTTPError) -> BootEvent {
        let report: Body
        do {
            report = try JSONDecoder().decode(Body.self, from: Data(buffer: body, byteTransferStrategy: .noCopy))
        } catch {
            throw HTTPError(.badRequest, message: "the body is not a JSON object {\"mac\":…, \"stage\":…, \"detail\":…}: \(error)")
        }
        guard let stageText = report.stage else { throw HTTPError(.badRequest, message: "missing \"stage\" (one of: \(Self.stages))") }
        guard let stage = NodeReport(rawValue: stageText) else {
            throw HTTPError(.badRequest, message: "unknown stage '\(stageText.prefix(40))' (one of: \(Self.stages))")
        }
        let remote = remote.flatMap { $0.isAny ? nil : $0 }
        let mac: MACAddress
        switch admission.decide(mac: report.mac, token: report.token, from: remote) {
        case .accept(let admitted): mac = admitted
        case .malformed(let why): throw HTTPError(.badRequest, message: why)
        case .refused(let why): throw HTTPError(.forbidden, message: why)
        }
        let detail = report.detail.map { String($0.prefix(500)) }.flatMap { $0.isEmpty ? nil : $0 }
        let event = timeline.record(.report(stage, detail: detail), mac: mac, source: remote)
        // An admitted sender is that node: its later downloads are attributed to it (with a token, the
        // sender's address may be known no other way).
        if let remote { timeline.learn(ip: remote, mac: mac) }
        return event
    }

    private static let stages = NodeReport.allCases.map(\.rawValue).joined(separator: ", ")

    /// The 202 answer's body: the recorded event as `/api/v1/nodes/<mac>` lists it.
    static func responseBody(_ event: BootEvent) -> ByteBuffer {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(256)
        event.writeJSON(into: &bytes, includeSummary: true)
        return ByteBuffer(bytes: bytes)
    }
}
