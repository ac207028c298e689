import BootProtocols
import NIOCore
import Testing

@Suite("TFTP read session")
struct TFTPReadSessionTests {
    private func session(_ file: [UInt8], mode: TFTPTransferMode = .octet, options: TFTPOptions = [:],
                         configure: (inout TFTPSessionConfiguration) -> Void = { _ in }) -> Session {
        var configuration = TFTPSessionConfiguration()
        configure(&configuration)
        return Session(request: TFTPRequest(filename: "f", mode: mode, options: options), fileSize: UInt64(file.count),
                       content: TFTPBufferContent(file), configuration: configuration)
    }

    /// Drives a loss-free lock-step or windowed transfer: ACKs the last block of every burst.
    private func runToCompletion(_ session: inout Session, acknowledgeOptions: Bool = true) -> (payloads: [ByteBuffer], blocks: [UInt16]) {
        var now: Int64 = 0
        var actions = session.handle(.start(ms(now)))
        var payloads: [ByteBuffer] = []
        var blocks: [UInt16] = []
        var rounds = 0
        while session.isDone == false && rounds < 200_000 {
            rounds += 1
            now += 1
            let ack: UInt16
            if case .optionAcknowledgement? = actions.sent.first {
                ack = 0
            } else {
                for packet in actions.sent {
                    if case .data(let block, let payload) = packet {
                        blocks.append(block)
                        payloads.append(payload)
                    }
                }
                guard let last = actions.dataBlocks.last else { break }
                ack = last
            }
            actions = session.handle(.packet(.acknowledgement(block: ack), ms(now)))
        }
        #expect(actions.finish == .completed)
        return (payloads, blocks)
    }

    private func joined(_ payloads: [ByteBuffer]) -> [UInt8] {
        payloads.flatMap { Array(buffer: $0) }
    }

    // MARK: The PXE seed flows

    @Test func tsizeProbeThenAbortIsQuiet() {
        var s = session(patternBytes(count: 70_000), options: ["tsize": "0"])
        let first = s.handle(.start(ms(0)))
        #expect(first.sent == [.optionAcknowledgement(["tsize": "70000"])])
        // The first deadline is a quiet period; the OACK is not repeated before two (atftp aborts on a second OACK).
        #expect(first.timerDeadline == ms(6000))
        let abort = s.handle(.packet(.error(code: .optionNegotiationFailed, message: "User aborted the transfer"), ms(1)))
        #expect(abort.sent.isEmpty)
        #expect(abort.finish == .abortedByClient(code: .optionNegotiationFailed, message: "User aborted the transfer"))
        #expect(s.isDone)
        #expect(s.handle(.timerFired(ms(300))).isEmpty)
    }

    @Test func blksizeNegotiationThenData() {
        let file = patternBytes(count: 3000)
        var s = session(file, options: ["blksize": "1468"])
        #expect(s.handle(.start(ms(0))).sent == [.optionAcknowledgement(["blksize": "1468"])])
        let afterAck0 = s.handle(.packet(.acknowledgement(block: 0), ms(2)))
        #expect(afterAck0.sent == [.data(block: 1, payload: ByteBuffer(bytes: file[0..<1468]))])
        #expect(afterAck0.timerDeadline != nil)
        #expect(s.handle(.packet(.acknowledgement(block: 1), ms(3))).sent == [.data(block: 2, payload: ByteBuffer(bytes: file[1468..<2936]))])
        #expect(s.handle(.packet(.acknowledgement(block: 2), ms(4))).sent == [.data(block: 3, payload: ByteBuffer(bytes: file[2936...]))])
        let done = s.handle(.packet(.acknowledgement(block: 3), ms(5)))
        #expect(done.sent.isEmpty)
        #expect(done.finish == .completed)
        #expect(s.statistics.bytesAcknowledged == 3000)
        #expect(s.statistics.retransmissions == 0)
    }

    @Test func noOptionsStartsWithData1() {
        var s = session([1, 2, 3])
        let actions = s.handle(.start(ms(0)))
        #expect(actions.sent == [.data(block: 1, payload: ByteBuffer(bytes: [1, 2, 3]))])
    }

    // MARK: Sizes

