import Foundation
import TestSupport
import Testing

extension EndToEnd {
    /// Discovery through the real binary: `imagebuild serve` in a namespace the test creates, udhcpc in
    /// another, `nodes discovered`, `nodes adopt`, `nodes explain` and `nodes check` as an administrator
    /// runs them, and a restart of serve.
    @Suite("imagebuild nodes discovered/adopt and serve's discovery", .serialized)
    struct DiscoveryCommandTests {
        static let unavailable = NamespaceLab.unavailableReason(needing: ["udhcpc", "curl"])

        static func nodesYAML(discover: String = defaultDiscover) -> String {
            """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              pool: 10.77.0.100-10.77.0.150
              http_port: 8080
            defaults:
              image: minimal
            groups:
              compute: {append: quiet}
              gpu: {append: gpu}
            \(discover)
            nodes:
              - {mac: "52:54:00:77:0e:01", hostname: node001, ip: 10.77.0.11}

            """
        }

        static let defaultDiscover = """
            discover:
              group: compute
              hostname: "node{n:03}"
              addresses: 10.77.0.50-10.77.0.59
            """

        struct Net {
            let lab: NamespaceLab
            let server: String
            let client: String
            var dir: String { lab.directory }
            var state: String { dir + "/state" }
        }

        func serve(_ net: Net, run: Int) throws -> BackgroundProcess {
            let serve = try net.lab.start("serve\(run)", [
                Harness.binary, "serve", "--root", net.dir + "/root", "--nodes", net.dir + "/nodes.yaml", "--listen", "10.77.0.1",
                "--interface", "sv0", "--no-tftp", "--state-dir", net.state, "--poll-interval", "0.2",
            ], in: net.server)
            try #require(serve.wait(for: "serving", timeout: 60), "serve did not start: \(serve.log)")
            return serve
        }

        /// udhcpc as `mac` (a PXE client of architecture 7); the `bound` line if any.
        func udhcpc(_ net: Net, mac: String) throws -> String? {
            try net.lab.setMAC(net.client, "cl0", mac)
            _ = try? net.lab.exec(net.client, ["ip", "addr", "flush", "dev", "cl0"])
            let hook = net.dir + "/hook.sh"
            try "#!/bin/sh\necho \"EVENT $1 ip=$ip hostname=$hostname\"\n".write(toFile: hook, atomically: true, encoding: .utf8)
            chmod(hook, 0o755)
            let result = try net.lab.exec(net.client, [
                "udhcpc", "-i", "cl0", "-f", "-q", "-n", "-t", "4", "-T", "1", "-A", "1", "-s", hook,
                "-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007",
            ], timeout: 30)
            return result.stdout.split(separator: "\n").first { $0.hasPrefix("EVENT bound") }.map(String.init)
        }

        func withNet(_ body: (Net) throws -> Void) throws {
            let lab = try NamespaceLab(name: "discovery", keepDirectory: true)
            defer { lab.close() }
            let server = try lab.addNamespace("s")
            let client = try lab.addNamespace("c")
            try lab.addVeth(server, "sv0", client, "cl0")
            try lab.execChecked(server, ["ip", "addr", "add", "10.77.0.1/24", "dev", "sv0"])
            try FileManager.default.createDirectory(atPath: lab.directory + "/root", withIntermediateDirectories: true)
            try "hello\n".write(toFile: lab.directory + "/root/hello.txt", atomically: true, encoding: .utf8)
            try Self.nodesYAML().write(toFile: lab.directory + "/nodes.yaml", atomically: true, encoding: .utf8)
            // A published image, so the boot-script endpoint has something to boot.
            let artifact = try EndToEnd.PublishKillTests.artifact(in: lab.directory, "minimal", content: "d")
            let publish = try Harness.imagebuild(["publish", artifact, "--root", lab.directory + "/root", "--nodes", lab.directory + "/nodes.yaml",
                                                  "--state-dir", lab.directory + "/state"], timeout: 120)
            try #require(publish.status == 0, "\(publish.output)")
            try body(Net(lab: lab, server: server, client: client))
        }

