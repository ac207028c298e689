// Typed view of one option. Decoding a value that has the wrong length or invalid UTF-8 yields
// `.raw`, so a strange client never makes a packet undecodable and every byte still round-trips.

/// One DHCP option with its value decoded (RFC 2132, RFC 4578, RFC 4039 rapid commit).
public enum DHCPOption: Hashable, Sendable, CustomStringConvertible {
    case subnetMask(IPv4Address)
    case router([IPv4Address])
    case domainNameServer([IPv4Address])
    case hostName(String)
    case domainName(String)
    /// Option 43; for PXE clients an encapsulated list of PXE sub-options (see `pxeDiscoveryControl`).
    case vendorSpecific([UInt8])
    case requestedIPAddress(IPv4Address)
    /// Seconds; `UInt32.max` means infinite.
    case leaseTime(UInt32)
    case optionOverload(DHCPOptionOverload)
    case messageType(DHCPMessageType)
    case serverIdentifier(IPv4Address)
    case parameterRequestList([DHCPOptionCode])
    /// Option 56: human-readable text, e.g. why a NAK was sent.
    case message(String)
    case maximumMessageSize(UInt16)
    case renewalTime(UInt32)
    case rebindingTime(UInt32)
    /// Option 60: bytes, conventionally ASCII (`PXEClient:Arch:00000:UNDI:002001`, `HTTPClient`, `udhcp 1.35.0`).
    case vendorClassIdentifier([UInt8])
    case clientIdentifier([UInt8])
    case tftpServerName(String)
    case bootfileName(String)
    /// Option 77 exactly as sent: iPXE sends the bare string `iPXE`, RFC 3004 clients a length-prefixed list.
    case userClass([UInt8])
    case rapidCommit
    case clientSystemArchitecture([DHCPClientArchitecture])
    /// Option 94: UNDI interface type (1 = UNDI) and version.
    case clientNetworkInterface(type: UInt8, major: UInt8, minor: UInt8)
    /// Option 97: type (0 = UUID/GUID) and identifier (16 bytes for type 0).
    case clientMachineIdentifier(type: UInt8, identifier: [UInt8])
    /// Any other option, or a known one whose value did not parse.
    case raw(code: DHCPOptionCode, data: [UInt8])

    /// PXE vendor option 43 with sub-option 6 (PXE_DISCOVERY_CONTROL) = 8: "use the boot file in this
    /// offer, skip boot server discovery". ProxyDHCP replies need it or some ROMs wait for a menu.
    public static let pxeDiscoveryControlBootFileOnly = DHCPOption.vendorSpecific([6, 1, 8, 255])

    public var code: DHCPOptionCode {
        switch self {
        case .subnetMask: .subnetMask
        case .router: .router
        case .domainNameServer: .domainNameServer
        case .hostName: .hostName
        case .domainName: .domainName
        case .vendorSpecific: .vendorSpecific
        case .requestedIPAddress: .requestedIPAddress
        case .leaseTime: .leaseTime
        case .optionOverload: .optionOverload
        case .messageType: .messageType
        case .serverIdentifier: .serverIdentifier
        case .parameterRequestList: .parameterRequestList
        case .message: .message
        case .maximumMessageSize: .maximumMessageSize
        case .renewalTime: .renewalTime
        case .rebindingTime: .rebindingTime
        case .vendorClassIdentifier: .vendorClassIdentifier
        case .clientIdentifier: .clientIdentifier
        case .tftpServerName: .tftpServerName
        case .bootfileName: .bootfileName
        case .userClass: .userClass
        case .rapidCommit: .rapidCommit
        case .clientSystemArchitecture: .clientSystemArchitecture
        case .clientNetworkInterface: .clientNetworkInterface
        case .clientMachineIdentifier: .clientMachineIdentifier
        case .raw(let code, _): code
        }
    }

