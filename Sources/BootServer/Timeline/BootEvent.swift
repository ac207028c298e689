import BootProtocols
import Foundation

/// How a file transfer the server made ended.
public enum TransferOutcome: Sendable, Hashable, CustomStringConvertible {
    case completed
    /// The client went away or aborted before the last byte (a PXE `tsize` probe ends this way on purpose).
    case incomplete(String)
    /// The server could not finish it (read error, time-out).
    case failed(String)
    /// Refused before any data (missing file, outside the root).
    case refused(String)

    public var label: String {
        switch self {
        case .completed: "completed"
        case .incomplete: "incomplete"
        case .failed: "failed"
        case .refused: "refused"
        }
    }

    public var reason: String? {
        switch self {
        case .completed: nil
        case .incomplete(let r), .failed(let r), .refused(let r): r
        }
    }

    public var description: String { reason.map { "\(label): \($0)" } ?? label }

    init(label: String, reason: String?) {
        switch label {
        case "completed": self = .completed
        case "failed": self = .failed(reason ?? "")
        case "refused": self = .refused(reason ?? "")
        default: self = .incomplete(reason ?? "")
        }
    }
}

public enum TransferProtocol: String, Sendable, Codable {
    case tftp, http
}

/// One thing that happened in a node's boot: seen by the server or reported by the node.
public enum BootObservation: Sendable, Hashable {
    case dhcp(DHCPStep, address: IPv4Address?, detail: String?)
    /// A file fetched over TFTP or HTTP. `size` is the file's (or range's) length when known.
    case transfer(TransferProtocol, path: String, bytes: UInt64, size: UInt64?, outcome: TransferOutcome)
    /// `GET /boot/v1/bootscript`: which image the node was sent (nil: the "not registered" loop).
    case bootScript(image: String?, detail: String?)
    case report(NodeReport, detail: String?)
    /// The node's BitTorrent client announced `event` (started, completed, stopped) to the tracker:
    /// no step of a boot, a line on its timeline (docs/swarm.md).
    case swarm(event: String, detail: String?)

    /// The stage this observation puts a node in; nil for a file that is no step of a boot (a
    /// manifest, a command line): fetching it moves no stage and begins no boot.
    public var stage: BootStage? {
        switch self {
        case .dhcp: .dhcp
        case .transfer(_, let path, _, _, _): BootStage.forFile(path)
        case .bootScript: .config
        case .report(let report, _): report.stage
        case .swarm: nil
        }
    }

    /// One line for tables and logs.
    public var summary: String {
        switch self {
        case .dhcp(let step, let address, let detail):
            var text = "DHCP \(step.rawValue.uppercased())"
            if let address { text += " \(address)" }
            if let detail, !detail.isEmpty { text += " (\(detail))" }
            return text
        case .transfer(let proto, let path, let bytes, let size, let outcome):
            let amount = size.map { "\(bytes)/\($0) bytes" } ?? "\(bytes) bytes"
            return "\(proto.rawValue.uppercased()) \(path) \(amount) \(outcome)"
        case .bootScript(let image, let detail):
            let what = image.map { "boots \($0)" } ?? "not registered"
            return "boot script: \(what)\(detail.map { " (\($0))" } ?? "")"
        case .report(let report, let detail):
            return "node: \(report.rawValue)\(detail.map { $0.isEmpty ? "" : " (\($0))" } ?? "")"
        case .swarm(let event, let detail):
            return "swarm: \(event)\(detail.map { $0.isEmpty ? "" : " (\($0))" } ?? "")"
        }
    }
}

/// An observation as stored: when, whose, and which boot of that node it belongs to.
public struct BootEvent: Sendable, Hashable {
    public var time: Date
    public var mac: MACAddress
    /// Counts the node's boots since the journal began; a new DISCOVER after `up` starts the next.
    public var boot: Int
    public var observation: BootObservation
    /// The address the server saw it come from (stage reports, transfers); nil when there is none
    /// (DHCP, where the client has no address yet) or it was not recorded.
    public var source: IPv4Address?

