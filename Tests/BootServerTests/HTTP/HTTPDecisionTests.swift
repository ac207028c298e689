import BootProtocols
@testable import BootServer
import Foundation
import ImageBuildKit
import NIOCore
import Testing

@Suite("HTTP: pure decisions")
struct HTTPDecisionTests {
    @Test("Range headers against a 1000-byte file", arguments: [
        ("bytes=0-99", RangeDecision.bytes(0...99)),
        ("bytes=900-", .bytes(900...999)),
        ("bytes=900-5000", .bytes(900...999)),
        ("bytes=-100", .bytes(900...999)),
        ("bytes=-5000", .bytes(0...999)),
        ("bytes=999-999", .bytes(999...999)),
        ("bytes=1000-", .unsatisfiable),
        ("bytes=1000-2000", .unsatisfiable),
        ("bytes=-0", .unsatisfiable),
        ("bytes=5-1", .whole),              // invalid: ignored
        ("bytes=0-1,5-6", .whole),          // multiple ranges: served whole
        ("items=0-1", .whole),              // unknown unit
        ("bytes=abc-", .whole),
        ("bytes= 10 - 19 ", .bytes(10...19)),
    ])
    func ranges(header: String, expected: RangeDecision) {
        #expect(RangeDecision.decide(header: header, size: 1000) == expected)
    }

    @Test("any range of an empty file is unsatisfiable")
    func emptyFile() {
        #expect(RangeDecision.decide(header: "bytes=0-", size: 0) == .unsatisfiable)
        #expect(RangeDecision.decide(header: "bytes=-1", size: 0) == .unsatisfiable)
    }

    func limits() -> HTTPTimeouts { HTTPTimeouts(idle: 60, header: 10, body: 10, send: 30) }

    @Test("an idle connection closes after the idle limit, not while a request is served")
    func idle() {
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var state = ConnectionTimeoutState(limits: limits(), now: t0)
        #expect(state.expired(now: t0 + .seconds(59)) == nil)
        #expect(state.expired(now: t0 + .seconds(60)) == .idle)
        state.read(.head, now: t0 + .seconds(1))
        state.read(.end, now: t0 + .seconds(1))
        state.readComplete(now: t0 + .seconds(1))
        // A long download: no idle time-out while the response runs and the client reads.
        #expect(state.expired(now: t0 + .seconds(600)) == nil)
        state.wroteResponseEnd(now: t0 + .seconds(600))
        #expect(state.expired(now: t0 + .seconds(659)) == nil)
        #expect(state.expired(now: t0 + .seconds(660)) == .idle)
    }

    @Test("a head trickling in is cut at the header limit (slowloris)")
    func slowHeaders() {
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var state = ConnectionTimeoutState(limits: limits(), now: t0)
        for second in stride(from: 1, through: 9, by: 2) {
            state.readComplete(now: t0 + .seconds(Int64(second)))  // a few bytes, no complete head
        }
        #expect(state.expired(now: t0 + .seconds(10)) == nil)
        #expect(state.expired(now: t0 + .seconds(11)) == .header)
    }

    @Test("a whole request in one read starts no header clock")
    func wholeRequest() {
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var state = ConnectionTimeoutState(limits: limits(), now: t0)
        state.read(.head, now: t0)
        state.read(.end, now: t0)
        state.readComplete(now: t0)
        #expect(state.headStarted == nil)
        state.wroteResponseEnd(now: t0 + .seconds(1))
        #expect(state.expired(now: t0 + .seconds(30)) == nil)
    }

    @Test("requests answered before the decoder keep the connection's clocks right")
    func answeredEarly() {
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var state = ConnectionTimeoutState(limits: limits(), now: t0)
        // A head split over two reads: the header clock runs after the first, stops at the answer.
        state.readComplete(now: t0)
        #expect(state.headStarted == t0)
        state.answeredEarly(streaming: false, now: t0 + .seconds(1))
        state.readComplete(now: t0 + .seconds(1))
        #expect(state.headStarted == nil)
        #expect(state.expired(now: t0 + .seconds(60)) == nil)
        #expect(state.expired(now: t0 + .seconds(61)) == .idle)
    }

    /// Scans `text` as `FastPath` does, with one POST route, `/api/v1/events`, taking bodies up to
    /// `eventBodyLimit` bytes (0: no POST route).
    private func scan(_ text: String, eventBodyLimit: Int = 0) -> RequestHead {
        Array(text.utf8).withUnsafeBytes { bytes in
            RequestHead.scan(bytes) { target in
                eventBodyLimit > 0 && target.elementsEqual("/api/v1/events".utf8) ? eventBodyLimit : nil
            }
        }
    }

