import BootProtocols
@testable import BootServer
import Foundation
import ImageBuildKit
import Testing

/// `GET /api/v1/nodes?since=CURSOR` (the status page's poll): the server's summary, and only the nodes
/// that changed since the cursor, including changes no event caused (a node turning stuck as time
/// passes, an inventory edit, a node forgotten).
@Suite("Node changes for the status page")
struct NodeChangesTests {
    static func inventory(_ names: [(String, String, String)]) throws -> Inventory {
        var text = "network:\n  server: 127.0.0.1\n  subnet: 127.0.0.0/8\nnodes:\n"
        for (mac, host, ip) in names { text += "  - {mac: \"\(mac)\", hostname: \(host), ip: \(ip)}\n" }
        return try InventoryLoader.parse(text, file: "nodes.yaml")
    }

    static let a = MACAddress(0x52, 0x54, 0x00, 0x10, 0x00, 0x01)
    static let b = MACAddress(0x52, 0x54, 0x00, 0x10, 0x00, 0x02)
    static let c = MACAddress(0x52, 0x54, 0x00, 0x10, 0x00, 0x03)
    static let stray = MACAddress(0x02, 0x00, 0x00, 0x00, 0x00, 0x09)

    @Test("the first poll gets every node and the counts; a poll with nothing new gets no node")
    func fullThenEmpty() throws {
        let clock = TimelineTestClock()
        let timeline = try BootTimeline(logger: testLogger("timeline"), now: clock.function)
        let inventory = try Self.inventory([("52:54:00:10:00:01", "alpha", "127.1.0.1"), ("52:54:00:10:00:02", "beta", "127.1.0.2"),
                                            ("52:54:00:10:00:03", "gamma", "127.1.0.3")])
        timeline.record(.report(.up, detail: nil), mac: Self.a)
        timeline.record(.report(.failed, detail: "verify: sha256 mismatch"), mac: Self.b)
        timeline.record(.dhcp(.discover, address: nil, detail: nil), mac: Self.stray)
        let tracker = NodeChangeTracker()

        let first = tracker.changes(since: nil, inventory: inventory, states: timeline.nodes(), now: clock.now)
        #expect(first.full)
        #expect(first.nodes.map(\.mac) == ["52:54:00:10:00:01", "52:54:00:10:00:02", "52:54:00:10:00:03", "02:00:00:00:00:09"])
        #expect(first.summary.total == 4)
        #expect(first.summary.count(.up) == 1 && first.summary.count(.failed) == 1 && first.summary.count(.unseen) == 1)
        #expect(first.summary.count(.dhcp) == 1)
        #expect(first.summary.stages.map(\.stage) == BootStage.allCases)
        #expect(first.summary.failed == 1 && first.summary.stuck == 0 && first.summary.unregistered == 1)
        // One failed node: one hint group, its text given, and the node points at it.
        #expect(first.summary.hints.count == 1)
        let group = try #require(first.summary.hints.first)
        #expect(group.count == 1 && group.stage == .failed && group.hint == StuckHints.hint(stage: .failed))
        #expect(first.nodes[1].hint == group.id && first.nodes[1].stuck)
        #expect(first.nodes[0].hint == nil && first.nodes[0].registered && first.nodes[0].hostname == "alpha")
        #expect(first.nodes[3].registered == false && first.nodes[3].hostname == nil)

        clock.advance(5)
        let second = tracker.changes(since: first.cursor, inventory: inventory, states: timeline.nodes(), now: clock.now)
        #expect(!second.full)
        #expect(second.nodes.isEmpty && second.removed.isEmpty)
        #expect(second.cursor == first.cursor)
        #expect(second.summary.total == 4 && second.summary.failed == 1)
        // The hint's text went out with the first answer; the count comes every time.
        #expect(second.summary.hints.map(\.count) == [1] && second.summary.hints.first?.hint == nil)
    }

    @Test("an event sends that node only; time passing makes a node stuck, and that is sent too")
    func changedAndStuck() throws {
        let clock = TimelineTestClock()
        let timeline = try BootTimeline(logger: testLogger("timeline"), now: clock.function)
        let inventory = try Self.inventory([("52:54:00:10:00:01", "alpha", "127.1.0.1"), ("52:54:00:10:00:02", "beta", "127.1.0.2")])
        timeline.record(.report(.stage1Start, detail: nil), mac: Self.a)
        timeline.record(.report(.up, detail: nil), mac: Self.b)
        let tracker = NodeChangeTracker()
        let first = tracker.changes(since: nil, inventory: inventory, states: timeline.nodes(), now: clock.now)

        clock.advance(10)
        timeline.record(.report(.imageDownloaded, detail: "300 MB"), mac: Self.a)
        let second = tracker.changes(since: first.cursor, inventory: inventory, states: timeline.nodes(), now: clock.now)
        #expect(second.nodes.map(\.mac) == ["52:54:00:10:00:01"])
        #expect(second.nodes.first?.stage == .image && second.nodes.first?.stuck == false)
        #expect(second.summary.count(.image) == 1 && second.summary.count(.stage1) == 0)

        // Past the image stage's limit without an event: stuck, with the image hint.
        clock.advance(StuckHints.threshold(for: .image)! + 1)
        let third = tracker.changes(since: second.cursor, inventory: inventory, states: timeline.nodes(), now: clock.now)
        let row = try #require(third.nodes.first)
        #expect(third.nodes.count == 1 && row.stuck && row.stage == .image)
        #expect(third.summary.stuck == 1 && third.summary.failed == 0)
        #expect(third.summary.hints.first?.hint == StuckHints.hint(stage: .image) && third.summary.hints.first?.id == row.hint)

        // A client two polls behind gets both changes folded into one row.
        let behind = tracker.changes(since: first.cursor, inventory: inventory, states: timeline.nodes(), now: clock.now)
        #expect(behind.nodes.map(\.mac) == ["52:54:00:10:00:01"] && behind.nodes.first?.stuck == true)
    }

