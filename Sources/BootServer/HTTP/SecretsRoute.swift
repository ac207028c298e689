import BootProtocols
import Foundation
import HTTPTypes
import Hummingbird
import ImageBuildKit
import Logging
import NIOCore
import Prometheus
import Synchronization

/// Renders a node's secret overlay when `SecretAdmission` lets it have it: its secret files (read now,
/// so a rotated key needs no publish) and its SSH host keys, as one gzip'd tar.
public final class SecretDelivery: Sendable {
    /// A node's persistent SSH host keys as files of its secrets (private keys 0600, public keys,
    /// certificates), made once and kept in the state directory.
    public struct HostKeyFiles: Sendable {
        /// The node's files, making or certifying its keys first when needed (ssh-keygen: may block).
        public var files: @Sendable (NodeIdentity) throws -> [NodeTemplates.Rendered]
        /// Whether `files` only reads what is stored (no key to make, no certificate to sign): a
        /// request then is answered on the event loop, the others on the thread pool.
        public var stored: @Sendable (NodeIdentity) -> Bool

        public init(files: @escaping @Sendable (NodeIdentity) throws -> [NodeTemplates.Rendered],
                    stored: @escaping @Sendable (NodeIdentity) -> Bool) {
            self.files = files
            self.stored = stored
        }
    }

    let admission: SecretAdmission
    let ledger = SecretLedger()
    let hostKeyFiles: HostKeyFiles?
    let templates = TemplateCache()
    let refusals: [SecretAdmission.Reason: Counter]
    let delivered: Counter

    init(admission: SecretAdmission, hostKeyFiles: HostKeyFiles?, metrics: HTTPMetrics) {
        self.admission = admission
        self.hostKeyFiles = hostKeyFiles
        var refusals: [SecretAdmission.Reason: Counter] = [:]
        for reason in SecretAdmission.Reason.allCases { refusals[reason] = metrics.secretRequests(reason.rawValue) }
        self.refusals = refusals
        delivered = metrics.secretRequests("delivered")
    }

    /// The archive for `identity`'s node.
    func archive(for identity: NodeIdentity, inventory: Inventory, generation: Int) throws -> [UInt8] {
        var files = try templates.with(inventory, generation: generation) { templates in
            try identity.secretFiles.map { try templates.render($0.file, for: identity) }
        }
        if identity.hostKeys == .persistent, let hostKeyFiles { files += try hostKeyFiles.files(identity) }
        return try OverlayArchive.make(files, mtime: Publisher.overlayEpoch, use: .perRequest).bytes
    }

    /// Whether `archive(for:)` may run where nothing may block (an event loop): it reads small files
    /// (the secrets' sources, stored host keys) but makes no key and runs no ssh-keygen.
    func rendersInline(_ identity: NodeIdentity) -> Bool {
        guard identity.hostKeys == .persistent, let hostKeyFiles else { return true }
        return hostKeyFiles.stored(identity)
    }
}

/// A secrets request, as the fast path and the router both hand it on.
struct SecretRequest {
    /// The last segment of the path: the node's MAC as the client wrote it.
    var macText: String
    /// The path without its leading '/', for the node's timeline.
    var path: String
    var remote: SocketAddress?
    var smbios: SecretAdmission.SMBIOSHeaders

    /// The request headers stage 1 sends the node's SMBIOS values in.
    static let smbiosFields = ["X-Imagebuild-Product-UUID", "X-Imagebuild-Product-Serial", "X-Imagebuild-Asset-Tag"]

    init(macText: String, path: String, remote: SocketAddress?, field: (String) -> String?) {
        self.macText = macText
        self.path = path
        self.remote = remote
        smbios = (field(Self.smbiosFields[0]), field(Self.smbiosFields[1]), field(Self.smbiosFields[2]))
    }
}

/// What a secrets request gets: the archive, a refusal (403 with its reason) or an error (500).
struct SecretAnswer {
    var status: HTTPResponse.Status
    var contentType: String
    var body: [UInt8]
}

/// `NodeTemplates` of the inventory in force, rebuilt when its generation changes: building them walks
/// every node, which a request in a boot storm must not repeat. Renders hold the lock (the templates
/// cache what they render).
final class TemplateCache: Sendable {
    private let cache = Mutex<(generation: Int, templates: NodeTemplates)?>(nil)

    func with<T: Sendable>(_ inventory: Inventory, generation: Int, _ body: (NodeTemplates) throws -> T) throws -> T {
        try cache.withLock { cache -> T in
            if cache?.generation != generation || cache?.templates.inventory.nodes.count != inventory.nodes.count {
                cache = (generation, NodeTemplates(inventory: inventory))
            }
            return try body(cache!.templates)
        }
    }
}

extension HTTPService {
    /// `GET /boot/v1/secrets/<mac>` through the router: requests the fast path left (a node whose keys
    /// must be made first, or a request it does not answer), decided on the thread pool.
    func secrets(_ request: Request, context: BootRequestContext, delivery: SecretDelivery) async throws -> Response {
        let headers = request.headers
        let secretRequest = SecretRequest(macText: context.parameters.get("mac") ?? "", path: String(request.uri.path.dropFirst()),
                                          remote: context.remoteAddress) { name in HTTPField.Name(name).flatMap { headers[$0] } }
        // On the thread pool: a node's first host keys take ssh-keygen a second, which must not hold
        // one of the few threads requests run on.
        let answer = try await threadPool.runIfActive { [self] in answerSecrets(secretRequest, delivery: delivery, inline: false)! }
        return Response(status: answer.status, headers: [.contentType: answer.contentType, .cacheControl: "no-store"],
                        body: ResponseBody(byteBuffer: ByteBuffer(bytes: answer.body)))
    }

