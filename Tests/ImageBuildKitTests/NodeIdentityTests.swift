import Foundation
import Testing
import TestSupport
@testable import ImageBuildKit

/// nodes.yaml's identity keys: merge order, templates, overlays and every error class with its located text.
@Suite struct NodeIdentityTests {
    static let inventoryText = """
        network:
          server: 10.77.0.1
          subnet: 10.77.0.0/24
          domain: cluster.test
        defaults:
          image: minimal
          vars: {site: lab, rack: none}
          files:
            - path: /etc/motd
              content: "{{hostname}} at {{vars.site}} rack {{vars.rack}}\\n"
        groups:
          gpu:
            vars: {site: gpu-room}
            interfaces:
              - {name: ib0, mtu: 2044}
        ranges:
          - cidr: 10.77.0.16/28
            vars: {rack: r2}
        nodes:
          - mac: "52:54:00:77:00:01"
            hostname: n1
            ip: 10.77.0.11
            group: gpu
            vars: {rack: r1}
            interfaces:
              - {name: ib0, address: 10.78.0.11/16}
          - {mac: "52:54:00:77:00:02", hostname: n2, ip: 10.77.0.17}
          - {mac: "52:54:00:77:00:03", hostname: n3}
        """

    let inventory = try! InventoryLoader.parse(inventoryText, file: "/etc/imagebuild/nodes.yaml")

    func node(_ last: UInt8) -> Inventory.Node { inventory.node(mac: MACAddress(0x52, 0x54, 0, 0x77, 0, last))! }

    @Test func levelsMergeDefaultsGroupRangeNode() throws {
        let n1 = try inventory.identity(of: node(1))
        #expect(n1.vars == ["site": .text("gpu-room"), "rack": .text("r1")])
        #expect(n1.varLevels["site"] == .group("gpu") && n1.varLevels["rack"] == .node)
        // The interface merges field by field: the group's MTU, the node's address.
        #expect(n1.interfaces == [.init(name: "ib0", mac: nil, address: IPv4Address("10.78.0.11")!, prefix: 16, gateway: nil, mtu: 2044)])
        // ... rendered for stage 2 as a systemd-networkd unit.
        let unit = try #require(n1.files.first { $0.file.path == "/etc/systemd/network/20-imagebuild-ib0.network" })
        #expect(unit.level == .builtIn)
        if case .inline(let text, _) = unit.file.content {
            #expect(text == "# imagebuild: from nodes.yaml (interfaces:)\n[Match]\nName=ib0\n\n[Link]\nMTUBytes=2044\n\n[Network]\nAddress=10.78.0.11/16\n")
        }
        let n2 = try inventory.identity(of: node(2))  // in range 10.77.0.16/28
        #expect(n2.vars["rack"] == .text("r2") && n2.varLevels["rack"] == .range(IPv4Network("10.77.0.16/28")!))
        let n3 = try inventory.identity(of: node(3))  // no address: no range
        #expect(n3.vars["rack"] == .text("none") && n3.varLevels["rack"] == .defaults)
        #expect(n3.hostKeys == .persistent && n3.hasSecrets)
        #expect(n3.files.map(\.file.path) == ["/etc/hostname", "/etc/hosts", "/etc/motd"])
    }

    @Test func templatesRenderPerNodeAndEtcHostsOnceForAll() throws {
        let templates = NodeTemplates(inventory: inventory)
        let n1 = try inventory.identity(of: node(1)), n2 = try inventory.identity(of: node(2))
        let motd = n1.files.first { $0.file.path == "/etc/motd" }!.file
        let r1 = try templates.render(motd, for: n1)
        #expect(String(decoding: r1.bytes, as: UTF8.self) == "n1 at gpu-room rack r1\n")
        #expect(!r1.shared)
        let hosts = n1.files.first { $0.file.path == "/etc/hosts" }!.file
        let h1 = try templates.render(hosts, for: n1), h2 = try templates.render(hosts, for: n2)
        let expected = """
            127.0.0.1\tlocalhost
            ::1\tlocalhost ip6-localhost ip6-loopback
            10.77.0.11\tn1.cluster.test n1
            10.77.0.17\tn2.cluster.test n2

            """
        // n3 has no address: it is left out, not given the rendering node's.
        #expect(String(decoding: h1.bytes, as: UTF8.self) == expected)
        #expect(h1.shared && h2.shared && h1.bytes == h2.bytes)
        #expect(String(decoding: try templates.render(n2.files.first { $0.file.path == "/etc/hostname" }!.file, for: n2).bytes, as: UTF8.self) == "n2\n")
    }

