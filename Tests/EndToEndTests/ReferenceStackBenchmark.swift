import Foundation
import Testing

/// Boot time side by side: the same VMs, boot root and chains served by `imagebuild serve`, then by
/// the reference stack (dnsmasq for DHCP + TFTP, nginx for HTTP), in one run on the same machine.
/// A benchmark, not a check: it prints medians and ratios and asserts only that the boots happened.
/// Opt in with `IMAGEBUILD_BENCH_REFERENCE=1 swift test --filter ReferenceStackBenchmark`
/// (`IMAGEBUILD_BENCH_RUNS`, default 3, sets the repetitions per stack; `IMAGEBUILD_BENCH_VMS`, default
/// "1 4", the machine counts).
extension EndToEnd {
    @Suite("Boot time against dnsmasq + nginx", .serialized,
           .enabled(if: ProcessInfo.processInfo.environment["IMAGEBUILD_BENCH_REFERENCE"] == "1"
                    && QEMU.available && BootLab.unavailableReason == nil && Harness.have("nginx"),
                    "opt-in benchmark: IMAGEBUILD_BENCH_REFERENCE=1 (needs qemu, nginx, dnsmasq, namespaces)"))
    struct ReferenceStackBenchmark {
        enum Stack: String, CaseIterable { case imagebuild, reference }

        /// The four machines of `PXEBootTests.fourMachines`: three through pxelinux, one through its iPXE script.
        static let machines = [("vm1", "52:54:00:77:00:01"), ("vm2", "52:54:00:77:00:02"), ("vm3", "52:54:00:77:00:03"), ("vm4", "52:54:00:77:00:04")]

        /// Starts the reference stack on a published root: dnsmasq hands out the same addresses and boot
        /// files (`lpxelinux.0`; the iPXE node gets its static script from publish) and serves TFTP; nginx serves HTTP.
        static func startReference(lab: BootLab, root: String) throws {
            let conf = lab.directory + "/nginx.conf"
            try """
                daemon off;
                user root;
                worker_processes auto;
                pid \(lab.directory)/nginx.pid;
                error_log \(lab.directory)/nginx-error.log;
                events { worker_connections 1024; }
                http {
                    access_log off;
                    sendfile on;
                    tcp_nopush on;
                    types { text/plain ipxe cfg; }
                    default_type application/octet-stream;
                    client_body_temp_path \(lab.directory)/nginx-body;
                    server { listen \(lab.serverAddress):8080; root \(root); }
                }

                """.write(toFile: conf, atomically: true, encoding: .utf8)
            try lab.start("nginx", ["/usr/sbin/nginx", "-c", conf])
            try lab.start("dnsmasq", [
                "/usr/sbin/dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--interface=br0", "--bind-interfaces",
                "--dhcp-range=10.77.0.111,10.77.0.112,255.255.255.0,1h", "--no-ping", "--dhcp-leasefile=\(lab.directory)/leases",
                "--dhcp-host=52:54:00:77:00:01,10.77.0.11", "--dhcp-host=52:54:00:77:00:04,10.77.0.14,set:ipxenode",
                "--dhcp-userclass=set:ipxe,iPXE",
                // As serve does by default: pxelinux resets 30 s after "Boot failed", not 300 s.
                "--dhcp-option-force=208,f1:00:74:7e", "--dhcp-option-force=211,30i",
                "--dhcp-boot=tag:ipxenode,tag:ipxe,http://\(lab.serverAddress):8080/ipxe/nodes/52-54-00-77-00-04.ipxe",
                "--dhcp-boot=tag:!ipxenode,lpxelinux.0,,\(lab.serverAddress)",
                "--enable-tftp", "--tftp-root=\(root)", "--tftp-max=1000"])
            let deadline = Date().addingTimeInterval(30)
            while try Harness.shell("ip netns exec \(lab.namespace) curl -sf -o /dev/null --max-time 2 http://\(lab.serverAddress):8080/pxelinux.cfg/default").status != 0 {
                guard Date() < deadline else { throw HarnessError("nginx does not answer") }
                usleep(200_000)
            }
        }

