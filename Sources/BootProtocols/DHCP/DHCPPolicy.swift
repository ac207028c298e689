import NIOCore

// The reply decision: a pure function of the received packet, the inventory, the lease state and
// the time. It returns a complete reply (message + where to send it + what to record) or a reason
// for silence; the NIO handler only carries that out and logs the reason.

/// Which server port a packet arrived on.
public enum DHCPServerPort: UInt16, Hashable, Sendable, CustomStringConvertible {
    /// DHCP/BOOTP server port: DISCOVER/REQUEST/... and proxyDHCP offers.
    case dhcp = 67
    /// PXE boot server port: the proxyDHCP REQUEST a PXE client sends after a proxy offer.
    case pxe = 4011
    public var description: String { "\(rawValue)" }
}

/// A received packet with what the socket layer knows about it.
public struct DHCPReceived: Hashable, Sendable {
    public var message: DHCPMessage
    public var port: DHCPServerPort
    public var sourceAddress: IPv4Address
    public var sourcePort: UInt16
    /// The server's own address on the receiving interface; selects the subnet of non-relayed
    /// clients. Nil means the policy's `serverAddress`.
    public var interfaceAddress: IPv4Address?

    public init(
        message: DHCPMessage, port: DHCPServerPort = .dhcp, sourceAddress: IPv4Address = .any,
        sourcePort: UInt16 = 68, interfaceAddress: IPv4Address? = nil
    ) {
        self.message = message
        self.port = port
        self.sourceAddress = sourceAddress
        self.sourcePort = sourcePort
        self.interfaceAddress = interfaceAddress
    }
}

/// Where a reply goes, chosen per RFC 2131 §4.1 (and PXE's port 4011 rule).
public struct DHCPDestination: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: String, Hashable, Sendable {
        /// To the relay agent in `giaddr`, server port 67.
        case relay
        /// Unicast to `ciaddr` (the client already has a working address).
        case clientAddress
        /// Limited broadcast 255.255.255.255:68 (broadcast bit set, NAKs, proxy offers).
        case broadcast
        /// Unicast to `yiaddr` at `chaddr` without ARP: needs an ARP entry injected (or the server may
        /// broadcast instead); RFC 2131 §4.1 for clients that can take unicast before configuration.
        case clientHardwareAddress
        /// Back to the packet's source address and port (PXE port 4011 replies).
        case requester
    }

    public var kind: Kind
    public var address: IPv4Address
    public var port: UInt16
    /// Whether the reply carries the broadcast flag (set for NAKs through a relay, else the client's).
    public var broadcastFlag: Bool

    public init(kind: Kind, address: IPv4Address, port: UInt16, broadcastFlag: Bool) {
        self.kind = kind
        self.address = address
        self.port = port
        self.broadcastFlag = broadcastFlag
    }

    public var description: String {
        "\(kind.rawValue) \(address):\(port)\(broadcastFlag ? " (broadcast flag)" : "")"
    }
}

/// Why a NAK was sent (goes to the log and into option 56).
public enum DHCPNakReason: Hashable, Sendable, CustomStringConvertible {
    case wrongSubnet(requested: IPv4Address, subnet: DHCPSubnet?)
    case notClientsAddress(requested: IPv4Address, assigned: IPv4Address)
    case addressHeldByAnother(IPv4Address, holder: MACAddress)
    case addressDeclined(IPv4Address)
    case addressReserved(IPv4Address)
    case addressNotInPool(IPv4Address)

    public var description: String {
        switch self {
        case .wrongSubnet(let requested, let subnet):
            "requested \(requested) is not on the client's subnet \(subnet.map(\.description) ?? "(none declared)")"
        case .notClientsAddress(let requested, let assigned):
            "requested \(requested) but the inventory assigns \(assigned)"
        case .addressHeldByAnother(let address, let holder): "\(address) is held by \(holder)"
        case .addressDeclined(let address): "\(address) was declined and is set aside"
        case .addressReserved(let address): "\(address) is reserved for another inventory host"
        case .addressNotInPool(let address): "\(address) is outside the dynamic pool"
        }
    }
}

