import Foundation
import Testing

extension EndToEnd {
    /// What an administrator types on the first day: a mistyped command, a nodes.yaml checked before it
    /// is published, machine-readable answers, and the publish history.
    @Suite("imagebuild nodes check, validate, --json, mistyped commands", .serialized)
    struct AdminCommandTests {
        @Test("a mistyped command is an error that names the command meant; a bare imagebuild prints the help")
        func mistypedCommands() throws {
            let typo = try Harness.imagebuild(["publsh", "--root", "x"])
            #expect(typo.status == 64)
            #expect(typo.stderr.contains("'publsh' is neither a command nor a recipe file (did you mean 'publish'?)"), "\(typo.stderr)")
            let bare = try Harness.imagebuild([])
            #expect(bare.stdout.contains("SUBCOMMANDS:"))
            let missing = try Harness.imagebuild(["recipes/nosuch.yaml"])
            #expect(missing.status == 1)
            #expect(missing.stderr.contains("recipes/nosuch.yaml"))
        }

        @Test("nodes check lists every broken entry at once, then what differs from the published root; validate points there")
        func nodesCheck() async throws { try await Harness.blocking { try Self().nodesCheckOnThread() } }
        func nodesCheckOnThread() throws {
            let dir = Harness.temporaryDirectory("nodes-check")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let broken = dir + "/broken.yaml"
            try """
                network: {server: 10.77.0.1, subnet: 10.77.0.0/24, pool: 10.77.0.100-10.77.0.199}
                defaults: {image: minimal}
                groups:
                  gpu: {image: minimal, loader: nope}
                nodes:
                  - {mac: "52:54:00:77:00:01", hostname: node001, ip: 10.77.0.11}
                  - {mac: "52:54:00:77:00:zz", hostname: node002}
                  - {mac: "52:54:00:77:00:03", hostname: node_3}
                  - {mac: "52:54:00:77:00:04", hostname: node004, ip: 10.77.0.150}
                """.write(toFile: broken, atomically: true, encoding: .utf8)
            let result = try Harness.imagebuild(["nodes", "check", broken, "--root", dir + "/nothing"])
            #expect(result.status == 1)
            let located = result.stdout.split(separator: "\n").filter { $0.hasPrefix(broken + ":") && $0.dropFirst(broken.count + 1).first?.isNumber == true }
            #expect(located.count == 4, "\(result.stdout)")
            for (line, fragment) in zip(located, [":4:", ":7:", ":8:", ":9:"]) { #expect(line.contains(fragment), "\(line)") }
            let json = try Harness.imagebuild(["nodes", "check", broken, "--json"])
            let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
            #expect(object?["ok"] as? Bool == false)
            #expect((object?["errors"] as? [[String: Any]])?.count == 4)
            // Templates are rendered as publish renders them: a cloud-init user-data typo, located.
            let cloud = dir + "/cloud.yaml"
            try """
                network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
                defaults:
                  image: minimal
                  cloud_init: {enabled: true, user_data: "#cloud-config\\nhostname: {{hostnme}}\\n"}
                nodes:
                  - {mac: "52:54:00:77:00:01", hostname: node001}
                """.write(toFile: cloud, atomically: true, encoding: .utf8)
            let typo = try Harness.imagebuild(["nodes", "check", cloud])
            #expect(typo.status == 1 && typo.stdout.contains(cloud + ":4:42: user-data for node node001: unknown variable 'hostnme'"), "\(typo.stdout)")
            let validate = try Harness.imagebuild(["validate", broken])
            #expect(validate.status == 1)
            #expect(validate.stderr.contains("imagebuild nodes check \(broken)"))

            // Published, then a node added and one's image changed: check says so without writing anything.
            let artifacts = try Harness.minimal.get()
            let root = dir + "/root", nodes = dir + "/nodes.yaml"
            let good = """
                network: {server: 10.77.0.1, subnet: 10.77.0.0/24}
                defaults: {image: minimal}
                nodes:
                  - {mac: "52:54:00:77:00:01", hostname: node001, ip: 10.77.0.11}
                  - {mac: "52:54:00:77:00:02", hostname: node002, ip: 10.77.0.12}

                """
            try good.write(toFile: nodes, atomically: true, encoding: .utf8)
            let publish = try Harness.imagebuild(["publish", artifacts, "--root", root, "--nodes", nodes])
            try #require(publish.status == 0, "\(publish.stderr)")
            let same = try Harness.imagebuild(["nodes", "check", nodes, "--root", root])
            #expect(same.status == 0)
            #expect(same.stdout.contains("generation 1 publishes exactly this inventory"), "\(same.stdout)")
            try (good.replacingOccurrences(of: "hostname: node002, ip: 10.77.0.12", with: "hostname: node002, ip: 10.77.0.22")
                 + "  - {mac: \"52:54:00:77:00:03\", hostname: node003}\n  - {mac: \"52:54:00:77:00:04\", hostname: node004, image: compute}\n")
                .write(toFile: nodes, atomically: true, encoding: .utf8)
            let before = try Harness.shell("cd \(root) && find . | sort && cat .publish/history.jsonl").stdout
            let changed = try Harness.imagebuild(["nodes", "check", nodes, "--root", root])
            #expect(changed.status == 1, "an unpublished image must be an error")
            #expect(changed.stdout.contains("unknown image 'compute'"), "\(changed.stdout)")
            #expect(changed.stdout.contains("added    node003 (52:54:00:77:00:03)"))
            #expect(changed.stdout.contains("changed  node002 (52:54:00:77:00:02): ip 10.77.0.12 -> 10.77.0.22"))
            #expect(try Harness.shell("cd \(root) && find . | sort && cat .publish/history.jsonl").stdout == before, "check wrote to the root")
        }

        @Test("inspect --json and nodes explain --json are machine-readable")
        func jsonAnswers() async throws { try await Harness.blocking { try Self().jsonAnswersOnThread() } }
        func jsonAnswersOnThread() throws {
            let artifacts = try Harness.minimal.get()
            let inspect = try Harness.imagebuild(["inspect", "--json", artifacts + "/initramfs.img"])
            #expect(inspect.status == 0)
            let lines = inspect.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            #expect(lines.count == inspect.stdout.split(separator: "\n").count)
            #expect(lines.contains { $0["path"] as? String == "dev/console" && $0["type"] as? String == "char" && $0["device"] as? String == "5,1" })
            #expect(lines.contains { $0["path"] as? String == "init" && $0["mode"] as? String == "755" })
            let explain = try Harness.imagebuild(["nodes", "explain", "52:54:00:77:00:01", "--ip", "10.77.0.11", "--root", "/nonexistent", "--json"])
            #expect(explain.status == 0)
            let answer = try JSONSerialization.jsonObject(with: Data(explain.stdout.utf8)) as? [String: Any]
            let names = (answer?["pxelinux"] as? [[String: Any]])?.compactMap { $0["name"] as? String }
            #expect(names?.first == "pxelinux.cfg/01-52-54-00-77-00-01")
            #expect(names?.last == "pxelinux.cfg/default")
            #expect(names?.count == 10)
        }

        @Test("publish --rollback, --forward and --history from the command line")
        func publishHistory() async throws { try await Harness.blocking { try Self().publishHistoryOnThread() } }
        func publishHistoryOnThread() throws {
            let dir = Harness.temporaryDirectory("publish-history")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let artifacts = try Harness.minimal.get()
            let nodes = dir + "/nodes.yaml", root = dir + "/root"
            try "network: {server: 10.77.0.1, subnet: 10.77.0.0/24}\ndefaults: {image: minimal}\n".write(toFile: nodes, atomically: true, encoding: .utf8)
            for _ in 0..<2 { try #require(try Harness.imagebuild(["publish", artifacts, "--root", root, "--nodes", nodes]).status == 0) }
            #expect(try Harness.imagebuild(["publish", "--rollback", "--root", root]).stdout.contains("now serves generation 1"))
            let failed = try Harness.imagebuild(["publish", dir + "/missing", "--root", root, "--nodes", nodes])
            #expect(failed.status == 1)
            #expect(FileManager.default.fileExists(atPath: root + "/.publish/gen-2"), "a failed publish deleted generation 2")
            #expect(try Harness.imagebuild(["publish", "--forward", "--root", root]).stdout.contains("now serves generation 2"))
            let history = try Harness.imagebuild(["publish", "--history", "--root", root]).stdout.split(separator: "\n")
            #expect(history.count == 4)
            #expect(history.last?.contains(#""action":"forward""#) == true)
        }
    }
}
