import Foundation
import TestSupport
import Testing

extension EndToEnd {
    /// The status page at boot-storm scale, in a real browser: `imagebuild serve` on loopback with
    /// 10,000 nodes in every stage (a journal left mid-storm, `benchmarks/status-page.py fill`, plus live
    /// reports each sent from the node's own address), the page rendered by headless Chromium. The
    /// counts it shows must be the server's, its filters and search must narrow the rows, and its polls
    /// after the first must be incremental. `benchmarks/status-page.sh` measures the same set-up.
    @Suite("Status page: 10,000 nodes in headless Chromium", .serialized,
           .enabled(if: Harness.have("chromium") && Harness.have("python3"), "needs chromium and python3 (scripts/setup)"))
    struct StatusPageTests {
        static let nodes = 10_000

        /// What `/api/v1/nodes` (the full list `imagebuild status` reads) says, reduced to counts.
        struct Counts {
            var stages: [String: Int] = [:]
            var stuck = 0, failed = 0, unregistered = 0, total = 0
            var upMatchingNode0000 = 0
        }

        static func counts(port: Int) throws -> Counts {
            struct Node: Decodable { var stage: String; var stuck: Bool; var registered: Bool; var hostname: String? }
            struct List: Decodable { var nodes: [Node] }
            let result = try Harness.shell("curl -fsS --max-time 30 http://127.0.0.1:\(port)/api/v1/nodes", timeout: 60)
            let list = try JSONDecoder().decode(List.self, from: Data(result.stdout.utf8))
            var counts = Counts()
            for node in list.nodes {
                counts.total += 1
                counts.stages[node.stage, default: 0] += 1
                if node.stage == "failed" { counts.failed += 1 } else if node.stuck { counts.stuck += 1 }
                if !node.registered { counts.unregistered += 1 }
                if node.stage == "up", node.hostname?.contains("node0000") == true { counts.upMatchingNode0000 += 1 }
            }
            return counts
        }

        /// The page after ~10 s of its own (virtual) time: the first poll and a few incremental ones.
        static func dom(port: Int, query: String, dir: String) throws -> String {
            let result = try Harness.run("/usr/bin/env", [
                "chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--user-data-dir=\(dir)/chromium",
                "--window-size=1400,900", "--virtual-time-budget=10000", "--dump-dom", "http://127.0.0.1:\(port)/\(query)",
            ], timeout: 90)
            guard result.status == 0, result.stdout.contains("</html>") else {
                throw HarnessError("chromium failed (\(result.status)): \(result.stderr.suffix(2000))")
            }
            return result.stdout
        }

