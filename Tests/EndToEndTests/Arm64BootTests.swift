import Foundation
import TestSupport
import Testing

/// arm64 end to end: `recipes/minimal-arm64.yaml` built on this (x86-64) machine from Debian's arm64
/// packages, published, and booted by QEMU's arm64 machine with Debian's AAVMF firmware under TCG,
/// through real `imagebuild serve` in the network lab, once by PXE (Debian's signed GRUB over TFTP)
/// and once by UEFI HTTP Boot (the HTTP GRUB, no TFTP at all), each to NODE-UP with a full timeline.
enum Arm64 {
    static let recipe = Harness.packageRoot + "/recipes/minimal-arm64.yaml"

    /// Why the suite cannot run here. The build fetches the arm64 sysroot from the Debian mirror
    /// (mmdebstrap in root mode), lists busybox's applets with qemu-aarch64 and makes the HTTP Boot
    /// GRUB with grub-mkimage.
    static let unavailableReason: String? = {
        if geteuid() != 0 { return "mmdebstrap (root mode) and the network lab need root" }
        if let missing = ProcessRunner.missing(["mmdebstrap", "qemu-aarch64", "grub-mkimage", "depmod", "curl"]) { return missing }
        for file in ["/usr/bin/qemu-system-aarch64", "/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"]
        where !FileManager.default.fileExists(atPath: file) {
            return "\(file) is missing (scripts/setup installs qemu-system-arm and qemu-efi-aarch64)"
        }
        if let reason = BootLab.unavailableReason { return reason }
        let probe = try? ProcessRunner.shell("curl -sSf -o /dev/null --max-time 20 \(DebianCompute.mirrorRelease)", timeout: 30)
        if probe?.status != 0 { return "the Debian mirror is not reachable (\(DebianCompute.mirrorRelease)): \(probe?.stderr ?? "curl did not run")" }
        return nil
    }()

    /// The artifacts, built once per run into the tests' cache folder (the build's own cache reuses
    /// them while the mirror publishes the same release files).
    static let artifacts: Swift.Result<String, HarnessError> = {
        do {
            let (summary, wall, stderr) = try BuildSummary.build(recipe, out: DebianCompute.cacheRoot, timeout: 600)
            print("minimal-arm64: \(summary.upToDate ? "up to date" : "built") in \(String(format: "%.1f", wall)) s\n\(stderr.suffix(1500))")
            return .success(summary.directory)
        } catch let error as HarnessError {
            return .failure(error)
        } catch {
            return .failure(HarnessError("\(error)"))
        }
    }()
}

extension EndToEnd {
    @Suite("arm64: an image built from Debian's arm64 packages boots AAVMF by PXE and by HTTP Boot", .serialized,
           .enabled(if: Arm64.unavailableReason == nil, "\(Arm64.unavailableReason ?? "")"))
    struct Arm64BootTests {
        static let nodes = """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              http_port: 8080
            defaults:
              image: minimal-arm64
              arch: arm64
            nodes:
              - {mac: "52:54:00:77:00:40", hostname: node040, ip: 10.77.0.40, append: "imagebuild.test=arm64-pxe"}
              - {mac: "52:54:00:77:00:41", hostname: node041, ip: 10.77.0.41, append: "imagebuild.test=arm64-http"}
            """

