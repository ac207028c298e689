import Foundation
import ImageBuildKit
import Subprocess

/// IPMI 2.0 (RMCP+, `lanplus`) through Debian's `ipmitool`, one process per command. ipmitool is
/// what every site already trusts with its BMCs; re-implementing RMCP+ and its cipher suites here
/// would be a second, less tested copy.
///
/// The password goes to ipmitool as `-f FILE` (checked 0600 first), so it is never on a command
/// line, in the environment or in this process's memory. `-v` makes ipmitool say why a session
/// failed, which is how a wrong password is told from a BMC that does not answer.
public struct IPMIToolClient: BMCClient {
    public let target: BMCTarget
    /// For each ipmitool run. ipmitool's own retries (`-N 1 -R 2`) give up on a silent BMC after
    /// about 6 s, so a time-out above that tells "no answer" from "answers too slowly".
    public let timeout: Duration
    public let executable: String

    public init(target: BMCTarget, timeout: Duration, executable: String = "ipmitool") {
        self.target = target
        self.timeout = timeout
        self.executable = executable
    }

    public func powerState() async throws -> PowerState {
        let output = try await run(["chassis", "power", "status"])
        if output.contains("Chassis Power is on") { return .on }
        if output.contains("Chassis Power is off") { return .off }
        throw BMCError(.refused, "unexpected answer to 'chassis power status': \(Self.firstLine(output))")
    }

    public func apply(_ action: PowerAction, current: PowerState) async throws {
        let verb: String
        switch action {
        case .status: return
        case .on: verb = "on"
        case .off: verb = "off"
        // IPMI's "power cycle" on a machine that is off may do nothing (the specification leaves it
        // to the BMC): a machine that is off is powered on instead.
        case .cycle: verb = current == .off ? "on" : "cycle"
        case .reset: verb = "reset"
        }
        _ = try await run(["chassis", "power", verb])
    }

    public func setOneTimeNetworkBoot(mode: BMCBootMode?) async throws {
        // Without `persistent`, ipmitool sets the one-time flag: the next boot only.
        var arguments = ["chassis", "bootdev", "pxe"]
        if mode == .uefi { arguments.append("options=efiboot") }
        _ = try await run(arguments)
    }

    /// The arguments every command starts with. Public for the tests that check no password is in them.
    public var sessionArguments: [String] {
        var arguments = ["-I", "lanplus", "-H", target.address, "-U", target.user, "-f", target.passwordFile,
                         "-N", "1", "-R", "2", "-v"]
        if let port = target.port { arguments += ["-p", String(port)] }
        if let suite = target.cipherSuite { arguments += ["-C", String(suite)] }
        return arguments
    }

    func run(_ command: [String]) async throws -> String {
        try PasswordFile.check(target.passwordFile)
        let arguments = sessionArguments + command
        let executable = executable
        let (succeeded, output, errors): (Bool, String, String)
        do {
            (succeeded, output, errors) = try await withTimeout(timeout, what: "ipmitool \(command.joined(separator: " "))") {
                let result = try await Subprocess.run(.name(executable), arguments: Arguments(arguments), input: .none,
                                                      output: .string(limit: 1 << 16), error: .string(limit: 1 << 16))
                return (result.terminationStatus.isSuccess, result.standardOutput, result.standardError)
            }
        } catch let error as BMCError {
            throw error
        } catch {
            throw BMCError(.config, "cannot run \(executable): \(error) (apt-get install ipmitool)")
        }
        // ipmitool exits 0 after some failed commands ("Set Chassis Boot Parameter 5 failed"), so its
        // messages are read too.
        if !succeeded || Self.failureLine(errors) != nil {
            throw Self.classify(errors, output: output, command: command)
        }
        return output
    }

    /// The line of ipmitool's stderr that says a command failed, if any.
    static func failureLine(_ errors: String) -> String? {
        errors.split(separator: "\n").map(String.init).first { line in
            line.hasPrefix("Error") || line.contains(" failed") || line.contains("Unable to establish")
        }
    }

    /// Turns ipmitool's `-v` messages into a reason.
    static func classify(_ errors: String, output: String, command: [String]) -> BMCError {
        if errors.contains("RAKP 2 HMAC is invalid") || errors.contains("Invalid password") {
            return BMCError(.auth, "the BMC refused the password (RAKP 2 HMAC is invalid)")
        }
        if errors.contains("unauthorized name") || errors.contains("Invalid user name") {
            return BMCError(.auth, "the BMC does not know this user (RAKP 2: unauthorized name)")
        }
        if errors.contains("insufficient privilege") || errors.contains("Insufficient privilege") {
            return BMCError(.auth, "the user may not do this (insufficient privilege)")
        }
        if errors.contains("Get Auth Capabilities error") || errors.contains("No response") || errors.contains("Unable to establish") {
            return BMCError(.unreachable, "no answer from the BMC (IPMI on UDP; check the address, port and that IPMI over LAN is enabled)")
        }
        let line = failureLine(errors) ?? firstLine(errors.isEmpty ? output : errors)
        return BMCError(.refused, "ipmitool \(command.joined(separator: " ")): \(line)")
    }

    static func firstLine(_ text: String) -> String {
        let line = text.split(separator: "\n").first { !$0.hasPrefix("Loading IANA") }.map(String.init) ?? "(nothing)"
        return String(line.prefix(200))
    }
}

/// Runs `body`, giving up after `duration`: the body's task is cancelled (Subprocess then kills its
/// child, AsyncHTTPClient drops its request) and a `.timeout` error names `what`.
func withTimeout<T: Sendable>(_ duration: Duration, what: String,
                              _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: duration)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw BMCError(.timeout, "\(what): no answer within \(duration.seconds) s (the BMC hangs or is overloaded)")
        }
        return value
    }
}

extension Duration {
    /// Whole seconds when whole, else with one decimal: for messages.
    var seconds: String {
        let value = Double(components.seconds) + Double(components.attoseconds) / 1e18
        return value == value.rounded() ? String(Int(value)) : String(format: "%.1f", value)
    }
}
