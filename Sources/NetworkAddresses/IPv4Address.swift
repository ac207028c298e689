/// An IPv4 address stored as its numeric value (`192.0.2.1` is `0xC000_0201`).
///
/// Numeric storage makes subnet arithmetic, pool iteration (`Strideable`) and hashing trivial and
/// keeps DHCP messages, leases and inventory maps free of per-address heap storage.
public struct IPv4Address: Hashable, Sendable, Comparable, Strideable, CustomStringConvertible {
    public var rawValue: UInt32

    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    @inlinable public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        rawValue = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses dotted-quad notation (`"192.0.2.1"`): exactly four decimal parts, each 0...255,
    /// at most three ASCII digits per part, no sign, no spaces.
    public init?(_ text: some StringProtocol) {
        var value: UInt32 = 0
        var part: UInt32 = 0
        var digits = 0
        var parts = 0
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                digits += 1
                if digits > 3 { return nil }
                part = part * 10 + UInt32(byte - UInt8(ascii: "0"))
                if part > 255 { return nil }
            case UInt8(ascii: "."):
                if digits == 0 || parts == 3 { return nil }
                value = value << 8 | part
                parts += 1
                part = 0
                digits = 0
            default:
                return nil
            }
        }
        if digits == 0 || parts != 3 { return nil }
        rawValue = value << 8 | part
    }

    public static let any = IPv4Address(rawValue: 0)
    public static let broadcast = IPv4Address(rawValue: 0xFFFF_FFFF)

    @inlinable public var isAny: Bool { rawValue == 0 }

    /// The four octets, most significant first.
    @inlinable public var octets: (UInt8, UInt8, UInt8, UInt8) {
        (UInt8(truncatingIfNeeded: rawValue >> 24), UInt8(truncatingIfNeeded: rawValue >> 16),
         UInt8(truncatingIfNeeded: rawValue >> 8), UInt8(truncatingIfNeeded: rawValue))
    }

    /// Eight upper-case hex digits, pxelinux's per-IP file name (`192.168.1.98` is `C0A80162`).
    public var hex: String {
        String(unsafeUninitializedCapacity: 8) { buf in
            for i in 0..<8 { buf[i] = hexDigit(UInt8(truncatingIfNeeded: rawValue >> (28 - 4 * UInt32(i))) & 0xF, upperCase: true) }
            return 8
        }
    }

    public var description: String {
        let o = octets
        return "\(o.0).\(o.1).\(o.2).\(o.3)"
    }

    @inlinable public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.rawValue < rhs.rawValue }
    @inlinable public func distance(to other: IPv4Address) -> Int { Int(other.rawValue) - Int(rawValue) }
    @inlinable public func advanced(by n: Int) -> IPv4Address {
        IPv4Address(rawValue: UInt32(truncatingIfNeeded: Int(rawValue) + n))
    }
}

/// An IPv4 network, `10.77.0.0/24`: the address with its host bits cleared, and the prefix length.
public struct IPv4Network: Hashable, Sendable, CustomStringConvertible {
    public let address: IPv4Address
    public let prefix: Int

    /// `address/prefix` with the host bits of `address` cleared; nil when `prefix` is outside 0...32.
    public init?(address: IPv4Address, prefix: Int) {
        guard (0...32).contains(prefix) else { return nil }
        self.prefix = prefix
        self.address = IPv4Address(rawValue: address.rawValue & Self.mask(prefix))
    }

    /// Parses `a.b.c.d/n` (n one or two ASCII digits, 0...32); host bits in the address are cleared
    /// (`10.0.0.7/24` is `10.0.0.0/24`).
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let address = IPv4Address(parts[0]), (1...2).contains(parts[1].utf8.count) else { return nil }
        var prefix = 0
        for byte in parts[1].utf8 {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
            prefix = prefix * 10 + Int(byte - UInt8(ascii: "0"))
        }
        self.init(address: address, prefix: prefix)
    }

    @inlinable static func mask(_ prefix: Int) -> UInt32 { prefix == 0 ? 0 : UInt32.max << (32 - UInt32(prefix)) }
    /// `255.255.255.0` for a /24 (DHCP option 1).
    @inlinable public var mask: IPv4Address { IPv4Address(rawValue: Self.mask(prefix)) }
    @inlinable public var broadcast: IPv4Address { IPv4Address(rawValue: address.rawValue | ~Self.mask(prefix)) }
    /// True when `ip` is inside this network (asked per DHCP packet: no allocation, inlinable).
    @inlinable public func contains(_ ip: IPv4Address) -> Bool { ip.rawValue & Self.mask(prefix) == address.rawValue }
    public var description: String { "\(address)/\(prefix)" }
}

extension IPv4Address {
    /// `http://10.77.0.1` (port 80) or `http://10.77.0.1:8080`: the base of every URL nodes are given
    /// (boot-script URLs in DHCP replies, kernel and image URLs in boot files).
    public func httpBase(port: Int) -> String { port == 80 ? "http://\(self)" : "http://\(self):\(port)" }
}
