import Foundation
import TestSupport
import Testing

/// `recipes/debian-compute.yaml`, built with mmdebstrap from the Debian mirror into a folder outside
/// the clone that survives between runs (the build's own cache decides whether it is reused), then
/// published and booted through the full chain from `imagebuild serve` in the network lab: QEMU's
/// iPXE (BIOS) -> DHCP -> boot script -> Debian kernel + stage 1 -> image -> systemd multi-user.
enum DebianCompute {
    static let recipe = Harness.packageRoot + "/recipes/debian-compute.yaml"
    static let mirrorRelease = "http://deb.debian.org/debian/dists/bookworm/InRelease"

    /// `${XDG_CACHE_HOME:-$HOME/.cache}/imagebuild-tests`: the build's `--out`, so the artifacts land in
    /// `debian-compute/` there, their manifest carrying the input digest the next build compares.
    static let cacheRoot: String = {
        let environment = ProcessInfo.processInfo.environment
        let base = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (environment["HOME"] ?? NSHomeDirectory()) + "/.cache"
        return base + "/imagebuild-tests"
    }()

    /// Why the test cannot run here: mmdebstrap in root mode and the lab need root, the build needs
    /// the Debian mirror (the cache is only reused after asking the mirror what it publishes).
    static let unavailableReason: String? = {
        if geteuid() != 0 { return "mmdebstrap (root mode) and the network lab need root" }
        if !QEMU.available { return "qemu-system-x86_64 is not installed (scripts/setup installs it)" }
        if let missing = ProcessRunner.missing(["mmdebstrap", "curl"]) { return missing }
        if let reason = BootLab.unavailableReason { return reason }
        let probe = try? ProcessRunner.shell("curl -sSf -o /dev/null --max-time 20 \(mirrorRelease)", timeout: 30)
        if probe?.status != 0 { return "the Debian mirror is not reachable (\(mirrorRelease)): \(probe?.stderr ?? "curl did not run")" }
        return nil
    }()

    /// RAM for the node: the loaded image must fit stage 1's tmpfs (`imagebuild.rootsize`, 80 % of
    /// RAM by default), and systemd with its services needs room beside it.
    static func memoryMiB(loadedSize: Int64) -> Int {
        let mib = Double(loadedSize) / 1_048_576
        let wanted = mib / 0.8 + 512
        return Int((wanted / 64).rounded(.up)) * 64
    }
}

struct BuildSummary {
    let upToDate: Bool
    let directory: String

    /// `imagebuild build RECIPE --out DIR` at the suite's epoch, bounded by `timeout`. Its stdout says
    /// `up to date: DIR` or `built: DIR`; its stderr has the steps, `[cache] ...` among them.
    static func build(_ recipe: String, out: String, timeout: Double) throws -> (BuildSummary, wall: Double, stderr: String) {
        let started = Date()
        let result = try Harness.imagebuild([recipe, "--out", out], environment: ["SOURCE_DATE_EPOCH": Harness.epoch], timeout: timeout)
        let wall = Date().timeIntervalSince(started)
        let first = result.stdout.split(separator: "\n").first.map(String.init) ?? ""
        for (prefix, upToDate) in [("up to date: ", true), ("built: ", false)] where result.status == 0 && first.hasPrefix(prefix) {
            return (BuildSummary(upToDate: upToDate, directory: String(first.dropFirst(prefix.count))), wall, result.stderr)
        }
        throw HarnessError("build of \(recipe) failed (status \(result.status), \(Int(wall)) s):\n\(result.stderr.suffix(4000))\n\(result.stdout.suffix(1000))")
    }
}

extension EndToEnd {
    @Suite("The Debian compute image boots to multi-user from imagebuild serve", .serialized,
           .enabled(if: DebianCompute.unavailableReason == nil, "\(DebianCompute.unavailableReason ?? "")"))
    struct DebianComputeBootTests {
        static let mac = "52:54:00:77:01:01"
        static let nodes = """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              http_port: 8080
            defaults:
              image: debian-compute
            nodes:
              - {mac: "\(mac)", hostname: compute001, ip: 10.77.0.21, loader: ipxe}
            """

