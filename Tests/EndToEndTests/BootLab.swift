import Foundation
import TestSupport

/// A private boot network on the shared `NamespaceLab`: one namespace with a bridge holding the
/// server's address and one tap per VM. Nothing touches a host interface; `close()` (or deinit) stops
/// every process started here by PID and deletes the namespace, whatever happened. Its directory
/// (VM consoles, server logs, the boot root) stays in /tmp/ib-lab.* for reading after a failure.
final class BootLab {
    let lab: NamespaceLab
    let namespace: String
    let serverAddress = "10.77.0.1"
    var directory: String { lab.directory }

    /// Why the lab cannot run here, or nil when it can.
    static let unavailableReason: String? = {
        if !FileManager.default.fileExists(atPath: "/dev/net/tun") { return "no /dev/net/tun on this machine" }
        return NamespaceLab.unavailableReason(needing: ["nft", "curl"])
    }()

    init() throws {
        lab = try NamespaceLab(name: "lab", keepDirectory: true)
        do {
            namespace = try lab.addNamespace("e")
            try lab.addBridge("br0", in: namespace, address: "\(serverAddress)/24")
        } catch {
            lab.close()
            throw error
        }
    }

    deinit { close() }

    /// A new tap device on the bridge, for one VM.
    func addTap() throws -> String { try lab.addTap(in: namespace, bridge: "br0") }

    /// Starts a program inside the namespace; it is stopped by PID in `close()`.
    @discardableResult
    func start(_ name: String, _ arguments: [String]) throws -> BackgroundProcess {
        try lab.start(name, arguments, in: namespace)
    }

    /// Drops `permille`/1000 of the frames crossing the bridge's VM ports, both ways and whatever the
    /// protocol, silently, like a lossy network (this kernel has no netem; see TEST-NOTES). Frames from a
    /// VM are dropped as they enter the bridge, frames to a VM as they leave it.
    func addLoss(permille: Int) throws {
        try lab.loadRules("""
            table bridge lab {
              chain in { type filter hook prerouting priority -300; policy accept; iifname "tap*" numgen random mod 1000 < \(permille) counter drop; }
              chain out { type filter hook postrouting priority 300; policy accept; oifname "tap*" numgen random mod 1000 < \(permille) counter drop; }
            }

            """, in: namespace)
    }

    /// Frames the loss rules dropped so far.
    func droppedPackets() throws -> Int { try lab.countedPackets(family: "bridge", table: "lab", in: namespace) }

    func close() { lab.close() }

    /// A QEMU VM whose NIC is on the lab's bridge, booting from the network.
    func startVM(name: String, mac: String, firmware: Firmware = .bios, memory: Int = 512) throws -> LabVM {
        try LabVM(lab: self, name: name, mac: mac, firmware: firmware, memory: memory)
    }

