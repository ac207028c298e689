/// A 48-bit Ethernet MAC address, stored in the low bits of a `UInt64` (no heap storage: DHCP
/// messages, leases and inventory maps hold it as a plain integer).
///
/// **Spellings accepted** (the one rule for `nodes.yaml`, `?mac=` queries, stage reports, journals and
/// the command line), six octets of exactly two hex digits each, upper or lower case:
/// - `aa:bb:cc:dd:ee:ff` (colons; iPXE's `${mac}`, Linux),
/// - `aa-bb-cc-dd-ee-ff` (hyphens; iPXE's `${mac:hexhyp}`, Windows),
/// - `aabb.ccdd.eeff` (Cisco's dotted groups of four),
/// - `aabbccddeeff` (no separator).
///
/// Nothing else: no mixed separators, no one-digit octets, no spaces, nothing before or after.
/// Printed in lower case with colons (`description`); `hyphenated` and `pxelinuxName` give the forms
/// boot files are named by.
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

    /// Parses one of the four spellings in the type's documentation; nil for anything else.
    /// One pass over the UTF-8 bytes, no allocation.
    public init?(_ text: some StringProtocol) {
        let utf8 = text.utf8
        // The length alone says which spelling it must be; a long input is refused without a scan.
        let count = utf8.count
        guard count == 12 || count == 14 || count == 17 else { return nil }
        var value: UInt64 = 0
        var separator: UInt8 = 0
        var i = 0
        for byte in utf8 {
            defer { i += 1 }
            if count == 17 && i % 3 == 2 {
                // Colon or hyphen, the same one all along.
                guard byte == UInt8(ascii: ":") || byte == UInt8(ascii: "-") else { return nil }
                if separator == 0 { separator = byte } else if byte != separator { return nil }
                continue
            }
            if count == 14 && (i == 4 || i == 9) {
                guard byte == UInt8(ascii: ".") else { return nil }
                continue
            }
            guard let nibble = hexNibble(byte) else { return nil }
            value = value << 4 | UInt64(nibble)
        }
        rawValue = value
    }

    /// Octet `i` (0 = first on the wire).
    @inlinable public subscript(i: Int) -> UInt8 {
        precondition(i >= 0 && i < 6, "MAC octet index out of range")
        return UInt8(truncatingIfNeeded: rawValue >> (40 - 8 * UInt64(i)))
    }

    /// Lower-case colon form, `52:54:00:77:00:01`.
    public var description: String { formatted(separator: UInt8(ascii: ":")) }

    /// Lower-case hyphen form, `52-54-00-77-00-01` (iPXE's `${mac:hexhyp}`; per-node iPXE scripts).
    public var hyphenated: String { formatted(separator: UInt8(ascii: "-")) }

    /// `01-52-54-00-77-00-01`: pxelinux's per-MAC file name (ARP type 1 = Ethernet).
    public var pxelinuxName: String { "01-" + hyphenated }

    private func formatted(separator: UInt8) -> String {
        String(unsafeUninitializedCapacity: 17) { buf in
            for i in 0..<6 {
                let b = self[i]
                buf[i * 3] = hexDigit(b >> 4, upperCase: false)
                buf[i * 3 + 1] = hexDigit(b & 0xF, upperCase: false)
                if i < 5 { buf[i * 3 + 2] = separator }
            }
            return 17
        }
    }

    @inlinable public static func < (lhs: MACAddress, rhs: MACAddress) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// The value of one ASCII hex digit, either case; nil for any other byte.
@inline(__always)
func hexNibble(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
    default: return nil
    }
}

/// The ASCII hex digit for `nibble` (0...15).
@inline(__always)
func hexDigit(_ nibble: UInt8, upperCase: Bool) -> UInt8 {
    nibble < 10 ? UInt8(ascii: "0") + nibble : (upperCase ? UInt8(ascii: "A") : UInt8(ascii: "a")) + nibble - 10
}
