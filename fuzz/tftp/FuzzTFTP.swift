import NIOCore

// libFuzzer target over the TFTP wire format and the read-session state machine.
//
// Compiled in one module with Sources/BootProtocols/TFTP/*.swift (see run.sh), so it needs no package
// build of BootProtocols. Every check is a precondition: a violated invariant is a crash the fuzzer keeps.
//
// Input layout: byte 0 picks the part. Even: the rest is one datagram for `TFTPPacket.decode`, which must
// never trap, and whatever decodes must survive encode → decode unchanged. Odd: the rest is a header
// (request options, file size, server limits) and then a script of events (ACKs near or far from the
// window, raw datagrams, client errors, timer firings at arbitrary times) that drives a session while a
// model of the protocol checks every action it returns.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    guard let selector = bytes.first else { return 0 }
    let rest = UnsafeBufferPointer(rebasing: bytes.dropFirst())
    if selector & 1 == 0 {
        checkDecode(rest)
    } else {
        var input = FuzzInput(rest)
        SessionHarness.run(&input)
    }
    return 0
}

/// Decode must not trap; a decoded packet must come back unchanged from its own encoding, and
/// `encodedSize` must be exact.
func checkDecode(_ bytes: UnsafeBufferPointer<UInt8>) {
    let buffer = ByteBuffer(bytes: bytes)
    guard let packet = try? TFTPPacket.decode(buffer) else { return }
    checkRoundTrip(packet)
}

func checkRoundTrip(_ packet: TFTPPacket) {
    let encoded = packet.encoded()
    precondition(encoded.readableBytes == packet.encodedSize, "encodedSize \(packet.encodedSize) != \(encoded.readableBytes) for \(packet)")
    let again: TFTPPacket
    do {
        again = try TFTPPacket.decode(encoded)
    } catch {
        preconditionFailure("\(packet) encodes to bytes that do not decode: \(error)")
    }
    precondition(again == packet, "round trip changed \(packet) into \(again)")
}

/// Reads the fuzzer's bytes; past the end it yields zeros, so every input is a complete script.
struct FuzzInput {
    let bytes: UnsafeBufferPointer<UInt8>
    var position = 0

    init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    var isAtEnd: Bool { position >= bytes.count }

    mutating func byte() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func uint16() -> UInt16 { UInt16(byte()) << 8 | UInt16(byte()) }

    mutating func slice(_ count: Int) -> UnsafeBufferPointer<UInt8> {
        let end = min(bytes.count, position + count)
        defer { position = end }
        return UnsafeBufferPointer(rebasing: bytes[min(position, end)..<end])
    }
}

/// File bytes computed from the offset, so a transfer can be long (block-number rollover) without a
/// large allocation per input.
struct SyntheticContent: TFTPContentSource {
    let size: UInt64
    let seed: UInt8

    func byte(at offset: UInt64) -> UInt8 {
        // Plenty of CR and LF so netascii conversion has pairs to split across blocks.
        let value = UInt8(truncatingIfNeeded: offset &* 2_654_435_761 >> 7) ^ seed
        return value % 7 == 0 ? 0x0A : (value % 11 == 0 ? 0x0D : value)
    }

    func read(offset: UInt64, count: Int) throws(TFTPContentError) -> ByteBuffer {
        precondition(count >= 0 && offset + UInt64(count) <= size, "session read \(offset)+\(count) past size \(size)")
        var buffer = ByteBufferAllocator().buffer(capacity: count)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { pointer in
            for index in 0..<count { pointer[index] = byte(at: offset + UInt64(index)) }
            return count
        }
        return buffer
    }

    /// The whole file in netascii (LF → CR LF, CR → CR NUL).
    func netascii() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Int(size) * 2)
        for offset in 0..<size {
            let value = byte(at: offset)
            switch value {
            case 0x0A: out.append(contentsOf: [0x0D, 0x0A])
            case 0x0D: out.append(contentsOf: [0x0D, 0x00])
            default: out.append(value)
            }
        }
        return out
    }
}

