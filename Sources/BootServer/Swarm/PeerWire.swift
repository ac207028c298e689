import NIOCore

/// A block a peer asks for (BEP 3 `request` and `cancel`): `length` bytes at `begin` in piece `index`.
struct BlockRequest: Hashable, Sendable {
    var index: UInt32
    var begin: UInt32
    var length: UInt32
}

/// What a peer sends over BitTorrent's peer wire protocol (BEP 3), as far as a seeder cares.
enum PeerMessage: Equatable, Sendable {
    /// The 68-byte greeting: which torrent the peer wants.
    case handshake(infoHash: [UInt8])
    case keepAlive
    case choke, unchoke, interested, notInterested
    case have(index: UInt32)
    case bitfield([UInt8])
    case request(BlockRequest)
    case cancel(BlockRequest)
    /// A block sent to us; a seeder never asks for one.
    case piece(index: UInt32, begin: UInt32)
    /// `port` (DHT), and messages of extensions this side never offered in its handshake.
    case other(id: UInt8)
}

/// Why a peer's bytes are not the peer wire protocol.
struct PeerWireError: Error, Equatable, CustomStringConvertible {
    var description: String
}

/// Splits a peer's stream into `PeerMessage`s: the handshake first, then length-prefixed messages.
struct PeerWireDecoder: ByteToMessageDecoder {
    typealias InboundOut = PeerMessage

    static let protocolName = Array("BitTorrent protocol".utf8)
    /// The longest message accepted: a bitfield of a torrent of 2,048 pieces is 256 bytes; a request
    /// 13. Anything longer is a client this seeder does not speak to (or garbage): it is cut off.
    static let maximumLength = 1 << 14

    private var greeted = false

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let message = try Self.next(from: &buffer, greeted: &greeted) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(message))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }

    /// The next whole message in `buffer` (consumed), or nil until more bytes come. Pure, for tests.
    static func next(from buffer: inout ByteBuffer, greeted: inout Bool) throws(PeerWireError) -> PeerMessage? {
        if !greeted {
            guard let nameLength = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
            guard nameLength == 19 else { throw PeerWireError(description: "not a BitTorrent handshake (protocol name of \(nameLength) bytes)") }
            guard buffer.readableBytes >= 68 else { return nil }
            guard buffer.getBytes(at: buffer.readerIndex + 1, length: 19) == protocolName else {
                throw PeerWireError(description: "not a BitTorrent handshake (another protocol name)")
            }
            let infoHash = buffer.getBytes(at: buffer.readerIndex + 28, length: 20)!
            buffer.moveReaderIndex(forwardBy: 68)  // the peer's id (the last 20 bytes) is not used
            greeted = true
            return .handshake(infoHash: infoHash)
        }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length <= maximumLength else { throw PeerWireError(description: "a message of \(length) bytes") }
        guard buffer.readableBytes >= 4 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 4)
        guard length > 0 else { return .keepAlive }
        var body = buffer.readSlice(length: Int(length))!
        let id = body.readInteger(as: UInt8.self)!
        func fixed(_ count: Int, _ name: String) throws(PeerWireError) {
            guard body.readableBytes == count else { throw PeerWireError(description: "\(name) of \(length) bytes") }
        }
        func block(_ name: String) throws(PeerWireError) -> BlockRequest {
            try fixed(12, name)
            return BlockRequest(index: body.readInteger()!, begin: body.readInteger()!, length: body.readInteger()!)
        }
        switch id {
        case 0: try fixed(0, "choke"); return .choke
        case 1: try fixed(0, "unchoke"); return .unchoke
        case 2: try fixed(0, "interested"); return .interested
        case 3: try fixed(0, "not interested"); return .notInterested
        case 4: try fixed(4, "have"); return .have(index: body.readInteger()!)
        case 5: return .bitfield(body.readBytes(length: body.readableBytes)!)
        case 6: return .request(try block("request"))
        case 7:
            guard body.readableBytes >= 8 else { throw PeerWireError(description: "piece of \(length) bytes") }
            return .piece(index: body.readInteger()!, begin: body.readInteger()!)
        case 8: return .cancel(try block("cancel"))
        default: return .other(id: id)
        }
    }
}

/// What a seeder writes (BEP 3).
enum PeerWireEncoder {
    /// Our handshake: no extension bits (no DHT, fast or extension protocol), then `peerID`.
    static func handshake(infoHash: [UInt8], peerID: [UInt8], into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(19))
        buffer.writeBytes(PeerWireDecoder.protocolName)
        buffer.writeRepeatingByte(0, count: 8)
        buffer.writeBytes(infoHash)
        buffer.writeBytes(peerID)
    }

    /// A bitfield holding every one of `pieces` (the spare bits of the last byte clear, as BEP 3 asks).
    static func fullBitfield(pieces: Int, into buffer: inout ByteBuffer) {
        let bytes = (pieces + 7) / 8
        buffer.writeInteger(UInt32(1 + bytes))
        buffer.writeInteger(UInt8(5))
        buffer.writeRepeatingByte(0xff, count: bytes - 1)
        let spare = bytes * 8 - pieces
        buffer.writeInteger(UInt8(truncatingIfNeeded: 0xff << spare))
    }

    static func choke(_ choked: Bool, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(1))
        buffer.writeInteger(UInt8(choked ? 0 : 1))
    }

    static func keepAlive(into buffer: inout ByteBuffer) { buffer.writeInteger(UInt32(0)) }

    /// The head of a `piece` message; the block's bytes follow it (sent from the file).
    static func pieceHead(_ request: BlockRequest, into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt32(9) + request.length)
        buffer.writeInteger(UInt8(7))
        buffer.writeInteger(request.index)
        buffer.writeInteger(request.begin)
    }
}
