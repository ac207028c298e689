import NIOCore

/// How a read transfer ended without a server-side failure.
public enum TFTPTransferOutcome: Sendable, Hashable, CustomStringConvertible {
    /// The client acknowledged the last block.
    case completed
    /// Every block went out and the client then fell silent without acknowledging the last one, through
    /// the quick retransmissions and a full client time-out. Its final ACK was lost: a receiver may stop
    /// once it holds the last block (RFC 1350 §6), and firmware loaders go straight on to boot. A client
    /// still missing the last block would have repeated its previous ACK by then.
    case delivered
    /// The client sent an ERROR. Normal for the PXE `tsize` probe, which aborts with code 8 after the OACK.
    case abortedByClient(code: TFTPErrorCode, message: String)

    public var description: String {
        switch self {
        case .completed: "completed"
        case .delivered: "completed, final ACK not received"
        case .abortedByClient(let code, let message):
            message.isEmpty ? "aborted by client: \(code)" : "aborted by client: \(code) '\(message)'"
        }
    }
}

/// Why the server gave a read transfer up.
public enum TFTPSessionFailure: Error, Sendable, Hashable, CustomStringConvertible {
    /// The client stopped answering: `retries` retransmissions in a row went unacknowledged.
    case timedOut(retries: Int, lastAcknowledgedBlock: UInt64)
    /// The file's bytes could not be read.
    case contentUnavailable(TFTPContentError)
    /// The client sent a packet that has no place in a read transfer.
    case unexpectedPacket(TFTPOpcode)
    /// The request's mode is not served (only octet and netascii are).
    case unsupportedMode(TFTPTransferMode)

    public var description: String {
        switch self {
        case .timedOut(let retries, let block):
            "timed out: \(retries) retransmissions unanswered after block \(block)"
        case .contentUnavailable(let error):
            "cannot read file: \(error)"
        case .unexpectedPacket(let opcode):
            "unexpected \(opcode) from client during a read transfer"
        case .unsupportedMode(let mode):
            "transfer mode '\(mode)' is not supported"
        }
    }
}

/// Counters of one transfer, for the per-transfer log line and metrics.
public struct TFTPTransferStatistics: Sendable, Hashable {
    /// File bytes the client has acknowledged.
    public var bytesAcknowledged: UInt64 = 0
    /// DATA packets sent, retransmissions included.
    public var dataPacketsSent: UInt64 = 0
    /// DATA and OACK packets sent again (after a time-out or an ACK showing loss).
    public var retransmissions: UInt64 = 0
    /// Retransmission time-outs that expired.
    public var timeouts: UInt64 = 0
    /// Duplicate or stale ACKs absorbed without sending anything.
    public var ignoredAcknowledgements: UInt64 = 0
    /// The retransmission time-out currently in force.
    public var retransmissionTimeout: TimeAmount = .zero
    /// The smoothed round-trip time, once a sample exists.
    public var smoothedRoundTripTime: TimeAmount?
    /// When the last block first went out: for a `.delivered` transfer, when the client most likely
    /// finished (the boot timeline dates the transfer by it, not by the end of the wait).
    public var finalBlockFirstSent: NIODeadline?

    public init() {}
}

/// One read transfer (RRQ) as a sans-IO state machine: fed events, it returns what to do.
///
/// The caller sends what `.send` says, keeps one timer at the latest `.armTimer` deadline and feeds
/// `.timerFired` when it expires (early or stale firings are harmless: the session re-arms), and stops
/// after `.finish` or `.fail`. File bytes come from `Content`, asked only for the block being sent.
///
/// Loss handling: the retransmission time-out follows RFC 6298 from per-transfer round-trip samples,
/// never from retransmitted blocks (Karn), backs off on consecutive time-outs, falls quiet for longer than
/// a client's own time-out after `quickRetransmissions` (clients that drop duplicates recover only by
/// their own retry) and gives up after `maximumRetries`. An OACK is repeated at once when the client repeats
/// its request, and unasked only after two quiet periods (see `optionAcknowledgementQuietPeriods`). A
/// duplicate or stale ACK never causes a send (no Sorcerer's Apprentice); an ACK
/// inside the window means the rest of it was lost, so the window restarts after it (RFC 7440), once
/// per window: a repeat of that ACK is a duplicate, and a later partial ACK before the resent window is
/// acknowledged only slides the window with new blocks.
public struct TFTPReadSession<Content: TFTPContentSource> {
    public enum Event {
        case start(NIODeadline)
        case packet(TFTPPacket, NIODeadline)
        case timerFired(NIODeadline)
        /// The client sent its read request again: it has not seen the server's first answer (OACK, or
        /// DATA 1 without options), so that answer is repeated at once.
        case requestRepeated(NIODeadline)
    }