    @Test("block count and final block at 512", arguments: [(0, 1, 0), (511, 1, 511), (512, 2, 0), (513, 2, 1), (1024, 3, 0)])
    func sizes(size: Int, blocks: Int, lastLength: Int) {
        let file = patternBytes(count: size)
        var s = session(file)
        let (payloads, numbers) = runToCompletion(&s)
        #expect(payloads.count == blocks)
        #expect(payloads.last?.readableBytes == lastLength)
        #expect(numbers == (1...blocks).map { UInt16($0) })
        #expect(joined(payloads) == file)
        #expect(s.statistics.bytesAcknowledged == UInt64(size))
    }

    @Test func exactMultipleOfNegotiatedBlockSizeEndsWithEmptyBlock() {
        let file = patternBytes(count: 4 * 1468)
        var s = session(file, options: ["blksize": "1468", "windowsize": "3"])
        let (payloads, numbers) = runToCompletion(&s)
        #expect(numbers == [1, 2, 3, 4, 5])
        #expect(payloads.map(\.readableBytes) == [1468, 1468, 1468, 1468, 0])
        #expect(joined(payloads) == file)
    }

    @Test func blockNumbersRollOverToZero() {
        let blockSize = 512
        let file = patternBytes(count: 65536 * blockSize, seed: 9)
        var s = session(file)
        let (payloads, numbers) = runToCompletion(&s)
        #expect(numbers.count == 65537)
        #expect(Array(numbers[65533...]) == [65534, 65535, 0, 1])
        #expect(payloads.last?.readableBytes == 0)
        var whole = ByteBuffer()
        for var payload in payloads { whole.writeBuffer(&payload) }
        #expect(whole == ByteBuffer(bytes: file))
    }

    @Test func staleAckAfterRolloverIsIgnored() {
        // 65537 full blocks + 1: drive to block 65536 (wire 0), then replay an ACK 0 from before the rollover.
        let file = patternBytes(count: 65537 * 8 + 3)
        var s = session(file, options: ["blksize": "8"])
        _ = s.handle(.start(ms(0)))
        var actions = s.handle(.packet(.acknowledgement(block: 0), ms(0)))
        var block: UInt16 = 0
        for _ in 1...65535 {
            block &+= 1
            actions = s.handle(.packet(.acknowledgement(block: block), ms(1)))
        }
        #expect(actions.dataBlocks == [0])  // block 65536
        // A late duplicate of ACK 65535 is a duplicate, not a jump.
        #expect(s.handle(.packet(.acknowledgement(block: 65535), ms(2))).isEmpty)
        #expect(s.handle(.packet(.acknowledgement(block: 0), ms(2))).dataBlocks == [1])
    }

    // MARK: Windows and ACK handling

    @Test func windowSizeSendsBurstsAndRestartsAfterPartialAck() {
        let file = patternBytes(count: 10 * 512 + 100)
        var s = session(file, options: ["windowsize": "4"])
        _ = s.handle(.start(ms(0)))
        #expect(s.handle(.packet(.acknowledgement(block: 0), ms(1))).dataBlocks == [1, 2, 3, 4])
        #expect(s.handle(.packet(.acknowledgement(block: 4), ms(2))).dataBlocks == [5, 6, 7, 8])
        // Client got 5 and 6 only: resend from 7, a full window.
        let partial = s.handle(.packet(.acknowledgement(block: 6), ms(3)))
        #expect(partial.dataBlocks == [7, 8, 9, 10])
        #expect(s.statistics.retransmissions == 2)
        // The same ACK again (client saw another gap) is absorbed: no second resend.
        #expect(s.handle(.packet(.acknowledgement(block: 6), ms(4))).isEmpty)
        #expect(s.handle(.packet(.acknowledgement(block: 10), ms(5))).dataBlocks == [11])
        #expect(s.handle(.packet(.acknowledgement(block: 11), ms(6))).finish == .completed)
        #expect(s.statistics.retransmissions == 2)
        #expect(s.statistics.ignoredAcknowledgements == 1)
    }

