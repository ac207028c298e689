import Foundation
import Testing
import TestSupport
@testable import ImageBuildKit

/// Golden files for rendered boot configuration, in Snapshots/ (`Snapshot`: `IMAGEBUILD_RECORD=1` re-records them).
func assertSnapshot(_ text: String, named name: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) {
    let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Snapshots/\(name)").path
    Snapshot.expect(text, matches: path, sourceLocation: sourceLocation)
}

let sampleInventory = """
    network:
      server: 10.77.0.1
      subnet: 10.77.0.0/24
      router: 10.77.0.1
      pool: 10.77.0.100-10.77.0.199
    defaults:
      image: minimal
      cmdline: "console=ttyS0,115200"
    groups:
      gpu: {image: compute, cmdline: "console=ttyS0 nomodeset"}
    ranges:
      - {cidr: 10.77.0.96/28, append: "rack=r1"}
    nodes:
      - {mac: "52:54:00:77:00:01", hostname: node001, ip: 10.77.0.11, group: gpu}
      - {mac: "52-54-00-77-00-02", hostname: node002, ip: 10.77.0.12}
      - {mac: "52:54:00:77:00:03", hostname: node003, append: "debug"}
    """

func sampleImage(_ name: String, digest: String = "0123456789abcdef") -> PublishedImage {
    let manifest = Manifest(name: name, toolVersion: "t", recipeDigest: "r", inputDigest: nil, sourceDateEpoch: 0,
                            kernelVersion: "6.1.0-56-amd64", cmdline: "console=ttyS0,115200 imagebuild.sha256=aa",
                            imageFormat: "tar.gz", initramfsCompression: "gzip", modules: [],
                            files: ["image.tar.gz": .init(sha256: "aa", size: 1)])
    var image = PublishedImage(manifest: manifest)
    image.digest = digest
    return image
}

@Suite struct RenderingTests {
    let inventory = try! InventoryLoader.parse(sampleInventory, file: "nodes.yaml")

    @Test func inheritance() {
        let node1 = inventory.node(mac: MACAddress("52:54:00:77:00:01")!)!
        #expect(inventory.resolved(node1).image == "compute")
        #expect(inventory.resolved(node1).cmdline == "console=ttyS0 nomodeset")
        let node3 = inventory.node(mac: MACAddress("52:54:00:77:00:03")!)!
        #expect(inventory.resolved(node3) == .init(image: "minimal", cmdline: "console=ttyS0,115200 debug", replacesImageCommandLine: true))
        #expect(inventory.ranges[0].pxelinuxName == "0A4D006")
    }

    @Test func anInventoryCmdlineReplacesTheRecipesAndAppendAddsToIt() throws {
        let renderer = BootRenderer(network: inventory.network)
        let image = sampleImage("compute")  // its own line: "console=ttyS0,115200 imagebuild.sha256=aa"
        let node1 = inventory.node(mac: MACAddress("52:54:00:77:00:01")!)!  // group gpu: cmdline "console=ttyS0 nomodeset"
        let replaced = renderer.kernelCommandLine(BootTarget(title: "n1", image: image, resolution: inventory.resolved(node1)))
        #expect(replaced.hasPrefix("console=ttyS0 nomodeset imagebuild.sha256=aa imagebuild.image="))
        #expect(!replaced.contains("115200"), "the recipe's console= stayed: \(replaced)")
        // Only append at every level: the recipe's line stays and the inventory's follows it.
        let appendOnly = try InventoryLoader.parse("""
            network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
            defaults: {image: compute, append: "rack=r1"}
            nodes:
              - {mac: "52:54:00:77:00:09", hostname: n9, append: debug}
            """, file: "nodes.yaml")
        let node9 = appendOnly.nodes[0]
        #expect(appendOnly.resolved(node9) == .init(image: "compute", cmdline: "rack=r1 debug", replacesImageCommandLine: false))
        let appended = renderer.kernelCommandLine(BootTarget(title: "n9", image: image, resolution: appendOnly.resolved(node9)))
        #expect(appended.hasPrefix("console=ttyS0,115200 imagebuild.sha256=aa rack=r1 debug imagebuild.image="))
    }

