@testable import BootProtocols
import NIOCore
import Testing

/// A minimal valid request: BOOTP header, cookie, the given option bytes (caller adds End).
func dhcpRawPacket(op: UInt8 = 1, hlen: UInt8 = 6, sname: [UInt8] = [], file: [UInt8] = [], options: [UInt8]) -> [UInt8] {
    var p = [UInt8](repeating: 0, count: 236)
    p[0] = op; p[1] = 1; p[2] = hlen
    p[4] = 0xde; p[5] = 0xad; p[6] = 0xbe; p[7] = 0xef
    p[28] = 0x52; p[29] = 0x54; p[33] = 0x01
    for (i, b) in sname.enumerated() { p[44 + i] = b }
    for (i, b) in file.enumerated() { p[108 + i] = b }
    return p + [99, 130, 83, 99] + options
}

func dhcpSampleRequest() -> DHCPMessage {
    var m = DHCPMessage(
        op: .bootRequest, xid: 0x1234_5678, chaddr: DHCPHardwareAddress(MACAddress(0x52, 0x54, 0, 0, 0, 1)),
        hops: 1, secs: 4, flags: .broadcast, giaddr: IPv4Address(192, 0, 2, 254))
    m.options.set(.messageType(.discover))
    m.options.set(.maximumMessageSize(1472))
    m.options.set(.clientSystemArchitecture([.x64UEFI]))
    m.options.set(.vendorClassIdentifier(Array("PXEClient:Arch:00007:UNDI:003000".utf8)))
    m.options.set(.parameterRequestList([.subnetMask, .router, .bootfileName]))
    m.options.set(.clientMachineIdentifier(type: 0, identifier: Array(0..<16)))
    m.options.set(.clientNetworkInterface(type: 1, major: 3, minor: 0))
    return m
}

@Suite struct DHCPCodecTests {
    @Test func roundTripsAHeaderAndOptions() throws {
        let m = dhcpSampleRequest()
        let bytes = try m.encoded()
        #expect(bytes.count == 240 + 72 + 3)  // options + End, no padding needed
        let back = try DHCPMessage(decoding: bytes)
        #expect(back == m)
        #expect(back.options.clientArchitecture == .x64UEFI)
        #expect(back.options.maximumMessageSize == 1472)
        #expect(back.clientMAC?.description == "52:54:00:00:00:01")
        // Fixed header positions (RFC 2131 §2).
        #expect(bytes[0] == 1 && bytes[3] == 1 && bytes[4...7].elementsEqual([0x12, 0x34, 0x56, 0x78]))
        #expect(bytes[10] == 0x80 && bytes[24...27].elementsEqual([192, 0, 2, 254]))
        #expect(bytes[236...239].elementsEqual([99, 130, 83, 99]))
        #expect(bytes[240...242].elementsEqual([53, 1, 1]))
    }

    @Test func shortMessagesArePaddedToTheBOOTPMinimum() throws {
        var m = DHCPMessage(op: .bootReply, xid: 9, chaddr: DHCPHardwareAddress())
        m.options.set(.messageType(.nak))
        let bytes = try m.encoded()
        #expect(bytes.count == DHCPMessage.minimumBOOTPLength)
        #expect(bytes[240...243].elementsEqual([53, 1, 6, 255]) && bytes[244...].allSatisfy { $0 == 0 })
        #expect(try DHCPMessage(decoding: bytes) == m)
    }

    @Test func decodesFromByteBufferAndEncodesIntoOne() throws {
        var buffer = ByteBuffer()
        buffer.writeString("prefix")
        buffer.moveReaderIndex(forwardBy: 6)
        try dhcpSampleRequest().encode(into: &buffer)
        #expect(try DHCPMessage(decoding: buffer) == dhcpSampleRequest())
    }

