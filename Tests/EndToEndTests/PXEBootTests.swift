import Foundation
import Testing

/// Real PXE clients on a private network: QEMU's iPXE ROM gets an address,
/// chainloads pxelinux over imagebuild's TFTP server, pxelinux walks
/// pxelinux.cfg/ (per-MAC file, hex-IP prefixes, default) and boots what it finds.
extension EndToEnd {
    @Suite("PXE boot through pxelinux on a private network", .serialized,
           .enabled(if: QEMU.available && NetworkLab.unavailableReason == nil,
                    "needs qemu-system-x86_64, /dev/net/tun and network namespaces: \(NetworkLab.unavailableReason ?? "qemu missing")"))
    struct PXEBootTests {
        static let nodes = """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              http_port: 8080
              bios_loader: pxelinux.0
            defaults:
              image: minimal
              append: "imagebuild.test=default"
            ranges:
              - {cidr: 10.77.0.96/28, append: "imagebuild.test=range"}
            nodes:
              - {mac: "52:54:00:77:00:01", hostname: node001, ip: 10.77.0.11, append: "imagebuild.test=node"}
            """

        @Test("a registered node boots its 01-<mac> file; an unknown one finds its hex-IP prefix file")
        func perMACAndHexPrefix() throws {
            let artifacts = try Harness.minimal.get()
            let lab = try NetworkLab()
            defer { lab.close() }
            let root = lab.directory + "/tftpboot"
            try Self.nodes.write(toFile: lab.directory + "/nodes.yaml", atomically: true, encoding: .utf8)
            let published = try Harness.imagebuild(["publish", artifacts, "--root", root, "--nodes", lab.directory + "/nodes.yaml"])
            try #require(published.status == 0, "\(published.stderr)")

            let serve = try lab.start("serve", [Harness.binary, "serve", "--root", root, "--nodes", lab.directory + "/nodes.yaml",
                                                "--no-dhcp", "--no-http", "--listen", lab.serverAddress, "--log-level", "debug",
                                                "--state-dir", lab.directory + "/state"])
            try lab.start("dnsmasq", ["/usr/sbin/dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=br0",
                                      "--bind-interfaces", "--dhcp-range=10.77.0.96,10.77.0.99,255.255.255.0,1h",
                                      "--dhcp-host=52:54:00:77:00:01,10.77.0.11", "--dhcp-boot=pxelinux.0,,10.77.0.1",
                                      "--no-ping", "--dhcp-leasefile=\(lab.directory)/leases", "--log-dhcp"])
            try lab.start("httpd", ["/bin/busybox", "httpd", "-f", "-p", "10.77.0.1:8080", "-h", root])
            #expect(serve.wait(for: "TFTP server listening", timeout: 20), "serve did not start: \(serve.log)")

            let started = Date()
            let vm1 = try lab.startVM(name: "vm1", mac: "52:54:00:77:00:01")
            let vm2 = try lab.startVM(name: "vm2", mac: "52:54:00:77:00:02")
            let up1 = vm1.wait(for: "NODE-UP 52:54:00:77:00:01", timeout: 300)
            let t1 = Date().timeIntervalSince(started)
            let up2 = vm2.wait(for: "NODE-UP 52:54:00:77:00:02", timeout: 300 - t1)
            let t2 = Date().timeIntervalSince(started)
            #expect(up1, "vm1 did not come up:\n\(vm1.log.suffix(2500))")
            #expect(up2, "vm2 did not come up:\n\(vm2.log.suffix(2500))")
            print("PXE (pxelinux over imagebuild TFTP, \(QEMU.accelerator)): vm1 NODE-UP at \(String(format: "%.1f", t1)) s, vm2 at \(String(format: "%.1f", t2)) s")

            // Which config each one booted, as its kernel saw it.
            #expect(vm1.log.contains("imagebuild.test=node"))
            #expect(vm2.log.contains("imagebuild.test=range"))
            // The walk pxelinux made for vm2, as our TFTP server saw it.
            let requests = serve.log.split(separator: "\n").filter { $0.contains("pxelinux.cfg/") }
            let walk = requests.compactMap { line -> String? in
                guard let range = line.range(of: #"pxelinux\.cfg/[0-9A-Za-z-]+"#, options: .regularExpression) else { return nil }
                return String(line[range])
            }
            print("pxelinux.cfg requests seen by the TFTP server:\n  " + walk.joined(separator: "\n  "))
            #expect(walk.contains("pxelinux.cfg/01-52-54-00-77-00-01"))
            let vm2Walk = walk.filter { !$0.hasSuffix("01-52-54-00-77-00-01") && !$0.hasSuffix("0A4D000B") }
            #expect(vm2Walk.starts(with: ["pxelinux.cfg/01-52-54-00-77-00-02", "pxelinux.cfg/0A4D0060", "pxelinux.cfg/0A4D006"])
                    || vm2Walk.contains("pxelinux.cfg/0A4D006"), "vm2's walk: \(vm2Walk)")
            #expect(!vm2Walk.contains("pxelinux.cfg/default"), "vm2 fell through to default: \(vm2Walk)")
        }
    }
}