    @Test("request heads: which the early fast path answers, hands to the decoder whole, or leaves to it")
    func requestHeads() {
        let get = "GET /pxelinux.cfg/default HTTP/1.1\r\nHost: x\r\n\r\n"
        #expect(scan(get) == .eligible(length: get.utf8.count, path: 4..<25, isHead: false, close: false))
        #expect(scan(get + "GET /next HTTP/1.1\r\n") == .eligible(length: get.utf8.count, path: 4..<25, isHead: false, close: false))
        let head = "HEAD /a?b=c HTTP/1.1\r\nCONNECTION:  Close \r\n\r\n"
        #expect(scan(head) == .eligible(length: head.utf8.count, path: 5..<7, isHead: true, close: true))
        #expect(scan("GET /a HTTP/1.1\r\nHost: x\r\n") == .incomplete)
        #expect(scan("GET /a HTTP/1.1\r") == .incomplete)
        // Complete and bodiless, but for the decoder and the router.
        for other in ["GET /a HTTP/1.0\r\n\r\n", "POST /a HTTP/1.1\r\n\r\n", "GET /a%20b HTTP/1.1\r\n\r\n",
                      "GET /a HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n", "GET /a HTTP/1.1\r\nif-none-match: \"x\"\r\n\r\n",
                      "GET /a HTTP/1.1\r\nIf-Modified-Since: Sun, 22 Nov 2026 09:00:00 GMT\r\n\r\n",
                      "GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "GET /a HTTP/1.1\r\nConnection: Upgrade-ish\r\n\r\n",
                      "GET * HTTP/1.1\r\n\r\n"] {
            #expect(scan(other) == .forward(length: other.utf8.count), "\(other)")
        }
        // Whatever it cannot delimit or does not parse: the decoder reads on from here.
        for unsupported in ["POST /api/v1/events HTTP/1.1\r\nContent-Length: 12\r\n\r\n{\"mac\": \"x\"}",
                            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                            "GET /a HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", "GET /a HTTP/1.1\nHost: x\n\n",
                            "GET /a HTTP/1.1\r\n folded\r\n\r\n", "GET /a HTTP/1.1\r\nno colon\r\n\r\n",
                            "\r\nGET /a HTTP/1.1\r\n\r\n", "GET  /a HTTP/1.1\r\n\r\n", "GET /\u{7f} HTTP/1.1\r\n\r\n",
                            "GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"] {
            #expect(scan(unsupported) == .unsupported, "\(unsupported)")
        }
    }

    @Test("stage reports: delimited by one plain Content-Length within the limit, or left to the decoder")
    func reportHeads() {
        let head = "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n"
        #expect(scan(head + #"{"mac": "x"}"#, eventBodyLimit: 4096) == .post(length: head.utf8.count, target: 5..<19, bodyLength: 12, close: false))
        #expect(scan(head, eventBodyLimit: 4096) == .post(length: head.utf8.count, target: 5..<19, bodyLength: 12, close: false))  // body not here yet
        let closing = "POST /api/v1/events HTTP/1.1\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n"
        #expect(scan(closing, eventBodyLimit: 4096) == .post(length: closing.utf8.count, target: 5..<19, bodyLength: 4096, close: true))
        // Without a body the router says what is missing.
        let bodiless = "POST /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n"
        #expect(scan(bodiless, eventBodyLimit: 4096) == .forward(length: bodiless.utf8.count))
        for other in ["Content-Length: 4097", "Content-Length: 0", "Content-Length: +12", "Content-Length: 1 2", "Content-Length: 0x10",
                      "Content-Length: 99999999999999999999", "Content-Length: 12\r\nContent-Length: 12",
                      "Content-Length: 12\r\nTransfer-Encoding: chunked", "Content-Length: 12\r\nExpect: 100-continue",
                      "Content-Length: 12\r\nConnection: upgrade"] {
            let text = "POST /api/v1/events HTTP/1.1\r\n\(other)\r\n\r\n"
            #expect(scan(text, eventBodyLimit: 4096) == .unsupported, "\(other)")
        }
        // Other targets and versions, and a server without the intake: the decoder reads on.
        for text in ["POST /api/v1/events?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "POST /api/v1/event HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
                     "POST /api/v1/events HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}", "PUT /api/v1/events HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"] {
            #expect(scan(text, eventBodyLimit: 4096) == .unsupported, "\(text)")
        }
        #expect(scan(head, eventBodyLimit: 0) == .unsupported)
    }

