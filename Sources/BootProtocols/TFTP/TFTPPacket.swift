import NIOCore

/// TFTP opcodes (RFC 1350 §5, RFC 2347 for OACK).
public enum TFTPOpcode: UInt16, Sendable, Hashable, CustomStringConvertible {
    case readRequest = 1
    case writeRequest = 2
    case data = 3
    case acknowledgement = 4
    case error = 5
    case optionAcknowledgement = 6

    public var description: String {
        switch self {
        case .readRequest: "RRQ"
        case .writeRequest: "WRQ"
        case .data: "DATA"
        case .acknowledgement: "ACK"
        case .error: "ERROR"
        case .optionAcknowledgement: "OACK"
        }
    }
}

/// TFTP error codes (RFC 1350 appendix, RFC 2347 for code 8). Unknown codes are kept, not rejected,
/// because a client's ERROR must end its transfer whatever number it carries.
public enum TFTPErrorCode: Sendable, Hashable, CustomStringConvertible {
    case notDefined
    case fileNotFound
    case accessViolation
    case diskFull
    case illegalOperation
    case unknownTransferID
    case fileAlreadyExists
    case noSuchUser
    case optionNegotiationFailed
    case unassigned(UInt16)

    public init(rawValue: UInt16) {
        switch rawValue {
        case 0: self = .notDefined
        case 1: self = .fileNotFound
        case 2: self = .accessViolation
        case 3: self = .diskFull
        case 4: self = .illegalOperation
        case 5: self = .unknownTransferID
        case 6: self = .fileAlreadyExists
        case 7: self = .noSuchUser
        case 8: self = .optionNegotiationFailed
        default: self = .unassigned(rawValue)
        }
    }

    public var rawValue: UInt16 {
        switch self {
        case .notDefined: 0
        case .fileNotFound: 1
        case .accessViolation: 2
        case .diskFull: 3
        case .illegalOperation: 4
        case .unknownTransferID: 5
        case .fileAlreadyExists: 6
        case .noSuchUser: 7
        case .optionNegotiationFailed: 8
        case .unassigned(let code): code
        }
    }

    public var description: String {
        switch self {
        case .notDefined: "not defined (0)"
        case .fileNotFound: "file not found (1)"
        case .accessViolation: "access violation (2)"
        case .diskFull: "disk full (3)"
        case .illegalOperation: "illegal operation (4)"
        case .unknownTransferID: "unknown transfer ID (5)"
        case .fileAlreadyExists: "file already exists (6)"
        case .noSuchUser: "no such user (7)"
        case .optionNegotiationFailed: "option negotiation failed (8)"
        case .unassigned(let code): "unassigned (\(code))"
        }
    }
}

/// Transfer mode of a request; compared case-insensitively on the wire (RFC 1350 §5).
public enum TFTPTransferMode: String, Sendable, Hashable, CustomStringConvertible {
    case netascii
    case octet
    /// Obsolete (RFC 1350 says it "should not be implemented"); decoded so the server can refuse it by name.
    case mail

    public var description: String { rawValue }
}

/// One option name/value pair. Names are lower-cased when decoded because RFC 2347 makes them case-insensitive.
public struct TFTPOption: Sendable, Hashable, CustomStringConvertible {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name.lowercased()
        self.value = value
    }

    public var description: String { "\(name)=\(value)" }
}

/// Ordered options of a request or OACK. Order is kept so an OACK can answer in the client's order.
public struct TFTPOptions: Sendable, Hashable, CustomStringConvertible, ExpressibleByDictionaryLiteral {
    public private(set) var options: [TFTPOption]

    public init(_ options: [TFTPOption] = []) {
        self.options = options
    }

    public init(dictionaryLiteral elements: (String, String)...) {
        self.options = elements.map { TFTPOption(name: $0.0, value: $0.1) }
    }

    public var isEmpty: Bool { options.isEmpty }

    /// The first value given for `name`, compared case-insensitively; later duplicates are ignored.
    public subscript(name: String) -> String? {
        let key = name.lowercased()
        return options.first(where: { $0.name == key })?.value
    }

    public mutating func append(name: String, value: String) {
        options.append(TFTPOption(name: name, value: value))
    }

    public var description: String {
        options.map(\.description).joined(separator: " ")
    }
}

/// A read or write request.
public struct TFTPRequest: Sendable, Hashable, CustomStringConvertible {
    public var filename: String
    public var mode: TFTPTransferMode
    public var options: TFTPOptions

    public init(filename: String, mode: TFTPTransferMode = .octet, options: TFTPOptions = TFTPOptions()) {
        self.filename = filename
        self.mode = mode
        self.options = options
    }

    public var description: String {
        options.isEmpty ? "'\(filename)' \(mode)" : "'\(filename)' \(mode) \(options)"
    }
}