/// Drives one session from the script and checks each batch of actions against a model of RFC 1350,
/// 2347 and 7440 as this server implements them.
struct SessionHarness {
    typealias Session = TFTPReadSession<SyntheticContent>

    var session: Session
    let content: SyntheticContent
    let blockSize: Int
    let windowSize: Int
    /// Expected payloads in netascii mode (small files only), else nil.
    let netascii: [UInt8]?
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    var awaitingOptionAcknowledgement: Bool
    var lastAcknowledged: UInt64 = 0
    var lastSent: UInt64 = 0
    var finalBlock: UInt64?
    var done = false
    var deadline: NIODeadline?
    var actions: [Session.Action] = []
    /// DATA payload bytes checked so far (bounds the work of one input).
    var payloadBytes = 0

    static func run(_ input: inout FuzzInput) {
        var harness = SessionHarness(&input)
        harness.apply(.start(harness.now))
        var steps = 0
        // Bounded by steps and by the DATA bytes produced: each byte is read, encoded, decoded and compared
        // under ASan and coverage, and a script of full-window ACKs over a multi-megabyte file ran past
        // libFuzzer's 10 s time-out on this machine. Rollover still fits: 65536 blocks of 8 bytes is 512 KiB.
        while !input.isAtEnd, steps < 1024, harness.payloadBytes < 2 << 20 {
            steps += 1
            harness.step(&input)
        }
        // Drain: a client that stops answering must be given up within the retry limit.
        var firings = 0
        while !harness.done, let deadline = harness.deadline {
            firings += 1
            precondition(firings <= 64, "session still running after \(firings) unanswered time-outs")
            harness.now = max(harness.now, deadline)
            harness.apply(.timerFired(harness.now))
        }
        precondition(harness.done || harness.deadline != nil, "a running session has no timer")
    }

    init(_ input: inout FuzzInput) {
        let modeByte = input.byte()
        let mode: TFTPTransferMode = modeByte % 8 == 0 ? .netascii : (modeByte % 31 == 1 ? .mail : .octet)
        let flags = input.byte()
        var options = TFTPOptions()
        if flags & 1 != 0 { options.append(name: flags & 32 != 0 ? "BlkSize" : "blksize", value: String(input.uint16())) }
        if flags & 2 != 0 { options.append(name: "windowsize", value: String(input.byte())) }
        if flags & 4 != 0 { options.append(name: "tsize", value: "0") }
        if flags & 8 != 0 { options.append(name: "timeout", value: String(input.byte())) }
        if flags & 16 != 0 {
            // A value that is not a plain decimal, or an unknown option.
            let text = String(decoding: input.slice(Int(input.byte() % 8)), as: UTF8.self).replacingNULs()
            options.append(name: flags & 64 != 0 ? "blksize" : "x-unknown", value: text)
        }
        var size = UInt64(input.byte()) << 16 | UInt64(input.uint16())
        if mode == .netascii { size %= 16_384 }
        content = SyntheticContent(size: size, seed: input.byte())

        var configuration = TFTPSessionConfiguration()
        // Bounded so one window stays below about 128 KiB: a time-out resends the whole window, and an input
        // must run in milliseconds for the fuzzer to explore. Block sizes past 2048 take no other code path.
        configuration.maximumBlockSize = Int(input.uint16() % 2049)
        configuration.maximumWindowSize = Int(input.uint16() % 64)
        configuration.minimumRetransmissionTimeout = .microseconds(Int64(input.byte()) * 500)
        configuration.initialRetransmissionTimeout = .milliseconds(Int64(input.byte()))
        configuration.maximumRetransmissionTimeout = .milliseconds(Int64(input.uint16()))
        configuration.maximumRetries = Int(input.byte() % 12)
        configuration.quickRetransmissions = Int(input.byte() % 8)
        configuration.clientRetryAllowance = .milliseconds(Int64(input.uint16()))

        let request = TFTPRequest(filename: "fuzz", mode: mode, options: options)
        session = Session(request: request, fileSize: size, content: content, configuration: configuration)
        blockSize = session.negotiated.blockSize
        windowSize = session.negotiated.windowSize
        precondition(TFTPSessionConfiguration.blockSizeRange.contains(blockSize) || blockSize == 512, "blksize \(blockSize)")
        precondition(windowSize >= 1 && windowSize <= 32767, "windowsize \(windowSize)")
        awaitingOptionAcknowledgement = session.negotiated.optionAcknowledgement != nil
        if mode == .octet { finalBlock = size / UInt64(blockSize) + 1 }
        netascii = mode == .netascii ? content.netascii() : nil
        if let netascii { finalBlock = UInt64(netascii.count / blockSize) + 1 }
        actions.reserveCapacity(windowSize + 4)
    }