        /// One run: a fresh lab, `count` VMs started together; seconds from QEMU start to each NODE-UP.
        static func run(_ stack: Stack, count: Int) throws -> [Double?] {
            let lab = try BootLab()
            defer { lab.close() }
            let root = lab.directory + "/tftpboot"
            let nodesFile = lab.directory + "/nodes.yaml"
            try PXEBootTests.nodes.write(toFile: nodesFile, atomically: true, encoding: .utf8)
            let published = try Harness.imagebuild(["publish", try Harness.minimal.get(), "--root", root, "--nodes", nodesFile])
            guard published.status == 0 else { throw HarnessError("publish failed: \(published.stderr)") }
            switch stack {
            case .imagebuild: _ = try PXEBootTests.Site.startServe(lab: lab, root: root, nodes: nodesFile, number: 1)
            case .reference: try startReference(lab: lab, root: root)
            }
            let started = Date()
            let vms = try machines.prefix(count).map { (mac: $0.1, vm: try lab.startVM(name: $0.0, mac: $0.1)) }
            let upAt = PXEBootTests.waitForNodes(vms, started: started, timeout: 480)
            return vms.map { upAt[$0.mac] }
        }

        static func median(_ values: [Double]) -> Double? {
            guard !values.isEmpty else { return nil }
            let sorted = values.sorted()
            return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        }

        @Test("one VM, then four at once, served by each stack in turn")
        func sideBySide() async throws { try await Harness.blocking { try Self().sideBySideOnThread() } }
        func sideBySideOnThread() throws {
            let runs = Int(ProcessInfo.processInfo.environment["IMAGEBUILD_BENCH_RUNS"] ?? "") ?? 3
            var table: [String] = []
            let counts = (ProcessInfo.processInfo.environment["IMAGEBUILD_BENCH_VMS"] ?? "1 4").split(separator: " ").compactMap { Int($0) }
            for count in counts where (1...Self.machines.count).contains(count) {
                var results: [Stack: [[Double?]]] = [:]
                // Alternate the stacks so drifting background load hits both alike.
                for _ in 0..<runs {
                    for stack in Stack.allCases { results[stack, default: []].append(try Self.run(stack, count: count)) }
                }
                var medians: [Stack: Double] = [:]
                for stack in Stack.allCases {
                    let all = results[stack]!
                    let booted = all.flatMap { $0 }.compactMap { $0 }
                    let slowest = all.compactMap { run in run.contains { $0 == nil } ? nil : run.compactMap { $0 }.max() }
                    medians[stack] = Self.median(slowest)
                    let perVM = (0..<count).map { i in Self.median(all.compactMap { $0[i] }).map { String(format: "%.1f", $0) } ?? "-" }
                    table.append("\(count) VM(s) \(stack.rawValue.padding(toLength: 11, withPad: " ", startingAt: 0)) booted \(booted.count)/\(runs * count)"
                                 + "  median last NODE-UP \(PXEBootTests.seconds(medians[stack]))  per VM (median s): \(perVM.joined(separator: " "))")
                    #expect(booted.count == runs * count, "\(stack) \(count) VM(s): \(booted.count) of \(runs * count) came up")
                }
                if let ours = medians[.imagebuild], let reference = medians[.reference] {
                    table.append(String(format: "%d VM(s) reference / imagebuild = %.2f (above 1: imagebuild is faster)", count, reference / ours))
                }
            }
            print("Boot time, QEMU start to NODE-UP (\(QEMU.accelerator), \(runs) runs each, load \(Self.loadAverage())):\n  " + table.joined(separator: "\n  "))
        }

        static func loadAverage() -> String {
            ((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "?").split(separator: " ").prefix(3).joined(separator: " ")
        }
    }
}
