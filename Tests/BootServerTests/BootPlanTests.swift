import BootProtocols
@testable import BootServer
import Foundation
import ImageBuildKit
import Testing

/// One table, every consumer of the boot plan: for each machine, what the plan answers is what the
/// bootscript endpoint sends, what pxelinux finds walking the published files, and what DHCP hands each
/// firmware (in the style of u-root's `pxe_test.go`: inputs and expected answers side by side).
@Suite("Boot plan: one answer for publish, the bootscript endpoint, pxelinux and DHCP")
struct BootPlanTests {
    static let yaml = """
        network:
          server: 10.77.0.1
          subnet: 10.77.0.0/24
          pool: 10.77.0.200-10.77.0.250
          http_port: 8080
          bios_loader: lpxelinux.0
        defaults:
          image: compute
        groups:
          gpu: {image: gpu, loader: ipxe}
          legacy: {loader: pxelinux, append: console=ttyS0}
        ranges:
          - {cidr: 10.77.0.0/24, image: wide}
          - {cidr: 10.77.0.96/28, image: rescue}
        nodes:
          - {mac: 52:54:00:77:00:01, hostname: n1, ip: 10.77.0.11}
          - {mac: 52:54:00:77:00:02, hostname: n2, group: gpu}
          - {mac: 52:54:00:77:00:03, hostname: n3, group: legacy, ip: 10.77.0.13}
          - {mac: 52:54:00:77:00:04, hostname: n4, ip: 10.77.0.99}
        """

    static func image(_ name: String) -> PublishedImage {
        let json = #"{"name": "\#(name)", "digest": "\#(name)0123456789", "kernelVersion": "6.1.0", "cmdline": "quiet imagebuild.sha256=00", "imageFile": "image.tar.gz"}"#
        return try! JSONDecoder().decode(PublishedImage.self, from: Data(json.utf8))
    }

    static let images = Dictionary(uniqueKeysWithValues: ["compute", "gpu", "wide", "rescue"].map { ($0, image($0)) })

    struct Case: Sendable, CustomTestStringConvertible {
        var mac: String
        var ip: String?
        /// The image the plan boots, nil: the machine waits.
        var image: String?
        var why: String
        var testDescription: String { "\(mac) \(ip ?? "no address") -> \(image ?? "wait") (\(why))" }
    }

    @Test("who boots what", arguments: [
        Case(mac: "52:54:00:77:00:01", ip: "10.77.0.11", image: "compute", why: "registered as n1"),
        Case(mac: "52:54:00:77:00:02", ip: nil, image: "gpu", why: "registered as n2"),
        Case(mac: "52:54:00:77:00:03", ip: "10.77.0.13", image: "compute", why: "registered as n3"),
        // Registered beats a range that holds the node's address.
        Case(mac: "52:54:00:77:00:04", ip: "10.77.0.99", image: "compute", why: "registered as n4"),
        // Unregistered: the most specific range holding the address, in either order in the file.
        Case(mac: "02:00:00:00:00:99", ip: "10.77.0.100", image: "rescue", why: "unregistered, in range 10.77.0.96/28"),
        Case(mac: "02:00:00:00:00:99", ip: "10.77.0.20", image: "wide", why: "unregistered, in range 10.77.0.0/24"),
        // Unregistered, no address known (or outside every range): the default image.
        Case(mac: "02:00:00:00:00:99", ip: nil, image: "compute", why: "unregistered, default image"),
        Case(mac: "02:00:00:00:00:99", ip: "10.78.0.5", image: "compute", why: "unregistered, default image"),
    ])
    func table(_ expected: Case) throws {
        let inventory = try InventoryLoader.parse(Self.yaml, file: "nodes.yaml")
        let plan = BootPlan(inventory: inventory, images: Self.images)
        let mac = try #require(MACAddress(expected.mac))
        let ip = expected.ip.flatMap(IPv4Address.init)

        // 1. The plan.
        let answer = plan.answer(mac: mac, ip: ip)
        guard case .boot(let target, let why) = answer else { Issue.record("expected a boot, got \(answer)"); return }
        #expect(target.image.name == expected.image)
        #expect(why == expected.why)

        // 2. The bootscript endpoint sends a script for that image, saying why.
        let index = plan.files(generation: 1).index
        let decision = BootScriptDecision.decide(mac: mac, clientIP: ip, retry: 0, inventory: inventory, index: index, policy: .defaultImage)
        #expect(decision.image == expected.image)
        #expect(decision.detail == expected.why)
        #expect(decision.script == plan.renderer.ipxeScript(target))

        // 3. pxelinux, walking the published names, finds a file that boots the same image.
        let files = Dictionary(plan.files(generation: 1).files.map { ($0.path, $0.text) }, uniquingKeysWith: { $1 })
        let found = try #require(pxelinuxLookupOrder(mac: mac, ip: ip).first { files[$0] != nil })
        #expect(files[found] == plan.renderer.pxelinuxConfig(target), "pxelinux finds \(found)")
    }

