import Foundation
import TestSupport
import Testing

extension EndToEnd {
    /// Two machines boot the same image from `imagebuild serve` and come up as themselves: their own
    /// hostnames, an `/etc/hosts` listing both, a file rendered per node, a secret and SSH host keys
    /// that the server made once and hands out again at the next boot (the test power-cycles one
    /// machine and compares the key it prints with the first boot's and with the server's copy).
    @Suite("Node identity: per-node files, secrets and persistent host keys", .serialized,
           .enabled(if: QEMU.available && BootLab.unavailableReason == nil,
                    "needs qemu-system-x86_64, /dev/net/tun and network namespaces: \(BootLab.unavailableReason ?? "qemu missing")"))
    struct NodeIdentityBootTests {
        static let secret = "munge-\(UUID().uuidString)"

        /// `/etc/rc.local` (run by the minimal image's init) prints what the node got, on one line.
        static func nodes(secretFile: String) -> String {
            """
            network:
              server: 10.77.0.1
              subnet: 10.77.0.0/24
              http_port: 8080
              domain: cluster.test
            defaults:
              image: minimal
              loader: ipxe
              vars: {role: compute}
              files:
                - path: /etc/rc.local
                  mode: "0755"
                  content: |
                    #!/bin/sh
                    key=$(sha256sum /etc/ssh/ssh_host_ed25519_key.pub | cut -c1-16)
                    echo "IDENTITY host=$(hostname) role=[$(cat /etc/node-role)] hosts=$(grep -c cluster.test /etc/hosts) key=$key keymode=$(stat -c %a /etc/ssh/ssh_host_ed25519_key) secret=$(cat /etc/munge/munge.key) secretmode=$(stat -c %a /etc/munge/munge.key)"
                    grep cluster.test /etc/hosts | sed 's/^/HOSTS /'
                - path: /etc/node-role
                  content: "{{hostname}} is {{vars.role}} in rack {{vars.rack}}"
                - {path: /etc/munge/munge.key, source: \(secretFile), secret: true, template: false, mode: "0400", owner: "root:root"}
            nodes:
              - {mac: "52:54:00:77:00:21", hostname: alpha, ip: 10.77.0.21, vars: {rack: r1}}
              - {mac: "52:54:00:77:00:22", hostname: beta, ip: 10.77.0.22, vars: {rack: r2, role: gpu}}
            """
        }

