import Foundation
import TestSupport
import Testing

/// Real machines network-boot from `imagebuild serve` (its own DHCP, TFTP and HTTP) on a private
/// network: QEMU's iPXE ROM (BIOS) and EDK2's own PXE client (UEFI) on taps in a namespace.
extension EndToEnd {
    @Suite("Network boot from imagebuild serve", .serialized,
           .enabled(if: QEMU.available && BootLab.unavailableReason == nil,
                    "needs qemu-system-x86_64, /dev/net/tun and network namespaces: \(BootLab.unavailableReason ?? "qemu missing")"))
    struct PXEBootTests {
        /// node001 boots through pxelinux and its 01-<mac> file; node004 keeps iPXE (its boot script);
        /// node005 is UEFI. Machines not listed get pxelinux (`defaults.loader`) and one of the two pool
        /// addresses: .111 is in the range (hex prefix 0A4D006), .112 is not (falls to `default`).
        static let nodes = """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              pool: 10.77.0.111-10.77.0.112
              http_port: 8080
            defaults:
              image: minimal
              loader: pxelinux
              append: "imagebuild.test=default"
            ranges:
              - {cidr: 10.77.0.96/28, append: "imagebuild.test=range"}
            nodes:
              - {mac: "52:54:00:77:00:01", hostname: node001, ip: 10.77.0.11, append: "imagebuild.test=node"}
              - {mac: "52:54:00:77:00:04", hostname: node004, ip: 10.77.0.14, loader: ipxe, append: "imagebuild.test=ipxe"}
              - {mac: "52:54:00:77:00:05", hostname: node005, ip: 10.77.0.15, append: "imagebuild.test=uefi"}
            """

        /// A published boot root and a running `imagebuild serve` (all three services) in a fresh lab.
        final class Site {
            let lab: BootLab
            let root: String
            let nodesFile: String
            /// `server.yaml` for serve, if the test gave one.
            let configFile: String?
            /// What publish printed.
            let publishOutput: String
            private(set) var serve: BackgroundProcess
            private var starts = 0

            /// `artifacts`: what is published (default: the suite's build of `recipes/minimal.yaml`).
            /// `store`: called with the new lab before publish, it gives publish's extra arguments and
            /// environment (`--store`); publish then runs inside the lab's namespace, where the store is.
            init(nodes: String = PXEBootTests.nodes, serverConfig: String? = nil, artifacts: String? = nil,
                 store: ((BootLab) throws -> (arguments: [String], environment: [String: String]))? = nil) throws {
                let artifacts = try artifacts ?? Harness.minimal.get()
                lab = try BootLab()
                root = lab.directory + "/tftpboot"
                nodesFile = lab.directory + "/nodes.yaml"
                try nodes.write(toFile: nodesFile, atomically: true, encoding: .utf8)
                let arguments = ["publish", artifacts, "--root", root, "--nodes", nodesFile]
                let published: ProcessResult
                if let store {
                    let (extra, environment) = try store(lab)
                    published = try Harness.run("ip", ["netns", "exec", lab.namespace, Harness.binary] + arguments + extra, environment: environment)
                } else {
                    published = try Harness.imagebuild(arguments)
                }
                guard published.status == 0 else { throw HarnessError("publish failed: \(published.output)") }
                publishOutput = published.stdout
                if let serverConfig {
                    let file = lab.directory + "/server.yaml"
                    try serverConfig.write(toFile: file, atomically: true, encoding: .utf8)
                    configFile = file
                } else {
                    configFile = nil
                }
                serve = try Self.startServe(lab: lab, root: root, nodes: nodesFile, config: configFile, number: 1)
                starts = 1
            }

            static func startServe(lab: BootLab, root: String, nodes: String, config: String? = nil, number: Int) throws -> BackgroundProcess {
                let process = try lab.start("serve-\(number)", [
                    Harness.binary, "serve", "--root", root, "--nodes", nodes, "--interface", "br0",
                    "--listen", lab.serverAddress, "--log-level", "debug", "--state-dir", lab.directory + "/state"]
                    + (config.map { ["--config", $0] } ?? []))
                for service in ["DHCP", "TFTP"] where !process.wait(for: "\(service) server listening", timeout: 60) {
                    throw HarnessError("serve did not start its \(service) server:\n\(process.log.suffix(3000))")
                }
                let deadline = Date().addingTimeInterval(60)
                while try Harness.shell("ip netns exec \(lab.namespace) curl -sf -o /dev/null --max-time 2 http://\(lab.serverAddress):8080/api/v1/nodes").status != 0 {
                    guard Date() < deadline, process.isRunning else {
                        throw HarnessError("serve's HTTP server does not answer:\n\(process.log.suffix(3000))")
                    }
                    usleep(200_000)
                }
                return process
            }

