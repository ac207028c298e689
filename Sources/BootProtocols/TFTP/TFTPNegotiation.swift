import NIOCore

/// Server-side limits for a read transfer. Defaults suit a boot LAN.
public struct TFTPSessionConfiguration: Sendable, Hashable {
    /// Largest `blksize` granted (RFC 2348). 1468 keeps DATA (IP 20 + UDP 8 + TFTP 4 + 1468) inside a
    /// 1500-byte Ethernet MTU, so no datagram is IP-fragmented: one lost fragment would lose the block.
    public var maximumBlockSize: Int = 1468
    /// Largest `windowsize` granted (RFC 7440). Bounds the burst one ACK can trigger.
    public var maximumWindowSize: Int = 64
    /// Lower bound of the retransmission time-out. It is what every lost DATA or ACK costs in lock-step:
    /// clients hardly ever fill the gap themselves (curl re-sends its ACK after 72 s, atftp after 5 s), so
    /// at 5 % loss a 1 MiB transfer (715 blocks) waits out about 70 time-outs. At 50 ms that was 3.5 s;
    /// at 20 ms it is about 1.4 s. LAN round trips are well below a millisecond, and a client slower than
    /// the floor raises the time-out through its RTT samples (RFC 6298); a spurious retransmission costs
    /// one duplicate DATA that the client re-ACKs and the session ignores. The floor leaves margin for
    /// a loaded server's event-loop delay, which the samples include.
    public var minimumRetransmissionTimeout: TimeAmount = .milliseconds(20)
    /// Time-out before the first round-trip sample. RFC 6298 says 1 s for the Internet; on a boot LAN a
    /// lost first packet should be resent well before the client's own (usually ≥ 1 s) retry.
    public var initialRetransmissionTimeout: TimeAmount = .milliseconds(250)
    /// Upper bound of the retransmission time-out when the client did not negotiate `timeout` (RFC 2349).
    public var maximumRetransmissionTimeout: TimeAmount = .seconds(2)
    /// Consecutive time-outs without progress before the transfer is given up. With the defaults that is
    /// four quick retransmissions and then three quiet periods: about 18 s in which the client's own
    /// retries had three chances.
    public var maximumRetries: Int = 6
    /// Retransmissions at the (doubling) retransmission time-out before the session falls quiet for
    /// `clientRetryAllowance` between tries. Some clients drop duplicates of a block they already hold
    /// and re-send their ACK only when their own timer fires: atftp answers the first duplicate with one
    /// extra ACK and ignores the rest, restarting its 5 s timer on each; U-Boot ignores them all. Once that
    /// ACK and its extra copy are lost, repeating the block cannot help: only a quiet line lets the client's
    /// timer fire. Clients that re-ACK duplicates (curl, iPXE) lose a block's round trip five times in a row
    /// before they would meet the quiet period: about once in 160 MiB at 5 % loss with 1468-byte blocks.
    public var quickRetransmissions: Int = 4
    /// The pause between retransmissions after the quick ones: longer than the common client time-out
    /// (5 s in atftp, U-Boot and tftp-hpa's client), so the client's own retry reaches the server first. A
    /// client that negotiated `timeout` (RFC 2349) gets that plus a quarter instead. An OACK is repeated
    /// unasked only after two of these pauses, because atftp aborts on a second OACK: if its ACK 0 was
    /// lost, its own re-sent ACKs must come first; if the OACK was lost, the client re-sends its request
    /// and the session answers that at once (`Event.requestRepeated`).
    public var clientRetryAllowance: TimeAmount = .seconds(6)

    public init() {}

    /// RFC 2348's range for `blksize`.
    public static let blockSizeRange: ClosedRange<Int> = 8...65464
    /// RFC 2349's range for `timeout`, in seconds.
    public static let timeoutRange: ClosedRange<Int> = 1...255
}

/// What a read request agreed to: the values the transfer runs with and the OACK, if any, that says so.
public struct TFTPNegotiatedOptions: Sendable, Hashable, CustomStringConvertible {
    public var blockSize: Int = 512
    public var windowSize: Int = 1
    /// The client's retransmission interval (RFC 2349), if it sent one we accepted.
    public var clientTimeout: TimeAmount?
    /// The transfer size reported in the OACK (RFC 2349), if the client asked for it.
    public var transferSize: UInt64?
    /// The OACK to send; nil when the client asked for nothing we accept, so the transfer
    /// starts with DATA 1 as in RFC 1350 (RFC 2347: no OACK unless an option was accepted).
    public var optionAcknowledgement: TFTPOptions?

    public init() {}

    public var description: String {
        var parts = ["blksize=\(blockSize)", "windowsize=\(windowSize)"]
        if let clientTimeout { parts.append("timeout=\(clientTimeout.nanoseconds / 1_000_000_000)s") }
        if let transferSize { parts.append("tsize=\(transferSize)") }
        return parts.joined(separator: " ")
    }

    /// Negotiates the options of a read request (RFC 2347/2348/2349/7440) against `configuration`.
    /// Unknown options and unusable values are ignored, which RFC 2347 allows: the option is simply
    /// not acknowledged and its default applies.
    public static func negotiate(
        _ request: TFTPRequest, fileSize: UInt64, configuration: TFTPSessionConfiguration
    ) -> TFTPNegotiatedOptions {
        var result = TFTPNegotiatedOptions()
        var acknowledged = TFTPOptions()
        var seen = Set<String>()
        for option in request.options.options where seen.insert(option.name).inserted {
            switch option.name {
            case "blksize":
                guard let requested = parseDecimal(option.value), requested >= UInt64(TFTPSessionConfiguration.blockSizeRange.lowerBound) else { continue }
                let ceiling = min(configuration.maximumBlockSize, TFTPSessionConfiguration.blockSizeRange.upperBound)
                result.blockSize = Int(min(requested, UInt64(max(ceiling, TFTPSessionConfiguration.blockSizeRange.lowerBound))))
                acknowledged.append(name: "blksize", value: String(result.blockSize))
            case "windowsize":
                guard let requested = parseDecimal(option.value), requested >= 1 else { continue }
                // Below 32768 so a 16-bit ACK number always tells an in-window block from a stale one.
                let ceiling = max(1, min(configuration.maximumWindowSize, 32767))
                result.windowSize = Int(min(requested, UInt64(ceiling)))
                acknowledged.append(name: "windowsize", value: String(result.windowSize))
            case "timeout":
                // RFC 2349: the server accepts the value as is or not at all.
                guard let seconds = parseDecimal(option.value), TFTPSessionConfiguration.timeoutRange.contains(Int(clamping: seconds)) else { continue }
                result.clientTimeout = .seconds(Int64(seconds))
                acknowledged.append(name: "timeout", value: option.value)
            case "tsize":
                // Only in octet mode: the netascii size on the wire is not known without converting the file.
                // Not for an empty file either: curl takes "tsize 0" in an OACK for an illegal operation and
                // aborts, and declining an option is always allowed (RFC 2347).
                guard request.mode == .octet, fileSize > 0, parseDecimal(option.value) != nil else { continue }
                result.transferSize = fileSize
                acknowledged.append(name: "tsize", value: String(fileSize))
            default:
                continue
            }
        }
        result.optionAcknowledgement = acknowledged.isEmpty ? nil : acknowledged
        return result
    }

    /// Plain decimal digits only: "+5", " 5" or "0x10" are not numbers on the wire.
    private static func parseDecimal(_ string: String) -> UInt64? {
        guard !string.isEmpty, string.utf8.count <= 19, string.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return UInt64(string)
    }
}
