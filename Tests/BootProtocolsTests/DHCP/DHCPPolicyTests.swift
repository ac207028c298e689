import BootProtocols
import NIOCore
import Testing

// MARK: World

let dhcpServer = IPv4Address(192, 0, 2, 1)
let dhcpRelay = IPv4Address(198, 51, 100, 1)
let dhcpNow = DHCPTimestamp(secondsSinceEpoch: 1_700_000_000)

let macBIOS = MACAddress(0x52, 0x54, 0, 0, 0, 0x01)  // node01, fixed 192.0.2.11
let macUEFI = MACAddress(0x52, 0x54, 0, 0, 0, 0x02)  // node02, fixed 192.0.2.12
let macPoolHost = MACAddress(0x52, 0x54, 0, 0, 0, 0x03)  // known, address from the pool
let macRelayed = MACAddress(0x52, 0x54, 0, 0, 0, 0x04)  // fixed 198.51.100.20, behind the relay
let macOverride = MACAddress(0x52, 0x54, 0, 0, 0, 0x05)  // fixed .15, arch and boot file overridden
let macUnknown = MACAddress(0x52, 0x54, 0, 0, 0, 0x99)
let macOther = MACAddress(0x52, 0x54, 0, 0, 0, 0x77)

let dhcpLocalSubnet = DHCPSubnet(
    network: IPv4Network("192.0.2.0/24")!, routers: [dhcpServer],
    dnsServers: [IPv4Address(192, 0, 2, 53)], domainName: "cluster.test", leaseTime: 3600,
    pool: IPv4Address(192, 0, 2, 100)...IPv4Address(192, 0, 2, 103))
let dhcpRelayedSubnet = DHCPSubnet(
    network: IPv4Network("198.51.100.0/24")!, routers: [dhcpRelay], leaseTime: 7200,
    pool: nil)

let dhcpInventory = DHCPStaticInventory(
    hosts: [
        DHCPHost(mac: macBIOS, address: IPv4Address(192, 0, 2, 11), hostname: "node01"),
        DHCPHost(mac: macUEFI, address: IPv4Address(192, 0, 2, 12), hostname: "node02"),
        DHCPHost(mac: macPoolHost, hostname: "node03"),
        DHCPHost(mac: macRelayed, address: IPv4Address(198, 51, 100, 20), hostname: "node04"),
        DHCPHost(mac: macOverride, address: IPv4Address(192, 0, 2, 15), architecture: .arm64UEFI, bootFile: "custom/boot.efi"),
        // A reserved address inside the pool: the pool must skip it.
        DHCPHost(mac: MACAddress(0x52, 0x54, 0, 0, 0, 0x06), address: IPv4Address(192, 0, 2, 100)),
    ],
    subnets: [dhcpLocalSubnet, dhcpRelayedSubnet])

/// In-memory lease state; applies the policy's lease actions like the server would.
struct DHCPMemoryLeases: DHCPLeaseView {
    var held: [IPv4Address: (mac: MACAddress, expires: DHCPTimestamp)] = [:]
    var declined: [IPv4Address: DHCPTimestamp] = [:]

    func holder(of address: IPv4Address, at time: DHCPTimestamp) -> MACAddress? {
        held[address].flatMap { $0.expires > time ? $0.mac : nil }
    }
    func address(heldBy client: MACAddress, at time: DHCPTimestamp) -> IPv4Address? {
        held.first { $0.value.mac == client && $0.value.expires > time }?.key
    }
    func isDeclined(_ address: IPv4Address, at time: DHCPTimestamp) -> Bool { (declined[address].map { $0 > time }) ?? false }

    mutating func apply(_ action: DHCPLeaseAction) {
        switch action {
        case .offer(let l), .commit(let l): held[l.address] = (l.mac, l.expires)
        case .release(_, let a): held[a] = nil
        case .decline(_, let a, let until): declined[a] = until; held[a] = nil
        }
    }

    static func holding(_ address: IPv4Address, by mac: MACAddress) -> DHCPMemoryLeases {
        var l = DHCPMemoryLeases()
        l.held[address] = (mac, dhcpNow.adding(seconds: 600))
        return l
    }
}

/// The server passes `BootPlan.bootScriptPath` (ImageBuildKit, not a dependency of this target).
let dhcpBootScriptPath = "/boot/v1/bootscript"
let dhcpPolicy = DHCPPolicy(serverAddress: dhcpServer, httpPort: 8080, bootScriptPath: dhcpBootScriptPath)
let dhcpProxyPolicy = DHCPPolicy(mode: .proxy, serverAddress: dhcpServer, httpPort: 8080, bootScriptPath: dhcpBootScriptPath)

// MARK: Requests

enum DHCPTestClient: Sendable {
    case plain  // udhcpc-like
    case pxe(DHCPClientArchitecture?)  // firmware PXE, option 93 if given
    case http(DHCPClientArchitecture)  // UEFI HTTP boot
    case ipxe  // iPXE ROM / chainloaded iPXE
}

func dhcpRequest(
    _ type: DHCPMessageType, _ mac: MACAddress, client: DHCPTestClient = .plain, broadcast: Bool = true,
    ciaddr: IPv4Address = .any, giaddr: IPv4Address = .any, requested: IPv4Address? = nil,
    serverID: IPv4Address? = nil, extra: [DHCPOption] = []
) -> DHCPMessage {
    var m = DHCPMessage(
        op: .bootRequest, xid: 0xCAFE_0000 | UInt32(mac[5]), chaddr: DHCPHardwareAddress(mac),
        hops: giaddr.isAny ? 0 : 1, secs: 3, flags: broadcast ? .broadcast : [], ciaddr: ciaddr, giaddr: giaddr)
    m.options.set(.messageType(type))
    if let requested { m.options.set(.requestedIPAddress(requested)) }
    if let serverID { m.options.set(.serverIdentifier(serverID)) }
    m.options.set(.parameterRequestList([.subnetMask, .router, .domainNameServer, .hostName, .bootfileName]))
    switch client {
    case .plain:
        m.options.set(.vendorClassIdentifier(Array("udhcp 1.35.0".utf8)))
    case .pxe(let arch):
        let a = arch?.rawValue ?? 0
        let digits = String(a), padded = String(repeating: "0", count: 5 - digits.count) + digits
        m.options.set(.vendorClassIdentifier(Array("PXEClient:Arch:\(padded):UNDI:002001".utf8)))
        if let arch { m.options.set(.clientSystemArchitecture([arch])) }
        m.options.set(.clientMachineIdentifier(type: 0, identifier: Array(1...16)))
    case .http(let arch):
        m.options.set(.vendorClassIdentifier(Array("HTTPClient:Arch:000\(arch.rawValue):UNDI:003000".utf8)))
        m.options.set(.clientSystemArchitecture([arch]))
    case .ipxe:
        m.options.set(.vendorClassIdentifier(Array("PXEClient:Arch:00000:UNDI:002001".utf8)))
        m.options.set(.clientSystemArchitecture([.x86BIOS]))
        m.options.set(.userClass(Array("iPXE".utf8)))
    }
    for option in extra { m.options.set(option) }
    return m
}

