import Foundation
import Testing
@testable import ImageBuildKit

/// nodes.yaml's `discover:` block, the bindings journal and how bindings merge into the inventory:
/// every refusal with its location, nodes.yaml winning every conflict, the slot order, a torn line.
@Suite struct DiscoveryTests {
    static func yaml(discover: String, nodes: String = "") -> String {
        """
        network:
          server: 10.77.0.1
          subnet: 10.77.0.0/24
          pool: 10.77.0.100-10.77.0.199
        defaults:
          image: minimal
        groups:
          compute: {append: "quiet"}
        \(discover)
        nodes:
          - {mac: "52:54:00:77:00:01", hostname: node002, ip: 10.77.0.20}
          - {mac: "52:54:00:77:00:02", hostname: head, ip: 10.77.0.52}
        \(nodes)
        """
    }

    static let good = """
        discover:
          group: compute
          hostname: "node{n:03}"
          addresses: 10.77.0.50-10.77.0.53
        """

    func error(_ discover: String) -> String {
        do {
            _ = try InventoryLoader.parse(Self.yaml(discover: discover), file: "nodes.yaml")
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    @Test("a discover block parses: group, pattern, range, first")
    func parses() throws {
        let inventory = try InventoryLoader.parse(Self.yaml(discover: Self.good), file: "nodes.yaml")
        let discover = try #require(inventory.discover)
        #expect(discover.group == "compute")
        #expect(discover.hostname.description == "node{n:03}")
        #expect(discover.slotCount == 4)
        #expect(discover.slot(0) == ("node001", IPv4Address(10, 77, 0, 50)))
        #expect(discover.slot(3) == ("node004", IPv4Address(10, 77, 0, 53)))
        #expect(Inventory.HostnamePattern.parse("rack2-{n}").map { $0.render(12) } == .success("rack2-12"))
    }

    @Test("bad discover blocks are located errors that say what is wrong", arguments: [
        ("  hostname: \"node{x}\"\n  addresses: 10.77.0.50-10.77.0.53", "nodes.yaml:10:13: malformed hostname pattern 'node{x}': '{x}' is not {n} or {n:0W}"),
        ("  hostname: \"node\"\n  addresses: 10.77.0.50-10.77.0.53", "nodes.yaml:10:13: malformed hostname pattern 'node': no '{n}' placeholder"),
        ("  hostname: \"node_{n}\"\n  addresses: 10.77.0.50-10.77.0.53", "it makes 'node_1', not a hostname"),
        ("  hostname: \"n{n}{n}\"\n  addresses: 10.77.0.50-10.77.0.53", "more than one placeholder"),
        ("  hostname: \"n{n}\"\n  addresses: 10.78.0.50-10.78.0.53", "nodes.yaml:11:14: the discovery range 10.78.0.50-10.78.0.53 is outside the subnet 10.77.0.0/24"),
        ("  hostname: \"n{n}\"\n  addresses: 10.77.0.150-10.77.0.210", "nodes.yaml:11:14: the discovery range 10.77.0.150-10.77.0.210 overlaps the dynamic pool 10.77.0.100-10.77.0.199"),
        ("  hostname: \"n{n}\"\n  addresses: 10.77.0.1-10.77.0.9", "contains the server's own address 10.77.0.1"),
        ("  hostname: \"n{n}\"\n  addresses: 10.77.0.9-10.77.0.5", "'10.77.0.9-10.77.0.5' is not a range like"),
        ("  group: compte\n  hostname: \"n{n}\"\n  addresses: 10.77.0.50-10.77.0.53", "nodes.yaml:10:10: unknown group 'compte' (did you mean 'compute'?)"),
        ("  hostname: \"n{n}\"\n  addresses: 10.77.0.50-10.77.0.53\n  size: 3", "unknown key 'size'"),
    ])
    func refusals(block: String, expected: String) {
        let message = error("discover:\n" + block)
        #expect(message.contains(expected), "\(message)")
    }

    @Test("slots skip hostnames and addresses nodes.yaml and earlier bindings hold")
    func slots() throws {
        let inventory = try InventoryLoader.parse(Self.yaml(discover: Self.good), file: "nodes.yaml")
        // node002 is listed (by name), 10.77.0.52 is head's: slot 0 is free.
        #expect(inventory.nextDiscoverySlot()! == ("node001", IPv4Address(10, 77, 0, 50)))
        let first = NodeBinding(mac: MACAddress("52:54:00:99:00:01")!, hostname: "node001", ip: IPv4Address(10, 77, 0, 50),
                                group: "compute", boundAt: 1, origin: .discover)
        // Slot 1 (node002) and slot 2 (10.77.0.52) are taken: slot 3.
        #expect(inventory.nextDiscoverySlot(excluding: [first])! == ("node004", IPv4Address(10, 77, 0, 53)))
        let fourth = NodeBinding(mac: MACAddress("52:54:00:99:00:02")!, hostname: "node004", ip: IPv4Address(10, 77, 0, 53),
                                 group: "compute", boundAt: 1, origin: .discover)
        #expect(inventory.nextDiscoverySlot(excluding: [first, fourth]) == nil, "the pattern ran out of slots")
        #expect(inventory.discoverySummary?.contains("node{n:03} in 10.77.0.50-10.77.0.53 (4 slots, nodes.yaml:10:3)") == true,
                "\(inventory.discoverySummary ?? "")")
    }

    @Test("bindings merge as nodes; nodes.yaml wins MAC, hostname and address conflicts, and says so")
    func merge() throws {
        let inventory = try InventoryLoader.parse(Self.yaml(discover: Self.good), file: "nodes.yaml")
        func binding(_ mac: String, _ name: String, _ ip: String?, line: Int, group: String? = "compute") -> NodeBinding {
            NodeBinding(mac: MACAddress(mac)!, hostname: name, ip: ip.flatMap { IPv4Address($0) }, group: group, boundAt: 1,
                        origin: .discover, location: ConfigLocation(file: "state/discovery/bindings", line: line, column: 1))
        }
        let (merged, notes) = inventory.merging([
            binding("52:54:00:99:00:01", "node001", "10.77.0.50", line: 2),
            binding("52:54:00:77:00:01", "other", "10.77.0.60", line: 3),      // MAC listed
            binding("52:54:00:99:00:03", "HEAD", "10.77.0.61", line: 4),       // hostname listed
            binding("52:54:00:99:00:04", "node009", "10.77.0.20", line: 5),    // address listed
            binding("52:54:00:99:00:05", "node010", nil, line: 6, group: "gone"),
        ])
        let node = try #require(merged.node(mac: MACAddress("52:54:00:99:00:01")!))
        #expect(node.hostname == "node001" && node.ip == IPv4Address(10, 77, 0, 50) && node.group == "compute")
        #expect(node.location.description == "state/discovery/bindings:2:1")
        #expect(merged.node(ip: IPv4Address(10, 77, 0, 50))?.hostname == "node001", "the address lookup knows it")
        #expect(merged.resolved(node).cmdline == "quiet", "it inherits its group like a listed node")
        #expect(merged.node(mac: MACAddress("52:54:00:77:00:01")!)?.hostname == "node002")
        #expect(merged.node(mac: MACAddress("52:54:00:99:00:05")!)?.group == nil)
        #expect(merged.nodes.count == 4)
        let text = notes.map(\.description)
        #expect(text.count == 4, "\(text)")
        #expect(text[0] == "state/discovery/bindings:3:1: binding of 52:54:00:77:00:01 as other ignored: nodes.yaml lists this MAC as node002 (nodes.yaml:14:5); nodes.yaml wins")
        #expect(text[1].contains("binding of 52:54:00:99:00:03 as HEAD ignored: nodes.yaml lists hostname HEAD for 52:54:00:77:00:02 (nodes.yaml:15:5); nodes.yaml wins"), "\(text[1])")
        #expect(text[2].contains("ignored: nodes.yaml gives 10.77.0.20 to node002 (nodes.yaml:14:5); nodes.yaml wins"), "\(text[2])")
        #expect(text[3].contains("names group 'gone', which nodes.yaml no longer has: bound without a group"), "\(text[3])")
    }

    @Test("the journal: appended under a lock, fsynced, later lines win, a torn line is cut off, a garbled one is located")
    func journal() throws {
        let directory = NSTemporaryDirectory() + "bindings-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/discovery/bindings"
        let a = NodeBinding(mac: MACAddress("52:54:00:99:00:01")!, hostname: "node001", ip: IPv4Address(10, 77, 0, 50), group: "compute",
                            boundAt: 100, origin: .discover)
        try NodeBindingJournal.update(path: path) { contents in
            #expect(contents.bindings.isEmpty)
            return [a]
        }
        // A crash mid-append: half a line, no newline.
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data("{\"mac\":\"52:54:00:99:00:02\",\"hostn".utf8))
        try handle.close()
        var contents = try NodeBindingJournal.read(path: path)
        #expect(contents.bindings == [withLocation(a, path, 2)] && contents.tornBytes > 0)

        var b = a
        b.hostname = "gpu07"
        b.origin = .adopt
        try NodeBindingJournal.update(path: path) { _ in [b] }
        try "not json\n".appendLine(to: path)
        contents = try NodeBindingJournal.read(path: path)
        #expect(contents.tornBytes == 0)
        #expect(contents.bindings.map(\.hostname) == ["gpu07"], "the later line for the MAC wins")
        #expect(contents.problems.map(\.description) == ["\(path):4:1: unreadable binding skipped: not a JSON object of a binding"])
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.hasPrefix(NodeBindingJournal.header))
        #expect(text.contains("{\"bound_at\":100,\"group\":\"compute\",\"hostname\":\"gpu07\",\"ip\":\"10.77.0.50\",\"mac\":\"52:54:00:99:00:01\",\"origin\":\"adopt\"}\n"), "\(text)")
    }

    func withLocation(_ binding: NodeBinding, _ path: String, _ line: Int) -> NodeBinding {
        var binding = binding
        binding.location = ConfigLocation(file: path, line: line, column: 1)
        return binding
    }
}

private extension String {
    func appendLine(to path: String) throws {
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data(utf8))
        try handle.close()
    }
}
