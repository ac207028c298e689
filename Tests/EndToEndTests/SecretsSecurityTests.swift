import Foundation
import TestSupport
import Testing

extension EndToEnd {
    /// The real `imagebuild serve` on loopback, asked for a node's secrets the ways an impostor would:
    /// each ask is refused with 403 and its reason, and the secret's bytes are in no response, no log
    /// line and nowhere in the published root. Loopback stands in for the boot network: any 127.x
    /// address can be a request's source (`curl --interface`), and `--local-port` picks a source port
    /// below 1024 as stage 1's `imagebuild-fetch -P` does.
    @Suite("imagebuild serve: a node's secrets only to that node, booting now", .serialized)
    struct SecretsSecurityTests {
        static let secret = "munge-key-\(UUID().uuidString)"

        static func nodes(httpPort: Int, secretsDir: String) -> String {
            """
            network:
              server: 127.0.0.1
              subnet: 127.0.0.0/24
              http_port: \(httpPort)
            defaults:
              image: minimal
              ssh_host_keys: none
              files:
                - {path: /etc/munge/munge.key, source: \(secretsDir)/munge.key, secret: true, template: false, mode: "0400", owner: "munge:munge"}
                - {path: /etc/motd, content: "welcome to {{hostname}}\\n"}
            nodes:
              - {mac: "52:54:00:77:00:01", hostname: n1, ip: 127.0.0.11}
              - {mac: "52:54:00:77:00:02", hostname: n2, ip: 127.0.0.12}
              - {mac: "52:54:00:77:00:03", hostname: n3, ip: 127.0.0.13, smbios: {product_uuid: 4c4c4544-0042-3510-8052-b4c04f4b4d32}}

            """
        }

        @Test("refused from another address, an unprivileged port, for another node's MAC, outside the boot window, a second time, with path tricks; delivered once to the node itself")
        func refusals() async throws { try await Harness.blocking { try Self().refusalsOnThread() } }
        func refusalsOnThread() throws {
            let dir = Harness.temporaryDirectory("secrets")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let secrets = dir + "/secrets", root = dir + "/root"
            for folder in [secrets, root] { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) }
            try Self.secret.write(toFile: secrets + "/munge.key", atomically: true, encoding: .utf8)
            chmod(secrets + "/munge.key", 0o600)
            let port = Int.random(in: 20_000...50_000)
            try Self.nodes(httpPort: port, secretsDir: secrets).write(toFile: dir + "/nodes.yaml", atomically: true, encoding: .utf8)
            let published = try Harness.imagebuild(["publish", try Harness.minimal.get(), "--root", root, "--nodes", dir + "/nodes.yaml"])
            try #require(published.status == 0, "\(published.stderr)")
            let serve = try BackgroundProcess(Harness.binary, [
                "serve", "--root", root, "--nodes", dir + "/nodes.yaml", "--no-dhcp", "--no-tftp", "--listen", "127.0.0.1",
                "--http-port", "\(port)", "--state-dir", dir + "/state"], log: dir + "/serve.log")
            defer { serve.stop() }
            try #require(serve.wait(for: "serving", timeout: 60), "serve did not start: \(serve.log)")
            let base = "http://127.0.0.1:\(port)"