    /// Decodes a value; falls back to `.raw` when the bytes do not fit the option's format.
    public init(code: DHCPOptionCode, data: some Collection<UInt8>) {
        let bytes = ArraySlice(data)
        let n = bytes.count
        let s = bytes.startIndex
        func address() -> IPv4Address { IPv4Address(rawValue: dhcpReadUInt32(bytes)) }
        func addresses() -> [IPv4Address] {
            stride(from: s, to: bytes.endIndex, by: 4).map { IPv4Address(rawValue: dhcpReadUInt32(bytes[$0..<($0 + 4)])) }
        }
        let parsed: DHCPOption? = switch code {
        case .subnetMask where n == 4: .subnetMask(address())
        case .router where n > 0 && n % 4 == 0: .router(addresses())
        case .domainNameServer where n > 0 && n % 4 == 0: .domainNameServer(addresses())
        case .hostName: String(validating: bytes, as: UTF8.self).map { .hostName($0) }
        case .domainName: String(validating: bytes, as: UTF8.self).map { .domainName($0) }
        case .vendorSpecific: .vendorSpecific(Array(bytes))
        case .requestedIPAddress where n == 4: .requestedIPAddress(address())
        case .leaseTime where n == 4: .leaseTime(dhcpReadUInt32(bytes))
        case .optionOverload where n == 1: DHCPOptionOverload(rawValue: bytes[s]).map { .optionOverload($0) }
        case .messageType where n == 1: DHCPMessageType(rawValue: bytes[s]).map { .messageType($0) }
        case .serverIdentifier where n == 4: .serverIdentifier(address())
        case .parameterRequestList: .parameterRequestList(bytes.map { DHCPOptionCode($0) })
        case .message: String(validating: bytes, as: UTF8.self).map { .message($0) }
        case .maximumMessageSize where n == 2: .maximumMessageSize(UInt16(bytes[s]) << 8 | UInt16(bytes[s + 1]))
        case .renewalTime where n == 4: .renewalTime(dhcpReadUInt32(bytes))
        case .rebindingTime where n == 4: .rebindingTime(dhcpReadUInt32(bytes))
        case .vendorClassIdentifier where n > 0: .vendorClassIdentifier(Array(bytes))
        case .clientIdentifier where n > 0: .clientIdentifier(Array(bytes))
        case .tftpServerName: String(validating: bytes, as: UTF8.self).map { .tftpServerName($0) }
        case .bootfileName: String(validating: bytes, as: UTF8.self).map { .bootfileName($0) }
        case .userClass where n > 0: .userClass(Array(bytes))
        case .rapidCommit where n == 0: .rapidCommit
        case .clientSystemArchitecture where n > 0 && n % 2 == 0:
            .clientSystemArchitecture(stride(from: s, to: bytes.endIndex, by: 2).map {
                DHCPClientArchitecture(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]))
            })
        case .clientNetworkInterface where n == 3:
            .clientNetworkInterface(type: bytes[s], major: bytes[s + 1], minor: bytes[s + 2])
        case .clientMachineIdentifier where n >= 1:
            .clientMachineIdentifier(type: bytes[s], identifier: Array(bytes.dropFirst()))
        default: nil
        }
        self = parsed ?? .raw(code: code, data: Array(bytes))
    }

    /// Appends header and value straight into the options storage (no intermediate array).
    func appendEncoded(to options: inout DHCPOptions) {
        func header(_ length: Int) { options.appendHeader(code.rawValue, length) }
        func put32(_ v: UInt32) {
            options.storage.append(UInt8(truncatingIfNeeded: v >> 24))
            options.storage.append(UInt8(truncatingIfNeeded: v >> 16))
            options.storage.append(UInt8(truncatingIfNeeded: v >> 8))
            options.storage.append(UInt8(truncatingIfNeeded: v))
        }
        func putBytes(_ bytes: some Collection<UInt8>) {
            precondition(bytes.count <= Int(UInt16.max), "option \(code) longer than 65535 bytes")
            header(bytes.count)
            options.storage.append(contentsOf: bytes)
        }
        switch self {
        case .subnetMask(let a), .requestedIPAddress(let a), .serverIdentifier(let a):
            header(4); put32(a.rawValue)
        case .router(let list), .domainNameServer(let list):
            header(list.count * 4); for a in list { put32(a.rawValue) }
        case .hostName(let s), .domainName(let s), .message(let s), .tftpServerName(let s), .bootfileName(let s):
            putBytes(s.utf8)
        case .vendorSpecific(let b), .vendorClassIdentifier(let b), .clientIdentifier(let b), .userClass(let b):
            putBytes(b)
        case .leaseTime(let v), .renewalTime(let v), .rebindingTime(let v):
            header(4); put32(v)
        case .optionOverload(let o):
            header(1); options.storage.append(o.rawValue)
        case .messageType(let t):
            header(1); options.storage.append(t.rawValue)
        case .parameterRequestList(let codes):
            header(codes.count); for c in codes { options.storage.append(c.rawValue) }
        case .maximumMessageSize(let v):
            header(2); options.storage.append(UInt8(v >> 8)); options.storage.append(UInt8(v & 0xFF))
        case .rapidCommit:
            header(0)
        case .clientSystemArchitecture(let archs):
            header(archs.count * 2)
            for a in archs { options.storage.append(UInt8(a.rawValue >> 8)); options.storage.append(UInt8(a.rawValue & 0xFF)) }
        case .clientNetworkInterface(let type, let major, let minor):
            header(3); options.storage.append(contentsOf: [type, major, minor])
        case .clientMachineIdentifier(let type, let identifier):
            header(1 + identifier.count); options.storage.append(type); options.storage.append(contentsOf: identifier)
        case .raw(let code, let data):
            precondition(code != .pad && code != .end, "pad and end are framing, not options")
            putBytes(data)
        }
    }

    /// One line: `name (code): value`, used by logs and the golden fixture renderings.
    public var description: String {
        let value: String = switch self {
        case .subnetMask(let a), .requestedIPAddress(let a), .serverIdentifier(let a): "\(a)"
        case .router(let l), .domainNameServer(let l): l.map(\.description).joined(separator: ", ")
        case .hostName(let s), .domainName(let s), .message(let s), .tftpServerName(let s), .bootfileName(let s):
            quoted(s)
        case .vendorSpecific(let b), .clientIdentifier(let b): hex(b)
        case .vendorClassIdentifier(let b), .userClass(let b): printable(b)
        case .leaseTime(let v), .renewalTime(let v), .rebindingTime(let v):
            v == UInt32.max ? "infinite" : "\(v) s"
        case .optionOverload(let o): "\(o)"
        case .messageType(let t): "\(t)"
        case .parameterRequestList(let codes): codes.map(\.description).joined(separator: ", ")
        case .maximumMessageSize(let v): "\(v)"
        case .rapidCommit: "(empty)"
        case .clientSystemArchitecture(let archs): archs.map(\.description).joined(separator: ", ")
        case .clientNetworkInterface(let type, let major, let minor):
            "\(type == 1 ? "UNDI" : "type \(type)") \(major).\(minor)"
        case .clientMachineIdentifier(let type, let id):
            type == 0 && id.count == 16 ? "UUID \(uuidString(id))" : "type \(type) \(hex(id))"
        case .raw(_, let data): hex(data)
        }
        return "\(code): \(value)"
    }
}

private func hex(_ bytes: some Collection<UInt8>) -> String {
    bytes.isEmpty ? "(empty)" : bytes.map { byte in
        let s = String(byte, radix: 16)
        return s.count == 1 ? "0" + s : s
    }.joined(separator: " ")
}

/// ASCII-printable bytes as a quoted string, anything else as hex.
private func printable(_ bytes: [UInt8]) -> String {
    if !bytes.isEmpty, bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) {
        return quoted(String(decoding: bytes, as: UTF8.self))
    }
    return hex(bytes)
}

private func quoted(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case _ where scalar.value < 0x20 || scalar.value == 0x7F:
            out += "\\u{\(String(scalar.value, radix: 16))}"
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}

/// RFC 4122 text form; PXE firmware stores the first three fields little-endian, but the bytes are
/// printed as sent so the rendering never guesses.
private func uuidString(_ b: [UInt8]) -> String {
    let h = hex(b).split(separator: " ").joined()
    let c = Array(h)
    return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-"
        + String(c[16..<20]) + "-" + String(c[20..<32])
}
