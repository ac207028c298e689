import Foundation

/// A MAC address in the canonical spelling of this project: lower case, colons.
/// Accepts `aa:bb:..`, `aa-bb-..`, `aabb.ccdd.eeff` and `aabbccddeeff`, any case.
public struct MAC: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init?(_ text: String) {
        let hex = text.lowercased().filter { $0 != ":" && $0 != "-" && $0 != "." }
        guard hex.count == 12, hex.allSatisfy(\.isHexDigit) else { return nil }
        let separators = Set(text.filter { !$0.isHexDigit })
        guard separators.count <= 1 else { return nil }
        var bytes: [UInt8] = []
        var index = hex.startIndex
        for _ in 0..<6 {
            let next = hex.index(index, offsetBy: 2)
            bytes.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        self.bytes = bytes
    }

    public init(bytes: [UInt8]) { self.bytes = bytes }

    /// `52:54:00:77:00:01`
    public var description: String { bytes.map { String(format: "%02x", $0) }.joined(separator: ":") }
    /// `52-54-00-77-00-01` (iPXE's `${mac:hexhyp}`)
    public var hyphenated: String { bytes.map { String(format: "%02x", $0) }.joined(separator: "-") }
    /// `01-52-54-00-77-00-01`: pxelinux's per-MAC file name (ARP type 1 = Ethernet).
    public var pxelinuxName: String { "01-" + hyphenated }

    public static func < (a: MAC, b: MAC) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }
}

/// An IPv4 address as a number, printed dotted.
public struct IPv4: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let value: UInt32
    public init(_ value: UInt32) { self.value = value }
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isNumber), let octet = UInt8(part) else { return nil }
            value = value << 8 | UInt32(octet)
        }
        self.value = value
    }
    public var description: String { "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)" }
    /// `0A4D000B`: pxelinux's per-IP file name.
    public var hex: String { String(format: "%08X", value) }
    public static func < (a: IPv4, b: IPv4) -> Bool { a.value < b.value }
}

/// An IPv4 network, `10.77.0.0/24`.
public struct IPv4Network: Hashable, Sendable, CustomStringConvertible {
    public let address: IPv4
    public let prefix: Int
    public init?(_ text: String) {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let address = IPv4(String(parts[0])), let prefix = Int(parts[1]), (0...32).contains(prefix) else { return nil }
        self.prefix = prefix
        self.address = IPv4(address.value & Self.mask(prefix))
    }
    static func mask(_ prefix: Int) -> UInt32 { prefix == 0 ? 0 : UInt32.max << (32 - UInt32(prefix)) }
    public var mask: IPv4 { IPv4(Self.mask(prefix)) }
    public var broadcast: IPv4 { IPv4(address.value | ~Self.mask(prefix)) }
    public func contains(_ ip: IPv4) -> Bool { ip.value & Self.mask(prefix) == address.value }
    public var description: String { "\(address)/\(prefix)" }
}

/// pxelinux's lookup order for a client, as documented for PXELINUX and seen on
/// the wire: UUID (when the client sent one), `01-<mac>`, the IP in upper-case
/// hex dropping one digit at a time (8 names), then `default`. Used both to name
/// the files publish writes and by `imagebuild nodes explain`.
public func pxelinuxLookupOrder(mac: MAC, ip: IPv4?, uuid: String? = nil) -> [String] {
    var names: [String] = []
    if let uuid { names.append(uuid.lowercased()) }
    names.append(mac.pxelinuxName)
    if let ip {
        let hex = ip.hex
        for length in stride(from: 8, through: 1, by: -1) { names.append(String(hex.prefix(length))) }
    }
    names.append("default")
    return names.map { "pxelinux.cfg/" + $0 }
}