/// Why a datagram is not a valid TFTP packet. Says which field and what was wrong, for the log.
public enum TFTPDecodeError: Error, Hashable, CustomStringConvertible {
    case truncated(opcode: TFTPOpcode?, field: String, needed: Int, available: Int)
    case unknownOpcode(UInt16)
    case unterminated(opcode: TFTPOpcode, field: String)
    case invalidUTF8(opcode: TFTPOpcode, field: String)
    case emptyFilename(opcode: TFTPOpcode)
    case unknownMode(String)
    case emptyOptionName(opcode: TFTPOpcode)
    case optionWithoutValue(opcode: TFTPOpcode, name: String)
    case trailingBytes(opcode: TFTPOpcode, count: Int)

    public var description: String {
        switch self {
        case .truncated(let opcode, let field, let needed, let available):
            let what = opcode.map { "\($0) " } ?? ""
            return "truncated \(what)packet: \(field) needs \(needed) bytes, \(available) left"
        case .unknownOpcode(let code):
            return "unknown opcode \(code) (expected 1...6)"
        case .unterminated(let opcode, let field):
            return "\(opcode) \(field) is not NUL-terminated"
        case .invalidUTF8(let opcode, let field):
            return "\(opcode) \(field) is not valid UTF-8"
        case .emptyFilename(let opcode):
            return "\(opcode) has an empty filename"
        case .unknownMode(let mode):
            return "unknown transfer mode '\(mode)' (expected netascii or octet)"
        case .emptyOptionName(let opcode):
            return "\(opcode) has an option with an empty name"
        case .optionWithoutValue(let opcode, let name):
            return "\(opcode) option '\(name)' has no value"
        case .trailingBytes(let opcode, let count):
            return "\(opcode) has \(count) unexpected trailing bytes"
        }
    }
}

/// A TFTP packet (RFC 1350, RFC 2347). DATA payloads are ByteBuffer slices so decoding never copies them.
public enum TFTPPacket: Sendable, Hashable, CustomStringConvertible {
    case readRequest(TFTPRequest)
    case writeRequest(TFTPRequest)
    case data(block: UInt16, payload: ByteBuffer)
    case acknowledgement(block: UInt16)
    case error(code: TFTPErrorCode, message: String)
    case optionAcknowledgement(TFTPOptions)

    public var opcode: TFTPOpcode {
        switch self {
        case .readRequest: .readRequest
        case .writeRequest: .writeRequest
        case .data: .data
        case .acknowledgement: .acknowledgement
        case .error: .error
        case .optionAcknowledgement: .optionAcknowledgement
        }
    }

    public var description: String {
        switch self {
        case .readRequest(let request): "RRQ \(request)"
        case .writeRequest(let request): "WRQ \(request)"
        case .data(let block, let payload): "DATA \(block) (\(payload.readableBytes) bytes)"
        case .acknowledgement(let block): "ACK \(block)"
        case .error(let code, let message): "ERROR \(code) '\(message)'"
        case .optionAcknowledgement(let options): "OACK \(options)"
        }
    }

    // MARK: Encoding

    /// Bytes `encode(into:)` will write, so a caller can size its buffer once.
    public var encodedSize: Int {
        switch self {
        case .readRequest(let request), .writeRequest(let request):
            return 2 + request.filename.utf8.count + 1 + request.mode.rawValue.utf8.count + 1
                + Self.encodedSize(request.options)
        case .data(_, let payload):
            return 4 + payload.readableBytes
        case .acknowledgement:
            return 4
        case .error(_, let message):
            return 4 + message.utf8.count + 1
        case .optionAcknowledgement(let options):
            return 2 + Self.encodedSize(options)
        }
    }

    private static func encodedSize(_ options: TFTPOptions) -> Int {
        options.options.reduce(0) { $0 + $1.name.utf8.count + 1 + $1.value.utf8.count + 1 }
    }

    /// Appends the wire form to `buffer`.
    public func encode(into buffer: inout ByteBuffer) {
        buffer.writeInteger(opcode.rawValue)
        switch self {
        case .readRequest(let request), .writeRequest(let request):
            Self.writeNulTerminated(request.filename, into: &buffer)
            Self.writeNulTerminated(request.mode.rawValue, into: &buffer)
            Self.write(request.options, into: &buffer)
        case .data(let block, let payload):
            buffer.writeInteger(block)
            var payload = payload
            buffer.writeBuffer(&payload)
        case .acknowledgement(let block):
            buffer.writeInteger(block)
        case .error(let code, let message):
            buffer.writeInteger(code.rawValue)
            Self.writeNulTerminated(message, into: &buffer)
        case .optionAcknowledgement(let options):
            Self.write(options, into: &buffer)
        }
    }

