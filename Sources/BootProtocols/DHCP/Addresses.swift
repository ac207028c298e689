// Compact address value types shared by the DHCP layer (and usable by TFTP/HTTP callers).
// Both are plain integers underneath so messages, leases and inventory maps stay allocation-free.

/// An IPv4 address stored as its big-endian numeric value (`192.0.2.1` is `0xC000_0201`).
///
/// Numeric storage makes subnet arithmetic, pool iteration (`Strideable`) and hashing trivial and
/// keeps `DHCPMessage` free of per-address heap storage.
public struct IPv4Address: Hashable, Sendable, Comparable, Strideable, CustomStringConvertible {
    public var rawValue: UInt32

    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    @inlinable public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        rawValue = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses dotted-quad notation (`"192.0.2.1"`); exactly four decimal parts, each 0...255,
    /// no leading `+`, no spaces, at most three digits per part.
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

    /// Upper-case hex form pxelinux uses for its config lookup (`192.168.1.98` → `C0A80162`).
    public var hexString: String {
        let digits: [UInt8] = Array("0123456789ABCDEF".utf8)
        var out = [UInt8](repeating: 0, count: 8)
        for i in 0..<8 { out[i] = digits[Int((rawValue >> (28 - 4 * UInt32(i))) & 0xF)] }
        return String(decoding: out, as: UTF8.self)
    }

    public var description: String {
        let o = octets
        return "\(o.0).\(o.1).\(o.2).\(o.3)"
    }

    /// True when `self` and `other` share the network part under `mask`.
    @inlinable public func isInSameSubnet(as other: IPv4Address, mask: IPv4Address) -> Bool {
        (rawValue ^ other.rawValue) & mask.rawValue == 0
    }

    @inlinable public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.rawValue < rhs.rawValue }
    @inlinable public func distance(to other: IPv4Address) -> Int { Int(other.rawValue) - Int(rawValue) }
    @inlinable public func advanced(by n: Int) -> IPv4Address {
        IPv4Address(rawValue: UInt32(truncatingIfNeeded: Int(rawValue) + n))
    }
}

/// A 48-bit Ethernet MAC address stored in the low bits of a `UInt64`.
///
/// Parses `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff` in any case; prints the lower-case colon form,
/// and `hexhyp` gives the hyphen form pxelinux and the boot root use in file names.
public struct MACAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The six octets big-endian in the low 48 bits (`aa:bb:…` is `0xAABB_…`).
    public let rawValue: UInt64

    /// Keeps only the low 48 bits so two values that print the same always compare equal.
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue & 0xFFFF_FFFF_FFFF }

    @inlinable public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8, _ b4: UInt8, _ b5: UInt8) {
        rawValue = UInt64(b0) << 40 | UInt64(b1) << 32 | UInt64(b2) << 24 | UInt64(b3) << 16
            | UInt64(b4) << 8 | UInt64(b5)
    }

    /// The first six bytes of `bytes`; nil when fewer than six.
    public init?(bytes: some Collection<UInt8>) {
        var value: UInt64 = 0
        var n = 0
        for b in bytes.prefix(6) { value = value << 8 | UInt64(b); n += 1 }
        guard n == 6 else { return nil }
        rawValue = value
    }

    /// Parses six two-digit hex groups separated consistently by `:` or `-` (any case).
    public init?(_ text: some StringProtocol) {
        let utf8 = text.utf8
        guard utf8.count == 17 else { return nil }
        var value: UInt64 = 0
        var separator: UInt8 = 0
        for (i, byte) in utf8.enumerated() {
            if i % 3 == 2 {
                guard byte == UInt8(ascii: ":") || byte == UInt8(ascii: "-") else { return nil }
                if separator == 0 { separator = byte } else if byte != separator { return nil }
                continue
            }
            guard let nibble = dhcpHexNibble(byte) else { return nil }
            value = value << 4 | UInt64(nibble)
        }
        rawValue = value
    }

    /// Octet `i` (0 = first on the wire).
    @inlinable public subscript(i: Int) -> UInt8 {
        precondition(i >= 0 && i < 6, "MAC octet index out of range")
        return UInt8(truncatingIfNeeded: rawValue >> (40 - 8 * UInt64(i)))
    }

    /// Lower-case colon form, `aa:bb:cc:dd:ee:ff`.
    public var description: String { formatted(separator: UInt8(ascii: ":")) }

    /// Lower-case hyphen form, `aa-bb-cc-dd-ee-ff` (pxelinux's `01-aa-bb-…` file names, per-node scripts).
    public var hexhyp: String { formatted(separator: UInt8(ascii: "-")) }

    private func formatted(separator: UInt8) -> String {
        String(unsafeUninitializedCapacity: 17) { buf in
            let digits: StaticString = "0123456789abcdef"
            digits.withUTF8Buffer { hex in
                for i in 0..<6 {
                    let b = self[i]
                    buf[i * 3] = hex[Int(b >> 4)]
                    buf[i * 3 + 1] = hex[Int(b & 0xF)]
                    if i < 5 { buf[i * 3 + 2] = separator }
                }
            }
            return 17
        }
    }

    @inlinable public static func < (lhs: MACAddress, rhs: MACAddress) -> Bool { lhs.rawValue < rhs.rawValue }
}

@usableFromInline
func dhcpHexNibble(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
    default: return nil
    }
}
