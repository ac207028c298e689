import BootProtocols
import NIOCore
import Testing

/// A discrete-event simulation of a lossy, reordering, duplicating network between a `TFTPReadSession`
/// and a client that follows RFC 1350/2347/7440 the way real clients do: it ACKs every window, ACKs the
/// last in-order block when it sees a gap or a duplicate, re-sends its last ACK on its own time-out, and
/// dallies after the final block. Time is simulated, so hundreds of transfers run in well under a second.
@Suite("TFTP read session over a simulated lossy network")
struct TFTPLossySimulationTests {
    struct Network {
        var loss: Double
        var duplication: Double
        var minimumDelay: Int64  // microseconds
        var jitter: Int64  // microseconds; delays differing by more than a send gap reorder packets
        /// The first this many ACK 0s the client sends are lost, on top of `loss`: the case where the
        /// OACK arrived and the server hears nothing.
        var lostAcknowledgementsOfZero = 0
    }

    /// How the client recovers. The default re-ACKs every duplicate of its last block; `atftp` is atftp
    /// 0.8 as observed: one extra ACK per duplicated block then silence, a 5 s timer that every received
    /// packet restarts, and an abort on a second OACK. `grub` is GRUB 2's `net/tftp.c`: once it has the
    /// OACK it never sends anything on a timer of its own, and answers duplicates and every OACK.
    struct ClientBehaviour {
        var timeout: Int64 = 400_000  // µs; like iPXE's/tftp-hpa's ≥ 1 s, shortened for test speed
        var reAcksEveryDuplicate = true
        var timerRestartsOnAnyPacket = false
        var abortsOnSecondOptionAcknowledgement = false
        var resendsAcknowledgementOnTimeout = true

        static let atftp = ClientBehaviour(timeout: 5_000_000, reAcksEveryDuplicate: false,
                                           timerRestartsOnAnyPacket: true, abortsOnSecondOptionAcknowledgement: true)
        static let grub = ClientBehaviour(resendsAcknowledgementOnTimeout: false)
    }

    private enum Delivery {
        case toClient(TFTPPacket)
        case toServer(TFTPPacket)
        case requestRepeated
        case serverTimer(generation: Int)
        case clientTimer
    }

    private struct Scheduled {
        var time: Int64
        var sequence: Int
        var delivery: Delivery
    }

    /// Binary min-heap on (time, sequence): equal times keep sending order.
    private struct EventQueue {
        private var heap: [Scheduled] = []
        private var sequence = 0

        private func less(_ a: Int, _ b: Int) -> Bool {
            (heap[a].time, heap[a].sequence) < (heap[b].time, heap[b].sequence)
        }

        mutating func push(_ delivery: Delivery, at time: Int64) {
            sequence += 1
            heap.append(Scheduled(time: time, sequence: sequence, delivery: delivery))
            var child = heap.count - 1
            while child > 0 {
                let parent = (child - 1) / 2
                guard less(child, parent) else { break }
                heap.swapAt(child, parent)
                child = parent
            }
        }

