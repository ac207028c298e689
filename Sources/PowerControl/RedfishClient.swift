import AsyncHTTPClient
import Foundation
import ImageBuildKit
import NIOCore
import NIOHTTP1
import NIOSSL

/// DMTF Redfish over HTTPS with AsyncHTTPClient: the ComputerSystem's `PowerState`, its
/// `ComputerSystem.Reset` action, and a one-time `Boot` override to `Pxe`.
///
/// HTTP Basic authentication on each request: every Redfish service takes it, and a power command
/// makes three or four requests, so a session would save nothing. The password is read from its file
/// per client and lives only in the `Authorization` header; no error quotes a request.
public struct RedfishClient: BMCClient {
    public let target: BMCTarget
    public let timeout: Duration
    let http: HTTPClient
    let authorization: String
    let base: String
    let tls: TLSConfiguration
    /// What one command learns once: the system's path and its resource (for the reset action).
    let cache = Cache()

    final class Cache: @unchecked Sendable {
        private let lock = NSLock()
        private var path: String?
        private var resource: [String: Any]?
        var systemPath: String? {
            get { lock.withLock { path } }
            set { lock.withLock { path = newValue } }
        }
        var system: [String: Any]? {
            get { lock.withLock { resource } }
            set { lock.withLock { resource = newValue } }
        }
    }

    public init(target: BMCTarget, timeout: Duration, http: HTTPClient) throws {
        self.target = target
        self.timeout = timeout
        self.http = http
        let password = try PasswordFile.read(target.passwordFile)
        authorization = "Basic " + Data("\(target.user):\(password)".utf8).base64EncodedString()
        let host = target.address.contains(":") ? "[\(target.address)]" : target.address
        base = "https://\(host)" + (target.port.map { ":\($0)" } ?? "")
        tls = try Self.tlsConfiguration(target.tls)
    }