    @Test func noHTMLEscapingInFiles() throws {
        let text = Self.inventoryText.replacingOccurrences(of: "vars: {site: lab, rack: none}", with: "vars: {site: \"a&b <c>\", rack: none}")
        let inventory = try InventoryLoader.parse(text, file: "nodes.yaml")
        let n3 = try inventory.identity(of: inventory.nodes[2])
        let rendered = try NodeTemplates(inventory: inventory).render(n3.files.first { $0.file.path == "/etc/motd" }!.file, for: n3)
        #expect(String(decoding: rendered.bytes, as: UTF8.self) == "n3 at a&b <c> rack none\n")
    }

    @Test func unknownVariableNamesNodeFileAndLine() throws {
        let text = Self.inventoryText.replacingOccurrences(of: "{{vars.rack}}", with: "{{vars.rak}} {{hostnme}}")
        let inventory = try InventoryLoader.parse(text, file: "nodes.yaml")
        let error = errorText { _ = try OverlayPlan.render(inventory, mtime: 0) }
        #expect(error.contains("nodes.yaml:9:7: /etc/motd for node n1: unknown variable 'vars.rak'"), "\(error)")
        #expect(error.contains("did you mean 'vars.rack'?"), "\(error)")
        #expect(error.contains("node n3"), "every node's failure is reported: \(error)")
    }

    @Test func templateSyntaxErrorIsLocatedInNodesYAML() throws {
        let text = Self.inventoryText.replacingOccurrences(of: "content: \"{{hostname}} at", with: "content: \"{{#hostname}} at")
        let inventory = try InventoryLoader.parse(text, file: "nodes.yaml")
        let error = errorText { try NodeFileChecks.check(inventory, root: nil) }
        #expect(error.hasPrefix("nodes.yaml:11:1: template of /etc/motd: a section is not closed"), "\(error)")
    }

    @Test(arguments: [
        ("path: etc/x", "nodes.yaml:6:13: 'etc/x' is not an absolute file path"),
        ("path: /etc/../x", "is not an absolute file path"),
        ("path: /proc/x", "'/proc/x' is under /proc"),
        ("path: /etc/x\n      mode: \"0999\"", "bad mode '0999'"),
        ("path: /etc/x\n      owner: \"a b\"", "bad owner 'a b'"),
        ("path: /etc/x\n      secret: true", "a secret cannot be inline"),
        ("path: /etc/x\n      source: y", "a file has 'content' or 'source', not both"),
        ("path: /etc/x\n      colour: red", "unknown key 'colour'"),
    ])
    func fileErrorsAreLocated(replacement: String, message: String) throws {
        let text = """
            network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
            defaults:
              image: minimal
              files:
                - content: hi
                  \(replacement)
            """
        let error = errorText { _ = try InventoryLoader.parse(text, file: "nodes.yaml") }
        #expect(error.contains(message), "\(error)")
        #expect(error.hasPrefix("nodes.yaml:"), "\(error)")
    }

    @Test func interfaceWithoutAddressNamesTheNode() throws {
        let text = Self.inventoryText.replacingOccurrences(of: "- {name: ib0, address: 10.78.0.11/16}", with: "- {name: ib1, mtu: 9000}")
        let inventory = try InventoryLoader.parse(text, file: "nodes.yaml")
        let error = errorText { _ = try inventory.identity(of: inventory.nodes[0]) }
        #expect(error.contains("interface ib0 of node n1 has no address"), "\(error)")
    }