    mutating func step(_ input: inout FuzzInput) {
        let operation = input.byte()
        switch operation % 10 {
        case 0, 1, 2, 3:
            // An ACK near the window: mostly news, sometimes a duplicate or from the future.
            let delta = Int64(Int8(bitPattern: input.byte()))
            let target = Int64(lastAcknowledged) + (delta >= 0 ? delta % Int64(windowSize + 2) : delta)
            acknowledge(UInt16(truncatingIfNeeded: target))
        case 4:
            acknowledge(input.uint16())
        case 5:
            // A timer firing: early, on time or late.
            let offset = Int64(Int8(bitPattern: input.byte()))
            let base = deadline ?? now
            let at = base + .microseconds(offset * 250)
            now = max(now, at)
            apply(.timerFired(now))
        case 6:
            let raw = input.slice(Int(input.byte() % 24))
            checkDecode(raw)
            if let packet = try? TFTPPacket.decode(ByteBuffer(bytes: raw)) { deliver(packet) }
        case 7:
            now = now + .microseconds(Int64(input.byte()) * 40)
        case 8:
            let choice = input.byte() % 16
            if choice == 0 {
                deliver(.error(code: TFTPErrorCode(rawValue: UInt16(input.byte())), message: "client gave up"))
            } else if choice < 8 {
                apply(.requestRepeated(now))  // the client did not hear the first answer
            } else {
                apply(.start(now))  // a second start must change nothing
            }
        default:
            // The client's whole-window ACK, the common case.
            acknowledge(UInt16(truncatingIfNeeded: lastSent))
        }
    }

    mutating func acknowledge(_ block: UInt16) {
        deliver(.acknowledgement(block: block))
    }

    mutating func deliver(_ packet: TFTPPacket) {
        apply(.packet(packet, now))
    }

