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
    /// The node's host-key files (private keys 0600, public keys, certificates), made once and kept in
    /// the state directory; nil when the server keeps none.
    public typealias HostKeyFiles = @Sendable (NodeIdentity) throws -> [NodeTemplates.Rendered]

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
        if identity.hostKeys == .persistent, let hostKeyFiles { files += try hostKeyFiles(identity) }
        return try OverlayArchive.make(files, mtime: Publisher.overlayEpoch)
    }
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
    /// `GET /boot/v1/secrets/<mac>`: the node's secrets, to the node itself only (`SecretAdmission`).
    func secrets(_ request: Request, context: BootRequestContext, delivery: SecretDelivery) async throws -> Response {
        let text = context.parameters.get("mac") ?? ""
        let shown = printableClientText(text)
        let remote = context.remoteAddress?.ipv4Address
        let port = context.remoteAddress?.port
        func refuse(_ refusal: SecretAdmission.Refusal, mac: MACAddress?) -> Response {
            delivery.refusals[refusal.reason]?.increment()
            logger.warning("secrets refused", metadata: [
                "mac": "\(mac.map(\.description) ?? shown)", "client": "\(remote.map(\.description) ?? "?")",
                "port": "\(port.map(String.init) ?? "?")", "reason": "\(refusal.reason.rawValue)", "detail": "\(refusal.message)"])
            if let mac {
                timeline.record(.transfer(.http, path: String(request.uri.path.dropFirst()), bytes: 0, size: nil,
                                          outcome: .refused("secrets: \(refusal.message)")), mac: mac, source: remote)
            }
            return Response(status: .forbidden, headers: [.contentType: "text/plain; charset=utf-8", .cacheControl: "no-store"],
                            body: ResponseBody(byteBuffer: ByteBuffer(string: refusal.message + "\n")))
        }
        guard let mac = nodePathMAC(text) else {
            return refuse(.init(reason: .notANode, message: "'\(shown)' is not a node's MAC (aa-bb-cc-dd-ee-ff)"), mac: nil)
        }
        let inventory = self.inventory()
        let node = inventory?.node(mac: mac)
        let identity: NodeIdentity?
        do { identity = try node.map { try inventory!.identity(of: $0) } } catch {
            logger.error("secrets: the inventory entry of \(mac) is broken: \(error)")
            throw HTTPError(.internalServerError, message: "the inventory entry of this node is broken; see the server log")
        }
        let state = timeline.node(mac)
        let headers = request.headers
        func header(_ name: String) -> String? { HTTPField.Name(name).flatMap { headers[$0] } }
        let smbios: SecretAdmission.SMBIOSHeaders = (header("X-Imagebuild-Product-UUID"), header("X-Imagebuild-Product-Serial"),
                                                     header("X-Imagebuild-Asset-Tag"))
        let boot = state?.boot ?? 0
        if let refusal = delivery.admission.decide(
            mac: mac, node: node, hasSecrets: identity?.hasSecrets ?? false, remote: remote, port: port, state: state,
            delivered: delivery.ledger.count(mac, boot: boot), smbios: smbios, now: timeline.currentTime) {
            return refuse(refusal, mac: mac)
        }
        let bytes: [UInt8]
        let generation = inventoryGeneration()
        // On the thread pool: a node's first host keys take ssh-keygen a second, which must not hold
        // one of the few threads requests run on.
        do { bytes = try await threadPool.runIfActive { try delivery.archive(for: identity!, inventory: inventory!, generation: generation) } } catch {
            // The reason names files and nodes, never a secret's content.
            logger.error("secrets for \(mac) could not be made: \(error)")
            throw HTTPError(.internalServerError, message: "the node's secrets could not be made; see the server log")
        }
        // Counted only now, and atomically: two asks of one boot racing get one archive.
        guard delivery.ledger.take(mac, boot: boot, limit: delivery.admission.perBoot) else {
            return refuse(.init(reason: .fetched, message: "already fetched this boot (boot \(boot)); a new boot opens a new window"), mac: mac)
        }
        delivery.delivered.increment()
        logger.info("secrets delivered", metadata: ["mac": "\(mac)", "client": "\(remote!)", "port": "\(port!)",
                                                    "files": "\(identity!.secretFiles.count)", "bytes": "\(bytes.count)"])
        timeline.record(.transfer(.http, path: String(request.uri.path.dropFirst()), bytes: UInt64(bytes.count),
                                  size: UInt64(bytes.count), outcome: .completed), mac: mac, source: remote)
        return Response(status: .ok, headers: [.contentType: "application/gzip", .cacheControl: "no-store"],
                        body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}