            /// Kills the server outright (a crash: no graceful shutdown, leases only in the journal) and starts it again.
            func crashAndRestart() throws {
                serve.process.kill(SIGKILL)
                serve.process.wait()
                starts += 1
                serve = try Self.startServe(lab: lab, root: root, nodes: nodesFile, config: configFile, number: starts)
            }

            /// Every server log so far, oldest first.
            var serveLogs: String {
                (1...starts).map { (try? String(contentsOfFile: lab.directory + "/serve-\($0).log", encoding: .utf8)) ?? "" }
                    .joined(separator: "\n")
            }

            /// The server's timeline for one node (`GET /api/v1/nodes/MAC`).
            func timeline(_ mac: String) throws -> Timeline {
                let result = try Harness.shell("ip netns exec \(lab.namespace) curl -sf --max-time 10 http://\(lab.serverAddress):8080/api/v1/nodes/\(mac)")
                guard result.status == 0, let json = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any],
                      let node = json["node"] as? [String: Any], let events = json["events"] as? [[String: Any]] else {
                    throw HarnessError("no timeline for \(mac): \(result.stderr) \(result.stdout.prefix(500))")
                }
                return Timeline(stage: node["stage"] as? String ?? "?", ip: node["ip"] as? String,
                                bootSeconds: node["bootSeconds"] as? Double,
                                events: events.map { ($0["stage"] as? String ?? "?", $0["summary"] as? String ?? "") })
            }

            /// The timeline once it shows `up`: a node prints NODE-UP before its report reaches the server,
            /// and on a lossy network that report can take a TCP retransmission or two. Bounded by `timeout`.
            /// The node's timeline once it is up and shows every stage of a boot. A transfer whose final
            /// ACK was lost is reported a client time-out late (dated back to when it happened), so the
            /// timeline may complete a few seconds after the node printed NODE-UP.
            func timelineWhenUp(_ mac: String, bootloader: Bool, timeout: Double = 60) throws -> Timeline {
                let deadline = Date().addingTimeInterval(timeout)
                var t = try timeline(mac)
                while (t.stage != "up" || PXEBootTests.missingStage(t, bootloader: bootloader) != nil) && Date() < deadline {
                    usleep(500_000)
                    t = try timeline(mac)
                }
                return t
            }

            func close() { lab.close() }
        }

        struct Timeline {
            var stage: String
            var ip: String?
            var bootSeconds: Double?
            var events: [(stage: String, summary: String)]
            var stages: [String] { events.map(\.stage).reduce(into: []) { if $0.last != $1 { $0.append($1) } } }
            var text: String { events.map { "    \($0.stage.padding(toLength: 12, withPad: " ", startingAt: 0)) \($0.summary)" }.joined(separator: "\n") }
        }

        /// The first stage of a full boot the timeline lacks (in order), nil when it has them all.
        static func missingStage(_ t: Timeline, bootloader: Bool) -> String? {
            var wanted = ["dhcp", "config", "kernel", "initrd", "stage1", "image", "switch-root", "up"]
            if bootloader { wanted.insert("bootloader", at: 1) }
            var rest = t.stages[...]
            for stage in wanted {
                guard let at = rest.firstIndex(of: stage) else { return stage }
                rest = rest[(at + 1)...]
            }
            return nil
        }

        /// Every boot must pass through the stages in order, ending in `up`.
        static func expectFullBoot(_ t: Timeline, _ mac: String, bootloader: Bool, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(t.stage == "up", "\(mac) ends in '\(t.stage)', not 'up':\n\(t.text)", sourceLocation: sourceLocation)
            if let stage = missingStage(t, bootloader: bootloader) {
                Issue.record("\(mac)'s timeline lacks '\(stage)' (in order):\n\(t.text)", sourceLocation: sourceLocation)
            }
        }