    /// The wire form in a new buffer.
    public func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: encodedSize)
        encode(into: &buffer)
        return buffer
    }

    private static func writeNulTerminated(_ string: String, into buffer: inout ByteBuffer) {
        buffer.writeString(string)
        buffer.writeInteger(UInt8(0))
    }

    private static func write(_ options: TFTPOptions, into buffer: inout ByteBuffer) {
        for option in options.options {
            writeNulTerminated(option.name, into: &buffer)
            writeNulTerminated(option.value, into: &buffer)
        }
    }

    // MARK: Decoding

    /// Decodes one packet from the readable bytes of `buffer` (a whole datagram), consuming them.
    public static func decode(from buffer: inout ByteBuffer) throws(TFTPDecodeError) -> TFTPPacket {
        guard let rawOpcode = buffer.readInteger(as: UInt16.self) else {
            throw .truncated(opcode: nil, field: "opcode", needed: 2, available: buffer.readableBytes)
        }
        guard let opcode = TFTPOpcode(rawValue: rawOpcode) else {
            throw .unknownOpcode(rawOpcode)
        }
        switch opcode {
        case .readRequest:
            return .readRequest(try decodeRequest(opcode, from: &buffer))
        case .writeRequest:
            return .writeRequest(try decodeRequest(opcode, from: &buffer))
        case .data:
            guard let block = buffer.readInteger(as: UInt16.self) else {
                throw .truncated(opcode: opcode, field: "block number", needed: 2, available: buffer.readableBytes)
            }
            let payload = buffer.readSlice(length: buffer.readableBytes)!
            return .data(block: block, payload: payload)
        case .acknowledgement:
            guard let block = buffer.readInteger(as: UInt16.self) else {
                throw .truncated(opcode: opcode, field: "block number", needed: 2, available: buffer.readableBytes)
            }
            guard buffer.readableBytes == 0 else {
                throw .trailingBytes(opcode: opcode, count: buffer.readableBytes)
            }
            return .acknowledgement(block: block)
        case .error:
            guard let code = buffer.readInteger(as: UInt16.self) else {
                throw .truncated(opcode: opcode, field: "error code", needed: 2, available: buffer.readableBytes)
            }
            // Lenient on purpose: some clients omit the message's NUL, and an ERROR must still end the transfer.
            let view = buffer.readableBytesView
            let end = view.firstIndex(of: 0) ?? view.endIndex
            let message = String(decoding: view[view.startIndex..<end], as: UTF8.self)
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return .error(code: TFTPErrorCode(rawValue: code), message: message)
        case .optionAcknowledgement:
            return .optionAcknowledgement(try decodeOptions(opcode, from: &buffer))
        }
    }

    /// Decodes a whole datagram without consuming the caller's buffer.
    public static func decode(_ datagram: ByteBuffer) throws(TFTPDecodeError) -> TFTPPacket {
        var copy = datagram
        return try decode(from: &copy)
    }

    private static func decodeRequest(_ opcode: TFTPOpcode, from buffer: inout ByteBuffer) throws(TFTPDecodeError) -> TFTPRequest {
        let filename = try readString(opcode, field: "filename", from: &buffer)
        guard !filename.isEmpty else { throw .emptyFilename(opcode: opcode) }
        let modeName = try readString(opcode, field: "mode", from: &buffer)
        guard let mode = TFTPTransferMode(rawValue: modeName.lowercased()) else {
            throw .unknownMode(modeName)
        }
        let options = try decodeOptions(opcode, from: &buffer)
        return TFTPRequest(filename: filename, mode: mode, options: options)
    }

    private static func decodeOptions(_ opcode: TFTPOpcode, from buffer: inout ByteBuffer) throws(TFTPDecodeError) -> TFTPOptions {
        var options = TFTPOptions()
        while buffer.readableBytes > 0 {
            // Some firmware pads requests with NULs after the last field; padding is not an option.
            if buffer.readableBytesView.allSatisfy({ $0 == 0 }) {
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                break
            }
            let name = try readString(opcode, field: "option name", from: &buffer)
            guard !name.isEmpty else { throw .emptyOptionName(opcode: opcode) }
            guard buffer.readableBytes > 0 else { throw .optionWithoutValue(opcode: opcode, name: name) }
            let value = try readString(opcode, field: "value of option '\(name)'", from: &buffer)
            options.append(name: name, value: value)
        }
        return options
    }

    private static func readString(_ opcode: TFTPOpcode, field: @autoclosure () -> String, from buffer: inout ByteBuffer) throws(TFTPDecodeError) -> String {
        let view = buffer.readableBytesView
        guard let nul = view.firstIndex(of: 0) else {
            throw .unterminated(opcode: opcode, field: field())
        }
        guard let string = String(validating: view[view.startIndex..<nul], as: UTF8.self) else {
            throw .invalidUTF8(opcode: opcode, field: field())
        }
        buffer.moveReaderIndex(forwardBy: nul - view.startIndex + 1)
        return string
    }
}
