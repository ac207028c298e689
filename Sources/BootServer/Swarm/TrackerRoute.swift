import Foundation
import Hummingbird
import ImageBuildKit
import NIOCore

extension HTTPService {
    /// `GET /boot/v1/announce`: the BitTorrent tracker (`SwarmTracker`), for the torrents of the
    /// generation the root serves, to nodes only.
    func announce(_ request: Request, context: BootRequestContext, admission: ReportAdmission, publishIndex: PublishIndexCache) -> Response {
        let remote = context.remoteAddress?.ipv4Address
        func answer(_ outcome: SwarmTracker.Outcome) -> Response {
            switch outcome {
            case .peers: metrics.announces["ok"]?.increment()
            case .refused(let reason, let message):
                metrics.announces[reason.rawValue]?.increment()
                logger.warning("announce refused", metadata: ["client": "\(remote.map(\.description) ?? "?")", "reason": "\(reason.rawValue)",
                                                              "detail": "\(message)"])
            }
            return Response(status: .ok, headers: [.contentType: "text/plain", .cacheControl: "no-store"],
                            body: ResponseBody(byteBuffer: ByteBuffer(bytes: SwarmTracker.body(outcome))))
        }
        let parsed: Announce
        do { parsed = try Announce(query: Substring(request.uri.query ?? "")) } catch {
            return answer(.refused(reason: .malformed, message: "bad announce: \(error.description)"))
        }
        let inventory = self.inventory()
        guard let remote else { return answer(.refused(reason: .notANode, message: "no client address")) }
        refreshTorrents(publishIndex)
        // The server's own seeder announces in-process (`seederSources`), never over HTTP.
        guard let mac = admission.macAt(remote) else {
            return answer(.refused(reason: .notANode, message: "\(remote) is not a node of this cluster (no fixed address in nodes.yaml, no live lease)"))
        }
        // Rack-local first: the asker's group, then the most specific range holding its address.
        let group = inventory?.node(mac: mac)?.group
        let range = inventory?.ranges.filter { $0.network.contains(remote) }.max { $0.network.prefix < $1.network.prefix }?.network
        let outcome = tracker.announce(parsed, from: .init(address: remote, mac: mac), now: timeline.currentTime) { peer in
            if let group, inventory?.node(mac: peer.mac)?.group == group { return 0 }
            if let range, range.contains(peer.address) { return 1 }
            return 2
        }
        if case .peers(_, _, _, let note?) = outcome {
            timeline.record(.swarm(event: parsed.event?.rawValue ?? "announce", detail: note), mac: mac, source: remote)
        }
        return answer(outcome)
    }

    /// The tracker's torrents follow the published generation: read again when `publish.json` changes
    /// (each image's `.torrent` in the root, named by `Torrent.path`).
    func refreshTorrents(_ publishIndex: PublishIndexCache) {
        guard let index = publishIndex.current() else { return }
        guard tracker.generation != index.generation else { return }
        var torrents: [[UInt8]: SwarmTracker.Published] = [:]
        for image in index.images.values {
            let path = configuration.root + "/" + Torrent.path(of: image)
            guard let data = FileManager.default.contents(atPath: path) else { continue }
            do {
                let info = try Bencode.decode(data)["info"]
                guard let info, let length = info["length"]?.integerValue,
                      let pieceLength = info["piece length"]?.integerValue, pieceLength > 0 else { continue }
                torrents[Torrent.infoHash(info)] = .init(image: image.name, digest: image.digest, length: length,
                                                         file: configuration.root + "/" + image.path + "/" + image.imageFile,
                                                         pieceLength: Int(pieceLength))
            } catch {
                logger.error("tracker: \(path) is not a torrent: \(error)")
            }
        }
        tracker.publish(torrents, generation: index.generation)
        logger.info("tracker: \(torrents.count) published torrents (generation \(index.generation))")
    }

    /// What the server's BitTorrent seeder needs: the published torrents, who may connect (the nodes
    /// the tracker answers), and its announce, made here in-process from the address nodes know the
    /// server by.
    func seederSources() -> SwarmSeeder.Sources {
        let admission = reportAdmission()
        return SwarmSeeder.Sources(
            torrents: { [self] in
                refreshTorrents(publishIndex)
                return tracker.torrents
            },
            admits: { admission.macAt($0) != nil },
            announce: { [self] infoHash, port, uploaded in
                guard let server = inventory()?.network.server, let port = UInt16(exactly: port) else { return }
                _ = tracker.announce(Announce(infoHash: infoHash, peerID: Array("-IB0001-seeder------".utf8), port: port,
                                              uploaded: uploaded, left: 0, numwant: 0),
                                     from: .init(address: server, mac: nil), now: timeline.currentTime) { _ in 2 }
            })
    }
}
