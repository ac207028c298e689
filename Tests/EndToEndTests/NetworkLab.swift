import Foundation

/// A private boot network: a network namespace with a bridge holding the
/// server's address and one tap device per VM. Nothing touches a host
/// interface; `close()` (or deinit) stops every process started here by PID
/// and deletes the namespace, whatever happened.
final class NetworkLab {
    let namespace: String
    let serverAddress = "10.77.0.1"
    let directory: String
    private var processes: [BackgroundProcess] = []
    private var taps = 0
    private var closed = false

    /// Why the lab cannot run here, or nil when it can.
    static let unavailableReason: String? = {
        if !FileManager.default.fileExists(atPath: "/dev/net/tun") { return "no /dev/net/tun on this machine" }
        let probe = "ibprobe\(getpid())"
        guard let result = try? Harness.shell("ip netns add \(probe) && ip netns del \(probe)"), result.status == 0 else {
            return "cannot create network namespaces here (needs root / CAP_NET_ADMIN)"
        }
        return nil
    }()

    init() throws {
        namespace = "ibe2e\(getpid())x\(Int.random(in: 1000...9999))"
        Self.pruneOldDirectories(keeping: 8)
        directory = Harness.temporaryDirectory("lab")
        try run("ip netns add \(namespace)")
        do {
            try exec("ip link set lo up")
            try exec("ip link add br0 type bridge stp_state 0 forward_delay 0")
            try exec("ip addr add \(serverAddress)/24 dev br0")
            try exec("ip link set br0 up")
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    /// A lab's directory (VM consoles, server logs, the boot root) outlives it: it is what a failure is
    /// read from, then or later. Only the newest `keeping` stay, so repeated runs do not fill /tmp.
    static func pruneOldDirectories(keeping: Int) {
        let temporary = NSTemporaryDirectory()
        let manager = FileManager.default
        guard let names = try? manager.contentsOfDirectory(atPath: temporary) else { return }
        let labs = names.filter { $0.hasPrefix("ib-lab.") }.map { temporary + $0 }.compactMap { path -> (String, Date)? in
            guard let modified = (try? manager.attributesOfItem(atPath: path))?[.modificationDate] as? Date else { return nil }
            return (path, modified)
        }
        for (path, _) in labs.sorted(by: { $0.1 > $1.1 }).dropFirst(keeping) { try? manager.removeItem(atPath: path) }
    }

    func run(_ command: String) throws {
        let result = try Harness.shell(command)
        if result.status != 0 { throw HarnessError("\(command): \(result.stderr)") }
    }

    /// Runs a command inside the namespace.
    func exec(_ command: String) throws { try run("ip netns exec \(namespace) \(command)") }

    /// A new tap device on the bridge, for one VM.
    func addTap() throws -> String {
        taps += 1
        let name = "tap\(taps)"
        try exec("ip tuntap add dev \(name) mode tap")
        try exec("ip link set \(name) master br0 up")
        return name
    }

    /// Starts a program inside the namespace; it is stopped by PID in `close()`.
    @discardableResult
    func start(_ name: String, _ arguments: [String]) throws -> BackgroundProcess {
        let process = try BackgroundProcess("/usr/sbin/ip", ["netns", "exec", namespace] + arguments,
                                            log: directory + "/\(name).log")
        processes.append(process)
        return process
    }

    /// Drops `permille`/1000 of the frames crossing the bridge's VM ports, both ways and whatever the
    /// protocol, silently, like a lossy network (this kernel has no netem; see TEST-NOTES). Frames from a
    /// VM are dropped as they enter the bridge, frames to a VM as they leave it.
    func addLoss(permille: Int) throws {
        let rules = """
            table bridge lab {
              chain in { type filter hook prerouting priority -300; policy accept; iifname "tap*" numgen random mod 1000 < \(permille) counter drop; }
              chain out { type filter hook postrouting priority 300; policy accept; oifname "tap*" numgen random mod 1000 < \(permille) counter drop; }
            }

            """
        let file = directory + "/loss.nft"
        try rules.write(toFile: file, atomically: true, encoding: .utf8)
        try exec("nft -f \(file)")
    }

    /// Frames the loss rules dropped so far.
    func droppedPackets() throws -> Int {
        let result = try Harness.shell("ip netns exec \(namespace) nft list table bridge lab")
        guard result.status == 0 else { throw HarnessError("nft list: \(result.stderr)") }
        return result.stdout.split(separator: "\n").compactMap { line -> Int? in
            guard let range = line.range(of: #"packets [0-9]+"#, options: .regularExpression) else { return nil }
            return Int(line[range].dropFirst("packets ".count))
        }.reduce(0, +)
    }

    func close() {
        guard !closed else { return }
        closed = true
        for process in processes.reversed() { process.stop() }
        _ = try? Harness.shell("ip netns del \(namespace)")
    }

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
        switch firmware {
        case .bios:
            arguments += ["-device", "virtio-net-pci,netdev=n0,mac=\(mac)"]
        case .uefi:
            // EDK2's own PXE client (not iPXE): the NIC's option ROM is disabled.
            let vars = directory + "/\(name)-OVMF_VARS.fd"
            try run("cp /usr/share/OVMF/OVMF_VARS_4M.fd \(vars)")
            arguments += ["-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                          "-drive", "if=pflash,format=raw,file=\(vars)",
                          "-device", "virtio-net-pci,netdev=n0,mac=\(mac),romfile="]
        }
        return try start(name, arguments)
    }

    enum Firmware { case bios, uefi }
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
    private let lab: NetworkLab
    private let firmware: NetworkLab.Firmware
    private let memory: Int
    private var runs: [BackgroundProcess]

    fileprivate init(lab: NetworkLab, name: String, mac: String, firmware: NetworkLab.Firmware, memory: Int) throws {
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

    /// Starts the machine again if its last run ended in lpxelinux's reset, at most `limit` times in all.
    /// True when it did.
    func restartAfterBootloaderGaveUp(limit: Int = 2) throws -> Bool {
        guard let last = runs.last, !last.isRunning, restarts < limit, last.log.contains(Self.bootloaderGaveUp) else { return false }
        runs.append(try lab.launchQEMU(name: "\(name)-restart\(runs.count)", mac: mac, firmware: firmware, memory: memory))
        return true
    }
}
