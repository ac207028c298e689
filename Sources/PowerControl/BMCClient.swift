import Foundation
import ImageBuildKit

/// A machine's power as its BMC reports it.
public enum PowerState: String, Codable, Sendable {
    case on
    case off
}

/// What `imagebuild power` asks of a BMC.
public enum PowerAction: String, Codable, Sendable, CaseIterable {
    /// Ask only.
    case status
    case on
    /// Hard off (IPMI `chassis power off`, Redfish `ForceOff`): a stateless node has nothing to save.
    case off
    /// Off, then on; a machine that is off is just powered on.
    case cycle
    /// A warm reset of a running machine (IPMI `chassis power reset`, Redfish `ForceRestart`).
    case reset
}

/// Why a BMC did not do what was asked, in words an administrator acts on. Never holds the password:
/// texts come from the BMC's answer, the tool's messages or the network, and `PasswordFile` keeps the
/// password out of every error it throws.
public struct BMCError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// nodes.yaml or the password file is wrong (found before anything is sent).
        case config
        /// The BMC refused the user or the password.
        case auth
        /// Nothing answered (no route, connection refused, no reply).
        case unreachable
        /// An answer did not come within the time-out (a BMC that hangs).
        case timeout
        /// The certificate check failed (Redfish).
        case tls
        /// The BMC answered, but not with success.
        case refused
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}

/// One BMC, spoken to in its protocol.
public protocol BMCClient: Sendable {
    func powerState() async throws -> PowerState
    /// `on`, `off`, `cycle` or `reset` (never `status`), applied as the BMC's own command.
    func apply(_ action: PowerAction, current: PowerState) async throws
    /// The next boot, once, from the network (`mode`: the firmware mode to ask for, nil: as it is).
    func setOneTimeNetworkBoot(mode: BMCBootMode?) async throws
}

/// Reads a BMC password file: a regular file that only its owner can read or write (0600 or
/// stricter, as ssh keys), whose first line is the password. The password never appears in an error.
public enum PasswordFile {
    public static func check(_ path: String) throws {
        if let problem = BMCSettings.passwordFileProblem(path) { throw BMCError(.config, problem) }
    }

    public static func read(_ path: String) throws -> String {
        try check(path)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw BMCError(.config, "password file \(path) cannot be read")
        }
        let text = String(decoding: data, as: UTF8.self)
        let password = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        let trimmed = password.hasSuffix("\r") ? String(password.dropLast()) : password
        guard !trimmed.isEmpty else { throw BMCError(.config, "password file \(path) is empty") }
        return trimmed
    }
}