    /// The fast path's `GET /boot/v1/secrets/<mac>` (`FastPath`): answered on the event loop when
    /// nothing needs to block, else left to the router (nil).
    func fastSecretsRoute(delivery: SecretDelivery) -> FastRoutes.Get {
        let metrics = self.metrics
        return FastRoutes.Get(prefix: BootPlan.secretsPrefix) { [self] rest, head, remote in
            let request = SecretRequest(macText: rest, path: String(BootPlan.secretsPrefix.dropFirst()) + rest, remote: remote) {
                RequestHead.field($0, in: head)
            }
            guard let answer = answerSecrets(request, delivery: delivery, inline: true) else { return nil }
            metrics.request(.secrets, status: Int(answer.status.code), bodyBytes: answer.body.count)
            metrics.fastPathResponses.increment()
            var fields = HTTPFields()
            fields[.contentType] = answer.contentType
            fields[.cacheControl] = "no-store"
            return FastRoutes.Reply(status: answer.status, fields: fields, body: ByteBuffer(bytes: answer.body))
        }
    }

    /// The one decision on a secrets request (`SecretAdmission`), its log line, metric and timeline
    /// entry, and the archive. `inline`: the caller is an event loop; nil then, with nothing done or
    /// counted, when the node's host keys must be made or certified first.
    func answerSecrets(_ request: SecretRequest, delivery: SecretDelivery, inline: Bool) -> SecretAnswer? {
        let remote = request.remote?.ipv4Address
        let port = request.remote?.port
        let mac = nodePathMAC(request.macText)
        let inventory = self.inventory()
        let node = mac.flatMap { inventory?.node(mac: $0) }
        let identity: NodeIdentity?
        do { identity = try node.map { try inventory!.identity(of: $0) } } catch {
            logger.error("secrets: the inventory entry of \(mac!) is broken: \(error)")
            return SecretAnswer(status: .internalServerError, contentType: "text/plain; charset=utf-8",
                                body: Array("the inventory entry of this node is broken; see the server log\n".utf8))
        }
        if inline, let identity, !delivery.rendersInline(identity) { return nil }

        func refuse(_ refusal: SecretAdmission.Refusal) -> SecretAnswer {
            delivery.refusals[refusal.reason]?.increment()
            logger.warning("secrets refused", metadata: [
                "mac": "\(mac.map(\.description) ?? printableClientText(request.macText))", "client": "\(remote.map(\.description) ?? "?")",
                "port": "\(port.map(String.init) ?? "?")", "reason": "\(refusal.reason.rawValue)", "detail": "\(refusal.message)"])
            if let mac {
                timeline.record(.transfer(.http, path: request.path, bytes: 0, size: nil,
                                          outcome: .refused("secrets: \(refusal.message)")), mac: mac, source: remote)
            }
            return SecretAnswer(status: .forbidden, contentType: "text/plain; charset=utf-8", body: Array((refusal.message + "\n").utf8))
        }
        guard let mac else {
            return refuse(.init(reason: .notANode, message: "'\(printableClientText(request.macText))' is not a node's MAC (aa-bb-cc-dd-ee-ff)"))
        }
        let state = timeline.node(mac)
        let boot = state?.boot ?? 0
        if let refusal = delivery.admission.decide(
            mac: mac, node: node, hasSecrets: identity?.hasSecrets ?? false, remote: remote, port: port, state: state,
            delivered: delivery.ledger.count(mac, boot: boot), smbios: request.smbios, now: timeline.currentTime) {
            return refuse(refusal)
        }
        let bytes: [UInt8]
        do { bytes = try delivery.archive(for: identity!, inventory: inventory!, generation: inventoryGeneration()) } catch {
            // The reason names files and nodes, never a secret's content.
            logger.error("secrets for \(mac) could not be made: \(error)")
            return SecretAnswer(status: .internalServerError, contentType: "text/plain; charset=utf-8",
                                body: Array("the node's secrets could not be made; see the server log\n".utf8))
        }
        // Counted only now, and atomically: two asks of one boot racing get one archive.
        guard delivery.ledger.take(mac, boot: boot, limit: delivery.admission.perBoot) else {
            return refuse(.init(reason: .fetched, message: "already fetched this boot (boot \(boot)); a new boot opens a new window"))
        }
        delivery.delivered.increment()
        logger.info("secrets delivered", metadata: ["mac": "\(mac)", "client": "\(remote!)", "port": "\(port!)",
                                                    "files": "\(identity!.secretFiles.count)", "bytes": "\(bytes.count)"])
        timeline.record(.transfer(.http, path: request.path, bytes: UInt64(bytes.count),
                                  size: UInt64(bytes.count), outcome: .completed), mac: mac, source: remote)
        return SecretAnswer(status: .ok, contentType: "application/gzip", body: bytes)
    }
}