    @Test("without a default image an unregistered machine outside every range waits, everywhere")
    func waits() throws {
        let inventory = try InventoryLoader.parse(
            Self.yaml.replacingOccurrences(of: "defaults:\n  image: compute\n", with: "defaults:\n  append: quiet\n")
                .replacingOccurrences(of: "hostname: n1,", with: "hostname: n1, image: compute,")
                .replacingOccurrences(of: "hostname: n3,", with: "hostname: n3, image: compute,")
                .replacingOccurrences(of: "hostname: n4,", with: "hostname: n4, image: compute,"),
            file: "nodes.yaml")
        let plan = BootPlan(inventory: inventory, images: Self.images)
        let stranger = MACAddress("02:00:00:00:00:99")!
        #expect(plan.answer(mac: stranger, ip: nil) == .wait(reason: "not registered in nodes.yaml"))
        #expect(plan.answer(mac: stranger, ip: IPv4Address("10.77.0.100")).bootedImage == "rescue")
        let (files, index) = plan.files(generation: 1)
        let decision = BootScriptDecision.decide(mac: stranger, clientIP: nil, retry: 0, inventory: inventory, index: index, policy: .defaultImage)
        #expect(decision.image == nil)
        let byPath = Dictionary(files.map { ($0.path, $0.text) }, uniquingKeysWith: { $1 })
        #expect(byPath["pxelinux.cfg/default"] == plan.renderer.pxelinuxUnregistered())
        #expect(byPath["ipxe/default.ipxe"] == plan.renderer.ipxeUnregistered())
        // The server's `unknown_macs: wait` policy: even a range member waits.
        let policyWait = BootScriptDecision.decide(mac: stranger, clientIP: IPv4Address("10.77.0.100"), retry: 0, inventory: inventory,
                                                   index: index, policy: .wait)
        #expect(policyWait.image == nil)
    }