    @Test(arguments: [
        DHCPOption.subnetMask(IPv4Address(255, 255, 255, 0)), .router([IPv4Address(192, 0, 2, 1), IPv4Address(192, 0, 2, 2)]),
        .domainNameServer([IPv4Address(192, 0, 2, 53)]), .hostName("node-01"), .domainName("cluster.example"),
        .vendorSpecific([6, 1, 8, 255]), .requestedIPAddress(IPv4Address(192, 0, 2, 9)), .leaseTime(3600),
        .messageType(.inform), .serverIdentifier(IPv4Address(192, 0, 2, 1)),
        .parameterRequestList([.subnetMask, DHCPOptionCode(252)]), .message("nope"), .maximumMessageSize(1500),
        .renewalTime(1800), .rebindingTime(3150), .vendorClassIdentifier(Array("HTTPClient".utf8)),
        .clientIdentifier([1, 0x52, 0x54, 0, 0, 0, 1]), .tftpServerName("192.0.2.1"), .bootfileName("pxelinux.0"),
        .userClass(Array("iPXE".utf8)), .rapidCommit, .clientSystemArchitecture([.x86BIOS, .arm64UEFI]),
        .clientNetworkInterface(type: 1, major: 2, minor: 1), .clientMachineIdentifier(type: 0, identifier: Array(0..<16)),
        .raw(code: DHCPOptionCode(224), data: [1, 2, 3]), .raw(code: DHCPOptionCode(225), data: []),
        .optionOverload(.both),
    ])
    func everyTypedOptionRoundTrips(option: DHCPOption) throws {
        var options = DHCPOptions()
        options.set(option)
        #expect(Array(options) == [option])
        #expect(options.contains(option.code))
        if option.code == .optionOverload { return }  // framing: the encoder owns option 52
        var m = DHCPMessage(op: .bootReply, xid: 1, chaddr: DHCPHardwareAddress())
        m.options = options
        #expect(try DHCPMessage(decoding: m.encoded()).options == options)
    }

    @Test(arguments: [
        (DHCPOptionCode.subnetMask, [UInt8]([255, 255, 0])), (.router, [1, 2, 3, 4, 5]), (.messageType, [1, 1]),
        (.messageType, [0]), (.leaseTime, [0, 0, 1]), (.rapidCommit, [1]), (.clientSystemArchitecture, [0]),
        (.hostName, [0xff, 0xfe]), (.optionOverload, [4]),
    ])
    func wrongLengthsDecodeAsRaw(code: DHCPOptionCode, data: [UInt8]) {
        #expect(DHCPOption(code: code, data: data) == .raw(code: code, data: data))
    }

    @Test func setReplacesInPlaceAndRemoveWorks() {
        var options = DHCPOptions([.messageType(.discover), .hostName("a"), .leaseTime(5)])
        options.set(.hostName("longer"))
        #expect(options.codes == [.messageType, .leaseTime, .hostName])
        #expect(options.hostName == "longer")
        options.remove(.leaseTime)
        #expect(options.codes == [.messageType, .hostName] && options.count == 2 && !options.contains(.leaseTime))
        options.remove(.leaseTime)
        #expect(options.count == 2)
    }

    @Test func userClassIPXEDetection() {
        #expect(DHCPOptions([.userClass(Array("iPXE".utf8))]).userClassIsIPXE)
        #expect(DHCPOptions([.userClass([4] + Array("iPXE".utf8))]).userClassIsIPXE)  // RFC 3004 form
        #expect(DHCPOptions([.userClass([3, 0x61, 0x62, 0x63, 4] + Array("iPXE".utf8))]).userClassIsIPXE)
        #expect(!DHCPOptions([.userClass(Array("gPXE".utf8))]).userClassIsIPXE)
        #expect(!DHCPOptions([.userClass([9, 1])]).userClassIsIPXE)
        #expect(!DHCPOptions().userClassIsIPXE)
    }

    @Test func vendorClassPrefix() {
        let options = DHCPOptions([.vendorClassIdentifier(Array("PXEClient:Arch:00000:UNDI:002001".utf8))])
        #expect(options.vendorClassHasPrefix("PXEClient"))
        #expect(!options.vendorClassHasPrefix("HTTPClient"))
        #expect(!DHCPOptions([.vendorClassIdentifier(Array("PXE".utf8))]).vendorClassHasPrefix("PXEClient"))
    }

    @Test func repeatedOptionsConcatenate() throws {
        // RFC 3396: two instances of option 77 are one value.
        let m = try DHCPMessage(decoding: dhcpRawPacket(options: [53, 1, 1, 77, 2, 0x69, 0x50, 12, 1, 0x61, 77, 2, 0x58, 0x45, 255]))
        #expect(m.options.userClass.map(Array.init) == Array("iPXE".utf8))
        #expect(m.options.codes == [.messageType, .userClass, .hostName])
    }

    @Test func longOptionsSplitOnEncodeAndJoinOnDecode() throws {
        var m = DHCPMessage(op: .bootReply, xid: 1, chaddr: DHCPHardwareAddress())
        let long = (0..<300).map { UInt8($0 % 251) }
        m.options.setRaw(DHCPOptionCode(224), long)
        let bytes = try m.encoded(maxMessageSize: 1500)
        #expect(bytes[240] == 224 && bytes[241] == 255 && bytes[240 + 257] == 224 && bytes[240 + 258] == 45)
        #expect(try DHCPMessage(decoding: bytes).options[DHCPOptionCode(224)].map(Array.init) == long)
    }

