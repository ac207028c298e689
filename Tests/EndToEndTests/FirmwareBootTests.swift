import Foundation
import TestSupport
import Testing

/// UEFI HTTP Boot and the Secure Boot chain, each with Debian's own OVMF booting one real machine from
/// `imagebuild serve` (its own DHCP, TFTP and HTTP) in a namespace, to NODE-UP.
extension EndToEnd {
    @Suite("UEFI HTTP Boot and Secure Boot from imagebuild serve", .serialized,
           .enabled(if: QEMU.available && BootLab.unavailableReason == nil,
                    "needs qemu-system-x86_64, /dev/net/tun and network namespaces: \(BootLab.unavailableReason ?? "qemu missing")"))
    struct FirmwareBootTests {
        /// node016 boots by HTTP Boot with no `loader:` (iPXE by URL); node017 has `loader: grub`, and
        /// `loglevel=7` undoes the recipe's `quiet` so the kernel's "Secure boot enabled" reaches the console.
        static let nodes = """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              http_port: 8080
            defaults:
              image: minimal
            nodes:
              - {mac: "52:54:00:77:00:16", hostname: node016, ip: 10.77.0.16, append: "imagebuild.test=http-boot"}
              - {mac: "52:54:00:77:00:17", hostname: node017, ip: 10.77.0.17, loader: grub, append: "imagebuild.test=secure-boot loglevel=7"}
            """

        /// The files a test needs: a missing one fails the test (scripts/setup installs them all).
        static func require(_ files: [(path: String, package: String)], sourceLocation: SourceLocation = #_sourceLocation) throws {
            for file in files where !FileManager.default.fileExists(atPath: file.path) {
                throw HarnessError("\(file.path) is missing: apt-get install \(file.package) (scripts/setup installs it)")
            }
        }

        /// tcpdump on the lab's bridge (UDP only: DHCP and TFTP), so the wire says what the server's own
        /// log might not. Returns the capture's path; the process stops with the lab.
        static func capture(_ site: PXEBootTests.Site, name: String) throws -> (path: String, process: BackgroundProcess) {
            let path = site.lab.directory + "/\(name).pcap"
            let process = try site.lab.start("tcpdump-\(name)", ["/usr/bin/tcpdump", "-i", "br0", "-n", "-U", "-Z", "root", "-w", path, "udp"])
            guard process.wait(for: "listening on", timeout: 20) else { throw HarnessError("tcpdump did not start:\n\(process.log)") }
            return (path, process)
        }

        /// The packets of a capture that match a tcpdump filter, one summary line each.
        static func packets(_ pcap: String, _ filter: String) throws -> [String] {
            let result = try Harness.shell("tcpdump -n -r \(pcap) '\(filter)' 2>/dev/null")
            return result.stdout.split(separator: "\n").map(String.init)
        }

        @Test("x86-64 OVMF HTTP Boot: the URL from DHCP (option 60 HTTPClient), then iPXE, kernel and image, and no TFTP at all")
        func httpBoot() async throws { try await Harness.blocking { try Self().httpBootOnThread() } }
        func httpBootOnThread() throws {
            try Self.require([("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"), ("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf"), ("/usr/bin/tcpdump", "tcpdump")])
            let site = try PXEBootTests.Site(nodes: Self.nodes)
            defer { site.close() }
            let mac = "52:54:00:77:00:16"
            let wire = try Self.capture(site, name: "http-boot")
            let started = Date()
            let vm = try site.lab.startVM(name: "vm16", mac: mac, firmware: .uefiHTTP)
            let upAt = PXEBootTests.waitForNodes([(mac: mac, vm: vm)], started: started, timeout: 420)
            print("serve, OVMF HTTP Boot (\(QEMU.accelerator)): \(mac) NODE-UP after \(PXEBootTests.seconds(upAt[mac]))")
            #expect(upAt[mac] != nil, "\(mac) did not come up:\n\(vm.log.suffix(3000))\n--- server, about this node:\n\(PXEBootTests.serverLines(site.serve.log, mac: mac, console: vm.log))")
            guard upAt[mac] != nil else { return }
            #expect(vm.log.contains("imagebuild.test=http-boot"), "the kernel did not get node016's command line")
            // OVMF says which boot option it runs; its PXE client was switched off.
            #expect(vm.log.contains("HTTP Boot"), "OVMF did not start its HTTP Boot client:\n\(vm.log.prefix(3000))")
            #expect(!vm.log.contains("Start PXE"), "OVMF tried PXE:\n\(vm.log.prefix(3000))")
            let t = try site.timelineWhenUp(mac, bootloader: true)
            PXEBootTests.expectFullBoot(t, mac, bootloader: true)
            print("timeline of \(mac) (boot took \(PXEBootTests.seconds(t.bootSeconds)) by the server's clock):\n\(t.text)")
            #expect(site.serve.log.contains("file=ipxe/ipxe.efi") && site.serve.log.contains("HTTP completed"),
                    "the firmware never fetched ipxe.efi over HTTP")