    @Test func renderedFilesMatchSnapshots() throws {
        let renderer = BootRenderer(network: inventory.network)
        let node = inventory.node(mac: MACAddress("52:54:00:77:00:01")!)!
        let resolved = inventory.resolved(node)
        let target = BootTarget(title: "node001 (52:54:00:77:00:01)", image: sampleImage("compute"), cmdline: resolved.cmdline)
        assertSnapshot(renderer.pxelinuxConfig(target), named: "pxelinux-node-lpxelinux.cfg")
        assertSnapshot(renderer.ipxeScript(target), named: "node.ipxe")
        assertSnapshot(renderer.bootIPXE(bootScriptURL: inventory.network.httpBase + BootPlan.bootScriptPath), named: "boot.ipxe")
        assertSnapshot(renderer.pxelinuxUnregistered(), named: "pxelinux-unregistered.cfg")
        assertSnapshot(renderer.ipxeUnregistered(), named: "unregistered.ipxe")
        var tftp = inventory.network
        tftp.biosLoader = "pxelinux.0"
        assertSnapshot(BootRenderer(network: tftp).pxelinuxConfig(target), named: "pxelinux-node-tftp.cfg")
        assertSnapshot(renderer.grubConfig(target, mac: node.mac), named: "grub-node.cfg")
        assertSnapshot(renderer.grubConfig(target, mac: nil), named: "grub-default.cfg")
        assertSnapshot(renderer.grubUnregistered(), named: "grub-unregistered.cfg")
        assertSnapshot(renderer.grubEntry(), named: "grub-entry.cfg")
    }
}

@Suite struct InventoryErrorTests {
    func error(_ nodes: String, network: String = "network: {server: 10.77.0.1, subnet: 10.77.0.0/24, pool: 10.77.0.100-10.77.0.199}\n") -> String {
        do {
            _ = try InventoryLoader.parse(network + "defaults: {image: minimal}\ngroups: {gpu: {image: minimal}}\nnodes:\n" + nodes, file: "nodes.yaml")
            return "no error"
        } catch { return "\(error)" }
    }

    @Test func duplicateMACNamesBothEntries() {
        #expect(error("  - {mac: \"52:54:00:77:00:01\", hostname: a}\n  - {mac: \"52-54-00-77-00-01\", hostname: b}\n")
                == "nodes.yaml:6:11: duplicate MAC 52:54:00:77:00:01: b and a (nodes.yaml:5:5)")
    }

    @Test func duplicateHostname() {
        #expect(error("  - {mac: \"52:54:00:77:00:01\", hostname: a}\n  - {mac: \"52:54:00:77:00:02\", hostname: A}\n")
                == "nodes.yaml:6:42: duplicate hostname 'A': also 52:54:00:77:00:01 (nodes.yaml:5:5)")
    }

    @Test func duplicateIP() {
        #expect(error("  - {mac: \"52:54:00:77:00:01\", hostname: a, ip: 10.77.0.5}\n  - {mac: \"52:54:00:77:00:02\", hostname: b, ip: 10.77.0.5}\n")
                == "nodes.yaml:6:49: duplicate IP 10.77.0.5: b and a (nodes.yaml:5:5)")
    }

    @Test func ipOutsideSubnet() {
        #expect(error("  - {mac: \"52:54:00:77:00:01\", hostname: a, ip: 10.78.0.5}\n")
                == "nodes.yaml:5:49: 10.78.0.5 is outside the subnet 10.77.0.0/24")
    }

    @Test func ipInsidePool() {
        #expect(error("  - {mac: \"52:54:00:77:00:01\", hostname: a, ip: 10.77.0.150}\n")
                == "nodes.yaml:5:49: 10.77.0.150 is inside the dynamic pool 10.77.0.100-10.77.0.199 (fixed addresses must be outside the pool)")
    }

    @Test func malformedMAC() {
        #expect(error("  - {mac: \"52:54:00:77:00\", hostname: a}\n")
                == "nodes.yaml:5:11: malformed MAC '52:54:00:77:00' (six hex bytes, e.g. 52:54:00:77:00:01)")
    }

    @Test func unknownGroup() {
        #expect(error("  - {mac: \"52:54:00:77:00:01\", hostname: a, group: gpus}\n")
                == "nodes.yaml:5:52: unknown group 'gpus' (did you mean 'gpu'?)")
    }

    @Test func unknownKey() {
        #expect(error("  - {mac: \"52:54:00:77:00:01\", hostnme: a}\n") == "nodes.yaml:5:32: unknown key 'hostnme' (did you mean 'hostname'?)")
    }

    @Test func loaderResolvesNodeGroupDefaults() throws {
        let inventory = try InventoryLoader.parse("""
            network: {server: 10.77.0.1, subnet: 10.77.0.0/24, bios_loader: undionly.kpxe}
            defaults: {image: minimal, loader: ipxe}
            groups: {vms: {loader: pxelinux}}
            nodes:
              - {mac: "52:54:00:77:00:01", hostname: a, group: vms}
              - {mac: "52:54:00:77:00:02", hostname: b}
              - {mac: "52:54:00:77:00:03", hostname: c, group: vms, loader: ipxe}
            """, file: "nodes.yaml")
        #expect(inventory.nodes.map { inventory.loader(for: $0) } == [.pxelinux, .ipxe, .ipxe])
        #expect(inventory.loader(for: nil) == .ipxe)
        // undionly.kpxe is not a pxelinux: `loader: pxelinux` machines get lpxelinux.
        #expect(inventory.pxelinuxLoader == "lpxelinux.0")
    }

    @Test func unknownLoader() {
        #expect(error("  - {mac: \"52:54:00:77:00:01\", hostname: a, loader: shim}\n")
                == "nodes.yaml:5:53: unknown loader 'shim' (pxelinux, ipxe or grub (or leave it out: the firmware decides))")
    }

    @Test func rangeCannotChooseTheLoader() {
        let text = "network: {server: 10.77.0.1, subnet: 10.77.0.0/24}\nranges:\n  - {cidr: 10.77.0.96/28, loader: pxelinux}\n"
        #expect(throws: ConfigError(ConfigLocation(file: "nodes.yaml", line: 3, column: 35), "a range cannot choose the loader",
                                    hint: "DHCP picks the loader before the machine has an address; set 'loader' in defaults, a group or a node")) {
            try InventoryLoader.parse(text, file: "nodes.yaml")
        }
    }

    @Test func unknownImage() throws {
        let inventory = try InventoryLoader.parse(sampleInventory, file: "nodes.yaml")
        #expect(throws: ConfigError(ConfigLocation(file: "nodes.yaml", line: 10, column: 8), "unknown image 'compute'", hint: "published: minimal")) {
            try inventory.checkImages(["minimal"])
        }
    }
}

