/// Why a DHCP packet could not be decoded or a message could not be encoded.
///
/// Offsets are byte offsets into the UDP payload, so a log line points at the faulty byte.
public enum DHCPError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The packet is shorter than the 236-byte BOOTP header plus the 4-byte magic cookie.
    case truncated(length: Int, minimum: Int)
    /// Bytes 236..<240 are not 99.130.83.99: plain BOOTP or not DHCP at all.
    case badMagicCookie(UInt32)
    case badOpcode(UInt8)
    /// `hlen` larger than the 16-byte `chaddr` field.
    case badHardwareAddressLength(UInt8)
    /// An option's length byte (or the length byte itself) runs past the end of its area.
    case optionOverrun(code: UInt8, offset: Int, length: Int, area: DHCPOptionArea)
    /// An option area ended without the End option (255).
    case missingEnd(area: DHCPOptionArea)
    /// Option 52 with a length other than 1 or a value outside 1...3, or given twice.
    case badOptionOverload(offset: Int)
    /// Encoding: `sname` longer than 63 bytes or `file` longer than 127 (one byte stays for the NUL).
    case fieldTooLong(field: String, length: Int, maximum: Int)
    /// Encoding: the options do not fit the client's maximum message size even using `file`/`sname`.
    case optionsTooLarge(needed: Int, available: Int)

    public var description: String {
        switch self {
        case .truncated(let length, let minimum):
            "DHCP packet too short: \(length) bytes, a DHCP message needs at least \(minimum) (BOOTP header + magic cookie)"
        case .badMagicCookie(let cookie):
            "not a DHCP message: magic cookie at offset 236 is 0x\(String(cookie, radix: 16)), expected 0x63825363"
        case .badOpcode(let op):
            "bad BOOTP op \(op) at offset 0 (expected 1 BOOTREQUEST or 2 BOOTREPLY)"
        case .badHardwareAddressLength(let hlen):
            "bad hlen \(hlen) at offset 2: chaddr holds at most 16 bytes"
        case .optionOverrun(let code, let offset, let length, let area):
            "option \(DHCPOptionCode(code)) at offset \(offset) in the \(area) area claims \(length) bytes, past the end of the area"
        case .missingEnd(let area):
            "the \(area) option area has no End option (255)"
        case .badOptionOverload(let offset):
            "invalid option overload (52) at offset \(offset): needs exactly one byte valued 1, 2 or 3, given once"
        case .fieldTooLong(let field, let length, let maximum):
            "cannot encode \(field): \(length) bytes, at most \(maximum) fit"
        case .optionsTooLarge(let needed, let available):
            "cannot encode options: \(needed) bytes needed, \(available) available within the maximum message size"
        }
    }
}

/// Where options were found: the options field proper, or `file`/`sname` borrowed via option 52.
public enum DHCPOptionArea: String, Hashable, Sendable, CustomStringConvertible {
    case options, file, sname
    public var description: String { rawValue }
}
