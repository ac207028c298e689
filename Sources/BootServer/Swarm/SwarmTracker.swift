import Foundation
import ImageBuildKit
import Synchronization

/// One announce of a BitTorrent client (BEP 3), parsed from the raw query: `info_hash` and `peer_id`
/// are 20 raw bytes, percent-encoded, which a string-valued query parser would mangle.
struct Announce: Sendable, Equatable {
    enum Event: String, Sendable { case started, completed, stopped }

    var infoHash: [UInt8]
    var peerID: [UInt8]
    var port: UInt16
    var uploaded: Int64
    var downloaded: Int64
    var left: Int64
    var event: Event?
    var numwant: Int

    struct Malformed: Error, Equatable, CustomStringConvertible {
        var description: String
    }

    static let defaultNumwant = 50
    static let maximumNumwant = 200

    /// Parses `query` (the part after `?`). Unknown keys are ignored, as BEP 3 asks; `ip` is ignored on
    /// purpose: a peer's address is the one its request came from.
    init(query: Substring) throws(Malformed) {
        var fields: [Substring: [UInt8]] = [:]
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let value = Self.percentDecoded(parts.count == 2 ? parts[1] : "") else {
                throw Malformed(description: "bad percent-encoding in '\(parts[0])'")
            }
            fields[parts[0]] = value
        }
        func bytes20(_ key: Substring) throws(Malformed) -> [UInt8] {
            guard let value = fields[key] else { throw Malformed(description: "no \(key)") }
            guard value.count == 20 else { throw Malformed(description: "\(key) must be 20 bytes, not \(value.count)") }
            return value
        }
        func number(_ key: Substring, required: Bool = true) throws(Malformed) -> Int64? {
            guard let value = fields[key] else {
                if required { throw Malformed(description: "no \(key)") }
                return nil
            }
            guard let number = Int64(String(decoding: value, as: UTF8.self)), number >= 0 else {
                throw Malformed(description: "\(key) is not a non-negative number")
            }
            return number
        }
        infoHash = try bytes20("info_hash")
        peerID = try bytes20("peer_id")
        guard let port = try number("port"), (1...65535).contains(port) else { throw Malformed(description: "port must be 1 to 65535") }
        self.port = UInt16(port)
        uploaded = try number("uploaded") ?? 0
        downloaded = try number("downloaded") ?? 0
        left = try number("left") ?? 0
        switch fields["event"].map({ String(decoding: $0, as: UTF8.self) }) {
        case nil, "", "empty": event = nil
        case let name?:
            guard let known = Event(rawValue: name) else { throw Malformed(description: "unknown event '\(name.prefix(20))'") }
            event = known
        }
        numwant = Int(min(try number("numwant", required: false) ?? Int64(Self.defaultNumwant), Int64(Self.maximumNumwant)))
    }

    init(infoHash: [UInt8], peerID: [UInt8], port: UInt16, uploaded: Int64 = 0, downloaded: Int64 = 0, left: Int64, event: Event? = nil,
         numwant: Int = Announce.defaultNumwant) {
        self.infoHash = infoHash
        self.peerID = peerID
        self.port = port
        self.uploaded = uploaded
        self.downloaded = downloaded
        self.left = left
        self.event = event
        self.numwant = numwant
    }

    static func percentDecoded(_ text: Substring) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        func hex(_ byte: UInt8) -> UInt8? {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        while let byte = iterator.next() {
            switch byte {
            case UInt8(ascii: "%"):
                guard let high = iterator.next().flatMap(hex), let low = iterator.next().flatMap(hex) else { return nil }
                out.append(high << 4 | low)
            case UInt8(ascii: "+"): out.append(UInt8(ascii: " "))
            default: out.append(byte)
            }
        }
        return out
    }
}

