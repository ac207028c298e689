import BootProtocols
import NIOCore
import Testing

@Suite("TFTP option negotiation")
struct TFTPNegotiationTests {
    private func negotiate(_ options: TFTPOptions, mode: TFTPTransferMode = .octet, size: UInt64 = 1000,
                           configure: (inout TFTPSessionConfiguration) -> Void = { _ in }) -> TFTPNegotiatedOptions {
        var configuration = TFTPSessionConfiguration()
        configure(&configuration)
        return .negotiate(TFTPRequest(filename: "f", mode: mode, options: options), fileSize: size, configuration: configuration)
    }

    @Test func noOptionsMeansNoOACKAndRFC1350Defaults() {
        let result = negotiate([:])
        #expect(result.optionAcknowledgement == nil)
        #expect(result.blockSize == 512)
        #expect(result.windowSize == 1)
    }

    @Test func unknownOptionsAloneGiveNoOACK() {
        #expect(negotiate(["utimeout": "1000", "rollover": "0", "multicast": ""]).optionAcknowledgement == nil)
    }

    @Test("blksize is clamped or ignored", arguments: [
        ("512", 512, "512"), ("1468", 1468, "1468"), ("8", 8, "8"), ("65464", 1468, "1468"), ("9000", 1468, "1468"),
        ("7", 512, nil), ("0", 512, nil), ("abc", 512, nil), ("+512", 512, nil), (" 512", 512, nil), ("99999999999999999999", 512, nil),
    ] as [(String, Int, String?)])
    func blockSize(requested: String, granted: Int, acknowledged: String?) {
        let result = negotiate(["blksize": requested])
        #expect(result.blockSize == granted)
        #expect(result.optionAcknowledgement?["blksize"] == acknowledged)
    }

    @Test func blockSizeCeilingIsConfigurableButNeverAboveRFC2348() {
        #expect(negotiate(["blksize": "9000"], configure: { $0.maximumBlockSize = 8192 }).blockSize == 8192)
        #expect(negotiate(["blksize": "65464"], configure: { $0.maximumBlockSize = 100_000 }).blockSize == 65464)
    }

    @Test func windowSizeIsClamped() {
        #expect(negotiate(["windowsize": "16"]).windowSize == 16)
        #expect(negotiate(["windowsize": "1000"]).windowSize == 64)
        #expect(negotiate(["windowsize": "1000"], configure: { $0.maximumWindowSize = 8 }).optionAcknowledgement?["windowsize"] == "8")
        #expect(negotiate(["windowsize": "0"]).optionAcknowledgement == nil)
    }

    @Test func transferSizeReportsRealSizeInOctetModeOnly() {
        #expect(negotiate(["tsize": "0"], size: 123_456).optionAcknowledgement?["tsize"] == "123456")
        #expect(negotiate(["tsize": "0"], size: 123_456).transferSize == 123_456)
        #expect(negotiate(["tsize": "0"], mode: .netascii).optionAcknowledgement == nil)
        // An empty file gets no tsize (curl rejects "tsize 0"); with nothing else accepted there is no OACK.
        #expect(negotiate(["tsize": "0"], size: 0).optionAcknowledgement == nil)
        #expect(negotiate(["tsize": "0", "blksize": "1468"], size: 0).optionAcknowledgement == ["blksize": "1468"])
    }

    @Test func timeoutAcceptedOnlyInRange() {
        #expect(negotiate(["timeout": "1"]).clientTimeout == .seconds(1))
        #expect(negotiate(["timeout": "255"]).optionAcknowledgement?["timeout"] == "255")
        #expect(negotiate(["timeout": "0"]).optionAcknowledgement == nil)
        #expect(negotiate(["timeout": "256"]).optionAcknowledgement == nil)
    }

    @Test func answersInClientOrderWithFirstOfDuplicates() {
        let options = TFTPOptions([
            TFTPOption(name: "TSIZE", value: "0"), TFTPOption(name: "foo", value: "1"),
            TFTPOption(name: "BlkSize", value: "1024"), TFTPOption(name: "blksize", value: "600"),
        ])
        let oack = negotiate(options, size: 5).optionAcknowledgement
        #expect(oack?.options == [TFTPOption(name: "tsize", value: "5"), TFTPOption(name: "blksize", value: "1024")])
    }
}