func dhcpDecide(
    _ m: DHCPMessage, policy p: DHCPPolicy = dhcpPolicy, leases: DHCPMemoryLeases = DHCPMemoryLeases(),
    port: DHCPServerPort = .dhcp, source: IPv4Address = .any, sourcePort: UInt16 = 68,
    inventory inv: DHCPStaticInventory = dhcpInventory
) -> DHCPDecision {
    p.decide(DHCPReceived(message: m, port: port, sourceAddress: source, sourcePort: sourcePort), now: dhcpNow, inventory: inv, leases: leases)
}

func dhcpReply(_ decision: DHCPDecision, sourceLocation: SourceLocation = #_sourceLocation) throws -> DHCPReply {
    guard case .reply(let r) = decision else {
        Issue.record("expected a reply, got \(decision)", sourceLocation: sourceLocation)
        throw CancellationError()
    }
    return r
}

// MARK: Tests

@Suite struct DHCPPolicyTests {
    struct BootCase: Sendable, CustomTestStringConvertible {
        var name: String
        var mac: MACAddress
        var client: DHCPTestClient
        var file: String?
        var vendorClass: String?
        var tftpName: String?
        var testDescription: String { name }
    }

    @Test(arguments: [
        BootCase(name: "BIOS PXE", mac: macBIOS, client: .pxe(.x86BIOS), file: "pxelinux.0", vendorClass: "PXEClient", tftpName: "192.0.2.1"),
        BootCase(name: "PXE without option 93 is BIOS", mac: macBIOS, client: .pxe(nil), file: "pxelinux.0", vendorClass: "PXEClient", tftpName: "192.0.2.1"),
        BootCase(name: "x86 UEFI (6)", mac: macUEFI, client: .pxe(.x86UEFI), file: "ipxe/ipxe.efi", vendorClass: "PXEClient", tftpName: "192.0.2.1"),
        BootCase(name: "x64 UEFI (7)", mac: macUEFI, client: .pxe(.x64UEFI), file: "ipxe/ipxe.efi", vendorClass: "PXEClient", tftpName: "192.0.2.1"),
        BootCase(name: "EBC/x64 (9)", mac: macUEFI, client: .pxe(.ebc), file: "ipxe/ipxe.efi", vendorClass: "PXEClient", tftpName: "192.0.2.1"),
        BootCase(name: "ARM64 UEFI (11)", mac: macUEFI, client: .pxe(.arm64UEFI), file: "grub/grubaa64.efi", vendorClass: "PXEClient", tftpName: "192.0.2.1"),
        BootCase(name: "x64 UEFI HTTP (16)", mac: macUEFI, client: .http(.x64UEFIHTTP), file: "http://192.0.2.1:8080/ipxe/ipxe.efi", vendorClass: "HTTPClient"),
        BootCase(name: "ARM64 UEFI HTTP (19)", mac: macUEFI, client: .http(.arm64UEFIHTTP), file: "http://192.0.2.1:8080/grub/grubaa64-http.efi", vendorClass: "HTTPClient"),
        BootCase(name: "iPXE gets the boot script", mac: macBIOS, client: .ipxe, file: "http://192.0.2.1:8080/boot/v1/bootscript?mac=52:54:00:00:00:01"),
        BootCase(name: "inventory overrides arch and file", mac: macOverride, client: .pxe(.x86BIOS), file: "custom/boot.efi", vendorClass: "PXEClient", tftpName: "192.0.2.1"),
        BootCase(name: "plain client gets no boot info", mac: macBIOS, client: .plain),
    ])
    func offerCarriesBootInfoByArchitecture(_ c: BootCase) throws {
        let r = try dhcpReply(dhcpDecide(dhcpRequest(.discover, c.mac, client: c.client)))
        let m = r.message
        #expect(m.messageType == .offer)
        #expect(m.options.bootfileName == c.file)
        #expect((m.file.isEmpty ? nil : m.bootFileName) == c.file)
        #expect(m.siaddr == (c.file == nil ? .any : dhcpServer))
        #expect(m.options.vendorClassIdentifier.map { String(decoding: $0, as: UTF8.self) } == c.vendorClass)
        #expect(m.options.tftpServerName == c.tftpName)
        #expect((m.sname.isEmpty ? nil : m.serverHostName) == c.tftpName)
        // Firmware PXE clients get their UUID echoed and discovery control "use this file" (option 43).
        if case .pxe = c.client {
            #expect(m.options.clientMachineIdentifier.map(Array.init) == [0] + Array(1...16))
            #expect(m.options[.vendorSpecific].map(Array.init) == [6, 1, 8, 255])
        } else {
            #expect(!m.options.contains(.vendorSpecific))
        }
        // It still encodes within the client's limit.
        var buffer = ByteBuffer()
        try r.encode(into: &buffer)
        #expect(try DHCPMessage(decoding: buffer) == m)
    }

    @Test func unknownArchitectureIsIgnoredWithAReason() {
        #expect(dhcpDecide(dhcpRequest(.discover, macBIOS, client: .pxe(DHCPClientArchitecture(27)))) == .ignore(.noBootFile(.riscv64UEFI)))
    }

