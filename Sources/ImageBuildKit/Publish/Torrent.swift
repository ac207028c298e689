import Crypto
import Foundation

/// A bencoded value (BEP 3): the encoding of `.torrent` files and of a tracker's answers.
///
/// Dictionaries encode their keys sorted as raw byte strings, as BEP 3 requires, so the same value
/// always gives the same bytes: an info dictionary decoded and encoded again hashes to the same
/// info-hash, and publish writes byte-identical torrents for the same image.
public enum Bencode: Equatable, Sendable {
    case integer(Int64)
    case bytes([UInt8])
    case list([Bencode])
    case dictionary([String: Bencode])

    public static func string(_ text: String) -> Bencode { .bytes(Array(text.utf8)) }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        encode(into: &out)
        return out
    }

    public func encode(into out: inout [UInt8]) {
        switch self {
        case .integer(let value):
            out.append(UInt8(ascii: "i"))
            out += Array(String(value).utf8)
            out.append(UInt8(ascii: "e"))
        case .bytes(let bytes):
            out += Array(String(bytes.count).utf8)
            out.append(UInt8(ascii: ":"))
            out += bytes
        case .list(let items):
            out.append(UInt8(ascii: "l"))
            for item in items { item.encode(into: &out) }
            out.append(UInt8(ascii: "e"))
        case .dictionary(let entries):
            out.append(UInt8(ascii: "d"))
            for key in entries.keys.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }) {
                Bencode.string(key).encode(into: &out)
                entries[key]!.encode(into: &out)
            }
            out.append(UInt8(ascii: "e"))
        }
    }

    public struct DecodeError: Error, CustomStringConvertible, Equatable {
        public var offset: Int
        public var reason: String
        public var description: String { "bencode, byte \(offset): \(reason)" }
    }

    /// Decodes exactly one value that spans all of `bytes` (nesting at most 64 deep).
    public static func decode<Bytes: Collection>(_ bytes: Bytes) throws(DecodeError) -> Bencode where Bytes.Element == UInt8 {
        let input = Array(bytes)
        var position = 0
        let value = try parse(input, &position, depth: 0)
        guard position == input.count else { throw DecodeError(offset: position, reason: "data after the value") }
        return value
    }

    private static func parse(_ input: [UInt8], _ position: inout Int, depth: Int) throws(DecodeError) -> Bencode {
        guard depth < 64 else { throw DecodeError(offset: position, reason: "nested too deep") }
        guard position < input.count else { throw DecodeError(offset: position, reason: "unexpected end") }
        switch input[position] {
        case UInt8(ascii: "i"):
            position += 1
            let start = position
            while position < input.count, input[position] != UInt8(ascii: "e") { position += 1 }
            guard position < input.count, let value = Int64(String(decoding: input[start..<position], as: UTF8.self)) else {
                throw DecodeError(offset: start, reason: "not an integer")
            }
            position += 1
            return .integer(value)
        case UInt8(ascii: "l"):
            position += 1
            var items: [Bencode] = []
            while position < input.count, input[position] != UInt8(ascii: "e") { items.append(try parse(input, &position, depth: depth + 1)) }
            guard position < input.count else { throw DecodeError(offset: position, reason: "unterminated list") }
            position += 1
            return .list(items)
        case UInt8(ascii: "d"):
            position += 1
            var entries: [String: Bencode] = [:]
            while position < input.count, input[position] != UInt8(ascii: "e") {
                let keyOffset = position
                guard case .bytes(let key) = try parse(input, &position, depth: depth + 1) else {
                    throw DecodeError(offset: keyOffset, reason: "a dictionary key must be a string")
                }
                entries[String(decoding: key, as: UTF8.self)] = try parse(input, &position, depth: depth + 1)
            }
            guard position < input.count else { throw DecodeError(offset: position, reason: "unterminated dictionary") }
            position += 1
            return .dictionary(entries)
        case UInt8(ascii: "0")...UInt8(ascii: "9"):
            let start = position
            while position < input.count, input[position] != UInt8(ascii: ":") { position += 1 }
            guard position < input.count, let length = Int(String(decoding: input[start..<position], as: UTF8.self)),
                  length <= input.count - position - 1 else {
                throw DecodeError(offset: start, reason: "bad string length")
            }
            position += 1
            defer { position += length }
            return .bytes(Array(input[position..<(position + length)]))
        default:
            throw DecodeError(offset: position, reason: "unexpected byte \(input[position])")
        }
    }

    public subscript(key: String) -> Bencode? {
        if case .dictionary(let entries) = self { return entries[key] }
        return nil
    }

    public var integerValue: Int64? { if case .integer(let value) = self { return value } else { return nil } }
    public var bytesValue: [UInt8]? { if case .bytes(let value) = self { return value } else { return nil } }
    public var stringValue: String? { bytesValue.map { String(decoding: $0, as: UTF8.self) } }
}

