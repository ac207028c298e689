import BootProtocols
import BootServer
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import ImageBuildKit
import Logging
import NIOCore
import TestSupport
import Testing

/// Discovery with real clients: udhcpc in a namespace the test creates, against the DHCP server bound
/// to the test's veth end; a relayed request crafted with the project's own DHCP codec, sent on loopback.
@Suite("DHCP discovery: unknown machines recorded and bound", .serialized)
struct DiscoveryTests {
    struct Lab {
        let network: NamespaceLab
        let clientNamespace: String
        let hostLink: String
        let octet: Int
        let nodesPath: String
        var state: String { network.directory + "/state" }
        func ip(_ last: Int) -> String { "10.213.\(octet).\(last)" }
    }

    static let strangerA = "52:54:00:99:0d:01", strangerB = "52:54:00:99:0d:02"

    func nodesYAML(_ octet: Int, discover: Bool, listA: Bool = false) -> String {
        var text = dhcpInventoryYAML(server: "10.213.\(octet).1", subnet: "10.213.\(octet).0/24",
                                     pool: "10.213.\(octet).100-10.213.\(octet).150", leaseTime: 900,
                                     nodes: [("52:54:00:77:0d:01", "known1", "10.213.\(octet).11")]
                                         + (listA ? [(Self.strangerA, "special", "10.213.\(octet).60")] : []))
        text += "groups:\n  compute: {append: quiet}\n"
        if discover { text += "discover:\n  group: compute\n  hostname: \"node{n:03}\"\n  addresses: 10.213.\(octet).50-10.213.\(octet).53\n" }
        return text
    }

    /// A running server (inventory with the bindings journal, discovery, DHCP) for `body`; stopped after.
    func withServer<T>(_ lab: Lab, _ body: (InventoryStore, DiscoveryStore, DHCPServer, DHCPBox<DHCPEvent>) async throws -> T) async throws -> T {
        let logger = dhcpTestLogger("discovery")
        let inventory = try InventoryStore(path: lab.nodesPath, bindingsPath: NodeBindingJournal.path(inStateDirectory: lab.state),
                                           pollInterval: .milliseconds(200), logger: logger)
        let inventoryTask = Task { try await inventory.run() }
        defer { inventoryTask.cancel() }
        let discovery = try DiscoveryStore(directory: NodeBindingJournal.directory(inStateDirectory: lab.state), logger: logger) {
            inventory.addBindings($0, journal: $1)
        }
        var configuration = DHCPServerConfiguration(stateDirectory: lab.state + "/dhcp", interfaces: [lab.hostLink])
        configuration.rateLimitBurst = 1000
        let events = DHCPBox<DHCPEvent>()
        let server = DHCPServer(configuration: configuration, inventory: inventory, logger: logger, discovery: discovery,
                                observer: { events.append($0) })
        return try await serving(server) { _ in try await body(inventory, discovery, server, events) }
    }

    func withLab(discover: Bool, _ body: (Lab) async throws -> Void) async throws {
        try await DHCPLab.with { network in
            let octet = dhcpTestSubnetOctet()
            let client = try await network.addNamespace("c")
            let host = try await network.addHostVeth("s", to: client, peerName: "cl0", hostAddress: "10.213.\(octet).1/24")
            let lab = Lab(network: network, clientNamespace: client, hostLink: host, octet: octet, nodesPath: network.directory + "/nodes.yaml")
            try nodesYAML(octet, discover: discover).write(toFile: lab.nodesPath, atomically: true, encoding: .utf8)
            try await body(lab)
        }
    }

    /// udhcpc once as `mac`, saying it is a PXE client of architecture 7; the `bound` line if any.
    func udhcpc(_ lab: Lab, mac: String, tries: Int = 3) async throws -> String? {
        try await lab.network.setMAC(lab.clientNamespace, "cl0", mac)
        _ = try? await lab.network.exec(lab.clientNamespace, ["ip", "addr", "flush", "dev", "cl0"])
        let hook = lab.network.directory + "/udhcpc-hook.sh"
        try "#!/bin/sh\necho \"EVENT $1 ip=$ip hostname=$hostname\"\n".write(toFile: hook, atomically: true, encoding: .utf8)
        chmod(hook, 0o755)
        let result = try await lab.network.exec(lab.clientNamespace, [
            "udhcpc", "-i", "cl0", "-f", "-q", "-n", "-t", "\(tries)", "-T", "1", "-A", "1", "-s", hook,
            "-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007",
        ], timeout: 30)
        return result.stdout.split(separator: "\n").first { $0.hasPrefix("EVENT bound") }.map(String.init)
    }

    func discovers(_ events: DHCPBox<DHCPEvent>, _ mac: String) -> Int {
        events.all.filter { $0.mac?.description == mac && $0.messageType == .discover }.count
    }