    /// `loader:` in nodes.yaml: the site, not the firmware, picks the BIOS boot path.
    @Test func siteLoaderChoiceOverridesTheFirmwareDefault() throws {
        let pxelinuxNode = MACAddress(0x52, 0x54, 0, 0, 0, 0x31), ipxeNode = MACAddress(0x52, 0x54, 0, 0, 0, 0x32)
        var inventory = dhcpInventory
        inventory.hosts[pxelinuxNode] = DHCPHost(mac: pxelinuxNode, address: IPv4Address(192, 0, 2, 31), biosLoader: .pxelinux("lpxelinux.0"))
        inventory.hosts[ipxeNode] = DHCPHost(mac: ipxeNode, address: IPv4Address(192, 0, 2, 32), biosLoader: .ipxe("ipxe/undionly.kpxe"))
        func offer(_ mac: MACAddress, _ client: DHCPTestClient, policy: DHCPPolicy = dhcpPolicy) throws -> DHCPMessage {
            try dhcpReply(dhcpDecide(dhcpRequest(.discover, mac, client: client), policy: policy, inventory: inventory)).message
        }
        // An iPXE ROM told to use pxelinux gets it over TFTP, without option 60 (iPXE would wait for a ProxyDHCP).
        let ipxeToPxelinux = try offer(pxelinuxNode, .ipxe)
        #expect(ipxeToPxelinux.options.bootfileName == "lpxelinux.0")
        #expect(ipxeToPxelinux.options.tftpServerName == "192.0.2.1")
        #expect(ipxeToPxelinux.options.vendorClassIdentifier == nil)
        #expect(try offer(pxelinuxNode, .pxe(.x86BIOS)).options.bootfileName == "lpxelinux.0")
        // UEFI has no pxelinux here: the choice is BIOS only.
        #expect(try offer(pxelinuxNode, .pxe(.x64UEFI)).options.bootfileName == "ipxe/ipxe.efi")
        // `loader: ipxe`: firmware PXE chainloads undionly.kpxe, and the iPXE that starts gets its script.
        #expect(try offer(ipxeNode, .pxe(.x86BIOS)).options.bootfileName == "ipxe/undionly.kpxe")
        #expect(try offer(ipxeNode, .ipxe).options.bootfileName == "http://192.0.2.1:8080/boot/v1/bootscript?mac=52:54:00:00:00:32")
        // iPXE is told no ProxyDHCP offer will follow (175.176 no-pxedhcp), so it does not wait for one;
        // firmware PXE and proxy-style offers (no address) do not get it.
        #expect(ipxeToPxelinux.options[.ipxeEncapsulated].map(Array.init) == [176, 1, 1])
        #expect(try offer(ipxeNode, .ipxe).options[.ipxeEncapsulated].map(Array.init) == [176, 1, 1])
        #expect(try offer(ipxeNode, .pxe(.x86BIOS)).options[.ipxeEncapsulated] == nil)
        let proxyOffer = try dhcpReply(dhcpDecide(dhcpRequest(.discover, macBIOS, client: .ipxe), policy: dhcpProxyPolicy)).message
        #expect(proxyOffer.options[.ipxeEncapsulated] == nil)
        // Machines not listed follow the policy's default; listed ones without a choice do not.
        var policy = dhcpPolicy
        policy.unknownClientBIOSLoader = .pxelinux("pxelinux.0")
        #expect(try offer(macUnknown, .ipxe, policy: policy).options.bootfileName == "pxelinux.0")
        #expect(try offer(macBIOS, .ipxe, policy: policy).options.bootfileName == "http://192.0.2.1:8080/boot/v1/bootscript?mac=52:54:00:00:00:01")
    }

    /// `loader: grub`: x86-64 UEFI PXE machines (7 and 9, firmware and iPXE ROMs) get the site's file (the
    /// shim) over TFTP as a firmware PXE offer; HTTP Boot and BIOS clients keep theirs.
    @Test func siteUEFILoaderIsHandedToUEFIPXEOnly() throws {
        let node = MACAddress(0x52, 0x54, 0, 0, 0, 0x33)
        var inventory = dhcpInventory
        inventory.hosts[node] = DHCPHost(mac: node, address: IPv4Address(192, 0, 2, 33), uefiLoader: "grub/shimx64.efi")
        func offer(_ mac: MACAddress, _ client: DHCPTestClient, policy: DHCPPolicy = dhcpPolicy) throws -> DHCPMessage {
            try dhcpReply(dhcpDecide(dhcpRequest(.discover, mac, client: client), policy: policy, inventory: inventory)).message
        }
        for arch in [DHCPClientArchitecture.x64UEFI, .ebc] {
            let reply = try offer(node, .pxe(arch))
            #expect(reply.options.bootfileName == "grub/shimx64.efi")
            #expect(reply.options.vendorClassIdentifier.map(Array.init) == Array("PXEClient".utf8))
            #expect(reply.options.tftpServerName == "192.0.2.1")
        }
        #expect(try offer(node, .pxe(.x86UEFI)).options.bootfileName == "ipxe/ipxe.efi")
        #expect(try offer(node, .http(.x64UEFIHTTP)).options.bootfileName == "http://192.0.2.1:8080/ipxe/ipxe.efi")
        #expect(try offer(node, .pxe(.x86BIOS)).options.bootfileName == "pxelinux.0")
        // A UEFI iPXE ROM (arch 7, user class iPXE) chainloads the shim too, without option 60.
        var ipxeUEFI = dhcpRequest(.discover, node, client: .ipxe)
        ipxeUEFI.options.set(.clientSystemArchitecture([.x64UEFI]))
        let fromROM = try dhcpReply(dhcpDecide(ipxeUEFI, inventory: inventory)).message
        #expect(fromROM.options.bootfileName == "grub/shimx64.efi")
        #expect(fromROM.options.vendorClassIdentifier == nil)
        // Machines not listed follow the policy's default.
        var policy = dhcpPolicy
        policy.unknownClientUEFILoader = "grub/shimx64.efi"
        #expect(try offer(macUnknown, .pxe(.x64UEFI), policy: policy).options.bootfileName == "grub/shimx64.efi")
        #expect(try offer(macUEFI, .pxe(.x64UEFI), policy: policy).options.bootfileName == "ipxe/ipxe.efi")
    }

