import Foundation
import TestSupport
import Testing

extension EndToEnd {
    /// `distribution: p2p` with real machines: four QEMU VMs boot one squashfs image through aria2c in
    /// their stage 1, the server as tracker and web seed. The server's own uplink (the bridge's local
    /// port) is shaped to 40 Mbit/s while the VMs reach each other at full speed, as nodes in a rack
    /// do; three boot together, the fourth once they are up, so its pieces can only come from nodes that
    /// are seeding after their switch_root, or from the server.
    @Suite("Swarm: four VMs share their image over BitTorrent", .serialized,
           .enabled(if: QEMU.available && BootLab.unavailableReason == nil && Harness.have("aria2c"),
                    "needs qemu-system-x86_64, /dev/net/tun, network namespaces and aria2 (scripts/setup installs them): \(BootLab.unavailableReason ?? "")"))
    struct SwarmBootTests {
        static let macs = (1...4).map { String(format: "52:54:00:77:0b:%02x", $0) }
        static let nodes = """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              http_port: 8080
            defaults:
              image: swarm
              loader: ipxe
              distribution: p2p
              seed_time: 600
            nodes:
            \(macs.enumerated().map { "  - {mac: \"\($1)\", hostname: sw\($0 + 1), ip: 10.77.0.\(21 + $0)}" }.joined(separator: "\n"))
            """

        /// The minimal recipe as a squashfs image with aria2c in its stage 1, carrying 32 MiB of random
        /// bytes so the image is some 130 pieces of 256 KiB (the busybox system alone would be a few).
        static let artifacts: Swift.Result<String, HarnessError> = {
            let out = Harness.temporaryDirectory("swarm")
            do {
                var bytes = [UInt8](repeating: 0, count: 32 << 20)
                var generator = SystemRandomNumberGenerator()
                for index in stride(from: 0, to: bytes.count, by: 8) {
                    let word = generator.next() as UInt64
                    for offset in 0..<8 { bytes[index + offset] = UInt8(truncatingIfNeeded: word >> (8 * offset)) }
                }
                try Data(bytes).write(to: URL(fileURLWithPath: out + "/blob"))
                var recipe = try String(contentsOfFile: Harness.packageRoot + "/recipes/minimal.yaml", encoding: .utf8)
                recipe = recipe.replacingOccurrences(of: "name: minimal", with: "name: swarm")
                    .replacingOccurrences(of: "image:\n  format: tar.gz", with: "image:\n  format: squashfs")
                    .replacingOccurrences(of: "  onfail_delay: 30\n", with: "  onfail_delay: 30\n  p2p: true\n")
                    .replacingOccurrences(of: "files:\n", with: "files:\n  - path: /data/blob\n    source: \(out)/blob\n")
                guard recipe.contains("format: squashfs"), recipe.contains("p2p: true"), recipe.contains("/data/blob") else {
                    return .failure(HarnessError("recipes/minimal.yaml changed shape: the swarm recipe could not be derived from it"))
                }
                try recipe.write(toFile: out + "/swarm.yaml", atomically: true, encoding: .utf8)
                let result = try Harness.imagebuild([out + "/swarm.yaml", "--out", out], environment: ["SOURCE_DATE_EPOCH": Harness.epoch])
                guard result.status == 0 else { return .failure(HarnessError("build failed: \(result.stderr)")) }
                return .success(out + "/swarm")
            } catch {
                return .failure(HarnessError("\(error)"))
            }
        }()

        @Test("three VMs boot together from the swarm, a fourth from nodes seeding after their switch_root; every image verified, pieces moved between nodes")
        func fourVMsShareTheImage() async throws { try await Harness.blocking { try Self().bootOnThread() } }