            // No TFTP from this machine: not in the server's log, not in its metrics, not on the wire.
            wire.process.stop()
            let tftpLines = site.serveLogs.split(separator: "\n").filter {
                $0.range(of: #"TFTP (completed|aborted|failed|rejected|cancelled)|on the TFTP (request )?port|repeated read request"#, options: .regularExpression) != nil
            }
            #expect(tftpLines.isEmpty, "the server logged TFTP traffic:\n\(tftpLines.prefix(10).joined(separator: "\n"))")
            let metrics = try Harness.shell("ip netns exec \(site.lab.namespace) curl -sf --max-time 10 http://\(site.lab.serverAddress):8080/metrics")
            #expect(metrics.status == 0, "no metrics: \(metrics.stderr)")
            let transfers = metrics.stdout.split(separator: "\n").filter { $0.hasPrefix("imagebuild_tftp_transfers_total") && !$0.hasSuffix(" 0") }
            #expect(transfers.isEmpty, "TFTP transfers counted: \(transfers)")
            let tftpOnWire = try Self.packets(wire.path, "udp port 69")
            #expect(tftpOnWire.isEmpty, "TFTP on the wire:\n\(tftpOnWire.prefix(10).joined(separator: "\n"))")
            let dhcp = try Self.packets(wire.path, "udp port 67 or udp port 68")
            #expect(!dhcp.isEmpty, "the capture saw no DHCP at all: it did not watch the boot")
        }