    @Test func sname_and_file_are_C_strings() throws {
        let m = try DHCPMessage(decoding: dhcpRawPacket(sname: Array("srv\0junk".utf8), file: Array("boot/x.efi".utf8), options: [53, 1, 2, 255]))
        #expect(m.serverHostName == "srv" && m.bootFileName == "boot/x.efi")
        var full = m
        full.file = [UInt8](repeating: 0x41, count: 128)
        #expect(try DHCPMessage(decoding: full.encoded()).file.count == 128)
        full.file.append(0x41)
        #expect(throws: DHCPError.fieldTooLong(field: "file", length: 129, maximum: 128)) { try full.encoded() }
    }

    // MARK: Malformed input

    struct Malformed: Sendable, CustomTestStringConvertible {
        var name: String
        var bytes: [UInt8]
        var error: DHCPError
        init(_ name: String, _ bytes: [UInt8], _ error: DHCPError) {
            self.name = name
            self.bytes = bytes
            self.error = error
        }
        var testDescription: String { name }
    }

    @Test(arguments: [
        Malformed("empty", [], .truncated(length: 0, minimum: 240)),
        Malformed("one byte short of the cookie", [UInt8](repeating: 1, count: 239), .truncated(length: 239, minimum: 240)),
        Malformed("bad magic cookie", Array(dhcpRawPacket(options: [53, 1, 1, 255]).prefix(236)) + [0x63, 0x82, 0x53, 0x64], .badMagicCookie(0x6382_5364)),
        Malformed("bad op", dhcpRawPacket(op: 3, options: [255]), .badOpcode(3)),
        Malformed("hlen past chaddr", dhcpRawPacket(hlen: 17, options: [255]), .badHardwareAddressLength(17)),
        Malformed("no End", dhcpRawPacket(options: [53, 1, 1]), .missingEnd(area: .options)),
        Malformed("cookie only", dhcpRawPacket(options: []), .missingEnd(area: .options)),
        Malformed("pads only", dhcpRawPacket(options: [0, 0, 0]), .missingEnd(area: .options)),
        Malformed("length past the end", dhcpRawPacket(options: [53, 1, 1, 12, 5, 0x61]), .optionOverrun(code: 12, offset: 243, length: 5, area: .options)),
        Malformed("length byte missing", dhcpRawPacket(options: [53, 1, 1, 12]), .optionOverrun(code: 12, offset: 243, length: 1, area: .options)),
        Malformed("overload value 0", dhcpRawPacket(options: [52, 1, 0, 255]), .badOptionOverload(offset: 240)),
        Malformed("overload value 4", dhcpRawPacket(options: [52, 1, 4, 255]), .badOptionOverload(offset: 240)),
        Malformed("overload length 2", dhcpRawPacket(options: [52, 2, 1, 1, 255]), .badOptionOverload(offset: 240)),
        Malformed("overload twice", dhcpRawPacket(options: [52, 1, 1, 52, 1, 1, 255]), .badOptionOverload(offset: 243)),
        Malformed("overloaded file without End", dhcpRawPacket(file: [12, 1, 0x61], options: [52, 1, 1, 255]), .missingEnd(area: .file)),
        Malformed("overrun inside overloaded sname", dhcpRawPacket(sname: [12, 70], options: [52, 1, 2, 255]), .optionOverrun(code: 12, offset: 44, length: 70, area: .sname)),
    ])
    func malformedPacketsFailWithAReason(_ c: Malformed) {
        #expect(throws: c.error) { try DHCPMessage(decoding: c.bytes) }
        #expect(!c.error.description.isEmpty)
    }