@Suite("TFTP retransmission timer (RFC 6298)")
struct TFTPRetransmissionTimerTests {
    @Test func firstSampleThenSmoothing() {
        var timer = TFTPRetransmissionTimer(initial: .milliseconds(250), minimum: .milliseconds(50), maximum: .seconds(2))
        #expect(timer.timeout == .milliseconds(250))
        timer.addSample(.milliseconds(100))
        #expect(timer.smoothedRoundTripTime == .milliseconds(100))
        #expect(timer.roundTripTimeVariation == .milliseconds(50))
        #expect(timer.timeout == .milliseconds(300))
        timer.addSample(.milliseconds(20))
        // RTTVAR = 3/4*50 + 1/4*80 = 57.5; SRTT = 7/8*100 + 1/8*20 = 90; RTO = 90 + 230 = 320
        #expect(timer.roundTripTimeVariation == .microseconds(57_500))
        #expect(timer.smoothedRoundTripTime == .milliseconds(90))
        #expect(timer.timeout == .milliseconds(320))
    }

    @Test func clampedToFloorAndCeiling() {
        var timer = TFTPRetransmissionTimer(initial: .seconds(10), minimum: .milliseconds(50), maximum: .seconds(1))
        #expect(timer.timeout == .seconds(1))
        timer.addSample(.microseconds(200))
        #expect(timer.timeout == .milliseconds(50))
        timer.addSample(.seconds(30))
        #expect(timer.timeout == .seconds(1))
    }

    @Test func backOffDoublesUpToMaximumAndSampleResetsIt() {
        var timer = TFTPRetransmissionTimer(initial: .milliseconds(250), minimum: .milliseconds(50), maximum: .seconds(2))
        var seen: [TimeAmount] = []
        for _ in 0..<5 {
            timer.backOff()
            seen.append(timer.timeout)
        }
        #expect(seen == [.milliseconds(500), .seconds(1), .seconds(2), .seconds(2), .seconds(2)])
        timer.addSample(.milliseconds(10))
        #expect(timer.timeout == .milliseconds(50))
    }
}

@Suite("TFTP netascii")
struct TFTPNetasciiTests {
    @Test func convertsLineEndsAcrossBlockBoundaries() throws {
        // 7 plain bytes then LF: the CR ends block 1 and its LF opens block 2; same for the CR NUL pair.
        let file = Array("1234567\n89abcde\rX".utf8)
        let content = TFTPBufferContent(file)
        var cursor = TFTPNetascii.Cursor()
        var blocks: [[UInt8]] = []
        while true {
            let (payload, next) = try TFTPNetascii.encodeBlock(from: cursor, blockSize: 8, fileSize: UInt64(file.count), content: content)
            blocks.append(Array(buffer: payload))
            cursor = next
            if payload.readableBytes < 8 { break }
        }
        #expect(blocks == [
            Array("1234567\r".utf8), Array("\n89abcde".utf8), [0x0D, 0x00] + Array("X".utf8),
        ])
        #expect(blocks.flatMap { $0 } == netascii(file))
    }

    @Test func randomFilesMatchReferenceConversion() throws {
        var rng = SplitMix64(seed: 42)
        for _ in 0..<200 {
            let size = Int.random(in: 0...300, using: &rng)
            let file = (0..<size).map { _ in [0x0A, 0x0D, 0x41, 0x00][Int.random(in: 0...3, using: &rng)] as UInt8 }
            let blockSize = Int.random(in: 8...20, using: &rng)
            var cursor = TFTPNetascii.Cursor()
            var wire: [UInt8] = []
            while true {
                let (payload, next) = try TFTPNetascii.encodeBlock(from: cursor, blockSize: blockSize, fileSize: UInt64(size), content: TFTPBufferContent(file))
                wire += Array(buffer: payload)
                cursor = next
                if payload.readableBytes < blockSize { break }
            }
            #expect(wire == netascii(file))
        }
    }
}