    /// The certificate check `tls:` asks for. A pinned file is the trust anchor itself, so the host
    /// name is not checked against it (BMC certificates rarely name the address they are reached at).
    static func tlsConfiguration(_ setting: BMCTLS) throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        switch setting {
        case .verify:
            break
        case .pinned(let path):
            do {
                let certificates = try NIOSSLCertificate.fromPEMFile(path)
                guard !certificates.isEmpty else { throw BMCError(.config, "tls: \(path) holds no PEM certificate") }
                configuration.trustRoots = .certificates(certificates)
            } catch let error as BMCError {
                throw error
            } catch {
                throw BMCError(.config, "tls: cannot read the pinned certificate \(path): \(error)")
            }
            configuration.certificateVerification = .noHostnameVerification
        case .insecure:
            configuration.certificateVerification = .none
        }
        return configuration
    }

    public func powerState() async throws -> PowerState {
        let system = try await systemResource()
        switch system["PowerState"] as? String {
        case "On", "PoweringOn": return .on
        case "Off", "PoweringOff": return .off
        case let other: throw BMCError(.refused, "the system reports PowerState \(other ?? "nothing")")
        }
    }

    public func apply(_ action: PowerAction, current: PowerState) async throws {
        // The resource `powerState()` just read, if it did: its actions have not changed since.
        var system = cache.system
        if system == nil { system = try await systemResource() }
        let reset = (system?["Actions"] as? [String: Any])?["#ComputerSystem.Reset"] as? [String: Any]
        let allowed = reset?["ResetType@Redfish.AllowableValues"] as? [String]
        func pick(_ preferred: [String]) -> String {
            guard let allowed else { return preferred[0] }
            return preferred.first(where: allowed.contains) ?? preferred[0]
        }
        let resetType: String
        switch action {
        case .status: return
        case .on: resetType = pick(["On", "ForceOn"])
        case .off: resetType = pick(["ForceOff"])
        case .cycle: resetType = current == .off ? pick(["On", "ForceOn"]) : pick(["PowerCycle", "ForceRestart"])
        case .reset: resetType = pick(["ForceRestart", "PowerCycle"])
        }
        // The BMC's own action path, when it names one on this service (a path, never another host).
        var targetPath = (reset?["target"] as? String).flatMap { $0.hasPrefix("/redfish/") ? $0 : nil }
        if targetPath == nil { targetPath = try await systemPath() + "/Actions/ComputerSystem.Reset" }
        _ = try await request(.POST, targetPath!, body: ["ResetType": resetType])
    }

    public func setOneTimeNetworkBoot(mode: BMCBootMode?) async throws {
        var boot: [String: Any] = ["BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Pxe"]
        if let mode { boot["BootSourceOverrideMode"] = mode == .uefi ? "UEFI" : "Legacy" }
        _ = try await request(.PATCH, try await systemPath(), body: ["Boot": boot])
    }

    // MARK: - Requests

    /// `/redfish/v1/Systems/<id>`: the configured id, else the service's only system.
    func systemPath() async throws -> String {
        if let system = target.system { return "/redfish/v1/Systems/\(system)" }
        if let path = cache.systemPath { return path }
        let collection = try await request(.GET, "/redfish/v1/Systems")
        let members = (collection["Members"] as? [[String: Any]] ?? []).compactMap { $0["@odata.id"] as? String }
            .filter { $0.hasPrefix("/redfish/") }
        guard let only = members.first else { throw BMCError(.refused, "the BMC lists no system under /redfish/v1/Systems") }
        guard members.count == 1 else {
            let ids = members.map { $0.split(separator: "/").last.map(String.init) ?? $0 }
            throw BMCError(.config, "the BMC has \(members.count) systems (\(ids.prefix(4).joined(separator: ", "))...): set bmc.system")
        }
        cache.systemPath = only
        return only
    }

    func systemResource() async throws -> [String: Any] {
        let resource = try await request(.GET, try await systemPath())
        cache.system = resource
        return resource
    }

    func request(_ method: HTTPMethod, _ path: String, body: [String: Any]? = nil) async throws -> [String: Any] {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        request.tlsConfiguration = tls
        request.headers.add(name: "Authorization", value: authorization)
        request.headers.add(name: "Accept", value: "application/json")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])))
        }
        let what = "\(method.rawValue) \(path)"
        let http = http
        let timeout = timeout
        let sendable = UncheckedRequest(request: request)
        let (status, bytes): (HTTPResponseStatus, ByteBuffer)
        do {
            // AsyncHTTPClient's own deadline comes first, so its reason (refused, TLS) is the one told;
            // the outer time-out is the backstop for a body that never ends.
            (status, bytes) = try await withTimeout(timeout + .seconds(2), what: what) {
                let response = try await http.execute(sendable.request, timeout: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000
                                                                                             + timeout.components.attoseconds / 1_000_000_000))
                return (response.status, try await response.body.collect(upTo: 1 << 20))
            }
        } catch let error as BMCError {
            throw error
        } catch {
            throw Self.classify(error, what: what)
        }
        switch status.code {
        case 200..<300:
            guard bytes.readableBytes > 0 else { return [:] }
            let object = try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView))
            return object as? [String: Any] ?? [:]
        case 401: throw BMCError(.auth, "the BMC refused the user or password (HTTP 401 for \(what))")
        case 403: throw BMCError(.auth, "the user may not do this (HTTP 403 for \(what))")
        default:
            let text = String(decoding: bytes.readableBytesView.prefix(300), as: UTF8.self)
            throw BMCError(.refused, "\(what): HTTP \(status.code) \(status.reasonPhrase)\(Self.redfishMessage(text).map { ": \($0)" } ?? "")")
        }
    }

    /// A Redfish error body's `error.message` (or its first extended message), else nil.
    static func redfishMessage(_ text: String) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
              let error = object["error"] as? [String: Any] else {
            let plain = text.trimmingCharacters(in: .whitespacesAndNewlines)
            return plain.isEmpty ? nil : String(plain.prefix(160))
        }
        if let extended = (error["@Message.ExtendedInfo"] as? [[String: Any]])?.first?["Message"] as? String { return extended }
        return error["message"] as? String
    }

    static func classify(_ error: Error, what: String) -> BMCError {
        let text = String(describing: error)
        if error is NIOSSLError || text.contains("handshakeFailed") || text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("certificate") {
            return BMCError(.tls, "\(what): the BMC's certificate failed the check (\(text.prefix(160))); pin it with tls: FILE, or tls: insecure in a lab")
        }
        if let client = error as? HTTPClientError {
            switch client {
            case .connectTimeout, .readTimeout, .deadlineExceeded:
                return BMCError(.timeout, "\(what): no answer in time (the BMC hangs or is overloaded)")
            default: break
            }
        }
        if text.contains("connectionRefused") || text.contains("Connection refused") || text.contains("ECONNREFUSED") {
            return BMCError(.unreachable, "\(what): connection refused (is Redfish on this address and port?)")
        }
        if text.contains("NoRoute") || text.contains("unreachable") || text.contains("connectTimeout") {
            return BMCError(.unreachable, "\(what): the BMC cannot be reached (\(text.prefix(120)))")
        }
        return BMCError(.unreachable, "\(what): \(text.prefix(200))")
    }
}

/// `HTTPClientRequest` is Sendable in practice (a value of Sendable parts) but its body may not be
/// declared so; this carries it into the time-out's child task.
struct UncheckedRequest: @unchecked Sendable {
    let request: HTTPClientRequest
}
