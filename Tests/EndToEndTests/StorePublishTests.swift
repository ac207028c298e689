import Foundation
import ImageBuildKit
import TestSupport
import Testing

/// `imagebuild publish --store` against a real S3-compatible store (SeaweedFS's `weed server` on
/// loopback, started per test): objects uploaded and verified, boot files pointing at them, nothing sent
/// twice, a publish killed during an upload leaving the previous generation booting, and failures that
/// change nothing and print no secret.
extension EndToEnd {
    @Suite("imagebuild publish --store against SeaweedFS", .serialized,
           .enabled(if: SeaweedS3.unavailableReason == nil && publishBootloadersInstalled,
                    "needs weed in .venv-test and the boot loaders (scripts/setup installs them): \(SeaweedS3.unavailableReason ?? "")"))
    struct StorePublishTests {
        static let nodes = PublishKillTests.nodes

        /// An artifacts folder whose image is `imageSize` pseudo-random bytes (publish does not unpack it).
        static func artifact(in dir: String, content: String, imageSize: Int) throws -> String {
            let path = dir + "/artifacts-\(content)/minimal"
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            var generator = SystemRandomNumberGenerator()
            var bytes = [UInt8](repeating: 0, count: imageSize)
            for index in stride(from: 0, to: imageSize, by: 8) {
                let word = generator.next() as UInt64
                for offset in 0..<min(8, imageSize - index) { bytes[index + offset] = UInt8(truncatingIfNeeded: word >> (8 * offset)) }
            }
            try Data(bytes).write(to: URL(fileURLWithPath: path + "/image.tar.gz"))
            var files: [String: Any] = [:]
            for file in ["vmlinuz", "initramfs.img", "cmdline"] { try Data("minimal \(file) \(content)\n".utf8).write(to: URL(fileURLWithPath: path + "/" + file)) }
            for file in ["vmlinuz", "initramfs.img", "cmdline", "image.tar.gz"] {
                let info = try sha256File(path + "/" + file)
                files[file] = ["sha256": info.digest, "size": info.size]
            }
            let imageDigest = (files["image.tar.gz"] as! [String: Any])["sha256"] as! String
            let manifest: [String: Any] = [
                "name": "minimal", "toolVersion": "t", "recipeDigest": "r", "sourceDateEpoch": 0, "kernelVersion": "6.1",
                "cmdline": "console=ttyS0 imagebuild.sha256=\(imageDigest)", "imageFormat": "tar.gz",
                "initramfsCompression": "gzip", "modules": [String](), "files": files,
            ]
            try JSONSerialization.data(withJSONObject: manifest, options: [.sortedKeys]).write(to: URL(fileURLWithPath: path + "/manifest.json"))
            return path
        }

        /// A boot root, nodes.yaml, a store config with 5 MiB parts, and a running store.
        struct Setup {
            let dir: String
            let root: String
            let nodes: String
            let config: String
            let weed: SeaweedS3

            init() throws {
                dir = Harness.temporaryDirectory("store-publish")
                root = dir + "/tftpboot"
                nodes = dir + "/nodes.yaml"
                try StorePublishTests.nodes.write(toFile: nodes, atomically: true, encoding: .utf8)
                weed = try SeaweedS3(directory: dir + "/weed")
                config = dir + "/store.yaml"
                try "endpoint: \(weed.endpoint)\npart_size_mib: 5\n".write(toFile: config, atomically: true, encoding: .utf8)
            }

            /// Credentials as the environment gives them (the endpoint is in the config file).
            var environment: [String: String] { ["AWS_ACCESS_KEY_ID": weed.accessKey, "AWS_SECRET_ACCESS_KEY": weed.secretKey] }

            func publish(_ artifacts: [String], environment extra: [String: String] = [:]) throws -> ProcessResult {
                try Harness.imagebuild(["publish"] + artifacts + ["--root", root, "--nodes", nodes, "--store", "s3://boot/site", "--store-config", config],
                                       environment: environment.merging(extra) { $1 })
            }

            func close() {
                weed.stop()
                try? FileManager.default.removeItem(atPath: dir)
            }
        }

