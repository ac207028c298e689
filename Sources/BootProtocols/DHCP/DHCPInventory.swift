// What the reply policy needs to know about the world, as small value types and protocols the
// server implements. Nothing here reads a clock or a file: the server passes views in.

/// Wall-clock seconds since the Unix epoch. Leases outlive the process, so this is wall time; it
/// reaches the policy only as an argument.
public struct DHCPTimestamp: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var secondsSinceEpoch: Int64
    public init(secondsSinceEpoch: Int64) { self.secondsSinceEpoch = secondsSinceEpoch }
    public func adding(seconds: UInt32) -> DHCPTimestamp {
        DHCPTimestamp(secondsSinceEpoch: secondsSinceEpoch + Int64(seconds))
    }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.secondsSinceEpoch < rhs.secondsSinceEpoch }
    public var description: String { "t=\(secondsSinceEpoch)" }
}

/// One IPv4 subnet the server answers for (directly attached or behind a relay).
public struct DHCPSubnet: Hashable, Sendable, CustomStringConvertible {
    /// The network (host bits cleared); its mask is option 1.
    public var network: IPv4Network
    public var routers: [IPv4Address]
    public var dnsServers: [IPv4Address]
    public var domainName: String?
    /// Lease time in seconds handed to clients of this subnet.
    public var leaseTime: UInt32
    /// Dynamic pool for clients without a fixed address; nil disables dynamic allocation here.
    public var pool: ClosedRange<IPv4Address>?

    public init(
        network: IPv4Network, routers: [IPv4Address] = [], dnsServers: [IPv4Address] = [],
        domainName: String? = nil, leaseTime: UInt32 = 3600, pool: ClosedRange<IPv4Address>? = nil
    ) {
        self.network = network
        self.routers = routers
        self.dnsServers = dnsServers
        self.domainName = domainName
        self.leaseTime = leaseTime
        self.pool = pool
    }

    @inlinable public func contains(_ address: IPv4Address) -> Bool { network.contains(address) }

    public var description: String { network.description }
}

/// An inventory entry: a node the administrator declared.
public struct DHCPHost: Hashable, Sendable {
    public var mac: MACAddress
    /// Fixed address; nil means "known, but take an address from the pool".
    public var address: IPv4Address?
    public var hostname: String?
    /// Overrides option 93 (firmware that lies about its architecture).
    public var architecture: DHCPClientArchitecture?
    /// Overrides the architecture table for this node (a path in the boot root, or a full URL).
    public var bootFile: String?
    /// The site's BIOS boot path for this node, whatever its firmware would get.
    public var biosLoader: DHCPBIOSLoader?
    /// The file the site chose for this node's x86-64 UEFI PXE boot (firmware and iPXE ROMs alike: the
    /// Secure Boot chain's shim); nil: the architecture table's.
    public var uefiLoader: String?

    public init(
        mac: MACAddress, address: IPv4Address? = nil, hostname: String? = nil,
        architecture: DHCPClientArchitecture? = nil, bootFile: String? = nil, biosLoader: DHCPBIOSLoader? = nil,
        uefiLoader: String? = nil
    ) {
        self.uefiLoader = uefiLoader
        self.mac = mac
        self.address = address
        self.hostname = hostname
        self.architecture = architecture
        self.bootFile = bootFile
        self.biosLoader = biosLoader
    }
}

/// A BIOS boot path chosen by the site rather than by the firmware.
public enum DHCPBIOSLoader: Hashable, Sendable {
    /// This pxelinux binary, iPXE clients included: NIC ROMs that are iPXE already (QEMU's, Proxmox's)
    /// would otherwise skip pxelinux and its `pxelinux.cfg/` walk.
    case pxelinux(String)
    /// Chainload iPXE (this file, e.g. `ipxe/undionly.kpxe`) from firmware PXE; iPXE then gets its script.
    case ipxe(String)
}