        @Test("Secure Boot enforced (Microsoft keys): shim, GRUB and the signed Debian kernel boot; an unsigned kernel is refused")
        func secureBoot() async throws { try await Harness.blocking { try Self().secureBootOnThread() } }
        func secureBootOnThread() throws {
            try Self.require([("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "ovmf"), ("/usr/share/OVMF/OVMF_VARS_4M.ms.fd", "ovmf"),
                              ("/usr/lib/shim/shimx64.efi.signed", "shim-signed"),
                              ("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed", "grub-efi-amd64-signed"),
                              ("/usr/bin/sbattach", "sbsigntool"), ("/usr/bin/tcpdump", "tcpdump")])
            let site = try PXEBootTests.Site(nodes: Self.nodes)
            defer { site.close() }
            let mac = "52:54:00:77:00:17"
            let wire = try Self.capture(site, name: "secure-boot")
            let started = Date()
            let vm = try site.lab.startVM(name: "vm17", mac: mac, firmware: .secureBoot)
            let upAt = PXEBootTests.waitForNodes([(mac: mac, vm: vm)], started: started, timeout: 480)
            print("serve, OVMF Secure Boot -> shim -> GRUB -> signed kernel (\(QEMU.accelerator)): \(mac) NODE-UP after \(PXEBootTests.seconds(upAt[mac]))")
            #expect(upAt[mac] != nil, "\(mac) did not come up:\n\(vm.log.suffix(3000))\n--- server, about this node:\n\(PXEBootTests.serverLines(site.serve.log, mac: mac, console: vm.log))")
            guard upAt[mac] != nil else { return }
            #expect(vm.log.contains("imagebuild.test=secure-boot"), "the kernel did not get node017's command line")
            // The kernel itself says the firmware enforced Secure Boot.
            #expect(vm.log.contains("Secure boot enabled"), "the kernel does not report Secure Boot:\n\(vm.log.prefix(4000))")
            let walk = site.serveLogs.split(separator: "\n").compactMap { line -> String? in
                line.range(of: #"grub/[0-9A-Za-z._-]+"#, options: .regularExpression).map { String(line[$0]) }
            }
            let seen = walk.reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
            print("GRUB chain files seen by the TFTP server:\n  " + seen.joined(separator: "\n  "))
            // Debian's GRUB reads grub.cfg only; the walk in it finds the node's own file first.
            let chain = ["grub/shimx64.efi", "grub/grubx64.efi", "grub/grub.cfg", "grub/grub.cfg-01-52-54-00-77-00-17"].map { seen.firstIndex(of: $0) }
            #expect(chain.allSatisfy { $0 != nil } && chain == chain.sorted { ($0 ?? 0) < ($1 ?? 0) },
                    "shim, GRUB, its entry point and the node's own GRUB file, in that order: \(seen)")
            #expect(!seen.contains("grub/grub.cfg-default"), "the walk went past the node's own file: \(seen)")
            let t = try site.timelineWhenUp(mac, bootloader: true)
            PXEBootTests.expectFullBoot(t, mac, bootloader: true)
            print("timeline of \(mac) (boot took \(PXEBootTests.seconds(t.bootSeconds)) by the server's clock):\n\(t.text)")

            // The same chain with the kernel's signature stripped: shim's verifier refuses it in GRUB's
            // `linux` ("bad shim signature"), the entry says so and would reset, and Linux never starts.
            let index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: site.root + "/publish.json"))) as? [String: Any]
            guard let digest = ((index?["images"] as? [String: Any])?["minimal"] as? [String: Any])?["digest"] as? String else {
                throw HarnessError("no minimal image in publish.json")
            }
            let kernel = site.root + "/images/minimal/\(digest)/vmlinuz"
            let unsigned = site.lab.directory + "/vmlinuz.unsigned"
            for command in ["cp \(kernel) \(unsigned)", "sbattach --remove \(unsigned)", "mv \(unsigned) \(kernel)"] {
                let result = try Harness.shell(command)
                guard result.status == 0 else { throw HarnessError("\(command): \(result.stderr)") }
            }
            // And without the node's own GRUB file, so this boot also walks past missing names: GRUB's
            // grub.cfg tries grub.cfg-01-<mac>, grub.cfg-<IP>, then grub.cfg-default (the same image).
            try FileManager.default.removeItem(atPath: site.root + "/grub/grub.cfg-01-52-54-00-77-00-17")
            let logBefore = site.serveLogs.count
            try vm.powerCycle()
            let refusedAt = Date()
            let refused = vm.wait(for: "imagebuild: booting minimal", timeout: 300)
            let refusal = vm.currentLog
            print("serve, Secure Boot with an unsigned kernel: GRUB gave up after \(PXEBootTests.seconds(Date().timeIntervalSince(refusedAt)))")
            #expect(refused, "GRUB did not report the failed boot:\n\(refusal.suffix(3000))")
            #expect(refusal.contains("bad shim signature"), "no refusal from shim's verifier on the console:\n\(refusal.suffix(3000))")
            // GRUB's `if linux` failed, so the entry went straight to its message: no initrd was tried.
            #expect(!refusal.contains("you need to load the kernel first"), "GRUB went on to the initrd:\n\(refusal.suffix(3000))")
            #expect(!refusal.contains("NODE-UP"), "the unsigned kernel booted:\n\(refusal.suffix(3000))")
            #expect(!refusal.contains("Linux version"), "the unsigned kernel started:\n\(refusal.suffix(3000))")
            let secondWalk = String(site.serveLogs.dropFirst(logBefore)).split(separator: "\n").compactMap { line -> String? in
                guard line.contains("TFTP"), let r = line.range(of: #"grub/grub\.cfg[0-9A-Za-z.-]*"#, options: .regularExpression) else { return nil }
                return String(line[r]) + (line.contains("TFTP completed") ? " found" : " -")
            }
            print("GRUB's walk without the node's own file:\n  " + secondWalk.joined(separator: "\n  "))
            #expect(secondWalk == ["grub/grub.cfg found", "grub/grub.cfg-01-52-54-00-77-00-17 -", "grub/grub.cfg-10.77.0.17 -", "grub/grub.cfg-default found"],
                    "GRUB's walk: \(secondWalk)")
            wire.process.stop()
        }
    }
}