/// Why no reply is sent.
public enum DHCPIgnoreReason: Error, Hashable, Sendable, CustomStringConvertible {
    case notABootRequest
    case unsupportedHardware(htype: UInt8, hlen: UInt8)
    case noMessageType
    case notAClientMessage(DHCPMessageType)
    case notPXEClient
    case unknownClientIgnored(MACAddress)
    case unknownClientNoPool(MACAddress)
    case requestForOtherServer(IPv4Address)
    case noSubnet(IPv4Address, relayed: Bool)
    case fixedAddressOutsideSubnet(MACAddress, IPv4Address, DHCPSubnet)
    case addressHeldByAnother(IPv4Address, holder: MACAddress)
    case addressDeclined(IPv4Address)
    case poolExhausted(DHCPSubnet)
    case noBootFile(DHCPClientArchitecture)
    case noRecordOfClient(MACAddress, IPv4Address)
    case missingAddress(DHCPMessageType)
    case releaseOfAddressNotHeld(IPv4Address, by: MACAddress)
    case declineOfAddressNotOffered(IPv4Address, by: MACAddress)
    case proxyLeavesAddressingToMainServer(DHCPMessageType)
    case notServedOnPort(DHCPMessageType, DHCPServerPort)

    public var description: String {
        switch self {
        case .notABootRequest: "not a BOOTREQUEST (op 2 is a server reply)"
        case .unsupportedHardware(let htype, let hlen):
            "unsupported hardware type \(htype) / length \(hlen) (only Ethernet, htype 1 hlen 6)"
        case .noMessageType: "no DHCP message type (option 53): plain BOOTP is not served"
        case .notAClientMessage(let type): "\(type) is not a message a client sends to a server"
        case .notPXEClient: "not a PXE boot request (no option 60 PXEClient)"
        case .unknownClientIgnored(let mac): "unknown client \(mac) and unknown clients are ignored"
        case .unknownClientNoPool(let mac): "unknown client \(mac) and pool disabled"
        case .requestForOtherServer(let id): "request for another server (server id \(id))"
        case .noSubnet(let address, let relayed):
            "no declared subnet contains \(address) (\(relayed ? "relay giaddr" : "receiving interface"))"
        case .fixedAddressOutsideSubnet(let mac, let address, let subnet):
            "\(mac)'s fixed address \(address) is not on the request's subnet \(subnet)"
        case .addressHeldByAnother(let address, let holder): "\(address) is held by \(holder)"
        case .addressDeclined(let address): "\(address) was declined and is set aside"
        case .poolExhausted(let subnet): "no free address left in the pool of \(subnet)"
        case .noBootFile(let arch): "no boot file configured for \(arch)"
        case .noRecordOfClient(let mac, let address):
            "no record of \(mac) holding \(address) (RFC 2131 §4.3.2: stay silent)"
        case .missingAddress(let type): "\(type) names no address (option 50 / ciaddr)"
        case .releaseOfAddressNotHeld(let address, let mac): "\(mac) released \(address), which it does not hold"
        case .declineOfAddressNotOffered(let address, let mac):
            "\(mac) declined \(address), which was not offered or leased to it"
        case .proxyLeavesAddressingToMainServer(let type):
            "proxyDHCP mode: \(type) on port 67 is for the main DHCP server"
        case .notServedOnPort(let type, let port): "\(type) is not served on port \(port)"
        }
    }
}

/// A reply to send, where to send it, and what to record.
public struct DHCPReply: Hashable, Sendable {
    public var message: DHCPMessage
    public var destination: DHCPDestination
    public var leaseAction: DHCPLeaseAction?
    public var nakReason: DHCPNakReason?
    /// Encoding limit from the client's option 57 (at least 576, at most 1500 to stay unfragmented).
    public var maxMessageSize: Int

    public func encode(into buffer: inout ByteBuffer) throws(DHCPError) {
        try message.encode(into: &buffer, maxMessageSize: maxMessageSize)
    }
}

public enum DHCPDecision: Hashable, Sendable, CustomStringConvertible {
    case reply(DHCPReply)
    /// No reply, but something to record (RELEASE, DECLINE).
    case record(DHCPLeaseAction)
    case ignore(DHCPIgnoreReason)

