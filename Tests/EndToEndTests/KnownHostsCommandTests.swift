import Foundation
import TestSupport
import Testing

extension EndToEnd {
    /// `imagebuild nodes known-hosts` as an administrator runs it, read back with ssh-keygen.
    @Suite("imagebuild nodes known-hosts")
    struct KnownHostsCommandTests {
        @Test("known_hosts lines ssh-keygen -F finds for every name of every node; keys made once, also by two runs at once")
        func knownHosts() async throws { try await Harness.blocking { try Self().knownHostsOnThread() } }
        func knownHostsOnThread() throws {
            let dir = Harness.temporaryDirectory("known-hosts")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let nodes = dir + "/nodes.yaml", state = dir + "/state"
            try """
                network: {server: 10.77.0.1, subnet: 10.77.0.0/24, domain: cluster.local}
                defaults: {image: minimal}
                nodes:
                  - {mac: "52:54:00:77:00:01", hostname: node001, ip: 10.77.0.11}
                  - {mac: "52:54:00:77:00:02", hostname: Node002, ip: 10.77.0.12}
                  - {mac: "52:54:00:77:00:03", hostname: node003}

                """.write(toFile: nodes, atomically: true, encoding: .utf8)

            // Two at once, as the server and an administrator might: one set per node, the same output.
            // (Spawned directly: a shell's `wait` never returns under the test runner, whose threads
            // block SIGCHLD, a mask children inherit.)
            let racers = try ["a", "b"].map { name in
                try ChildProcess(Harness.binary, ["nodes", "known-hosts", "--nodes", nodes, "--state-dir", state],
                                 stdout: "\(dir)/\(name).out", stderr: "\(dir)/\(name).err")
            }
            let deadline = Date().addingTimeInterval(300)
            while racers.contains(where: \.isRunning) && Date() < deadline { usleep(20_000) }
            for racer in racers { racer.kill(SIGKILL) }
            #expect(racers.map { $0.wait() } == [0, 0])
            let first = try String(contentsOfFile: dir + "/a.out", encoding: .utf8)
            #expect(try String(contentsOfFile: dir + "/b.out", encoding: .utf8) == first)
            let counts = try ["a.err", "b.err"].map { try generatedCount(String(contentsOfFile: dir + "/" + $0, encoding: .utf8)) }
            #expect(counts.reduce(0, +) == 3, "\(counts): each node's keys must be made exactly once")
            #expect(try FileManager.default.contentsOfDirectory(atPath: state + "/host-keys").sorted() == ["node001", "node002", "node003"])

            let file = dir + "/ssh_known_hosts"
            try first.write(toFile: file, atomically: true, encoding: .utf8)
            for name in ["node001", "node001.cluster.local", "10.77.0.11", "node002", "node002.cluster.local", "10.77.0.12", "node003", "node003.cluster.local"] {
                let found = try Harness.run("/usr/bin/ssh-keygen", ["-F", name, "-f", file])
                #expect(found.status == 0, "ssh-keygen -F \(name): \(found.stdout)\(found.stderr)")
                #expect(found.stdout.split(separator: "\n").filter { !$0.hasPrefix("#") }.count == 3, "\(name): \(found.stdout)")
            }
            #expect(try Harness.run("/usr/bin/ssh-keygen", ["-F", "node004", "-f", file]).status == 1)
            #expect(try Harness.run("/usr/bin/ssh-keygen", ["-F", "10.77.0.13", "-f", file]).status == 1)
            let stored = try String(contentsOfFile: state + "/host-keys/node001/ssh_host_ed25519_key.pub", encoding: .utf8).split(separator: " ")
            #expect(first.contains("node001,node001.cluster.local,10.77.0.11 ssh-ed25519 \(stored[1])\n"), "\(first)")
            #expect(first.contains("\nnode003,node003.cluster.local ssh-rsa "))

            // Again: nothing generated, the same lines; and through server.yaml's state_dir and nodes
            // (relative to the file), as imagebuild serve reads them.
            let again = try Harness.imagebuild(["nodes", "known-hosts", "--nodes", nodes, "--state-dir", state])
            #expect(again.status == 0)
            #expect(again.stdout == first)
            #expect(!again.stderr.contains("generated"), "\(again.stderr)")
            try FileManager.default.createDirectory(atPath: dir + "/etc", withIntermediateDirectories: true)
            try "state_dir: ../state\nnodes: ../nodes.yaml\n".write(toFile: dir + "/etc/server.yaml", atomically: true, encoding: .utf8)
            let viaConfig = try Harness.imagebuild(["nodes", "known-hosts", "--config", dir + "/etc/server.yaml"])
            #expect(viaConfig.status == 0, "\(viaConfig.stderr)")
            #expect(viaConfig.stdout == first)
            let overridden = try Harness.imagebuild(["nodes", "known-hosts", "--config", dir + "/etc/server.yaml", "--state-dir", dir + "/other"])
            #expect(try generatedCount(overridden.stderr) == 3, "--state-dir must win over state_dir: \(overridden.stderr)")
            #expect(overridden.stdout != first)
        }

