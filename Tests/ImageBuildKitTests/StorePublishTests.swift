import Foundation
import Testing
@testable import ImageBuildKit

/// `publish --store` as ImageBuildKit sees it: where a node's image URL comes from, what publish.json
/// keeps, and the publisher's order (store first, generation after). The S3 store itself, against a
/// real SeaweedFS, is in ObjectStoreTests and EndToEndTests.
@Suite(.serialized) struct StorePublishTests {
    let dir = TemporaryDirectory("store-publish")
    let inventory = try! InventoryLoader.parse(sampleInventory.replacingOccurrences(of: "image: compute", with: "image: minimal"), file: "nodes.yaml")
    static let storeURL = "http://s3.example:8333/boot/site/images/minimal/0123456789abcdef/image.tar.gz"

    @Test func theImageURLIsTheStoresWhenPublishPutItThereAndKernelAndInitramfsStayInTheRoot() {
        let renderer = BootRenderer(network: inventory.network)
        var image = sampleImage("minimal")
        #expect(image.imageURL(httpBase: "http://10.77.0.1") == "http://10.77.0.1/images/minimal/0123456789abcdef/image.tar.gz")
        image.storeURL = Self.storeURL
        #expect(image.imageURL(httpBase: "http://10.77.0.1") == Self.storeURL)
        let target = BootTarget(title: "node002", image: image, cmdline: "")
        let line = renderer.kernelCommandLine(target)
        #expect(line.contains(" imagebuild.image=\(Self.storeURL) "), "\(line)")
        #expect(line.contains("imagebuild.server=http://10.77.0.1 ") || line.hasSuffix("imagebuild.server=http://10.77.0.1"), "\(line)")
        let pxelinux = renderer.pxelinuxConfig(target)
        #expect(pxelinux.contains("KERNEL http://10.77.0.1/images/minimal/0123456789abcdef/vmlinuz"), "\(pxelinux)")
        #expect(pxelinux.contains("imagebuild.image=\(Self.storeURL)"))
        let ipxe = renderer.ipxeScript(target)
        #expect(ipxe.contains("kernel http://10.77.0.1/images/minimal/0123456789abcdef/vmlinuz"), "\(ipxe)")
        #expect(ipxe.contains("imagebuild.image=\(Self.storeURL)"))
        let grub = renderer.grubConfig(target, mac: nil)
        #expect(grub.contains("linux /images/minimal/0123456789abcdef/vmlinuz") && grub.contains("imagebuild.image=\(Self.storeURL)"), "\(grub)")
    }

    /// The bootscript endpoint renders from publish.json through BootPlan: the store URL it kept gives the
    /// same script publish wrote.
    @Test func theBootPlanOfAPublishedIndexGivesTheStoreURL() throws {
        var image = sampleImage("minimal")
        image.storeURL = Self.storeURL
        let plan = BootPlan(inventory: inventory, images: ["minimal": image])
        let (files, index) = plan.files(generation: 1)
        let decoded = try JSONDecoder().decode(PublishIndex.self, from: JSONEncoder().encode(index))
        let fromIndex = BootPlan(inventory: inventory, index: decoded)
        let mac = MACAddress("52:54:00:77:00:02")!
        guard case .boot(let target, _) = fromIndex.answer(mac: mac, ip: nil) else { Issue.record("node002 does not boot"); return }
        let script = fromIndex.renderer.ipxeScript(target)
        #expect(script == files.first { $0.path == BootPlan.ipxeScriptPath(mac) }?.text)
        #expect(script.contains("imagebuild.image=\(Self.storeURL)"))
    }

    @Test func publishJSONKeepsTheStoreURLAndReadsOldIndexesWithout() throws {
        var image = sampleImage("minimal")
        image.storeURL = Self.storeURL
        let index = PublishIndex(generation: 3, images: ["minimal": image], defaultImage: "minimal", nodes: [], ranges: [])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let text = String(decoding: try encoder.encode(index), as: UTF8.self)
        #expect(text.contains("\"storeURL\":\"\(Self.storeURL)\""), "\(text)")
        #expect(try JSONDecoder().decode(PublishIndex.self, from: Data(text.utf8)) == index)
        // An index written before stores existed: no key, nil, and written again without one.
        let old = """
            {"defaultImage":"minimal","generation":2,"images":{"minimal":{"cmdline":"console=ttyS0 imagebuild.sha256=aa",\
            "digest":"0123456789abcdef","imageFile":"image.tar.gz","kernelVersion":"6.1","name":"minimal"}},"nodes":[],"ranges":[]}
            """
        let decoded = try JSONDecoder().decode(PublishIndex.self, from: Data(old.utf8))
        #expect(decoded.images["minimal"]?.storeURL == nil)
        #expect(decoded.images["minimal"]?.imageURL(httpBase: "http://s") == "http://s/images/minimal/0123456789abcdef/image.tar.gz")
        #expect(!String(decoding: try encoder.encode(decoded), as: UTF8.self).contains("storeURL"))
    }