    @Test func secondPartialAckDuringRecoveryOnlySlidesTheWindow() {
        var s = session(patternBytes(count: 30 * 512), options: ["windowsize": "4"])
        _ = s.handle(.start(ms(0)))
        #expect(s.handle(.packet(.acknowledgement(block: 0), ms(1))).dataBlocks == [1, 2, 3, 4])
        #expect(s.handle(.packet(.acknowledgement(block: 2), ms(2))).dataBlocks == [3, 4, 5, 6])
        // Copies of 3 and 4 from the first burst arrive and the client acknowledges 4: 5 and 6 are
        // already on their way again, so only 7 and 8 are new.
        #expect(s.handle(.packet(.acknowledgement(block: 4), ms(3))).dataBlocks == [7, 8])
        #expect(s.statistics.retransmissions == 2)
        // The resent window is acknowledged in full: recovery ends, the next partial ACK resends again.
        #expect(s.handle(.packet(.acknowledgement(block: 8), ms(4))).dataBlocks == [9, 10, 11, 12])
        #expect(s.handle(.packet(.acknowledgement(block: 9), ms(5))).dataBlocks == [10, 11, 12, 13])
        #expect(s.statistics.retransmissions == 5)
    }

    @Test func duplicateStaleAndFutureAcksSendNothing() {
        var s = session(patternBytes(count: 5000))
        _ = s.handle(.start(ms(0)))
        #expect(s.handle(.packet(.acknowledgement(block: 1), ms(1))).dataBlocks == [2])
        #expect(s.handle(.packet(.acknowledgement(block: 1), ms(2))).isEmpty)  // duplicate
        #expect(s.handle(.packet(.acknowledgement(block: 0), ms(2))).isEmpty)  // stale
        #expect(s.handle(.packet(.acknowledgement(block: 7), ms(2))).isEmpty)  // never sent
        #expect(s.handle(.packet(.acknowledgement(block: 2), ms(3))).dataBlocks == [3])
        #expect(s.statistics.ignoredAcknowledgements == 3)
        #expect(s.statistics.dataPacketsSent == 3)
    }

    @Test func wrongAckWhileAwaitingOACKIsIgnored() {
        var s = session(patternBytes(count: 100), options: ["tsize": "0"])
        _ = s.handle(.start(ms(0)))
        #expect(s.handle(.packet(.acknowledgement(block: 1), ms(1))).isEmpty)
        #expect(s.handle(.packet(.acknowledgement(block: 0), ms(2))).dataBlocks == [1])
    }

    // MARK: Time-outs