    public enum Action {
        case send(TFTPPacket)
        case armTimer(NIODeadline)
        case finish(TFTPTransferOutcome)
        case fail(TFTPSessionFailure)
    }

    private enum State {
        case idle
        case awaitingOptionAcknowledgement
        case transferring
        case done
    }

    private static var timerTolerance: TimeAmount { .milliseconds(1) }
    /// Quiet periods (`clientRetryAllowance` each) after an OACK before it is repeated unasked. Silence after
    /// an OACK means either the OACK or ACK 0 was lost, and the two kinds of client need opposite answers:
    /// atftp re-sends its ACK 0 every 5 s and aborts on a second OACK, while GRUB never re-sends ACK 0 and
    /// recovers only when the OACK comes again (it answers every OACK with ACK 0). A lost OACK needs no
    /// repeat: every client re-sends its request, which is answered at once. Two periods give atftp two
    /// retries before the repeat that would end it (at 5 % loss it then aborts once in 8,000 transfers
    /// instead of once in 400) and still reach GRUB after 12 s, well inside its read time-out (40 polls, about 32 s).
    private static var optionAcknowledgementQuietPeriods: Int { 2 }

    public let request: TFTPRequest
    public let fileSize: UInt64
    public let negotiated: TFTPNegotiatedOptions
    public private(set) var statistics = TFTPTransferStatistics()

    private let content: Content
    private let maximumRetries: Int
    private let quickRetransmissions: Int
    /// How long the session stays quiet after the quick retransmissions (see `TFTPSessionConfiguration`).
    private let clientRetryAllowance: TimeAmount
    private var state: State = .idle
    private var timer: TFTPRetransmissionTimer
    private var deadline: NIODeadline?
    private var consecutiveTimeouts = 0
    /// When the client last sent anything (duplicates included): tells a client that lost its final ACK
    /// (silent) from one that lacks the final block (repeats its previous ACK). Nil until its first
    /// packet after the request: a client never heard from is not assumed to have the file.
    private var lastHeard: NIODeadline?
    /// Highest block the client acknowledged, as a 64-bit count that never rolls over.
    private var lastAcknowledged: UInt64 = 0
    /// Highest block sent at least once.
    private var lastSent: UInt64 = 0
    /// The last block's number; known up front in octet mode, found while converting in netascii.
    private var finalBlock: UInt64?
    /// Quiet periods since the OACK was last sent, while awaiting ACK 0.
    private var quietPeriodsSinceOptionAcknowledgement = 0
    /// The block whose ACK will give the next round-trip sample (0 stands for the OACK), and when it left.
    private var timedBlock: UInt64?
    private var timedSince: NIODeadline = .uptimeNanoseconds(0)
    /// Set after a partial ACK resent the window: until an ACK reaches this block, further partial ACKs
    /// do not resend again (the "once per window" rule, like TCP NewReno's recovery point).
    private var recoveryPoint: UInt64?
    /// Netascii only: where each block from lastAcknowledged + 1 through lastSent + 1 starts (ring of windowSize + 1).
    private var netasciiCursors: [TFTPNetascii.Cursor] = []

