import BootProtocols
@testable import BootServer
import Foundation
import ImageBuildKit
import NIOCore
import Synchronization
import Testing

/// Byte comparison outside `#expect`: on a mismatch `#expect(a == b)` diffs the operands, and a diff
/// of two multi-MiB arrays runs for many minutes instead of failing.
func expectBytes(_ actual: [UInt8], _ expected: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) {
    guard actual != expected else { return }
    let first = (0..<min(actual.count, expected.count)).first { actual[$0] != expected[$0] } ?? min(actual.count, expected.count)
    Issue.record("got \(actual.count) bytes, expected \(expected.count); first difference at byte \(first)",
                 sourceLocation: sourceLocation)
}

@Suite("HTTP service against a live server on 127.0.0.1", .serialized, .timeLimit(.minutes(2)))
struct HTTPServiceTests {
    @Test("static files: whole, Range (206/416), HEAD, ETag and dates, content types, streaming")
    func staticFiles() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        // Larger than the in-memory limit (256 KiB) and the chunk size: exercises the streamed path.
        let big = try fixture.writeBinary("\(fixture.imageDir)/image.tar.gz", size: 3 * 1024 * 1024 + 17, seed: 7)
        let small = try fixture.writeBinary("\(fixture.imageDir)/vmlinuz", size: 4096, seed: 3)
        try await withHTTPService(root: fixture, inventory: InventoryBox(try httpTestInventory())) { port, _ in
            let path = "/\(fixture.imageDir)/image.tar.gz"
            let whole = try await RawHTTP.get(port: port, path)
            #expect(whole.status == 200)
            expectBytes(whole.body, big)
            #expect(whole.header("content-length") == "\(big.count)")
            #expect(whole.header("accept-ranges") == "bytes")
            #expect(whole.header("content-type") == "application/gzip" || whole.header("content-type") == "application/x-gzip")

            let part = try await RawHTTP.get(port: port, path, headers: ["Range": "bytes=1000000-1000099"])
            #expect(part.status == 206)
            expectBytes(part.body, Array(big[1_000_000...1_000_099]))
            #expect(part.header("content-range") == "bytes 1000000-1000099/\(big.count)")
            #expect(part.header("content-length") == "100")

            let resume = try await RawHTTP.get(port: port, path, headers: ["Range": "bytes=3000000-"])
            #expect(resume.status == 206)
            expectBytes(resume.body, Array(big[3_000_000...]))

            let suffix = try await RawHTTP.get(port: port, path, headers: ["Range": "bytes=-10"])
            #expect(suffix.status == 206)
            expectBytes(suffix.body, Array(big.suffix(10)))
            #expect(suffix.header("content-range") == "bytes \(big.count - 10)-\(big.count - 1)/\(big.count)")

            let beyond = try await RawHTTP.get(port: port, path, headers: ["Range": "bytes=\(big.count)-"])
            #expect(beyond.status == 416)
            #expect(beyond.header("content-range") == "bytes */\(big.count)")

            let multi = try await RawHTTP.get(port: port, path, headers: ["Range": "bytes=0-1,5-6"])
            #expect(multi.status == 200)
            #expect(multi.body.count == big.count)

            let head = try await RawHTTP.get(port: port, path, method: "HEAD")
            #expect(head.status == 200)
            #expect(head.header("content-length") == "\(big.count)")
            #expect(head.body.isEmpty)

            // Small file from memory, twice (the second from the cache), with validators.
            let kernelPath = "/\(fixture.imageDir)/vmlinuz"
            let first = try await RawHTTP.get(port: port, kernelPath)
            let second = try await RawHTTP.get(port: port, kernelPath)
            expectBytes(first.body, small)
            expectBytes(second.body, small)
            #expect(second.header("content-type") == "application/octet-stream")
            let etag = try #require(first.header("etag"))
            let modified = try #require(first.header("last-modified"))
            let notModified = try await RawHTTP.get(port: port, kernelPath, headers: ["If-None-Match": etag])
            #expect(notModified.status == 304)
            #expect(notModified.body.isEmpty)
            let otherTag = try await RawHTTP.get(port: port, kernelPath, headers: ["If-None-Match": "W/\"0000\""])
            #expect(otherTag.status == 200)
            let sinceSame = try await RawHTTP.get(port: port, kernelPath, headers: ["If-Modified-Since": modified])
            #expect(sinceSame.status == 304)
            let sinceOld = try await RawHTTP.get(port: port, kernelPath, headers: ["If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"])
            #expect(sinceOld.status == 200)
            expectBytes(sinceOld.body, small)
            let smallRange = try await RawHTTP.get(port: port, kernelPath, headers: ["Range": "bytes=10-19"])
            #expect(smallRange.status == 206)
            expectBytes(smallRange.body, Array(small[10...19]))

            // An edit in place is served at once (the cache checks inode, size and mtime).
            let changed = try fixture.writeBinary("\(fixture.imageDir)/vmlinuz", size: 5000, seed: 99)
            let fresh = try await RawHTTP.get(port: port, kernelPath)
            expectBytes(fresh.body, changed)

            // Through the publish symlinks: pxelinux.cfg -> .publish/current/pxelinux.cfg -> gen-1/...
            let config = try await RawHTTP.get(port: port, "/pxelinux.cfg/default")
            #expect(config.status == 200)
            #expect(config.text == "DEFAULT imagebuild\n")
            #expect(config.header("content-type")?.hasPrefix("text/plain") == true)
            let script = try await RawHTTP.get(port: port, "/ipxe/boot.ipxe")
            #expect(script.status == 200)
            #expect(script.header("content-type")?.hasPrefix("text/plain") == true)
            let missing = try await RawHTTP.get(port: port, "/images/nope")
            #expect(missing.status == 404)
        }
    }

    /// Small files (boot configs, scripts, a node's own overlay archive) are answered on the event loop
    /// (`FastPath`), the first request included; the answers must be the router's, byte for byte but
    /// the date.
    @Test("small files: the event-loop fast path answers exactly as the router, from the first request, keeps request order, sees edits")
    func staticFastPath() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        try await withHTTPService(root: fixture, inventory: InventoryBox(try httpTestInventory())) { port, _ in
            func request(_ path: String, _ extra: String = "", method: String = "GET") -> String {
                "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\(extra)"
            }
            func fastPathCount() async throws -> Int {
                let text = try await RawHTTP.get(port: port, "/metrics").text
                let line = text.split(separator: "\n").first { $0.hasPrefix("imagebuild_http_fast_path_responses_total ") }
                return line.flatMap { Int($0.split(separator: " ").last!) } ?? -1
            }
            // busybox wget and lwIP send Connection: close; iPXE keeps the connection alive.
            let first = try await RawHTTP.get(port: port, "/pxelinux.cfg/default")
            #expect(try await fastPathCount() == 1)
            // A percent-encoded name is the router's to decode: its answer is the reference.
            let routed = try await RawHTTP.get(port: port, "/pxelinux.cfg/%64efault")
            #expect(try await fastPathCount() == 1)
            let fast = try await RawHTTP.get(port: port, "/pxelinux.cfg/default")
            // Two on one connection: a keep-alive GET, then a HEAD that closes it.
            var keepAlive = try RawHTTP.parse(try await RawHTTP.exchange(port: port, chunks: [
                request("/pxelinux.cfg/default", "Connection: keep-alive\r\n\r\n")
                + request("/pxelinux.cfg/default", "Connection: close\r\n\r\n", method: "HEAD")]))
            let length = try #require(keepAlive.header("content-length").flatMap { Int($0) })
            let head = try RawHTTP.parse(Array(keepAlive.body.dropFirst(length)), headRequest: true)
            keepAlive.body = Array(keepAlive.body.prefix(length))
            #expect(head.status == 200 && head.body.isEmpty && head.header("content-length") == "\(length)")
            #expect(try await fastPathCount() == 4)
            for response in [first, fast, keepAlive] {
                #expect(response.status == 200)
                #expect(response.text == "DEFAULT imagebuild\n")
                var headers = response.headers, expected = routed.headers
                #expect(headers.removeValue(forKey: "date") != nil)
                expected.removeValue(forKey: "date")
                #expect(headers == expected)
            }
            // Conditional and Range requests still go through the router.
            let etag = try #require(routed.header("etag"))
            #expect(try await RawHTTP.get(port: port, "/pxelinux.cfg/default", headers: ["If-None-Match": etag]).status == 304)
            let range = try await RawHTTP.get(port: port, "/pxelinux.cfg/default", headers: ["Range": "bytes=0-6"])
            #expect(range.status == 206)
            #expect(range.text == "DEFAULT")

            // Pipelined behind a routed request (the boot script), the cached file waits its turn.
            let pipelined = try await RawHTTP.exchange(port: port, chunks: [
                request("/boot/v1/bootscript?mac=52:54:00:aa:00:01", "\r\n")
                + request("/pxelinux.cfg/default", "Connection: close\r\n\r\n")])
            let text = String(decoding: pipelined, as: UTF8.self)
            let script = try #require(text.range(of: "#!ipxe"))
            let config = try #require(text.range(of: "DEFAULT imagebuild"))
            #expect(script.lowerBound < config.lowerBound, "responses out of order:\n\(text)")

            // An edit is served at once, by the fast path.
            try fixture.write(".publish/gen-1/pxelinux.cfg/default", "DEFAULT edited\n")
            let before = try await fastPathCount()
            let edited = try await RawHTTP.get(port: port, "/pxelinux.cfg/default")
            #expect(edited.text == "DEFAULT edited\n")
            #expect(edited.header("etag") != etag)
            #expect(try await RawHTTP.get(port: port, "/pxelinux.cfg/default").text == "DEFAULT edited\n")
            #expect(try await fastPathCount() == before + 2)
            // Missing, withheld and unreadable files are still the router's to answer.
            #expect(try await RawHTTP.get(port: port, "/pxelinux.cfg/nope").status == 404)
            #expect(try await fastPathCount() == before + 2)
        }
    }

    @Test("before the decoder: a head split over two reads, pipelined requests in order, a Range among them")
    func earlyFastPathPipelining() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        try await withHTTPService(root: fixture, inventory: InventoryBox(try httpTestInventory())) { port, _ in
            let plain = "GET /pxelinux.cfg/default HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            let routed = try await RawHTTP.get(port: port, "/pxelinux.cfg/default")  // records the headers
            let bytes = try await RawHTTP.exchange(port: port, chunks: [
                plain + "GET /pxelinux.cfg/default HTTP/1.1\r\nHo",
                "st: 127.0.0.1\r\n\r\n"
                + "GET /pxelinux.cfg/default HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes=0-6\r\n\r\n"
                + "GET /pxelinux.cfg/default HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            ], pause: .milliseconds(100))
            let responses = try RawHTTP.parseAll(bytes)
            #expect(responses.map(\.status) == [200, 200, 206, 200])
            #expect(responses.map(\.text) == ["DEFAULT imagebuild\n", "DEFAULT imagebuild\n", "DEFAULT", "DEFAULT imagebuild\n"])
            for response in responses where response.status == 200 {
                var headers = response.headers, expected = routed.headers
                headers.removeValue(forKey: "date")
                expected.removeValue(forKey: "date")
                #expect(headers == expected)
            }
        }
    }

    @Test("paths that leave the root are refused; symlinks inside it work", arguments: [
        ("/../secret.txt", [400, 403, 404]),
        ("/images/../../secret.txt", [400, 403, 404]),
        ("/%2e%2e/secret.txt", [400, 403, 404]),
        ("/images/%2e%2e/%2e%2e/secret.txt", [400, 403, 404]),
        ("/..%2fsecret.txt", [400, 403, 404]),
        ("/escape.txt", [403]),
        ("/escape-dir/secret.txt", [403]),
        ("/passwd", [403]),
        ("/pxelinux.cfg%00/default", [400, 403, 404]),
    ])
    func confinement(path: String, allowed: [Int]) async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        try await withHTTPService(root: fixture, inventory: InventoryBox(nil)) { port, _ in
            let response = try await RawHTTP.get(port: port, path)
            #expect(allowed.contains(response.status), "\(path) -> \(response.status)")
            #expect(!response.text.contains("top secret"))
            #expect(!response.text.contains("root:"))
            let inside = try await RawHTTP.get(port: port, "/pxelinux.cfg/default")
            #expect(inside.status == 200)
        }
    }

    @Test("bootscript: known MAC, unknown MAC, and a MAC added while the server runs")
    func bootScripts() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        let inventory = InventoryBox(try httpTestInventory())
        try await withHTTPService(root: fixture, inventory: inventory, policy: .wait) { port, service in
            let known = try await RawHTTP.get(port: port, "/boot/v1/bootscript?mac=52:54:00:aa:00:01")
            #expect(known.status == 200)
            #expect(known.header("content-type")?.hasPrefix("text/plain") == true)
            #expect(known.text.hasPrefix("#!ipxe\n"))
            #expect(known.text.contains("kernel http://127.0.0.1:8080/images/compute/\(HTTPTestRoot.digest)/vmlinuz"))
            #expect(known.text.contains("alpha.flag"))

            let unknown = try await RawHTTP.get(port: port, "/boot/v1/bootscript?mac=52-54-00-bb-00-02&retry=2")
            #expect(unknown.status == 200)
            #expect(unknown.text.contains("not registered"))
            #expect(unknown.text.contains("sleep 15\n"))
            #expect(unknown.text.contains("/boot/v1/bootscript?mac=52:54:00:bb:00:02&retry=3"))

            // nodes.yaml gains the machine: the very next request boots it, no restart.
            inventory.set(try httpTestInventory(extraNodes: """
                  - mac: 52:54:00:bb:00:02
                    hostname: beta
                    image: compute
                    append: beta.flag
                """))
            let added = try await RawHTTP.get(port: port, "/boot/v1/bootscript?mac=52-54-00-bb-00-02&retry=3")
            #expect(added.text.contains("kernel http://127.0.0.1:8080/images/compute/"))
            #expect(added.text.contains("beta.flag"))

            let bad = try await RawHTTP.get(port: port, "/boot/v1/bootscript?mac=zz")
            #expect(bad.status == 400)
            let none = try await RawHTTP.get(port: port, "/boot/v1/bootscript")
            #expect(none.status == 400)

            // Each script served is on the node's timeline, and the client's IP now maps to the MAC.
            let beta = MACAddress(0x52, 0x54, 0x00, 0xbb, 0x00, 0x02)
            let scripts = service.timeline.events(for: beta).compactMap { event -> String? in
                if case .bootScript(let image, _) = event.observation { return image ?? "wait" }
                return nil
            }
            #expect(scripts == ["wait", "compute"])
            #expect(service.timeline.node(beta)?.stage == .config)
        }
    }

    @Test("unknown MACs boot the default image under the default policy")
    func defaultImage() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        let inventory = try InventoryLoader.parse("""
            network: {server: 127.0.0.1, subnet: 127.0.0.0/8}
            defaults: {image: compute}
            """, file: "nodes.yaml")
        try await withHTTPService(root: fixture, inventory: InventoryBox(inventory)) { port, _ in
            let script = try await RawHTTP.get(port: port, "/boot/v1/bootscript?mac=02:00:00:00:00:09")
            #expect(script.text.contains("any machine not listed"))
            #expect(script.text.contains("kernel http://127.0.0.1/images/compute/"))
        }
    }

    @Test("stage reports before the decoder: split over reads, pipelined, recorded once, answered as the router does, errors in order")
    func earlyReports() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        try await withHTTPService(root: fixture, inventory: InventoryBox(try httpTestInventory())) { port, service in
            func post(_ body: String, close: Bool = false) -> String {
                "POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n"
                    + (close ? "Connection: close\r\n" : "") + "\r\n" + body
            }
            func metric(_ prefix: String) async throws -> Int {
                let text = try await RawHTTP.get(port: port, "/metrics").text
                let line = text.split(separator: "\n").first { $0.hasPrefix(prefix + " ") }
                return line.flatMap { Int($0.split(separator: " ").last!) } ?? 0
            }
            let answeredEarly = "imagebuild_http_fast_path_responses_total", reportsAccepted = #"imagebuild_http_requests_total{route="events",code="2xx"}"#
            let mac = MACAddress(0x52, 0x54, 0x00, 0xaa, 0x00, 0x01)
            _ = try await RawHTTP.get(port: port, "/pxelinux.cfg/default")  // read once: cached from now on
            let start = post(#"{"mac":"52:54:00:aa:00:01","stage":"stage1-start","detail":"eth0"}"#)
            let downloaded = post(#"{"mac":"52:54:00:aa:00:01","stage":"image-downloaded","detail":"12 bytes"}"#)
            // One report split inside its head and inside its body, the next in the same read as its end,
            // then a GET that closes.
            let splitHead = start.index(start.startIndex, offsetBy: 20), splitBody = start.index(start.endIndex, offsetBy: -9)
            let early = try RawHTTP.parseAll(try await RawHTTP.exchange(port: port, chunks: [
                String(start[..<splitHead]), String(start[splitHead..<splitBody]), String(start[splitBody...]) + downloaded,
                "GET /pxelinux.cfg/default HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            ], pause: .milliseconds(100)))
            #expect(early.map(\.status) == [202, 202, 200])
            let reports = service.timeline.events(for: mac).map(\.observation)
            #expect(reports == [.report(.stage1Start, detail: "eth0"), .report(.imageDownloaded, detail: "12 bytes")])
            #expect(try await metric(reportsAccepted) == 2)
            #expect(try await metric(answeredEarly) == 4)  // the first GET, both reports and the GET

            // Behind a routed request (a Range GET), reports go to the router, so responses keep their
            // order; its answer is the early path's but for the date and the event's time.
            let routed = try RawHTTP.parseAll(try await RawHTTP.exchange(port: port, chunks: [
                "GET /pxelinux.cfg/default HTTP/1.1\r\nHost: 127.0.0.1\r\nRange: bytes=0-6\r\n\r\n"
                    + post(#"{"mac":"52:54:00:aa:00:01","stage":"image-verified"}"#)
                    + post(#"{"mac":"52:54:00:aa:00:01","stage":"switch-root"}"#, close: true),
            ]))
            #expect(routed.map(\.status) == [206, 202, 202])
            #expect(try await metric(reportsAccepted) == 4)
            #expect(try await metric(answeredEarly) == 4)
            var earlyHeaders = early[0].headers, routedHeaders = routed[1].headers
            for name in ["date", "content-length"] {
                earlyHeaders.removeValue(forKey: name)
                routedHeaders.removeValue(forKey: name)
            }
            #expect(earlyHeaders == routedHeaders)
            let earlyEvent = try JSONDecoder().decode(BootEvent.self, from: Data(early[0].body))
            let routedEvent = try JSONDecoder().decode(BootEvent.self, from: Data(routed[1].body))
            #expect(earlyEvent.observation == .report(.stage1Start, detail: "eth0"))
            #expect(routedEvent.observation == .report(.imageVerified, detail: nil))
            #expect(early[0].text.contains(#""summary":"node: stage1-start (eth0)""#))
            #expect(routed[1].text.contains(#""summary":"node: image-verified""#))

            // A report the intake refuses is the router's to answer (400), in order with what follows,
            // and nothing of it is recorded.
            let refused = try RawHTTP.parseAll(try await RawHTTP.exchange(port: port, chunks: [
                post(#"{"mac":"52:54:00:aa:00:01","stage":"booting"}"#) + post(#"{"mac":"52:54:00:aa:00:01","stage":"up"}"#, close: true),
            ]))
            #expect(refused.map(\.status) == [400, 202])
            #expect(refused[0].text.contains("unknown stage 'booting'"))
            #expect(service.timeline.events(for: mac).count == 5)
            #expect(service.timeline.node(mac)?.stage == .up)
        }
    }

    @Test("a batch of reports: one POST, each report at its own time, in order; a bad one records none")
    func batchedReports() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        try await withHTTPService(root: fixture, inventory: InventoryBox(try httpTestInventory())) { port, service in
            let mac = MACAddress(0x52, 0x54, 0x00, 0xaa, 0x00, 0x01)
            // Stage 1's shape: the body's MAC and token, then the reports since the last POST.
            let batch = #"{"mac":"52:54:00:aa:00:01","token":"","events":[{"stage":"image-downloaded","detail":"12 bytes","ago":2.5},"#
                + #"{"stage":"image-verified","detail":"abc","ago":2.25},{"stage":"overlay","detail":"5 files","ago":0.5},{"stage":"switch-root","detail":"/sbin/init","ago":0.00}]}"#
            let posted = Date()
            let accepted = try await RawHTTP.post(port: port, "/api/v1/events", json: batch)
            #expect(accepted.status == 202)
            let answered = try JSONDecoder().decode([BootEvent].self, from: Data(accepted.body))
            #expect(answered.map(\.observation) == [.report(.imageDownloaded, detail: "12 bytes"), .report(.imageVerified, detail: "abc"),
                                                    .report(.overlay, detail: "5 files"), .report(.switchRoot, detail: "/sbin/init")])
            let events = service.timeline.events(for: mac)
            #expect(events.map(\.observation) == answered.map(\.observation))
            // Each at the time it happened: "ago" seconds before the POST.
            if events.count == 4 {
                #expect(abs(events[3].time.timeIntervalSince(events[0].time) - 2.5) < 0.01)
                #expect(abs(events[2].time.timeIntervalSince(events[1].time) - 1.75) < 0.01)
                #expect(abs(events[3].time.timeIntervalSince(posted)) < 5)
            }
            #expect(service.timeline.node(mac)?.stage == .switchRoot)

            // All or nothing: one bad report (an unknown stage, an "ago" out of range), an empty or
            // oversized batch, or a body with both forms records nothing and says why.
            let refusals: [(String, String)] = [
                (#"{"mac":"52:54:00:aa:00:01","events":[{"stage":"up"},{"stage":"booting"}]}"#, "unknown stage 'booting'"),
                (#"{"mac":"52:54:00:aa:00:01","events":[{"stage":"up","ago":-1}]}"#, "is the seconds since the step, 0 to 3600, not -1"),
                (#"{"mac":"52:54:00:aa:00:01","events":[{"stage":"up","ago":7200}]}"#, "0 to 3600"),
                (#"{"mac":"52:54:00:aa:00:01","events":[]}"#, "1 to 16 reports, not 0"),
                (#"{"mac":"52:54:00:aa:00:01","events":["# + Array(repeating: #"{"stage":"up"}"#, count: 17).joined(separator: ",") + "]}",
                 "1 to 16 reports, not 17"),
                (#"{"mac":"52:54:00:aa:00:01","stage":"up","events":[{"stage":"up"}]}"#, "not both"),
                (#"{"mac":"52:54:00:aa:00:01","events":[{"detail":"x"}]}"#, #"missing \"stage\" (one of: stage1-start"#),  // as JSON escapes it
            ]
            for (body, reason) in refusals {
                let refused = try await RawHTTP.post(port: port, "/api/v1/events", json: body)
                #expect(refused.status == 400, "\(body)")
                #expect(refused.text.contains(reason), "\(refused.text)")
            }
            // From another node's address: 403, and none of the batch is recorded.
            let stranger = try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"mac":"52:54:00:aa:00:01","events":[{"stage":"up"}]}"#,
                                                  from: "127.0.0.9")
            #expect(stranger.status == 403)
            #expect(service.timeline.events(for: mac).count == 4)
            // The single form takes "ago" too.
            let single = try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"mac":"52:54:00:aa:00:01","stage":"up","ago":1.5}"#)
            #expect(single.status == 202)
            let up = try JSONDecoder().decode(BootEvent.self, from: Data(single.body))
            #expect(up.observation == .report(.up, detail: nil))
            #expect(abs(Date().timeIntervalSince(up.time) - 1.5) < 1)
        }
    }

    @Test("events in, validated; timeline out; kept across a restart on the same state directory")
    func eventsAndRestart() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        let inventory = InventoryBox(try httpTestInventory())
        // The unregistered node holds a lease on 127.0.0.3 and reports from there.
        let leases = testLeases([(MACAddress(0x52, 0x54, 0, 0xcc, 0, 3), IPv4Address(127, 0, 0, 3))])
        try fixture.writeBinary("\(fixture.imageDir)/image.tar.gz", size: 600_000, seed: 5)
        try await withHTTPService(root: fixture, inventory: inventory, leases: leases) { port, service in
            // The node's own address is learnt from its bootscript request, so its download is attributed.
            _ = try await RawHTTP.get(port: port, "/boot/v1/bootscript?mac=52:54:00:aa:00:01")
            let accepted = try await RawHTTP.post(port: port, "/api/v1/events",
                                                  json: #"{"mac":"52:54:00:AA:00:01","stage":"stage1-start","detail":"eth0 10.0.0.5"}"#)
            #expect(accepted.status == 202)
            _ = try await RawHTTP.get(port: port, "/\(fixture.imageDir)/image.tar.gz")
            for stage in ["image-downloaded", "image-verified", "switch-root"] {
                let response = try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"mac":"52-54-00-aa-00-01","stage":"\#(stage)"}"#)
                #expect(response.status == 202)
            }
            let failed = try await RawHTTP.post(port: port, "/api/v1/events",
                                                json: #"{"mac":"52:54:00:cc:00:03","stage":"failed","detail":"download: HTTP 404"}"#,
                                                from: "127.0.0.3")
            #expect(failed.status == 202)
            // Trust: a report for a node from another node's address is refused (403) and not recorded;
            // a malformed MAC is 400 even from a known sender; the sender is recorded on each event.
            let forged = try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"mac":"52:54:00:cc:00:03","stage":"up"}"#)
            #expect(forged.status == 403)
            #expect(forged.text.contains("must come from the node itself"))
            let stranger = try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"mac":"52:54:00:aa:00:01","stage":"up"}"#,
                                                  from: "127.0.0.9")
            #expect(stranger.status == 403)
            for bad in ["zz", String(repeating: "a", count: 500), ""] {
                let response = try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"mac":"\#(bad)","stage":"up"}"#)
                #expect(response.status == 400, "mac '\(bad.prefix(10))'")
            }
            let noMACStranger = try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"stage":"up"}"#, from: "127.0.0.9")
            #expect(noMACStranger.status == 400)
            #expect(service.timeline.node(MACAddress(0x52, 0x54, 0, 0xcc, 0, 3))?.stage == .failed)
            #expect(service.timeline.events(for: MACAddress(0x52, 0x54, 0, 0xcc, 0, 3)).last?.source == IPv4Address(127, 0, 0, 3))
            // Nothing of the publish machinery is served (the fixture lays it out as publish does).
            try fixture.write(".publish/lock", "")
            for path in ["/.publish/lock", "/publish.json", "/.publish/current/publish.json", "/.publish/gen-1/pxelinux.cfg/default"] {
                #expect(try await RawHTTP.get(port: port, path).status == 404, "\(path)")
            }

            let unknownStage = try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"mac":"52:54:00:aa:00:01","stage":"booting"}"#)
            #expect(unknownStage.status == 400)
            #expect(unknownStage.text.contains("unknown stage 'booting'"))
            #expect(unknownStage.text.contains("stage1-start"))
            let notJSON = try await RawHTTP.post(port: port, "/api/v1/events", json: "stage=up")
            #expect(notJSON.status == 400)
            let noStage = try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"mac":"52:54:00:aa:00:01"}"#)
            #expect(noStage.status == 400)
            let huge = try await RawHTTP.post(port: port, "/api/v1/events",
                                              json: #"{"mac":"52:54:00:aa:00:01","stage":"up","detail":"\#(String(repeating: "x", count: 10_000))"}"#)
            #expect(huge.status == 413)

            let nodes = try JSONDecoder().decode(NodesResponse.self, from: Data(try await RawHTTP.get(port: port, "/api/v1/nodes").body))
            #expect(nodes.nodes.count == 2)
            // The failed (unregistered) node comes first, with its detail and hint.
            #expect(nodes.nodes[0].mac == "52:54:00:cc:00:03")
            #expect(nodes.nodes[0].stuck)
            #expect(nodes.nodes[0].registered == false)
            #expect(nodes.nodes[0].failure == "download: HTTP 404")
            #expect(nodes.nodes[0].hint != nil)
            #expect(nodes.nodes[1].hostname == "alpha")
            #expect(nodes.nodes[1].stage == .switchRoot)
            #expect(!nodes.nodes[1].stuck)

            let detail = try await RawHTTP.get(port: port, "/api/v1/nodes/52-54-00-aa-00-01")
            #expect(detail.status == 200)
            let timeline = try JSONDecoder().decode(NodeTimelineResponse.self, from: Data(detail.body))
            let kinds = timeline.events.map(\.observation)
            #expect(kinds.contains(.transfer(.http, path: "\(fixture.imageDir)/image.tar.gz", bytes: 600_000, size: 600_000, outcome: .completed)))
            #expect(kinds.last == .report(.switchRoot, detail: nil))
            #expect(detail.text.contains(#""summary":"#))
            let nobody = try await RawHTTP.get(port: port, "/api/v1/nodes/02:00:00:00:00:00")
            #expect(nobody.status == 404)
            #expect(service.timeline.node(MACAddress(0x52, 0x54, 0x00, 0xaa, 0x00, 0x01))?.image == "compute")
        }

        // A new service and timeline on the same state directory: the history is still there.
        try await withHTTPService(root: fixture, inventory: inventory) { port, _ in
            let detail = try await RawHTTP.get(port: port, "/api/v1/nodes/52:54:00:aa:00:01")
            let timeline = try JSONDecoder().decode(NodeTimelineResponse.self, from: Data(detail.body))
            #expect(timeline.node.stage == .switchRoot)
            #expect(timeline.events.count == 6)
            #expect(timeline.node.image == "compute")
            let up = try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"mac":"52:54:00:aa:00:01","stage":"up"}"#)
            #expect(up.status == 202)
            let nodes = try JSONDecoder().decode(NodesResponse.self, from: Data(try await RawHTTP.get(port: port, "/api/v1/nodes").body))
            let alpha = try #require(nodes.nodes.first { $0.hostname == "alpha" })
            #expect(alpha.stage == .up)
            #expect(alpha.bootSeconds != nil)
        }
    }

    @Test("the inventory's state: rejected changes and nodes the published generation lacks, as JSON and metrics; boot durations as a histogram")
    func inventoryStatusAndBootDuration() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        let rejection = Mutex<String?>(nil)
        try await withHTTPService(root: fixture, inventory: InventoryBox(try httpTestInventory()),
                                  inventoryRejection: { rejection.withLock { $0 } }) { port, _ in
            var status = try JSONDecoder().decode(InventoryStatus.self, from: Data(try await RawHTTP.get(port: port, "/api/v1/inventory").body))
            // The fixture's generation 1 has no node files; nodes.yaml lists alpha.
            #expect(status.nodes == 1)
            #expect(status.rejected == nil)
            #expect(status.published?.generation == 1)
            #expect(status.published?.added == ["alpha (52:54:00:aa:00:01)"])
            #expect(status.warnings == ["inventory newer than published generation 1 (1 added): run 'imagebuild publish' to write their boot files"])
            rejection.withLock { $0 = "nodes.yaml:7:5: malformed MAC 'zz'" }
            status = try JSONDecoder().decode(InventoryStatus.self, from: Data(try await RawHTTP.get(port: port, "/api/v1/inventory").body))
            #expect(status.warnings.first == "inventory rejected at nodes.yaml:7:5: malformed MAC 'zz' (the previous inventory is in force)")

            for stage in ["stage1-start", "up"] {
                #expect(try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"mac":"52:54:00:aa:00:01","stage":"\#(stage)"}"#).status == 202)
            }
            let metrics = try await RawHTTP.get(port: port, "/metrics").text
            for line in ["imagebuild_inventory_rejected 1", "imagebuild_inventory_unpublished_changes 1", "imagebuild_published_generation 1",
                         "imagebuild_boot_duration_seconds_count 1", "# HELP imagebuild_boot_duration_seconds "] {
                #expect(metrics.contains(line), "\(line) not in /metrics")
            }
        }
    }

    @Test("metrics: requests, bytes and nodes by stage in Prometheus text; the status page is self-contained")
    func metricsAndStatusPage() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        try fixture.writeBinary("\(fixture.imageDir)/vmlinuz", size: 1000)
        try await withHTTPService(root: fixture, inventory: InventoryBox(try httpTestInventory())) { port, _ in
            _ = try await RawHTTP.get(port: port, "/\(fixture.imageDir)/vmlinuz")
            _ = try await RawHTTP.get(port: port, "/nope")
            _ = try await RawHTTP.post(port: port, "/api/v1/events", json: #"{"mac":"52:54:00:aa:00:01","stage":"up"}"#)
            let metrics = try await RawHTTP.get(port: port, "/metrics")
            #expect(metrics.status == 200)
            #expect(metrics.header("content-type")?.hasPrefix("text/plain; version=0.0.4") == true)
            let text = metrics.text
            #expect(text.contains(#"imagebuild_http_requests_total{route="files",code="2xx"} 1"#))
            #expect(text.contains(#"imagebuild_http_requests_total{route="other",code="4xx"} 1"#))
            #expect(text.contains(#"imagebuild_http_requests_total{route="events",code="2xx"} 1"#))
            #expect(text.contains(#"imagebuild_nodes{stage="up"} 1"#))
            #expect(text.contains(#"imagebuild_nodes{stage="dhcp"} 0"#))
            #expect(text.contains(#"imagebuild_http_image_bytes_total 1000"#))

            let page = try await RawHTTP.get(port: port, "/")
            #expect(page.status == 200)
            #expect(page.header("content-type") == "text/html; charset=utf-8")
            #expect(page.text.contains("/api/v1/nodes"))
            #expect(!page.text.contains("http://") && !page.text.contains("https://"))
        }
    }

    @Test("a download the client abandons is on the node's timeline as incomplete, with the bytes sent")
    func abandonedDownload() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        // Larger than both socket buffers of a loopback connection can grow (tcp_rmem max 32 MiB +
        // tcp_wmem max 4 MiB on this machine): with 8 MiB, on a loaded machine the server handed every
        // byte to the kernel before the client's close, and the transfer counted as completed.
        let size = 64 * 1024 * 1024
        try fixture.writeBinary("\(fixture.imageDir)/image.tar.gz", size: size)
        try await withHTTPService(root: fixture, inventory: InventoryBox(try httpTestInventory())) { port, service in
            _ = try await RawHTTP.get(port: port, "/boot/v1/bootscript?mac=52:54:00:aa:00:01")
            let request = "GET /\(fixture.imageDir)/image.tar.gz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            let received = try await RawHTTP.abandon(port: port, request, after: 100_000)
            #expect(received >= 100_000)
            let alpha = MACAddress(0x52, 0x54, 0x00, 0xaa, 0x00, 0x01)
            // The server notices on its next write; give it a moment.
            var transfer: (UInt64, UInt64?, TransferOutcome)?
            for _ in 0..<100 where transfer == nil {
                try await Task.sleep(for: .milliseconds(50))
                for event in service.timeline.events(for: alpha) {
                    if case .transfer(.http, _, let bytes, let expected, let outcome) = event.observation { transfer = (bytes, expected, outcome) }
                }
            }
            let (bytes, expected, outcome) = try #require(transfer)
            #expect(outcome.label == "incomplete")
            #expect(bytes < UInt64(size))
            #expect(expected == UInt64(size))
            #expect(service.timeline.node(alpha)?.stage == .image)
        }
    }

    @Test("images after the router's first answer go out with sendfile: same bytes and headers, on the timeline, abandoned ones too")
    func earlySendfile() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        let bytes = try fixture.writeBinary("\(fixture.imageDir)/initramfs.img", size: 3 * FileDownload.regionSize + 12345)
        // More than the loopback socket buffers hold (see abandonedDownload), so an abandon is seen.
        let large = 64 * 1024 * 1024
        _ = try fixture.writeBinary("\(fixture.imageDir)/image.tar.gz", size: large)
        try await withHTTPService(root: fixture, inventory: InventoryBox(try httpTestInventory())) { port, service in
            _ = try await RawHTTP.get(port: port, "/boot/v1/bootscript?mac=52:54:00:aa:00:01")
            let alpha = MACAddress(0x52, 0x54, 0x00, 0xaa, 0x00, 0x01)
            func transfers() -> [(UInt64, TransferOutcome)] {
                service.timeline.events(for: alpha).compactMap {
                    if case .transfer(.http, _, let bytes, _, let outcome) = $0.observation { return (bytes, outcome) }
                    return nil
                }
            }
            let path = "/\(fixture.imageDir)/initramfs.img"
            let routed = try await RawHTTP.get(port: port, path)
            #expect(routed.body == bytes)
            let early = try await RawHTTP.get(port: port, path)
            #expect(early.body == bytes)
            var headers = early.headers, expected = routed.headers
            headers.removeValue(forKey: "date")
            expected.removeValue(forKey: "date")
            #expect(headers == expected)
            let head = try await RawHTTP.get(port: port, path, method: "HEAD")
            #expect(head.status == 200 && head.body.isEmpty && head.header("content-length") == "\(bytes.count)")
            let fast = try await RawHTTP.get(port: port, "/metrics").text
            #expect(fast.contains("imagebuild_http_fast_path_responses_total 2"), "the second GET and the HEAD")
            #expect(transfers().map(\.1.label) == ["completed", "completed"])
            #expect(transfers().map(\.0) == [UInt64(bytes.count), UInt64(bytes.count)])

            // Abandoned: once through the router (which records the head), then with sendfile.
            let image = "GET /\(fixture.imageDir)/image.tar.gz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            for round in 1...2 {
                #expect(try await RawHTTP.abandon(port: port, image, after: 100_000) >= 100_000)
                for _ in 0..<100 where transfers().count < 2 + round { try await Task.sleep(for: .milliseconds(50)) }
            }
            let abandoned = Array(transfers().dropFirst(2))
            #expect(abandoned.map(\.1.label) == ["incomplete", "incomplete"])
            #expect(abandoned.allSatisfy { $0.0 < UInt64(large) })
            let after = try await RawHTTP.get(port: port, "/metrics").text
            #expect(after.contains("imagebuild_http_fast_path_responses_total 3"), "the second abandoned download")
        }
    }

    /// The sendfile path queues a whole download at once, so the socket stays unwritable until it is
    /// nearly sent: a slow node (a storm sharing the uplink, lpxelinux under TCG) used to be cut at the
    /// send limit while it was still reading. Progress is what the client acknowledges (TCP_INFO).
    @Test("a slow reader of a sendfile download is not cut while it reads; a reader that stops is")
    func slowReaderOfASendfileDownload() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        let size = 32 * 1024 * 1024  // well past the loopback socket buffers
        _ = try fixture.writeBinary("\(fixture.imageDir)/image.tar.gz", size: size)
        try await withHTTPService(root: fixture, inventory: InventoryBox(try httpTestInventory()), configure: {
            // Short enough for a test, long enough that a loaded CI host's scheduling hiccup in the
            // reader below is not a stall.
            $0.timeouts.send = .seconds(5)
        }) { port, _ in
            let first = try await RawHTTP.get(port: port, "/\(fixture.imageDir)/image.tar.gz")  // the router's, at full speed
            #expect(first.body.count == size)
            // A steady slow reader (64 KiB every 20 ms or so; curl's --limit-rate reads in bursts, then
            // pauses for seconds, which is a stall by this limit's definition), for longer than the send
            // limit, by sendfile.
            let output = fixture.base + "/slow.out", file = fixture.root + "/\(fixture.imageDir)/image.tar.gz"
            let clock = ContinuousClock()
            let started = clock.now
            let slow = try await runCommand(["/bin/bash", "-c", """
                exec 3<>/dev/tcp/127.0.0.1/\(port)
                printf 'GET /\(fixture.imageDir)/image.tar.gz HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' >&3
                : > \(output)
                while n=$(dd bs=65536 count=1 iflag=fullblock <&3 2>/dev/null | tee -a \(output) | wc -c); [ "$n" -gt 0 ]; do sleep 0.02; done
                tail -c \(size) \(output) | cmp - \(file) && echo whole
                """], timeoutSeconds: 90)
            let took = clock.now - started
            #expect(slow.output.contains("whole"), "the slow download is not whole: \(slow.output)")
            #expect(took > .seconds(6), "the download took \(took): the test did not outlast the send limit")
            var metrics = try await RawHTTP.get(port: port, "/metrics").text
            #expect(metrics.contains("imagebuild_http_fast_path_responses_total 1"), "the slow download did not go by sendfile")
            #expect(metrics.contains("imagebuild_http_connections_timed_out_total{reason=\"send\"} 0"))
            // A reader that stops: it asks, reads nothing for 12 s, then finds the connection closed
            // after what the socket buffers held.
            let stalled = try await runCommand(["/bin/bash", "-c",
                "exec 3<>/dev/tcp/127.0.0.1/\(port); printf 'GET /\(fixture.imageDir)/image.tar.gz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; sleep 12; timeout 20 cat <&3 | wc -c"],
                timeoutSeconds: 60)
            let received = Int(stalled.output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
            #expect(received > 0 && received < size, "the stalled reader got \(received) of \(size) bytes: \(stalled.output)")
            metrics = try await RawHTTP.get(port: port, "/metrics").text
            #expect(metrics.contains("imagebuild_http_connections_timed_out_total{reason=\"send\"} 1"), "no send time-out counted")
        }
    }

    @Test("past the connection limit, a new client waits until a slot frees")
    func connectionLimit() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        try await withHTTPService(root: fixture, inventory: InventoryBox(nil), configure: { $0.maximumConnections = 2 }) { port, _ in
            let first = try await RawHTTP.idleConnection(port: port)
            let second = try await RawHTTP.idleConnection(port: port)
            // The limit is checked between accept batches (the listener stops reading once it is
            // reached): connections that are all queued before one wake-up are accepted together.
            // On a loaded machine the third connect overtook the server's accept of the first two,
            // so let the server take the first two before the third arrives.
            try await Task.sleep(for: .milliseconds(300))
            let answered = Mutex(false)
            let waiting = Task {
                let response = try await RawHTTP.get(port: port, "/pxelinux.cfg/default")
                answered.withLock { $0 = true }
                return response
            }
            try await Task.sleep(for: .milliseconds(800))
            #expect(!answered.withLock { $0 }, "a third connection was served while two held both slots")
            try await first.close()
            let response = try await waiting.value
            #expect(response.status == 200)
            try await second.close()
        }
    }

    @Test("a client that sends its request head too slowly is disconnected")
    func slowloris() async throws {
        let fixture = try HTTPTestRoot()
        defer { fixture.cleanup() }
        try await withHTTPService(root: fixture, inventory: InventoryBox(nil), configure: {
            $0.timeouts.header = .milliseconds(600)
            $0.timeouts.idle = .seconds(5)
        }) { port, _ in
            let chunks = ["GET /pxelinux.cfg/default HTTP/1.1\r\n"] + Array(repeating: "X-Slow: 1\r\n", count: 20)
            let (bytes, closedAfter) = try await RawHTTP.exchangeTimed(port: port, chunks: chunks, pause: .milliseconds(200),
                                                                       deadline: .seconds(8))
            #expect(bytes.isEmpty, "got a response: \(String(decoding: bytes.prefix(100), as: UTF8.self))")
            #expect(closedAfter < .seconds(3))
            // A normal client on the same server is unaffected.
            let normal = try await RawHTTP.get(port: port, "/pxelinux.cfg/default")
            #expect(normal.status == 200)
        }
    }
}