    @Test func timeoutsRetransmitWithExponentialBackOffThenFail() {
        var s = session(patternBytes(count: 2000)) { $0.maximumRetries = 4 }
        var deadline = s.handle(.start(ms(0))).timerDeadline!
        #expect(deadline == ms(250))
        // An early firing only re-arms.
        let early = s.handle(.timerFired(ms(100)))
        #expect(early.sent.isEmpty)
        #expect(early.timerDeadline == ms(250))
        var intervals: [Int64] = []
        for _ in 0..<4 {
            let now = deadline
            let actions = s.handle(.timerFired(now))
            #expect(actions.dataBlocks == [1])
            let next = actions.timerDeadline!
            intervals.append((next.uptimeNanoseconds - now.uptimeNanoseconds).asMilliseconds)
            deadline = next
        }
        // Doubling, then after the fourth quick retransmission a pause longer than a client's own time-out.
        #expect(intervals == [500, 1000, 2000, 6000])
        #expect(s.statistics.timeouts == 4)
        #expect(s.statistics.retransmissions == 4)
        let last = s.handle(.timerFired(deadline))
        #expect(last.failure == .timedOut(retries: 4, lastAcknowledgedBlock: 0))
        #expect(last.sent.count == 1)
        if case .error(let code, _)? = last.sent.first { #expect(code == .notDefined) } else { Issue.record("no ERROR sent") }
        #expect(s.isDone)
    }

    /// pxelinux and iPXE stop listening once they hold the last block; when their final ACK is lost the
    /// session must not wait out every retry (half a minute of a held port, and the node's timeline
    /// showing its initramfs long after the kernel booted).
    @Test func lostFinalAcknowledgementEndsAsDeliveredAfterOneQuietPeriod() {
        var s = session(patternBytes(count: 1000))
        _ = s.handle(.start(ms(0)))
        let final = s.handle(.packet(.acknowledgement(block: 1), ms(10)))
        #expect(final.dataBlocks == [2])
        var deadline = final.timerDeadline!
        var retransmitted = 0
        var outcome: TFTPTransferOutcome?
        for _ in 0..<20 {
            let actions = s.handle(.timerFired(deadline))
            retransmitted += actions.dataBlocks.count
            if let finish = actions.finish { outcome = finish; #expect(actions.sent.isEmpty); break }
            #expect(actions.failure == nil)
            deadline = actions.timerDeadline!
        }
        #expect(outcome == .delivered)
        #expect(retransmitted == TFTPSessionConfiguration().quickRetransmissions)
        // The quick back-off, then one pause longer than a client's own time-out.
        #expect(deadline.uptimeNanoseconds / 1_000_000 - 10 >= 6000)
        #expect(s.isDone)
    }

    /// A one-block file without options: the client never sent anything after its request, so nothing
    /// says it is alive; the session times out as before instead of calling the file delivered.
    @Test func clientNeverHeardFromIsNotDelivered() {
        var s = session(patternBytes(count: 100)) { $0.maximumRetries = 6 }
        var deadline = s.handle(.start(ms(0))).timerDeadline!
        var last: [Session.Action] = []
        for _ in 0..<20 where !s.isDone {
            last = s.handle(.timerFired(deadline))
            if let next = last.timerDeadline { deadline = next }
        }
        #expect(last.finish == nil)
        #expect(last.failure == .timedOut(retries: 6, lastAcknowledgedBlock: 0))
    }

    /// A client that is missing the final block repeats its previous ACK: it is alive, so the session
    /// keeps trying and the transfer ends only when the final ACK comes.
    @Test func clientRepeatingItsPreviousAcknowledgementIsNotDelivered() {
        var s = session(patternBytes(count: 1000))
        _ = s.handle(.start(ms(0)))
        var deadline = s.handle(.packet(.acknowledgement(block: 1), ms(10))).timerDeadline!
        for _ in 0..<TFTPSessionConfiguration().quickRetransmissions {
            deadline = s.handle(.timerFired(deadline)).timerDeadline!
        }
        // During the quiet period the client times out and repeats ACK 1: absorbed, nothing sent.
        let repeated = s.handle(.packet(.acknowledgement(block: 1), deadline - .seconds(1)))
        #expect(repeated.sent.isEmpty)
        let afterQuiet = s.handle(.timerFired(deadline))
        #expect(afterQuiet.finish == nil)
        #expect(afterQuiet.dataBlocks == [2])
        let acknowledged = s.handle(.packet(.acknowledgement(block: 2), afterQuiet.timerDeadline! - .seconds(5)))
        #expect(acknowledged.finish == .completed)
    }

    @Test func progressResetsRetryCount() {
        var s = session(patternBytes(count: 512 * 6)) { $0.maximumRetries = 1 }
        var deadline = s.handle(.start(ms(0))).timerDeadline!
        for block in UInt16(1)...6 {
            let retry = s.handle(.timerFired(deadline))  // one time-out per block is within budget
            #expect(retry.failure == nil)
            let now = retry.timerDeadline!
            deadline = s.handle(.packet(.acknowledgement(block: block), now)).timerDeadline ?? now
        }
        #expect(s.statistics.timeouts == 6)
    }

    @Test func repeatedRequestRepeatsTheFirstAnswerAtOnce() {
        // With options: the OACK again, long before its own time-out.
        var s = session(patternBytes(count: 3000), options: ["blksize": "1024"])
        _ = s.handle(.start(ms(0)))
        let again = s.handle(.requestRepeated(ms(400)))
        #expect(again.sent == [.optionAcknowledgement(["blksize": "1024"])])
        #expect(again.timerDeadline == ms(6400))
        #expect(s.handle(.packet(.acknowledgement(block: 0), ms(401))).dataBlocks == [1])
        // Once data flows, a late copy of the request is stale.
        #expect(s.handle(.requestRepeated(ms(402))).sent.isEmpty)

        // Without options: DATA 1 again, but not after the client acknowledged it.
        var plain = session(patternBytes(count: 3000))
        _ = plain.handle(.start(ms(0)))
        #expect(plain.handle(.requestRepeated(ms(10))).dataBlocks == [1])
        _ = plain.handle(.packet(.acknowledgement(block: 1), ms(11)))
        #expect(plain.handle(.requestRepeated(ms(12))).sent.isEmpty)
    }

    @Test func oackIsRepeatedUnaskedOnlyAfterTwoQuietPeriods() {
        var s = session(patternBytes(count: 10), options: ["blksize": "1024"])
        let first = s.handle(.start(ms(0))).timerDeadline!
        #expect(first == ms(6000))
        // One quiet period: a client that re-sends its own ACK 0 (atftp, every 5 s) gets another chance.
        let quiet = s.handle(.timerFired(first))
        #expect(quiet.sent.isEmpty)
        #expect(quiet.timerDeadline == ms(12000))
        // Two: the client may be one that never re-sends ACK 0 (GRUB); only an OACK makes it answer.
        let retry = s.handle(.timerFired(ms(12000)))
        #expect(retry.sent == [.optionAcknowledgement(["blksize": "1024"])])
        #expect(s.statistics.retransmissions == 1)
        // The count starts again from that OACK.
        #expect(s.handle(.timerFired(ms(18000))).sent.isEmpty)
        // A repeated request is answered at once and also starts the count again.
        #expect(s.handle(.requestRepeated(ms(20000))).sent == [.optionAcknowledgement(["blksize": "1024"])])
        #expect(s.handle(.timerFired(ms(26000))).sent.isEmpty)
        #expect(s.handle(.timerFired(ms(32000))).sent == [.optionAcknowledgement(["blksize": "1024"])])
        #expect(s.handle(.packet(.acknowledgement(block: 0), ms(32001))).dataBlocks == [1])
    }

    @Test func silentClientAfterOACKIsGivenUpAfterTheRetryBudget() {
        var s = session(patternBytes(count: 10), options: ["tsize": "0"]) { $0.maximumRetries = 3 }
        var deadline = s.handle(.start(ms(0))).timerDeadline!
        var sent = 0
        for _ in 0..<3 {
            let actions = s.handle(.timerFired(deadline))
            #expect(actions.failure == nil)
            sent += actions.sent.count
            deadline = actions.timerDeadline!
        }
        #expect(sent == 1)  // the OACK once, after two quiet periods
        let last = s.handle(.timerFired(deadline))
        #expect(last.failure != nil)
        #expect(deadline == ms(24000))
    }

    @Test func roundTripSamplesSetTimeoutAndKarnSkipsRetransmittedBlocks() {
        var s = session(patternBytes(count: 5000))
        _ = s.handle(.start(ms(0)))
        // Clean sample: DATA 1 at 0, ACK at 100 ms -> SRTT 100, RTTVAR 50, RTO 300.
        let a1 = s.handle(.packet(.acknowledgement(block: 1), ms(100)))
        #expect(s.statistics.smoothedRoundTripTime == .milliseconds(100))
        #expect(s.statistics.retransmissionTimeout == .milliseconds(300))
        #expect(a1.timerDeadline == ms(400))
        // DATA 2 times out and is resent; its late ACK must not be used as a sample.
        let retry = s.handle(.timerFired(ms(400)))
        #expect(retry.dataBlocks == [2])
        #expect(s.statistics.retransmissionTimeout == .milliseconds(600))
        _ = s.handle(.packet(.acknowledgement(block: 2), ms(950)))
        #expect(s.statistics.smoothedRoundTripTime == .milliseconds(100))
        #expect(s.statistics.retransmissionTimeout == .milliseconds(600))
        // DATA 3 was sent once: its ACK is a valid sample and ends the back-off.
        _ = s.handle(.packet(.acknowledgement(block: 3), ms(960)))
        #expect(s.statistics.smoothedRoundTripTime! < .milliseconds(100))
        #expect(s.statistics.retransmissionTimeout < .milliseconds(600))
    }

    @Test func timeoutIsFlooredAndCappedByClientTimeout() {
        var s = session(patternBytes(count: 5000), options: ["timeout": "1"])
        _ = s.handle(.start(ms(0)))
        let after = s.handle(.packet(.acknowledgement(block: 0), ms(1)))  // 1 ms RTT
        #expect(s.statistics.retransmissionTimeout == TFTPSessionConfiguration().minimumRetransmissionTimeout)
        var deadline = after.timerDeadline!
        var intervals: [Int64] = []
        for _ in 0..<6 {
            let next = s.handle(.timerFired(deadline)).timerDeadline!
            intervals.append((next.uptimeNanoseconds - deadline.uptimeNanoseconds).asMilliseconds)
            deadline = next
        }
        #expect(s.statistics.retransmissionTimeout == .seconds(1))
        // The quiet period follows the client's own time-out (1 s) plus a quarter.
        #expect(intervals == [40, 80, 160, 1250, 1250, 1250])
    }

    @Test func windowTimeoutResendsWholeWindow() {
        var s = session(patternBytes(count: 512 * 20), options: ["windowsize": "5"])
        _ = s.handle(.start(ms(0)))
        let window = s.handle(.packet(.acknowledgement(block: 0), ms(1)))
        #expect(window.dataBlocks == [1, 2, 3, 4, 5])
        #expect(s.handle(.timerFired(window.timerDeadline!)).dataBlocks == [1, 2, 3, 4, 5])
    }

    // MARK: Errors and odd input

    @Test func clientErrorMidTransferEndsQuietly() {
        var s = session(patternBytes(count: 5000))
        _ = s.handle(.start(ms(0)))
        let actions = s.handle(.packet(.error(code: .notDefined, message: "cancelled"), ms(1)))
        #expect(actions.sent.isEmpty)
        #expect(actions.finish == .abortedByClient(code: .notDefined, message: "cancelled"))
        #expect(s.handle(.packet(.acknowledgement(block: 1), ms(2))).isEmpty)
    }

    @Test func unexpectedPacketIsIllegalOperation() {
        var s = session(patternBytes(count: 5000))
        _ = s.handle(.start(ms(0)))
        let actions = s.handle(.packet(.data(block: 1, payload: ByteBuffer()), ms(1)))
        #expect(actions.failure == .unexpectedPacket(.data))
        if case .error(let code, _)? = actions.sent.first { #expect(code == .illegalOperation) } else { Issue.record("no ERROR") }
    }

    @Test func mailModeIsRefused() {
        var s = session([1], mode: .mail)
        let actions = s.handle(.start(ms(0)))
        #expect(actions.failure == .unsupportedMode(.mail))
        #expect(actions.timerDeadline == nil)
    }

    @Test func readErrorBecomesErrorPacket() {
        var s = TFTPReadSession(request: TFTPRequest(filename: "f"), fileSize: 100, content: FailingContent())
        let actions = s.handle(.start(ms(0)))
        var sent: [TFTPPacket] = []
        var failure: TFTPSessionFailure?
        for action in actions {
            switch action {
            case .send(let packet): sent.append(packet)
            case .fail(let reason): failure = reason
            default: break
            }
        }
        #expect(failure == .contentUnavailable(TFTPContentError("EIO at 0")))
        if case .error(let code, let message)? = sent.first {
            #expect(code == .notDefined)
            #expect(message.contains("EIO"))
        } else {
            Issue.record("no ERROR sent")
        }
    }

    // MARK: Netascii

    @Test func netasciiTransferConvertsAcrossBlocksAndRetransmitsIdentically() {
        var rng = SplitMix64(seed: 5)
        let file = (0..<3000).map { _ in [0x0A, 0x0D, 0x61, 0x62][Int.random(in: 0...3, using: &rng)] as UInt8 }
        var s = session(file, mode: .netascii, options: ["blksize": "64", "windowsize": "4"])
        _ = s.handle(.start(ms(0)))
        var received: [Int: [UInt8]] = [:]
        var actions = s.handle(.packet(.acknowledgement(block: 0), ms(1)))
        var now: Int64 = 1
        var acked = 0
        while !s.isDone && now < 100_000 {
            now += 1
            for case .data(let block, let payload) in actions.sent {
                let absolute = acked + Int(block &- UInt16(truncatingIfNeeded: acked))
                if let previous = received[absolute] { #expect(previous == Array(buffer: payload)) }
                received[absolute] = Array(buffer: payload)
            }
            // Every third round, acknowledge only the first block of the burst, to force resends.
            let blocks = actions.dataBlocks
            guard let last = blocks.last else { break }
            let ack = now % 3 == 0 && blocks.count > 1 ? blocks[0] : last
            acked += Int(ack &- UInt16(truncatingIfNeeded: acked))
            actions = s.handle(.packet(.acknowledgement(block: ack), ms(now)))
        }
        #expect(actions.finish == .completed)
        #expect(s.statistics.retransmissions > 0)
        #expect(received.keys.sorted().flatMap { received[$0]! } == netascii(file))
        #expect(s.statistics.bytesAcknowledged == 3000)
    }
}

extension UInt64 {
    fileprivate var asMilliseconds: Int64 { Int64(self / 1_000_000) }
}