/// The BitTorrent side of a published image (`distribution: p2p`, docs/swarm.md).
///
/// The info dictionary depends on the image's bytes only (name, length, piece length, SHA-1 of every
/// piece), so its info-hash names the image in the swarm whatever server announced it. It is computed
/// once per image and kept beside it (`infoFile`); each generation then writes the `.torrent` with
/// that generation's tracker and web seed (BEP 19: the image's own HTTP URL, so a node that finds no
/// peer still gets every byte from the boot server).
public enum Torrent {
    /// The generation folder of the `.torrent` files (a top-level link in the boot root).
    public static let folder = "torrents"
    /// The tracker's announce path, served by `imagebuild serve`.
    public static let announcePath = "/boot/v1/announce"
    /// The cached info dictionary, beside the image in its content-addressed folder.
    public static let infoFile = "image.torrent-info"

    /// The boot-root path of an image's `.torrent` in a generation.
    public static func path(of image: PublishedImage) -> String { "\(folder)/\(image.name)-\(image.digest).torrent" }

    /// Pieces of at least 256 KiB, growing in powers of two so an image has at most 2,048 of them: few
    /// enough to keep the torrent small and web-seed requests large, enough for a swarm to spread.
    public static func pieceLength(forSize size: Int64) -> Int {
        var length = 1 << 18
        while Int64(length) * 2048 < size, length < 1 << 24 { length <<= 1 }
        return length
    }

    /// The info dictionary of the file at `path`, named `name` in the torrent.
    public static func info(ofFile path: String, name: String) throws -> Bencode {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw RootfsError.system(operation: "open", path: path, errno: errno)
        }
        defer { try? handle.close() }
        let size = Int64(try handle.seekToEnd())
        try handle.seek(toOffset: 0)
        let length = pieceLength(forSize: size)
        var pieces: [UInt8] = []
        pieces.reserveCapacity(Int((size + Int64(length) - 1) / Int64(length)) * 20)
        while true {
            var piece = Data()
            while piece.count < length, let chunk = try handle.read(upToCount: length - piece.count), !chunk.isEmpty { piece += chunk }
            if piece.isEmpty { break }
            pieces += Insecure.SHA1.hash(data: piece)
            if piece.count < length { break }
        }
        return .dictionary(["length": .integer(size), "name": .string(name), "piece length": .integer(Int64(length)), "pieces": .bytes(pieces)])
    }

    /// The info dictionary of a published image, from its cache beside the image, computed and cached
    /// (written aside and renamed, so a kill leaves no half file) when missing, unreadable, or cut
    /// into pieces of another length than `pieceLength` now gives (so an image has one info-hash
    /// whichever version published it last).
    public static func info(ofImageIn directory: String, imageFile: String) throws -> Bencode {
        let cache = directory + "/" + infoFile
        if let data = FileManager.default.contents(atPath: cache), let info = try? Bencode.decode(data),
           info["name"]?.stringValue == imageFile, info["pieces"] != nil, case .integer(let size)? = info["length"],
           info["piece length"] == .integer(Int64(pieceLength(forSize: size))) {
            return info
        }
        let info = try info(ofFile: directory + "/" + imageFile, name: imageFile)
        let temporary = cache + ".tmp-\(getpid())"
        try SafeFileSystem.writeFile(temporary, info.encoded)
        try SafeFileSystem.fsyncFile(temporary)
        guard rename(temporary, cache) == 0 else { throw RootfsError.system(operation: "rename to", path: cache, errno: errno) }
        return info
    }

    /// The SHA-1 info-hash that names a torrent in the swarm and at the tracker.
    public static func infoHash(_ info: Bencode) -> [UInt8] { Array(Insecure.SHA1.hash(data: info.encoded)) }

    /// A whole `.torrent`: the tracker, the web seed, and the image's SHA-256 (stage 1 checks it once
    /// the pieces are in, as for an HTTP download). No creation date: the same inputs, the same bytes.
    public static func file(info: Bencode, announce: String, webSeed: String, sha256: String?) -> [UInt8] {
        var entries: [String: Bencode] = [
            "announce": .string(announce), "info": info, "url-list": .list([.string(webSeed)]),
            "created by": .string("imagebuild"),
        ]
        if let sha256 { entries["imagebuild sha256"] = .string(sha256) }
        return Bencode.dictionary(entries).encoded
    }

    /// The info-hash of a `.torrent` file's bytes.
    public static func infoHash(ofTorrent bytes: [UInt8]) throws -> [UInt8] {
        guard let info = try Bencode.decode(bytes)["info"] else { throw Bencode.DecodeError(offset: 0, reason: "no info dictionary") }
        return infoHash(info)
    }
}