    public init(time: Date, mac: MACAddress, boot: Int, observation: BootObservation, source: IPv4Address? = nil) {
        self.time = time
        self.mac = mac
        self.boot = boot
        self.observation = observation
        self.source = source
    }
}

/// The journal's and the API's JSON form: flat, so `jq` and the status page read it without decoding
/// enums with associated values.
extension BootEvent: Codable {
    private enum CodingKeys: String, CodingKey {
        case time, mac, boot, kind, stage, step, ip, proto, path, bytes, size, outcome, image, detail, summary, source
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(time.timeIntervalSince1970, forKey: .time)
        try c.encode(mac.description, forKey: .mac)
        try c.encode(boot, forKey: .boot)
        try c.encodeIfPresent(observation.stage, forKey: .stage)
        try c.encodeIfPresent(source?.description, forKey: .source)
        switch observation {
        case .dhcp(let step, let address, let detail):
            try c.encode("dhcp", forKey: .kind)
            try c.encode(step, forKey: .step)
            try c.encodeIfPresent(address?.description, forKey: .ip)
            try c.encodeIfPresent(detail, forKey: .detail)
        case .transfer(let proto, let path, let bytes, let size, let outcome):
            try c.encode("transfer", forKey: .kind)
            try c.encode(proto, forKey: .proto)
            try c.encode(path, forKey: .path)
            try c.encode(bytes, forKey: .bytes)
            try c.encodeIfPresent(size, forKey: .size)
            try c.encode(outcome.label, forKey: .outcome)
            try c.encodeIfPresent(outcome.reason, forKey: .detail)
        case .bootScript(let image, let detail):
            try c.encode("bootscript", forKey: .kind)
            try c.encodeIfPresent(image, forKey: .image)
            try c.encodeIfPresent(detail, forKey: .detail)
        case .report(let report, let detail):
            try c.encode("report", forKey: .kind)
            try c.encode(report, forKey: .step)
            try c.encodeIfPresent(detail, forKey: .detail)
        case .swarm(let event, let detail):
            try c.encode("swarm", forKey: .kind)
            try c.encode(event, forKey: .step)
            try c.encodeIfPresent(detail, forKey: .detail)
        }
        if encoder.userInfo[BootEvent.includeSummary] as? Bool == true {
            try c.encode(observation.summary, forKey: .summary)
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        time = Date(timeIntervalSince1970: try c.decode(Double.self, forKey: .time))
        let macText = try c.decode(String.self, forKey: .mac)
        guard let mac = MACAddress(macText) else {
            throw DecodingError.dataCorruptedError(forKey: .mac, in: c, debugDescription: "malformed MAC '\(macText)'")
        }
        self.mac = mac
        boot = try c.decode(Int.self, forKey: .boot)
        source = try c.decodeIfPresent(String.self, forKey: .source).flatMap { IPv4Address($0) }
        let detail = try c.decodeIfPresent(String.self, forKey: .detail)
        switch try c.decode(String.self, forKey: .kind) {
        case "dhcp":
            let address = try c.decodeIfPresent(String.self, forKey: .ip).flatMap { IPv4Address($0) }
            observation = .dhcp(try c.decode(DHCPStep.self, forKey: .step), address: address, detail: detail)
        case "transfer":
            observation = .transfer(
                try c.decode(TransferProtocol.self, forKey: .proto), path: try c.decode(String.self, forKey: .path),
                bytes: try c.decode(UInt64.self, forKey: .bytes), size: try c.decodeIfPresent(UInt64.self, forKey: .size),
                outcome: TransferOutcome(label: try c.decode(String.self, forKey: .outcome), reason: detail))
        case "bootscript":
            observation = .bootScript(image: try c.decodeIfPresent(String.self, forKey: .image), detail: detail)
        case "report":
            observation = .report(try c.decode(NodeReport.self, forKey: .step), detail: detail)
        case "swarm":
            observation = .swarm(event: try c.decode(String.self, forKey: .step), detail: detail)
        case let other:
            throw DecodingError.dataCorruptedError(forKey: .kind, in: c, debugDescription: "unknown event kind '\(other)'")
        }
    }