        mutating func pop() -> Scheduled? {
            guard !heap.isEmpty else { return nil }
            heap.swapAt(0, heap.count - 1)
            let top = heap.removeLast()
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var smallest = parent
                if left < heap.count, less(left, smallest) { smallest = left }
                if right < heap.count, less(right, smallest) { smallest = right }
                guard smallest != parent else { break }
                heap.swapAt(parent, smallest)
                parent = smallest
            }
            return top
        }
    }

    private struct Client {
        let blockSize: Int
        let windowSize: Int
        let askedOptions: Bool
        var started = false  // saw OACK or DATA
        var expected: UInt16 = 1
        var receivedSinceAck = 0
        var lastAck: UInt16 = 0
        var lastAckTime: Int64 = 0
        var lastPacketTime: Int64 = 0
        var extraAckSentFor: UInt16?
        var optionAcknowledgements = 0
        var gapReported = false
        var data: [UInt8] = []
        var done = false
        var ackCount = 0
    }

    struct Result {
        /// The session finished as `.completed` or `.delivered` (every block sent, final ACK lost).
        var completed: Bool
        var outcome: TFTPTransferOutcome?
        var failure: TFTPSessionFailure?
        var received: [UInt8]
        var statistics: TFTPTransferStatistics
        var serverDataSends: Int
        var simulatedMilliseconds: Int64
    }

    private func transfer(file: [UInt8], mode: TFTPTransferMode, options: TFTPOptions, network: Network,
                          rng: inout SplitMix64, configuration: TFTPSessionConfiguration,
                          behaviour: ClientBehaviour = ClientBehaviour()) -> Result {
        let clientTimeout = behaviour.timeout
        var session = TFTPReadSession(request: TFTPRequest(filename: "f", mode: mode, options: options),
                                      fileSize: UInt64(file.count), content: TFTPBufferContent(file),
                                      configuration: configuration)
        let negotiated = session.negotiated
        var client = Client(blockSize: negotiated.blockSize, windowSize: negotiated.windowSize,
                            askedOptions: negotiated.optionAcknowledgement != nil)
        var queue = EventQueue()
        var now: Int64 = 0
        var serverTimer: (deadline: Int64, generation: Int)?
        var timerGeneration = 0
        var clientTimerPending = false
        var outcome: TFTPTransferOutcome?
        var failure: TFTPSessionFailure?
        var dataSends = 0
        var actions: [Session.Action] = []
        var acknowledgementsOfZeroToLose = network.lostAcknowledgementsOfZero

        func send(_ delivery: Delivery, rng: inout SplitMix64, queue: inout EventQueue) {
            if case .toServer(.acknowledgement(0)) = delivery, acknowledgementsOfZeroToLose > 0 {
                acknowledgementsOfZeroToLose -= 1
                return
            }
            if Double.random(in: 0..<1, using: &rng) < network.loss { return }
            let copies = Double.random(in: 0..<1, using: &rng) < network.duplication ? 2 : 1
            for _ in 0..<copies {
                queue.push(delivery, at: now + network.minimumDelay + Int64.random(in: 0...network.jitter, using: &rng))
            }
        }

        func apply(_ actions: [Session.Action], rng: inout SplitMix64, queue: inout EventQueue) {
            for action in actions {
                switch action {
                case .send(let packet):
                    if case .data = packet { dataSends += 1 }
                    send(.toClient(packet), rng: &rng, queue: &queue)
                case .armTimer(let deadline):
                    // Like the server: keep one timer, move it only earlier; a late one is re-armed by the session.
                    let at = Int64((deadline.uptimeNanoseconds + 999) / 1000)
                    if serverTimer == nil || at < serverTimer!.deadline {
                        timerGeneration += 1
                        serverTimer = (at, timerGeneration)
                        queue.push(.serverTimer(generation: timerGeneration), at: at)
                    }
                case .finish(let result):
                    outcome = result
                case .fail(let reason):
                    failure = reason
                }
            }
        }

        func clientAck(_ block: UInt16, client: inout Client, rng: inout SplitMix64, queue: inout EventQueue) {
            client.lastAck = block
            client.lastAckTime = now
            client.receivedSinceAck = 0
            client.ackCount += 1
            send(.toServer(.acknowledgement(block: block)), rng: &rng, queue: &queue)
            if !clientTimerPending {
                clientTimerPending = true
                queue.push(.clientTimer, at: now + clientTimeout)
            }
        }

        session.handle(.start(.uptimeNanoseconds(0)), into: &actions)
        apply(actions, rng: &rng, queue: &queue)
        clientTimerPending = true  // the request's own retry timer
        queue.push(.clientTimer, at: clientTimeout)
        var steps = 0
        while let event = queue.pop(), steps < 2_000_000 {
            steps += 1
            now = event.time
            let nowDeadline = NIODeadline.uptimeNanoseconds(UInt64(now) * 1000)
            actions.removeAll(keepingCapacity: true)
            switch event.delivery {
            case .serverTimer(let generation):
                guard generation == serverTimer?.generation else { continue }
                serverTimer = nil
                session.handle(.timerFired(nowDeadline), into: &actions)
                apply(actions, rng: &rng, queue: &queue)
            case .toServer(let packet):
                session.handle(.packet(packet, nowDeadline), into: &actions)
                apply(actions, rng: &rng, queue: &queue)
            case .requestRepeated:
                session.handle(.requestRepeated(nowDeadline), into: &actions)
                apply(actions, rng: &rng, queue: &queue)
            case .clientTimer:
                clientTimerPending = false
                guard !client.done, client.ackCount < 5_000 else { continue }
                let timerStart = behaviour.timerRestartsOnAnyPacket ? max(client.lastAckTime, client.lastPacketTime) : client.lastAckTime
                if now < timerStart + clientTimeout {
                    clientTimerPending = true
                    queue.push(.clientTimer, at: timerStart + clientTimeout)
                } else if !client.started {
                    // No answer yet: the request again.
                    client.lastAckTime = now
                    clientTimerPending = true
                    queue.push(.clientTimer, at: now + clientTimeout)
                    send(.requestRepeated, rng: &rng, queue: &queue)
                } else if client.started, behaviour.resendsAcknowledgementOnTimeout {
                    // Its own time-out: acknowledge the last block received in order.
                    clientAck(client.expected &- 1, client: &client, rng: &rng, queue: &queue)
                }
            case .toClient(let packet):
                client.lastPacketTime = now
                switch packet {
                case .optionAcknowledgement:
                    client.optionAcknowledgements += 1
                    if behaviour.abortsOnSecondOptionAcknowledgement, client.optionAcknowledgements > 1 {
                        client.done = true
                        send(.toServer(.error(code: .notDefined, message: "unexpected OACK")), rng: &rng, queue: &queue)
                        break
                    }
                    // Answer an OACK until data flows; after that it is a stale duplicate.
                    if !client.started || (client.expected == 1 && client.askedOptions) {
                        client.started = true
                        clientAck(0, client: &client, rng: &rng, queue: &queue)
                    }
                case .data(let block, let payload):
                    client.started = true
                    if block == client.expected, !client.done {
                        client.data += Array(buffer: payload)
                        client.expected &+= 1
                        client.receivedSinceAck += 1
                        client.gapReported = false
                        if payload.readableBytes < client.blockSize {
                            client.done = true
                            clientAck(block, client: &client, rng: &rng, queue: &queue)
                        } else if client.receivedSinceAck == client.windowSize {
                            clientAck(block, client: &client, rng: &rng, queue: &queue)
                        }
                    } else if block == client.lastAck, client.receivedSinceAck == 0,
                              behaviour.reAcksEveryDuplicate || client.extraAckSentFor != block {
                        // The block it last acknowledged, again (or the final block while dallying): the
                        // server missed that ACK, so send it again. In lock-step this is every duplicate,
                        // which is what provokes Sorcerer's Apprentice in naive servers.
                        client.extraAckSentFor = block
                        clientAck(block, client: &client, rng: &rng, queue: &queue)
                    } else if !client.done, block &- client.expected < UInt16(client.windowSize), !client.gapReported {
                        // A gap in the window: report the last in-order block once (RFC 7440 §4).
                        client.gapReported = true
                        clientAck(client.expected &- 1, client: &client, rng: &rng, queue: &queue)
                    }
                case .error:
                    client.done = true
                default:
                    break
                }
            }
            if outcome != nil || failure != nil { break }
        }
        return Result(completed: (outcome == .completed || outcome == .delivered) && failure == nil, outcome: outcome,
                      failure: failure, received: client.data,
                      statistics: session.statistics, serverDataSends: dataSends, simulatedMilliseconds: now / 1000)
    }

    @Test func manyTransfersCompleteOverLossyReorderingNetwork() {
        var rng = SplitMix64(seed: 2024)
        var configuration = TFTPSessionConfiguration()
        configuration.maximumRetries = 12
        var totalRetransmissions: UInt64 = 0
        var totalTimeouts: UInt64 = 0
        var completed = 0
        let transfers = 150
        for index in 0..<transfers {
            let blockSize = [8, 64, 512, 1468][index % 4]
            let window = [1, 1, 4, 16][(index / 4) % 4]
            let mode: TFTPTransferMode = index % 5 == 0 ? .netascii : .octet
            let blocks = Int.random(in: 0...40, using: &rng)
            let size = blocks * blockSize + (index % 3 == 0 ? 0 : Int.random(in: 0..<blockSize, using: &rng))
            var file = patternBytes(count: size, seed: UInt64(index))
            if mode == .netascii {
                for i in stride(from: 0, to: file.count, by: 7) { file[i] = i % 2 == 0 ? 0x0A : 0x0D }
            }
            var options: TFTPOptions = [:]
            if blockSize != 512 { options.append(name: "blksize", value: String(blockSize)) }
            if window > 1 { options.append(name: "windowsize", value: String(window)) }
            if index % 2 == 0 { options.append(name: "tsize", value: "0") }
            let network = Network(loss: [0.02, 0.1, 0.2][index % 3], duplication: 0.05, minimumDelay: 200, jitter: 1500)
            let result = transfer(file: file, mode: mode, options: options, network: network, rng: &rng, configuration: configuration)
            let expected = mode == .netascii ? netascii(file) : file
            let same = result.received == expected
            let done = result.completed
            #expect(done, "transfer \(index) (\(size) bytes, blksize \(blockSize), window \(window), \(mode)) did not complete: \(result.failure.map(String.init(describing:)) ?? "no failure")")
            if !done { continue }
            #expect(same, "transfer \(index) delivered \(result.received.count) bytes, expected \(expected.count) (or different content)")
            if result.completed, same { completed += 1 }
            totalRetransmissions += result.statistics.retransmissions
            totalTimeouts += result.statistics.timeouts
        }
        #expect(completed == transfers)
        // The network really was lossy: recovery had to happen, by time-outs and by partial ACKs.
        #expect(totalRetransmissions > 100)
        #expect(totalTimeouts > 20)
    }

    /// Issue 8's targets, in simulated time: a loopback-like link (50 µs each way) and a client that leaves
    /// all recovery to the server, as curl does (it re-sends an ACK only after 72 s). Each loss then costs
    /// one server time-out, so this bounds what the time-out floor and back-off cost per lost datagram.
    @Test("1 MiB lock-step through loss: median under 1 s at 1 %, under 3 s at 5 %", arguments: [(0.01, Int64(1000)), (0.05, Int64(3000))])
    func lockStepThroughLossMeetsTheTargets(loss: Double, limitMilliseconds: Int64) {
        var rng = SplitMix64(seed: 8)
        let file = patternBytes(count: 1 << 20)
        var times: [Int64] = []
        for _ in 0..<9 {
            let result = transfer(file: file, mode: .octet, options: ["blksize": "1468", "tsize": "0"],
                                  network: Network(loss: loss, duplication: 0, minimumDelay: 50, jitter: 0),
                                  rng: &rng, configuration: TFTPSessionConfiguration(),
                                  behaviour: ClientBehaviour(timeout: 72_000_000))
            #expect(result.completed && result.received == file, "\(result.failure.map(String.init(describing:)) ?? "wrong content")")
            times.append(result.simulatedMilliseconds)
        }
        let median = times.sorted()[times.count / 2]
        #expect(median < limitMilliseconds, "median \(median) ms at \(loss * 100) % loss; all: \(times.sorted())")
    }

    @Test("every packet duplicated: each block is sent exactly once", arguments: [(1, Int64(60)), (8, Int64(0))])
    func duplicatedAcksNeverCauseDuplicateData(window: Int, jitter: Int64) {
        // No loss, every packet delivered twice; in lock-step also reordered. A naive server answers each
        // duplicate ACK with DATA and doubles the traffic from then on (Sorcerer's Apprentice).
        var rng = SplitMix64(seed: 11)
        let file = patternBytes(count: 200 * 512 + 17)
        let network = Network(loss: 0, duplication: 1, minimumDelay: 100, jitter: jitter)
        let options: TFTPOptions = window > 1 ? ["windowsize": String(window)] : [:]
        let result = transfer(file: file, mode: .octet, options: options, network: network, rng: &rng,
                              configuration: TFTPSessionConfiguration())
        #expect(result.completed)
        #expect(result.received == file)
        #expect(result.serverDataSends == 201, "\(result.serverDataSends) DATA sends for 201 blocks")
        #expect(result.statistics.retransmissions == 0)
        #expect(result.statistics.ignoredAcknowledgements > 0)
    }

    @Test func deadClientIsGivenUpAfterBoundedRetries() {
        var rng = SplitMix64(seed: 3)
        var configuration = TFTPSessionConfiguration()
        configuration.maximumRetries = 5
        let result = transfer(file: patternBytes(count: 5000), mode: .octet, options: [:],
                              network: Network(loss: 1, duplication: 0, minimumDelay: 100, jitter: 0),
                              rng: &rng, configuration: configuration)
        #expect(!result.completed)
        #expect(result.statistics.timeouts == 6)
        // 250 + 500 + 1000 + 2000 ms of quick back-off, then two 6 s quiet periods, before giving up.
        #expect(result.simulatedMilliseconds == 15750)
    }

    /// The CI failure of 2026-11-22: atftp had the OACK, but its ACK 0 and the copy it re-sent 5 s later
    /// were both lost. An OACK repeated unasked after one quiet period (6 s) made it abort; after two, its
    /// third ACK 0 (at 10 s) comes first.
    @Test func atftpWhoseFirstTwoAcknowledgementsOfZeroAreLostCompletes() {
        var rng = SplitMix64(seed: 1)
        let file = patternBytes(count: 20_000)
        let result = transfer(file: file, mode: .octet, options: ["blksize": "1468"],
                              network: Network(loss: 0, duplication: 0, minimumDelay: 50, jitter: 0, lostAcknowledgementsOfZero: 2),
                              rng: &rng, configuration: TFTPSessionConfiguration(), behaviour: .atftp)
        #expect(result.outcome == .completed, "\(result.failure.map(String.init(describing:)) ?? "no failure")")
        #expect(result.received == file)
        #expect(result.statistics.retransmissions == 0)
        #expect(result.simulatedMilliseconds >= 10_000)
    }

    /// GRUB sends ACK 0 once. When it is lost, only a repeated OACK brings the transfer back: after two
    /// quiet periods, not never.
    @Test func grubWhoseOnlyAcknowledgementOfZeroIsLostCompletes() {
        var rng = SplitMix64(seed: 1)
        let file = patternBytes(count: 20_000)
        let result = transfer(file: file, mode: .octet, options: ["blksize": "1024", "tsize": "0"],
                              network: Network(loss: 0, duplication: 0, minimumDelay: 50, jitter: 0, lostAcknowledgementsOfZero: 1),
                              rng: &rng, configuration: TFTPSessionConfiguration(), behaviour: .grub)
        #expect(result.outcome == .completed, "\(result.failure.map(String.init(describing:)) ?? "no failure")")
        #expect(result.received == file)
        #expect(result.statistics.retransmissions == 1)  // the one OACK
        #expect((12_000..<12_100).contains(result.simulatedMilliseconds))
    }

    /// atftp drops duplicates after one extra ACK and restarts its 5 s timer on every packet, so a server
    /// that keeps repeating a block never hears from it again once that extra ACK is lost; and it aborts
    /// on a second OACK. Both made transfers fail at 5 % loss before the quiet period existed.
    @Test("atftp-like client through 5 % loss: every download completes")
    func duplicateDroppingClientThroughLoss() {
        var rng = SplitMix64(seed: 9)
        let file = patternBytes(count: 1 << 20)
        var quietRecoveries = 0
        var lostFinalAcknowledgements = 0
        for index in 0..<9 {
            let result = transfer(file: file, mode: .octet, options: ["blksize": "1468"],
                                  network: Network(loss: 0.05, duplication: 0, minimumDelay: 50, jitter: 0),
                                  rng: &rng, configuration: TFTPSessionConfiguration(), behaviour: .atftp)
            #expect(result.received == file, "transfer \(index): \(result.received.count) bytes, \(result.failure.map(String.init(describing:)) ?? "no failure")")
            #expect(result.completed, "transfer \(index): \(result.failure.map(String.init(describing:)) ?? "no outcome")")
            // atftp does not linger after the last block: when its final ACK is lost, the server sees
            // silence and reports the file delivered instead of timing out.
            if result.outcome == .delivered { lostFinalAcknowledgements += 1 }
            if result.statistics.timeouts > UInt64(TFTPSessionConfiguration().quickRetransmissions) { quietRecoveries += 1 }
        }
        // The case the quiet period exists for did happen.
        #expect(quietRecoveries > 0)
        print("atftp-like client, 9 x 1 MiB at 5 % loss: \(quietRecoveries) quiet recoveries, \(lostFinalAcknowledgements) lost final ACKs")
    }
}