    @Test("an unknown udhcpc is recorded (vendor class, architecture) before it is answered from the pool",
          .enabled(if: DHCPLab.clientsUnavailable == nil, "needs network namespaces and udhcpc: \(DHCPLab.clientsUnavailable ?? "")"))
    func recorded() async throws {
        try await withLab(discover: false) { lab in
            try await withServer(lab) { _, discovery, _, events in
                #expect(try await udhcpc(lab, mac: "52:54:00:77:0d:01")?.contains("ip=\(lab.ip(11)) ") == true)
                #expect(discovers(events, "52:54:00:77:0d:01") == 1, "control: a listed node needs one DISCOVER")
                let bound = try #require(try await udhcpc(lab, mac: Self.strangerA), "no pool lease")
                #expect(bound.contains("ip=10.213.\(lab.octet).1"), "a pool address: \(bound)")
                #expect(discovers(events, Self.strangerA) == 1, "the held first DISCOVER was answered: \(events.all)")
                let machine = try #require(discovery.discovered().first { $0.mac == Self.strangerA })
                #expect(machine.vendorClass == "PXEClient:Arch:00007:UNDI:003016")
                #expect(machine.architecture == "x64 UEFI (7)", "\(machine)")
                #expect(machine.requests >= 2 && machine.lastMessage == "REQUEST" && machine.boundAs == nil, "\(machine)")
                #expect(machine.interface == lab.hostLink)
                #expect(!discovery.discovered().contains { $0.mac == "52:54:00:77:0d:01" }, "listed nodes are not 'discovered'")
                // The first sighting was on disk before the OFFER left: the file has it now, without a flush.
                let onDisk = try DiscoveryStore.readMachines(path: discovery.machinesPath)
                #expect(onDisk.contains { $0.mac == Self.strangerA && $0.vendorClass == machine.vendorClass }, "\(onDisk)")
                #expect(discovery.counters.firstSightings == 1)
            }
        }
    }

    @Test("with discover: the first DISCOVER binds the next slot and is answered with its address and hostname; a restart keeps it; nodes.yaml wins",
          .enabled(if: DHCPLab.clientsUnavailable == nil, "needs network namespaces and udhcpc: \(DHCPLab.clientsUnavailable ?? "")"))
    func bound() async throws {
        try await withLab(discover: true) { lab in
            try await withServer(lab) { inventory, discovery, _, events in
                let a = try #require(try await udhcpc(lab, mac: Self.strangerA), "A not answered")
                #expect(a == "EVENT bound ip=\(lab.ip(50)) hostname=node001", "\(a)")
                #expect(discovers(events, Self.strangerA) == 1, "the DISCOVER that bound it was answered as the node: \(events.all)")
                let b = try #require(try await udhcpc(lab, mac: Self.strangerB), "B not answered")
                #expect(b == "EVENT bound ip=\(lab.ip(51)) hostname=node002", "\(b)")
                // The live inventory has both, as nodes of the group.
                let node = try #require(inventory.current.inventory.node(mac: MACAddress(Self.strangerA)!))
                #expect(node.hostname == "node001" && node.group == "compute")
                #expect(inventory.current.inventory.resolved(node).cmdline == "quiet")
                #expect(discovery.discovered().first { $0.mac == Self.strangerA }?.boundAs == "node001")
            }
            // The journal: two lines, fsynced before the OFFERs left.
            let journal = try NodeBindingJournal.read(path: NodeBindingJournal.path(inStateDirectory: lab.state))
            #expect(journal.bindings.map(\.hostname) == ["node001", "node002"], "\(journal)")
            #expect(journal.bindings.allSatisfy { $0.origin == .discover && $0.group == "compute" })

            // A restart: new stores on the same state directory.
            try await withServer(lab) { inventory, discovery, _, _ in
                #expect(inventory.current.inventory.node(mac: MACAddress(Self.strangerB)!)?.ip?.description == lab.ip(51))
                let again = try #require(try await udhcpc(lab, mac: Self.strangerA), "A not answered after the restart")
                #expect(again == "EVENT bound ip=\(lab.ip(50)) hostname=node001", "\(again)")
                let machine = try #require(discovery.discovered().first { $0.mac == Self.strangerA })
                #expect(machine.firstSeen <= machine.lastSeen && machine.boundAs == "node001")
                #expect(discovery.counters.firstSightings == 0, "the sighting survived the restart")

                // nodes.yaml now lists A: nodes.yaml wins, the binding is left out (and logged).
                let generation = inventory.current.generation
                try nodesYAML(lab.octet, discover: true, listA: true).write(toFile: lab.nodesPath, atomically: true, encoding: .utf8)
                let clock = ContinuousClock(), start = clock.now
                while inventory.current.generation == generation && clock.now - start < .seconds(5) { try await Task.sleep(for: .milliseconds(50)) }
                let listed = try #require(try await udhcpc(lab, mac: Self.strangerA), "A not answered once listed")
                #expect(listed == "EVENT bound ip=\(lab.ip(60)) hostname=special", "\(listed)")
            }
            let journalAfter = try NodeBindingJournal.read(path: NodeBindingJournal.path(inStateDirectory: lab.state))
            #expect(journalAfter.bindings.count == 2, "no machine was bound twice: \(journalAfter)")
            let listing = DiscoveryListing(machines: try DiscoveryStore.readMachines(path: lab.state + "/discovery/discovered"),
                                           bindings: journalAfter.bindings,
                                           inventory: try InventoryLoader.load(path: lab.nodesPath))
            let first = try #require(listing.bindings.first)
            #expect(!first.inForce && first.note?.contains("nodes.yaml lists this MAC as special") == true, "\(first)")
        }
    }