        /// Waits for every VM's `NODE-UP <mac>`; returns seconds from `started` to each, nil for a VM that never came up.
        /// A VM that lpxelinux reset is started again (`LabVM`, at most twice), and that is printed.
        static func waitForNodes(_ vms: [(mac: String, vm: LabVM)], started: Date, timeout: Double) -> [String: Double] {
            var upAt: [String: Double] = [:]
            let deadline = started.addingTimeInterval(timeout)
            while Date() < deadline && upAt.count < vms.count {
                for (mac, vm) in vms where upAt[mac] == nil {
                    if vm.log.contains("NODE-UP \(mac)") {
                        upAt[mac] = Date().timeIntervalSince(started)
                    } else if (try? vm.restartAfterBootloaderGaveUp()) == true {
                        print("\(vm.name) \(mac): lpxelinux gave up (\"\(LabVM.bootloaderGaveUp)\") and reset the machine after \(seconds(Date().timeIntervalSince(started))); started again")
                    }
                }
                if vms.allSatisfy({ upAt[$0.mac] != nil || !$0.vm.isRunning }) { break }
                usleep(250_000)
            }
            return upAt
        }

        /// The server's log lines about one node (its MAC, or the address its console shows it got), so a
        /// failure report shows that node's DHCP, TFTP and HTTP story rather than the log's last lines.
        static func serverLines(_ log: String, mac: String, console: String) -> String {
            var addresses: [String] = []
            for line in console.split(separator: "\n") {
                guard let range = line.range(of: "net0: "), let slash = line[range.upperBound...].firstIndex(of: "/") else { continue }
                let address = String(line[range.upperBound..<slash])
                if address.contains("."), !addresses.contains(address) { addresses.append(address) }
            }
            // 10.77.0.11 must not match 10.77.0.111.
            func mentions(_ line: Substring, _ address: String) -> Bool {
                var rest = line[...]
                while let found = rest.range(of: address) {
                    if found.upperBound == rest.endIndex || !rest[found.upperBound].isNumber { return true }
                    rest = rest[found.upperBound...]
                }
                return false
            }
            let lines = log.split(separator: "\n").filter { line in line.contains(mac) || addresses.contains { mentions(line, $0) } }
            return lines.suffix(80).joined(separator: "\n")
        }

        static func seconds(_ value: Double?) -> String { value.map { String(format: "%.1f s", $0) } ?? "never" }

        @Test("four machines at once: pxelinux by MAC, by hex-IP prefix, by default, and iPXE by user class")
        func fourMachines() async throws { try await Harness.blocking { try Self().fourMachinesOnThread() } }
        func fourMachinesOnThread() throws {
            let site = try Site()
            defer { site.close() }
            let machines = [("vm1", "52:54:00:77:00:01"), ("vm2", "52:54:00:77:00:02"), ("vm3", "52:54:00:77:00:03"), ("vm4", "52:54:00:77:00:04")]
            let started = Date()
            let vms = try machines.map { (mac: $0.1, vm: try site.lab.startVM(name: $0.0, mac: $0.1)) }
            let upAt = Self.waitForNodes(vms, started: started, timeout: 420)
            for (name, mac) in machines {
                print("serve, BIOS, 4 at once (\(QEMU.accelerator)): \(name) \(mac) NODE-UP after \(Self.seconds(upAt[mac]))")
            }
            for (mac, vm) in vms {
                #expect(upAt[mac] != nil, "\(mac) did not come up:\n\(vm.log.suffix(3000))\n--- server, about this node:\n\(Self.serverLines(site.serve.log, mac: mac, console: vm.log))")
            }
            guard upAt.count == vms.count else { return }

            // Which configuration each one booted, as its kernel command line shows.
            let log = Dictionary(uniqueKeysWithValues: vms.map { ($0.mac, $0.vm.log) })
            #expect(log["52:54:00:77:00:01"]!.contains("imagebuild.test=node"))
            #expect(log["52:54:00:77:00:04"]!.contains("imagebuild.test=ipxe"))
            // The two unlisted machines: the one on .111 found the range's hex-prefix file, the one on .112 `default`.
            var unlisted: [String: String] = [:]
            for mac in ["52:54:00:77:00:02", "52:54:00:77:00:03"] {
                let t = try site.timeline(mac)
                unlisted[t.ip ?? "?"] = mac
            }
            #expect(Set(unlisted.keys) == ["10.77.0.111", "10.77.0.112"], "pool addresses: \(unlisted)")
            if let inRange = unlisted["10.77.0.111"], let outside = unlisted["10.77.0.112"] {
                #expect(log[inRange]!.contains("imagebuild.test=range"), "\(inRange) on .111 did not boot the range file")
                #expect(log[outside]!.contains("imagebuild.test=default") && !log[outside]!.contains("imagebuild.test=range"),
                        "\(outside) on .112 did not boot default")
            }

