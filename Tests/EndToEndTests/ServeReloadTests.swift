import Foundation
import TestSupport
import Testing

extension EndToEnd {
    /// The real `imagebuild serve` binary on loopback: SIGHUP reloads nodes.yaml and server.yaml
    /// (polling off, so only the signal can have done it), a broken file is rejected with its located
    /// error while the server keeps serving, and SIGTERM ends it cleanly with status 0.
    @Suite("imagebuild serve: SIGHUP reload, SIGTERM shutdown", .serialized)
    struct ServeReloadTests {
        static func nodes(_ count: Int) -> String {
            var text = """
                network:
                  server: 127.0.0.1
                  subnet: 127.0.0.0/8
                defaults:
                  image: minimal
                nodes:

                """
            for i in 1...count {
                text += "  - {mac: \"52:54:00:77:00:\(String(format: "%02x", i))\", hostname: node\(i), ip: 127.0.0.\(10 + i)}\n"
            }
            return text
        }

        static func server(dhcpPort: Int, tftpPort: Int, httpPort: Int, rapidCommit: Bool) -> String {
            """
            root: root
            nodes: nodes.yaml
            listen: 127.0.0.1
            state_dir: state
            log: {level: info}
            inventory: {poll_interval: 0}
            dhcp: {port: \(dhcpPort), rapid_commit: \(rapidCommit)}
            tftp: {port: \(tftpPort)}
            http: {port: \(httpPort)}

            """
        }

        /// TFTP alone (another DHCP server, no HTTP) serves files: no nodes.yaml needed, none read. Its log
        /// is JSON here, one object per line, as log shippers take it.
        @Test("TFTP only: no nodes.yaml needed; a named one that is missing is still an error; JSON log lines")
        func tftpOnly() async throws { try await Harness.blocking { try Self().tftpOnlyOnThread() } }
        func tftpOnlyOnThread() throws {
            let dir = Harness.temporaryDirectory("serve-tftp")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try FileManager.default.createDirectory(atPath: dir + "/root", withIntermediateDirectories: true)
            try "hello\n".write(toFile: dir + "/root/hello.txt", atomically: true, encoding: .utf8)
            let port = Int.random(in: 20_000...50_000)
            let arguments = ["serve", "--root", dir + "/root", "--no-dhcp", "--no-http", "--listen", "127.0.0.1",
                             "--tftp-port", "\(port)", "--state-dir", dir + "/state", "--log-format", "json"]
            let serve = try BackgroundProcess(Harness.binary, arguments, log: dir + "/serve.log")
            defer { serve.stop() }
            try #require(serve.wait(for: "serving", timeout: 60), "serve did not start: \(serve.log)")
            #expect(serve.log.contains("TFTP 127.0.0.1:\(port)"), "the start line names the bound port: \(serve.log)")
            #expect(try Harness.shell("curl -fsS --max-time 5 tftp://127.0.0.1:\(port)/hello.txt").stdout == "hello\n")
            #expect(serve.wait(for: "TFTP completed", timeout: 10))
            serve.stop()
            let objects = serve.log.split(separator: "\n").map { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
            }
            #expect(!objects.isEmpty && objects.allSatisfy { $0 != nil }, "not one JSON object per line:\n\(serve.log)")
            let completed = objects.compactMap { $0 }.first { $0["message"] as? String == "TFTP completed" }
            #expect(completed?["logger"] as? String == "imagebuild.tftp" && completed?["level"] as? String == "info")
            #expect(completed?["file"] as? String == "hello.txt" && completed?["time"] is String, "\(completed ?? [:])")
            let named = try Harness.imagebuild(arguments + ["--nodes", dir + "/nodes.yaml"])
            #expect(named.status != 0 && named.stderr.contains("nodes.yaml"), "\(named.status): \(named.stderr)")
        }

