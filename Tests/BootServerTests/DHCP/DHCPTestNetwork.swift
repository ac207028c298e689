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
    private var processes: [Process] = []
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

    /// Starts a long-running process (stopped by PID in `cleanup`).
    func spawn(_ arguments: [String], output: String, environment: [String: String] = [:]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        FileManager.default.createFile(atPath: output, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        try process.run()
        processes.append(process)
        return process
    }

    func cleanup() async {
        for process in processes where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        for link in hostLinks { _ = try? await runCommand(["ip", "link", "del", link], timeoutSeconds: 10) }
        for namespace in namespaces { _ = try? await runCommand(["ip", "netns", "del", namespace], timeoutSeconds: 10) }
        directory.cleanup()
    }
}

/// A random /24 in 10.213.0.0/16 so concurrent runs do not collide.
func dhcpTestSubnetOctet() -> Int { Int.random(in: 20...250) }
