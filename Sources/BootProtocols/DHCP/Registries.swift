// RFC registries as enums that print their names, so logs and golden files read as words.
// Unknown values stay representable (`.other`) because the wire carries whatever a client sends.

/// BOOTP `op` field (RFC 951).
public enum DHCPOpcode: UInt8, Hashable, Sendable, CustomStringConvertible {
    case bootRequest = 1
    case bootReply = 2

    public var description: String { self == .bootRequest ? "BOOTREQUEST" : "BOOTREPLY" }
}

/// Option 53 values (RFC 2132 §9.6, RFC 4388, RFC 6926, RFC 7724).
public enum DHCPMessageType: UInt8, Hashable, Sendable, CustomStringConvertible {
    case discover = 1, offer, request, decline, ack, nak, release, inform
    case forceRenew, leaseQuery, leaseUnassigned, leaseUnknown, leaseActive
    case bulkLeaseQuery, leaseQueryDone, activeLeaseQuery, leaseQueryStatus, tls

    public var description: String {
        switch self {
        case .discover: "DISCOVER"
        case .offer: "OFFER"
        case .request: "REQUEST"
        case .decline: "DECLINE"
        case .ack: "ACK"
        case .nak: "NAK"
        case .release: "RELEASE"
        case .inform: "INFORM"
        case .forceRenew: "FORCERENEW"
        case .leaseQuery: "LEASEQUERY"
        case .leaseUnassigned: "LEASEUNASSIGNED"
        case .leaseUnknown: "LEASEUNKNOWN"
        case .leaseActive: "LEASEACTIVE"
        case .bulkLeaseQuery: "BULKLEASEQUERY"
        case .leaseQueryDone: "LEASEQUERYDONE"
        case .activeLeaseQuery: "ACTIVELEASEQUERY"
        case .leaseQueryStatus: "LEASEQUERYSTATUS"
        case .tls: "TLS"
        }
    }
}

/// Option 52 values: which BOOTP fields carry extra options (RFC 2132 §9.3).
public enum DHCPOptionOverload: UInt8, Hashable, Sendable, CustomStringConvertible {
    case file = 1, sname = 2, both = 3

    public var usesFile: Bool { self != .sname }
    public var usesSname: Bool { self != .file }
    public var description: String {
        switch self {
        case .file: "file"
        case .sname: "sname"
        case .both: "file+sname"
        }
    }
}

/// DHCP option codes (RFC 2132, RFC 4578 and the ones boot clients commonly request).
///
/// An open registry: a struct with named constants (like `HTTPField.Name`) rather than a closed
/// `enum`, because the wire carries any byte and every code must round-trip. One byte of storage,
/// `description` prints the registry name.
public struct DHCPOptionCode: RawRepresentable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt8) { self.rawValue = rawValue }

    public static let pad = Self(0)
    public static let subnetMask = Self(1)
    public static let timeOffset = Self(2)
    public static let router = Self(3)
    public static let timeServer = Self(4)
    public static let nameServer = Self(5)
    public static let domainNameServer = Self(6)
    public static let logServer = Self(7)
    public static let hostName = Self(12)
    public static let bootFileSize = Self(13)
    public static let domainName = Self(15)
    public static let rootPath = Self(17)
    public static let interfaceMTU = Self(26)
    public static let broadcastAddress = Self(28)
    public static let staticRoute = Self(33)
    public static let nisDomain = Self(40)
    public static let nisServers = Self(41)
    public static let ntpServers = Self(42)
    public static let vendorSpecific = Self(43)
    public static let netbiosNameServer = Self(44)
    public static let netbiosNodeType = Self(46)
    public static let netbiosScope = Self(47)
    public static let requestedIPAddress = Self(50)
    public static let leaseTime = Self(51)
    public static let optionOverload = Self(52)
    public static let messageType = Self(53)
    public static let serverIdentifier = Self(54)
    public static let parameterRequestList = Self(55)
    public static let message = Self(56)
    public static let maximumMessageSize = Self(57)
    public static let renewalTime = Self(58)
    public static let rebindingTime = Self(59)
    public static let vendorClassIdentifier = Self(60)
    public static let clientIdentifier = Self(61)
    public static let tftpServerName = Self(66)
    public static let bootfileName = Self(67)
    public static let userClass = Self(77)
    public static let rapidCommit = Self(80)
    public static let clientFQDN = Self(81)
    public static let relayAgentInformation = Self(82)
    public static let clientSystemArchitecture = Self(93)
    public static let clientNetworkInterface = Self(94)
    public static let clientMachineIdentifier = Self(97)
    public static let domainSearch = Self(119)
    public static let classlessStaticRoute = Self(121)
    public static let ipxeEncapsulated = Self(175)
    public static let pxelinuxMagic = Self(208)
    public static let pxelinuxConfigFile = Self(209)
    public static let pxelinuxPathPrefix = Self(210)
    public static let pxelinuxRebootTime = Self(211)
    public static let end = Self(255)

    private static let names: [String?] = {
        var names = [String?](repeating: nil, count: 256)
        let known: [(UInt8, String)] = [
            (0, "pad"), (1, "subnet mask"), (2, "time offset"), (3, "router"), (4, "time server"),
            (5, "name server"), (6, "domain name server"), (7, "log server"), (12, "host name"),
            (13, "boot file size"), (15, "domain name"), (17, "root path"), (26, "interface MTU"),
            (28, "broadcast address"), (33, "static route"), (40, "NIS domain"), (41, "NIS servers"),
            (42, "NTP servers"), (43, "vendor specific"), (44, "NetBIOS name server"),
            (46, "NetBIOS node type"), (47, "NetBIOS scope"), (50, "requested IP address"),
            (51, "lease time"), (52, "option overload"), (53, "message type"), (54, "server identifier"),
            (55, "parameter request list"), (56, "message"), (57, "maximum message size"),
            (58, "renewal time"), (59, "rebinding time"), (60, "vendor class identifier"),
            (61, "client identifier"), (66, "TFTP server name"), (67, "bootfile name"), (77, "user class"),
            (80, "rapid commit"), (81, "client FQDN"), (82, "relay agent information"),
            (93, "client system architecture"), (94, "client network interface"),
            (97, "client machine identifier"), (119, "domain search"), (121, "classless static route"),
            (175, "iPXE encapsulated"), (208, "pxelinux magic"), (209, "pxelinux config file"),
            (210, "pxelinux path prefix"), (211, "pxelinux reboot time"), (255, "end"),
        ]
        for (code, name) in known { names[Int(code)] = name }
        return names
    }()

    /// Registry name, `nil` for a code this table does not know.
    public var name: String? { DHCPOptionCode.names[Int(rawValue)] }
    public var description: String { name.map { "\($0) (\(rawValue))" } ?? "option \(rawValue)" }
    @inlinable public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// Option 93 values: the IANA "Processor Architecture Types" registry (RFC 4578 §2.1 and later additions).
