import NIOCore

/// BOOTP `flags` (RFC 2131 §2): only the broadcast bit is defined.
public struct DHCPFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// The client cannot receive unicast IP before it is configured: reply by broadcast.
    public static let broadcast = DHCPFlags(rawValue: 0x8000)
}

/// The 16-byte `chaddr` field, stored inline (two integers) so a message carries no heap storage for it.
public struct DHCPHardwareAddress: Hashable, Sendable {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64 = 0, low: UInt64 = 0) {
        self.high = high
        self.low = low
    }

    /// A MAC in the first six bytes, the rest zero (Ethernet, hlen 6).
    public init(_ mac: MACAddress) {
        high = mac.rawValue << 16
        low = 0
    }

    /// Up to 16 bytes; shorter input is zero-padded.
    public init(bytes: some Collection<UInt8>) {
        var high: UInt64 = 0
        var low: UInt64 = 0
        var i = 0
        for b in bytes.prefix(16) {
            if i < 8 { high |= UInt64(b) << (56 - 8 * UInt64(i)) } else { low |= UInt64(b) << (56 - 8 * UInt64(i - 8)) }
            i += 1
        }
        self.high = high
        self.low = low
    }

    public subscript(i: Int) -> UInt8 {
        precondition(i >= 0 && i < 16, "chaddr index out of range")
        return i < 8 ? UInt8(truncatingIfNeeded: high >> (56 - 8 * UInt64(i)))
            : UInt8(truncatingIfNeeded: low >> (56 - 8 * UInt64(i - 8)))
    }

    /// The MAC address in the first six bytes.
    public var mac: MACAddress { MACAddress(rawValue: high >> 16) }
}

/// A DHCPv4 message (RFC 2131 §2), with pure decode and encode.
///
/// `sname` and `file` hold the bytes before the first NUL. When a packet overloads them with options
/// (option 52), decoding moves those options into `options` and leaves the fields empty; encoding
/// overloads again by itself when the options need the room. Option 52 is therefore never stored.
public struct DHCPMessage: Hashable, Sendable, CustomStringConvertible {
    public var op: DHCPOpcode
    /// Hardware type (1 = Ethernet).
    public var htype: UInt8
    public var hlen: UInt8
    public var hops: UInt8
    public var xid: UInt32
    public var secs: UInt16
    public var flags: DHCPFlags
    public var ciaddr: IPv4Address
    public var yiaddr: IPv4Address
    public var siaddr: IPv4Address
    public var giaddr: IPv4Address
    public var chaddr: DHCPHardwareAddress
    /// Server host name field, up to 64 bytes; empty when unused.
    public var sname: [UInt8]
    /// Boot file name field, up to 128 bytes; empty when unused.
    public var file: [UInt8]
    public var options: DHCPOptions

    /// BOOTP header (236) + magic cookie (4).
    public static let headerLength = 240
    /// RFC 1542 §3.2.1: BOOTP relays and clients may drop anything shorter.
    public static let minimumBOOTPLength = 300
    /// RFC 2131 §2: every client accepts a 576-byte IP datagram (548 bytes of DHCP).
    public static let defaultMaximumMessageSize = 576
    static let magicCookie: UInt32 = 0x6382_5363

    public init(
        op: DHCPOpcode, xid: UInt32, chaddr: DHCPHardwareAddress, htype: UInt8 = 1, hlen: UInt8 = 6,
        hops: UInt8 = 0, secs: UInt16 = 0, flags: DHCPFlags = [], ciaddr: IPv4Address = .any,
        yiaddr: IPv4Address = .any, siaddr: IPv4Address = .any, giaddr: IPv4Address = .any,
        sname: [UInt8] = [], file: [UInt8] = [], options: DHCPOptions = DHCPOptions()
    ) {
        self.op = op
        self.htype = htype
        self.hlen = hlen
        self.hops = hops
        self.xid = xid
        self.secs = secs
        self.flags = flags
        self.ciaddr = ciaddr
        self.yiaddr = yiaddr
        self.siaddr = siaddr
        self.giaddr = giaddr
        self.chaddr = chaddr
        self.sname = sname
        self.file = file
        self.options = options
    }

