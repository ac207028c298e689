import BootProtocols
import Foundation
import Hummingbird
import ImageBuildKit
import NIOCore

/// Stage reports (`POST /api/v1/events`) read, checked, attributed and recorded the same way whether
/// the router or the event loop's early path (`EarlyStaticFastPath`) reads them. Synchronous: the
/// timeline only takes a short lock, so the early path records on the event loop without a hop.
struct EventIntake: Sendable {
    let timeline: BootTimeline
    /// The MAC behind a client address, for a report that names none.
    let attribute: @Sendable (IPv4Address) -> MACAddress?
    let maximumBodySize: Int

    private struct Body: Decodable {
        var mac: String?
        var stage: String?
        var detail: String?
    }

    /// Records the report in `body` from `remote`; an `HTTPError` (400) says what is wrong with it, and
    /// nothing is recorded then.
    func accept(_ body: ByteBuffer, from remote: IPv4Address?) throws(HTTPError) -> BootEvent {
        let report: Body
        do {
            report = try JSONDecoder().decode(Body.self, from: Data(buffer: body, byteTransferStrategy: .noCopy))
        } catch {
            throw HTTPError(.badRequest, message: "the body is not a JSON object {\"mac\":…, \"stage\":…, \"detail\":…}: \(error)")
        }
        guard let stageText = report.stage else { throw HTTPError(.badRequest, message: "missing \"stage\" (one of: \(Self.stages))") }
        guard let stage = NodeReport(rawValue: stageText) else {
            throw HTTPError(.badRequest, message: "unknown stage '\(stageText)' (one of: \(Self.stages))")
        }
        let remote = remote.flatMap { $0.isAny ? nil : $0 }
        var mac = report.mac.flatMap(MAC.init).flatMap { MACAddress(bytes: $0.bytes) }
        if mac == nil, let remote { mac = attribute(remote) }
        guard let mac else {
            throw HTTPError(.badRequest, message: "'\(report.mac ?? "")' is not a MAC address, and the client's address is not a known node")
        }
        let detail = report.detail.map { String($0.prefix(500)) }.flatMap { $0.isEmpty ? nil : $0 }
        let event = timeline.record(.report(stage, detail: detail), mac: mac)
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