    public var description: String {
        switch self {
        case .reply(let r):
            "reply \(r.message.messageType.map(\.description) ?? "?") to \(r.destination)"
                + (r.leaseAction.map { ", \($0)" } ?? "") + (r.nakReason.map { ", NAK: \($0)" } ?? "")
        case .record(let action): "record \(action)"
        case .ignore(let reason): "ignore: \(reason)"
        }
    }
}

/// Server settings plus the decision function.
public struct DHCPPolicy: Hashable, Sendable {
    public enum Mode: String, Hashable, Sendable {
        /// Hands out addresses and boot information.
        case authoritative
        /// proxyDHCP next to another DHCP server: boot information only, never an address.
        case proxy
    }

    public var mode: Mode
    /// Server identifier (option 54) and default next-server / HTTP host.
    public var serverAddress: IPv4Address
    /// `siaddr` for TFTP; nil means `serverAddress`.
    public var nextServer: IPv4Address?
    /// Option 66 / `sname`; nil means the next server's dotted quad.
    public var tftpServerName: String?
    public var httpPort: UInt16
    public var ignoreUnknownClients: Bool
    /// Answer DISCOVER + option 80 with an ACK directly (RFC 4039).
    public var rapidCommit: Bool
    /// How long an offered address stays reserved for the client.
    public var offerHoldTime: UInt32
    /// How long a declined address is set aside.
    public var declineHoldTime: UInt32
    public var bootFiles: DHCPBootFileTable
    /// Path of the per-node iPXE script on the HTTP server (the server passes `BootPlan.bootScriptPath`,
    /// the one spelling of it); `?mac=` is appended.
    public var bootScriptPath: String
    /// The BIOS boot path of machines not in the inventory (a node's own is `DHCPHost.biosLoader`).
    public var unknownClientBIOSLoader: DHCPBIOSLoader?
    /// The x86-64 UEFI PXE file of machines not in the inventory (a node's own is `DHCPHost.uefiLoader`).
    public var unknownClientUEFILoader: String?
    /// Seconds pxelinux waits after "Boot failed: press a key to retry, or wait for reset..." before it
    /// resets the machine (options 208 and 211, sent with a pxelinux boot file); nil leaves pxelinux's own
    /// 300 s. A stateless node has nothing to lose by trying again soon, and nobody presses that key.
    public var pxelinuxRebootTime: UInt32?

    public init(
        mode: Mode = .authoritative, serverAddress: IPv4Address, nextServer: IPv4Address? = nil,
        tftpServerName: String? = nil, httpPort: UInt16 = 80, ignoreUnknownClients: Bool = false,
        rapidCommit: Bool = true, offerHoldTime: UInt32 = 60, declineHoldTime: UInt32 = 3600,
        bootFiles: DHCPBootFileTable = .standard, bootScriptPath: String,
        unknownClientBIOSLoader: DHCPBIOSLoader? = nil, unknownClientUEFILoader: String? = nil,
        pxelinuxRebootTime: UInt32? = nil
    ) {
        self.unknownClientUEFILoader = unknownClientUEFILoader
        self.unknownClientBIOSLoader = unknownClientBIOSLoader
        self.pxelinuxRebootTime = pxelinuxRebootTime
        self.mode = mode
        self.serverAddress = serverAddress
        self.nextServer = nextServer
        self.tftpServerName = tftpServerName
        self.httpPort = httpPort
        self.ignoreUnknownClients = ignoreUnknownClients
        self.rapidCommit = rapidCommit
        self.offerHoldTime = offerHoldTime
        self.declineHoldTime = declineHoldTime
        self.bootFiles = bootFiles
        self.bootScriptPath = bootScriptPath
    }

    var effectiveNextServer: IPv4Address { nextServer ?? serverAddress }

    /// `http://SERVER:PORT` + `bootScriptPath` + `?mac=aa:bb:…` for a given client.
    public func bootScriptURL(for mac: MACAddress) -> String {
        "\(httpBase)\(bootScriptPath)?mac=\(mac)"
    }

    var httpBase: String { serverAddress.httpBase(port: Int(httpPort)) }

    // MARK: Decision