    /// pxelinux's "Boot failed ... or wait for reset" waits 300 s unless the reply says otherwise (208 + 211).
    @Test func pxelinuxIsToldItsRebootTimeAndNothingElseIs() throws {
        let pxelinuxNode = MACAddress(0x52, 0x54, 0, 0, 0, 0x31), ipxeNode = MACAddress(0x52, 0x54, 0, 0, 0, 0x32)
        var inventory = dhcpInventory
        inventory.hosts[pxelinuxNode] = DHCPHost(mac: pxelinuxNode, address: IPv4Address(192, 0, 2, 31), biosLoader: .pxelinux("boot/lpxelinux.0"))
        inventory.hosts[ipxeNode] = DHCPHost(mac: ipxeNode, address: IPv4Address(192, 0, 2, 32), biosLoader: .ipxe("ipxe/undionly.kpxe"))
        var policy = dhcpPolicy
        policy.pxelinuxRebootTime = 30
        func offer(_ mac: MACAddress, _ client: DHCPTestClient, policy: DHCPPolicy) throws -> DHCPMessage {
            try dhcpReply(dhcpDecide(dhcpRequest(.discover, mac, client: client), policy: policy, inventory: inventory)).message
        }
        for client in [DHCPTestClient.ipxe, .pxe(.x86BIOS)] {
            let reply = try offer(pxelinuxNode, client, policy: policy)
            #expect(reply.options[.pxelinuxMagic].map(Array.init) == [0xF1, 0x00, 0x74, 0x7E])
            #expect(reply.options[.pxelinuxRebootTime].map(Array.init) == [0, 0, 0, 30])
        }
        // Not for other boot files, nor when the setting is off.
        for reply in [try offer(ipxeNode, .pxe(.x86BIOS), policy: policy), try offer(ipxeNode, .ipxe, policy: policy),
                      try offer(pxelinuxNode, .pxe(.x64UEFI), policy: policy), try offer(pxelinuxNode, .ipxe, policy: dhcpPolicy)] {
            #expect(reply.options[.pxelinuxMagic] == nil && reply.options[.pxelinuxRebootTime] == nil, "\(reply.options.bootfileName ?? "-")")
        }
    }

    @Test func offerForAFixedHostCarriesLeaseAndConfiguration() throws {
        let r = try dhcpReply(dhcpDecide(dhcpRequest(.discover, macBIOS, client: .pxe(.x86BIOS))))
        let m = r.message
        #expect(m.yiaddr == IPv4Address(192, 0, 2, 11) && m.ciaddr == .any)
        #expect(m.options.serverIdentifier == dhcpServer)
        #expect(m.options.leaseTime == 3600 && m.options.renewalTime == 1800 && m.options.rebindingTime == 3150)
        #expect(m.options.subnetMask == IPv4Address(255, 255, 255, 0))
        #expect(m.options.routers == [dhcpServer] && m.options.domainNameServers == [IPv4Address(192, 0, 2, 53)])
        #expect(m.options.hostName == "node01" && m.options.domainName == "cluster.test")
        #expect(r.leaseAction == .offer(DHCPLease(mac: macBIOS, address: IPv4Address(192, 0, 2, 11), expires: dhcpNow.adding(seconds: 60), hostname: "node01")))
        #expect(m.options.codes.first == .messageType)
    }

    // MARK: Destinations (RFC 2131 §4.1)

    struct DestinationCase: Sendable, CustomTestStringConvertible {
        var name: String
        var message: DHCPMessage
        var kind: DHCPDestination.Kind
        var address: IPv4Address
        var port: UInt16
        var flag: Bool
        var testDescription: String { name }
    }

    @Test(arguments: [
        DestinationCase(name: "broadcast bit → broadcast", message: dhcpRequest(.discover, macBIOS, broadcast: true),
                        kind: .broadcast, address: .broadcast, port: 68, flag: true),
        DestinationCase(name: "no broadcast bit → unicast to yiaddr/chaddr", message: dhcpRequest(.discover, macBIOS, broadcast: false),
                        kind: .clientHardwareAddress, address: IPv4Address(192, 0, 2, 11), port: 68, flag: false),
        DestinationCase(name: "relayed → relay port 67", message: dhcpRequest(.discover, macRelayed, broadcast: true, giaddr: dhcpRelay),
                        kind: .relay, address: dhcpRelay, port: 67, flag: true),
        DestinationCase(name: "renewing → ciaddr", message: dhcpRequest(.request, macBIOS, broadcast: false, ciaddr: IPv4Address(192, 0, 2, 11)),
                        kind: .clientAddress, address: IPv4Address(192, 0, 2, 11), port: 68, flag: false),
        DestinationCase(name: "INFORM → ciaddr", message: dhcpRequest(.inform, macBIOS, broadcast: false, ciaddr: IPv4Address(192, 0, 2, 11)),
                        kind: .clientAddress, address: IPv4Address(192, 0, 2, 11), port: 68, flag: false),
        DestinationCase(name: "relayed NAK → relay with broadcast bit", message: dhcpRequest(.request, macRelayed, broadcast: false, giaddr: dhcpRelay, requested: IPv4Address(198, 51, 100, 21)),
                        kind: .relay, address: dhcpRelay, port: 67, flag: true),
        DestinationCase(name: "NAK → broadcast even without the bit", message: dhcpRequest(.request, macBIOS, broadcast: false, requested: IPv4Address(192, 0, 2, 99)),
                        kind: .broadcast, address: .broadcast, port: 68, flag: false),
    ])
    func replyDestination(_ c: DestinationCase) throws {
        let r = try dhcpReply(dhcpDecide(c.message))
        #expect(r.destination.kind == c.kind)
        #expect(r.destination.address == c.address && r.destination.port == c.port)
        #expect(r.destination.broadcastFlag == c.flag && r.message.flags.contains(.broadcast) == c.flag)
        #expect(r.message.giaddr == c.message.giaddr && r.message.xid == c.message.xid && r.message.hops == c.message.hops)
    }

    // MARK: DISCOVER