            // The pxelinux.cfg walk as our TFTP server saw it.
            let walk = site.serveLogs.split(separator: "\n").compactMap { line -> String? in
                line.range(of: #"pxelinux\.cfg/[0-9A-Za-z-]+"#, options: .regularExpression).map { String(line[$0]) }
            }
            print("pxelinux.cfg requests seen by the TFTP server:\n  " + Array(NSOrderedSet(array: walk)).map { "\($0)" }.joined(separator: "\n  "))
            #expect(walk.contains("pxelinux.cfg/01-52-54-00-77-00-01"))
            #expect(walk.contains("pxelinux.cfg/0A4D006"))
            #expect(walk.contains("pxelinux.cfg/default"))
            #expect(!walk.contains("pxelinux.cfg/01-52-54-00-77-00-04"), "node004 (loader: ipxe) went through pxelinux")

            // The server's timeline: every stage, in order, ending in `up`.
            for (mac, _) in vms {
                let bootloader = mac != "52:54:00:77:00:04"
                let t = try site.timelineWhenUp(mac, bootloader: bootloader)
                Self.expectFullBoot(t, mac, bootloader: bootloader)
                if mac == "52:54:00:77:00:01" {
                    print("timeline of \(mac) (boot took \(Self.seconds(t.bootSeconds)) by the server's clock):\n\(t.text)")
                }
            }
        }

        @Test("UEFI firmware PXE chainloads ipxe.efi, and a server crash mid-boot does not stop the boot")
        func uefiAndServerCrash() async throws { try await Harness.blocking { try Self().uefiAndServerCrashOnThread() } }
        func uefiAndServerCrashOnThread() throws {
            let site = try Site()
            defer { site.close() }
            let started = Date()
            let uefi = try site.lab.startVM(name: "vm5", mac: "52:54:00:77:00:05", firmware: .uefi)
            let bios = try site.lab.startVM(name: "vm4", mac: "52:54:00:77:00:04")
            // Crash the server once the first of them is fetching its kernel or initramfs over HTTP.
            let deadline = Date().addingTimeInterval(300)
            var crashedAt: Double?
            while Date() < deadline && uefi.isRunning && bios.isRunning {
                if site.serve.log.contains("vmlinuz") || site.serve.log.contains("initramfs") {
                    try site.crashAndRestart()
                    crashedAt = Date().timeIntervalSince(started)
                    break
                }
                usleep(100_000)
            }
            #expect(crashedAt != nil, "no node reached its kernel download:\n\(uefi.log.suffix(2000))\n\(bios.log.suffix(2000))")
            let vms = [(mac: "52:54:00:77:00:05", vm: uefi), (mac: "52:54:00:77:00:04", vm: bios)]
            let upAt = Self.waitForNodes(vms, started: started, timeout: 480)
            print("serve, server killed (-9) and restarted at \(Self.seconds(crashedAt)): UEFI vm5 NODE-UP after \(Self.seconds(upAt[vms[0].mac])), BIOS iPXE vm4 after \(Self.seconds(upAt[vms[1].mac]))")
            for (mac, vm) in vms {
                #expect(upAt[mac] != nil, "\(mac) did not come up after the restart:\n\(vm.log.suffix(3000))\n--- server, about this node:\n\(Self.serverLines(site.serve.log, mac: mac, console: vm.log))")
            }
            guard upAt.count == vms.count else { return }
            #expect(uefi.log.contains("imagebuild.test=uefi"))
            // EDK2's PXE client fetched ipxe.efi over TFTP; the iPXE it started then got its boot script.
            let logs = site.serveLogs
            #expect(logs.contains("ipxe/ipxe.efi"), "the UEFI node never fetched ipxe.efi")
            let t = try site.timelineWhenUp("52:54:00:77:00:05", bootloader: true)
            Self.expectFullBoot(t, "52:54:00:77:00:05", bootloader: true)
            print("timeline of the UEFI node across the restart:\n\(t.text)")
        }

