// Compact option storage: every option of a message lives in ONE byte array, so decoding a packet
// costs one allocation for all its options and lookups are a short linear scan plus an O(1)
// presence bitmap. Typed values are read on demand from the bytes.

/// The options of one DHCP message, in wire order, one entry per code.
///
/// Entries are stored as `code, length (UInt16 big-endian), data` without pad/end. Repeated codes on
/// the wire are concatenated on decode (RFC 3396), which is why lengths are 16-bit here; the encoder
/// splits long values back into 255-byte pieces.
public struct DHCPOptions: Hashable, Sendable, Sequence, CustomStringConvertible {
    @usableFromInline var storage: [UInt8]
    // Presence bitmap over the 256 codes: `contains` and "set = append" stay O(1).
    @usableFromInline var present0: UInt64 = 0
    @usableFromInline var present1: UInt64 = 0
    @usableFromInline var present2: UInt64 = 0
    @usableFromInline var present3: UInt64 = 0

    public init() { storage = [] }

    public init(_ options: some Sequence<DHCPOption>) {
        self.init()
        for option in options { set(option) }
    }

    @usableFromInline init(reservingCapacity capacity: Int) {
        storage = []
        storage.reserveCapacity(capacity)
    }

    // MARK: Presence

    @inlinable public func contains(_ code: DHCPOptionCode) -> Bool {
        let bit = UInt64(1) << UInt64(code.rawValue & 63)
        switch code.rawValue >> 6 {
        case 0: return present0 & bit != 0
        case 1: return present1 & bit != 0
        case 2: return present2 & bit != 0
        default: return present3 & bit != 0
        }
    }

    @usableFromInline mutating func setPresent(_ code: UInt8, _ on: Bool) {
        let bit = UInt64(1) << UInt64(code & 63)
        switch code >> 6 {
        case 0: present0 = on ? present0 | bit : present0 & ~bit
        case 1: present1 = on ? present1 | bit : present1 & ~bit
        case 2: present2 = on ? present2 | bit : present2 & ~bit
        default: present3 = on ? present3 | bit : present3 & ~bit
        }
    }

    public var count: Int {
        present0.nonzeroBitCount + present1.nonzeroBitCount + present2.nonzeroBitCount + present3.nonzeroBitCount
    }

    public var isEmpty: Bool { storage.isEmpty }

    /// Codes in wire order.
    public var codes: [DHCPOptionCode] {
        var codes: [DHCPOptionCode] = []
        codes.reserveCapacity(count)
        forEachEntry { code, _ in codes.append(DHCPOptionCode(code)) }
        return codes
    }

    // MARK: Raw access

    /// Calls `body` with (code, range of the data in `storage`) for each entry in order.
    @inlinable func forEachEntry(_ body: (UInt8, Range<Int>) -> Void) {
        var i = 0
        let end = storage.count
        while i + 3 <= end {
            let length = Int(storage[i + 1]) << 8 | Int(storage[i + 2])
            body(storage[i], (i + 3)..<(i + 3 + length))
            i += 3 + length
        }
    }

    /// Index of the entry header for `code`, or nil.
    @inlinable func entryIndex(_ code: UInt8) -> Int? {
        var i = 0
        let end = storage.count
        while i + 3 <= end {
            if storage[i] == code { return i }
            i += 3 + (Int(storage[i + 1]) << 8 | Int(storage[i + 2]))
        }
        return nil
    }

    /// The option's data bytes (after RFC 3396 concatenation); a slice of the shared storage, no copy.
    @inlinable public subscript(code: DHCPOptionCode) -> ArraySlice<UInt8>? {
        guard contains(code), let i = entryIndex(code.rawValue) else { return nil }
        let length = Int(storage[i + 1]) << 8 | Int(storage[i + 2])
        return storage[(i + 3)..<(i + 3 + length)]
    }