    @Test("a relayed request: giaddr and option 82's circuit id and remote id are recorded (crafted packet, loopback)")
    func relayed() async throws {
        let directory = try DHCPTemporaryDirectory("discovery-relay")
        defer { directory.cleanup() }
        let dhcpPort = try PortHolder(.udp, host: "127.0.0.1").port  // a free port: the holder closes at once
        try """
            network:
              server: 127.0.0.1
              subnet: 127.0.0.0/8
              pool: 127.0.0.100-127.0.0.150
            defaults: {image: compute}

            """.write(toFile: directory.path + "/nodes.yaml", atomically: true, encoding: .utf8)
        let logger = dhcpTestLogger("discovery-relay")
        let inventory = try InventoryStore(path: directory.path + "/nodes.yaml", pollInterval: .zero, logger: logger)
        let discovery = try DiscoveryStore(directory: directory.path + "/discovery", logger: logger)
        var configuration = DHCPServerConfiguration(stateDirectory: directory.path + "/dhcp", port: dhcpPort)
        configuration.listenAddress = "127.0.0.1"
        let server = DHCPServer(configuration: configuration, inventory: inventory, logger: logger, discovery: discovery)
        let mac = MACAddress("52:54:00:99:0d:82")!
        try await serving(server) { _ in
            var message = dhcpDiscover(mac, vendorClass: "PXEClient:Arch:00011:UNDI:003016", arch: .arm64UEFI)
            message.giaddr = IPv4Address(127, 0, 0, 2)
            message.hops = 1
            let agent = DHCPRelayAgentInformation(circuitID: Array("Gi1/0/7".utf8), remoteID: [0x00, 0x1b, 0x21, 0x0a, 0x01, 0x07])
            message.options.setRaw(.relayAgentInformation, agent.encoded)
            var buffer = ByteBufferAllocator().buffer(capacity: 600)
            try message.encode(into: &buffer)
            try PortHolder.send(Array(buffer.readableBytesView), toLoopbackPort: dhcpPort)
            let clock = ContinuousClock(), start = clock.now
            while discovery.discovered().isEmpty && clock.now - start < .seconds(5) { try await Task.sleep(for: .milliseconds(20)) }
        }
        let machine = try #require(try DiscoveryStore.readMachines(path: directory.path + "/discovery/discovered").first)
        #expect(machine.mac == mac.description)
        #expect(machine.relay == "127.0.0.2")
        #expect(machine.circuitID == "Gi1/0/7")
        #expect(machine.remoteID == "0x001b210a0107")
        #expect(machine.architecture == "ARM 64-bit UEFI (11)" && machine.vendorClass == "PXEClient:Arch:00011:UNDI:003016", "\(machine)")
        let listing = DiscoveryListing(machines: [machine], bindings: [], inventory: nil)
        #expect(listing.machines.first?.circuitID == "Gi1/0/7")
    }

    @Test("option 82 parses circuit and remote id, skips others, refuses sub-options that overrun")
    func relayAgentOption() {
        let data: [UInt8] = [1, 3, 0x61, 0x62, 0x63, 9, 2, 0xFF, 0xFF, 2, 2, 0x00, 0x01]
        let agent = DHCPRelayAgentInformation(data: data[...])
        #expect(agent?.circuitID == [0x61, 0x62, 0x63] && agent?.remoteID == [0x00, 0x01])
        #expect(DHCPRelayAgentInformation(data: [1, 5, 0x61][...]) == nil)
        #expect(DHCPRelayAgentInformation.printable(Array("eth0/1".utf8)) == "eth0/1")
        #expect(DHCPRelayAgentInformation.printable([0x00, 0xff]) == "0x00ff")
    }
}