        /// The number on each count chip, by its filter (`all`, `stuck`, `stage:up`, …).
        static func chips(_ html: String) -> [String: Int] {
            let pattern = try! NSRegularExpression(pattern: #"data-filter="([^"]+)">(?:(?!</button>).)*?<b>(\d+)</b>"#)
            var result: [String: Int] = [:]
            for match in pattern.matches(in: html, range: NSRange(html.startIndex..., in: html)) {
                let key = String(html[Range(match.range(at: 1), in: html)!])
                result[key] = Int(html[Range(match.range(at: 2), in: html)!])
            }
            return result
        }

        static func attribute(_ name: String, _ html: String) -> String? {
            guard let range = html.range(of: #"<html[^>]*\s\#(name)="([^"]*)""#, options: .regularExpression) else { return nil }
            let text = html[range]
            return text[text.index(after: text.lastIndex(of: "=")!)...].trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        }

        /// The first capture group of every match.
        static func matches(_ pattern: String, _ text: String) -> [String] {
            let regex = try! NSRegularExpression(pattern: pattern)
            return regex.matches(in: text, range: NSRange(text.startIndex..., in: text)).map { String(text[Range($0.range(at: 1), in: text)!]) }
        }

        static func shown(_ html: String) -> String {
            guard let range = html.range(of: #"<span id="shown">[^<]*"#, options: .regularExpression) else { return "" }
            return String(html[range].dropFirst(#"<span id="shown">"#.count))
        }

        @Test("counts per stage match the server, filters and search narrow the rows, polls after the first are incremental")
        func storm() async throws { try await Harness.blocking { try Self().stormOnThread() } }
        func stormOnThread() throws {
            let dir = Harness.temporaryDirectory("status-page")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let port = Int.random(in: 20_000...50_000)
            let script = Harness.packageRoot + "/benchmarks/status-page.py"
            let fill = try Harness.run("/usr/bin/env", ["python3", script, "fill", dir, "--nodes", "\(Self.nodes)", "--http-port", "\(port)"])
            try #require(fill.status == 0, "fill: \(fill.stderr)")
            // A published generation that boots none of the nodes: the page must say nodes.yaml is newer.
            try #"{"generation": 4, "defaultImage": null, "nodes": [], "ranges": [], "images": {}}"#
                .write(toFile: dir + "/root/publish.json", atomically: true, encoding: .utf8)

            let serve = try BackgroundProcess(Harness.binary, [
                "serve", "--no-dhcp", "--no-tftp", "--listen", "127.0.0.1", "--root", dir + "/root", "--nodes", dir + "/nodes.yaml",
                "--state-dir", dir + "/state", "--http-port", "\(port)", "--poll-interval", "0",
            ], log: dir + "/serve.log")
            defer { serve.stop() }
            try #require(serve.wait(for: "serving", timeout: 60), "serve did not start: \(serve.log)")

            // Live reports: the first 20 registered nodes come up, each reporting from its own address
            // (127.1.0.1…: the address nodes.yaml gives it, so the report is admitted).
            let posts = try Harness.shell("""
                for i in $(seq 0 19); do
                  mac=$(printf '52:54:00:00:00:%02x' $i)
                  curl -sS -o /dev/null -w '%{http_code}\\n' --max-time 5 --interface 127.1.0.$((i + 1)) \
                    -H 'Content-Type: application/json' --data "{\\"mac\\":\\"$mac\\",\\"stage\\":\\"up\\"}" \
                    http://127.0.0.1:\(port)/api/v1/events
                done
                """, timeout: 60)
            #expect(posts.stdout.split(separator: "\n") == Array(repeating: "202", count: 20), "\(posts.stdout) \(posts.stderr)")

            let before = try Self.counts(port: port)
            let page = try Self.dom(port: port, query: "", dir: dir)
            let after = try Self.counts(port: port)
            #expect(before.total == Self.nodes)
            #expect(before.stages.count >= 10, "mixed stages: \(before.stages)")

            let chips = Self.chips(page)
            #expect(chips["all"] == Self.nodes, "\(chips)")
            for (stage, count) in before.stages {
                #expect(chips["stage:\(stage)"] == count, "stage \(stage): page \(chips["stage:\(stage)"] ?? -1), server \(count)")
            }
            #expect(chips["failed"] == before.failed)
            #expect(chips["unregistered"] == before.unregistered && before.unregistered == Self.nodes / 100)
            // Stuck grows with time alone: the page's count is between the server's before and after.
            let stuck = try #require(chips["stuck"])
            #expect(stuck >= before.stuck && stuck <= after.stuck, "stuck: page \(stuck), server \(before.stuck)…\(after.stuck)")
            // Hints grouped once with their count, not repeated per row.
            #expect(page.contains("\(before.failed) nodes</span>"), "the failed nodes' hint group")
            // (As text once; the rows in view carry it only as their stage cell's tooltip.)
            #expect(page.components(separatedBy: ">stage 1 reported a failure").count == 2, "the failed hint once")
            // Only the rows in view are in the DOM; every node is in the page's memory.
            let rows = page.components(separatedBy: "<tr").count - 1
            #expect(rows < 80, "\(rows) rows in the DOM")
            #expect(Self.attribute("data-nodes", page) == "\(Self.nodes)")
            // The first poll carried every node; the later ones only what changed.
            let refreshes = Int(Self.attribute("data-refreshes", page) ?? "") ?? 0
            let lastBytes = Int(Self.attribute("data-bytes", page) ?? "") ?? .max
            #expect(refreshes >= 2, "polls: \(refreshes)")
            #expect(lastBytes < 20_000, "a poll after the first was \(lastBytes) bytes")

            // The inventory's state, above the counts.
            let registered = Self.nodes - before.unregistered
            #expect(page.contains("nodes.yaml is newer than published generation 4 (\(registered) added"), "no inventory warning on the page")

            // A filter: failed nodes only.
            let failed = try Self.dom(port: port, query: "?filter=failed", dir: dir)
            #expect(Self.shown(failed).hasPrefix("\(before.failed) of \(Self.nodes) nodes"), "\(Self.shown(failed))")
            let table = failed.components(separatedBy: #"<tbody id="nodes">"#).last ?? ""
            let badges = Self.matches(#"<span class="stage [^"]*">([^<]*)</span>"#, table)
            #expect(!badges.isEmpty && badges.allSatisfy { $0 == "failed" }, "rows shown under the failed filter: \(badges)")
            #expect(!Self.matches(#"class="chip[^"]*active[^"]*" data-filter="(failed)""#, failed).isEmpty, "the failed chip is marked")

            // A stage and a search together: up nodes named node0000x.
            let search = try Self.dom(port: port, query: "?filter=stage:up&q=node0000", dir: dir)
            #expect(before.upMatchingNode0000 > 0)
            #expect(Self.shown(search).hasPrefix("\(before.upMatchingNode0000) of \(Self.nodes) nodes"), "\(Self.shown(search))")
        }
    }
}