    mutating func apply(_ event: Session.Event) {
        let wasDone = done
        let before = (acknowledged: lastAcknowledged, sent: lastSent)
        var expectation = Expectation.any
        if case .packet(.acknowledgement(let block), _) = event, !done {
            if awaitingOptionAcknowledgement {
                expectation = block == 0 ? .any : .silent
            } else {
                let distance = UInt64(block &- UInt16(truncatingIfNeeded: lastAcknowledged))
                if distance == 0 || distance > lastSent - lastAcknowledged {
                    expectation = .silent  // duplicate or stale: no Sorcerer's Apprentice
                } else {
                    lastAcknowledged += distance
                    expectation = lastAcknowledged == finalBlock ? .completes : .any
                }
            }
            if awaitingOptionAcknowledgement, block == 0 { awaitingOptionAcknowledgement = false }
        }

        actions.removeAll(keepingCapacity: true)
        session.handle(event, into: &actions)

        if wasDone {
            precondition(actions.isEmpty, "actions after the session ended: \(actions)")
            return
        }
        var sentData = false
        for action in actions {
            precondition(!done, "action \(action) after finish/fail in the same batch")
            switch action {
            case .send(let packet):
                checkRoundTrip(packet)
                switch packet {
                case .data(let number, let payload):
                    precondition(expectation != .silent, "a duplicate or stale ACK caused DATA \(number)")
                    precondition(expectation != .completes, "DATA \(number) after the final ACK")
                    precondition(!awaitingOptionAcknowledgement, "DATA before the OACK was acknowledged")
                    checkData(number, payload)
                    sentData = true
                case .optionAcknowledgement(let options):
                    precondition(lastSent == 0, "OACK after DATA")
                    precondition(options == session.negotiated.optionAcknowledgement, "OACK differs from the negotiation")
                case .error:
                    break  // followed by .fail, checked there
                default:
                    preconditionFailure("server sent \(packet)")
                }
            case .armTimer(let at):
                precondition(at > now, "timer armed in the past: \(at) <= \(now)")
                deadline = at
            case .finish(let outcome):
                done = true
                deadline = nil
                if case .completed = outcome {
                    precondition(expectation == .completes, "completed without the final ACK")
                    precondition(session.statistics.bytesAcknowledged == content.size || netascii != nil,
                                 "completed with \(session.statistics.bytesAcknowledged) of \(content.size) bytes")
                }
            case .fail:
                done = true
                deadline = nil
                if case .packet(.acknowledgement, _) = event { preconditionFailure("an ACK made the session fail") }
            }
        }
        if expectation == .completes { precondition(done, "final ACK did not complete the transfer") }
        precondition(session.isDone == done, "isDone \(session.isDone) but actions say \(done)")
        precondition(lastSent - lastAcknowledged <= UInt64(windowSize), "\(lastSent - lastAcknowledged) blocks in flight, window \(windowSize)")
        precondition(lastSent >= before.sent && lastAcknowledged >= before.acknowledged)
        if !done, !awaitingOptionAcknowledgement, lastAcknowledged == lastSent, expectation == .any,
           case .packet(.acknowledgement, _) = event {
            precondition(sentData, "all sent blocks acknowledged but nothing new was sent")
        }
    }

    enum Expectation { case any, silent, completes }

    /// The 16-bit number must name a block inside the window, and the payload must be that block's bytes.
    mutating func checkData(_ number: UInt16, _ payload: ByteBuffer) {
        let offset = UInt64(number &- UInt16(truncatingIfNeeded: lastAcknowledged + 1))
        precondition(offset < UInt64(windowSize), "DATA \(number) outside the window after \(lastAcknowledged)")
        let block = lastAcknowledged + 1 + offset
        if let finalBlock { precondition(block <= finalBlock, "DATA \(block) past the final block \(finalBlock)") }
        lastSent = max(lastSent, block)
        payloadBytes += payload.readableBytes
        let start = (block - 1) * UInt64(blockSize)
        if let netascii {
            let from = Int(start), to = min(netascii.count, from + blockSize)
            precondition(from <= netascii.count, "netascii block \(block) starts past the end")
            precondition(payload.readableBytesView.elementsEqual(netascii[from..<to]), "netascii block \(block) has wrong bytes")
        } else {
            let expected = Int(min(UInt64(blockSize), content.size - min(start, content.size)))
            precondition(payload.readableBytes == expected, "block \(block): \(payload.readableBytes) bytes, expected \(expected)")
            // Sampled (ends plus a stride prime to any block size that matters): a block from the wrong offset
            // differs in nearly every byte, and checking every byte under ASan and coverage made long
            // scripts take seconds, over libFuzzer's time-out.
            let view = payload.readableBytesView
            let count = view.count
            var position = 0
            while position < count {
                let index = start + UInt64(position)
                precondition(view[view.startIndex + position] == content.byte(at: index), "block \(block): wrong byte at \(index)")
                position = position < 4 || position >= count - 4 ? position + 1 : min(position + 61, count - 4)
            }
        }
    }
}

extension String {
    fileprivate func replacingNULs() -> String {
        String(decoding: utf8.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
    }
}
