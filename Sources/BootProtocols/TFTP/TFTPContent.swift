import NIOCore

/// Where a read session gets file bytes from. The session asks only for the bytes of the block it is
/// about to send, so a server can answer from an in-memory cache (a zero-copy slice) or with one
/// `pread` per block, and never has to load a large file whole.
public protocol TFTPContentSource {
    /// Exactly the bytes `offset ..< offset + count` of the file. The session never asks past the size it
    /// was given; a source that cannot deliver them (I/O error, file shrank) throws.
    func read(offset: UInt64, count: Int) throws(TFTPContentError) -> ByteBuffer
}

/// A content source could not deliver the bytes a block needs.
public struct TFTPContentError: Error, Hashable, CustomStringConvertible {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}

/// File content held in one buffer: reads are slices, so they share its storage instead of copying.
public struct TFTPBufferContent: TFTPContentSource, Sendable {
    public let buffer: ByteBuffer

    public init(_ buffer: ByteBuffer) {
        self.buffer = buffer
    }

    public init(_ bytes: some Sequence<UInt8>) {
        self.buffer = ByteBuffer(bytes: bytes)
    }

    public var size: UInt64 { UInt64(buffer.readableBytes) }

    public func read(offset: UInt64, count: Int) throws(TFTPContentError) -> ByteBuffer {
        guard offset <= UInt64(buffer.readableBytes), count <= buffer.readableBytes - Int(offset),
              let slice = buffer.getSlice(at: buffer.readerIndex + Int(offset), length: count)
        else {
            throw TFTPContentError("bytes \(offset)..<\(offset + UInt64(max(count, 0))) are outside the \(buffer.readableBytes)-byte content")
        }
        return slice
    }
}

/// Netascii conversion (RFC 1350 / RFC 764) from a Unix file: LF → CR LF, CR → CR NUL.
///
/// Blocks cut the converted stream at fixed sizes, so a pair can straddle two blocks; the cursor
/// remembers the half still to emit. Cursors are values, so a block can be rebuilt for a retransmission.
public enum TFTPNetascii {
    /// Where a block starts: the next file byte to convert, and the second byte of a pair if the previous
    /// block ended between CR and its LF or NUL.
    public struct Cursor: Sendable, Hashable {
        public var fileOffset: UInt64
        public var pending: UInt8?

        public init(fileOffset: UInt64 = 0, pending: UInt8? = nil) {
            self.fileOffset = fileOffset
            self.pending = pending
        }
    }

    /// Builds one block of at most `blockSize` wire bytes starting at `cursor`; returns it and the next
    /// block's cursor. A block shorter than `blockSize` is the last one.
    public static func encodeBlock(
        from cursor: Cursor, blockSize: Int, fileSize: UInt64, content: some TFTPContentSource
    ) throws(TFTPContentError) -> (payload: ByteBuffer, next: Cursor) {
        var out = ByteBufferAllocator().buffer(capacity: blockSize)
        var next = cursor
        if let pending = next.pending {
            out.writeInteger(pending)
            next.pending = nil
        }
        // Every file byte becomes at least one wire byte, so one block never needs more than blockSize file bytes.
        let remaining = fileSize - min(next.fileOffset, fileSize)
        let want = Int(min(UInt64(blockSize - out.readableBytes), remaining))
        guard want > 0 else { return (out, next) }
        let source = try content.read(offset: next.fileOffset, count: want)
        let consumed = source.withUnsafeReadableBytes { bytes -> Int in
            var index = 0
            while index < bytes.count, out.readableBytes < blockSize {
                let byte = bytes[index]
                index += 1
                switch byte {
                case 0x0A, 0x0D:
                    out.writeInteger(UInt8(0x0D))
                    let second: UInt8 = byte == 0x0A ? 0x0A : 0x00
                    if out.readableBytes < blockSize {
                        out.writeInteger(second)
                    } else {
                        next.pending = second
                    }
                default:
                    out.writeInteger(byte)
                }
            }
            return index
        }
        next.fileOffset += UInt64(consumed)
        return (out, next)
    }
}