    public init(request: TFTPRequest, fileSize: UInt64, content: Content, configuration: TFTPSessionConfiguration = TFTPSessionConfiguration()) {
        self.request = request
        self.fileSize = fileSize
        self.content = content
        self.maximumRetries = configuration.maximumRetries
        self.quickRetransmissions = configuration.quickRetransmissions
        let negotiated = TFTPNegotiatedOptions.negotiate(request, fileSize: fileSize, configuration: configuration)
        self.negotiated = negotiated
        self.timer = TFTPRetransmissionTimer(
            initial: configuration.initialRetransmissionTimeout,
            minimum: configuration.minimumRetransmissionTimeout,
            maximum: negotiated.clientTimeout ?? configuration.maximumRetransmissionTimeout
        )
        self.statistics.retransmissionTimeout = timer.timeout
        // Never below the timer's own floor: a zero pause would retransmit in a busy loop.
        self.clientRetryAllowance = max(timer.minimum, negotiated.clientTimeout.map { $0 + .nanoseconds($0.nanoseconds / 4) }
            ?? configuration.clientRetryAllowance)
        if request.mode == .octet {
            finalBlock = fileSize / UInt64(negotiated.blockSize) + 1
        } else {
            netasciiCursors = Array(repeating: TFTPNetascii.Cursor(), count: negotiated.windowSize + 1)
        }
    }

    /// True once the session has finished or failed; later events are ignored.
    public var isDone: Bool {
        if case .done = state { return true }
        return false
    }

    /// Handles one event, appending the resulting actions to `actions` (which the caller can reuse across
    /// calls so a busy transfer does not allocate an array per packet).
    public mutating func handle(_ event: Event, into actions: inout [Action]) {
        switch event {
        case .start(let now):
            start(now: now, into: &actions)
        case .packet(let packet, let now):
            receive(packet, now: now, into: &actions)
        case .timerFired(let now):
            timerFired(now: now, into: &actions)
        case .requestRepeated(let now):
            requestRepeated(now: now, into: &actions)
        }
        statistics.retransmissionTimeout = timer.timeout
        statistics.smoothedRoundTripTime = timer.smoothedRoundTripTime
    }

    /// Convenience for tests and callers that do not reuse an action buffer.
    public mutating func handle(_ event: Event) -> [Action] {
        var actions: [Action] = []
        handle(event, into: &actions)
        return actions
    }

    // MARK: Events

    private mutating func start(now: NIODeadline, into actions: inout [Action]) {
        guard case .idle = state else { return }
        guard request.mode != .mail else {
            fail(.unsupportedMode(request.mode), code: .illegalOperation, into: &actions)
            return
        }
        if let options = negotiated.optionAcknowledgement {
            state = .awaitingOptionAcknowledgement
            actions.append(.send(.optionAcknowledgement(options)))
            timedBlock = 0
            timedSince = now
            arm(now: now, after: clientRetryAllowance, into: &actions)
        } else {
            state = .transferring
            sendWindow(from: 1, now: now, into: &actions)
            if !isDone { arm(now: now, into: &actions) }
        }
    }

    private mutating func requestRepeated(now: NIODeadline, into actions: inout [Action]) {
        switch state {
        case .idle, .done:
            return
        case .awaitingOptionAcknowledgement:
            guard let options = negotiated.optionAcknowledgement else { return }
            statistics.retransmissions += 1
            timedBlock = nil  // Karn: ACK 0 may now answer either OACK
            quietPeriodsSinceOptionAcknowledgement = 0
            actions.append(.send(.optionAcknowledgement(options)))
            arm(now: now, after: clientRetryAllowance, into: &actions)
        case .transferring:
            // Only before the first ACK of a transfer without options is the request news: DATA 1 was lost.
            guard negotiated.optionAcknowledgement == nil, lastAcknowledged == 0 else { return }
            timedBlock = nil
            recoveryPoint = nil
            sendBlocks(1, through: lastSent, now: now, into: &actions)
            if !isDone { arm(now: now, into: &actions) }
        }
    }

    private mutating func receive(_ packet: TFTPPacket, now: NIODeadline, into actions: inout [Action]) {
        switch state {
        case .idle, .done:
            return
        case .awaitingOptionAcknowledgement, .transferring:
            break
        }
        lastHeard = now
        switch packet {
        case .acknowledgement(let block):
            acknowledgement(block, now: now, into: &actions)
        case .error(let code, let message):
            // Quietly: answering an ERROR with an ERROR is forbidden (RFC 1350 §7) and pointless.
            state = .done
            actions.append(.finish(.abortedByClient(code: code, message: message)))
        case .readRequest, .writeRequest, .data, .optionAcknowledgement:
            fail(.unexpectedPacket(packet.opcode), code: .illegalOperation, into: &actions)
        }
    }