    @Test func secretSourcesAreCheckedBeforePublish() throws {
        let dir = TemporaryDirectory()
        let key = dir.write("munge.key", "k")
        chmod(key, 0o644)
        let root = dir.path + "/root"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let inside = dir.write("root/leak.key", "k")
        chmod(inside, 0o600)
        let text = """
            network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
            defaults:
              image: minimal
              files:
                - {path: /etc/munge/munge.key, source: munge.key, secret: true, template: false, owner: "munge:munge", mode: "0400"}
                - {path: /etc/leak.key, source: root/leak.key, secret: true}
                - {path: /etc/missing, source: missing.conf}
            nodes:
              - {mac: "52:54:00:77:00:01", hostname: n1}
            """
        let inventory = try InventoryLoader.parse(text, file: dir.path + "/nodes.yaml")
        let error = errorText { try NodeFileChecks.check(inventory, root: root) }
        #expect(error.contains("the secret \(key) is readable by anyone on this server (mode 644)"), "\(error)")
        #expect(error.contains("chmod 600"), "\(error)")
        #expect(error.contains("inside the boot root"), "\(error)")
        #expect(error.contains("cannot read \(dir.path)/missing.conf"), "\(error)")
        chmod(key, 0o600)
        let error2 = errorText { try NodeFileChecks.check(inventory, root: root) }
        #expect(!error2.contains("munge.key"), "\(error2)")
    }

    @Test func aSourceChangedWhileTemplatesAreKeptIsRenderedAnew() throws {
        // The server keeps one NodeTemplates per inventory: a rotated secret template must not be served stale.
        let dir = TemporaryDirectory()
        let source = dir.write("token.conf", "token={{hostname}}-1\n")
        chmod(source, 0o600)
        let text = Self.inventoryText.replacingOccurrences(of: "  files:\n", with: "  files:\n    - {path: /etc/token.conf, source: \(source), secret: true}\n")
        let inventory = try InventoryLoader.parse(text, file: dir.path + "/nodes.yaml")
        let templates = NodeTemplates(inventory: inventory)
        let n1 = try inventory.identity(of: inventory.nodes[0])
        let file = try #require(n1.secretFiles.first).file
        #expect(String(decoding: try templates.render(file, for: n1).bytes, as: UTF8.self) == "token=n1-1\n")
        _ = dir.write("token.conf", "token={{hostname}}-2\n")
        #expect(String(decoding: try templates.render(file, for: n1).bytes, as: UTF8.self) == "token=n1-2\n")
    }

    @Test func overlaysAreReproducibleSharedAndCarryOwnersAndModes() throws {
        let dir = TemporaryDirectory()
        let plan = try OverlayPlan.render(inventory, mtime: 1_700_000_000)
        let again = try OverlayPlan.render(inventory, mtime: 1_700_000_000)
        #expect(plan.nodes == again.nodes)
        #expect(plan.archives.mapValues(\.bytes) == again.archives.mapValues(\.bytes))
        // /etc/hosts is shared by all three nodes: one shared archive and one per node.
        let first = plan.nodes.values.map { $0[0] }
        #expect(Set(first).count == 1, "\(plan.nodes)")
        #expect(plan.archives.count == 4)
        for archive in plan.archives.values {
            #expect(archive.path == "overlays/\(archive.sha256).tar.gz")
        }
        let own = plan.nodes[node(1).mac]![1]
        let file = dir.path + "/own.tar.gz"
        try Data(plan.archives[own]!.bytes).write(to: URL(fileURLWithPath: file))
        let listing = try sh("tar -tvzf \(file) --numeric-owner")
        #expect(listing.contains("-rw-r--r-- 0/0") && listing.contains("etc/motd") && listing.contains("etc/hostname"), "\(listing)")
        #expect(!listing.contains("etc/hosts "), "/etc/hosts is in the shared archive: \(listing)")
        #expect(listing.contains("2023-11-14"), "mtime is the epoch given: \(listing)")
    }

