import Foundation
import TestSupport
import Testing

extension EndToEnd {
    /// A machine nodes.yaml does not list boots, is bound by `discover:` to the first free slot, comes up
    /// with that identity (the slot's address and hostname, its own host keys from the secrets
    /// route), and after the server is killed and restarted boots again as the same node.
    @Suite("Discovery: an unknown machine is bound and boots as its slot", .serialized,
           .enabled(if: QEMU.available && BootLab.unavailableReason == nil,
                    "needs qemu-system-x86_64, /dev/net/tun and network namespaces: \(BootLab.unavailableReason ?? "qemu missing")"))
    struct DiscoveryBootTests {
        static let mac = "52:54:00:77:0d:01"
        static let nodes = """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              pool: 10.77.0.100-10.77.0.110
              http_port: 8080
            defaults:
              image: minimal
              loader: ipxe
            groups:
              compute: {append: "imagebuild.test=compute"}
            discover:
              group: compute
              hostname: "disc{n:02}"
              addresses: 10.77.0.50-10.77.0.59
            nodes:
              - {mac: "52:54:00:77:0d:99", hostname: disc01, ip: 10.77.0.50}
            """

        @Test("bound to the first free slot (disc01 and .50 are taken), up with its address, host keys and group; the same after a server crash")
        func unknownMachineBoots() async throws { try await Harness.blocking { try Self().bootOnThread() } }
        func bootOnThread() throws {
            let site = try PXEBootTests.Site(nodes: Self.nodes)
            defer { site.close() }
            let started = Date()
            let vm = try site.lab.startVM(name: "unknown", mac: Self.mac)
            let up = vm.wait(for: "NODE-UP \(Self.mac)", timeout: 300)
            print("discovery: unknown machine NODE-UP after \(Int(Date().timeIntervalSince(started))) s (\(QEMU.accelerator))")
            #expect(up, "the bound machine did not come up:\n\(vm.log.suffix(3000))\n--- server:\n\(site.serve.log.suffix(3000))")
            guard up else { return }
            // disc01 and 10.77.0.50 belong to a listed node: the binding is the next slot.
            let timeline = try site.timelineWhenUp(Self.mac, bootloader: false)
            #expect(timeline.stage == "up" && timeline.ip == "10.77.0.51", "\(timeline.ip ?? "no address")\n\(timeline.text)")
            #expect(timeline.events.contains { $0.summary.contains("boot/v1/secrets") }, "no secrets (host keys) for the bound node:\n\(timeline.text)")
            #expect(site.serve.log.contains("bound \(Self.mac) as disc02 10.77.0.51"), "\(site.serve.log.suffix(2000))")
            let bindings = (try? String(contentsOfFile: site.lab.directory + "/state/discovery/bindings", encoding: .utf8)) ?? ""
            #expect(bindings.contains(Self.mac) && bindings.contains("disc02") && bindings.contains("10.77.0.51"), "bindings:\n\(bindings)")
            #expect(vm.log.contains("imagebuild.test=compute"), "the group's command line is not on the node's:\n\(vm.log.suffix(2000))")

            // A crash (no graceful stop) and a new server: the machine's next boot is the same node.
            try site.crashAndRestart()
            try vm.powerCycle()
            let again = vm.wait(for: "NODE-UP \(Self.mac)", timeout: 300)
            #expect(again, "the bound machine did not come up after the restart:\n\(vm.currentLog.suffix(3000))")
            let second = try site.timelineWhenUp(Self.mac, bootloader: false)
            #expect(second.ip == "10.77.0.51", "after the restart: \(second.ip ?? "no address")\n\(second.text)")
            #expect(site.serveLogs.components(separatedBy: "bound \(Self.mac) as").count == 2, "bound more than once:\n\(site.serveLogs.suffix(2000))")
        }
    }
}