    @Test func relayedDiscoverUsesTheRelaySubnet() throws {
        let r = try dhcpReply(dhcpDecide(dhcpRequest(.discover, macRelayed, giaddr: dhcpRelay)))
        #expect(r.message.yiaddr == IPv4Address(198, 51, 100, 20))
        #expect(r.message.options.routers == [dhcpRelay] && r.message.options.leaseTime == 7200)
        #expect(dhcpDecide(dhcpRequest(.discover, macRelayed, giaddr: IPv4Address(203, 0, 113, 1)))
            == .ignore(.noSubnet(IPv4Address(203, 0, 113, 1), relayed: true)))
        // A local host's fixed address is not on the relay's subnet.
        #expect(dhcpDecide(dhcpRequest(.discover, macBIOS, giaddr: dhcpRelay))
            == .ignore(.fixedAddressOutsideSubnet(macBIOS, IPv4Address(192, 0, 2, 11), dhcpRelayedSubnet)))
    }

    @Test func dynamicPoolAllocation() throws {
        // .100 is reserved for an inventory host, so the first free pool address is .101.
        var leases = DHCPMemoryLeases()
        let first = try dhcpReply(dhcpDecide(dhcpRequest(.discover, macUnknown), leases: leases))
        #expect(first.message.yiaddr == IPv4Address(192, 0, 2, 101))
        leases.apply(try #require(first.leaseAction))
        // The same client gets the same address back; another one the next.
        #expect(try dhcpReply(dhcpDecide(dhcpRequest(.discover, macUnknown), leases: leases)).message.yiaddr == IPv4Address(192, 0, 2, 101))
        #expect(try dhcpReply(dhcpDecide(dhcpRequest(.discover, macOther), leases: leases)).message.yiaddr == IPv4Address(192, 0, 2, 102))
        // A known host without a fixed address also takes from the pool, and keeps its hostname.
        let known = try dhcpReply(dhcpDecide(dhcpRequest(.discover, macPoolHost), leases: leases))
        #expect(known.message.yiaddr == IPv4Address(192, 0, 2, 102) && known.message.options.hostName == "node03")
        // Option 50 is honoured when free and in the pool, not when reserved or outside.
        #expect(try dhcpReply(dhcpDecide(dhcpRequest(.discover, macOther, requested: IPv4Address(192, 0, 2, 103)), leases: leases)).message.yiaddr == IPv4Address(192, 0, 2, 103))
        #expect(try dhcpReply(dhcpDecide(dhcpRequest(.discover, macOther, requested: IPv4Address(192, 0, 2, 100)), leases: leases)).message.yiaddr == IPv4Address(192, 0, 2, 102))
        #expect(try dhcpReply(dhcpDecide(dhcpRequest(.discover, macOther, requested: IPv4Address(192, 0, 2, 200)), leases: leases)).message.yiaddr == IPv4Address(192, 0, 2, 102))
        // Declined addresses are skipped; expired offers are reusable.
        leases.declined[IPv4Address(192, 0, 2, 102)] = dhcpNow.adding(seconds: 10)
        #expect(try dhcpReply(dhcpDecide(dhcpRequest(.discover, macOther), leases: leases)).message.yiaddr == IPv4Address(192, 0, 2, 103))
        leases.held[IPv4Address(192, 0, 2, 103)] = (macPoolHost, dhcpNow)
        #expect(try dhcpReply(dhcpDecide(dhcpRequest(.discover, macOther), leases: leases)).message.yiaddr == IPv4Address(192, 0, 2, 103))
        // Exhaustion.
        leases.held[IPv4Address(192, 0, 2, 103)] = (macPoolHost, dhcpNow.adding(seconds: 5))
        #expect(dhcpDecide(dhcpRequest(.discover, macOther), leases: leases) == .ignore(.poolExhausted(dhcpLocalSubnet)))
    }

    @Test func discoverIgnoreReasons() {
        let noPool = DHCPStaticInventory(hosts: [DHCPHost(mac: macBIOS, address: IPv4Address(192, 0, 2, 11))],
                                         subnets: [DHCPSubnet(network: IPv4Network("192.0.2.0/24")!)])
        #expect(dhcpDecide(dhcpRequest(.discover, macUnknown), inventory: noPool) == .ignore(.unknownClientNoPool(macUnknown)))
        var strict = dhcpPolicy
        strict.ignoreUnknownClients = true
        #expect(dhcpDecide(dhcpRequest(.discover, macUnknown), policy: strict) == .ignore(.unknownClientIgnored(macUnknown)))
        #expect(dhcpDecide(dhcpRequest(.discover, macBIOS), leases: .holding(IPv4Address(192, 0, 2, 11), by: macOther))
            == .ignore(.addressHeldByAnother(IPv4Address(192, 0, 2, 11), holder: macOther)))
        var declined = DHCPMemoryLeases()
        declined.declined[IPv4Address(192, 0, 2, 11)] = dhcpNow.adding(seconds: 1)
        #expect(dhcpDecide(dhcpRequest(.discover, macBIOS), leases: declined) == .ignore(.addressDeclined(IPv4Address(192, 0, 2, 11))))
        var offSubnet = dhcpPolicy
        offSubnet.serverAddress = IPv4Address(203, 0, 113, 5)
        #expect(dhcpDecide(dhcpRequest(.discover, macBIOS), policy: offSubnet) == .ignore(.noSubnet(IPv4Address(203, 0, 113, 5), relayed: false)))

        var reply = dhcpRequest(.discover, macBIOS)
        reply.op = .bootReply
        #expect(dhcpDecide(reply) == .ignore(.notABootRequest))
        var token = dhcpRequest(.discover, macBIOS)
        token.htype = 6
        #expect(dhcpDecide(token) == .ignore(.unsupportedHardware(htype: 6, hlen: 6)))
        var bootp = dhcpRequest(.discover, macBIOS)
        bootp.options.remove(.messageType)
        #expect(dhcpDecide(bootp) == .ignore(.noMessageType))
        #expect(dhcpDecide(dhcpRequest(.offer, macBIOS)) == .ignore(.notAClientMessage(.offer)))
        #expect(dhcpDecide(dhcpRequest(.ack, macBIOS)) == .ignore(.notAClientMessage(.ack)))
        for reason in [DHCPIgnoreReason.unknownClientNoPool(macUnknown), .requestForOtherServer(dhcpRelay), .notPXEClient] {
            #expect(!reason.description.isEmpty)
        }
        #expect(DHCPIgnoreReason.notPXEClient.description == "not a PXE boot request (no option 60 PXEClient)")
        #expect(DHCPIgnoreReason.unknownClientNoPool(macUnknown).description == "unknown client 52:54:00:00:00:99 and pool disabled")
        #expect(DHCPIgnoreReason.requestForOtherServer(dhcpRelay).description == "request for another server (server id 198.51.100.1)")
    }

    @Test func rapidCommitAcksADiscoverDirectly() throws {
        let r = try dhcpReply(dhcpDecide(dhcpRequest(.discover, macUEFI, client: .pxe(.x64UEFI), extra: [.rapidCommit])))
        #expect(r.message.messageType == .ack && r.message.options.rapidCommit)
        #expect(r.leaseAction == .commit(DHCPLease(mac: macUEFI, address: IPv4Address(192, 0, 2, 12), expires: dhcpNow.adding(seconds: 3600), hostname: "node02")))
        var off = dhcpPolicy
        off.rapidCommit = false
        let slow = try dhcpReply(dhcpDecide(dhcpRequest(.discover, macUEFI, extra: [.rapidCommit]), policy: off))
        #expect(slow.message.messageType == .offer && !slow.message.options.rapidCommit)
    }

    // MARK: REQUEST

    enum Outcome: Equatable, Sendable {
        case ack(IPv4Address)
        case nak(DHCPNakReason)
        case ignore(DHCPIgnoreReason)
    }

    struct RequestCase: Sendable, CustomTestStringConvertible {
        var name: String
        var message: DHCPMessage
        var leases: DHCPMemoryLeases = DHCPMemoryLeases()
        var outcome: Outcome
        var testDescription: String { name }
    }

    static let requestCases: [RequestCase] = {
        let a11 = IPv4Address(192, 0, 2, 11), a101 = IPv4Address(192, 0, 2, 101), a102 = IPv4Address(192, 0, 2, 102)
        return [
            RequestCase(name: "selecting, fixed host", message: dhcpRequest(.request, macBIOS, requested: a11, serverID: dhcpServer), outcome: .ack(a11)),
            RequestCase(name: "selecting, another server", message: dhcpRequest(.request, macBIOS, requested: a11, serverID: dhcpRelay),
                        outcome: .ignore(.requestForOtherServer(dhcpRelay))),
            RequestCase(name: "selecting without option 50", message: dhcpRequest(.request, macBIOS, serverID: dhcpServer),
                        outcome: .ignore(.missingAddress(.request))),
            RequestCase(name: "selecting, pool address offered", message: dhcpRequest(.request, macUnknown, requested: a101, serverID: dhcpServer),
                        leases: .holding(a101, by: macUnknown), outcome: .ack(a101)),
            RequestCase(name: "selecting, pool address held by another", message: dhcpRequest(.request, macUnknown, requested: a101, serverID: dhcpServer),
                        leases: .holding(a101, by: macOther), outcome: .nak(.addressHeldByAnother(a101, holder: macOther))),
            RequestCase(name: "selecting, reserved address", message: dhcpRequest(.request, macUnknown, requested: IPv4Address(192, 0, 2, 100), serverID: dhcpServer),
                        outcome: .nak(.addressReserved(IPv4Address(192, 0, 2, 100)))),
            RequestCase(name: "selecting, outside the pool", message: dhcpRequest(.request, macUnknown, requested: IPv4Address(192, 0, 2, 150), serverID: dhcpServer),
                        outcome: .nak(.addressNotInPool(IPv4Address(192, 0, 2, 150)))),
            RequestCase(name: "init-reboot, fixed host, right address", message: dhcpRequest(.request, macBIOS, requested: a11), outcome: .ack(a11)),
            RequestCase(name: "init-reboot, fixed host, wrong address", message: dhcpRequest(.request, macBIOS, requested: a101),
                        outcome: .nak(.notClientsAddress(requested: a101, assigned: a11))),
            RequestCase(name: "init-reboot, wrong subnet", message: dhcpRequest(.request, macBIOS, requested: IPv4Address(10, 9, 8, 7)),
                        outcome: .nak(.wrongSubnet(requested: IPv4Address(10, 9, 8, 7), subnet: dhcpLocalSubnet))),
            RequestCase(name: "init-reboot, lease on record", message: dhcpRequest(.request, macUnknown, requested: a101),
                        leases: .holding(a101, by: macUnknown), outcome: .ack(a101)),
            RequestCase(name: "init-reboot, no record: silent", message: dhcpRequest(.request, macUnknown, requested: a102),
                        outcome: .ignore(.noRecordOfClient(macUnknown, a102))),
            RequestCase(name: "init-reboot, address held by another", message: dhcpRequest(.request, macUnknown, requested: a102),
                        leases: .holding(a102, by: macOther), outcome: .nak(.addressHeldByAnother(a102, holder: macOther))),
            RequestCase(name: "renewing, fixed host", message: dhcpRequest(.request, macBIOS, broadcast: false, ciaddr: a11), outcome: .ack(a11)),
            RequestCase(name: "renewing, lease on record", message: dhcpRequest(.request, macUnknown, broadcast: false, ciaddr: a101),
                        leases: .holding(a101, by: macUnknown), outcome: .ack(a101)),
            RequestCase(name: "rebinding, no record: silent", message: dhcpRequest(.request, macUnknown, broadcast: true, ciaddr: a101),
                        outcome: .ignore(.noRecordOfClient(macUnknown, a101))),
            RequestCase(name: "renewing from an undeclared subnet", message: dhcpRequest(.request, macUnknown, broadcast: false, ciaddr: IPv4Address(10, 1, 1, 1)),
                        outcome: .nak(.wrongSubnet(requested: IPv4Address(10, 1, 1, 1), subnet: nil))),
            RequestCase(name: "relayed init-reboot on the relay subnet", message: dhcpRequest(.request, macRelayed, giaddr: dhcpRelay, requested: IPv4Address(198, 51, 100, 20)),
                        outcome: .ack(IPv4Address(198, 51, 100, 20))),
            RequestCase(name: "relayed request for a local address", message: dhcpRequest(.request, macBIOS, giaddr: dhcpRelay, requested: a11),
                        outcome: .nak(.wrongSubnet(requested: a11, subnet: dhcpRelayedSubnet))),
            RequestCase(name: "declined address", message: dhcpRequest(.request, macBIOS, requested: a11, serverID: dhcpServer),
                        leases: { var l = DHCPMemoryLeases(); l.declined[a11] = dhcpNow.adding(seconds: 1); return l }(),
                        outcome: .nak(.addressDeclined(a11))),
            RequestCase(name: "no server id, option 50 or ciaddr", message: dhcpRequest(.request, macBIOS),
                        outcome: .ignore(.missingAddress(.request))),
        ]
    }()

    @Test(arguments: requestCases)
    func requestStates(_ c: RequestCase) throws {
        let decision = dhcpDecide(c.message, leases: c.leases)
        switch c.outcome {
        case .ignore(let reason):
            #expect(decision == .ignore(reason))
        case .ack(let address):
            let r = try dhcpReply(decision)
            #expect(r.message.messageType == .ack && r.message.yiaddr == address)
            #expect(r.message.ciaddr == c.message.ciaddr)
            guard case .commit(let lease)? = r.leaseAction else { Issue.record("no commit"); return }
            #expect(lease.address == address && lease.mac == c.message.clientMAC)
            #expect(r.message.options.leaseTime != nil)
        case .nak(let reason):
            let r = try dhcpReply(decision)
            #expect(r.message.messageType == .nak && r.nakReason == reason)
            #expect(r.message.yiaddr == .any && r.message.ciaddr == .any && r.message.siaddr == .any)
            #expect(r.message.options.message == reason.description)
            #expect(r.message.options.serverIdentifier == dhcpServer && r.message.options.leaseTime == nil)
            #expect(r.leaseAction == nil)
        }
    }

    @Test func ackToAPXEClientCarriesBootInfo() throws {
        let r = try dhcpReply(dhcpDecide(dhcpRequest(.request, macUEFI, client: .pxe(.x64UEFI), requested: IPv4Address(192, 0, 2, 12), serverID: dhcpServer)))
        #expect(r.message.bootFileName == "ipxe/ipxe.efi" && r.message.siaddr == dhcpServer)
    }

    @Test func fullExchangeAgainstTheLeaseState() throws {
        var leases = DHCPMemoryLeases()
        let offer = try dhcpReply(dhcpDecide(dhcpRequest(.discover, macUnknown), leases: leases))
        leases.apply(try #require(offer.leaseAction))
        let ack = try dhcpReply(dhcpDecide(dhcpRequest(.request, macUnknown, requested: offer.message.yiaddr, serverID: dhcpServer), leases: leases))
        #expect(ack.message.yiaddr == offer.message.yiaddr)
        leases.apply(try #require(ack.leaseAction))
        #expect(leases.holder(of: offer.message.yiaddr, at: dhcpNow.adding(seconds: 3599)) == macUnknown)
        // Another client asking for it is refused.
        let nak = try dhcpReply(dhcpDecide(dhcpRequest(.request, macOther, requested: offer.message.yiaddr, serverID: dhcpServer), leases: leases))
        #expect(nak.nakReason == .addressHeldByAnother(offer.message.yiaddr, holder: macUnknown))
        // Release frees it.
        let release = dhcpDecide(dhcpRequest(.release, macUnknown, ciaddr: offer.message.yiaddr, serverID: dhcpServer), leases: leases)
        #expect(release == .record(.release(mac: macUnknown, address: offer.message.yiaddr)))
        if case .record(let action) = release { leases.apply(action) }
        #expect(leases.holder(of: offer.message.yiaddr, at: dhcpNow) == nil)
    }

    // MARK: RELEASE, DECLINE, INFORM

    @Test func releaseAndDecline() throws {
        let a101 = IPv4Address(192, 0, 2, 101)
        #expect(dhcpDecide(dhcpRequest(.release, macOther, ciaddr: a101, serverID: dhcpServer), leases: .holding(a101, by: macUnknown))
            == .ignore(.releaseOfAddressNotHeld(a101, by: macOther)))
        #expect(dhcpDecide(dhcpRequest(.release, macUnknown, ciaddr: a101, serverID: dhcpRelay), leases: .holding(a101, by: macUnknown))
            == .ignore(.requestForOtherServer(dhcpRelay)))
        #expect(dhcpDecide(dhcpRequest(.release, macUnknown, serverID: dhcpServer)) == .ignore(.missingAddress(.release)))

        #expect(dhcpDecide(dhcpRequest(.decline, macUnknown, requested: a101, serverID: dhcpServer), leases: .holding(a101, by: macUnknown))
            == .record(.decline(mac: macUnknown, address: a101, until: dhcpNow.adding(seconds: 3600))))
        // Only the client given the address may decline it (a spoofed DECLINE would drain the pool).
        #expect(dhcpDecide(dhcpRequest(.decline, macOther, requested: a101, serverID: dhcpServer), leases: .holding(a101, by: macUnknown))
            == .ignore(.declineOfAddressNotOffered(a101, by: macOther)))
        #expect(dhcpDecide(dhcpRequest(.decline, macUnknown, requested: a101, serverID: dhcpServer))
            == .ignore(.declineOfAddressNotOffered(a101, by: macUnknown)))
        #expect(dhcpDecide(dhcpRequest(.decline, macUnknown, requested: a101, serverID: dhcpRelay)) == .ignore(.requestForOtherServer(dhcpRelay)))
        #expect(dhcpDecide(dhcpRequest(.decline, macUnknown, serverID: dhcpServer)) == .ignore(.missingAddress(.decline)))

        // A declined address is set aside: the pool skips it.
        var leases = DHCPMemoryLeases()
        leases.held[a101] = (macUnknown, dhcpNow.adding(seconds: 60))
        if case .record(let action) = dhcpDecide(dhcpRequest(.decline, macUnknown, requested: a101, serverID: dhcpServer), leases: leases) { leases.apply(action) }
        #expect(leases.isDeclined(a101, at: dhcpNow))
        #expect(try dhcpReply(dhcpDecide(dhcpRequest(.discover, macUnknown), leases: leases)).message.yiaddr == IPv4Address(192, 0, 2, 102))
    }

    @Test func informGetsConfigurationWithoutAddressOrLease() throws {
        let r = try dhcpReply(dhcpDecide(dhcpRequest(.inform, macUnknown, client: .pxe(.x64UEFI), broadcast: false, ciaddr: IPv4Address(192, 0, 2, 77))))
        #expect(r.message.messageType == .ack && r.message.yiaddr == .any && r.message.ciaddr == IPv4Address(192, 0, 2, 77))
        #expect(r.message.options.leaseTime == nil && r.message.options.renewalTime == nil)
        #expect(r.message.options.subnetMask != nil && r.message.options.serverIdentifier == dhcpServer)
        #expect(r.message.bootFileName == "ipxe/ipxe.efi" && r.leaseAction == nil)
        #expect(dhcpDecide(dhcpRequest(.inform, macUnknown, ciaddr: IPv4Address(10, 0, 0, 5))) == .ignore(.noSubnet(IPv4Address(10, 0, 0, 5), relayed: false)))
    }

    // MARK: proxyDHCP

    @Test func proxyOfferHasBootInfoButNoAddress() throws {
        let r = try dhcpReply(dhcpDecide(dhcpRequest(.discover, macUnknown, client: .pxe(.x64UEFI)), policy: dhcpProxyPolicy))
        let m = r.message
        #expect(m.messageType == .offer && m.yiaddr == .any && m.siaddr == dhcpServer)
        #expect(m.options.leaseTime == nil && m.options.subnetMask == nil && m.options.routers == nil)
        #expect(m.options.serverIdentifier == dhcpServer && m.bootFileName == "ipxe/ipxe.efi")
        #expect(m.options.vendorClassIdentifier.map(Array.init) == Array("PXEClient".utf8))
        #expect(m.options[.vendorSpecific].map(Array.init) == [6, 1, 8, 255])
        #expect(r.destination.kind == .broadcast && r.destination.port == 68 && r.leaseAction == nil)
    }

    @Test func proxyIgnoresNonPXEAndAddressTraffic() {
        #expect(dhcpDecide(dhcpRequest(.discover, macUnknown, client: .plain), policy: dhcpProxyPolicy) == .ignore(.notPXEClient))
        #expect(dhcpDecide(dhcpRequest(.request, macUnknown, client: .pxe(.x86BIOS), requested: IPv4Address(192, 0, 2, 5), serverID: dhcpRelay), policy: dhcpProxyPolicy)
            == .ignore(.proxyLeavesAddressingToMainServer(.request)))
        #expect(dhcpDecide(dhcpRequest(.release, macUnknown, client: .pxe(.x86BIOS), ciaddr: IPv4Address(192, 0, 2, 5)), policy: dhcpProxyPolicy)
            == .ignore(.proxyLeavesAddressingToMainServer(.release)))
        var strict = dhcpProxyPolicy
        strict.ignoreUnknownClients = true
        #expect(dhcpDecide(dhcpRequest(.discover, macUnknown, client: .pxe(.x86BIOS)), policy: strict) == .ignore(.unknownClientIgnored(macUnknown)))
    }

    @Test func proxyAnswersIPXEAndHTTPClients() throws {
        let ipxe = try dhcpReply(dhcpDecide(dhcpRequest(.discover, macBIOS, client: .ipxe), policy: dhcpProxyPolicy))
        #expect(ipxe.message.bootFileName == "http://192.0.2.1:8080/boot/v1/bootscript?mac=52:54:00:00:00:01")
        #expect(!ipxe.message.options.contains(.vendorSpecific))
        // A proxy offer must say PXEClient or iPXE does not take it as ProxyDHCP.
        #expect(ipxe.message.options.vendorClassIdentifier.map(Array.init) == Array("PXEClient".utf8))
        let http = try dhcpReply(dhcpDecide(dhcpRequest(.discover, macUEFI, client: .http(.x64UEFIHTTP)), policy: dhcpProxyPolicy))
        #expect(http.message.bootFileName == "http://192.0.2.1:8080/ipxe/ipxe.efi")
        #expect(http.message.options.vendorClassIdentifier.map(Array.init) == Array("HTTPClient".utf8))
    }

    @Test func port4011RepliesUnicastToTheRequester() throws {
        let client = IPv4Address(192, 0, 2, 140)
        for p in [dhcpProxyPolicy, dhcpPolicy] {
            let r = try dhcpReply(dhcpDecide(dhcpRequest(.request, macUnknown, client: .pxe(.x86BIOS), broadcast: false, ciaddr: client, serverID: dhcpServer),
                                     policy: p, port: .pxe, source: client, sourcePort: 68))
            #expect(r.message.messageType == .ack && r.message.yiaddr == .any && r.message.ciaddr == client)
            #expect(r.destination == DHCPDestination(kind: .requester, address: client, port: 68, broadcastFlag: false))
            #expect(r.message.bootFileName == "pxelinux.0" && r.leaseAction == nil)
        }
        #expect(dhcpDecide(dhcpRequest(.discover, macUnknown, client: .pxe(.x86BIOS)), policy: dhcpProxyPolicy, port: .pxe) == .ignore(.notServedOnPort(.discover, .pxe)))
        #expect(dhcpDecide(dhcpRequest(.request, macUnknown, client: .plain, ciaddr: client), policy: dhcpProxyPolicy, port: .pxe, source: client) == .ignore(.notPXEClient))
    }

    @Test func replySizeFollowsOption57WithinBounds() throws {
        #expect(try dhcpReply(dhcpDecide(dhcpRequest(.discover, macBIOS))).maxMessageSize == 576)
        #expect(try dhcpReply(dhcpDecide(dhcpRequest(.discover, macBIOS, extra: [.maximumMessageSize(1472)]))).maxMessageSize == 1472)
        #expect(try dhcpReply(dhcpDecide(dhcpRequest(.discover, macBIOS, extra: [.maximumMessageSize(300)]))).maxMessageSize == 576)
        #expect(try dhcpReply(dhcpDecide(dhcpRequest(.discover, macBIOS, extra: [.maximumMessageSize(9000)]))).maxMessageSize == 1500)
    }
}