    public func decide(
        _ received: DHCPReceived, now: DHCPTimestamp, inventory: some DHCPInventory, leases: some DHCPLeaseView
    ) -> DHCPDecision {
        let request = received.message
        guard request.op == .bootRequest else { return .ignore(.notABootRequest) }
        guard let mac = request.clientMAC else {
            return .ignore(.unsupportedHardware(htype: request.htype, hlen: request.hlen))
        }
        guard let type = request.messageType else { return .ignore(.noMessageType) }
        switch type {
        case .discover, .request, .decline, .release, .inform: break
        default: return .ignore(.notAClientMessage(type))
        }
        let host = inventory.host(for: mac)
        if host == nil && ignoreUnknownClients { return .ignore(.unknownClientIgnored(mac)) }

        if received.port == .pxe {
            guard type == .request || type == .inform else { return .ignore(.notServedOnPort(type, .pxe)) }
            return bootServerReply(received, mac: mac, host: host)
        }
        if mode == .proxy {
            guard type == .discover else { return .ignore(.proxyLeavesAddressingToMainServer(type)) }
            return proxyOffer(received, mac: mac, host: host)
        }
        switch type {
        case .discover: return answerDiscover(received, mac: mac, host: host, now: now, inventory: inventory, leases: leases)
        case .request: return answerRequest(received, mac: mac, host: host, now: now, inventory: inventory, leases: leases)
        case .decline: return answerDecline(request, mac: mac, now: now, leases: leases)
        case .release: return answerRelease(request, mac: mac, now: now, leases: leases)
        default: return answerInform(received, mac: mac, host: host, inventory: inventory)
        }
    }

    // MARK: Authoritative

    private func answerDiscover(
        _ received: DHCPReceived, mac: MACAddress, host: DHCPHost?, now: DHCPTimestamp,
        inventory: some DHCPInventory, leases: some DHCPLeaseView
    ) -> DHCPDecision {
        let request = received.message
        let subnet: DHCPSubnet
        switch localSubnet(received, inventory) {
        case .success(let s): subnet = s
        case .failure(let reason): return .ignore(reason)
        }
        let boot: BootInfo?
        switch bootInfo(request, mac: mac, host: host) {
        case .success(let b): boot = b
        case .failure(let reason): return .ignore(reason)
        }

        let address: IPv4Address
        if let fixed = host?.address {
            guard subnet.contains(fixed) else { return .ignore(.fixedAddressOutsideSubnet(mac, fixed, subnet)) }
            if let holder = leases.holder(of: fixed, at: now), holder != mac {
                return .ignore(.addressHeldByAnother(fixed, holder: holder))
            }
            if leases.isDeclined(fixed, at: now) { return .ignore(.addressDeclined(fixed)) }
            address = fixed
        } else {
            guard let pool = subnet.pool else { return .ignore(.unknownClientNoPool(mac)) }
            func free(_ a: IPv4Address) -> Bool {
                pool.contains(a) && !inventory.isReserved(a) && !leases.isDeclined(a, at: now)
                    && (leases.holder(of: a, at: now).map { $0 == mac } ?? true)
            }
            if let current = leases.address(heldBy: mac, at: now), free(current) {
                address = current
            } else if let wanted = request.options.requestedIPAddress, free(wanted) {
                address = wanted
            } else if let next = leases.firstAvailableAddress(in: pool, at: now, where: { !inventory.isReserved($0) }) {
                address = next
            } else {
                return .ignore(.poolExhausted(subnet))
            }
        }

        let commit = rapidCommit && request.options.rapidCommit
        var reply = DHCPMessage(replyTo: request, type: commit ? .ack : .offer)
        reply.yiaddr = address
        addLeaseOptions(&reply, subnet: subnet, host: host)
        if let boot { apply(boot, to: &reply, request: request) }
        if commit { reply.options.set(.rapidCommit) }
        let lease = DHCPLease(
            mac: mac, address: address,
            expires: now.adding(seconds: commit ? subnet.leaseTime : offerHoldTime), hostname: host?.hostname)
        return .reply(makeReply(reply, received: received, lease: commit ? .commit(lease) : .offer(lease)))
    }

    private enum RequestState { case selecting, initReboot, renewing }

