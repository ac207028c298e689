import Foundation
import TestSupport
import Testing

extension EndToEnd {
    /// A QEMU machine whose BMC is OpenIPMI's ipmi_sim: `imagebuild power` and `imagebuild reboot
    /// --wait` drive it over IPMI (ipmitool, lanplus) and follow its boot on `imagebuild serve`.
    ///
    /// ipmi_sim's chassis control starts the VM at power-on and kills it at power-off; the VM
    /// network-boots only when the BMC holds a one-time PXE boot device (otherwise it boots from its
    /// empty disk and stops), so a node that comes up proves the `--pxe` request reached the BMC.
    @Suite("Power: reboot through a BMC and follow the boot", .serialized,
           .enabled(if: QEMU.available && BootLab.unavailableReason == nil && IPMISimulator.unavailableReason == nil,
                    "needs qemu, network namespaces, ipmi_sim and ipmitool: \(BootLab.unavailableReason ?? IPMISimulator.unavailableReason ?? "qemu missing")"))
    struct PowerBootTests {
        static let mac = "52:54:00:77:00:31"

        static func nodes(passwordFile: String) -> String {
            """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              http_port: 8080
            defaults:
              image: minimal
              loader: ipxe
              bmc: {protocol: ipmi, user: admin, password_file: \(passwordFile), port: 6230, cipher_suite: 3}
            nodes:
              - {mac: "\(mac)", hostname: vm1, ip: 10.77.0.31, bmc: {address: 127.0.0.1}}
              - {mac: "52:54:00:77:00:32", hostname: vm2, ip: 10.77.0.32, bmc: {address: 127.0.0.2}}
            """
        }

        @Test("power status; reboot --wait without PXE times out with no boot seen; reboot --wait boots to up; power off")
        func rebootThroughIPMI() async throws { try await Harness.blocking { try Self().rebootOnThread() } }
        func rebootOnThread() throws {
            let bmcDir = Harness.temporaryDirectory("power-bmc")
            defer { try? FileManager.default.removeItem(atPath: bmcDir) }
            // IPMI passwords are at most 20 bytes.
            let password = "ipmi-\(UUID().uuidString.prefix(12))"
            let site = try PXEBootTests.Site(nodes: Self.nodes(passwordFile: bmcDir + "/bmc-password"))
            defer { site.close() }
            let tap = try site.lab.addTap()
            let console = site.lab.directory + "/vm1-console.log"
            // Started by the BMC's chassis script inside the lab's namespace; $BOOT is the one-time device.
            let vmStart = """
                # Not PXE: the disk (there is none), and no NIC boot ROM for SeaBIOS to fall back to.
                if [ "$BOOT" = pxe ]; then order=n; rom=""; else order=c; rom=",romfile="; fi
                exec /usr/bin/qemu-system-x86_64 -accel \(QEMU.accelerator) -m 512 -smp 1 -display none -nodefaults \\
                  -chardev file,id=s0,path=\(console),append=on -serial chardev:s0 -no-reboot -boot "$order" \\
                  -netdev tap,id=n0,ifname=\(tap),script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=\(Self.mac)$rom \\
                  -pidfile \(bmcDir)/vm.pid -daemonize
                """
            let bmc = try IPMISimulator(directory: bmcDir, port: 6230, password: password, vmStart: vmStart,
                                        start: { name, arguments in try site.lab.start(name, arguments) })
            defer { bmc.stop() }
            let ns = site.lab.namespace
            func imagebuild(_ arguments: String, timeout: Double = 120) throws -> Harness.Result {
                try Harness.shell("ip netns exec \(ns) \(Harness.binary) \(arguments) --nodes \(site.nodesFile)", timeout: timeout)
            }
            var outputs = ""
            // ipmi_sim answers once its LAN socket is up.
            var status = try imagebuild("power status vm1")
            for _ in 0..<50 where status.status != 0 {
                usleep(200_000)
                status = try imagebuild("power status vm1")
            }
            outputs += status.stdout + status.stderr
            #expect(status.status == 0 && status.stdout.contains("vm1") && status.stdout.contains("off"), "\(status.stdout)\(status.stderr)\n\(bmc.process.log)")

            // Without the one-time network boot the machine boots its empty disk: the server sees nothing.
            var started = Date()
            let noPXE = try imagebuild("reboot vm1 --wait --no-pxe --node-timeout 20", timeout: 120)
            outputs += noPXE.stdout + noPXE.stderr
            print("power: reboot --no-pxe ended after \(Int(Date().timeIntervalSince(started))) s, status \(noPXE.status)")
            #expect(noPXE.status == 1 && noPXE.stdout.contains("vm1: TIMED OUT with no sign of a boot"), "\(noPXE.stdout)\(noPXE.stderr)")
            #expect(bmc.requests == ["power 1"], "\(bmc.requests)")

            // With it (the default): one-time PXE, power cycle (the machine is on), followed to up.
            started = Date()
            let reboot = try imagebuild("reboot vm1 --wait --node-timeout 300", timeout: 400)
            outputs += reboot.stdout + reboot.stderr
            let seconds = Int(Date().timeIntervalSince(started))
            print("power: reboot vm1 --wait (\(QEMU.accelerator)) exited \(reboot.status) after \(seconds) s:\n\(reboot.stdout)")
            #expect(reboot.status == 0 && reboot.stdout.contains("vm1  up in"), "\(reboot.stdout)\(reboot.stderr)\n--- console:\n\((try? String(contentsOfFile: console, encoding: .utf8))?.suffix(3000) ?? "")")
            // The BMC got the boot device before the cycle (ipmi_sim cycles as off, then on).
            #expect(Array(bmc.requests.dropFirst()) == ["boot pxe", "power 0", "power 1"], "\(bmc.requests)")
            let timeline = try site.timelineWhenUp(Self.mac, bootloader: false)
            #expect(timeline.stage == "up" && PXEBootTests.missingStage(timeline, bootloader: false) == nil, "\(timeline.text)")

            let on = try imagebuild("power status vm1 --json")
            outputs += on.stdout + on.stderr
            let json = try JSONSerialization.jsonObject(with: Data(on.stdout.utf8)) as? [[String: Any]]
            #expect(json?.first?["state"] as? String == "on" && json?.first?["ok"] as? Bool == true, "\(on.stdout)")

            // vm2's BMC does not exist: its row fails with the reason, vm1's is done, the exit status says so.
            let both = try imagebuild("power off vm[1-2] --bmc-timeout 10")
            outputs += both.stdout + both.stderr
            #expect(both.status == 1 && both.stdout.contains("powered off") && both.stdout.contains("FAILED (unreachable)"), "\(both.stdout)\(both.stderr)")
            #expect(bmc.vmPID == nil, "the VM still runs after power off")
            let off = try imagebuild("power status vm1")
            outputs += off.stdout + off.stderr
            #expect(off.status == 0 && off.stdout.contains("vm1") && off.stdout.contains(" off "), "\(off.stdout)\(off.stderr)")
            #expect(!outputs.contains(password), "the BMC password appeared in imagebuild's output")
        }
    }
}