/// Publishing into a real boot root (killed at every step: EndToEndTests/PublishKillTests).
@Suite(.serialized) struct PublisherTests {
    let dir = TemporaryDirectory("publish")

    /// A fake artifacts folder with a valid manifest.
    func artifact(_ name: String, content: String, arch: Architecture? = nil) throws -> String {
        let path = dir.path + "/artifacts/\(name)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        var files: [String: Manifest.FileInfo] = [:]
        let loaders = arch?.networkGRUB.map { [$0.signedArtifact, $0.httpArtifact] } ?? []
        for file in ["vmlinuz", "initramfs.img", "image.tar.gz", "cmdline"] + loaders {
            try Data("\(name) \(file) \(content)\n".utf8).write(to: URL(fileURLWithPath: path + "/" + file))
            let info = try sha256File(path + "/" + file)
            files[file] = .init(sha256: info.digest, size: info.size)
        }
        let manifest = Manifest(name: name, toolVersion: "t", recipeDigest: "r", inputDigest: nil, sourceDateEpoch: 0,
                                kernelVersion: "6.1", cmdline: "console=ttyS0 imagebuild.sha256=\(files["image.tar.gz"]!.sha256)",
                                imageFormat: "tar.gz", initramfsCompression: "gzip", modules: [], files: files, arch: arch)
        try manifest.encoded().write(to: URL(fileURLWithPath: path + "/manifest.json"))
        return path
    }