    /// Sets the raw data of `code`, replacing an earlier value in place (order is kept) or appending.
    public mutating func setRaw(_ code: DHCPOptionCode, _ data: some Collection<UInt8>) {
        precondition(code != .pad && code != .end, "pad and end are framing, not options")
        precondition(data.count <= Int(UInt16.max), "option \(code) longer than 65535 bytes")
        if contains(code) { remove(code) }
        appendHeader(code.rawValue, data.count)
        storage.append(contentsOf: data)
    }

    /// Removes `code`; no-op when absent.
    public mutating func remove(_ code: DHCPOptionCode) {
        guard contains(code), let i = entryIndex(code.rawValue) else { return }
        let length = Int(storage[i + 1]) << 8 | Int(storage[i + 2])
        storage.removeSubrange(i..<(i + 3 + length))
        setPresent(code.rawValue, false)
    }

    @usableFromInline mutating func appendHeader(_ code: UInt8, _ length: Int) {
        storage.append(code)
        storage.append(UInt8(truncatingIfNeeded: length >> 8))
        storage.append(UInt8(truncatingIfNeeded: length))
        setPresent(code, true)
    }

    /// Decoder path: appends wire bytes, concatenating with an earlier instance of the same code
    /// (RFC 3396) instead of storing a duplicate.
    mutating func appendWire(_ code: UInt8, _ data: UnsafeRawBufferPointer) {
        let codeValue = DHCPOptionCode(code)
        if contains(codeValue), let i = entryIndex(code) {
            let length = Int(storage[i + 1]) << 8 | Int(storage[i + 2])
            let newLength = length + data.count
            storage[i + 1] = UInt8(truncatingIfNeeded: newLength >> 8)
            storage[i + 2] = UInt8(truncatingIfNeeded: newLength)
            storage.insert(contentsOf: data, at: i + 3 + length)
        } else {
            appendHeader(code, data.count)
            storage.append(contentsOf: data)
        }
    }

    // MARK: Typed access

    /// Sets a typed option, replacing any earlier value of the same code.
    public mutating func set(_ option: DHCPOption) {
        let code = option.code
        if contains(code) { remove(code) }
        option.appendEncoded(to: &self)
    }

    public func makeIterator() -> Iterator { Iterator(options: self) }

    /// Iterates typed options in wire order; each one is decoded from the bytes as it is reached.
    public struct Iterator: IteratorProtocol {
        let options: DHCPOptions
        var index = 0
        public mutating func next() -> DHCPOption? {
            let storage = options.storage
            guard index + 3 <= storage.count else { return nil }
            let code = storage[index]
            let length = Int(storage[index + 1]) << 8 | Int(storage[index + 2])
            let data = storage[(index + 3)..<(index + 3 + length)]
            index += 3 + length
            return DHCPOption(code: DHCPOptionCode(code), data: data)
        }
    }

    @inlinable func address(_ code: DHCPOptionCode) -> IPv4Address? {
        guard let data = self[code], data.count == 4 else { return nil }
        return IPv4Address(rawValue: dhcpReadUInt32(data))
    }

    @inlinable func uint32(_ code: DHCPOptionCode) -> UInt32? {
        guard let data = self[code], data.count == 4 else { return nil }
        return dhcpReadUInt32(data)
    }