///
/// Open like `DHCPOptionCode`: named constants over the 16-bit value, so values registered after this
/// table was written still round-trip. Boot file selection keys on this.
public struct DHCPClientArchitecture: RawRepresentable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt16) { self.rawValue = rawValue }

    public static let x86BIOS = Self(0)
    public static let itanium = Self(2)
    public static let x86UEFI = Self(6)
    public static let x64UEFI = Self(7)
    /// EFI Byte Code; RFC 4578 originally swapped 7 and 9, so some x64 firmware still sends 9.
    public static let ebc = Self(9)
    public static let arm32UEFI = Self(10)
    public static let arm64UEFI = Self(11)
    public static let x86UEFIHTTP = Self(15)
    public static let x64UEFIHTTP = Self(16)
    public static let ebcHTTP = Self(17)
    public static let arm32UEFIHTTP = Self(18)
    public static let arm64UEFIHTTP = Self(19)
    public static let x86BIOSHTTP = Self(20)
    public static let arm32UBoot = Self(21)
    public static let arm64UBoot = Self(22)
    public static let riscv32UEFI = Self(25)
    public static let riscv64UEFI = Self(27)
    public static let riscv64UEFIHTTP = Self(28)
    public static let loongArch64UEFI = Self(39)
    public static let loongArch64UEFIHTTP = Self(40)

    private static let names: [String] = [
        "x86 BIOS", "NEC/PC98", "Itanium", "DEC Alpha", "Arc x86", "Intel Lean Client", "x86 UEFI",
        "x64 UEFI", "EFI Xscale", "EBC", "ARM 32-bit UEFI", "ARM 64-bit UEFI", "PowerPC Open Firmware",
        "PowerPC ePAPR", "POWER OPAL v3", "x86 UEFI HTTP", "x64 UEFI HTTP", "EBC HTTP",
        "ARM 32-bit UEFI HTTP", "ARM 64-bit UEFI HTTP", "x86 BIOS HTTP", "ARM 32-bit U-Boot",
        "ARM 64-bit U-Boot", "ARM 32-bit U-Boot HTTP", "ARM 64-bit U-Boot HTTP", "RISC-V 32-bit UEFI",
        "RISC-V 32-bit UEFI HTTP", "RISC-V 64-bit UEFI", "RISC-V 64-bit UEFI HTTP", "RISC-V 128-bit UEFI",
        "RISC-V 128-bit UEFI HTTP", "s390 Basic", "s390 Extended", "MIPS 32-bit UEFI", "MIPS 64-bit UEFI",
        "Sunway 32-bit UEFI", "Sunway 64-bit UEFI", "LoongArch 32-bit UEFI", "LoongArch 32-bit UEFI HTTP",
        "LoongArch 64-bit UEFI", "LoongArch 64-bit UEFI HTTP", "ARM rpiboot",
    ]

    /// Registry name, `nil` past the end of this table.
    public var name: String? { Int(rawValue) < Self.names.count ? Self.names[Int(rawValue)] : nil }

    /// The UEFI/U-Boot "boot from HTTP" values: such a client wants a URL and option 60 `HTTPClient`.
    public var isHTTPBoot: Bool {
        switch rawValue {
        case 15...20, 23, 24, 26, 28, 30, 38, 40: true
        default: false
        }
    }

    public var description: String { name.map { "\($0) (\(rawValue))" } ?? "architecture \(rawValue)" }
    @inlinable public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}
