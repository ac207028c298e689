import BootProtocols
import NIOCore

/// Deterministic generator for reproducible "random" tests (SplitMix64).
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// File bytes with a pattern that differs per block, so a misplaced block shows.
func patternBytes(count: Int, seed: UInt64 = 1) -> [UInt8] {
    var rng = SplitMix64(seed: seed)
    var bytes = [UInt8](repeating: 0, count: count)
    var index = 0
    while index < count {
        var word = rng.next()
        for _ in 0..<8 where index < count {
            bytes[index] = UInt8(truncatingIfNeeded: word)
            word >>= 8
            index += 1
        }
    }
    return bytes
}

/// Reference netascii conversion of a whole file.
func netascii(_ bytes: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        switch byte {
        case 0x0A: out += [0x0D, 0x0A]
        case 0x0D: out += [0x0D, 0x00]
        default: out.append(byte)
        }
    }
    return out
}

/// A content source that fails, to test read errors.
struct FailingContent: TFTPContentSource {
    func read(offset: UInt64, count: Int) throws(TFTPContentError) -> ByteBuffer {
        throw TFTPContentError("EIO at \(offset)")
    }
}

typealias Session = TFTPReadSession<TFTPBufferContent>

extension Array where Element == Session.Action {
    var sent: [TFTPPacket] {
        compactMap { if case .send(let packet) = $0 { packet } else { nil } }
    }

    var dataBlocks: [UInt16] {
        sent.compactMap { if case .data(let block, _) = $0 { block } else { nil } }
    }

    var timerDeadline: NIODeadline? {
        compactMap { if case .armTimer(let deadline) = $0 { deadline } else { nil } }.last
    }

    var finish: TFTPTransferOutcome? {
        compactMap { if case .finish(let outcome) = $0 { outcome } else { nil } }.first
    }

    var failure: TFTPSessionFailure? {
        compactMap { if case .fail(let failure) = $0 { failure } else { nil } }.first
    }
}

func ms(_ value: Int64) -> NIODeadline { .uptimeNanoseconds(UInt64(value) * 1_000_000) }