    /// A store for the publisher's order alone (the real one, S3 against SeaweedFS, is tested where it
    /// runs): records what it was given, and fails when told to.
    final class RecordingStore: ImageStore, @unchecked Sendable {
        let lock = NSLock()
        var objects: [StoreObject] = []
        var generationsSeen: [Int?] = []
        let root: String
        let fail: Bool
        init(root: String, fail: Bool) {
            self.root = root
            self.fail = fail
        }
        func put(_ object: StoreObject, partStored: @escaping @Sendable () -> Void) async throws -> String {
            let current = try? FileManager.default.destinationOfSymbolicLink(atPath: root + "/.publish/current")
            lock.withLock {
                objects.append(object)
                generationsSeen.append(current.flatMap { Int($0.dropFirst(4)) })
            }
            if fail { throw PublishError.badArtifact("the store refused it") }
            partStored()
            return "http://store.test/boot/" + object.key
        }
    }

    @Test(.enabled(if: PublisherTests.bootloadersInstalled, PublisherTests.needsBootloaders))
    func publishStoresEveryImageBeforeItWritesTheGenerationAndAFailureChangesNothing() async throws {
        let root = dir.path + "/tftpboot"
        let tests = PublisherTests()
        let publisher = Publisher(root: root, inventory: inventory)
        try publisher.publish(artifacts: [try tests.artifact("minimal", content: "v1")])
        let before = try tests.fetchable(root)

        let failing = RecordingStore(root: root, fail: true)
        await #expect(throws: PublishError.self) { try await publisher.publish(artifacts: [try tests.artifact("minimal", content: "v2")], store: failing) }
        #expect(try tests.fetchable(root) == before, "a failed upload changed what nodes fetch")
        #expect(failing.objects.count == 1)

        let store = RecordingStore(root: root, fail: false)
        let index = try await publisher.publish(artifacts: [try tests.artifact("minimal", content: "v2")], store: store)
        let image = try #require(index.images["minimal"])
        #expect(store.objects == [StoreObject(key: "\(image.path)/image.tar.gz", file: root + "/\(image.path)/image.tar.gz",
                                              size: Int64("minimal image.tar.gz v2\n".utf8.count), sha256: image.sha256!)])
        #expect(store.generationsSeen == [1], "the store was called after the switch")
        #expect(image.storeURL == "http://store.test/boot/\(image.path)/image.tar.gz")
        #expect(try PublishIndex.read(root: root).images["minimal"]?.storeURL == image.storeURL)
        let config = try String(contentsOfFile: root + "/pxelinux.cfg/default", encoding: .utf8)
        #expect(config.contains("imagebuild.image=http://store.test/boot/\(image.path)/image.tar.gz"), "\(config)")

        // Without a store, the next generation serves it from the root again.
        let plain = try publisher.publish(artifacts: [])
        #expect(plain.images["minimal"]?.storeURL == nil)
        #expect(try String(contentsOfFile: root + "/pxelinux.cfg/default", encoding: .utf8).contains("imagebuild.image=http://10.77.0.1/\(image.path)/image.tar.gz"))
    }

    /// A swarm image's torrent names the store as its web seed: nodes that find no peer fetch pieces
    /// where they would fetch the whole image.
    @Test(.enabled(if: PublisherTests.bootloadersInstalled, PublisherTests.needsBootloaders))
    func theTorrentsWebSeedIsTheStore() async throws {
        let swarm = SwarmPublishTests()
        let inventory = try InventoryLoader.parse(SwarmPublishTests.inventoryText, file: "nodes.yaml")
        let root = dir.path + "/swarm/tftpboot"
        let store = RecordingStore(root: root, fail: false)
        let index = try await Publisher(root: root, inventory: inventory).publish(artifacts: [try swarm.artifact(size: 1 << 20)], store: store)
        let image = try #require(index.images["fs"])
        let torrent = try Bencode.decode(Array(try Data(contentsOf: URL(fileURLWithPath: root + "/" + Torrent.path(of: image)))))
        #expect(torrent["url-list"] == .list([.string("http://store.test/boot/\(image.path)/image.squashfs")]))
        #expect(torrent["announce"]?.stringValue == "http://10.77.0.1:8080/boot/v1/announce", "the tracker is still the boot server")
    }
}