    private func answerRequest(
        _ received: DHCPReceived, mac: MACAddress, host: DHCPHost?, now: DHCPTimestamp,
        inventory: some DHCPInventory, leases: some DHCPLeaseView
    ) -> DHCPDecision {
        let request = received.message
        let state: RequestState
        let requested: IPv4Address
        if let serverID = request.options.serverIdentifier {
            guard serverID == serverAddress else { return .ignore(.requestForOtherServer(serverID)) }
            guard let wanted = request.options.requestedIPAddress ?? (request.ciaddr.isAny ? nil : request.ciaddr) else {
                return .ignore(.missingAddress(.request))
            }
            state = .selecting
            requested = wanted
        } else if request.ciaddr.isAny, let wanted = request.options.requestedIPAddress {
            state = .initReboot
            requested = wanted
        } else if !request.ciaddr.isAny {
            state = .renewing  // or rebinding: the same checks apply (§4.3.2)
            requested = request.ciaddr
        } else {
            return .ignore(.missingAddress(.request))
        }

        // A renewing client is configured and may be routed to us: its own address names its subnet.
        let subnetResult: Result<DHCPSubnet, DHCPIgnoreReason> =
            state == .renewing && request.giaddr.isAny
            ? (inventory.subnet(containing: requested).map { .success($0) } ?? .failure(.noSubnet(requested, relayed: false)))
            : localSubnet(received, inventory)
        let subnet: DHCPSubnet
        switch subnetResult {
        case .success(let s): subnet = s
        case .failure(.noSubnet) where state == .renewing:
            return nak(received, .wrongSubnet(requested: requested, subnet: nil))
        case .failure(let reason): return .ignore(reason)
        }
        guard subnet.contains(requested) else {
            return nak(received, .wrongSubnet(requested: requested, subnet: subnet))
        }
        let boot: BootInfo?
        switch bootInfo(request, mac: mac, host: host) {
        case .success(let b): boot = b
        case .failure(let reason): return .ignore(reason)
        }

        if let holder = leases.holder(of: requested, at: now), holder != mac {
            return nak(received, .addressHeldByAnother(requested, holder: holder))
        }
        if leases.isDeclined(requested, at: now) { return nak(received, .addressDeclined(requested)) }
        if let fixed = host?.address {
            guard requested == fixed else { return nak(received, .notClientsAddress(requested: requested, assigned: fixed)) }
        } else {
            if inventory.isReserved(requested) { return nak(received, .addressReserved(requested)) }
            guard let pool = subnet.pool else {
                // Not ours to give: unknown clients need a pool (and known ones without a fixed address).
                return state == .selecting ? .ignore(.unknownClientNoPool(mac)) : .ignore(.noRecordOfClient(mac, requested))
            }
            guard pool.contains(requested) else { return nak(received, .addressNotInPool(requested)) }
            if state != .selecting && leases.address(heldBy: mac, at: now) != requested {
                return .ignore(.noRecordOfClient(mac, requested))
            }
        }

        var reply = DHCPMessage(replyTo: request, type: .ack)
        reply.ciaddr = request.ciaddr
        reply.yiaddr = requested
        addLeaseOptions(&reply, subnet: subnet, host: host)
        if let boot { apply(boot, to: &reply, request: request) }
        let lease = DHCPLease(mac: mac, address: requested, expires: now.adding(seconds: subnet.leaseTime), hostname: host?.hostname)
        return .reply(makeReply(reply, received: received, lease: .commit(lease)))
    }

    private func answerDecline(_ request: DHCPMessage, mac: MACAddress, now: DHCPTimestamp, leases: some DHCPLeaseView) -> DHCPDecision {
        if let serverID = request.options.serverIdentifier, serverID != serverAddress {
            return .ignore(.requestForOtherServer(serverID))
        }
        guard let address = request.options.requestedIPAddress else { return .ignore(.missingAddress(.decline)) }
        // Only the client that was given the address may set it aside: a stray or spoofed DECLINE
        // would otherwise take addresses out of the pool one by one.
        guard leases.holder(of: address, at: now) == mac else {
            return .ignore(.declineOfAddressNotOffered(address, by: mac))
        }
        return .record(.decline(mac: mac, address: address, until: now.adding(seconds: declineHoldTime)))
    }

