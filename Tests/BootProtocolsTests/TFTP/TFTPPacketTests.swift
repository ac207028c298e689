import BootProtocols
import NIOCore
import Testing

@Suite("TFTP packet codec")
struct TFTPPacketTests {
    private func bytes(_ parts: [UInt8]...) -> ByteBuffer {
        ByteBuffer(bytes: parts.flatMap { $0 })
    }

    private func ascii(_ string: String) -> [UInt8] { Array(string.utf8) + [0] }

    @Test("every packet kind survives encode then decode", arguments: [
        TFTPPacket.readRequest(TFTPRequest(filename: "pxelinux.0", mode: .octet, options: ["tsize": "0", "blksize": "1468"])),
        .writeRequest(TFTPRequest(filename: "upload.bin", mode: .netascii)),
        .data(block: 65535, payload: ByteBuffer(bytes: [1, 2, 3, 0, 255])),
        .data(block: 0, payload: ByteBuffer()),
        .acknowledgement(block: 0),
        .acknowledgement(block: 42),
        .error(code: .fileNotFound, message: "no such file"),
        .error(code: .unassigned(99), message: ""),
        .optionAcknowledgement(["blksize": "1468", "tsize": "123456"]),
    ])
    func roundTrip(packet: TFTPPacket) throws {
        let wire = packet.encoded()
        #expect(wire.readableBytes == packet.encodedSize)
        #expect(try TFTPPacket.decode(wire) == packet)
    }

    @Test func readRequestWireFormat() throws {
        let wire = bytes([0, 1], ascii("boot/vmlinuz"), ascii("OcTeT"), ascii("BLKSIZE"), ascii("1468"), ascii("TSize"), ascii("0"))
        guard case .readRequest(let request) = try TFTPPacket.decode(wire) else {
            Issue.record("not an RRQ")
            return
        }
        #expect(request.filename == "boot/vmlinuz")
        #expect(request.mode == .octet)
        #expect(request.options["blksize"] == "1468")
        #expect(request.options["BlkSize"] == "1468")
        #expect(request.options["tsize"] == "0")
        #expect(request.options.options.map(\.name) == ["blksize", "tsize"])
    }

    @Test func encodedBytesMatchRFC() {
        #expect(Array(buffer: TFTPPacket.acknowledgement(block: 0x0102).encoded()) == [0, 4, 1, 2])
        #expect(Array(buffer: TFTPPacket.error(code: .optionNegotiationFailed, message: "x").encoded()) == [0, 5, 0, 8, 0x78, 0])
        #expect(Array(buffer: TFTPPacket.optionAcknowledgement(["tsize": "7"]).encoded()) == [0, 6] + ascii("tsize") + ascii("7"))
        #expect(Array(buffer: TFTPPacket.data(block: 3, payload: ByteBuffer(bytes: [9])).encoded()) == [0, 3, 0, 3, 9])
    }

    @Test func requestPaddedWithNULsIsAccepted() throws {
        let wire = bytes([0, 1], ascii("a"), ascii("octet"), [0, 0, 0])
        #expect(try TFTPPacket.decode(wire) == .readRequest(TFTPRequest(filename: "a", mode: .octet)))
    }

    @Test func errorWithoutTerminatorIsAccepted() throws {
        let wire = bytes([0, 5, 0, 8], Array("abort".utf8))
        #expect(try TFTPPacket.decode(wire) == .error(code: .optionNegotiationFailed, message: "abort"))
    }

    /// Built step by step: one big literal of tuples is too much for the type checker.
    static let malformedCases: [([UInt8], TFTPDecodeError)] = {
        func z(_ string: String) -> [UInt8] { Array(string.utf8) + [0] }
        let request: [UInt8] = [0, 1] + z("a") + z("octet")
        var cases: [([UInt8], TFTPDecodeError)] = []
        cases.append(([], .truncated(opcode: nil, field: "opcode", needed: 2, available: 0)))
        cases.append(([0], .truncated(opcode: nil, field: "opcode", needed: 2, available: 1)))
        cases.append(([0, 9, 1, 2], .unknownOpcode(9)))
        cases.append(([0, 0], .unknownOpcode(0)))
        cases.append(([0, 1] + Array("file".utf8), .unterminated(opcode: .readRequest, field: "filename")))
        cases.append(([0, 1, 0] + z("octet"), .emptyFilename(opcode: .readRequest)))
        cases.append(([0, 1] + z("a") + Array("octet".utf8), .unterminated(opcode: .readRequest, field: "mode")))
        cases.append(([0, 1] + z("a") + z("binary"), .unknownMode("binary")))
        cases.append(([0, 2, 0xff, 0xfe, 0] + z("octet"), .invalidUTF8(opcode: .writeRequest, field: "filename")))
        cases.append((request + z("blksize"), .optionWithoutValue(opcode: .readRequest, name: "blksize")))
        cases.append((request + z("blksize") + [0x35], .unterminated(opcode: .readRequest, field: "value of option 'blksize'")))
        cases.append((request + [0, 0x31, 0], .emptyOptionName(opcode: .readRequest)))
        cases.append(([0, 3, 0], .truncated(opcode: .data, field: "block number", needed: 2, available: 1)))
        cases.append(([0, 4, 0], .truncated(opcode: .acknowledgement, field: "block number", needed: 2, available: 1)))
        cases.append(([0, 4, 0, 1, 0], .trailingBytes(opcode: .acknowledgement, count: 1)))
        cases.append(([0, 5, 0], .truncated(opcode: .error, field: "error code", needed: 2, available: 1)))
        cases.append(([0, 6] + Array("tsize".utf8), .unterminated(opcode: .optionAcknowledgement, field: "option name")))
        return cases
    }()

    @Test("malformed input gives a decode error with a reason", arguments: malformedCases)
    func malformed(wire: [UInt8], expected: TFTPDecodeError) {
        #expect(throws: expected) { try TFTPPacket.decode(ByteBuffer(bytes: wire)) }
        #expect(!expected.description.isEmpty)
    }

    @Test func randomGarbageNeverCrashes() {
        var rng = SplitMix64(seed: 7)
        for _ in 0..<5_000 {
            let length = Int.random(in: 0...40, using: &rng)
            var bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if bytes.count >= 2 { bytes[0] = 0; bytes[1] = UInt8.random(in: 0...7, using: &rng) }
            _ = try? TFTPPacket.decode(ByteBuffer(bytes: bytes))
        }
    }

    @Test func errorCodesHaveNamesAndRoundTrip() {
        for raw in UInt16(0)...12 {
            let code = TFTPErrorCode(rawValue: raw)
            #expect(code.rawValue == raw)
            #expect(code.description.contains("(\(raw))"))
        }
        #expect(TFTPErrorCode(rawValue: 1) == .fileNotFound)
        #expect(TFTPErrorCode(rawValue: 8).description == "option negotiation failed (8)")
        #expect(TFTPErrorCode(rawValue: 9) == .unassigned(9))
    }
}