    /// A reply skeleton that copies what RFC 2131 Table 3 says comes from the request (xid, flags,
    /// giaddr, chaddr, htype/hlen; hops as relays expect) and sets the message type, so a reply
    /// cannot forget them. `ciaddr`, `yiaddr`, `siaddr` start at 0.
    public init(replyTo request: DHCPMessage, type: DHCPMessageType) {
        self.init(
            op: .bootReply, xid: request.xid, chaddr: request.chaddr, htype: request.htype,
            hlen: request.hlen, hops: request.hops, flags: request.flags, giaddr: request.giaddr)
        options = DHCPOptions(reservingCapacity: 160)
        options.set(.messageType(type))
    }

    // MARK: Convenience

    public var messageType: DHCPMessageType? { options.messageType }

    /// The client's MAC when the hardware is Ethernet (htype 1, hlen 6), else nil.
    public var clientMAC: MACAddress? { htype == 1 && hlen == 6 ? chaddr.mac : nil }

    /// `sname` as text (lossy for invalid UTF-8); setting stores the UTF-8 bytes.
    public var serverHostName: String {
        get { String(decoding: sname, as: UTF8.self) }
        set { sname = Array(newValue.utf8) }
    }

    /// `file` as text (lossy for invalid UTF-8); setting stores the UTF-8 bytes.
    public var bootFileName: String {
        get { String(decoding: file, as: UTF8.self) }
        set { file = Array(newValue.utf8) }
    }

    // MARK: Decoding

    public init(decoding buffer: ByteBuffer) throws(DHCPError) {
        let result: Result<DHCPMessage, DHCPError> = buffer.withUnsafeReadableBytes { bytes in
            Result { () throws(DHCPError) in try DHCPMessage(decoding: bytes) }
        }
        self = try result.get()
    }

    public init(decoding bytes: [UInt8]) throws(DHCPError) {
        let result: Result<DHCPMessage, DHCPError> = bytes.withUnsafeBytes { raw in
            Result { () throws(DHCPError) in try DHCPMessage(decoding: raw) }
        }
        self = try result.get()
    }

    /// Decodes one UDP payload. Bounded: every read is checked against the buffer, each option area is
    /// walked once, and option 52 is honoured only in the options field, so a packet cannot loop.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(DHCPError) {
        let n = bytes.count
        guard n >= DHCPMessage.headerLength else { throw .truncated(length: n, minimum: DHCPMessage.headerLength) }
        func u16(_ at: Int) -> UInt16 { UInt16(bytes[at]) << 8 | UInt16(bytes[at + 1]) }
        func u32(_ at: Int) -> UInt32 {
            UInt32(bytes[at]) << 24 | UInt32(bytes[at + 1]) << 16 | UInt32(bytes[at + 2]) << 8 | UInt32(bytes[at + 3])
        }
        guard let op = DHCPOpcode(rawValue: bytes[0]) else { throw .badOpcode(bytes[0]) }
        guard bytes[2] <= 16 else { throw .badHardwareAddressLength(bytes[2]) }
        let cookie = u32(236)
        guard cookie == DHCPMessage.magicCookie else { throw .badMagicCookie(cookie) }

        let areaLength = n - DHCPMessage.headerLength
        var options = DHCPOptions(reservingCapacity: areaLength + areaLength / 2)
        let overload = try DHCPMessage.parseArea(bytes, 240..<n, .options, into: &options)
        var sname: [UInt8] = []
        var file: [UInt8] = []
        if let overload {
            // RFC 3396 §5: options, then file, then sname.
            if overload.usesFile { _ = try DHCPMessage.parseArea(bytes, 108..<236, .file, into: &options) }
            if overload.usesSname { _ = try DHCPMessage.parseArea(bytes, 44..<108, .sname, into: &options) }
        }
        if overload?.usesSname != true { sname = DHCPMessage.cString(bytes, 44..<108) }
        if overload?.usesFile != true { file = DHCPMessage.cString(bytes, 108..<236) }