        /// Boots one machine to NODE-UP and checks what every arm64 boot must show; returns the site and
        /// the boot's seconds for the caller's own checks.
        func boot(_ mac: String, ip: String, firmware: BootLab.Firmware, name: String) throws -> (site: PXEBootTests.Site, vm: LabVM)? {
            let site = try PXEBootTests.Site(nodes: Self.nodes, artifacts: try Arm64.artifacts.get())
            let started = Date()
            let vm = try site.lab.startVM(name: name, mac: mac, firmware: firmware, memory: 1024)
            // TCG emulating arm64 on x86-64: GRUB's TFTP of a 31 MiB kernel alone takes several seconds.
            let upAt = PXEBootTests.waitForNodes([(mac: mac, vm: vm)], started: started, timeout: 600)
            print("serve, AAVMF \(firmware) (TCG): \(mac) NODE-UP after \(PXEBootTests.seconds(upAt[mac]))")
            #expect(upAt[mac] != nil, "\(mac) did not come up:\n\(vm.log.suffix(3000))\n--- server, about this node:\n\(PXEBootTests.serverLines(site.serve.log, mac: mac, console: vm.log))")
            guard upAt[mac] != nil else { site.close(); return nil }
            #expect(vm.log.contains("Welcome to GRUB!"), "AAVMF did not run GRUB:\n\(vm.log.prefix(3000))")
            let t = try site.timelineWhenUp(mac, bootloader: true)
            PXEBootTests.expectFullBoot(t, mac, bootloader: true)
            // Stage 2 reports `uname -r` with "up": the kernel that runs is the arm64 one.
            #expect(t.text.contains("-arm64"), "the node did not report an arm64 kernel:\n\(t.text)")
            print("timeline of \(mac) (boot took \(PXEBootTests.seconds(t.bootSeconds)) by the server's clock):\n\(t.text)")
            return (site, vm)
        }

        @Test("arm64 PXE (architecture 11): Debian's signed GRUB over TFTP, the node's own grub.cfg, the arm64 kernel, NODE-UP")
        func pxe() async throws { try await Harness.blocking { try Self().pxeOnThread() } }
        func pxeOnThread() throws {
            let mac = "52:54:00:77:00:40"
            guard let (site, vm) = try boot(mac, ip: "10.77.0.40", firmware: .arm64PXE, name: "arm40") else { return }
            defer { site.close() }
            #expect(vm.log.contains("Start PXE over IPv4"), "AAVMF did not PXE boot:\n\(vm.log.prefix(3000))")
            #expect(vm.log.contains("imagebuild.test=arm64-pxe"), "the kernel did not get node040's command line")
            let tftp = site.serveLogs.split(separator: "\n").filter { $0.contains("TFTP completed") }
            for file in ["file=grub/grubaa64.efi", "file=/grub/grub.cfg ", "file=/grub/grub.cfg-01-52-54-00-77-00-40", "/vmlinuz", "/initramfs.img"] {
                #expect(tftp.contains { $0.contains(file) }, "no TFTP transfer of \(file):\n\(tftp.joined(separator: "\n"))")
            }
        }

        @Test("arm64 UEFI HTTP Boot (architecture 19): the HTTP GRUB by URL, its walk, kernel and image over HTTP, and no TFTP")
        func httpBoot() async throws { try await Harness.blocking { try Self().httpBootOnThread() } }
        func httpBootOnThread() throws {
            let mac = "52:54:00:77:00:41"
            guard let (site, vm) = try boot(mac, ip: "10.77.0.41", firmware: .arm64HTTP, name: "arm41") else { return }
            defer { site.close() }
            #expect(vm.log.contains("HTTP Boot"), "AAVMF did not start its HTTP Boot client:\n\(vm.log.prefix(3000))")
            #expect(!vm.log.contains("Start PXE over IPv4"), "AAVMF tried PXE:\n\(vm.log.prefix(3000))")
            #expect(vm.log.contains("imagebuild.test=arm64-http"), "the kernel did not get node041's command line")
            let http = site.serveLogs.split(separator: "\n").filter { $0.contains("HTTP completed") }
            for file in ["file=grub/grubaa64-http.efi", "file=grub/grub.cfg ", "file=grub/grub.cfg-01-52-54-00-77-00-41", "/vmlinuz", "/initramfs.img"] {
                #expect(http.contains { $0.contains(file) }, "no HTTP transfer of \(file):\n\(http.joined(separator: "\n"))")
            }
            let tftp = site.serveLogs.split(separator: "\n").filter { $0.contains("imagebuild.tftp") && $0.contains("10.77.0.41") }
            #expect(tftp.isEmpty, "the HTTP Boot machine used TFTP:\n\(tftp.prefix(10).joined(separator: "\n"))")
        }
    }
}