        func imagebuild(_ net: Net, _ arguments: [String]) throws -> Harness.Result {
            try Harness.imagebuild(arguments + ["--nodes", net.dir + "/nodes.yaml", "--state-dir", net.state], timeout: 60)
        }

        @Test("serve records and binds unknown udhcpc clients, keeps them across a SIGKILL and a restart, takes a 'nodes adopt' without one",
              .enabled(if: unavailable == nil, "needs network namespaces, udhcpc and curl: \(unavailable ?? "")"))
        func serveDiscovery() async throws { try await Harness.blocking { try Self().serveDiscoveryOnThread() } }
        func serveDiscoveryOnThread() throws {
            try withNet { net in
                var serve = try serve(net, run: 1)
                defer { serve.stop() }
                // node001 is listed, so the first free slot is node002 at 10.77.0.51.
                let first = try #require(try udhcpc(net, mac: "52:54:00:99:0e:01"), "no answer: \(serve.log)")
                #expect(first == "EVENT bound ip=10.77.0.51 hostname=node002", "\(first)\n\(serve.log)")
                #expect(serve.log.contains("bound 52:54:00:99:0e:01 as node002 10.77.0.51"), "\(serve.log)")

                // The table and the JSON, from the state directory; the API from the running server.
                let table = try imagebuild(net, ["nodes", "discovered"])
                #expect(table.status == 0, "\(table.stderr)")
                #expect(table.stdout.contains("52:54:00:99:0e:01"), "\(table.stdout)")
                #expect(table.stdout.contains("x64 UEFI (7)") && table.stdout.contains("PXEClient:Arch:00007:UNDI:003016"), "\(table.stdout)")
                let bindingLine = table.stdout.split(separator: "\n").first { $0.hasPrefix("52:54:00:99:0e:01  node002 ") }
                #expect(bindingLine.map { $0.split(separator: " ").filter { !$0.isEmpty } }?.prefix(5).joined(separator: " ")
                        == "52:54:00:99:0e:01 node002 10.77.0.51 compute discover", "\(table.stdout)")
                #expect(bindingLine?.hasSuffix("in force") == true, "\(table.stdout)")
                let json = try imagebuild(net, ["nodes", "discovered", "--json"])
                let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any], "\(json.stdout)")
                let machines = try #require(object["machines"] as? [[String: Any]])
                #expect(machines.first?["vendor_class"] as? String == "PXEClient:Arch:00007:UNDI:003016", "\(machines)")
                #expect(machines.first?["bound_as"] as? String == "node002")
                let api = try net.lab.exec(net.server, ["curl", "-fsS", "--max-time", "5", "http://10.77.0.1:8080/api/v1/discovered"])
                #expect(api.stdout.contains("\"bound_as\":\"node002\"") && api.stdout.contains("\"in_force\":true"), "\(api.output)")

                // The boot-script endpoint reads the live inventory: it boots node002 as a node of its
                // group (the group's `append: quiet`) before any new publish.
                let script = try net.lab.exec(net.server, ["curl", "-sS", "--max-time", "5",
                                                           "http://10.77.0.1:8080/boot/v1/bootscript?mac=52-54-00-99-0e-01"])
                #expect(script.stdout.contains("node002 (52:54:00:99:0e:01)") && script.stdout.contains(" quiet"), "\(script.output)")
                let stranger = try net.lab.exec(net.server, ["curl", "-sS", "--max-time", "5",
                                                             "http://10.77.0.1:8080/boot/v1/bootscript?mac=52-54-00-99-0e-09"])
                #expect(!stranger.stdout.contains(" quiet"), "control: a machine not bound boots the default: \(stranger.output)")