        /// A node whose lpxelinux cannot boot (no ldlinux.c32 anywhere it looks) prints "Boot failed ... or
        /// wait for reset" and waits pxelinux's 300 s unless DHCP says otherwise (options 208 + 211). With
        /// `-no-reboot` the reset ends QEMU, which is what this measures.
        @Test("pxelinux that cannot boot resets after the server's pxelinux_reboot_time, not its own 300 s")
        func pxelinuxRebootTime() async throws { try await Harness.blocking { try Self().pxelinuxRebootTimeOnThread() } }
        func pxelinuxRebootTimeOnThread() throws {
            let site = try Site(serverConfig: "dhcp: {pxelinux_reboot_time: 5}\n")
            defer { site.close() }
            try FileManager.default.removeItem(atPath: site.root + "/ldlinux.c32")
            let vm = try site.lab.startVM(name: "vm1", mac: "52:54:00:77:00:01")
            let gaveUp = vm.wait(for: LabVM.bootloaderGaveUp, timeout: 240)
            let gaveUpAt = Date()
            #expect(gaveUp, "lpxelinux did not give up:\n\(vm.log.suffix(3000))")
            guard gaveUp else { return }
            while vm.isRunning && Date().timeIntervalSince(gaveUpAt) < 120 { usleep(100_000) }
            let waited = Date().timeIntervalSince(gaveUpAt)
            print("pxelinux_reboot_time 5: lpxelinux reset the machine \(Self.seconds(waited)) after 'Boot failed'")
            #expect(!vm.isRunning, "still waiting \(Self.seconds(waited)) after 'Boot failed' (pxelinux's own wait is 300 s):\n\(vm.log.suffix(1500))")
            // 5 s by pxelinux's tick count; the margin is for TCG's slow clock.
            #expect(waited < 60 && waited > 3, "reset after \(Self.seconds(waited))")
        }

        /// pxelinux.0 loads kernel and initramfs over TFTP (the classic chain, and the one whose loss
        /// handling is ours); stage 1 then fetches the image over HTTP with Linux's TCP. (lpxelinux's own
        /// HTTP client, lwIP, once gave up on a kernel download stalled by loss: see README troubleshooting.)
        @Test("5 % packet loss both ways on the boot network: BIOS pxelinux nodes still come up")
        func packetLoss() async throws { try await Harness.blocking { try Self().packetLossOnThread() } }
        func packetLossOnThread() throws {
            let site = try Site(nodes: Self.nodes.replacingOccurrences(of: "  http_port: 8080\n", with: "  http_port: 8080\n  bios_loader: pxelinux.0\n"))
            defer { site.close() }
            try site.lab.addLoss(permille: 50)
            let started = Date()
            let vms = try [("vm1", "52:54:00:77:00:01"), ("vm2", "52:54:00:77:00:02")].map {
                (mac: $0.1, vm: try site.lab.startVM(name: $0.0, mac: $0.1))
            }
            let upAt = Self.waitForNodes(vms, started: started, timeout: 480)
            let dropped = try site.lab.droppedPackets()
            let retransmissions = site.serve.log.split(separator: "\n").compactMap { line -> Int? in
                guard line.contains("TFTP completed"), let r = line.range(of: #"retransmissions=[0-9]+"#, options: .regularExpression) else { return nil }
                return Int(line[r].dropFirst("retransmissions=".count))
            }.reduce(0, +)
            print("serve, 5 % loss: TFTP retransmitted \(retransmissions) blocks in completed transfers")
            print("serve, 5 % loss (\(dropped) packets dropped): " + vms.map { "\($0.mac) NODE-UP after \(Self.seconds(upAt[$0.mac]))" }.joined(separator: ", "))
            #expect(dropped > 0, "the loss rule dropped nothing: the test did not test loss")
            for (mac, vm) in vms {
                #expect(upAt[mac] != nil, "\(mac) did not come up under loss:\n\(vm.log.suffix(3000))\n--- server, about this node:\n\(Self.serverLines(site.serve.log, mac: mac, console: vm.log))")
                if upAt[mac] != nil { Self.expectFullBoot(try site.timelineWhenUp(mac, bootloader: true), mac, bootloader: true) }
            }
        }
    }
}
