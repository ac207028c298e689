import BootProtocols
import ImageBuildKit

/// `nodes.yaml` as the DHCP policy sees it: hosts by MAC and the reserved set are indexed once per
/// inventory generation, so a lookup per packet is one hash probe (the `Inventory` model itself
/// searches its node list linearly).
public struct DHCPServerInventory: DHCPInventory, Sendable {
    public let hosts: [MACAddress: DHCPHost]
    public let subnets: [DHCPSubnet]
    private let reserved: Set<IPv4Address>

    public init(_ inventory: Inventory) {
        let network = inventory.network
        let plan = BootPlan(inventory: inventory)
        var hosts: [MACAddress: DHCPHost] = [:]
        hosts.reserveCapacity(inventory.nodes.count)
        var reserved = Set<IPv4Address>()
        for node in inventory.nodes {
            hosts[node.mac] = DHCPHost(mac: node.mac, address: node.ip, hostname: node.hostname,
                                  biosLoader: DHCPBIOSLoader(plan.biosBoot(for: node)), uefiLoader: plan.uefiFile(for: node))
            if let address = node.ip { reserved.insert(address) }
        }
        // The server's own address is never handed out either.
        reserved.insert(network.server)
        self.hosts = hosts
        self.reserved = reserved
        subnets = [DHCPSubnet(
            network: network.subnet,
            routers: network.router.map { [$0] } ?? [],
            dnsServers: network.dns,
            domainName: network.domain,
            leaseTime: UInt32(clamping: network.leaseTime),
            pool: network.pool)]
    }

    public func host(for mac: MACAddress) -> DHCPHost? { hosts[mac] }
    public func isReserved(_ address: IPv4Address) -> Bool { reserved.contains(address) }
}

extension DHCPBootFileTable {
    /// The standard table with the BIOS entry the boot plan gives a machine no `loader:` applies to,
    /// and arm64 UEFI machines (PXE and HTTP Boot) on the GRUB publish lays for them.
    public static func forInventory(_ inventory: Inventory) -> DHCPBootFileTable {
        var table = DHCPBootFileTable.standard
        table[.x86BIOS] = BootPlan(inventory: inventory).defaultBIOSFile
        table[.arm64UEFI] = BootPlan.arm64GRUB
        table[.arm64UEFIHTTP] = BootPlan.arm64HTTPGRUB
        return table
    }
}

extension DHCPPolicy {
    /// The reply policy for an inventory and the server's settings: server identifier, next server and
    /// the HTTP base of iPXE boot-script URLs all come from `network.server` / `network.http_port`.
    public init(inventory: Inventory, configuration: DHCPServerConfiguration) {
        let network = inventory.network
        self.init(
            mode: configuration.mode,
            serverAddress: network.server,
            httpPort: UInt16(clamping: network.httpPort),
            ignoreUnknownClients: configuration.ignoreUnknownClients,
            rapidCommit: configuration.rapidCommit,
            offerHoldTime: configuration.offerHoldTime,
            declineHoldTime: configuration.declineHoldTime,
            bootFiles: .forInventory(inventory),
            bootScriptPath: BootPlan.bootScriptPath,
            unknownClientBIOSLoader: DHCPBIOSLoader(BootPlan(inventory: inventory).biosBoot(for: nil)),
            unknownClientUEFILoader: BootPlan(inventory: inventory).uefiFile(for: nil),
            pxelinuxRebootTime: configuration.pxelinuxRebootTime)
    }
}

extension DHCPBIOSLoader {
    /// The DHCP form of the plan's BIOS boot: nil when no `loader:` applies (the firmware decides).
    init?(_ boot: BootPlan.BIOSBoot) {
        switch boot.loader {
        case .pxelinux: self = .pxelinux(boot.firmwareFile)
        case .ipxe: self = .ipxe(boot.firmwareFile)
        case .grub, nil: return nil
        }
    }
}
