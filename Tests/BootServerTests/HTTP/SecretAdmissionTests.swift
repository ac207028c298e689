import BootProtocols
@testable import BootServer
import Foundation
import ImageBuildKit
import Testing

/// Who gets a node's secrets: the rule's order and each refusal, without a socket (SecretsSecurityTests
/// asks the real server the same over the wire).
@Suite struct SecretAdmissionTests {
    let mac = MACAddress(0x52, 0x54, 0, 0x77, 0, 1)
    let fixed = IPv4Address(10, 77, 0, 11)
    let start = Date(timeIntervalSince1970: 1_800_000_000)

    var node: Inventory.Node {
        let inventory = try! InventoryLoader.parse("""
            network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
            defaults: {image: minimal}
            nodes:
              - {mac: "52:54:00:77:00:01", hostname: n1, ip: 10.77.0.11, smbios: {asset_tag: RACK4-U12}}
            """, file: "nodes.yaml")
        return inventory.nodes[0]
    }

    func rule(window: TimeInterval = 300, perBoot: Int = 1) -> SecretAdmission {
        let mac = self.mac, fixed = self.fixed
        return SecretAdmission(addressesOf: { $0 == mac ? [fixed] : [] }, window: window, perBoot: perBoot)
    }

    /// A node that booted at `start` and got its DHCP acknowledgement `ackAfter` seconds later.
    func booted(ackAfter: TimeInterval) -> NodeBootState {
        var state = NodeBootState(mac: mac)
        state.apply(BootEvent(time: start, mac: mac, boot: 1, observation: .dhcp(.discover, address: nil, detail: nil)))
        state.apply(BootEvent(time: start + ackAfter, mac: mac, boot: 1, observation: .dhcp(.ack, address: fixed, detail: nil)))
        return state
    }

    func decide(_ rule: SecretAdmission, remote: IPv4Address? = nil, port: Int? = 700, state: NodeBootState? = nil,
                delivered: Int = 0, tag: String? = "RACK4-U12", at: TimeInterval = 60) -> SecretAdmission.Reason? {
        rule.decide(mac: mac, node: node, hasSecrets: true, remote: remote ?? fixed, port: port, state: state ?? booted(ackAfter: 30),
                    delivered: delivered, smbios: (nil, nil, tag), now: start + at)?.reason
    }

    @Test func theNodeItselfInItsWindowGetsThem() {
        #expect(decide(rule()) == nil)
    }

    @Test func eachCheckRefusesWithItsReason() {
        #expect(rule().decide(mac: mac, node: nil, hasSecrets: false, remote: fixed, port: 700, state: nil, delivered: 0,
                              smbios: (nil, nil, nil), now: start)?.reason == .notANode)
        #expect(decide(rule(), remote: IPv4Address(10, 77, 0, 12)) == .address)
        #expect(decide(rule(), port: 40_000) == .port)
        #expect(decide(rule(), port: 1024) == .port)
        #expect(decide(rule(), port: nil) == .port)
        #expect(decide(rule(), delivered: 1) == .fetched)
        #expect(decide(rule(perBoot: 2), delivered: 1) == nil)
        #expect(decide(rule(), tag: "RACK4-U13") == .smbios)
        #expect(decide(rule(), tag: nil) == .smbios)
        // No boot seen since the server started: no window.
        #expect(rule().decide(mac: mac, node: node, hasSecrets: true, remote: fixed, port: 700, state: nil, delivered: 0,
                              smbios: (nil, nil, "RACK4-U12"), now: start)?.reason == .window)
    }

    @Test func theWindowRunsFromTheLastAcknowledgement() {
        // The firmware's DHCP at 0 s, stage 1's at 200 s: at 450 s the window (300 s) is still open.
        var state = booted(ackAfter: 30)
        state.apply(BootEvent(time: start + 200, mac: mac, boot: 1, observation: .dhcp(.ack, address: fixed, detail: nil)))
        #expect(decide(rule(), state: state, at: 450) == nil)
        #expect(decide(rule(), state: state, at: 501) == .window)
        #expect(decide(rule(window: 600), state: state, at: 501) == nil)
    }

    @Test func theLedgerCountsPerBoot() {
        let ledger = SecretLedger()
        #expect(ledger.take(mac, boot: 1, limit: 1))
        #expect(!ledger.take(mac, boot: 1, limit: 1))
        #expect(ledger.count(mac, boot: 1) == 1 && ledger.count(mac, boot: 2) == 0)
        #expect(ledger.take(mac, boot: 2, limit: 1), "a new boot opens again")
    }
}