    @Test("inventory edits: a renamed node is sent again, a removed one that was never seen is listed as removed")
    func inventoryEdits() throws {
        let clock = TimelineTestClock()
        let timeline = try BootTimeline(logger: testLogger("timeline"), now: clock.function)
        let before = try Self.inventory([("52:54:00:10:00:01", "alpha", "127.1.0.1"), ("52:54:00:10:00:02", "beta", "127.1.0.2"),
                                         ("52:54:00:10:00:03", "gamma", "127.1.0.3")])
        timeline.record(.report(.up, detail: nil), mac: Self.c)
        let tracker = NodeChangeTracker()
        let first = tracker.changes(since: nil, inventory: before, states: timeline.nodes(), now: clock.now)
        #expect(first.nodes.count == 3)

        // beta renamed, alpha gone (never seen), gamma gone from nodes.yaml but seen: stays, unregistered.
        let after = try Self.inventory([("52:54:00:10:00:02", "beta2", "127.1.0.2")])
        let second = tracker.changes(since: first.cursor, inventory: after, states: timeline.nodes(), now: clock.now)
        #expect(second.removed == ["52:54:00:10:00:01"])
        #expect(Set(second.nodes.map(\.mac)) == ["52:54:00:10:00:02", "52:54:00:10:00:03"])
        #expect(second.nodes.first { $0.mac == "52:54:00:10:00:02" }?.hostname == "beta2")
        #expect(second.nodes.first { $0.mac == "52:54:00:10:00:03" }?.registered == false)
        #expect(second.summary.total == 2 && second.summary.unregistered == 1)

        // A full answer after that lists what is there, nothing removed.
        let full = tracker.changes(since: "", inventory: after, states: timeline.nodes(), now: clock.now)
        #expect(full.full && full.removed.isEmpty && full.nodes.count == 2)
    }

    @Test("a cursor from another server run, a malformed one, or one too old for the removals kept gets everything")
    func staleCursors() throws {
        let clock = TimelineTestClock()
        let timeline = try BootTimeline(logger: testLogger("timeline"), now: clock.function)
        var names = (1...6).map { ("52:54:00:20:00:0\($0)", "n\($0)", "127.2.0.\($0)") }
        let tracker = NodeChangeTracker(removalsKept: 2)
        let first = tracker.changes(since: nil, inventory: try Self.inventory(names), states: timeline.nodes(), now: clock.now)
        #expect(first.nodes.count == 6)

        let other = NodeChangeTracker()
        #expect(other.changes(since: first.cursor, inventory: try Self.inventory(names), states: [], now: clock.now).full)
        #expect(tracker.changes(since: "nonsense", inventory: try Self.inventory(names), states: [], now: clock.now).full)
        #expect(tracker.changes(since: "\(tracker.epoch)-999999", inventory: try Self.inventory(names), states: [], now: clock.now).full)

        // Three removals, two kept: the first cursor can no longer be told what went.
        names.removeLast(3)
        let later = tracker.changes(since: first.cursor, inventory: try Self.inventory(names), states: [], now: clock.now)
        #expect(later.full && later.nodes.count == 3 && later.removed.isEmpty)
    }

    @Test("rows leave out what the page derives from the clock, and absent fields")
    func rowEncoding() throws {
        let row = NodeRow(mac: "52:54:00:10:00:01", hostname: nil, ip: nil, registered: false, stage: .unseen, since: nil, lastSeen: nil,
                          boot: 0, bootStarted: nil, bootSeconds: nil, stuck: false, hint: nil, image: nil, lastEvent: nil)
        // Key order is not part of JSON; Linux Foundation's encoder follows a hash order that varies per process.
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let text = String(decoding: try encoder.encode(row), as: UTF8.self)
        #expect(text == #"{"mac":"52:54:00:10:00:01","stage":"unseen"}"#)
        #expect(try JSONDecoder().decode(NodeRow.self, from: Data(text.utf8)) == row)
    }

    @Test("HTTP: /api/v1/nodes keeps its shape; ?since= answers with changes")
    func route() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        try await withHTTPService(root: fixture, inventory: InventoryBox(try httpTestInventory())) { port, _ in
            let legacy = try await RawHTTP.get(port: port, "/api/v1/nodes")
            let nodes = try JSONDecoder().decode(NodesResponse.self, from: Data(legacy.body))
            #expect(nodes.nodes.map(\.hostname) == ["alpha"])
            #expect(!legacy.text.contains("cursor"))

            let full = try JSONDecoder().decode(NodeChangesResponse.self, from: Data(try await RawHTTP.get(port: port, "/api/v1/nodes?since=").body))
            #expect(full.full && full.nodes.map(\.hostname) == ["alpha"] && full.summary.count(.unseen) == 1)
            // alpha reports from 127.0.0.1, its leased address in these tests.
            let up = try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"mac":"52:54:00:aa:00:01","stage":"up"}"#)
            #expect(up.status == 202)
            let next = try await RawHTTP.get(port: port, "/api/v1/nodes?since=\(full.cursor)")
            #expect(next.status == 200 && next.header("cache-control") == "no-store")
            let changes = try JSONDecoder().decode(NodeChangesResponse.self, from: Data(next.body))
            #expect(!changes.full && changes.nodes.map(\.stage) == [.up] && changes.summary.count(.up) == 1)
            let idle = try await RawHTTP.get(port: port, "/api/v1/nodes?since=\(changes.cursor)")
            #expect(try JSONDecoder().decode(NodeChangesResponse.self, from: Data(idle.body)).nodes.isEmpty)
        }
    }
}