        @Test("publish --store uploads and verifies the image, boot files point at the store, a second publish uploads nothing")
        func publishUploadsAndPointsAtTheStore() async throws { try await Harness.blocking { try Self().uploadsOnThread() } }
        func uploadsOnThread() throws {
            let setup = try Setup()
            defer { setup.close() }
            let v1 = try Self.artifact(in: setup.dir, content: "v1", imageSize: (7 << 20) + 1234)
            let first = try setup.publish([v1])
            try #require(first.status == 0, "publish --store: \(first.output)")
            let index = try PublishIndex.read(root: setup.root)
            let image = try #require(index.images["minimal"])
            let key = "site/\(image.path)/image.tar.gz"
            let url = "\(setup.weed.endpoint)/boot/\(key)"
            #expect(image.storeURL == url)
            #expect(first.stdout.contains("\(image.path)/image.tar.gz: uploaded to s3://boot/site at \(setup.weed.endpoint), 7.0 MiB in 2 parts"), "\(first.stdout)")
            #expect(first.stdout.contains("nodes fetch it from \(url)"), "\(first.stdout)")
            let head = try #require(try setup.weed.head(key), "the image is not in the store")
            #expect(head["x-amz-meta-sha256"] == image.sha256 && head["content-length"] == "\((7 << 20) + 1234)")
            #expect(try setup.weed.get(key) == FileManager.default.contents(atPath: v1 + "/image.tar.gz"))

            // Every boot file names the store's copy; kernel and initramfs stay in the root.
            for file in ["pxelinux.cfg/01-52-54-00-77-00-01", "pxelinux.cfg/default", "pxelinux.cfg/0A4D006", "ipxe/nodes/52-54-00-77-00-02.ipxe"] {
                let text = try String(contentsOfFile: setup.root + "/" + file, encoding: .utf8)
                #expect(text.contains("imagebuild.image=\(url) "), "\(file):\n\(text)")
                #expect(text.contains("10.77.0.1/\(image.path)/vmlinuz") || text.contains(" \(image.path)/vmlinuz"), "\(file):\n\(text)")
            }
            // No secret anywhere publish wrote or printed.
            let grep = try Harness.shell("grep -rl -- '\(setup.weed.secretKey)' \(setup.root) \(setup.root)/.publish || true")
            #expect(grep.stdout.isEmpty, "the secret is in \(grep.stdout)")
            #expect(!first.output.contains(setup.weed.secretKey))

            let second = try setup.publish([v1])
            #expect(second.status == 0, "\(second.output)")
            #expect(second.stdout.contains("already in s3://boot/site") && !second.stdout.contains("uploaded to"), "\(second.stdout)")
            #expect(try PublishIndex.read(root: setup.root).generation == index.generation + 1)

            // Without --store, the next generation serves the image from the root again.
            let plain = try Harness.imagebuild(["publish", v1, "--root", setup.root, "--nodes", setup.nodes])
            #expect(plain.status == 0, "\(plain.output)")
            let text = try String(contentsOfFile: setup.root + "/pxelinux.cfg/default", encoding: .utf8)
            #expect(text.contains("imagebuild.image=http://10.77.0.1/\(image.path)/image.tar.gz"), "\(text)")
        }

        @Test("a publish killed during an upload leaves the previous generation current, its image still in the store")
        func killedDuringUpload() async throws { try await Harness.blocking { try Self().killedOnThread() } }
        func killedOnThread() throws {
            let setup = try Setup()
            defer { setup.close() }
            let v1 = try Self.artifact(in: setup.dir, content: "v1", imageSize: 1 << 20)
            let first = try setup.publish([v1])
            try #require(first.status == 0, "publish v1: \(first.output)")
            let before = try PublishKillTests.fetchable(setup.root)
            let v1Image = try #require(try PublishIndex.read(root: setup.root).images["minimal"])

            let v2 = try Self.artifact(in: setup.dir, content: "v2", imageSize: (11 << 20) + 7)  // three parts
            let killed = try setup.publish([v2], environment: [FaultInjection.variable: "publish:store-part-stored"])
            #expect(killed.status == 128 + SIGKILL, "publish was not killed after the first part (status \(killed.status)): \(killed.output)")
            #expect(try PublishKillTests.fetchable(setup.root) == before, "the root changed after a kill during the upload")
            let index = try PublishIndex.read(root: setup.root)
            #expect(index.images["minimal"] == v1Image)
            #expect(try setup.weed.get("site/\(v1Image.path)/image.tar.gz") == FileManager.default.contents(atPath: v1 + "/image.tar.gz"),
                    "the previous image is not fetchable from the store")
            let v2Digest = try sha256File(v2 + "/image.tar.gz").digest
            #expect(!(try setup.weed.keys(prefix: "site/images/")).contains { $0.hasSuffix("image.tar.gz") && $0 != "site/\(v1Image.path)/image.tar.gz" },
                    "a half-uploaded object is visible")