        func bootOnThread() throws {
            let site = try PXEBootTests.Site(nodes: Self.nodes, artifacts: try Self.artifacts.get())
            defer { site.close() }
            let ns = site.lab.namespace
            // The server's uplink: frames the server sends into the bridge leave through br0's qdisc;
            // frames between VMs are forwarded port to port and never see it.
            _ = try Harness.shell("ip netns exec \(ns) tc qdisc replace dev br0 root tbf rate 40mbit burst 64kb latency 100ms")
            let started = Date()
            var vms: [LabVM] = []
            for (index, mac) in Self.macs.prefix(3).enumerated() { vms.append(try site.lab.startVM(name: "sw\(index + 1)", mac: mac)) }
            for (index, vm) in vms.enumerated() {
                let up = vm.wait(for: "NODE-UP \(Self.macs[index])", timeout: 420)
                print("swarm: sw\(index + 1) NODE-UP after \(Int(Date().timeIntervalSince(started))) s (\(QEMU.accelerator))")
                #expect(up, "sw\(index + 1) did not come up:\n\(vm.log.suffix(3000))\n--- server:\n\(site.serve.log.suffix(3000))")
                guard up else { return }
            }
            let late = Date()
            vms.append(try site.lab.startVM(name: "sw4", mac: Self.macs[3]))
            let up = vms[3].wait(for: "NODE-UP \(Self.macs[3])", timeout: 420)
            print("swarm: sw4 NODE-UP after \(Int(Date().timeIntervalSince(late))) s")
            #expect(up, "sw4 did not come up:\n\(vms[3].log.suffix(3000))\n--- server:\n\(site.serve.log.suffix(3000))")
            guard up else { return }

            for (index, mac) in Self.macs.enumerated() {
                let timeline = try site.timelineWhenUp(mac, bootloader: false)
                #expect(PXEBootTests.missingStage(timeline, bootloader: false) == nil, "sw\(index + 1): incomplete timeline\n\(timeline.text)")
                #expect(timeline.events.contains { $0.summary.contains("from the swarm") }, "sw\(index + 1) did not load from the swarm:\n\(timeline.text)\n--- console:\n\(vms[index].log.suffix(2000))")
                #expect(timeline.events.contains { $0.stage == "image" && $0.summary.contains("verified") } || vms[index].log.contains("sha256 OK"),
                        "sw\(index + 1): image not verified\n\(timeline.text)")
            }
            // What the tracker saw: pieces moved between nodes (each node reports what it sent at its
            // next announce, at most 30 s later), the server's own seeder sent some, and the server
            // (its seeder and its web seed together) sent fewer than four copies.
            var uploaded: Int64 = 0
            var serverSeeded: Int64 = 0
            var swarm = ""
            let deadline = Date().addingTimeInterval(75)
            repeat {
                swarm = try Harness.shell("ip netns exec \(ns) curl -sf --max-time 10 http://\(site.lab.serverAddress):8080/api/v1/swarm").stdout
                let json = try? JSONSerialization.jsonObject(with: Data(swarm.utf8)) as? [String: Any]
                let images = json?["images"] as? [[String: Any]] ?? []
                uploaded = images.compactMap { ($0["uploaded"] as? NSNumber)?.int64Value }.reduce(0, +)
                serverSeeded = images.compactMap { (($0["server"] as? [String: Any])?["uploaded"] as? NSNumber)?.int64Value }.reduce(0, +)
                if uploaded > 0 && serverSeeded > 0 { break }
                sleep(2)
            } while Date() < deadline
            print("swarm: /api/v1/swarm \(swarm.prefix(1500))")
            #expect(uploaded > 0, "no bytes reported sent between nodes: \(swarm)")
            #expect(serverSeeded > 0, "the server's seeder sent nothing (or is not in the swarm): \(swarm)")
            // The first three were still seeding after their switch_root when sw4 came.
            let timelines = try Self.macs.prefix(3).map { try site.timeline($0) }
            #expect(timelines.allSatisfy { $0.stage == "up" }, "a seeder is not up")
            let served = Self.imageBytesServed(site.serveLogs)
            let size = try FileManager.default.attributesOfItem(atPath: try Self.artifacts.get() + "/image.squashfs")[.size] as! Int
            let sent = served + Int(serverSeeded)
            print("swarm: server sent \(served) bytes of the image over HTTP and \(serverSeeded) over BitTorrent = \(String(format: "%.2f", Double(sent) / Double(size))) copies for 4 nodes; nodes report \(uploaded) bytes sent between them")
            #expect(sent < 4 * size, "the server sent every node its own copy: \(sent) bytes")
            // sw4 came when the others had switched root: what the server did not send it, they did.
            let toLate = Self.imageBytesServed(site.serveLogs, client: "10.77.0.24")
            print("swarm: sw4 got \(toLate) of \(size) bytes from the server")
            #expect(toLate < size, "sw4 got its whole image from the server, none from the seeding nodes")
        }

        /// Bytes of the image file the server sent over HTTP (the web seed), from its transfer log lines
        /// (`bytes=N ... file=images/.../image.squashfs`): the metrics' image counter also counts kernels
        /// and initramfs files, which live under images/ too.
        static func imageBytesServed(_ log: String, client: String? = nil) -> Int {
            log.split(separator: "\n").filter { line in
                line.contains("image.squashfs") && line.contains("imagebuild.http:") && (client.map { line.contains("client=\($0) ") } ?? true)
            }.compactMap { line -> Int? in
                guard let field = line.split(separator: " ").first(where: { $0.hasPrefix("bytes=") }) else { return nil }
                return Int(field.dropFirst(6))
            }.reduce(0, +)
        }
    }
}