/// The BitTorrent tracker of `imagebuild serve` (docs/swarm.md): peers for the torrents of the
/// published generation only, to nodes of the cluster only, rack-local first.
///
/// All state is in memory: a restarted server knows no peers until they announce again, which aria2c
/// does at the next interval or at once on a failed announce; nothing is lost but a few seconds of
/// peer lists, and every node still has the web seed.
final class SwarmTracker: Sendable {
    /// How often peers announce. Short, because a boot storm's swarm is young: a node that joined a
    /// second ago learns of the nodes that joined after it only at its next announce (or when they
    /// connect to it); 30 s of announces from 10,000 nodes is 333 requests a second, which the HTTP
    /// service answers with room to spare.
    static let interval = 30
    static let minimumInterval = 10
    /// A peer not heard from for three intervals is gone (aria2c killed, the node powered off).
    static let expiry: TimeInterval = TimeInterval(3 * interval)

    /// A published torrent: what the info-hash names, and where the seeder reads it.
    struct Published: Sendable, Equatable {
        var image: String
        var digest: String
        var length: Int64
        /// The image file in the boot root.
        var file: String
        var pieceLength: Int
    }

    struct Peer: Sendable, Equatable {
        var address: IPv4Address
        var port: UInt16
        var mac: MACAddress
        var left: Int64
        var uploaded: Int64
        var downloaded: Int64
        var lastSeen: Date
        var isSeeder: Bool { left == 0 }
    }

    /// The boot server's own BitTorrent seeder (`SwarmSeeder`, in-process): where it listens and what it reports.
    struct ServerSeed: Sendable, Equatable {
        var address: IPv4Address
        var port: UInt16
        var uploaded: Int64
        var lastSeen: Date
    }

    /// One swarm's peers, and what its peers reported sending each other.
    struct Swarm: Sendable {
        /// One client per node: a node whose aria2c restarted on another port replaces its old entry.
        var peers: [IPv4Address: Peer] = [:]
        /// The server's seeder, handed to every downloader first: it sends each piece to a few peers,
        /// who pass it on (the web seed would send it to every node that asks).
        var server: ServerSeed?
        var uploaded: Int64 = 0
        var downloaded: Int64 = 0
        var lastSweep = Date.distantPast

        mutating func answer(_ announce: Announce, from asker: Asker, image: String, now: Date, tier: (Peer) -> Int) -> Outcome {
            if now.timeIntervalSince(lastSweep) > SwarmTracker.expiry / 3 {
                peers = peers.filter { now.timeIntervalSince($0.value.lastSeen) <= SwarmTracker.expiry }
                if let seed = server, now.timeIntervalSince(seed.lastSeen) > SwarmTracker.expiry { server = nil }
                lastSweep = now
            }
            guard let mac = asker.mac else { return answerServer(announce, from: asker.address, now: now) }
            let previous = peers[asker.address]
            // What peers sent each other: the growth of each peer's own counters. A client the tracker
            // does not know counts from zero only when it starts; otherwise (expired, or announcing to
            // a restarted server) its first report is where counting starts, so nothing counts twice.
            if let previous, previous.port == announce.port {
                uploaded += max(0, announce.uploaded - previous.uploaded)
                downloaded += max(0, announce.downloaded - previous.downloaded)
            } else if announce.event == .started {
                uploaded += announce.uploaded
                downloaded += announce.downloaded
            }
            var note: String?
            switch announce.event {
            case .started?: note = "joined the swarm of \(image) (\(SwarmTracker.mib(announce.left)) MiB to fetch, \(peers.count) peers)"
            case .completed?: note = "has all of \(image), seeding"
            case .stopped?: note = "left the swarm of \(image) (sent \(SwarmTracker.mib(announce.uploaded)) MiB to peers)"
            case nil: if previous == nil { note = "in the swarm of \(image)" }
            }
            if announce.event == .stopped {
                peers[asker.address] = nil
            } else {
                peers[asker.address] = Peer(address: asker.address, port: announce.port, mac: mac, left: announce.left,
                                            uploaded: announce.uploaded, downloaded: announce.downloaded, lastSeen: now)
            }
            var complete = server == nil ? 0 : 1
            for peer in peers.values where peer.isSeeder { complete += 1 }
            var compact: [UInt8] = []
            if announce.event != .stopped && announce.numwant > 0 {
                var count = 0
                if announce.left > 0, let seed = server {
                    Self.append(seed.address, seed.port, to: &compact)
                    count = 1
                }
                // A seeder needs downloaders only. Tiers in order, shuffled inside each so a storm
                // does not pile onto the same few peers.
                var tiers: [[Peer]] = [[], [], []]
                for peer in peers.values where peer.address != asker.address && !(announce.left == 0 && peer.isSeeder) {
                    tiers[min(max(tier(peer), 0), 2)].append(peer)
                }
                compact.reserveCapacity(min(announce.numwant, peers.count + 1) * 6)
                outer: for var tierPeers in tiers {
                    tierPeers.shuffle()
                    for peer in tierPeers {
                        guard count < announce.numwant else { break outer }
                        Self.append(peer.address, peer.port, to: &compact)
                        count += 1
                    }
                }
            }
            return .peers(compact: compact, complete: complete, incomplete: peers.count + (server == nil ? 0 : 1) - complete, note: note)
        }