    private func answerRelease(_ request: DHCPMessage, mac: MACAddress, now: DHCPTimestamp, leases: some DHCPLeaseView) -> DHCPDecision {
        if let serverID = request.options.serverIdentifier, serverID != serverAddress {
            return .ignore(.requestForOtherServer(serverID))
        }
        guard !request.ciaddr.isAny else { return .ignore(.missingAddress(.release)) }
        guard leases.holder(of: request.ciaddr, at: now) == mac else {
            return .ignore(.releaseOfAddressNotHeld(request.ciaddr, by: mac))
        }
        return .record(.release(mac: mac, address: request.ciaddr))
    }

    private func answerInform(_ received: DHCPReceived, mac: MACAddress, host: DHCPHost?, inventory: some DHCPInventory) -> DHCPDecision {
        let request = received.message
        let subnet: DHCPSubnet
        if request.giaddr.isAny, !request.ciaddr.isAny {
            guard let s = inventory.subnet(containing: request.ciaddr) else {
                return .ignore(.noSubnet(request.ciaddr, relayed: false))
            }
            subnet = s
        } else {
            switch localSubnet(received, inventory) {
            case .success(let s): subnet = s
            case .failure(let reason): return .ignore(reason)
            }
        }
        let boot: BootInfo?
        switch bootInfo(request, mac: mac, host: host) {
        case .success(let b): boot = b
        case .failure(let reason): return .ignore(reason)
        }
        // §4.3.5: configuration only, no yiaddr and no lease time.
        var reply = DHCPMessage(replyTo: request, type: .ack)
        reply.ciaddr = request.ciaddr
        reply.options.set(.serverIdentifier(serverAddress))
        addConfigurationOptions(&reply, subnet: subnet, host: host)
        if let boot { apply(boot, to: &reply, request: request) }
        return .reply(makeReply(reply, received: received, lease: nil))
    }

    private func nak(_ received: DHCPReceived, _ reason: DHCPNakReason) -> DHCPDecision {
        var reply = DHCPMessage(replyTo: received.message, type: .nak)
        reply.options.set(.serverIdentifier(serverAddress))
        reply.options.set(.message(reason.description))
        // §4.3.2: NAKs are broadcast; through a relay, the broadcast bit tells the relay to broadcast.
        let destination: DHCPDestination
        if !received.message.giaddr.isAny {
            reply.flags.insert(.broadcast)
            destination = DHCPDestination(kind: .relay, address: received.message.giaddr, port: 67, broadcastFlag: true)
        } else {
            destination = DHCPDestination(
                kind: .broadcast, address: .broadcast, port: 68, broadcastFlag: reply.flags.contains(.broadcast))
        }
        return .reply(DHCPReply(
            message: reply, destination: destination, leaseAction: nil, nakReason: reason,
            maxMessageSize: replySizeLimit(received.message)))
    }

    // MARK: proxyDHCP and boot server (port 4011)

    private func proxyOffer(_ received: DHCPReceived, mac: MACAddress, host: DHCPHost?) -> DHCPDecision {
        let request = received.message
        guard request.options.vendorClassHasPrefix("PXEClient") || request.options.vendorClassHasPrefix("HTTPClient") else {
            return .ignore(.notPXEClient)
        }
        let boot: BootInfo
        switch bootInfo(request, mac: mac, host: host) {
        case .success(let b?): boot = b
        case .success(nil): return .ignore(.notPXEClient)
        case .failure(let reason): return .ignore(reason)
        }
        var reply = DHCPMessage(replyTo: request, type: .offer)
        reply.options.set(.serverIdentifier(serverAddress))
        apply(boot, to: &reply, request: request)
        return .reply(makeReply(reply, received: received, lease: nil))
    }

    private func bootServerReply(_ received: DHCPReceived, mac: MACAddress, host: DHCPHost?) -> DHCPDecision {
        let request = received.message
        let boot: BootInfo
        switch bootInfo(request, mac: mac, host: host) {
        case .success(let b?): boot = b
        case .success(nil): return .ignore(.notPXEClient)
        case .failure(let reason): return .ignore(reason)
        }
        var reply = DHCPMessage(replyTo: request, type: .ack)
        reply.ciaddr = request.ciaddr
        reply.options.set(.serverIdentifier(serverAddress))
        apply(boot, to: &reply, request: request)
        // PXE spec: the boot server answers the requester directly, at its source address and port.
        let destination = DHCPDestination(
            kind: .requester, address: received.sourceAddress.isAny ? request.ciaddr : received.sourceAddress,
            port: received.sourcePort, broadcastFlag: reply.flags.contains(.broadcast))
        return .reply(DHCPReply(
            message: reply, destination: destination, leaseAction: nil, nakReason: nil,
            maxMessageSize: replySizeLimit(request)))
    }