/// The inventory as the policy sees it; BootServer implements this over its reloadable nodes file.
public protocol DHCPInventory {
    func host(for mac: MACAddress) -> DHCPHost?
    /// Subnets the server answers for; relayed requests pick theirs by `giaddr`.
    var subnets: [DHCPSubnet] { get }
    /// True when `address` is some inventory host's fixed address, so the pool must not hand it out.
    func isReserved(_ address: IPv4Address) -> Bool
}

extension DHCPInventory {
    /// The declared subnet that contains `address`.
    public func subnet(containing address: IPv4Address) -> DHCPSubnet? {
        subnets.first { $0.contains(address) }
    }
}

/// A plain in-memory inventory (tests, simple setups).
public struct DHCPStaticInventory: DHCPInventory, Sendable {
    public var hosts: [MACAddress: DHCPHost]
    public var subnets: [DHCPSubnet]
    private var reserved: Set<IPv4Address>

    public init(hosts: [DHCPHost] = [], subnets: [DHCPSubnet]) {
        self.hosts = Dictionary(hosts.map { ($0.mac, $0) }, uniquingKeysWith: { _, last in last })
        self.subnets = subnets
        reserved = Set(hosts.compactMap(\.address))
    }

    public func host(for mac: MACAddress) -> DHCPHost? { hosts[mac] }
    public func isReserved(_ address: IPv4Address) -> Bool { reserved.contains(address) }
}

/// Lease state as the policy sees it; the server's lease store implements it.
///
/// Clients are keyed by MAC rather than option 61: a node's PXE ROM, iPXE and OS use different client
/// identifiers but must keep one address through the chainload.
public protocol DHCPLeaseView {
    /// Who holds `address` at `now` (bound, or offered and the offer not yet expired).
    func holder(of address: IPv4Address, at now: DHCPTimestamp) -> MACAddress?
    /// The address `client` holds or was offered at `now`.
    func address(heldBy client: MACAddress, at now: DHCPTimestamp) -> IPv4Address?
    /// True while `address` is set aside after a DHCPDECLINE.
    func isDeclined(_ address: IPv4Address, at now: DHCPTimestamp) -> Bool
    /// A free, not declined address of `pool` for which `usable` holds. The default walks the pool;
    /// a store with an index should answer faster.
    func firstAvailableAddress(
        in pool: ClosedRange<IPv4Address>, at now: DHCPTimestamp, where usable: (IPv4Address) -> Bool
    ) -> IPv4Address?
}

extension DHCPLeaseView {
    public func firstAvailableAddress(
        in pool: ClosedRange<IPv4Address>, at now: DHCPTimestamp, where usable: (IPv4Address) -> Bool
    ) -> IPv4Address? {
        pool.first { holder(of: $0, at: now) == nil && !isDeclined($0, at: now) && usable($0) }
    }
}

/// What the server must record after a decision.
public struct DHCPLease: Hashable, Sendable, CustomStringConvertible {
    public var mac: MACAddress
    public var address: IPv4Address
    public var expires: DHCPTimestamp
    public var hostname: String?

    public init(mac: MACAddress, address: IPv4Address, expires: DHCPTimestamp, hostname: String? = nil) {
        self.mac = mac
        self.address = address
        self.expires = expires
        self.hostname = hostname
    }

    public var description: String { "\(address) for \(mac) until \(expires)" }
}

public enum DHCPLeaseAction: Hashable, Sendable, CustomStringConvertible {
    /// Hold the address for the client until the offer expires (short), so no one else gets it meanwhile.
    case offer(DHCPLease)
    /// Bind the lease (ACK).
    case commit(DHCPLease)
    /// The client gave `address` back.
    case release(mac: MACAddress, address: IPv4Address)
    /// The client found `address` in use: never offer it to anyone before `until`.
    case decline(mac: MACAddress, address: IPv4Address, until: DHCPTimestamp)

    public var description: String {
        switch self {
        case .offer(let lease): "offer \(lease)"
        case .commit(let lease): "commit \(lease)"
        case .release(let mac, let address): "release \(address) by \(mac)"
        case .decline(let mac, let address, let until): "decline \(address) by \(mac), set aside until \(until)"
        }
    }
}
