// libFuzzer target over the DHCP decoder, encoder and reply policy (BootProtocols).
// Built and run by fuzz/run.sh; every check below traps on failure so libFuzzer saves the input.
import BootProtocols

/// Lease state for the policy: a plain table, checked for the one-holder invariant on every change.
struct FuzzLeases: DHCPLeaseView {
    var held: [IPv4Address: (mac: MACAddress, expires: DHCPTimestamp)] = [:]
    var declined: [IPv4Address: DHCPTimestamp] = [:]
    func holder(of address: IPv4Address, at now: DHCPTimestamp) -> MACAddress? {
        held[address].flatMap { $0.expires > now ? $0.mac : nil }
    }
    func address(heldBy client: MACAddress, at now: DHCPTimestamp) -> IPv4Address? {
        held.first { $0.value.mac == client && $0.value.expires > now }?.key
    }
    func isDeclined(_ address: IPv4Address, at now: DHCPTimestamp) -> Bool { declined[address].map { $0 > now } ?? false }

    mutating func apply(_ action: DHCPLeaseAction, now: DHCPTimestamp) {
        switch action {
        case .offer(let lease), .commit(let lease):
            if let holder = holder(of: lease.address, at: now) {
                precondition(holder == lease.mac, "policy gave \(lease.address) to \(lease.mac) while \(holder) holds it")
            }
            for (address, entry) in held where entry.mac == lease.mac { held[address] = nil }
            held[lease.address] = (lease.mac, lease.expires)
        case .release(let mac, let address):
            precondition(holder(of: address, at: now) == mac, "release of an address the client does not hold")
            held[address] = nil
        case .decline(let mac, let address, let until):
            precondition(holder(of: address, at: now) == mac, "decline of an address the client was not given")
            held[address] = nil
            declined[address] = until
        }
    }
}

let server = IPv4Address(192, 0, 2, 1)
let inventory = DHCPStaticInventory(
    hosts: [
        DHCPHost(mac: MACAddress(0x52, 0x54, 0, 0x77, 0, 1), address: IPv4Address(192, 0, 2, 11), hostname: "n1"),
        DHCPHost(mac: MACAddress(0x52, 0x54, 0, 0x77, 0, 2), hostname: "n2", architecture: .x64UEFI),
    ],
    subnets: [
        DHCPSubnet(network: IPv4Network("192.0.2.0/24")!, routers: [server],
                   dnsServers: [server], domainName: "fuzz.test", leaseTime: 600,
                   pool: IPv4Address(192, 0, 2, 100)...IPv4Address(192, 0, 2, 103)),
        DHCPSubnet(network: IPv4Network("198.51.100.0/24")!, leaseTime: 60),
    ])
let policies = [
    DHCPPolicy(serverAddress: server, httpPort: 8080, bootScriptPath: "/boot/v1/bootscript"),
    DHCPPolicy(mode: .proxy, serverAddress: server, bootScriptPath: "/boot/v1/bootscript"),
]
nonisolated(unsafe) var leases = FuzzLeases()
nonisolated(unsafe) var clock: Int64 = 1_000_000

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    guard let message = try? DHCPMessage(decoding: bytes) else { return 0 }

    // Encode what decoded; when it fits, it must decode back to the same message.
    if let encoded = try? message.encoded(maxMessageSize: 1500) {
        guard let again = try? DHCPMessage(decoding: encoded) else { fatalError("re-encoded message does not decode") }
        precondition(again.op == message.op && again.xid == message.xid && again.chaddr == message.chaddr
                     && again.ciaddr == message.ciaddr && again.giaddr == message.giaddr, "header changed in a round trip")
        precondition(again.options == message.options, "options changed in a round trip:\n\(message.options)\n--\n\(again.options)")
    }

    // Every mode and port, and replies that must encode and decode.
    clock += Int64(size % 7)
    let now = DHCPTimestamp(secondsSinceEpoch: clock)
    for policy in policies {
        for port in [DHCPServerPort.dhcp, .pxe] {
            let received = DHCPReceived(message: message, port: port, sourceAddress: IPv4Address(192, 0, 2, 200),
                                        interfaceAddress: server)
            switch policy.decide(received, now: now, inventory: inventory, leases: leases) {
            case .reply(let reply):
                precondition(reply.message.op == .bootReply && reply.message.xid == message.xid, "reply not derived from request")
                if let encoded = try? reply.message.encoded(maxMessageSize: reply.maxMessageSize) {
                    precondition(encoded.count <= max(reply.maxMessageSize, 576) - 28, "reply larger than the client accepts")
                    guard let decoded = try? DHCPMessage(decoding: encoded) else { fatalError("reply does not decode") }
                    precondition(decoded.messageType == reply.message.messageType, "reply type lost")
                }
                if let action = reply.leaseAction { leases.apply(action, now: now) }
            case .record(let action):
                leases.apply(action, now: now)
            case .ignore(let reason):
                _ = reason.description
            }
        }
    }
    if leases.held.count > 64 { leases = FuzzLeases() }
    return 0
}
