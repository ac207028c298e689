import BootProtocols
import Foundation
import Hummingbird
import ImageBuildKit
import Logging
import NIOCore

/// What `GET /cloud-init/<mac>/<document>` needs besides the service: who may ask (the secrets' address
/// rule), and the templates of the inventory in force.
final class CloudInitDelivery: Sendable {
    let address: NodeAddressRule
    let templates = TemplateCache()

    init(address: NodeAddressRule) { self.address = address }
}

extension HTTPService {
    /// `GET /cloud-init/<mac>/<document>`: a node's NoCloud documents (`CloudInit.documents`), rendered
    /// from the inventory in force at each request, to the node's own address only.
    func cloudInit(_ request: Request, context: BootRequestContext, delivery: CloudInitDelivery) throws -> Response {
        let text = context.parameters.get("mac") ?? ""
        let name = context.parameters.get("document") ?? ""
        let remote = context.remoteAddress?.ipv4Address
        let path = String(request.uri.path.dropFirst())
        func answer(_ status: HTTPResponse.Status, _ message: String) -> Response {
            Response(status: status, headers: [.contentType: "text/plain; charset=utf-8", .cacheControl: "no-store"],
                     body: ResponseBody(byteBuffer: ByteBuffer(string: message + "\n")))
        }
        guard let mac = nodePathMAC(text) else {
            return answer(.notFound, "'\(printableClientText(text))' is not a node's MAC (aa-bb-cc-dd-ee-ff)")
        }
        guard CloudInit.documentNames.contains(name) else {
            return answer(.notFound, "no cloud-init document '\(printableClientText(name))': \(CloudInit.documentNames.joined(separator: ", "))")
        }
        guard let inventory = self.inventory(), let node = inventory.node(mac: mac) else {
            return answer(.notFound, "\(mac) is not a node in nodes.yaml")
        }
        let identity: NodeIdentity
        do { identity = try inventory.identity(of: node) } catch {
            logger.error("cloud-init: the inventory entry of \(mac) is broken: \(error)")
            throw HTTPError(.internalServerError, message: "the inventory entry of this node is broken; see the server log")
        }
        guard identity.cloudInit.enabled else {
            return answer(.notFound, "cloud-init is off for \(node.hostname) (cloud_init: {enabled: true} in nodes.yaml turns it on)")
        }
        if let refusal = delivery.address.refusal(node, remote: remote) {
            logger.warning("cloud-init refused", metadata: [
                "mac": "\(mac)", "client": "\(remote.map(\.description) ?? "?")", "document": "\(name)", "detail": "\(refusal)"])
            timeline.record(.transfer(.http, path: path, bytes: 0, size: nil, outcome: .refused("cloud-init: \(refusal)")),
                            mac: mac, source: remote)
            return answer(.forbidden, refusal)
        }
        let bytes: [UInt8]
        do {
            bytes = try delivery.templates.with(inventory, generation: inventoryGeneration()) { templates in
                try CloudInit.documents(for: identity, network: inventory.network, templates: templates).document(named: name) ?? []
            }
        } catch {
            logger.error("cloud-init data for \(mac) could not be made: \(error)")
            throw HTTPError(.internalServerError, message: "the node's cloud-init data could not be made; see the server log")
        }
        timeline.record(.transfer(.http, path: path, bytes: UInt64(bytes.count), size: UInt64(bytes.count), outcome: .completed),
                        mac: mac, source: remote)
        return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8", .cacheControl: "no-store"],
                        body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}