    @Test("a stalled body and a client that stops reading are cut")
    func stalledBodyAndReader() {
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var state = ConnectionTimeoutState(limits: limits(), now: t0)
        state.read(.head, now: t0)
        state.readComplete(now: t0)
        #expect(state.expired(now: t0 + .seconds(10)) == .body)

        var reader = ConnectionTimeoutState(limits: limits(), now: t0)
        reader.read(.head, now: t0)
        reader.read(.end, now: t0)
        reader.readComplete(now: t0)
        reader.writabilityChanged(writable: false, now: t0 + .seconds(1))
        #expect(reader.expired(now: t0 + .seconds(30)) == nil)
        reader.writabilityChanged(writable: true, now: t0 + .seconds(20))
        reader.writabilityChanged(writable: false, now: t0 + .seconds(21))
        #expect(reader.expired(now: t0 + .seconds(50)) == nil)
        #expect(reader.expired(now: t0 + .seconds(51)) == .send)
    }

    @Test("a slow reader that keeps acknowledging is not cut while the socket stays unwritable; a stalled one is")
    func sendProgressByAcknowledgedBytes() {
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var state = ConnectionTimeoutState(limits: limits(), now: t0)  // send: 30 s, so a sample every 7.5 s
        state.read(.head, now: t0)
        state.read(.end, now: t0)
        state.readComplete(now: t0)
        state.writabilityChanged(writable: false, now: t0)
        #expect(!state.wantsAcknowledgementSample(now: t0 + .seconds(7)))
        var acknowledged: UInt64 = 1000
        var now = t0
        // Two minutes of a whole response queued (never writable again) read at a trickle: never cut.
        while now < t0 + .seconds(120) {
            now = now + .milliseconds(500)
            if state.wantsAcknowledgementSample(now: now) {
                acknowledged += 4096
                state.acknowledged(acknowledged, now: now)
            }
            #expect(state.expired(now: now) == nil, "cut at \(now - t0) while the client read")
        }
        // Then the client stops reading: cut once a send limit passed without a larger count.
        let stalled = now
        while state.expired(now: now) == nil && now < stalled + .seconds(100) {
            now = now + .milliseconds(500)
            if state.wantsAcknowledgementSample(now: now) { state.acknowledged(acknowledged, now: now) }
        }
        #expect(state.expired(now: now) == .send)
        #expect(now - stalled >= .seconds(30) && now - stalled <= .seconds(38), "cut \(now - stalled) after the last progress")
        // Writable again: the sampling starts over.
        state.writabilityChanged(writable: true, now: now)
        #expect(!state.wantsAcknowledgementSample(now: now + .seconds(60)))
        #expect(state.acknowledgedBytes == nil && state.sendProgress == nil)
    }

    static let inventoryText = """
        network:
          server: 10.77.0.1
          subnet: 10.77.0.0/24
          http_port: 8080
        defaults:
          image: compute
          append: quiet
        ranges:
          - cidr: 10.77.0.64/28
            image: gpu
        nodes:
          - mac: 52:54:00:77:00:01
            hostname: node01
            ip: 10.77.0.11
            append: node01.flag
          - mac: 52:54:00:77:00:02
            hostname: node02
            image: missing
        """

