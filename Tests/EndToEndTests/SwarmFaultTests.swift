import Foundation
import TestSupport
import Testing

extension EndToEnd {
    /// The swarm when things go wrong, with real parts: `imagebuild serve` (tracker and web seed) in the
    /// lab, and nodes that are network namespaces on its bridge running the initramfs's own stage 1
    /// (busybox, aria2c, imagebuild-fetch, /load_img.sh) chrooted, up to where it would mount the image.
    /// In every case the node must end with the image whose SHA-256 is on its command line: nothing lost,
    /// nothing unverified. The server's uplink is shaped to 40 Mbit/s (about 7 s for the 32 MiB image)
    /// so that peers matter and a fault lands mid-transfer.
    @Suite("Swarm faults: every node still gets a verified image", .serialized,
           .enabled(if: BootLab.unavailableReason == nil && Harness.have("aria2c") && Harness.have("cpio"),
                    "needs network namespaces, aria2 and cpio (scripts/setup installs them): \(BootLab.unavailableReason ?? "")"))
    final class SwarmFaultTests: @unchecked Sendable {
        static let nodes = """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              http_port: 8080
            defaults:
              image: swarm
              distribution: p2p
              seed_time: 600
            nodes:
            \((1...6).map { "  - {mac: \"52:54:00:77:0f:0\($0)\", hostname: f\($0), ip: 10.77.0.\(30 + $0)}" }.joined(separator: "\n"))
            """

        let site: PXEBootTests.Site
        let artifacts: String
        /// The unpacked initramfs every node chroots into (each with its own /tmp, /run and /newroot).
        let stageOne: String
        let imageURL: String
        let torrentURL: String
        let sha256: String
        var nodeNamespaces: [String] = []