            /// One request: status, body (as text: a tar.gz or the reason).
            func ask(_ path: String, from source: String, privileged: Bool = true, headers: [String] = []) throws -> (status: Int, body: String) {
                let out = dir + "/body-\(UUID().uuidString)"
                var command = "curl -sS --path-as-is --max-time 10 --interface \(source) -o \(out) -w '%{http_code}'"
                if privileged { command += " --local-port 600-900" }
                for header in headers { command += " -H '\(header)'" }
                let result = try Harness.shell(command + " '\(base)\(path)'")
                let body = (try? Data(contentsOf: URL(fileURLWithPath: out))) ?? Data()
                try? FileManager.default.removeItem(atPath: out)
                let status = Int(result.stdout) ?? 0
                // Only a delivery holds the secret (stored, not deflated: see `OverlayArchive.Use`).
                if status != 200 { #expect(!body.contains(Data(Self.secret.utf8)), "the secret in an answer to \(path) from \(source)") }
                return (status, String(decoding: body, as: UTF8.self))
            }
            func expectRefused(_ answer: (status: Int, body: String), _ reason: String, sourceLocation: SourceLocation = #_sourceLocation) {
                #expect(answer.status == 403, "\(answer)", sourceLocation: sourceLocation)
                #expect(answer.body.hasPrefix(reason), "\(answer.body)", sourceLocation: sourceLocation)
            }
            let n1 = "/boot/v1/secrets/52-54-00-77-00-01"

            // Before n1 boots: the window is closed, even from its own address and a privileged port.
            expectRefused(try ask(n1, from: "127.0.0.11"), "outside the boot window")
            // n1 starts booting (its iPXE asks for its boot script): the window opens.
            let script = try Harness.shell("curl -fsS --interface 127.0.0.11 '\(base)/boot/v1/bootscript?mac=52:54:00:77:00:01'")
            #expect(script.stdout.contains(" imagebuild.secrets=\(base)\(n1)"), "\(script.stdout)")
            #expect(script.stdout.contains(" imagebuild.overlay=\(base)/overlays/"), "\(script.stdout)")
            expectRefused(try ask(n1, from: "127.0.0.50"), "not from the node's address: 127.0.0.50 asked for n1 (its address is 127.0.0.11)")
            expectRefused(try ask(n1, from: "127.0.0.12"), "not from the node's address: 127.0.0.12")  // n2, root on its own machine
            expectRefused(try ask(n1, from: "127.0.0.11", privileged: false), "unprivileged source port")
            // Path tricks: other spellings of a MAC, traversal (refused as a bad request before any route:
            // 400), a MAC that is no node.
            for path in ["/boot/v1/secrets/52:54:00:77:00:01", "/boot/v1/secrets/525400770001", "/boot/v1/secrets/52-54-00-77-00-01/../52-54-00-77-00-02",
                         "/boot/v1/secrets/..%2f..%2fnodes.yaml", "/boot/v1/secrets/52-54-00-77-00-99"] {
                let answer = try ask(path, from: "127.0.0.11")
                #expect([400, 403, 404].contains(answer.status), "\(path): \(answer)")
            }
            expectRefused(try ask("/boot/v1/secrets/52-54-00-77-00-99", from: "127.0.0.11"), "52:54:00:77:00:99 is not a node")

            // The node itself: delivered, with the file, its mode and owner by name.
            let archive = dir + "/n1.tar.gz"
            let fetched = try Harness.shell("curl -fsS --interface 127.0.0.11 --local-port 600-900 -o \(archive) '\(base)\(n1)'")
            #expect(fetched.status == 0, "\(fetched.stderr)")
            let listing = try Harness.shell("tar -tvzf \(archive) --numeric-owner").stdout
            #expect(listing.contains("-r-------- 0/0") && listing.contains("etc/munge/munge.key"), "\(listing)")
            #expect(try Harness.shell("tar -xOzf \(archive) etc/munge/munge.key").stdout == Self.secret)
            #expect(try Harness.shell("tar -xOzf \(archive) etc/imagebuild/owners").stdout == "munge:munge etc/munge/munge.key\n")
            #expect(!listing.contains("etc/motd"), "a non-secret file is in the published overlay, not here: \(listing)")
            // A second ask in the same boot, even by the node: refused.
            expectRefused(try ask(n1, from: "127.0.0.11"), "already fetched this boot")

            // SMBIOS: n3 must present its product UUID.
            _ = try Harness.shell("curl -fsS --interface 127.0.0.13 '\(base)/boot/v1/bootscript?mac=52:54:00:77:00:03'")
            let n3 = "/boot/v1/secrets/52-54-00-77-00-03"
            expectRefused(try ask(n3, from: "127.0.0.13"), "SMBIOS mismatch: the product UUID")
            expectRefused(try ask(n3, from: "127.0.0.13", headers: ["X-Imagebuild-Product-UUID: 00000000-0000-0000-0000-000000000000"]), "SMBIOS mismatch")
            let good = try ask(n3, from: "127.0.0.13", headers: ["X-Imagebuild-Product-UUID: 4c4c4544-0042-3510-8052-b4c04f4b4d32"])
            #expect(good.status == 200 && good.body.contains(Self.secret), "\(good.status)")

            // Every refusal is logged with its reason, counted by reason, and on the node's timeline.
            let metrics = try Harness.shell("curl -fsS '\(base)/metrics'").stdout
            for (outcome, count) in [("wrong-address", 2), ("unprivileged-port", 1), ("outside-boot-window", 1), ("already-fetched", 1),
                                     ("smbios-mismatch", 2), ("delivered", 2)] {
                #expect(metrics.contains("imagebuild_secret_requests_total{outcome=\"\(outcome)\"} \(count)"), "\(outcome) \(count):\n\(metrics.split(separator: "\n").filter { $0.contains("secret") })")
            }
            let timeline = try Harness.shell("curl -fsS '\(base)/api/v1/nodes/52:54:00:77:00:01'").stdout
            #expect(timeline.contains("secrets: unprivileged source port"), "\(timeline)")
            serve.stop()
            #expect(serve.log.contains("secrets refused") && serve.log.contains("unprivileged-port"), "\(serve.log)")
            #expect(!serve.log.contains(Self.secret), "the secret is in the server's log")
            let grep = try Harness.shell("grep -rl '\(Self.secret)' \(root) \(dir)/state || true")
            #expect(grep.stdout.isEmpty, "the secret is on disk outside its source: \(grep.stdout)")
        }
    }
}