    @Test("an image the inventory names but nobody published: the node waits, saying so")
    func unpublished() throws {
        let inventory = try InventoryLoader.parse(Self.yaml, file: "nodes.yaml")
        let plan = BootPlan(inventory: inventory, images: Self.images.filter { $0.key != "gpu" })
        #expect(plan.answer(mac: MACAddress("52:54:00:77:00:02")!, ip: nil)
                == .wait(reason: "image 'gpu' for n2 (52:54:00:77:00:02) is not published (run imagebuild publish)"))
        #expect(!plan.files(generation: 1).files.contains { $0.path.contains("52-54-00-77-00-02") })
    }

    /// Every firmware, every `loader:` and `bios_loader`: DHCP hands out what the plan says.
    @Test("DHCP boot files per architecture and loader", arguments: ["lpxelinux.0", "pxelinux.0", "undionly.kpxe"])
    func dhcpBootFiles(biosLoader: String) throws {
        let inventory = try InventoryLoader.parse(
            Self.yaml.replacingOccurrences(of: "bios_loader: lpxelinux.0", with: "bios_loader: \(biosLoader)"), file: "nodes.yaml")
        let plan = BootPlan(inventory: inventory)
        let policy = DHCPPolicy(inventory: inventory, configuration: DHCPServerConfiguration(stateDirectory: "/nonexistent"))
        let dhcpInventory = DHCPServerInventory(inventory)
        struct NoLeases: DHCPLeaseView {
            func holder(of address: IPv4Address, at now: DHCPTimestamp) -> MACAddress? { nil }
            func address(heldBy client: MACAddress, at now: DHCPTimestamp) -> IPv4Address? { nil }
            func isDeclined(_ address: IPv4Address, at now: DHCPTimestamp) -> Bool { false }
        }
        func bootFile(_ mac: String, _ arch: DHCPClientArchitecture, ipxe: Bool = false) -> String? {
            guard let wire = MACAddress(mac) else { Issue.record("\(mac) is not a MAC"); return nil }
            let vendor = "PXEClient:Arch:\(String(format: "%05d", arch.rawValue)):UNDI:003016"
            let decision = policy.decide(DHCPReceived(message: dhcpDiscover(wire, vendorClass: vendor, arch: arch, ipxe: ipxe),
                                                      interfaceAddress: IPv4Address(10, 77, 0, 1)),
                                         now: dhcpTime(1000), inventory: dhcpInventory, leases: NoLeases())
            guard case .reply(let reply) = decision else { Issue.record("no reply for \(mac) \(arch): \(decision)"); return nil }
            return reply.message.options.bootfileName
        }
        let script = { (mac: String) in "http://10.77.0.1:8080\(BootPlan.bootScriptPath)?mac=\(mac)" }
        for mac in ["52:54:00:77:00:01", "52:54:00:77:00:02", "52:54:00:77:00:03", "02:00:00:00:00:99"] {
            let bios = plan.biosBoot(for: inventory.node(mac: MACAddress(mac)!))
            #expect(bootFile(mac, .x86BIOS) == bios.firmwareFile, "\(mac) BIOS firmware")
            #expect(bootFile(mac, .x86BIOS, ipxe: true) == (bios.ipxeROMFile ?? script(mac)), "\(mac) BIOS iPXE ROM")
            #expect(bootFile(mac, .x64UEFI) == "ipxe/ipxe.efi", "\(mac) x64 UEFI")
            #expect(bootFile(mac, .x64UEFI, ipxe: true) == script(mac), "\(mac) x64 UEFI iPXE")
            #expect(bootFile(mac, .arm64UEFI) == BootPlan.arm64GRUB, "\(mac) arm64 UEFI")
            #expect(bootFile(mac, .arm64UEFIHTTP) == BootPlan.arm64HTTPGRUB, "\(mac) arm64 UEFI HTTP Boot (by URL with an HTTPClient vendor class)")
        }
        // What each loader setting means, spelled out once here.
        let pxelinux = biosLoader == "undionly.kpxe" ? "lpxelinux.0" : biosLoader
        let unset = biosLoader == "undionly.kpxe" ? BootPlan.undionly : biosLoader
        #expect(plan.biosBoot(for: inventory.node(mac: MACAddress("52:54:00:77:00:01")!)) == .init(loader: nil, firmwareFile: unset, ipxeROMFile: nil))
        #expect(plan.biosBoot(for: inventory.node(mac: MACAddress("52:54:00:77:00:02")!)) == .init(loader: .ipxe, firmwareFile: BootPlan.undionly, ipxeROMFile: nil))
        #expect(plan.biosBoot(for: inventory.node(mac: MACAddress("52:54:00:77:00:03")!)) == .init(loader: .pxelinux, firmwareFile: pxelinux, ipxeROMFile: pxelinux))
    }

    /// `loader: grub` (the Secure Boot chain): the plan decides, DHCP hands x86-64 UEFI PXE machines the
    /// shim (firmware and iPXE ROMs alike), HTTP Boot and BIOS machines keep what they had, and publish
    /// writes GRUB's files for exactly the machines that boot through it.
    @Test("loader grub: shim for x86-64 UEFI PXE, GRUB's files for its machines only")
    func grubLoader() throws {
        let yaml = """
            network: {server: 10.77.0.1, subnet: 10.77.0.0/24, pool: 10.77.0.110-10.77.0.113, http_port: 8080}
            defaults: {image: compute}
            groups:
              secure: {loader: grub}
            ranges:
              - {cidr: 10.77.0.96/28, image: rescue}
            nodes:
              - {mac: 52:54:00:77:00:01, hostname: n1, ip: 10.77.0.11, group: secure}
              - {mac: 52:54:00:77:00:02, hostname: n2, ip: 10.77.0.12}
              - {mac: 52:54:00:77:00:03, hostname: n3, group: secure, loader: ipxe}
            """
        let inventory = try InventoryLoader.parse(yaml, file: "nodes.yaml")
        let plan = BootPlan(inventory: inventory, images: Self.images)
        let policy = DHCPPolicy(inventory: inventory, configuration: DHCPServerConfiguration(stateDirectory: "/nonexistent"))
        let dhcpInventory = DHCPServerInventory(inventory)
        struct NoLeases: DHCPLeaseView {
            func holder(of address: IPv4Address, at now: DHCPTimestamp) -> MACAddress? { nil }
            func address(heldBy client: MACAddress, at now: DHCPTimestamp) -> IPv4Address? { nil }
            func isDeclined(_ address: IPv4Address, at now: DHCPTimestamp) -> Bool { false }
        }
        func bootFile(_ mac: String, _ arch: DHCPClientArchitecture, ipxe: Bool = false, http: Bool = false) -> String? {
            let vendor = "\(http ? "HTTPClient" : "PXEClient"):Arch:\(String(format: "%05d", arch.rawValue)):UNDI:003016"
            let decision = policy.decide(DHCPReceived(message: dhcpDiscover(MACAddress(mac)!, vendorClass: vendor, arch: arch, ipxe: ipxe),
                                                      interfaceAddress: IPv4Address(10, 77, 0, 1)),
                                         now: dhcpTime(1000), inventory: dhcpInventory, leases: NoLeases())
            guard case .reply(let reply) = decision else { Issue.record("no reply for \(mac) \(arch): \(decision)"); return nil }
            return reply.message.options.bootfileName
        }
        let n1 = "52:54:00:77:00:01"
        #expect(plan.uefiFile(for: inventory.node(mac: MACAddress(n1)!)) == BootPlan.shim)
        #expect(bootFile(n1, .x64UEFI) == "grub/shimx64.efi")
        #expect(bootFile(n1, .ebc) == "grub/shimx64.efi")
        #expect(bootFile(n1, .x64UEFI, ipxe: true) == "grub/shimx64.efi")
        #expect(bootFile(n1, .x64UEFIHTTP, http: true) == "http://10.77.0.1:8080/ipxe/ipxe.efi")
        #expect(bootFile(n1, .x86BIOS) == "lpxelinux.0")
        #expect(plan.biosBoot(for: inventory.node(mac: MACAddress(n1)!)) == .init(loader: nil, firmwareFile: "lpxelinux.0", ipxeROMFile: nil))
        // Not in the group, or overridden at the node, or not listed (defaults set no loader): iPXE.
        for mac in ["52:54:00:77:00:02", "52:54:00:77:00:03", "02:00:00:00:00:99"] {
            #expect(bootFile(mac, .x64UEFI) == "ipxe/ipxe.efi", "\(mac)")
        }

        let (files, index) = plan.files(generation: 1)
        let grubFiles = files.filter { $0.path.hasPrefix("grub/") }
        #expect(grubFiles.map(\.path) == ["grub/grub.cfg", "grub/grub.cfg-default", "grub/grub.cfg-01-52-54-00-77-00-01"])
        #expect(index.nodes.first { $0.hostname == "n1" }?.grub == ["grub/grub.cfg-01-52-54-00-77-00-01"])
        #expect(index.nodes.first { $0.hostname == "n2" }?.grub == nil)
        // DHCP hands out the shim as soon as nodes.yaml says so; GRUB's file waits for a publish: a drift.
        #expect(InventoryDrift(inventory: inventory, published: index).changed.isEmpty)
        let moved = try InventoryLoader.parse(yaml.replacingOccurrences(of: "ip: 10.77.0.12}", with: "ip: 10.77.0.12, loader: grub}"), file: "nodes.yaml")
        #expect(InventoryDrift(inventory: moved, published: index).changed == ["n2 (52:54:00:77:00:02): GRUB file missing (loader: grub)"])
        let config = try #require(grubFiles.last?.text)
        #expect(config.contains("linux /images/compute/compute0123456789/vmlinuz quiet imagebuild.sha256=00 "))
        #expect(config.contains(" BOOTIF=01-52-54-00-77-00-01; then"))
        #expect(config.contains("initrd /images/compute/compute0123456789/initramfs.img"))
        // The entry point walks the names in `grubLookupOrder`, after itself.
        let entry = grubFiles[0].text
        #expect(grubLookupOrder(mac: MACAddress(n1)!, ip: IPv4Address("10.77.0.11")!)
                == ["grub.cfg", "grub.cfg-01-52-54-00-77-00-01", "grub.cfg-10.77.0.11", "grub.cfg-default"])
        #expect(entry.contains(#"configfile "$prefix/grub.cfg-01-$m1-$m2-$m3-$m4-$m5-$m6""#))
        #expect(entry.contains(#"configfile "$prefix/grub.cfg-$net_default_ip""#))
        #expect(entry.contains(#"configfile "$prefix/grub.cfg-default""#))

        // With `defaults: {loader: grub}`, machines not listed get the shim; a range reaches them as one
        // file per pool address in it (GRUB cannot walk hex prefixes), the rest fall to the default.
        let everyone = try InventoryLoader.parse(yaml.replacingOccurrences(of: "defaults: {image: compute}", with: "defaults: {image: compute, loader: grub}"),
                                                 file: "nodes.yaml")
        let everyFile = BootPlan(inventory: everyone, images: Self.images).files(generation: 1).files.filter { $0.path.hasPrefix("grub/") }
        #expect(everyFile.map(\.path) == ["grub/grub.cfg", "grub/grub.cfg-default", "grub/grub.cfg-10.77.0.110", "grub/grub.cfg-10.77.0.111",
                                          "grub/grub.cfg-01-52-54-00-77-00-01", "grub/grub.cfg-01-52-54-00-77-00-02"])
        #expect(everyFile[2].text.contains("rescue"))
        #expect(everyFile[1].text.contains("compute") && everyFile[1].text.contains("BOOTIF=01-${net_default_mac}"))
        #expect(BootPlan(inventory: everyone).uefiFile(for: nil) == BootPlan.shim)
    }

    @Test("GRUB quoting: kernel parameters GRUB would parse are single-quoted")
    func grubQuoting() {
        #expect(BootRenderer.grubQuoted("console=ttyS0,115200") == "console=ttyS0,115200")
        #expect(BootRenderer.grubQuoted("a=$x") == "'a=$x'")
        #expect(BootRenderer.grubQuoted("it's") == #"'it'\''s'"#)
    }

    @Test("two ranges on one network are refused: they would write one pxelinux file")
    func duplicateRanges() throws {
        let yaml = Self.yaml.replacingOccurrences(of: "- {cidr: 10.77.0.96/28, image: rescue}",
                                                  with: "- {cidr: 10.77.0.96/28, image: rescue}\n  - {cidr: 10.77.0.96/28, image: gpu}")
        #expect(throws: ConfigError.self) { try InventoryLoader.parse(yaml, file: "nodes.yaml") }
        do { _ = try InventoryLoader.parse(yaml, file: "nodes.yaml") } catch {
            #expect("\(error)".contains("nodes.yaml:15:"), "\(error)")
            #expect("\(error)".contains("duplicate range 10.77.0.96/28"), "\(error)")
        }
    }
}

extension BootPlan.Answer {
    var bootedImage: String? {
        if case .boot(let target, _) = self { return target.image.name }
        return nil
    }
}