        /// The server's seeder announcing: it is listed (or, stopping, no longer), and learns the downloaders.
        private mutating func answerServer(_ announce: Announce, from address: IPv4Address, now: Date) -> Outcome {
            server = announce.event == .stopped ? nil
                : ServerSeed(address: address, port: announce.port, uploaded: announce.uploaded, lastSeen: now)
            var compact: [UInt8] = []
            var complete = server == nil ? 0 : 1
            for peer in peers.values {
                if peer.isSeeder { complete += 1; continue }
                guard compact.count / 6 < announce.numwant, announce.event != .stopped else { continue }
                Self.append(peer.address, peer.port, to: &compact)
            }
            return .peers(compact: compact, complete: complete, incomplete: peers.count + (server == nil ? 0 : 1) - complete, note: nil)
        }

        /// One peer in BEP 23's compact form: four address bytes, two port bytes, network order.
        static func append(_ address: IPv4Address, _ port: UInt16, to compact: inout [UInt8]) {
            let ip = address.rawValue
            compact += [UInt8(ip >> 24), UInt8(ip >> 16 & 0xff), UInt8(ip >> 8 & 0xff), UInt8(ip & 0xff),
                        UInt8(port >> 8), UInt8(port & 0xff)]
        }
    }

    private struct State: Sendable {
        var generation: Int?
        var torrents: [[UInt8]: Published] = [:]
        var swarms: [[UInt8]: Swarm] = [:]
    }

    private let state = Mutex(State())

    /// Replaces the published torrents (a new generation): swarms of torrents no longer published go.
    func publish(_ torrents: [[UInt8]: Published], generation: Int) {
        state.withLock { state in
            state.generation = generation
            state.torrents = torrents
            state.swarms = state.swarms.filter { torrents[$0.key] != nil }
        }
    }

    var generation: Int? { state.withLock { $0.generation } }

    /// The published torrents by info-hash.
    var torrents: [[UInt8]: Published] { state.withLock { $0.torrents } }

    /// Whose announce it is: the node a fixed address or live lease puts at `address`, or (`mac` nil)
    /// the server's own seeder.
    struct Asker: Sendable {
        var address: IPv4Address
        var mac: MACAddress?
    }

    enum Outcome: Equatable, Sendable {
        /// Peers to hand out, the swarm's counts, and what to note on the node's timeline (nil: nothing).
        case peers(compact: [UInt8], complete: Int, incomplete: Int, note: String?)
        case refused(reason: Reason, message: String)
    }

    enum Reason: String, CaseIterable, Sendable {
        case notANode = "not_a_node", unknownTorrent = "unknown_torrent", malformed
    }