    private mutating func acknowledgement(_ block: UInt16, now: NIODeadline, into actions: inout [Action]) {
        if case .awaitingOptionAcknowledgement = state {
            guard block == 0 else {
                statistics.ignoredAcknowledgements += 1
                return
            }
            sample(acknowledged: 0, now: now)
            consecutiveTimeouts = 0
            state = .transferring
            sendWindow(from: 1, now: now, into: &actions)
            if !isDone { arm(now: now, into: &actions) }
            return
        }
        // Map the 16-bit number onto the window: only lastAcknowledged+1 ... lastSent are news;
        // anything else is a duplicate or a stale ACK from before a rollover, and is absorbed.
        let distance = UInt64(block &- UInt16(truncatingIfNeeded: lastAcknowledged))
        guard distance != 0, distance <= lastSent - lastAcknowledged else {
            statistics.ignoredAcknowledgements += 1
            return
        }
        let acknowledged = lastAcknowledged + distance
        sample(acknowledged: acknowledged, now: now)
        statistics.bytesAcknowledged = bytesBefore(block: acknowledged + 1)
        lastAcknowledged = acknowledged
        consecutiveTimeouts = 0
        if acknowledged == finalBlock {
            state = .done
            deadline = nil
            actions.append(.finish(.completed))
            return
        }
        if let point = recoveryPoint, acknowledged >= point { recoveryPoint = nil }
        if acknowledged == lastSent {
            // A full-window ACK opens the next window.
            sendWindow(from: acknowledged + 1, now: now, into: &actions)
        } else if recoveryPoint == nil {
            // A partial ACK says the rest of the window was lost: restart the window right after it
            // (RFC 7440 §4), resending what the client is missing, once for this window.
            sendWindow(from: acknowledged + 1, now: now, into: &actions)
            recoveryPoint = lastSent
        } else {
            // Already resent this window: a further partial ACK most likely answers copies still in
            // flight, so resending again would only duplicate them. Slide the window with new blocks.
            sendBlocks(lastSent + 1, through: acknowledged + UInt64(negotiated.windowSize), now: now, into: &actions)
        }
        if !isDone { arm(now: now, into: &actions) }
    }

    private mutating func timerFired(now: NIODeadline, into actions: inout [Action]) {
        switch state {
        case .idle, .done:
            return
        case .awaitingOptionAcknowledgement, .transferring:
            break
        }
        guard let deadline else { return }
        // A firing within a millisecond of the deadline counts: a driver whose clock or timer is coarser
        // than nanoseconds must not loop on "too early" forever.
        guard now + Self.timerTolerance >= deadline else {
            actions.append(.armTimer(deadline))
            return
        }
        statistics.timeouts += 1
        consecutiveTimeouts += 1
        if let finalBlock, lastAcknowledged + 1 == finalBlock, lastSent == finalBlock,
           consecutiveTimeouts > quickRetransmissions, let lastHeard, now - lastHeard >= clientRetryAllowance {
            // Only the last ACK is missing and the client has been silent for longer than its own
            // time-out: it has the file (see `.delivered`). Waiting out the remaining retries would hold
            // the port and report the boot stage half a minute late.
            state = .done
            self.deadline = nil
            actions.append(.finish(.delivered))
            return
        }
        guard consecutiveTimeouts <= maximumRetries else {
            let failure = TFTPSessionFailure.timedOut(retries: maximumRetries, lastAcknowledgedBlock: lastAcknowledged)
            fail(failure, code: .notDefined, into: &actions)
            return
        }
        timer.backOff()
        timedBlock = nil  // Karn: whatever is acknowledged next may answer either copy.
        recoveryPoint = nil  // everything in flight is resent now; a later partial ACK is news again.
        if case .awaitingOptionAcknowledgement = state, let options = negotiated.optionAcknowledgement {
            quietPeriodsSinceOptionAcknowledgement += 1
            if quietPeriodsSinceOptionAcknowledgement >= Self.optionAcknowledgementQuietPeriods {
                quietPeriodsSinceOptionAcknowledgement = 0
                statistics.retransmissions += 1
                actions.append(.send(.optionAcknowledgement(options)))
            }
            arm(now: now, after: clientRetryAllowance, into: &actions)
            return
        }
        sendBlocks(lastAcknowledged + 1, through: lastSent, now: now, into: &actions)
        guard !isDone else { return }
        if consecutiveTimeouts >= quickRetransmissions {
            // Quiet for longer than the client's own time-out, in case it ignores our duplicates.
            arm(now: now, after: max(timer.timeout, clientRetryAllowance), into: &actions)
        } else {
            arm(now: now, into: &actions)
        }
    }

