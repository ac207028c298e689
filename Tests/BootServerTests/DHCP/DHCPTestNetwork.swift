import BootProtocols
import BootServer
import Foundation
import Logging

/// Network namespaces, veth pairs and bridges a test creates and removes. Nothing touches a real
/// interface: the host side is only ever a veth end this test created.
final class DHCPTestNetwork: @unchecked Sendable {
    let id: String
    private(set) var namespaces: [String] = []
    private(set) var hostLinks: [String] = []
    private var pids: [Int32] = []
    let directory: DHCPTemporaryDirectory

    init() throws {
        id = String(UUID().uuidString.prefix(6)).lowercased()
        directory = try DHCPTemporaryDirectory("dhcp-net")
        try dhcpClientScript.write(toFile: directory.path + "/dhcp_client.py", atomically: true, encoding: .utf8)
    }

    /// nil when namespaces can be created here; else why not (the tests then skip with that message).
    static func unavailableReason() async -> String? {
        guard getuid() == 0 else { return "not root: network namespace tests need CAP_NET_ADMIN" }
        let name = "ibdprobe" + String(UUID().uuidString.prefix(6)).lowercased()
        guard let result = try? await runCommand(["ip", "netns", "add", name], timeoutSeconds: 10), result.status == 0 else {
            return "'ip netns add' is not permitted here"
        }
        _ = try? await runCommand(["ip", "netns", "del", name], timeoutSeconds: 10)
        for tool in ["/usr/bin/python3"] where !FileManager.default.isExecutableFile(atPath: tool) {
            return "\(tool) is missing"
        }
        return nil
    }

    @discardableResult
    func run(_ arguments: [String], timeout: Int = 30) async throws -> CommandResult {
        let result = try await runCommand(arguments, timeoutSeconds: timeout)
        guard result.status == 0 else {
            throw DHCPTestFailure("\(arguments.joined(separator: " ")) failed (\(result.status)): \(result.output)")
        }
        return result
    }

    /// `ip netns exec NS ...`, status not checked.
    func exec(_ namespace: String, _ arguments: [String], timeout: Int = 30) async throws -> CommandResult {
        try await runCommand(["ip", "netns", "exec", namespace] + arguments, timeoutSeconds: timeout)
    }

    func addNamespace(_ suffix: String) async throws -> String {
        let name = "ibd\(id)\(suffix)"
        try await run(["ip", "netns", "add", name])
        namespaces.append(name)
        try await run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name
    }

    /// A veth pair whose first end stays in the test's namespace (host side) and second goes to `namespace`.
    func addHostVeth(_ suffix: String, to namespace: String, peerName: String, hostAddress: String) async throws -> String {
        let host = "ibd\(id)\(suffix)"
        try await run(["ip", "link", "add", host, "type", "veth", "peer", "name", peerName, "netns", namespace])
        hostLinks.append(host)
        try await run(["ip", "addr", "add", hostAddress, "dev", host])
        try await run(["ip", "link", "set", host, "up"])
        try await run(["ip", "-n", namespace, "link", "set", peerName, "up"])
        return host
    }

    /// A veth pair between two namespaces (`a` end named `aName`, `b` end `bName`).
    func addVeth(_ a: String, _ aName: String, _ b: String, _ bName: String) async throws {
        try await run(["ip", "-n", a, "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b])
        try await run(["ip", "-n", a, "link", "set", aName, "up"])
        try await run(["ip", "-n", b, "link", "set", bName, "up"])
    }

    func setMAC(_ namespace: String, _ link: String, _ mac: String) async throws {
        try await run(["ip", "-n", namespace, "link", "set", "dev", link, "address", mac])
    }

    /// Starts a long-running process in the background and returns its PID (killed in `cleanup`).
    ///
    /// Started through `sh -c '... &'` rather than `Process`: on Linux, a `Process` left running while
    /// `runCommand` waits for another one made that wait hang (the second child was never reaped).
    func spawn(_ arguments: [String], output: String, environment: [String: String] = [:]) async throws -> Int32 {
        // Python's Popen closes every other descriptor (close_fds): Foundation leaves pipe ends without
        // close-on-exec, and a long-running child holding one would keep that command from reaching EOF.
        let launcher = """
        import json, os, subprocess, sys
        args, out, env = json.loads(sys.argv[1]), sys.argv[2], dict(os.environ, **json.loads(sys.argv[3]))
        p = subprocess.Popen(args, stdout=open(out, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             close_fds=True, env=env, start_new_session=True)
        print(p.pid)
        """
        let argsJSON = String(decoding: try JSONSerialization.data(withJSONObject: arguments), as: UTF8.self)
        let envJSON = String(decoding: try JSONSerialization.data(withJSONObject: environment), as: UTF8.self)
        let result = try await run(["/usr/bin/python3", "-c", launcher, argsJSON, output, envJSON])
        guard let pid = Int32(result.output.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw DHCPTestFailure("no PID for \(arguments.joined(separator: " ")): \(result.output)")
        }
        pids.append(pid)
        return pid
    }

    static func isRunning(_ pid: Int32) -> Bool {
        // A zombie still answers kill(0); /proc says whether it is really running.
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
        return !stat.contains(") Z ")
    }

    /// Runs `body` with a fresh network and always cleans up.
    static func with(_ body: (DHCPTestNetwork) async throws -> Void) async throws {
        let network = try DHCPTestNetwork()
        do {
            try await body(network)
        } catch {
            await network.cleanup()
            throw error
        }
        await network.cleanup()
    }

    func cleanup() async {
        for pid in pids where DHCPTestNetwork.isRunning(pid) { kill(pid, SIGKILL) }
        for link in hostLinks { _ = try? await runCommand(["ip", "link", "del", link], timeoutSeconds: 10) }
        for namespace in namespaces { _ = try? await runCommand(["ip", "netns", "del", namespace], timeoutSeconds: 10) }
        directory.cleanup()
    }
}

/// A random /24 in 10.213.0.0/16 so concurrent runs do not collide.
func dhcpTestSubnetOctet() -> Int { Int.random(in: 20...250) }