    /// An arm64 image: its GRUBs are laid where DHCP sends arm64 firmware, with GRUB's module lists
    /// (empty), and its nodes get the `grub.cfg` walk; a node said to be arm64 but pointed at an amd64
    /// image is refused where `arch:` says so, and nothing is published.
    @Test(.enabled(if: bootloadersInstalled, needsBootloaders)) func publishesTheArm64Loaders() throws {
        let yaml = sampleInventory.replacingOccurrences(of: "image: compute", with: "image: minimal")
            .replacingOccurrences(of: "ip: 10.77.0.12}", with: "ip: 10.77.0.12, image: arm, arch: arm64}")
        let inventory = try InventoryLoader.parse(yaml, file: "nodes.yaml")
        let arm = try artifact("arm", content: "v1", arch: .arm64)
        let root = dir.path + "/tftpboot"
        let index = try Publisher(root: root, inventory: inventory).publish(artifacts: [try artifact("minimal", content: "v1", arch: .amd64), arm])
        let files = try fetchable(root)
        #expect(index.images["arm"]?.arch == .arm64 && index.images["arm"]?.loaderFiles == ["grubnetaa64.efi", "grubaa64-http.efi"])
        #expect(files["./grub/grubaa64.efi"] == (try sha256File(arm + "/grubnetaa64.efi").digest))
        #expect(files["./grub/grubaa64-http.efi"] == (try sha256File(arm + "/grubaa64-http.efi").digest))
        for list in BootPlan.arm64GRUBModuleLists {
            #expect(files["./" + list] == (try sha256File("/dev/null").digest), "\(list) is not laid empty")
        }
        let config = try String(contentsOfFile: root + "/grub/grub.cfg-01-52-54-00-77-00-02", encoding: .utf8)
        #expect(config.contains(#"if [ "$grub_cpu" != "arm64" ]; then"#) && config.contains("/images/arm/"))
        #expect(files["./grub/grub.cfg"] != nil && files["./grub/grub.cfg-default"] != nil)
        #expect(files["./grub/grub.cfg-01-52-54-00-77-00-01"] == nil, "node001 boots an amd64 image without loader: grub")
        #expect(files["./grub/grubx64.efi"] == nil, "no machine has loader: grub")

        let wrong = yaml.replacingOccurrences(of: "hostname: node003,", with: "hostname: node003, arch: arm64,")
        let before = try fetchable(root)
        let error = #expect(throws: ConfigError.self) {
            try Publisher(root: root, inventory: try InventoryLoader.parse(wrong, file: "nodes.yaml")).publish(artifacts: [arm])
        }
        #expect(error.map { "\($0)" }?.hasPrefix("nodes.yaml:16:57: node003 (52:54:00:77:00:03) is arm64, but its image 'minimal' is built for amd64") == true,
                "\(String(describing: error))")
        #expect(try fetchable(root) == before, "a refused publish changed the root")
    }

    static let bootloadersInstalled = Publisher.bootloaders.allSatisfy { FileManager.default.fileExists(atPath: $0.source) }
    static let needsBootloaders: Comment = "needs pxelinux, syslinux-common and ipxe (scripts/setup installs them)"

    /// Every file a node could fetch: the boot files and configuration under the
    /// root's top-level names, and the image versions publish.json points at.
    func fetchable(_ root: String) throws -> [String: String] {
        var result: [String: String] = [:]
        let top = try FileManager.default.contentsOfDirectory(atPath: root).filter { !$0.hasPrefix(".") && $0 != "images" }
        let names = try sh("cd \(root) && find -L \(top.sorted().joined(separator: " ")) -type f | sort").split(separator: "\n")
        for name in names { result["./" + name] = try sha256File(root + "/" + name).digest }
        if let index = try? PublishIndex.read(root: root) {
            for image in index.images.values {
                for file in try FileManager.default.contentsOfDirectory(atPath: root + "/" + image.path) {
                    result["./\(image.path)/\(file)"] = try sha256File(root + "/\(image.path)/\(file)").digest
                }
            }
        }
        return result
    }

    @Test(.enabled(if: bootloadersInstalled, needsBootloaders)) func publishesLayoutAndIndex() throws {
        let inventory = try InventoryLoader.parse(sampleInventory.replacingOccurrences(of: "image: compute", with: "image: minimal"), file: "nodes.yaml")
        let root = dir.path + "/tftpboot"
        let index = try Publisher(root: root, inventory: inventory).publish(artifacts: [try artifact("minimal", content: "v1")])
        let files = try fetchable(root)
        let digest = index.images["minimal"]!.digest
        for name in ["./pxelinux.0", "./lpxelinux.0", "./ldlinux.c32", "./ipxe/undionly.kpxe", "./ipxe/ipxe.efi", "./ipxe/snponly.efi",
                     "./pxelinux.cfg/default", "./pxelinux.cfg/01-52-54-00-77-00-01", "./pxelinux.cfg/0A4D000B", "./pxelinux.cfg/0A4D006",
                     "./ipxe/boot.ipxe", "./ipxe/default.ipxe", "./ipxe/nodes/52-54-00-77-00-02.ipxe", "./publish.json",
                     "./images/minimal/\(digest)/vmlinuz", "./images/minimal/\(digest)/image.tar.gz"] {
            #expect(files[name] != nil, "\(name) not published")
        }
        #expect(files["./pxelinux.cfg/01-52-54-00-77-00-03"] != nil)
        #expect(files["./pxelinux.cfg/0A4D000B"] == files["./pxelinux.cfg/01-52-54-00-77-00-01"])
        #expect(index.nodes.map(\.hostname) == ["node001", "node002", "node003"])
        #expect(try PublishIndex.read(root: root) == index)
    }

    /// `loader: grub`: Debian's signed shim and GRUB are laid byte for byte (their signatures are what
    /// Secure Boot checks), with the GRUB files, and two publishes give the same bytes. A missing package
    /// fails the test: scripts/setup installs it.
    @Test(.enabled(if: bootloadersInstalled, needsBootloaders)) func publishesTheSecureBootChainReproducibly() throws {
        for loader in Publisher.secureBootLoaders where !FileManager.default.fileExists(atPath: loader.source) {
            Issue.record("\(loader.source) is missing: apt-get install \(loader.package) (scripts/setup installs it)")
            return
        }
        let yaml = sampleInventory.replacingOccurrences(of: "image: compute", with: "image: minimal")
            .replacingOccurrences(of: "ip: 10.77.0.12}", with: "ip: 10.77.0.12, loader: grub}")
        let inventory = try InventoryLoader.parse(yaml, file: "nodes.yaml")
        let artifact = try artifact("minimal", content: "v1")
        var roots: [[String: String]] = []
        for name in ["a", "b"] {
            let root = dir.path + "/\(name)/tftpboot"
            try Publisher(root: root, inventory: inventory).publish(artifacts: [artifact])
            roots.append(try fetchable(root))
        }
        let files = roots[0]
        #expect(files["./grub/shimx64.efi"] == (try sha256File("/usr/lib/shim/shimx64.efi.signed").digest))
        #expect(files["./grub/grubx64.efi"] == (try sha256File("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed").digest))
        for name in ["./grub/grub.cfg", "./grub/grub.cfg-default", "./grub/grub.cfg-01-52-54-00-77-00-02"] {
            #expect(files[name] != nil, "\(name) not published")
        }
        #expect(files["./grub/grub.cfg-01-52-54-00-77-00-01"] == nil, "node001 has no loader: grub")
        #expect(roots[0] == roots[1], "two publishes differ")

        // Without `loader: grub` anywhere, neither package is needed and nothing is laid.
        let plain = dir.path + "/plain/tftpboot"
        try Publisher(root: plain, inventory: try InventoryLoader.parse(sampleInventory.replacingOccurrences(of: "image: compute", with: "image: minimal"), file: "nodes.yaml"))
            .publish(artifacts: [artifact])
        #expect(try fetchable(plain).keys.filter { $0.hasPrefix("./grub/") }.isEmpty)
    }

    @Test func refusesAnArtifactThatDoesNotMatchItsManifest() throws {
        let inventory = try InventoryLoader.parse(sampleInventory.replacingOccurrences(of: "image: compute", with: "image: minimal"), file: "nodes.yaml")
        let path = try artifact("minimal", content: "v1")
        try Data("tampered".utf8).write(to: URL(fileURLWithPath: path + "/image.tar.gz"))
        #expect(throws: PublishError.self) { try Publisher(root: dir.path + "/r", inventory: inventory).publish(artifacts: [path]) }
    }

    @Test(.enabled(if: bootloadersInstalled, needsBootloaders)) func keepsTheLastNVersions() throws {
        let inventory = try InventoryLoader.parse(sampleInventory.replacingOccurrences(of: "image: compute", with: "image: minimal"), file: "nodes.yaml")
        let root = dir.path + "/keep"
        for version in 1...5 {
            try Publisher(root: root, inventory: inventory, keep: 2).publish(artifacts: [try artifact("minimal", content: "v\(version)")])
        }
        let digests = try FileManager.default.contentsOfDirectory(atPath: root + "/images/minimal")
        #expect(digests.count == 2)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/.publish").filter { $0.hasPrefix("gen-") }.sorted() == ["gen-4", "gen-5"])
        #expect(try Publisher.rollback(root: root) == 4)
        #expect(throws: PublishError.self) { try Publisher.rollback(root: root) }
    }

    /// Generation folders on disk, by number.
    func generationsOnDisk(_ root: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: root + "/.publish").filter { $0.hasPrefix("gen-") }.sorted()
    }

    @Test(.enabled(if: bootloadersInstalled, needsBootloaders)) func aFailedPublishAfterARollbackLosesNothing() throws {
        let inventory = try InventoryLoader.parse(sampleInventory.replacingOccurrences(of: "image: compute", with: "image: minimal"), file: "nodes.yaml")
        let root = dir.path + "/failed-after-rollback"
        let publisher = Publisher(root: root, inventory: inventory)
        try publisher.publish(artifacts: [try artifact("minimal", content: "v1")])
        let v1 = try fetchable(root)
        try publisher.publish(artifacts: [try artifact("minimal", content: "v2")])
        let v2 = try fetchable(root)
        #expect(try Publisher.rollback(root: root) == 1)
        let before = try generationsOnDisk(root)
        // Each way a publish can fail: no such folder, a tampered artifact, an inventory naming an unknown image.
        #expect(throws: PublishError.self) { try publisher.publish(artifacts: [self.dir.path + "/artifacts/missing"]) }
        let tampered = try artifact("minimal", content: "v3")
        try Data("tampered".utf8).write(to: URL(fileURLWithPath: tampered + "/vmlinuz"))
        #expect(throws: PublishError.self) { try publisher.publish(artifacts: [tampered]) }
        let unknown = try InventoryLoader.parse(sampleInventory, file: "nodes.yaml")  // names "compute", never published
        #expect(throws: (any Error).self) { try Publisher(root: root, inventory: unknown).publish(artifacts: []) }
        #expect(try generationsOnDisk(root) == before, "a failed publish removed a generation")
        #expect(try fetchable(root) == v1)
        // The rollback is undone by --forward, and forward past the newest is an error.
        #expect(try Publisher.switchGeneration(root: root, .forward) == 2)
        #expect(try fetchable(root) == v2)
        #expect(throws: PublishError.self) { try Publisher.switchGeneration(root: root, .forward) }
        // Every switch is in the history, in order.
        let actions = Publisher.history(root: root).map { line -> String in
            let object = try! JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return "\(object["action"]!) \(object["from"] ?? "-")->\(object["to"]!)"
        }
        #expect(actions == ["publish -->1", "publish 1->2", "rollback 2->1", "forward 1->2"])
    }

    @Test func aFailedFirstPublishCreatesNothing() throws {
        let inventory = try InventoryLoader.parse(sampleInventory, file: "nodes.yaml")  // names "compute"
        let root = dir.path + "/fresh"
        #expect(throws: (any Error).self) { try Publisher(root: root, inventory: inventory).publish(artifacts: [try self.artifact("minimal", content: "v1")]) }
        #expect(throws: PublishError.self) { try Publisher(root: root, inventory: inventory).publish(artifacts: [self.dir.path + "/nothing-here"]) }
        #expect(!FileManager.default.fileExists(atPath: root), "a failed publish created \(root)")
    }

    @Test(.enabled(if: bootloadersInstalled, needsBootloaders)) func publishingAfterARollbackKeepsTheRolledBackFromGeneration() throws {
        let inventory = try InventoryLoader.parse(sampleInventory.replacingOccurrences(of: "image: compute", with: "image: minimal"), file: "nodes.yaml")
        let root = dir.path + "/publish-after-rollback"
        let publisher = Publisher(root: root, inventory: inventory)
        try publisher.publish(artifacts: [try artifact("minimal", content: "v1")])
        try publisher.publish(artifacts: [try artifact("minimal", content: "v2")])
        let v2 = try fetchable(root)
        try Publisher.rollback(root: root)
        try publisher.publish(artifacts: [try artifact("minimal", content: "v3")])
        #expect(try generationsOnDisk(root) == ["gen-1", "gen-2", "gen-3"])
        // Back goes by generation number among those served: 3 -> 2 (v2) -> 1.
        #expect(try Publisher.rollback(root: root) == 2)
        #expect(try fetchable(root) == v2)
        #expect(try Publisher.rollback(root: root) == 1)
        #expect(throws: PublishError.self) { try Publisher.rollback(root: root) }
    }

    @Test(.enabled(if: bootloadersInstalled, needsBootloaders)) func refusesToTakeOverUnmanagedFiles() throws {
        let inventory = try InventoryLoader.parse(sampleInventory.replacingOccurrences(of: "image: compute", with: "image: minimal"), file: "nodes.yaml")
        let root = dir.path + "/unmanaged"
        try FileManager.default.createDirectory(atPath: root + "/pxelinux.cfg", withIntermediateDirectories: true)
        #expect(throws: PublishError.self) { try Publisher(root: root, inventory: inventory).publish(artifacts: [try artifact("minimal", content: "v1")]) }
    }
}