        @Test("--ca prints @cert-authority lines for each node's names (or --ca-hosts) and refuses a private key")
        func certificateAuthority() async throws { try await Harness.blocking { try Self().certificateAuthorityOnThread() } }
        func certificateAuthorityOnThread() throws {
            let dir = Harness.temporaryDirectory("known-hosts-ca")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let nodes = dir + "/nodes.yaml"
            try """
                network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
                nodes:
                  - {mac: "52:54:00:77:00:01", hostname: node001, ip: 10.77.0.11}
                  - {mac: "52:54:00:77:00:02", hostname: node002}

                """.write(toFile: nodes, atomically: true, encoding: .utf8)
            try #require(try Harness.run("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "site-ca", "-f", dir + "/ca"]).status == 0)
            let caLine = try String(contentsOfFile: dir + "/ca.pub", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            let result = try Harness.imagebuild(["nodes", "known-hosts", "--nodes", nodes, "--state-dir", dir + "/state", "--ca", dir + "/ca.pub"])
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout.split(separator: "\n").filter { !$0.hasPrefix("#") }
                    == ["@cert-authority node001,10.77.0.11 \(caLine)", "@cert-authority node002 \(caLine)"])
            #expect(!FileManager.default.fileExists(atPath: dir + "/state"), "--ca generated keys")
            try result.stdout.write(toFile: dir + "/known", atomically: true, encoding: .utf8)
            let found = try Harness.run("/usr/bin/ssh-keygen", ["-F", "10.77.0.11", "-f", dir + "/known"])
            #expect(found.status == 0)
            #expect(found.stdout.contains("found: line 2 CA"), "\(found.stdout)")

            let wildcard = try Harness.imagebuild(["nodes", "known-hosts", "--nodes", nodes, "--ca", dir + "/ca.pub", "--ca-hosts", "*.cluster.local,node*"])
            #expect(wildcard.stdout.hasSuffix("\n@cert-authority *.cluster.local,node* \(caLine)\n"), "\(wildcard.stdout)")
            let privateKey = try Harness.imagebuild(["nodes", "known-hosts", "--nodes", nodes, "--ca", dir + "/ca"])
            #expect(privateKey.status == 1)
            #expect(privateKey.stderr.contains("is a private key"), "\(privateKey.stderr)")
            let help = try Harness.imagebuild(["nodes", "known-hosts", "--help"])
            #expect(help.stdout.contains("--state-dir"))
            #expect(help.stdout.contains("/var/lib/imagebuild"))
        }

        /// N of stderr's "generated host keys for N nodes", 0 when it says nothing.
        func generatedCount(_ stderr: String) throws -> Int {
            guard let range = stderr.range(of: "generated host keys for ") else { return 0 }
            return try #require(Int(stderr[range.upperBound...].prefix { $0.isNumber }))
        }
    }
}