    /// `userInfo` key: also write the one-line `summary` (the API does, the journal does not).
    public static let includeSummary = CodingUserInfoKey(rawValue: "imagebuild.includeSummary")!
}

/// The same JSON as `encode(to:)` with sorted keys and unescaped slashes, written straight into bytes.
/// Every stage report is answered with its event and every event is journalled: through
/// Foundation's `JSONEncoder` (a container box, a key lookup and a `Data` per field) that was a few
/// percent of the server's CPU in a boot storm. Tests hold the two encodings equal.
extension BootEvent {
    func writeJSON(into out: inout [UInt8], includeSummary: Bool) {
        // Keys in sorted order: boot, bytes, detail, image, ip, kind, mac, outcome, path, proto, size,
        // source, stage, step, summary, time.
        var kind = "", step: String?, ip: String?, proto: String?, path: String?, bytes: UInt64?, size: UInt64?
        var outcome: String?, image: String?, detail: String?
        switch observation {
        case .dhcp(let dhcpStep, let address, let text):
            kind = "dhcp"; step = dhcpStep.rawValue; ip = address?.description; detail = text
        case .transfer(let transferProtocol, let file, let sent, let total, let result):
            kind = "transfer"; proto = transferProtocol.rawValue; path = file; bytes = sent; size = total
            outcome = result.label; detail = result.reason
        case .bootScript(let name, let text):
            kind = "bootscript"; image = name; detail = text
        case .report(let report, let text):
            kind = "report"; step = report.rawValue; detail = text
        case .swarm(let event, let text):
            kind = "swarm"; step = event; detail = text
        }
        out.append(UInt8(ascii: "{"))
        var first = true
        func key(_ name: StaticString) {
            if !first { out.append(UInt8(ascii: ",")) }
            first = false
            out.append(UInt8(ascii: "\""))
            out.append(contentsOf: UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
            out.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
        }
        func string(_ value: String) {
            out.append(UInt8(ascii: "\""))
            for byte in value.utf8 {
                switch byte {
                case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
                case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
                case 0x08: out.append(contentsOf: [0x5C, UInt8(ascii: "b")])
                case 0x0C: out.append(contentsOf: [0x5C, UInt8(ascii: "f")])
                case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
                case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
                case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
                case 0..<0x20:
                    let hex = Array("0123456789abcdef".utf8)
                    out.append(contentsOf: [0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
                default: out.append(byte)
                }
            }
            out.append(UInt8(ascii: "\""))
        }
        func number(_ text: String) { out.append(contentsOf: text.utf8) }
        key("boot"); number(String(boot))
        if let bytes { key("bytes"); number(String(bytes)) }
        if let detail { key("detail"); string(detail) }
        if let image { key("image"); string(image) }
        if let ip { key("ip"); string(ip) }
        key("kind"); string(kind)
        key("mac"); string(mac.description)
        if let outcome { key("outcome"); string(outcome) }
        if let path { key("path"); string(path) }
        if let proto { key("proto"); string(proto) }
        if let size { key("size"); number(String(size)) }
        if let source { key("source"); string(source.description) }
        if let stage = observation.stage { key("stage"); string(stage.rawValue) }
        if let step { key("step"); string(step) }
        if includeSummary { key("summary"); string(observation.summary) }
        let seconds = time.timeIntervalSince1970
        // As JSONEncoder writes a Double: integral values without ".0", others in their shortest form.
        if !seconds.isFinite {
            key("time"); number("0")
        } else if seconds.rounded(.towardZero) == seconds, abs(seconds) < 9_007_199_254_740_992 {
            key("time"); number(String(Int64(seconds)))
        } else {
            key("time"); number("\(seconds)")
        }
        out.append(UInt8(ascii: "}"))
    }
}