        @Test("an HTTP port in use: serve exits 1 with the located error, before it serves")
        func busyHTTPPort() async throws { try await Harness.blocking { try Self().busyHTTPPortOnThread() } }
        func busyHTTPPortOnThread() throws {
            let dir = Harness.temporaryDirectory("serve-busy")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try FileManager.default.createDirectory(atPath: dir + "/root", withIntermediateDirectories: true)
            try "hello\n".write(toFile: dir + "/root/hello.txt", atomically: true, encoding: .utf8)
            try Self.nodes(1).write(toFile: dir + "/nodes.yaml", atomically: true, encoding: .utf8)
            let other = try PortHolder(.tcp, host: "127.0.0.1")  // as another HTTP server would
            let tftp = Int.random(in: 20_000...50_000)
            let result = try Harness.imagebuild(["serve", "--root", dir + "/root", "--nodes", dir + "/nodes.yaml", "--no-dhcp",
                                                 "--listen", "127.0.0.1", "--tftp-port", "\(tftp)", "--http-port", "\(other.port)",
                                                 "--state-dir", dir + "/state"], timeout: 60)
            #expect(result.status == 1, "\(result.status): \(result.stderr)")
            #expect(result.stderr.contains("HTTP: cannot listen on 127.0.0.1:\(other.port): the port is in use"), "\(result.stderr)")
            #expect(result.stderr.contains("choose another port with --http-port"), "\(result.stderr)")
            #expect(!result.stderr.contains("serving"), "it served before it failed: \(result.stderr)")
            withExtendedLifetime(other) {}
        }

        @Test("SIGHUP reloads both files, keeps the last good inventory, SIGTERM exits 0")
        func hangupAndTerminate() async throws { try await Harness.blocking { try Self().hangupAndTerminateOnThread() } }
        func hangupAndTerminateOnThread() throws {
            let dir = Harness.temporaryDirectory("serve-reload")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try FileManager.default.createDirectory(atPath: dir + "/root", withIntermediateDirectories: true)
            try "hello\n".write(toFile: dir + "/root/hello.txt", atomically: true, encoding: .utf8)
            try Self.nodes(1).write(toFile: dir + "/nodes.yaml", atomically: true, encoding: .utf8)
            let base = Int.random(in: 20_000...50_000)
            let (dhcp, tftp, http) = (base, base + 1, base + 2)
            try Self.server(dhcpPort: dhcp, tftpPort: tftp, httpPort: http, rapidCommit: true)
                .write(toFile: dir + "/server.yaml", atomically: true, encoding: .utf8)

            let serve = try BackgroundProcess(Harness.binary, ["serve", "--config", dir + "/server.yaml"], log: dir + "/serve.log")
            defer { serve.stop() }
            try #require(serve.wait(for: "serving", timeout: 60), "serve did not start: \(serve.log)")
            let fetch = "curl -fsS --max-time 5 http://127.0.0.1:\(http)/hello.txt"
            #expect(try Harness.shell(fetch).stdout == "hello\n")

            // A new node, polling off: nothing happens until the signal.
            try Self.nodes(2).write(toFile: dir + "/nodes.yaml", atomically: true, encoding: .utf8)
            usleep(1_500_000)
            #expect(!serve.log.contains("reloaded nodes.yaml"), "reloaded without a signal: polling is on")
            serve.process.kill(SIGHUP)
            #expect(serve.wait(for: "reloaded nodes.yaml (2 nodes)", timeout: 15), "\(serve.log)")

            // server.yaml: one reloadable key, one that needs a restart.
            try Self.server(dhcpPort: dhcp, tftpPort: tftp, httpPort: http + 10, rapidCommit: false)
                .write(toFile: dir + "/server.yaml", atomically: true, encoding: .utf8)
            serve.process.kill(SIGHUP)
            #expect(serve.wait(for: "needs a restart to take effect: http.port", timeout: 15), "\(serve.log)")
            #expect(serve.log.contains("applied dhcp.rapid_commit"), "\(serve.log)")

            // A broken inventory: located error, the last good one stays, the server keeps serving.
            try (Self.nodes(2) + "  - {mac: nonsense}\n").write(toFile: dir + "/nodes.yaml", atomically: true, encoding: .utf8)
            serve.process.kill(SIGHUP)
            #expect(serve.wait(for: "nodes.yaml rejected", timeout: 15), "\(serve.log)")
            #expect(serve.log.contains("nodes.yaml:9:"), "the error names the line: \(serve.log)")
            #expect(serve.isRunning)
            #expect(try Harness.shell(fetch).stdout == "hello\n")
            let nodes = try Harness.shell("curl -fsS --max-time 5 http://127.0.0.1:\(http)/api/v1/nodes").stdout
            #expect(nodes.contains("node2"), "the node added before the broken edit is still known: \(nodes)")

            // SIGTERM: graceful, status 0, in bounded time.
            serve.process.kill(SIGTERM)
            let deadline = Date().addingTimeInterval(20)
            while serve.isRunning && Date() < deadline { usleep(50_000) }
            #expect(!serve.isRunning, "still running 20 s after SIGTERM")
            #expect(serve.process.wait() == 0, "\(serve.log)")
        }
    }
}
