#if canImport(Glibc)
import Glibc
#endif
import BootProtocols
import DatagramIO
import NIOCore

/// Runs one `TFTPFetch` on its own UDP socket (a new client transfer ID per read, as firmware does),
/// bound to the node's leased address, on the simulator's `DatagramReactor`: a simulated node's
/// per-block work must cost less than the server's, or the storm measures the simulator.
final class TFTPFetchEndpoint: DatagramEndpoint {
    let descriptor: CInt
    private var fetch: TFTPFetch
    private let serverAddress: SocketAddress
    private var peer: DatagramPeer
    private let timeout: TimeAmount
    private let completion: (TFTPFetch.Outcome) -> Void
    private var finished = false
    private var encoded = ByteBuffer()

    init(descriptor: CInt, fetch: TFTPFetch, server: SocketAddress, timeout: TimeAmount,
         completion: @escaping (TFTPFetch.Outcome) -> Void) {
        self.descriptor = descriptor
        self.fetch = fetch
        self.serverAddress = server
        self.peer = DatagramPeer(server)
        self.timeout = timeout
        self.completion = completion
    }

    func start(_ reactor: DatagramReactor, now: NIODeadline) {
        perform(.send(fetch.start()), reactor: reactor, now: now, first: true)
    }

    func readable(_ reactor: DatagramReactor, scratch: UnsafeMutableRawBufferPointer, now: NIODeadline) {
        var sender = sockaddr_storage()
        var senderLength = socklen_t(0)
        guard let count = UDPSocket.receive(descriptor, into: scratch, from: &sender, senderLength: &senderLength),
              !finished, CInt(sender.ss_family) == AF_INET else { return }
        let (host, port) = withUnsafeBytes(of: sender) { raw -> (UInt32, Int) in
            let address = raw.load(as: sockaddr_in.self)
            return (address.sin_addr.s_addr, Int(UInt16(bigEndian: address.sin_port)))
        }
        // Replies come from the server's address (from a port of its choosing).
        guard case .v4(let server) = serverAddress, server.address.sin_addr.s_addr == host else { return }
        let firstReply = fetch.serverPort == nil
        let action: TFTPFetch.Action
        if count >= 4, scratch[0] == 0, scratch[1] == UInt8(TFTPOpcode.data.rawValue) {
            let block = UInt16(scratch[2]) << 8 | UInt16(scratch[3])
            action = fetch.receiveData(block: block, payload: UnsafeRawBufferPointer(rebasing: scratch[4..<count]), fromPort: port)
        } else {
            guard let packet = try? TFTPPacket.decode(ByteBuffer(bytes: UnsafeRawBufferPointer(rebasing: scratch[0..<count]))) else { return }
            action = fetch.receive(packet, fromPort: port)
        }
        if firstReply, fetch.serverPort == port { peer = DatagramPeer(storage: sender, length: senderLength) }
        perform(action, reactor: reactor, now: now)
    }

    func deadlineReached(_ reactor: DatagramReactor, now: NIODeadline) {
        guard !finished else { return }
        perform(fetch.timeout(), reactor: reactor, now: now)
    }

    func cancelled() {
        complete(.failed("simulator stopped"))
    }

    private func perform(_ action: TFTPFetch.Action, reactor: DatagramReactor, now: NIODeadline, first: Bool = false) {
        switch action {
        case .none:
            return
        case .send(let packet):
            send(packet)
            // Exponential back-off from `timeout`: lock-step TFTP waits on every block, so a fixed long
            // wait would hide server stalls and a fixed short one would flood a loaded server.
            reactor.setDeadline(now + timeout * Int64(1 << min(fetch.retransmissions, 5)), for: self)
        case .finish(let outcome, let packet):
            if let packet { send(packet) }
            complete(outcome)
            reactor.remove(self)
        }
    }

    private func send(_ packet: TFTPPacket) {
        encoded.clear()
        packet.encode(into: &encoded)
        encoded.withUnsafeReadableBytes { _ = UDPSocket.send(descriptor, head: $0, body: nil, to: peer) }
    }

    private func complete(_ outcome: TFTPFetch.Outcome) {
        guard !finished else { return }
        finished = true
        completion(outcome)
    }
}

enum TFTPClient {
    /// Reads (or probes) `filename` from `server`, the socket bound to `source` (nil: any address).
    static func fetch(_ fetch: TFTPFetch, server: SocketAddress, source: SocketAddress?, timeout: TimeAmount,
                      reactor: DatagramReactor) async -> TFTPFetch.Outcome {
        let socket: CInt
        do {
            socket = try UDPSocket.open(boundTo: source ?? SocketAddress(ipAddress: "0.0.0.0", port: 0))
        } catch {
            return .failed("bind: \(error)")
        }
        return await withCheckedContinuation { continuation in
            reactor.add(TFTPFetchEndpoint(descriptor: socket, fetch: fetch, server: server, timeout: timeout) {
                continuation.resume(returning: $0)
            })
        }
    }
}