        /// The `IDENTITY` line of a console, as key=value pairs (the role is bracketed: it has spaces).
        static func identity(_ console: String) -> [String: String]? {
            // Console lines end in CR LF, one Character in Swift: split on any newline.
            guard let line = console.split(whereSeparator: \.isNewline).last(where: { $0.hasPrefix("IDENTITY ") }) else { return nil }
            var fields: [String: String] = [:]
            var rest = line.dropFirst("IDENTITY ".count)
            while let equals = rest.firstIndex(of: "=") {
                let key = String(rest[..<equals]).trimmingCharacters(in: .whitespaces)
                rest = rest[rest.index(after: equals)...]
                let end: Substring.Index
                if rest.first == "[" {
                    end = rest.firstIndex(of: "]").map { rest.index(after: $0) } ?? rest.endIndex
                } else {
                    end = rest.firstIndex(of: " ") ?? rest.endIndex
                }
                fields[key] = String(rest[..<end]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
                rest = rest[end...]
            }
            return fields
        }

        @Test("two machines, one image: own hostnames, /etc/hosts with both, a per-node file, a secret; the same host key at the next boot")
        func twoMachines() async throws { try await Harness.blocking { try Self().twoMachinesOnThread() } }
        func twoMachinesOnThread() throws {
            let secretDir = Harness.temporaryDirectory("identity-secret")
            defer { try? FileManager.default.removeItem(atPath: secretDir) }
            try Self.secret.write(toFile: secretDir + "/munge.key", atomically: true, encoding: .utf8)
            chmod(secretDir + "/munge.key", 0o600)
            let site = try PXEBootTests.Site(nodes: Self.nodes(secretFile: secretDir + "/munge.key"))
            defer { site.close() }
            let machines = [("alpha", "52:54:00:77:00:21"), ("beta", "52:54:00:77:00:22")]
            let started = Date()
            let vms = try machines.map { (mac: $0.1, vm: try site.lab.startVM(name: $0.0, mac: $0.1)) }
            let upAt = PXEBootTests.waitForNodes(vms, started: started, timeout: 420)
            for (mac, vm) in vms {
                print("identity, first boot (\(QEMU.accelerator)): \(mac) NODE-UP after \(PXEBootTests.seconds(upAt[mac]))")
                #expect(upAt[mac] != nil, "\(mac) did not come up:\n\(vm.log.suffix(3000))\n--- server:\n\(PXEBootTests.serverLines(site.serve.log, mac: mac, console: vm.log))")
            }
            guard upAt.count == vms.count else { return }

            var firstKeys: [String: String] = [:]
            for ((hostname, mac), (_, vm)) in zip(machines, vms) {
                guard let fields = Self.identity(vm.log) else {
                    Issue.record("\(hostname) printed no IDENTITY line:\n\(vm.log.suffix(3000))"); continue
                }
                let rack = hostname == "alpha" ? "r1" : "r2", role = hostname == "alpha" ? "compute" : "gpu"
                #expect(fields["host"] == hostname, "\(fields)")
                #expect(fields["role"] == "\(hostname) is \(role) in rack \(rack)", "\(fields)")
                #expect(fields["hosts"] == "2", "\(fields)\n\(vm.log.split(separator: "\n").filter { $0.hasPrefix("HOSTS") })")
                #expect(vm.log.contains("HOSTS 10.77.0.21\talpha.cluster.test alpha") && vm.log.contains("HOSTS 10.77.0.22\tbeta.cluster.test beta"))
                #expect(fields["keymode"] == "600" && fields["secret"] == Self.secret && fields["secretmode"] == "400", "\(fields)")
                // The key the node got is the one the server keeps for it.
                let stored = try Harness.shell("sha256sum \(site.lab.directory)/state/host-keys/\(hostname)/ssh_host_ed25519_key.pub | cut -c1-16").stdout
                    .trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(fields["key"] == stored && !stored.isEmpty, "node \(fields["key"] ?? "-"), server \(stored)")
                firstKeys[hostname] = fields["key"]
                let t = try site.timelineWhenUp(mac, bootloader: false)
                #expect(t.stages.contains("overlay"), "no overlay stage:\n\(t.text)")
                #expect(t.events.contains { $0.summary.contains("boot/v1/secrets") }, "the secrets delivery is not on the timeline:\n\(t.text)")
            }
            #expect(firstKeys["alpha"] != firstKeys["beta"], "two nodes share a host key")

            // alpha's next boot: the same host key again, handed out again in the new boot's window.
            let alpha = vms[0].vm
            try alpha.powerCycle()
            let again = alpha.wait(for: "NODE-UP 52:54:00:77:00:21", timeout: 300)
            #expect(again, "alpha did not come up again:\n\(alpha.currentLog.suffix(3000))")
            let second = Self.identity(alpha.currentLog)
            print("identity, second boot of alpha: key \(second?["key"] ?? "none"), first \(firstKeys["alpha"] ?? "none")")
            #expect(second?["key"] == firstKeys["alpha"] && second?["host"] == "alpha", "\(second ?? [:])")

            // The secret is nowhere but its source and the nodes: not in the root, the server's log or state.
            let grep = try Harness.shell("grep -rl '\(Self.secret)' \(site.root) \(site.lab.directory)/state \(site.lab.directory)/serve-*.log || true")
            #expect(grep.stdout.isEmpty, "the secret leaked to: \(grep.stdout)")
        }
    }
}