    static func index(_ names: [String]) throws -> PublishIndex {
        var images: [String] = []
        for name in names {
            images.append(#""\#(name)": {"name": "\#(name)", "digest": "d1g3st\#(name)", "kernelVersion": "6.1.0", "cmdline": "console=ttyS0 imagebuild.sha256=ab", "imageFile": "image.tar.gz"}"#)
        }
        let json = #"{"generation": 1, "images": {\#(images.joined(separator: ","))}, "nodes": [], "ranges": []}"#
        return try JSONDecoder().decode(PublishIndex.self, from: Data(json.utf8))
    }

    @Test("boot script: registered node, its image and command line")
    func registered() throws {
        let inventory = try InventoryLoader.parse(Self.inventoryText, file: "nodes.yaml")
        let decision = BootScriptDecision.decide(mac: MACAddress("52-54-00-77-00-01")!, clientIP: nil, retry: 0, inventory: inventory,
                                                 index: try Self.index(["compute", "gpu"]), policy: .defaultImage)
        #expect(decision.image == "compute")
        #expect(decision.script.hasPrefix("#!ipxe\n"))
        #expect(decision.script.contains("kernel http://10.77.0.1:8080/images/compute/d1g3stcompute/vmlinuz"))
        #expect(decision.script.contains("quiet node01.flag"))
        #expect(decision.script.contains("node01 (52:54:00:77:00:01)"))
    }

    @Test("boot script: unknown MACs get the range's or default image, or wait with a growing delay")
    func unknown() throws {
        let inventory = try InventoryLoader.parse(Self.inventoryText, file: "nodes.yaml")
        let index = try Self.index(["compute", "gpu"])
        let stranger = MACAddress("02:00:00:00:00:99")!
        let byDefault = BootScriptDecision.decide(mac: stranger, clientIP: IPv4Address("10.77.0.200"), retry: 0, inventory: inventory,
                                                  index: index, policy: .defaultImage)
        #expect(byDefault.image == "compute")
        let inRange = BootScriptDecision.decide(mac: stranger, clientIP: IPv4Address("10.77.0.70"), retry: 0, inventory: inventory,
                                                index: index, policy: .defaultImage)
        #expect(inRange.image == "gpu")
        for (retry, delay) in [(0, 5), (1, 10), (3, 20), (11, 60), (500, 60)] {
            let waiting = BootScriptDecision.decide(mac: stranger, clientIP: IPv4Address("10.77.0.70"), retry: retry, inventory: inventory,
                                                    index: index, policy: .wait)
            #expect(waiting.image == nil)
            #expect(waiting.script.contains("sleep \(delay)\n"))
            #expect(waiting.script.contains("chain --autofree http://10.77.0.1:8080/boot/v1/bootscript?mac=02:00:00:00:00:99&retry=\(retry + 1)"))
            #expect(waiting.script.contains("not registered"))
        }
    }

    @Test("boot script: an unpublished image or no publish.json makes the node wait, saying why")
    func unpublished() throws {
        let inventory = try InventoryLoader.parse(Self.inventoryText, file: "nodes.yaml")
        let missing = BootScriptDecision.decide(mac: MACAddress("52:54:00:77:00:02")!, clientIP: nil, retry: 2, inventory: inventory,
                                                index: try Self.index(["compute"]), policy: .defaultImage)
        #expect(missing.image == nil)
        #expect(missing.script.contains("image 'missing' for node02 (52:54:00:77:00:02) is not published"))
        #expect(missing.script.contains("retry=3"))
        let nothing = BootScriptDecision.decide(mac: MACAddress("52:54:00:77:00:01")!, clientIP: nil, retry: 0, inventory: inventory,
                                                index: nil, policy: .defaultImage)
        #expect(nothing.detail.contains("no publish.json"))
    }

    @Test("status table: stuck first with hints, durations readable")
    func table() {
        let now = 1_700_000_000.0
        func node(_ name: String, _ stage: BootStage, stuck: Bool, hint: String? = nil) -> NodeStatus {
            NodeStatus(mac: "52:54:00:00:00:0\(name.last!)", hostname: name, ip: "10.0.0.\(name.last!)", registered: true, stage: stage,
                       since: now - 125, secondsInStage: 125, lastSeen: now - 3, boot: 1, bootSeconds: stage == .up ? 31.5 : nil,
                       bootElapsed: stage == .up ? nil : 200, stuck: stuck, hint: hint, image: nil, failure: nil, lastEvent: nil,
                       lastDHCPStep: nil)
        }
        let nodes = [node("n1", .up, stuck: false), node("n2", .dhcp, stuck: true, hint: "another DHCP server?")]
            .sorted(by: NodeStatus.ordered)
        let text = NodeStatusTable.render(nodes, now: now)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines[0].hasPrefix("HOSTNAME"))
        #expect(lines[1].hasPrefix("n2"))
        #expect(lines[1].contains("dhcp (stuck)"))
        #expect(lines[1].contains("2m05s"))
        #expect(lines[1].contains("3s ago"))
        #expect(lines[1].contains("3m20s…"))
        #expect(lines[2].contains("hint: another DHCP server?"))
        #expect(lines[3].hasPrefix("n1"))
        #expect(lines[3].contains("31s"))
        #expect(lines.last == "2 nodes, 1 up, 1 stuck")
    }
}