    @Test func keptGzipStreamsGiveTheBytesOfAFreshOne() throws {
        // Kept streams are reset, not made anew: each of several compressions, one after another and
        // interleaved with another level, matches gzip's own reading of it and repeats byte for byte.
        let inputs: [[UInt8]] = [Array("key\n".utf8), (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 7919 >> 3) }, [], Array(repeating: 0, count: 2560)]
        var first: [[UInt8]] = []
        for level: Int32 in [9, 0] {
            for input in inputs { first.append(try Gzip.compress(input, level: level)) }
        }
        var again: [[UInt8]] = []
        for level: Int32 in [9, 0] {
            for input in inputs { again.append(try Gzip.compress(input, level: level)); _ = try Gzip.compress(inputs[1], level: 9 - level) }
        }
        #expect(again == first)
        let dir = TemporaryDirectory()
        for (index, bytes) in first.enumerated() {
            let input = inputs[index % inputs.count]
            try Data(bytes).write(to: URL(fileURLWithPath: dir.path + "/\(index).gz"))
            try Data(input).write(to: URL(fileURLWithPath: dir.path + "/\(index).in"))
            #expect(try sh("gzip -dc \(dir.path)/\(index).gz | cmp - \(dir.path)/\(index).in && echo same") == "same\n", "archive \(index)")
        }
        // Level 0 stores: the bytes are there as they were (a node's secrets, made per request).
        #expect(first[5].count > inputs[1].count)
    }

    @Test func largeArchivesAreXzdSmallOnesGzipd() throws {
        // A shared file of 100 KB (an /etc/hosts over a large cluster): every node fetches it, so xz.
        let dir = TemporaryDirectory()
        let big = (0..<3000).map { "10.77.\($0 / 256).\($0 % 256) node\($0).cluster.test node\($0)\n" }.joined()
        let source = dir.write("hosts.big", big)
        let text = Self.inventoryText.replacingOccurrences(of: "  files:\n", with: "  files:\n    - {path: /etc/hosts.big, source: \(source), template: false}\n")
        let inventory = try InventoryLoader.parse(text, file: dir.path + "/nodes.yaml")
        let plan = try OverlayPlan.render(inventory, mtime: 0)
        #expect(try OverlayPlan.render(inventory, mtime: 0).archives.mapValues(\.bytes) == plan.archives.mapValues(\.bytes))
        let paths = try #require(plan.nodes[node(1).mac])
        #expect(paths.count == 2 && paths[0].hasSuffix(".tar.xz") && paths[1].hasSuffix(".tar.gz"), "\(paths)")
        let shared = try #require(plan.archives[paths[0]])
        #expect(shared.path == "overlays/\(shared.sha256).tar.xz")
        #expect(shared.bytes.count < big.utf8.count / 10, "\(shared.bytes.count) bytes")
        let file = dir.path + "/shared.tar.xz"
        try Data(shared.bytes).write(to: URL(fileURLWithPath: file))
        #expect(try sh("tar -xOJf \(file) etc/hosts.big") == big)
        #expect(try sh("tar -tJf \(file)") == "etc/hosts\netc/hosts.big\n")
    }

    @Test func namedOwnersGoToTheOwnersList() throws {
        let rendered = [
            NodeTemplates.Rendered(file: NodeFile(path: "/etc/munge/munge.key", content: .source("/x"), mode: 0o400,
                                                  owner: FileOwner("munge:munge")!, secret: true, template: false,
                                                  location: ConfigLocation(file: "nodes.yaml", line: 1, column: 1)),
                                   bytes: Array("key".utf8), shared: false),
        ]
        let dir = TemporaryDirectory()
        let file = dir.path + "/s.tar.gz"
        try Data(try OverlayArchive.make(rendered, mtime: 0, use: .perRequest).bytes).write(to: URL(fileURLWithPath: file))
        let listing = try sh("tar -tvzf \(file) --numeric-owner")
        #expect(listing.contains("-r-------- 0/0") && listing.contains("etc/munge/munge.key"), "\(listing)")
        #expect(try sh("tar -xOzf \(file) etc/imagebuild/owners") == "munge:munge etc/munge/munge.key\n")
    }

    @Test func kernelCommandLineNamesOverlaysAndSecrets() throws {
        let plan = try OverlayPlan.render(inventory, mtime: 0)
        let boot = BootPlan(inventory: inventory, images: ["minimal": sampleImage("minimal")], overlays: plan.nodes)
        guard case .boot(let target, _) = boot.answer(mac: node(2).mac, ip: nil) else { Issue.record("no boot"); return }
        let line = boot.renderer.kernelCommandLine(target)
        let urls = plan.nodes[node(2).mac]!.map { "http://10.77.0.1/\($0)" }.joined(separator: ",")
        #expect(line.contains(" imagebuild.overlay=\(urls) "), "\(line)")
        #expect(line.hasSuffix(" imagebuild.secrets=http://10.77.0.1/boot/v1/secrets/52-54-00-77-00-02"), "\(line)")
        // Without persistent host keys or a secret file, no secrets URL.
        let none = try InventoryLoader.parse(Self.inventoryText.replacingOccurrences(of: "  image: minimal\n", with: "  image: minimal\n  ssh_host_keys: none\n"), file: "n.yaml")
        #expect(try !none.identity(of: none.nodes[0]).hasSecrets)
    }
}
