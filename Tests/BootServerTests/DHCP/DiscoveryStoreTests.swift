import BootProtocols
@testable import BootServer
import Foundation
import ImageBuildKit
import Testing

/// `DiscoveryStore` without sockets: the slot order, one binding per MAC, a pattern that runs out,
/// and what is on disk once the writer says it is.
@Suite("Discovery store")
struct DiscoveryStoreTests {
    static let nodes = """
        network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
        groups: {compute: {}}
        discover: {group: compute, hostname: "node{n:02}", addresses: 10.77.0.50-10.77.0.51}
        nodes:
          - {mac: "52:54:00:77:0f:01", hostname: node01, ip: 10.77.0.20}

        """

    @Test("bind: slots in order, a MAC is bound once, a full pattern is a clear decision; durable when whenDurable says so")
    func slotsRunOut() async throws {
        let directory = try DHCPTemporaryDirectory("discovery-slots")
        defer { directory.cleanup() }
        let inventory = try InventoryLoader.parse(Self.nodes, file: "nodes.yaml")
        let store = try DiscoveryStore(directory: directory.path + "/discovery", logger: dhcpTestLogger("discovery-slots"))
        defer { store.close() }
        func bind(_ n: Int) -> DiscoveryStore.BindOutcome {
            let mac = MACAddress(rawValue: 0x5254_0099_0f00 | UInt64(n))
            _ = store.observe(mac, dhcpDiscover(mac), interface: nil, at: 100)
            return store.bind(mac, in: inventory, baseGeneration: 1, at: 100)
        }
        guard case .bound(let first) = bind(1) else { Issue.record("not bound"); return }
        #expect(first.hostname == "node02" && first.ip == IPv4Address(10, 77, 0, 51), "node01 is listed: slot 0 is taken by its name")
        #expect(bind(1) == .alreadyBound(first))
        guard case .noFreeSlot(let summary) = bind(2) else { Issue.record("a third machine was bound"); return }
        #expect(summary == "discover: node{n:02} in 10.77.0.50-10.77.0.51 (2 slots, nodes.yaml:3:11)", "\(summary)")
        #expect(store.counters.noFreeSlot == 1)

        // Durable: the journal and the sightings hold both machines once the writer says so.
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in store.whenDurable { _ in continuation.resume() } }
        let journal = try NodeBindingJournal.read(path: store.bindingsPath)
        #expect(journal.bindings.map(\.hostname) == ["node02"] && journal.bindings.first?.mac == first.mac)
        let seen = try DiscoveryStore.readMachines(path: store.machinesPath)
        #expect(Set(seen.map(\.mac)) == ["52:54:00:99:0f:01", "52:54:00:99:0f:02"], "\(seen)")
        #expect(seen.first { $0.mac == "52:54:00:99:0f:01" }?.boundAs == "node02")
    }
}

extension DiscoveryStoreTests {
    @Test("a sightings line is the JSON JSONEncoder would write (sorted keys), and reads back the same, quotes and all")
    func sightingLine() throws {
        var message = dhcpDiscover(MACAddress("52:54:00:99:0f:09")!, vendorClass: "PXE \"x\" \\ y", arch: .x64UEFI)
        message.giaddr = IPv4Address(10, 9, 0, 1)
        message.options.setRaw(.relayAgentInformation, DHCPRelayAgentInformation(circuitID: Array("Gi1/0/7".utf8), remoteID: [0, 1]).encoded)
        var machine = DiscoveredMachine(mac: MACAddress("52:54:00:99:0f:09")!, message: message, interface: "eth1", at: 1_700_000_000)
        machine.boundAs = "node07"
        let line = try DiscoveryStore.lines([machine])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        #expect(String(decoding: line, as: UTF8.self) == String(decoding: try encoder.encode(machine), as: UTF8.self) + "\n")
        let back = try JSONDecoder().decode(DiscoveredMachine.self, from: Data(line.dropLast()))
        #expect(back.vendorClass == "PXE \"x\" \\ y" && back.circuitID == "Gi1/0/7" && back.remoteID == "0x0001" && back.boundAs == "node07")
        #expect(back.architecture == machine.architecture && back.firstSeen == 1_700_000_000 && back.relay == "10.9.0.1")
    }
}
