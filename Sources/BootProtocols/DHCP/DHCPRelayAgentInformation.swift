/// Option 82, relay agent information (RFC 3046): what a relay adds about the port a request came
/// in on. Sub-options are code, length, data; circuit id (1) and remote id (2) are the two relays
/// (switches, routers) commonly fill, e.g. `Gi1/0/7` and the switch's MAC or name.
public struct DHCPRelayAgentInformation: Sendable, Equatable {
    public var circuitID: [UInt8]?
    public var remoteID: [UInt8]?

    public init(circuitID: [UInt8]? = nil, remoteID: [UInt8]? = nil) {
        self.circuitID = circuitID
        self.remoteID = remoteID
    }

    /// Parses option 82's data; nil when the sub-options do not fit the option (malformed).
    public init?(data: ArraySlice<UInt8>) {
        var i = data.startIndex
        while i < data.endIndex {
            guard i + 1 < data.endIndex else { return nil }
            let code = data[i], length = Int(data[i + 1])
            let start = i + 2
            guard start + length <= data.endIndex else { return nil }
            let value = Array(data[start..<(start + length)])
            switch code {
            case 1: circuitID = value
            case 2: remoteID = value
            default: break
            }
            i = start + length
        }
    }

    /// The option's data (for tests and relays built from this code).
    public var encoded: [UInt8] {
        var bytes: [UInt8] = []
        if let circuitID { bytes += [1, UInt8(circuitID.count)] + circuitID }
        if let remoteID { bytes += [2, UInt8(remoteID.count)] + remoteID }
        return bytes
    }

    /// A sub-option as text: printable ASCII as it is, anything else as hex (`0x0004000a0107`).
    public static func printable(_ bytes: [UInt8]) -> String {
        if !bytes.isEmpty, bytes.allSatisfy({ (0x20...0x7E).contains($0) }) { return String(decoding: bytes, as: UTF8.self) }
        return "0x" + bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

extension DHCPOptions {
    /// Option 82 when present and well formed.
    public var relayAgentInformation: DHCPRelayAgentInformation? {
        self[.relayAgentInformation].flatMap(DHCPRelayAgentInformation.init(data:))
    }
}