    /// One QEMU run on a fresh tap. `-no-reboot`: a reset ends the process, so a boot that fails and
    /// resets shows as an exit instead of a silent second boot (see `LabVM.restartAfterBootloaderGaveUp`).
    fileprivate func launchQEMU(name: String, mac: String, firmware: Firmware, memory: Int) throws -> BackgroundProcess {
        let tap = try addTap()
        var arguments = ["/usr/bin/qemu-system-x86_64", "-accel", QEMU.accelerator, "-m", "\(memory)", "-smp", "1",
                         "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot", "-boot", "n",
                         "-netdev", "tap,id=n0,ifname=\(tap),script=no,downscript=no"]
        if firmware == .arm64PXE || firmware == .arm64HTTP {
            // QEMU's arm64 "virt" machine under TCG with Debian's AAVMF (EDK2's own PXE and HTTP Boot
            // clients); the NIC's option ROM is x86 code, so none.
            let vars = directory + "/\(name)-AAVMF_VARS.fd"
            try FileManager.default.copyItem(atPath: "/usr/share/AAVMF/AAVMF_VARS.fd", toPath: vars)
            arguments = ["/usr/bin/qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "\(memory)", "-smp", "1",
                         "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
                         "-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd",
                         "-drive", "if=pflash,format=raw,file=\(vars)",
                         "-netdev", "tap,id=n0,ifname=\(tap),script=no,downscript=no",
                         "-device", "virtio-net-pci,netdev=n0,mac=\(mac),romfile="]
            // HTTP Boot: PXE over IPv4 and IPv6 off through fw_cfg (ArmVirtQemu reads IPv6PXESupport; it
            // would try PXEv6 for about a minute first), so "UEFI HTTPv4" is the first network boot option.
            if firmware == .arm64HTTP {
                arguments += ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
                              "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no"]
            }
            return try start(name, arguments)
        }
        switch firmware {
        case .bios:
            arguments += ["-device", "virtio-net-pci,netdev=n0,mac=\(mac)"]
        case .uefi:
            // EDK2's own PXE client (not iPXE): the NIC's option ROM is disabled.
            let vars = directory + "/\(name)-OVMF_VARS.fd"
            try FileManager.default.copyItem(atPath: "/usr/share/OVMF/OVMF_VARS_4M.fd", toPath: vars)
            arguments += ["-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                          "-drive", "if=pflash,format=raw,file=\(vars)",
                          "-device", "virtio-net-pci,netdev=n0,mac=\(mac),romfile="]
        case .uefiHTTP:
            // EDK2's HTTP Boot client: its PXE client (which OVMF's boot order tries first) and IPv6 are
            // switched off through fw_cfg (OvmfPkg/RUNTIME_CONFIG.md), so the first network boot option
            // left is "UEFI HTTPv4", which asks DHCP for its URL.
            let vars = directory + "/\(name)-OVMF_VARS.fd"
            try FileManager.default.copyItem(atPath: "/usr/share/OVMF/OVMF_VARS_4M.fd", toPath: vars)
            arguments += ["-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                          "-drive", "if=pflash,format=raw,file=\(vars)",
                          "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
                          "-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no",
                          "-device", "virtio-net-pci,netdev=n0,mac=\(mac),romfile="]
        case .secureBoot:
            // Secure Boot enforced with Microsoft's keys enrolled (Debian's OVMF_VARS_4M.ms.fd): the
            // secboot build needs SMM and a secure pflash on q35. EDK2's own PXE client.
            let vars = directory + "/\(name)-OVMF_VARS.ms.fd"
            try FileManager.default.copyItem(atPath: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd", toPath: vars)
            arguments += ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on",
                          "-global", "ICH9-LPC.disable_s3=1",
                          "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
                          "-drive", "if=pflash,format=raw,unit=1,file=\(vars)",
                          "-device", "virtio-net-pci,netdev=n0,mac=\(mac),romfile="]
        case .arm64PXE, .arm64HTTP:
            break  // above
        }
        return try start(name, arguments)
    }

    /// `uefi`: OVMF's PXE client; `uefiHTTP`: OVMF's HTTP Boot client; `secureBoot`: OVMF with Secure
    /// Boot enforced (Microsoft keys), PXE; `arm64PXE`, `arm64HTTP`: an arm64 machine with AAVMF's PXE or
    /// HTTP Boot client.
    enum Firmware { case bios, uefi, uefiHTTP, secureBoot, arm64PXE, arm64HTTP }
}

/// A lab machine. QEMU runs with `-no-reboot`, so any reset ends it and the test sees the failure. The
/// one reset let through is lpxelinux giving up right after its banner ("Boot failed: press a key to
/// retry, or wait for reset..."), which happens now and then under TCG with dnsmasq + nginx as well
/// (README, troubleshooting): pxelinux resets after the server's `pxelinux_reboot_time`, and a real
/// node would PXE boot again, so the machine is started again, at most twice, and the test reports it.
final class LabVM {
    static let bootloaderGaveUp = "Boot failed: press a key to retry"
    let name: String
    let mac: String
    private let lab: BootLab
    private let firmware: BootLab.Firmware
    private let memory: Int
    private var runs: [BackgroundProcess]

    fileprivate init(lab: BootLab, name: String, mac: String, firmware: BootLab.Firmware, memory: Int) throws {
        self.lab = lab
        self.name = name
        self.mac = mac
        self.firmware = firmware
        self.memory = memory
        runs = [try lab.launchQEMU(name: name, mac: mac, firmware: firmware, memory: memory)]
    }

    /// The serial console of every run, oldest first.
    var log: String { runs.map(\.log).joined(separator: "\n--- \(name): reset by its bootloader, started again ---\n") }
    var isRunning: Bool { runs.last!.isRunning }
    /// How many times the machine was started again after lpxelinux gave up.
    var restarts: Int { runs.count - 1 }

    func wait(for pattern: String, timeout: Double) -> Bool { runs.last!.wait(for: pattern, timeout: timeout) }

    /// The serial console of the current run only.
    var currentLog: String { runs.last!.log }

    /// Power-cycles the machine: the current run is stopped and a new one boots (a node's next boot).
    func powerCycle() throws {
        runs.last!.stop()
        runs.append(try lab.launchQEMU(name: "\(name)-boot\(runs.count + 1)", mac: mac, firmware: firmware, memory: memory))
    }

    /// Starts the machine again if its last run ended in lpxelinux's reset, at most `limit` times in all.
    /// True when it did.
    func restartAfterBootloaderGaveUp(limit: Int = 2) throws -> Bool {
        guard let last = runs.last, !last.isRunning, restarts < limit, last.log.contains(Self.bootloaderGaveUp) else { return false }
        runs.append(try lab.launchQEMU(name: "\(name)-restart\(runs.count)", mac: mac, firmware: firmware, memory: memory))
        return true
    }
}
