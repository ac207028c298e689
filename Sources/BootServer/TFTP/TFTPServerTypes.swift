import BootProtocols
import Metrics
import NIOCore

/// Settings of the TFTP service.
public struct TFTPServerConfiguration: Sendable {
    /// Address to listen on. Transfers answer from an ephemeral port on the same address (RFC 1350).
    public var host: String = "0.0.0.0"
    public var port: Int = 69
    /// Directory served; nothing outside it is readable.
    public var root: String
    /// Per-transfer protocol limits (block size, window, retransmission time-outs).
    public var session = TFTPSessionConfiguration()
    /// Concurrent transfers one client IP may hold. A PXE client needs one or two; more means a stuck
    /// or hostile client, and refusing it protects the others.
    public var maximumTransfersPerClient = 8
    /// Concurrent transfers in all; each costs one socket (file descriptor).
    public var maximumTransfers = 10_000
    /// Files up to this size are served from memory (bootloaders, configs); larger ones with pread.
    public var cacheFileSizeLimit = 1 << 20
    /// Memory the cache may hold in all.
    public var cacheTotalSizeLimit = 64 << 20
    /// SO_RCVBUF of the listening socket; the kernel caps it at net.core.rmem_max.
    public var listenerReceiveBufferSize = 4 << 20
    /// Serve only world-readable files, as tftp-hpa does without `-p`: the server usually runs as root,
    /// so file permissions are the admin's way to keep a file out of reach.
    public var requireWorldReadable = true

    public init(root: String, host: String = "0.0.0.0", port: Int = 69) {
        self.root = root
        self.host = host
        self.port = port
    }
}

/// How one request ended, server-side view.
public enum TFTPTransferResult: Sendable, Hashable, CustomStringConvertible {
    case completed
    /// Completed except for the final ACK, which never came (see `TFTPTransferOutcome.delivered`).
    case delivered
    /// The client sent an ERROR (the PXE tsize probe ends this way, with code 8).
    case abortedByClient(code: TFTPErrorCode, message: String)
    /// The client sent a different request from the same port before this one ended: it moved on.
    /// The PXE `tsize` probe ends this way when the next request overtakes the client's ERROR.
    case superseded
    /// The transfer started but failed (time-out, read error, protocol violation).
    case failed(TFTPSessionFailure)
    /// Refused before any data: missing file, access violation, write request, limits.
    case rejected(code: TFTPErrorCode, reason: String)
    /// The server stopped while the transfer ran.
    case cancelled

    public var description: String {
        switch self {
        case .completed: "completed"
        case .delivered: TFTPTransferOutcome.delivered.description
        case .abortedByClient(let code, let message): TFTPTransferOutcome.abortedByClient(code: code, message: message).description
        case .superseded: "superseded by the client's next request"
        case .failed(let failure): "failed: \(failure)"
        case .rejected(let code, let reason): "rejected with \(code): \(reason)"
        case .cancelled: "cancelled by server shutdown"
        }
    }

    /// Short label for metrics dimensions.
    public var label: String {
        switch self {
        case .completed, .delivered: "completed"
        case .abortedByClient, .superseded: "aborted"
        case .failed: "failed"
        case .rejected: "rejected"
        case .cancelled: "cancelled"
        }
    }
}

/// One finished request, handed to the observer (for the boot timeline) and logged.
public struct TFTPTransferReport: Sendable {
    public var client: SocketAddress
    /// The path as the client asked for it.
    public var path: String
    /// File bytes the client acknowledged.
    public var bytes: UInt64
    public var result: TFTPTransferResult
    public var blockSize: Int
    public var windowSize: Int
    public var duration: TimeAmount
    public var retransmissions: UInt64
    public var timeouts: UInt64
    /// How long before this report the client really finished: zero, except for a `.delivered` transfer,
    /// which is reported a client time-out after its last block went out.
    public var finishedAgo: TimeAmount = .zero
}

/// Totals since start, read with `TFTPServer.statistics()`.
public struct TFTPServerStatistics: Sendable, Hashable {
    public var activeTransfers = 0
    public var completed: UInt64 = 0
    public var abortedByClient: UInt64 = 0
    public var failed: UInt64 = 0
    public var rejected: UInt64 = 0
    public var bytesSent: UInt64 = 0
    public var retransmissions: UInt64 = 0
    public var timeouts: UInt64 = 0
    public var cacheHits: UInt64 = 0
    public var cacheMisses: UInt64 = 0
    /// Retransmitted RRQs from a client whose transfer is already running; passed to that transfer, which
    /// repeats its first answer, never a second transfer.
    public var duplicateRequests: UInt64 = 0

    public init() {}
}

/// swift-metrics counters, created once (a Counter lookup per packet would cost more than the packet).
struct TFTPServerMetrics: Sendable {
    let completed = Counter(label: "imagebuild_tftp_transfers_total", dimensions: [("result", "completed")])
    let aborted = Counter(label: "imagebuild_tftp_transfers_total", dimensions: [("result", "aborted")])
    let failed = Counter(label: "imagebuild_tftp_transfers_total", dimensions: [("result", "failed")])
    let rejected = Counter(label: "imagebuild_tftp_transfers_total", dimensions: [("result", "rejected")])
    let cancelled = Counter(label: "imagebuild_tftp_transfers_total", dimensions: [("result", "cancelled")])
    let bytes = Counter(label: "imagebuild_tftp_bytes_sent_total")
    let retransmissions = Counter(label: "imagebuild_tftp_retransmissions_total")
    let timeouts = Counter(label: "imagebuild_tftp_timeouts_total")

    func record(_ report: TFTPTransferReport) {
        switch report.result {
        case .completed, .delivered: completed.increment()
        case .abortedByClient, .superseded: aborted.increment()
        case .failed: failed.increment()
        case .rejected: rejected.increment()
        case .cancelled: cancelled.increment()
        }
        if report.bytes > 0 { bytes.increment(by: Int64(clamping: report.bytes)) }
        if report.retransmissions > 0 { retransmissions.increment(by: Int64(clamping: report.retransmissions)) }
        if report.timeouts > 0 { timeouts.increment(by: Int64(clamping: report.timeouts)) }
    }
}

/// Why the server could not start.
public enum TFTPServerError: Error, CustomStringConvertible {
    case rootNotFound(String)
    case alreadyRunning

    public var description: String {
        switch self {
        case .rootNotFound(let path): "TFTP root '\(path)' does not exist or cannot be resolved"
        case .alreadyRunning: "TFTP server is already running"
        }
    }
}