    // MARK: Pieces

    /// Subnet of a client that is not renewing: the relay's (giaddr), else the receiving interface's.
    private func localSubnet(_ received: DHCPReceived, _ inventory: some DHCPInventory) -> Result<DHCPSubnet, DHCPIgnoreReason> {
        let giaddr = received.message.giaddr
        let key = giaddr.isAny ? (received.interfaceAddress ?? serverAddress) : giaddr
        guard let subnet = inventory.subnet(containing: key) else { return .failure(.noSubnet(key, relayed: !giaddr.isAny)) }
        return .success(subnet)
    }

    private func addLeaseOptions(_ reply: inout DHCPMessage, subnet: DHCPSubnet, host: DHCPHost?) {
        reply.options.set(.serverIdentifier(serverAddress))
        reply.options.set(.leaseTime(subnet.leaseTime))
        if subnet.leaseTime != UInt32.max {
            reply.options.set(.renewalTime(subnet.leaseTime / 2))
            reply.options.set(.rebindingTime(UInt32(UInt64(subnet.leaseTime) * 7 / 8)))
        }
        addConfigurationOptions(&reply, subnet: subnet, host: host)
    }

    private func addConfigurationOptions(_ reply: inout DHCPMessage, subnet: DHCPSubnet, host: DHCPHost?) {
        reply.options.set(.subnetMask(subnet.network.mask))
        if !subnet.routers.isEmpty { reply.options.set(.router(subnet.routers)) }
        if !subnet.dnsServers.isEmpty { reply.options.set(.domainNameServer(subnet.dnsServers)) }
        if let name = host?.hostname { reply.options.set(.hostName(name)) }
        if let domain = subnet.domainName { reply.options.set(.domainName(domain)) }
    }

    /// Boot information for one client (nil for a client that is not network booting). `apply` must
    /// run after `yiaddr` is set: whether option 60 is echoed depends on it.
    struct BootInfo {
        enum Kind { case pxe, ipxe, http }
        var kind: Kind
        var file: String
    }

    private func bootInfo(_ request: DHCPMessage, mac: MACAddress, host: DHCPHost?) -> Result<BootInfo?, DHCPIgnoreReason> {
        let options = request.options
        let kind: BootInfo.Kind
        // PXE clients that send no option 93 are BIOS (PXE 2.1 predates it).
        let arch = host?.architecture ?? options.clientArchitecture ?? .x86BIOS
        let siteLoader = arch == .x86BIOS ? (host != nil ? host?.biosLoader : unknownClientBIOSLoader) : nil
        // x86-64 UEFI PXE (7, and 9 from firmware that follows RFC 4578's swapped values); HTTP Boot
        // clients keep the table's file by URL.
        let siteUEFILoader = arch == .x64UEFI || arch == .ebc ? (host != nil ? host?.uefiLoader : unknownClientUEFILoader) : nil
        if options.userClassIsIPXE {
            if case .pxelinux(let file) = siteLoader { return .success(BootInfo(kind: .pxe, file: file)) }
            // A UEFI iPXE ROM chainloads the site's loader (shim) over TFTP, as firmware PXE would.
            if let file = siteUEFILoader { return .success(BootInfo(kind: .pxe, file: file)) }
            // iPXE already runs: hand it the boot script so the chainload loop ends.
            return .success(BootInfo(kind: .ipxe, file: bootScriptURL(for: mac)))
        } else if options.vendorClassHasPrefix("HTTPClient") {
            kind = .http
        } else if options.vendorClassHasPrefix("PXEClient") {
            kind = .pxe
        } else {
            return .success(nil)
        }
        let chosen: String? = switch siteLoader {
        case .pxelinux(let file), .ipxe(let file): kind == .pxe ? file : nil
        case nil: kind == .pxe ? siteUEFILoader : nil
        }
        guard let path = host?.bootFile ?? chosen ?? bootFiles[arch] else { return .failure(.noBootFile(arch)) }
        if kind == .http && !path.contains("://") {
            return .success(BootInfo(kind: .http, file: "\(httpBase)/\(path.drop { $0 == "/" })"))
        }
        return .success(BootInfo(kind: kind, file: path))
    }