        init() throws {
            artifacts = try SwarmBootTests.artifacts.get()
            site = try PXEBootTests.Site(nodes: Self.nodes, artifacts: artifacts)
            do {
                stageOne = site.lab.directory + "/stage1"
                try FileManager.default.createDirectory(atPath: stageOne, withIntermediateDirectories: true)
                let unpacked = try Harness.shell("cd \(stageOne) && zcat \(artifacts)/initramfs.img | cpio -idm --quiet")
                guard unpacked.status == 0 else { throw HarnessError("cpio: \(unpacked.stderr)") }
                try """
                    #!/bin/sh
                    say() { echo "say: $*"; }
                    step() { echo "step: $1"; [ "$1" = unpack ] && { [ -f /tmp/aria2c.log ] && sed 's/^/aria2c: /' /tmp/aria2c.log; exit 0; }; STEP=$1; }
                    report() { echo "report: $1 $2"; }
                    report_later() { echo "report: $1 $2"; }
                    fail() { echo "FAILED at step '$STEP': $*"; exit 1; }
                    STEP=start
                    . /load_img.sh

                    """.write(toFile: stageOne + "/test-load.sh", atomically: true, encoding: .utf8)
                let index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: site.root + "/publish.json"))) as? [String: Any]
                let image = (index?["images"] as? [String: Any])?["swarm"] as? [String: Any]
                let digest = image?["digest"] as? String ?? "?"
                imageURL = "http://10.77.0.1:8080/images/swarm/\(digest)/image.squashfs"
                torrentURL = "http://10.77.0.1:8080/torrents/swarm-\(digest).torrent"
                let cmdline = try String(contentsOfFile: artifacts + "/cmdline", encoding: .utf8)
                sha256 = cmdline.split(separator: " ").first { $0.hasPrefix("imagebuild.sha256=") }.map { String($0.dropFirst(18)).trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
                _ = try Harness.shell("ip netns exec \(site.lab.namespace) tc qdisc replace dev br0 root tbf rate 40mbit burst 64kb latency 100ms")
            } catch {
                site.close()
                throw error
            }
        }

        deinit {
            // aria2c seeds on after stage 1 returns, in the node's namespace: stop every process there.
            for namespace in nodeNamespaces {
                for pid in (try? Harness.shell("ip netns pids \(namespace)").stdout.split(separator: "\n")) ?? [] { kill(pid_t(pid) ?? 0, SIGKILL) }
            }
            site.close()
        }

        /// A node namespace on the lab's bridge with `address`, its link shaped to `rate` when given.
        func addNode(_ name: String, address: String, rate: String? = nil) throws -> String {
            let namespace = try site.lab.lab.addNamespace(name)
            nodeNamespaces.append(namespace)
            try site.lab.lab.addVeth(namespace, "eth0", site.lab.namespace, "v\(name)")
            _ = try site.lab.lab.run(["ip", "-n", site.lab.namespace, "link", "set", "v\(name)", "master", "br0"])
            _ = try site.lab.lab.run(["ip", "-n", namespace, "addr", "add", address + "/24", "dev", "eth0"])
            if let rate { _ = try site.lab.lab.run(["tc", "-n", namespace, "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "64kb", "latency", "100ms"]) }
            return namespace
        }

        /// Stage 1 of one node, in the background: its output in the lab's `<name>.log`.
        func load(_ name: String, in namespace: String, torrent: String? = nil) throws -> BackgroundProcess {
            let settings = ["IMAGE_URL=\(imageURL)", "TORRENT_URL=\(torrent ?? torrentURL)", "FORMAT=squashfs", "RETRIES=4",
                            "ROOTSIZE=256m", "NEWINIT=/sbin/init", "IMAGE_SHA256=\(sha256)", "SEED_TIME=600", "NEED=",
                            "SWARM_STALL=5"]
            let script = #"mount --make-rprivate / && mount -t proc proc "$0/proc" && mount -t tmpfs tmpfs "$0/tmp" && mount -t tmpfs tmpfs "$0/run" && mount -t tmpfs -o size=256m tmpfs "$0/newroot" && exec env -i PATH=/sbin:/bin:/usr/sbin:/usr/bin "$@" chroot "$0" /bin/sh /test-load.sh"#
            return try site.lab.lab.start(name, ["unshare", "-m", "sh", "-c", script, stageOne] + settings, in: namespace)
        }

        /// Waits for a stage 1 to end; its output.
        func finished(_ process: BackgroundProcess, timeout: Double = 120) -> String {
            let deadline = Date().addingTimeInterval(timeout)
            while process.isRunning && Date() < deadline { usleep(100_000) }
            if process.isRunning { process.stop() }
            return process.log
        }

        func expectVerified(_ output: String, _ who: String, fromSwarm: Bool, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(output.contains("report: image-verified \(sha256)") && output.contains("step: unpack") && !output.contains("FAILED"),
                    "\(who): no verified image:\n\(output.suffix(3000))", sourceLocation: sourceLocation)
            #expect(output.contains("bytes from the swarm") == fromSwarm, "\(who): \(fromSwarm ? "not" : "") from the swarm:\n\(output.suffix(2000))",
                    sourceLocation: sourceLocation)
        }

        func swarmView() throws -> String {
            try Harness.shell("ip netns exec \(site.lab.namespace) curl -sf --max-time 10 http://10.77.0.1:8080/api/v1/swarm").stdout
        }

        @Test("a seeding node killed mid-transfer: the node finishes from the server's seeder, verified")
        func seederKilled() async throws {
            try await Harness.blocking { [self] in
                let a = try addNode("fa", address: "10.77.0.31", rate: "40mbit")
                expectVerified(finished(try load("fa", in: a)), "seeder", fromSwarm: true)
                let before = try swarmView()
                #expect(before.contains("\"ip\":\"10.77.0.31\""), "the seeder is not in the swarm: \(before)")
                let b = try addNode("fb", address: "10.77.0.32")
                let loading = try load("fb", in: b)
                usleep(2_500_000)  // a third of the way at the two links' rates
                #expect(loading.isRunning, "the node was done before its seeder died: the fault came too late")
                for pid in try Harness.shell("ip netns pids \(a)").stdout.split(separator: "\n") { kill(pid_t(pid) ?? 0, SIGKILL) }
                expectVerified(finished(loading), "after its seeder died", fromSwarm: true)
            }
        }

        @Test("a peer serving corrupted pieces: caught by the piece hashes, the node still gets the right image")
        func corruptPeer() async throws {
            try await Harness.blocking { [self] in
                // A node of the cluster seeding a copy with a byte flipped in every 64 KiB (so in every piece), unverified.
                let rogue = try addNode("fc", address: "10.77.0.33")
                let bad = site.lab.directory + "/rogue"
                try FileManager.default.createDirectory(atPath: bad, withIntermediateDirectories: true)
                var bytes = try Data(contentsOf: URL(fileURLWithPath: artifacts + "/image.squashfs"))
                for offset in stride(from: 4096, to: bytes.count, by: 64 << 10) { bytes[offset] ^= 0xff }  // pieces are 256 KiB or more
                try bytes.write(to: URL(fileURLWithPath: bad + "/image.squashfs"))
                let fetched = try Harness.shell("ip netns exec \(site.lab.namespace) curl -sf -o \(bad)/image.torrent --max-time 10 \(torrentURL)")
                #expect(fetched.status == 0, "no torrent: \(fetched.stderr)")
                let seeding = try site.lab.lab.start("rogue", [
                    "aria2c", "--dir=\(bad)", "--seed-ratio=0.0", "--seed-time=10", "--bt-seed-unverified=true", "--check-integrity=false",
                    "--enable-dht=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false", "--console-log-level=warn", "--bt-tracker-interval=1",
                    "--summary-interval=0", "-T", bad + "/image.torrent"], in: rogue)
                usleep(3_000_000)  // announced
                #expect(seeding.isRunning, "the rogue seeder stopped: \(seeding.log.suffix(1000))")
                let victim = try addNode("fd", address: "10.77.0.34")
                let output = finished(try load("fd", in: victim))
                expectVerified(output, "next to a corrupt peer", fromSwarm: true)
                // The rogue did send pieces (it reports every second), and they were thrown away.
                var sent = false
                let deadline = Date().addingTimeInterval(10)
                while !sent && Date() < deadline {
                    sent = (try? swarmView()).map { view in
                        guard let json = try? JSONSerialization.jsonObject(with: Data(view.utf8)) as? [String: Any],
                              let images = json["images"] as? [[String: Any]] else { return false }
                        return images.flatMap { $0["peers"] as? [[String: Any]] ?? [] }
                            .contains { $0["ip"] as? String == "10.77.0.33" && (($0["uploaded"] as? NSNumber)?.int64Value ?? 0) > 0 }
                    } ?? false
                    if !sent { usleep(500_000) }
                }
                #expect(sent, "the corrupt peer sent nothing, so nothing was caught: \((try? swarmView()) ?? "")")
                seeding.stop()
            }
        }

        @Test("the tracker (the server) restarted mid-swarm: the node finishes, verified")
        func trackerRestarted() async throws {
            try await Harness.blocking { [self] in
                let e = try addNode("fe", address: "10.77.0.35")
                let loading = try load("fe", in: e)
                usleep(2_000_000)
                #expect(loading.isRunning, "the node was done before the server went down: the fault came too late")
                // The server's own seeder is part of serve: it is in the swarm before the crash, and again after.
                func serverSeeds() -> Bool { ((try? swarmView()) ?? "").contains("\"server\":{\"ip\":\"10.77.0.1\"") }
                #expect(serverSeeds(), "the server seeded nothing before the crash: \((try? swarmView()) ?? "")")
                try site.crashAndRestart()
                expectVerified(finished(loading), "across a server restart", fromSwarm: true)
                let deadline = Date().addingTimeInterval(20)
                while !serverSeeds() && Date() < deadline { usleep(200_000) }
                #expect(serverSeeds(), "the restarted server does not seed: \((try? swarmView()) ?? "")")
            }
        }

        @Test("the swarm unreachable: the node falls back to HTTP, verified")
        func swarmUnreachable() async throws {
            try await Harness.blocking { [self] in
                let f = try addNode("ff", address: "10.77.0.36")
                let output = finished(try load("ff", in: f, torrent: "http://10.77.0.1:8080/torrents/none.torrent"))
                expectVerified(output, "without a swarm", fromSwarm: false)
                #expect(output.contains("say: swarm: the torrent: HTTP 404"), "\(output.suffix(2000))")
            }
        }

        @Test("an announce from an address that is no node is refused; that machine, given no peer, still gets the image from the web seed")
        func strangerRefused() async throws {
            try await Harness.blocking { [self] in
                let stranger = try addNode("fg", address: "10.77.0.99")
                let output = finished(try load("fg", in: stranger))
                expectVerified(output, "the stranger", fromSwarm: true)
                #expect(output.contains("the server's web seed joins"), "the stranger had peers or never used the web seed:\n\(output.suffix(2000))")
                let view = try swarmView()
                #expect(!view.contains("10.77.0.99"), "the stranger is in the swarm: \(view)")
                #expect(site.serveLogs.split(separator: "\n").contains { $0.contains("announce refused") && $0.contains("client=10.77.0.99") && $0.contains("reason=not_a_node") },
                        "no refusal logged for 10.77.0.99:\n\(site.serveLogs.suffix(2000))")
            }
        }
    }
}