    @Test func truncationAtEveryLengthNeverCrashes() throws {
        // Every prefix of a real packet either decodes or throws a DHCPError; none traps.
        let full = try dhcpSampleRequest().encoded()
        for n in 0...full.count {
            _ = try? DHCPMessage(decoding: Array(full.prefix(n)))
        }
        // Deterministic byte noise in the options area: decode stays bounded and typed.
        var state: UInt32 = 0x2545_F491
        for _ in 0..<2000 {
            var bytes = full
            for i in 240..<bytes.count {
                state ^= state << 13; state ^= state >> 17; state ^= state << 5
                bytes[i] = UInt8(truncatingIfNeeded: state)
            }
            do { _ = try DHCPMessage(decoding: bytes) } catch { #expect(!error.description.isEmpty) }
        }
    }

    @Test func overloadedFieldsAreReadInRFC3396Order() throws {
        let m = try DHCPMessage(decoding: dhcpRawPacket(
            sname: [77, 2, 0x58, 0x45, 255], file: [12, 1, 0x61, 77, 2, 0x69, 0x50, 255],
            options: [53, 1, 1, 52, 1, 3, 255]))
        #expect(m.options.hostName == "a")
        #expect(m.options.userClass.map(Array.init) == Array("iPXE".utf8))  // options, file, then sname
        #expect(m.sname.isEmpty && m.file.isEmpty)
        #expect(!m.options.contains(.optionOverload))
    }

    @Test func overloadInsideAnOverloadedFieldDoesNotLoop() throws {
        // file says "overload sname+file" again: ignored, so each area is read exactly once.
        let m = try DHCPMessage(decoding: dhcpRawPacket(file: [52, 1, 3, 12, 1, 0x62, 255], options: [53, 1, 1, 52, 1, 1, 255]))
        #expect(m.options.hostName == "b")
        #expect(m.options.codes == [.messageType, .hostName])
    }

    @Test func padAfterEndAndTrailingGarbageAreIgnored() throws {
        let m = try DHCPMessage(decoding: dhcpRawPacket(options: [0, 0, 53, 1, 3, 255, 12, 99]))
        #expect(m.messageType == .request && m.options.count == 1)
    }

    // MARK: Size limits

    @Test func encoderOverloadsFileThenSnameWithinMaxMessageSize() throws {
        var m = DHCPMessage(op: .bootReply, xid: 7, chaddr: DHCPHardwareAddress())
        m.options.set(.messageType(.ack))
        for code in UInt8(224)...UInt8(226) { m.options.setRaw(DHCPOptionCode(code), [UInt8](repeating: code, count: 120)) }
        // 3 + 3*122 + 1 = 370 bytes of options > 308 available in a 576-byte message.
        let bytes = try m.encoded()
        #expect(bytes.count == 548)
        #expect(bytes[240...242].elementsEqual([52, 1, 1]))  // file only was enough
        let back = try DHCPMessage(decoding: bytes)
        #expect(back.options == m.options)
        #expect(back.file.isEmpty)

        // A larger allowance needs no overload.
        let roomy = try m.encoded(maxMessageSize: 1500)
        #expect(roomy.count == 240 + 370 && roomy[240] == 53)

        m.options.setRaw(DHCPOptionCode(227), [UInt8](repeating: 1, count: 100))
        let both = try m.encoded()
        #expect(both[242] == 3)
        #expect(try DHCPMessage(decoding: both).options == m.options)

        // A used file field is not available for overloading.
        m.file = Array("pxelinux.0".utf8)
        #expect(throws: DHCPError.self) { try m.encoded() }
        let decoded = try DHCPMessage(decoding: m.encoded(maxMessageSize: 1500))
        #expect(decoded == m)
    }

    @Test func aStoredOverloadOptionIsNeverWritten() throws {
        var m = DHCPMessage(op: .bootReply, xid: 7, chaddr: DHCPHardwareAddress())
        m.options.set(.messageType(.ack))
        m.options.set(.optionOverload(.both))
        let bytes = try m.encoded()
        #expect(bytes[240...243].elementsEqual([53, 1, 5, 255]))
        m.options.remove(.optionOverload)
        #expect(try DHCPMessage(decoding: bytes) == m)
    }

    @Test func optionsThatCannotFitThrow() {
        var m = DHCPMessage(op: .bootReply, xid: 7, chaddr: DHCPHardwareAddress())
        m.options.setRaw(DHCPOptionCode(224), [UInt8](repeating: 1, count: 2000))
        #expect(throws: DHCPError.self) { try m.encoded(maxMessageSize: 1500) }
    }

    @Test func encodingNeverExceedsTheLimitAndAlwaysDecodes() throws {
        // Sweep sizes across the area boundaries: every encodable message stays within the limit and round-trips.
        for size in stride(from: 0, through: 520, by: 7) {
            var m = DHCPMessage(op: .bootReply, xid: 7, chaddr: DHCPHardwareAddress())
            m.options.set(.messageType(.offer))
            m.options.setRaw(DHCPOptionCode(224), [UInt8](repeating: 0xAA, count: size))
            m.options.set(.hostName("n"))
            guard let bytes = try? m.encoded() else {
                #expect(size > 400, "size \(size) should have fit with overload")
                continue
            }
            #expect(bytes.count <= 548 && bytes.count >= 300)
            #expect(try DHCPMessage(decoding: bytes).options == m.options, "size \(size)")
        }
    }

    @Test func replySkeletonCopiesTheRequest() {
        let request = dhcpSampleRequest()
        let reply = DHCPMessage(replyTo: request, type: .offer)
        #expect(reply.op == .bootReply && reply.xid == request.xid && reply.flags == request.flags)
        #expect(reply.chaddr == request.chaddr && reply.giaddr == request.giaddr && reply.hops == request.hops)
        #expect(reply.ciaddr == .any && reply.yiaddr == .any && reply.messageType == .offer)
    }
}