        @Test("built with mmdebstrap (or reused from the cache), it boots through iPXE, stage 1 and systemd to NODE-UP and 'up'")
        func bootsToMultiUser() async throws { try await Harness.blocking { try Self().bootsToMultiUserOnThread() } }
        func bootsToMultiUserOnThread() throws {
            // 1. Build, or reuse what an earlier run left: the build's cache decides, by asking the mirror.
            let (built, wall, log) = try BuildSummary.build(DebianCompute.recipe, out: DebianCompute.cacheRoot, timeout: 1800)
            let reasons = log.split(separator: "\n").filter { $0.hasPrefix("[cache]") }.joined(separator: "; ")
            print("debian-compute: \(built.upToDate ? "REUSED the cached artifacts (inputs unchanged)" : "REBUILT") in "
                  + "\(PXEBootTests.seconds(wall)) (\(built.directory))" + (reasons.isEmpty ? "" : ": \(reasons)"))
            // A second build right away must find the network base's inputs unchanged.
            let (again, againWall, againLog) = try BuildSummary.build(DebianCompute.recipe, out: DebianCompute.cacheRoot, timeout: 600)
            print("debian-compute: second build \(again.upToDate ? "reused" : "REBUILT") in \(PXEBootTests.seconds(againWall))")
            #expect(again.upToDate, "an unchanged mmdebstrap recipe was rebuilt:\n\(againLog.suffix(2000))")

            let manifestData = try Data(contentsOf: URL(fileURLWithPath: built.directory + "/manifest.json"))
            let manifest = try #require(try JSONSerialization.jsonObject(with: manifestData) as? [String: Any])
            let files = try #require(manifest["files"] as? [String: [String: Any]])
            let loadedSize = try #require((manifest["loadedSize"] as? NSNumber)?.int64Value)
            let kernel = manifest["kernelVersion"] as? String ?? "?"
            let memory = DebianCompute.memoryMiB(loadedSize: loadedSize)
            let sizes = files.sorted { $0.key < $1.key }.map { "\($0.key) \(formatMiB(($0.value["size"] as? NSNumber)?.int64Value ?? 0))" }
            print("debian-compute: kernel \(kernel), \(sizes.joined(separator: ", ")), loaded \(formatMiB(loadedSize)); node RAM \(memory) MiB")
            #expect(manifest["inputDigest"] is String, "the artifacts carry no input digest: the next run would rebuild them")

            // 2. Publish and serve in the lab; one BIOS machine whose iPXE gets the boot script.
            let site = try PXEBootTests.Site(nodes: Self.nodes, artifacts: built.directory)
            defer {
                site.close()
                // The lab folder stays for reading after a failure; the image copy need not (it is in the cache).
                try? FileManager.default.removeItem(atPath: site.root + "/images")
            }
            let started = Date()
            let vm = try site.lab.startVM(name: "compute1", mac: Self.mac, memory: memory)
            // Measured here under TCG (2 vCPUs, 2026-12-06): 65-85 s from QEMU's start in eight boots (tar.zst;
            // tar.gz took 82-93 s). The bound leaves room for a machine busy with builds.
            let upAt = PXEBootTests.waitForNodes([(mac: Self.mac, vm: vm)], started: started, timeout: 600)[Self.mac]
            print("debian-compute (\(QEMU.accelerator), \(memory) MiB): QEMU start to NODE-UP \(PXEBootTests.seconds(upAt))")
            let console = vm.log
            #expect(upAt != nil, "no NODE-UP:\n\(console.suffix(4000))\n--- server, about this node:\n\(PXEBootTests.serverLines(site.serve.log, mac: Self.mac, console: console))")
            guard upAt != nil else { return }
            #expect(console.contains("NODE-UP \(Self.mac) multi-user.target=active"), "\(console.suffix(2000))")
            #expect(console.contains("stage 1 started on \(kernel)"), "stage 1 did not run the image's kernel \(kernel)")
            #expect(console.contains("imagebuild: sha256 OK"))
            #expect(console.contains("Welcome to \u{1B}[1mDebian GNU/Linux 12") || console.contains("Welcome to Debian GNU/Linux 12"),
                    "systemd did not start")

            // 3. The server's timeline: every stage of an iPXE boot, in order, ending in `up` (the unit's report).
            let t = try site.timelineWhenUp(Self.mac, bootloader: false)
            PXEBootTests.expectFullBoot(t, Self.mac, bootloader: false)
            #expect(t.events.contains { $0.stage == "up" && $0.summary.contains("debian-compute") }, "\(t.text)")
            print("timeline of \(Self.mac) (boot took \(PXEBootTests.seconds(t.bootSeconds)) by the server's clock):\n\(t.text)")
        }
    }
}

private func formatMiB(_ bytes: Int64) -> String {
    bytes < 1_048_576 ? "\(bytes) B" : String(format: "%.1f MiB", Double(bytes) / 1_048_576)
}