        self.init(
            op: op, xid: u32(4), chaddr: DHCPHardwareAddress(bytes: UnsafeRawBufferPointer(rebasing: bytes[28..<44])),
            htype: bytes[1], hlen: bytes[2], hops: bytes[3], secs: u16(8), flags: DHCPFlags(rawValue: u16(10)),
            ciaddr: IPv4Address(rawValue: u32(12)), yiaddr: IPv4Address(rawValue: u32(16)),
            siaddr: IPv4Address(rawValue: u32(20)), giaddr: IPv4Address(rawValue: u32(24)),
            sname: sname, file: file, options: options)
    }

    private static func cString(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> [UInt8] {
        var end = range.lowerBound
        while end < range.upperBound && bytes[end] != 0 { end += 1 }
        return end == range.lowerBound ? [] : Array(bytes[range.lowerBound..<end])
    }

    /// Walks one option area; returns the overload value when parsing the options field.
    private static func parseArea(
        _ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ area: DHCPOptionArea, into options: inout DHCPOptions
    ) throws(DHCPError) -> DHCPOptionOverload? {
        var overload: DHCPOptionOverload?
        var i = range.lowerBound
        while i < range.upperBound {
            let code = bytes[i]
            if code == DHCPOptionCode.pad.rawValue { i += 1; continue }
            if code == DHCPOptionCode.end.rawValue { return overload }
            guard i + 1 < range.upperBound else { throw .optionOverrun(code: code, offset: i, length: 1, area: area) }
            let length = Int(bytes[i + 1])
            let start = i + 2
            guard start + length <= range.upperBound else {
                throw .optionOverrun(code: code, offset: i, length: length, area: area)
            }
            if code == DHCPOptionCode.optionOverload.rawValue {
                // Only the options field may redirect parsing; inside file/sname it is dropped.
                if area == .options {
                    guard length == 1, overload == nil, let value = DHCPOptionOverload(rawValue: bytes[start]) else {
                        throw .badOptionOverload(offset: i)
                    }
                    overload = value
                }
            } else {
                options.appendWire(code, UnsafeRawBufferPointer(rebasing: bytes[start..<(start + length)]))
            }
            i = start + length
        }
        throw .missingEnd(area: area)
    }

    // MARK: Encoding

    /// Encodes into `buffer`. `maxMessageSize` is the client's option 57 (an IP datagram size, so 28
    /// bytes of IP and UDP header come off it; values under 576 count as 576). Options that do not
    /// fit spill into `file` then `sname` (option 52) when those are empty. Short packets are padded
    /// to the 300-byte BOOTP minimum.
    public func encode(into buffer: inout ByteBuffer, maxMessageSize: Int = DHCPMessage.defaultMaximumMessageSize) throws(DHCPError) {
        guard sname.count <= 64 else { throw .fieldTooLong(field: "sname", length: sname.count, maximum: 64) }
        guard file.count <= 128 else { throw .fieldTooLong(field: "file", length: file.count, maximum: 128) }
        let limit = max(maxMessageSize, DHCPMessage.defaultMaximumMessageSize) - 28
        let storage = options.storage
        var optionBytes = 1  // End
        options.forEachEntry { code, range in
            if code != overloadCode { optionBytes += DHCPMessage.wireLength(range.count) }
        }

        let simple = DHCPMessage.headerLength + optionBytes <= limit
        var plan = OverloadPlan(limit: limit, fileFree: file.isEmpty, snameFree: sname.isEmpty)
        if !simple {
            // Prefer keeping each option whole within one area (not every client joins RFC 3396
            // fragments); when that wastes too much room, fill every area to the last byte.
            if !plan.place(options, into: nil) {
                plan.splitEagerly = true
                guard plan.place(options, into: nil) else {
                    throw .optionsTooLarge(needed: optionBytes, available: plan.totalCapacity)
                }
            }
        }
        let total = simple ? max(DHCPMessage.minimumBOOTPLength, DHCPMessage.headerLength + optionBytes) : limit

        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: total) { out in
            let p = UnsafeMutableRawBufferPointer(rebasing: out[0..<total])
            p.initializeMemory(as: UInt8.self, repeating: 0)
            func put16(_ v: UInt16, _ at: Int) { p[at] = UInt8(v >> 8); p[at + 1] = UInt8(v & 0xFF) }
            func put32(_ v: UInt32, _ at: Int) {
                p[at] = UInt8(v >> 24); p[at + 1] = UInt8((v >> 16) & 0xFF)
                p[at + 2] = UInt8((v >> 8) & 0xFF); p[at + 3] = UInt8(v & 0xFF)
            }
            p[0] = op.rawValue; p[1] = htype; p[2] = hlen; p[3] = hops
            put32(xid, 4); put16(secs, 8); put16(flags.rawValue, 10)
            put32(ciaddr.rawValue, 12); put32(yiaddr.rawValue, 16); put32(siaddr.rawValue, 20); put32(giaddr.rawValue, 24)
            for i in 0..<16 { p[28 + i] = chaddr[i] }
            for (i, b) in sname.enumerated() { p[44 + i] = b }
            for (i, b) in file.enumerated() { p[108 + i] = b }
            put32(DHCPMessage.magicCookie, 236)
            if simple {
                var at = 240
                options.forEachEntry { code, range in
                    if code != overloadCode { DHCPMessage.writeFragments(code, storage, range, p, &at) }
                }
                p[at] = DHCPOptionCode.end.rawValue
            } else {
                _ = plan.place(options, into: p)
            }
            return total
        }
    }

    /// Encodes into a fresh array (tests, tools); servers should reuse a `ByteBuffer` with `encode(into:)`.
    public func encoded(maxMessageSize: Int = DHCPMessage.defaultMaximumMessageSize) throws(DHCPError) -> [UInt8] {
        var buffer = ByteBuffer()
        try encode(into: &buffer, maxMessageSize: maxMessageSize)
        return buffer.readBytes(length: buffer.readableBytes) ?? []
    }

    /// Bytes a value of `length` takes on the wire, split into 255-byte instances (RFC 3396).
    static func wireLength(_ length: Int) -> Int {
        length == 0 ? 2 : length + 2 * ((length + 254) / 255)
    }

    static func writeFragments(_ code: UInt8, _ storage: [UInt8], _ range: Range<Int>, _ p: UnsafeMutableRawBufferPointer, _ at: inout Int) {
        var offset = range.lowerBound
        repeat {
            let take = min(255, range.upperBound - offset)
            p[at] = code
            p[at + 1] = UInt8(take)
            copy(storage, offset..<(offset + take), to: p, at: at + 2)
            at += 2 + take
            offset += take
        } while offset < range.upperBound
    }

    static func copy(_ storage: [UInt8], _ range: Range<Int>, to p: UnsafeMutableRawBufferPointer, at: Int) {
        guard !range.isEmpty else { return }
        storage.withUnsafeBytes { src in
            UnsafeMutableRawBufferPointer(rebasing: p[at..<(at + range.count)])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: src[range]))
        }
    }

    /// Places options across the options field, then `file`, then `sname` (RFC 3396 order). Run once
    /// without a buffer to check the fit, then again to write.
    struct OverloadPlan {
        struct Area { var start: Int; var capacity: Int; var kind: DHCPOptionArea }
        var areas: [Area] = []
        var splitEagerly = false
        var totalCapacity: Int { areas.reduce(0) { $0 + $1.capacity - 1 } }

        init(limit: Int, fileFree: Bool, snameFree: Bool) {
            // The options field starts with option 52 (3 bytes) in overload mode.
            areas.append(Area(start: 243, capacity: max(0, limit - 243), kind: .options))
            if fileFree { areas.append(Area(start: 108, capacity: 128, kind: .file)) }
            if snameFree { areas.append(Area(start: 44, capacity: 64, kind: .sname)) }
        }

        /// Returns false when the options do not fit.
        func place(_ options: DHCPOptions, into p: UnsafeMutableRawBufferPointer?) -> Bool {
            let storage = options.storage
            var area = 0
            var at = areas[0].start
            var areaEnd = areas[0].start + areas[0].capacity - 1  // keep one byte for End
            var usedFile = false, usedSname = false
            var fits = true
            options.forEachEntry { code, range in
                guard fits, code != overloadCode else { return }
                var offset = range.lowerBound
                repeat {
                    let want = min(255, range.upperBound - offset)
                    var take = want
                    let free = areaEnd - at
                    if free < 2 + want {
                        let nextCapacity = area + 1 < areas.count ? areas[area + 1].capacity - 1 : 0
                        if free >= 3 && (splitEagerly || 2 + want > nextCapacity) {
                            take = free - 2  // split here (RFC 3396); the rest goes on in the next area
                        } else {
                            if let p { p[at] = DHCPOptionCode.end.rawValue }
                            area += 1
                            guard area < areas.count else { fits = false; return }
                            at = areas[area].start
                            areaEnd = areas[area].start + areas[area].capacity - 1
                            continue
                        }
                    }
                    if let p {
                        p[at] = code
                        p[at + 1] = UInt8(take)
                        DHCPMessage.copy(storage, offset..<(offset + take), to: p, at: at + 2)
                    }
                    if areas[area].kind == .file { usedFile = true }
                    if areas[area].kind == .sname { usedSname = true }
                    at += 2 + take
                    offset += take
                } while offset < range.upperBound
            }
            guard fits else { return false }
            if let p {
                p[at] = DHCPOptionCode.end.rawValue
                let overload: DHCPOptionOverload = usedFile && usedSname ? .both : (usedSname ? .sname : .file)
                p[240] = DHCPOptionCode.optionOverload.rawValue
                p[241] = 1
                p[242] = overload.rawValue
                // An overloaded area that received nothing must still not read as a string.
                if !usedFile, areas.contains(where: { $0.kind == .file }), overload.usesFile { p[108] = DHCPOptionCode.end.rawValue }
            }
            return true
        }
    }

    // MARK: Rendering

    /// Multi-line, stable rendering used in logs and golden fixture files.
    public var description: String {
        var lines: [String] = []
        lines.append("op: \(op)")
        lines.append("htype: \(htype)  hlen: \(hlen)  hops: \(hops)")
        lines.append("xid: 0x\(hex32(xid))")
        lines.append("secs: \(secs)  flags: 0x\(String(flags.rawValue, radix: 16))\(flags.contains(.broadcast) ? " (broadcast)" : "")")
        lines.append("ciaddr: \(ciaddr)")
        lines.append("yiaddr: \(yiaddr)")
        lines.append("siaddr: \(siaddr)")
        lines.append("giaddr: \(giaddr)")
        let shown = (0..<Int(min(hlen, 16))).map { i -> String in
            let s = String(chaddr[i], radix: 16)
            return s.count == 1 ? "0" + s : s
        }
        lines.append("chaddr: \(shown.joined(separator: ":"))")
        lines.append("sname: \(String(reflecting: serverHostName))")
        lines.append("file: \(String(reflecting: bootFileName))")
        lines.append("options:")
        for option in options { lines.append("  \(option)") }
        return lines.joined(separator: "\n")
    }
}

/// Option 52 is framing the encoder decides on its own; a stored copy is never written.
private let overloadCode = DHCPOptionCode.optionOverload.rawValue

private func hex32(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 8 - s.count) + s
}