    /// Answers one announce. `tier(_:)` ranks another peer for the asker: 0 same group, 1 same range,
    /// 2 the rest.
    func announce(_ announce: Announce, from asker: Asker, now: Date, tier: (Peer) -> Int) -> Outcome {
        state.withLock { state -> Outcome in
            guard let published = state.torrents[announce.infoHash] else {
                return .refused(reason: .unknownTorrent, message: "unknown torrent (not published here)")
            }
            // In place: a copy of the swarm per announce would copy every peer of a storm.
            return state.swarms[announce.infoHash, default: Swarm()].answer(announce, from: asker, image: published.image, now: now, tier: tier)
        }
    }

    /// The tracker's view, for `/api/v1/swarm`, the status page and the metrics.
    struct View: Codable, Sendable {
        struct Image: Codable, Sendable {
            var name: String
            var digest: String
            var infoHash: String
            var length: Int64
            /// Nodes holding the whole image (the server's own seeder not counted).
            var seeders: Int
            var downloaders: Int
            /// The server's own seeder, when it is in this swarm.
            var server: ServerView?
            /// Bytes peers report they sent each other (never the server's own web-seed bytes).
            var uploaded: Int64
            var downloaded: Int64
            var peers: [PeerView]
        }
        struct ServerView: Codable, Sendable {
            var ip: String
            var port: Int
            var uploaded: Int64
            var lastSeen: Double
        }
        struct PeerView: Codable, Sendable {
            var ip: String
            var port: Int
            var mac: String
            var left: Int64
            var uploaded: Int64
            var downloaded: Int64
            var lastSeen: Double
        }
        var generation: Int?
        var interval: Int
        var images: [Image]
    }

    func view(now: Date) -> View {
        state.withLock { state in
            let images = state.torrents.map { hash, published -> View.Image in
                let swarm = state.swarms[hash] ?? Swarm()
                let live = swarm.peers.values.filter { now.timeIntervalSince($0.lastSeen) <= Self.expiry }
                    .sorted { ($0.address, $0.port) < ($1.address, $1.port) }
                return View.Image(
                    name: published.image, digest: published.digest, infoHash: hash.map { String(format: "%02x", $0) }.joined(),
                    length: published.length, seeders: live.filter(\.isSeeder).count, downloaders: live.filter { !$0.isSeeder }.count,
                    server: swarm.server.flatMap { seed in
                        now.timeIntervalSince(seed.lastSeen) <= Self.expiry
                            ? .init(ip: seed.address.description, port: Int(seed.port), uploaded: seed.uploaded,
                                    lastSeen: seed.lastSeen.timeIntervalSince1970) : nil
                    },
                    uploaded: swarm.uploaded, downloaded: swarm.downloaded,
                    peers: live.map { .init(ip: $0.address.description, port: Int($0.port), mac: $0.mac.description, left: $0.left,
                                             uploaded: $0.uploaded, downloaded: $0.downloaded, lastSeen: $0.lastSeen.timeIntervalSince1970) })
            }
            return View(generation: state.generation, interval: Self.interval, images: images.sorted { ($0.name, $0.digest) < ($1.name, $1.digest) })
        }
    }

    /// The bencoded answer of an outcome (BEP 3; peers in BEP 23's compact form). A refusal is a
    /// `failure reason` with HTTP 200, as clients expect.
    static func body(_ outcome: Outcome) -> [UInt8] {
        switch outcome {
        case .peers(let compact, let complete, let incomplete, _):
            return Bencode.dictionary([
                "interval": .integer(Int64(interval)), "min interval": .integer(Int64(minimumInterval)),
                "complete": .integer(Int64(complete)), "incomplete": .integer(Int64(incomplete)), "peers": .bytes(compact),
            ]).encoded
        case .refused(_, let message):
            return Bencode.dictionary(["failure reason": .string(message)]).encoded
        }
    }

    static func mib(_ bytes: Int64) -> String { String(format: "%.1f", Double(bytes) / 1_048_576) }
}