    // MARK: Sending

    private mutating func sendWindow(from first: UInt64, now: NIODeadline, into actions: inout [Action]) {
        sendBlocks(first, through: first + UInt64(negotiated.windowSize) - 1, now: now, into: &actions)
    }

    /// Sends blocks `first ... last` (stopping at the final block), counting those sent before as
    /// retransmissions, and starts a round-trip sample on the last new block if none is running.
    private mutating func sendBlocks(_ first: UInt64, through last: UInt64, now: NIODeadline, into actions: inout [Action]) {
        var block = first
        var newestNew: UInt64?
        while block <= last {
            if let finalBlock, block > finalBlock { break }
            let payload: ByteBuffer
            do {
                payload = try makeBlock(block)
            } catch {
                fail(.contentUnavailable(error), code: .notDefined, into: &actions)
                return
            }
            if block <= lastSent {
                statistics.retransmissions += 1
                if let timed = timedBlock, timed >= block { timedBlock = nil }
            } else {
                lastSent = block
                newestNew = block
                if block == finalBlock { statistics.finalBlockFirstSent = now }
            }
            statistics.dataPacketsSent += 1
            actions.append(.send(.data(block: UInt16(truncatingIfNeeded: block), payload: payload)))
            block += 1
        }
        if timedBlock == nil, let newestNew {
            timedBlock = newestNew
            timedSince = now
        }
    }

    private mutating func makeBlock(_ block: UInt64) throws(TFTPContentError) -> ByteBuffer {
        let blockSize = UInt64(negotiated.blockSize)
        switch request.mode {
        case .octet, .mail:
            let offset = (block - 1) * blockSize
            let count = Int(min(blockSize, fileSize - offset))
            return count == 0 ? ByteBuffer() : try content.read(offset: offset, count: count)
        case .netascii:
            let ring = UInt64(netasciiCursors.count)
            let cursor = netasciiCursors[Int(block % ring)]
            let (payload, next) = try TFTPNetascii.encodeBlock(
                from: cursor, blockSize: negotiated.blockSize, fileSize: fileSize, content: content)
            netasciiCursors[Int((block + 1) % ring)] = next
            if payload.readableBytes < negotiated.blockSize { finalBlock = block }
            return payload
        }
    }

    /// File bytes in blocks before `block`.
    private func bytesBefore(block: UInt64) -> UInt64 {
        switch request.mode {
        case .octet, .mail:
            return min((block - 1) * UInt64(negotiated.blockSize), fileSize)
        case .netascii:
            return netasciiCursors[Int(block % UInt64(netasciiCursors.count))].fileOffset
        }
    }

    // MARK: Helpers

    private mutating func sample(acknowledged: UInt64, now: NIODeadline) {
        guard let timed = timedBlock, acknowledged >= timed else { return }
        timer.addSample(now - timedSince)
        timedBlock = nil
    }

    private mutating func arm(now: NIODeadline, into actions: inout [Action]) {
        arm(now: now, after: timer.timeout, into: &actions)
    }

    private mutating func arm(now: NIODeadline, after interval: TimeAmount, into actions: inout [Action]) {
        let next = now + interval
        deadline = next
        actions.append(.armTimer(next))
    }

    private mutating func fail(_ failure: TFTPSessionFailure, code: TFTPErrorCode, into actions: inout [Action]) {
        state = .done
        deadline = nil
        actions.append(.send(.error(code: code, message: failure.description)))
        actions.append(.fail(failure))
    }
}

extension TFTPReadSession: Sendable where Content: Sendable {}
extension TFTPReadSession.Event: Sendable {}
extension TFTPReadSession.Action: Sendable {}