            // The next publish goes through (and leaves no multipart upload of the dead one open).
            let clean = try setup.publish([v2])
            #expect(clean.status == 0, "\(clean.output)")
            let v2Image = try #require(try PublishIndex.read(root: setup.root).images["minimal"])
            #expect(v2Image.sha256 == v2Digest)
            #expect(try setup.weed.head("site/\(v2Image.path)/image.tar.gz")?["x-amz-meta-sha256"] == v2Digest)
            let pending = try setup.weed.pendingUploads()
            #expect(!pending.contains("<UploadId>"), "the killed publish's upload is still open: \(pending)")
        }

        @Test("wrong credentials, no credentials, an unreachable endpoint: one line naming the store, nothing changed, no secret printed")
        func failuresChangeNothing() async throws { try await Harness.blocking { try Self().failuresOnThread() } }
        func failuresOnThread() throws {
            let setup = try Setup()
            defer { setup.close() }
            let v1 = try Self.artifact(in: setup.dir, content: "v1", imageSize: 100_000)
            let first = try Harness.imagebuild(["publish", v1, "--root", setup.root, "--nodes", setup.nodes])
            try #require(first.status == 0, "\(first.output)")
            let before = try PublishKillTests.fetchable(setup.root)
            let generations = try FileManager.default.contentsOfDirectory(atPath: setup.root + "/.publish").sorted()
            let v2 = try Self.artifact(in: setup.dir, content: "v2", imageSize: 100_000)

            let wrong = "not-" + setup.weed.secretKey
            let denied = try setup.publish([v2], environment: ["AWS_SECRET_ACCESS_KEY": wrong])
            #expect(denied.status == 1)
            #expect(denied.stderr.hasPrefix("imagebuild: error: s3://boot/site at \(setup.weed.endpoint): access denied for access key \(setup.weed.accessKey)"), "\(denied.stderr)")
            #expect(denied.stderr.split(separator: "\n").count == 1, "\(denied.stderr)")
            #expect(!denied.output.contains(wrong) && !denied.output.contains(setup.weed.secretKey), "\(denied.output)")

            let none = try Harness.imagebuild(["publish", v2, "--root", setup.root, "--nodes", setup.nodes, "--store", "s3://boot/site", "--store-config", setup.config],
                                              environment: ["AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""])
            #expect(none.status == 1 && none.stderr.contains("s3://boot at \(setup.weed.endpoint): no credentials"), "\(none.stderr)")

            let closed = try PortHolder(.tcp, host: "127.0.0.1").port
            let elsewhere = setup.dir + "/elsewhere.yaml"
            try "endpoint: http://127.0.0.1:\(closed)\n".write(toFile: elsewhere, atomically: true, encoding: .utf8)
            let unreachable = try Harness.imagebuild(["publish", v2, "--root", setup.root, "--nodes", setup.nodes, "--store", "s3://boot/site", "--store-config", elsewhere],
                                                     environment: setup.environment)
            #expect(unreachable.status == 1 && unreachable.stderr.contains("s3://boot/site at http://127.0.0.1:\(closed): cannot reach the store"), "\(unreachable.stderr)")

            let missing = try Harness.imagebuild(["publish", v2, "--root", setup.root, "--nodes", setup.nodes, "--store", "s3://nobucket/site", "--store-config", setup.config],
                                                 environment: setup.environment)
            #expect(missing.status == 1 && missing.stderr.contains("no bucket 'nobucket'"), "\(missing.stderr)")

            #expect(try PublishKillTests.fetchable(setup.root) == before, "a failed publish changed the root")
            #expect(try FileManager.default.contentsOfDirectory(atPath: setup.root + "/.publish").sorted() == generations)
            #expect(try FileManager.default.contentsOfDirectory(atPath: setup.root + "/images/minimal").count == 1, "a failed publish copied an image in")
        }
    }
}
