import BootProtocols
import NIOCore

/// One TFTP read as firmware does it, sans-IO: fed packets and time-outs, returns what to send.
///
/// Two shapes, both seen on the wire in the seeds: the PXE ROM's size probe (`RRQ tsize=0`, OACK,
/// then the client's own ERROR 8 abort) and a real read (`RRQ blksize=N [tsize=0]`, OACK, ACK 0,
/// DATA/ACK lock-step until a short block). The first reply's source port is the server's transfer
/// ID; packets from any other port are ignored (RFC 1350 §4).
struct TFTPFetch {
    enum Mode: Equatable {
        /// Ask for the size only and abort after the OACK (error 8), like a PXE ROM's first RRQ.
        case probeSize
        /// Read the whole file. `askSize`: send `tsize=0` too (pxelinux does; the ROM's second RRQ
        /// does not). `keep` keeps the bytes (configuration files), else they are only counted.
        case read(blockSize: Int, askSize: Bool, keep: Bool)
    }

    enum Action {
        case send(TFTPPacket)
        /// Done; `packet` (if any) is the last thing to send (the final ACK or the abort).
        case finish(Outcome, send: TFTPPacket?)
        case none
    }

    enum Outcome: Equatable {
        case probed(size: Int)
        case received(bytes: Int, content: [UInt8]?)
        case serverError(code: UInt16, message: String)
        case failed(String)
    }

    let filename: String
    let mode: Mode
    /// Re-sends of the last packet before giving up (pxelinux and PXE ROMs retry a handful of times).
    let maximumRetries: Int

    private(set) var serverPort: Int?
    private var lastSent: TFTPPacket?
    private var retries = 0
    private var blockSize = 512
    private var expected: UInt16 = 1
    private var received = 0
    private var content: [UInt8] = []
    private var done = false

    init(filename: String, mode: Mode, maximumRetries: Int = 5) {
        self.filename = filename
        self.mode = mode
        self.maximumRetries = maximumRetries
    }

    /// The RRQ that starts the transfer.
    mutating func start() -> TFTPPacket {
        var options = TFTPOptions()
        switch mode {
        case .probeSize:
            options.append(name: "tsize", value: "0")
        case .read(let size, let askSize, _):
            if askSize { options.append(name: "tsize", value: "0") }
            options.append(name: "blksize", value: String(size))
        }
        let packet = TFTPPacket.readRequest(TFTPRequest(filename: filename, mode: .octet, options: options))
        lastSent = packet
        return packet
    }

    mutating func receive(_ packet: TFTPPacket, fromPort port: Int) -> Action {
        guard !done else { return .none }
        if let serverPort, serverPort != port { return .none }
        serverPort = port
        switch packet {
        case .optionAcknowledgement(let options):
            guard expected == 1, received == 0 else { return .none }  // a repeated OACK after ACK 0
            retries = 0
            switch mode {
            case .probeSize:
                done = true
                guard let text = options["tsize"], let size = Int(text) else {
                    return .finish(.failed("OACK without tsize for \(filename)"),
                                   send: .error(code: .optionNegotiationFailed, message: "User aborted the transfer"))
                }
                return .finish(.probed(size: size), send: .error(code: .optionNegotiationFailed, message: "User aborted the transfer"))
            case .read(let requested, _, _):
                if let text = options["blksize"], let size = Int(text), size >= 8, size <= requested { blockSize = size }
                return send(.acknowledgement(block: 0))
            }
        case .data(let block, let payload):
            return payload.withUnsafeReadableBytes { data(block: block, payload: $0) }
        case .error(let code, let message):
            done = true
            return .finish(.serverError(code: code.rawValue, message: message), send: nil)
        case .acknowledgement, .readRequest, .writeRequest:
            done = true
            return .finish(.failed("unexpected \(packet.opcode) for \(filename)"),
                           send: .error(code: .illegalOperation, message: "unexpected packet"))
        }
    }

    /// A DATA packet, its payload where it lies (the reactor's receive buffer: no copy unless `keep`).
    mutating func receiveData(block: UInt16, payload: UnsafeRawBufferPointer, fromPort port: Int) -> Action {
        guard !done else { return .none }
        if let serverPort, serverPort != port { return .none }
        serverPort = port
        return data(block: block, payload: payload)
    }

    private mutating func data(block: UInt16, payload: UnsafeRawBufferPointer) -> Action {
        if case .probeSize = mode {
            // A server that ignores options answers the probe with DATA 1: abort like the ROM does.
            done = true
            return .finish(.failed("server ignored tsize for \(filename)"),
                           send: .error(code: .optionNegotiationFailed, message: "User aborted the transfer"))
        }
        guard block == expected else { return .none }  // duplicate: the time-out re-ACKs
        retries = 0
        received += payload.count
        if case .read(_, _, true) = mode { content.append(contentsOf: payload) }
        let ack = TFTPPacket.acknowledgement(block: block)
        expected &+= 1
        if payload.count < blockSize {
            done = true
            return .finish(.received(bytes: received, content: keepsContent ? content : nil), send: ack)
        }
        return send(ack)
    }

    /// No packet within the time-out: re-send the last packet, or give up.
    mutating func timeout() -> Action {
        guard !done else { return .none }
        guard retries < maximumRetries, let lastSent else {
            done = true
            return .finish(.failed("time-out after \(retries) retries (\(filename), block \(expected))"), send: nil)
        }
        retries += 1
        return .send(lastSent)
    }

    var retransmissions: Int { retries }

    private var keepsContent: Bool { if case .read(_, _, true) = mode { true } else { false } }

    private mutating func send(_ packet: TFTPPacket) -> Action {
        lastSent = packet
        return .send(packet)
    }
}