    public var messageType: DHCPMessageType? {
        guard let data = self[.messageType], data.count == 1 else { return nil }
        return DHCPMessageType(rawValue: data[data.startIndex])
    }
    public var subnetMask: IPv4Address? { address(.subnetMask) }
    public var requestedIPAddress: IPv4Address? { address(.requestedIPAddress) }
    public var serverIdentifier: IPv4Address? { address(.serverIdentifier) }
    public var leaseTime: UInt32? { uint32(.leaseTime) }
    public var renewalTime: UInt32? { uint32(.renewalTime) }
    public var rebindingTime: UInt32? { uint32(.rebindingTime) }
    public var maximumMessageSize: UInt16? {
        guard let data = self[.maximumMessageSize], data.count == 2 else { return nil }
        return UInt16(data[data.startIndex]) << 8 | UInt16(data[data.startIndex + 1])
    }
    public var routers: [IPv4Address]? { addressList(.router) }
    public var domainNameServers: [IPv4Address]? { addressList(.domainNameServer) }
    public var hostName: String? { string(.hostName) }
    public var domainName: String? { string(.domainName) }
    public var tftpServerName: String? { string(.tftpServerName) }
    /// Option 56 text (why a NAK was sent, etc.).
    public var message: String? { string(.message) }
    public var bootfileName: String? { string(.bootfileName) }
    public var vendorClassIdentifier: ArraySlice<UInt8>? { self[.vendorClassIdentifier] }
    public var clientIdentifier: ArraySlice<UInt8>? { self[.clientIdentifier] }
    public var userClass: ArraySlice<UInt8>? { self[.userClass] }
    public var parameterRequestList: ArraySlice<UInt8>? { self[.parameterRequestList] }
    public var rapidCommit: Bool { contains(.rapidCommit) }

    /// First value of option 93 (clients list their preferred architecture first).
    public var clientArchitecture: DHCPClientArchitecture? {
        guard let data = self[.clientSystemArchitecture], data.count >= 2, data.count % 2 == 0 else { return nil }
        return DHCPClientArchitecture(UInt16(data[data.startIndex]) << 8 | UInt16(data[data.startIndex + 1]))
    }

    /// Option 97 as (type, identifier bytes); PXE clients send type 0 and a 16-byte UUID.
    public var clientMachineIdentifier: ArraySlice<UInt8>? { self[.clientMachineIdentifier] }

    /// True when option 60 starts with `prefix` (e.g. `PXEClient`, `HTTPClient`); no allocation.
    public func vendorClassHasPrefix(_ prefix: StaticString) -> Bool {
        guard let data = self[.vendorClassIdentifier] else { return false }
        return prefix.withUTF8Buffer { p in
            data.count >= p.count && zip(data, p).allSatisfy { $0 == $1 }
        }
    }

    /// True when the user class says the client is iPXE: the bare string `iPXE` that iPXE sends, or an
    /// RFC 3004 list with an `iPXE` entry.
    public var userClassIsIPXE: Bool {
        guard let data = self[.userClass] else { return false }
        let ipxe: [UInt8] = [0x69, 0x50, 0x58, 0x45]  // "iPXE"
        if data.elementsEqual(ipxe) { return true }
        var i = data.startIndex
        while i < data.endIndex {
            let length = Int(data[i])
            let start = i + 1
            guard length > 0, start + length <= data.endIndex else { return false }
            if data[start..<(start + length)].elementsEqual(ipxe) { return true }
            i = start + length
        }
        return false
    }

    /// True when `code` is listed in the client's parameter request list (option 55).
    public func requests(_ code: DHCPOptionCode) -> Bool {
        self[.parameterRequestList]?.contains(code.rawValue) ?? false
    }

    func addressList(_ code: DHCPOptionCode) -> [IPv4Address]? {
        guard let data = self[code], !data.isEmpty, data.count % 4 == 0 else { return nil }
        return stride(from: data.startIndex, to: data.endIndex, by: 4).map {
            IPv4Address(rawValue: dhcpReadUInt32(data[$0..<($0 + 4)]))
        }
    }

    func string(_ code: DHCPOptionCode) -> String? {
        guard let data = self[code] else { return nil }
        return String(validating: data, as: UTF8.self)
    }

    public var description: String {
        map { "\($0)" }.joined(separator: "\n")
    }
}

@inlinable func dhcpReadUInt32(_ data: ArraySlice<UInt8>) -> UInt32 {
    let s = data.startIndex
    return UInt32(data[s]) << 24 | UInt32(data[s + 1]) << 16 | UInt32(data[s + 2]) << 8 | UInt32(data[s + 3])
}