    private func apply(_ boot: BootInfo, to reply: inout DHCPMessage, request: DHCPMessage) {
        let server = effectiveNextServer
        reply.siaddr = server
        let fileBytes = Array(boot.file.utf8)
        if fileBytes.count <= 128 { reply.file = fileBytes }
        switch boot.kind {
        case .http:
            reply.options.setRaw(.vendorClassIdentifier, "HTTPClient".utf8)
        case .pxe, .ipxe:
            // Option 60 marks a PXE offer. Firmware PXE needs it; iPXE would answer it in an address
            // offer with an extra ProxyDHCP round trip, so it only gets it where the reply is
            // proxy-style (no yiaddr) and must be recognised as PXE.
            // iPXE sent to pxelinux by the site's choice is still iPXE: no option 60 in its address offer.
            let firmwarePXE = boot.kind == .pxe && !request.options.userClassIsIPXE
            if request.options.vendorClassHasPrefix("PXEClient") && (firmwarePXE || reply.yiaddr.isAny) {
                reply.options.setRaw(.vendorClassIdentifier, "PXEClient".utf8)
            }
            if boot.kind == .pxe {
                let name = tftpServerName ?? server.description
                reply.sname = Array(name.utf8.prefix(64))
                reply.options.set(.tftpServerName(name))
            }
        }
        reply.options.set(.bootfileName(boot.file))
        if let uuid = request.options[.clientMachineIdentifier] {
            reply.options.setRaw(.clientMachineIdentifier, uuid)  // PXE spec: echo option 97
        }
        if boot.kind == .pxe {
            // Skip boot server discovery and the port 4011 round trip: the file is right here.
            reply.options.set(DHCPOption.pxeDiscoveryControlBootFileOnly)
            if let seconds = pxelinuxRebootTime, boot.file.hasSuffix("pxelinux.0") {
                // pxelinux reads these from the reply the PXE stack cached; older versions heed 211
                // only next to the magic in 208 (syslinux's pxelinux.txt).
                reply.options.setRaw(.pxelinuxMagic, [0xF1, 0x00, 0x74, 0x7E])
                reply.options.setRaw(.pxelinuxRebootTime, withUnsafeBytes(of: seconds.bigEndian, Array.init))
            }
        }
        if request.options.userClassIsIPXE && !reply.yiaddr.isAny {
            // iPXE holds an address offer for ~2 s in case a ProxyDHCP offer follows, unless the offer
            // says there is none (no-pxedhcp, 175.176): this offer carries the boot file already.
            reply.options.setRaw(.ipxeEncapsulated, [176, 1, 1])
        }
    }

    /// RFC 2131 §4.1 destination for OFFER/ACK.
    private func makeReply(_ reply: DHCPMessage, received: DHCPReceived, lease: DHCPLeaseAction?) -> DHCPReply {
        let request = received.message
        let broadcastFlag = reply.flags.contains(.broadcast)
        let destination: DHCPDestination
        if !request.giaddr.isAny {
            destination = DHCPDestination(kind: .relay, address: request.giaddr, port: 67, broadcastFlag: broadcastFlag)
        } else if !request.ciaddr.isAny {
            destination = DHCPDestination(kind: .clientAddress, address: request.ciaddr, port: 68, broadcastFlag: broadcastFlag)
        } else if broadcastFlag || reply.yiaddr.isAny {
            destination = DHCPDestination(kind: .broadcast, address: .broadcast, port: 68, broadcastFlag: broadcastFlag)
        } else {
            destination = DHCPDestination(kind: .clientHardwareAddress, address: reply.yiaddr, port: 68, broadcastFlag: false)
        }
        return DHCPReply(
            message: reply, destination: destination, leaseAction: lease, nakReason: nil,
            maxMessageSize: replySizeLimit(request))
    }

    private func replySizeLimit(_ request: DHCPMessage) -> Int {
        min(max(Int(request.options.maximumMessageSize ?? 0), DHCPMessage.defaultMaximumMessageSize), 1500)
    }
}
