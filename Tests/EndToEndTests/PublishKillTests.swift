import Foundation
import ImageBuildKit
import TestSupport
import Testing

/// Publish copies the boot loaders from Debian's packages.
let publishBootloadersInstalled = Publisher.bootloaders.allSatisfy { FileManager.default.fileExists(atPath: $0.source) }

/// The real `imagebuild publish`, killed with SIGKILL at each of its checkpoints (`FaultInjection`,
/// `IMAGEBUILD_FAULT=publish:<point>`): before the switch the boot root is exactly as it was, after it
/// it is wholly new, and the next publish clears what the dead ones left.
extension EndToEnd {
    @Suite("imagebuild publish killed at every step", .serialized,
           .enabled(if: publishBootloadersInstalled, "needs pxelinux, syslinux-common and ipxe (scripts/setup installs them)"))
    struct PublishKillTests {
        /// Every checkpoint of `Publisher.publish`, in the order a publish passes them. The last one is
        /// after the switch.
        static let points = ["image-copied", "images-done", "generation-files", "generation-written", "before-switch", "after-switch"]
        /// The points only a publish with `--store` passes (killed in `StorePublishTests`).
        static let storePoints = ["store-part-stored"]

        static let nodes = """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              router: 10.77.0.1
              pool: 10.77.0.100-10.77.0.199
            defaults:
              image: minimal
              cmdline: "console=ttyS0,115200"
            ranges:
              - {cidr: 10.77.0.96/28, append: "rack=r1"}
            nodes:
              - {mac: "52:54:00:77:00:01", hostname: node001, ip: 10.77.0.11}
              - {mac: "52-54-00-77-00-02", hostname: node002, ip: 10.77.0.12}
              - {mac: "52:54:00:77:00:03", hostname: node003, append: "debug"}
            """

        /// A small artifacts folder with a valid manifest (publish checks every file against it).
        static func artifact(in dir: String, _ name: String, content: String) throws -> String {
            let path = dir + "/artifacts-\(content)/\(name)"
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            var files: [String: Any] = [:]
            for file in ["vmlinuz", "initramfs.img", "image.tar.gz", "cmdline"] {
                try Data("\(name) \(file) \(content)\n".utf8).write(to: URL(fileURLWithPath: path + "/" + file))
                let info = try sha256File(path + "/" + file)
                files[file] = ["sha256": info.digest, "size": info.size]
            }
            let imageDigest = (files["image.tar.gz"] as! [String: Any])["sha256"] as! String
            let manifest: [String: Any] = [
                "name": name, "toolVersion": "t", "recipeDigest": "r", "sourceDateEpoch": 0, "kernelVersion": "6.1",
                "cmdline": "console=ttyS0 imagebuild.sha256=\(imageDigest)", "imageFormat": "tar.gz",
                "initramfsCompression": "gzip", "modules": [String](), "files": files,
            ]
            try JSONSerialization.data(withJSONObject: manifest, options: [.sortedKeys]).write(to: URL(fileURLWithPath: path + "/manifest.json"))
            _ = try Manifest.read(from: path)  // the JSON is what the tool reads
            return path
        }

        /// Every file a node could fetch, with its sha256: the boot files and configuration under the
        /// root's top-level names, and the image versions publish.json points at.
        static func fetchable(_ root: String) throws -> [String: String] {
            var result: [String: String] = [:]
            let top = try FileManager.default.contentsOfDirectory(atPath: root).filter { !$0.hasPrefix(".") && $0 != "images" }
            let listing = try Harness.shell("cd \(root) && find -L \(top.sorted().joined(separator: " ")) -type f | sort")
            for name in listing.stdout.split(separator: "\n") { result["./" + name] = try sha256File(root + "/" + name).digest }
            if let index = try? PublishIndex.read(root: root) {
                for image in index.images.values {
                    for file in try FileManager.default.contentsOfDirectory(atPath: root + "/" + image.path) {
                        result["./\(image.path)/\(file)"] = try sha256File(root + "/\(image.path)/\(file)").digest
                    }
                }
            }
            return result
        }

        @Test("every checkpoint in the publish code is one this suite kills at")
        func pointsAreTheCodesCheckpoints() throws {
            let sources = Harness.packageRoot + "/Sources/ImageBuildKit"
            var found: [String] = []
            for file in FileManager.default.enumerator(atPath: sources)?.compactMap({ $0 as? String }).filter({ $0.hasSuffix(".swift") }) ?? [] {
                let text = try String(contentsOfFile: sources + "/" + file, encoding: .utf8)
                let pattern = try Regex(#"checkpoint\("([a-z-]+)"\)"#)
                found += text.matches(of: pattern).compactMap { $0.output[1].substring.map(String.init) }
            }
            #expect(Set(found) == Set(Self.points + Self.storePoints), "checkpoints in Sources/ImageBuildKit: \(found.sorted())")
        }

        @Test("a publish killed at each step leaves the root whole; after the switch it is wholly new")
        func killedPublishLeavesTheRootWhole() async throws { try await Harness.blocking { try Self().killedPublishOnThread() } }
        func killedPublishOnThread() throws {
            let dir = Harness.temporaryDirectory("publish-kill")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let root = dir + "/tftpboot"
            let nodes = dir + "/nodes.yaml"
            try Self.nodes.write(toFile: nodes, atomically: true, encoding: .utf8)
            let v1 = try Self.artifact(in: dir, "minimal", content: "v1")
            let v2 = try Self.artifact(in: dir, "minimal", content: "v2")
            let first = try Harness.imagebuild(["publish", v1, "--root", root, "--nodes", nodes])
            try #require(first.status == 0, "publish v1: \(first.stderr)")
            let before = try Self.fetchable(root)

            for point in Self.points.dropLast() {
                let killed = try Harness.imagebuild(["publish", v2, "--root", root, "--nodes", nodes],
                                                    environment: [FaultInjection.variable: "publish:\(point)"])
                #expect(killed.status == 128 + SIGKILL, "publish was not killed at \(point) (status \(killed.status)): \(killed.stderr)")
                #expect(try Self.fetchable(root) == before, "the root changed after a kill at \(point)")
            }
            let killed = try Harness.imagebuild(["publish", v2, "--root", root, "--nodes", nodes],
                                                environment: [FaultInjection.variable: "publish:after-switch"])
            #expect(killed.status == 128 + SIGKILL, "publish was not killed after the switch (status \(killed.status)): \(killed.stderr)")
            let after = try Self.fetchable(root)
            #expect(after != before)
            let v2Kernel = try sha256File(v2 + "/vmlinuz").digest
            #expect(after.keys.contains { $0.hasPrefix("./images/minimal/") && after[$0] == v2Kernel }, "v2's kernel is not published")

            // A clean publish afterwards clears what the killed ones left, and rollback returns to v1's files.
            let clean = try Harness.imagebuild(["publish", v2, "--root", root, "--nodes", nodes])
            #expect(clean.status == 0, "\(clean.stderr)")
            let leftovers = try Harness.shell("cd \(root) && find . -name '*.tmp-*'").stdout
            #expect(leftovers.isEmpty, "left over: \(leftovers)")
            for _ in 0..<2 {
                let rollback = try Harness.imagebuild(["publish", "--rollback", "--root", root])
                #expect(rollback.status == 0, "\(rollback.stderr)")
            }
            #expect(try Self.fetchable(root) == before, "two rollbacks (v2 -> v2 -> v1) do not give v1's files back")
        }
    }
}