                // `nodes explain` knows the bound node.
                let explain = try imagebuild(net, ["nodes", "explain", "52:54:00:99:0e:01", "--root", net.dir + "/root"])
                #expect(explain.stdout.contains("52:54:00:99:0e:01: node002 bound in \(net.state)/discovery/bindings:2:1, fixed IP 10.77.0.51, group compute"),
                        "\(explain.output)")

                // A second machine is bound, and the server is killed (SIGKILL) right after answering it:
                // a binding is on disk before its answer leaves, so the crash loses neither.
                let second = try #require(try udhcpc(net, mac: "52:54:00:99:0e:03"), "no answer: \(serve.log)")
                #expect(second == "EVENT bound ip=10.77.0.52 hostname=node003", "\(second)")
                serve.kill()
                serve = try self.serve(net, run: 2)
                let again = try #require(try udhcpc(net, mac: "52:54:00:99:0e:01"), "no answer after the restart: \(serve.log)")
                #expect(again == "EVENT bound ip=10.77.0.51 hostname=node002", "\(again)")
                let third = try #require(try udhcpc(net, mac: "52:54:00:99:0e:03"), "no answer after the restart: \(serve.log)")
                #expect(third == "EVENT bound ip=10.77.0.52 hostname=node003", "\(third)")
                #expect(!serve.log.contains("bound 52:54:00:99:0e:01"), "bound a second time: \(serve.log)")

                // By hand, while serve runs: the server takes it from the journal within its poll interval.
                let adopt = try imagebuild(net, ["nodes", "adopt", "52:54:00:99:0e:02", "--hostname", "gpu07", "--ip", "10.77.0.77", "--group", "gpu"])
                #expect(adopt.status == 0 && adopt.stdout.contains("adopted 52:54:00:99:0e:02 as gpu07 10.77.0.77 in group gpu"), "\(adopt.output)")
                #expect(serve.wait(for: "reloaded bindings", timeout: 10), "\(serve.log)")
                let adopted = try #require(try udhcpc(net, mac: "52:54:00:99:0e:02"), "no answer for the adopted MAC: \(serve.log)")
                #expect(adopted == "EVENT bound ip=10.77.0.77 hostname=gpu07", "\(adopted)")
                #expect(!serve.log.contains("bound 52:54:00:99:0e:02"), "the adopted MAC was also bound by discover: \(serve.log)")

                serve.process.kill(SIGTERM)
                #expect(serve.process.wait() == 0, "\(serve.log)")
            }
        }

        @Test("nodes adopt refuses what nodes.yaml or another binding holds, with where; publish gives an adopted machine its files; bad discover blocks are located errors")
        func refusals() async throws { try await Harness.blocking { try Self().refusalsOnThread() } }
        func refusalsOnThread() throws {
            let dir = Harness.temporaryDirectory("discovery-refusals")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try Self.nodesYAML().write(toFile: dir + "/nodes.yaml", atomically: true, encoding: .utf8)
            func adopt(_ arguments: [String]) throws -> Harness.Result {
                try Harness.imagebuild(["nodes", "adopt"] + arguments + ["--nodes", dir + "/nodes.yaml", "--state-dir", dir + "/state"], timeout: 60)
            }
            let listed = try adopt(["52:54:00:77:0e:01", "--hostname", "other"])
            #expect(listed.status == 1, "\(listed.output)")
            #expect(listed.stderr.contains("\(dir)/nodes.yaml:16:5: 52:54:00:77:0e:01 is already listed in nodes.yaml as node001 (nodes.yaml wins over a binding: change the node there)"),
                    "\(listed.stderr)")
            let ok = try adopt(["52:54:00:99:0e:05", "--hostname", "web1", "--ip", "10.77.0.80"])
            #expect(ok.status == 0 && ok.stdout.contains("in group compute"), "the default group is discover's: \(ok.output)")
            let name = try adopt(["52:54:00:99:0e:06", "--hostname", "WEB1"])
            #expect(name.stderr.contains("\(dir)/state/discovery/bindings:2:1: hostname WEB1 is already bound to 52:54:00:99:0e:05"), "\(name.stderr)")
            let address = try adopt(["52:54:00:99:0e:06", "--hostname", "web2", "--ip", "10.77.0.11"])
            #expect(address.stderr.contains("nodes.yaml:16:5: 10.77.0.11 is already node001's fixed address in nodes.yaml"), "\(address.stderr)")
            let outside = try adopt(["52:54:00:99:0e:06", "--hostname", "web2", "--ip", "10.78.0.5"])
            #expect(outside.stderr.contains("cannot adopt with --ip 10.78.0.5: 10.78.0.5 is outside the subnet 10.77.0.0/24"), "\(outside.stderr)")
            let pool = try adopt(["52:54:00:99:0e:06", "--hostname", "web2", "--ip", "10.77.0.120"])
            #expect(pool.stderr.contains("is inside the dynamic pool 10.77.0.100-10.77.0.150"), "\(pool.stderr)")
            let group = try adopt(["52:54:00:99:0e:06", "--hostname", "web2", "--group", "gpus"])
            #expect(group.stderr.contains("unknown group 'gpus' (groups: compute, gpu)"), "\(group.stderr)")
            let badName = try adopt(["52:54:00:99:0e:06", "--hostname", "web_2"])
            #expect(badName.status != 0 && badName.stderr.contains("invalid hostname 'web_2'"), "\(badName.stderr)")
            let journal = try String(contentsOfFile: dir + "/state/discovery/bindings", encoding: .utf8)
            #expect(journal.split(separator: "\n").count == 2, "only the good adoption was written: \(journal)")

            // publish merges the binding: web1 gets its per-MAC files like a listed node.
            let artifact = try EndToEnd.PublishKillTests.artifact(in: dir, "minimal", content: "a")
            let publish = try Harness.imagebuild(["publish", artifact, "--root", dir + "/root", "--nodes", dir + "/nodes.yaml",
                                                  "--state-dir", dir + "/state"], timeout: 120)
            #expect(publish.status == 0 && publish.stdout.contains("2 nodes"), "\(publish.output)")
            let perMAC = (try? String(contentsOfFile: dir + "/root/pxelinux.cfg/01-52-54-00-99-0e-05", encoding: .utf8)) ?? ""
            #expect(perMAC.contains("web1"), "\(perMAC)")
            #expect(FileManager.default.fileExists(atPath: dir + "/root/pxelinux.cfg/0A4D0050"), "the hex-IP file of 10.77.0.80")
            #expect(FileManager.default.fileExists(atPath: dir + "/root/ipxe/nodes/52-54-00-99-0e-05.ipxe"))

            // nodes check: a malformed pattern and a range outside the subnet, located.
            try Self.nodesYAML(discover: "discover:\n  hostname: \"node{n:3}\"\n  addresses: 10.77.1.50-10.77.1.59")
                .write(toFile: dir + "/nodes.yaml", atomically: true, encoding: .utf8)
            let check = try Harness.imagebuild(["nodes", "check", dir + "/nodes.yaml"], timeout: 60)
            #expect(check.status != 0, "\(check.output)")
            #expect(check.output.contains("nodes.yaml:12:13: malformed hostname pattern 'node{n:3}'"), "\(check.output)")
            try Self.nodesYAML(discover: "discover:\n  hostname: \"node{n:03}\"\n  addresses: 10.77.1.50-10.77.1.59")
                .write(toFile: dir + "/nodes.yaml", atomically: true, encoding: .utf8)
            let outsideRange = try Harness.imagebuild(["nodes", "check", dir + "/nodes.yaml"], timeout: 60)
            #expect(outsideRange.output.contains("nodes.yaml:13:14: the discovery range 10.77.1.50-10.77.1.59 is outside the subnet 10.77.0.0/24"),
                    "\(outsideRange.output)")
        }
    }
}
