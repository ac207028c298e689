#if canImport(Glibc)
import Glibc
#endif
import DatagramIO
import Foundation
import NIOCore
import Synchronization
import Testing

/// An endpoint that echoes each datagram back with a prefix and logs what the reactor told it.
private final class EchoEndpoint: DatagramEndpoint, @unchecked Sendable {
    let descriptor: CInt
    let log = Mutex<[String]>([])
    /// Deadlines to set at start, relative to it, in order (the last one wins).
    var startDeadlines: [TimeAmount] = []
    var startedAt: NIODeadline?
    let firedAt = Mutex<[NIODeadline]>([])

    init(descriptor: CInt) {
        self.descriptor = descriptor
    }

    func start(_ reactor: DatagramReactor, now: NIODeadline) {
        startedAt = now
        log.withLock { $0.append("start") }
        for delay in startDeadlines { reactor.setDeadline(now + delay, for: self) }
    }

    func readable(_ reactor: DatagramReactor, scratch: UnsafeMutableRawBufferPointer, now: NIODeadline) {
        var sender = sockaddr_storage()
        var length = socklen_t(0)
        guard let count = UDPSocket.receive(descriptor, into: scratch, from: &sender, senderLength: &length) else { return }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: scratch[0..<count]), as: UTF8.self)
        log.withLock { $0.append("read \(text)") }
        let peer = DatagramPeer(storage: sender, length: length)
        let head = Array("echo ".utf8)
        head.withUnsafeBytes { _ = UDPSocket.send(descriptor, head: $0, body: ByteBuffer(string: text), to: peer) }
        if text == "bye" { reactor.remove(self) }
    }

    func deadlineReached(_ reactor: DatagramReactor, now: NIODeadline) {
        firedAt.withLock { $0.append(now) }
        log.withLock { $0.append("deadline") }
    }

    func cancelled() {
        log.withLock { $0.append("cancelled") }
    }
}

@Suite("DatagramReactor: sockets, deadlines, shutdown")
struct DatagramReactorTests {
    private func loopbackSocket() throws -> (CInt, SocketAddress) {
        let fd = try UDPSocket.open(boundTo: SocketAddress(ipAddress: "127.0.0.1", port: 0))
        return (fd, try #require(UDPSocket.localAddress(fd)))
    }

    /// A plain blocking client socket with a receive time-out.
    private func exchange(_ text: String, with server: SocketAddress) throws -> String? {
        let (client, _) = try loopbackSocket()
        defer { close(client) }
        var flags = fcntl(client, F_GETFL)
        flags &= ~O_NONBLOCK
        _ = fcntl(client, F_SETFL, flags)
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        Array(text.utf8).withUnsafeBytes { _ = UDPSocket.send(client, head: $0, body: nil, to: DatagramPeer(server)) }
        var buffer = [UInt8](repeating: 0, count: 2048)
        let count = recv(client, &buffer, buffer.count, 0)
        return count >= 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : nil
    }

    @Test("datagrams in and out (header and body in one sendmsg); a removed endpoint's socket is closed")
    func echo() throws {
        let reactor = try DatagramReactor(name: "test-reactor")
        defer { reactor.shutdown() }
        let (fd, address) = try loopbackSocket()
        let endpoint = EchoEndpoint(descriptor: fd)
        reactor.add(endpoint)
        #expect(try exchange("one", with: address) == "echo one")
        #expect(try exchange("bye", with: address) == "echo bye")
        // Removed and closed: nothing answers any more.
        #expect(try exchange("three", with: address) == nil)
        #expect(endpoint.log.withLock { $0 } == ["start", "read one", "read bye"])
    }

    @Test("the last deadline set wins, earlier or later; it fires once")
    func deadlines() throws {
        let reactor = try DatagramReactor(name: "test-reactor")
        defer { reactor.shutdown() }
        // Later than the first: the first entry comes due, finds the real deadline later, re-arms.
        let (fd1, _) = try loopbackSocket()
        let later = EchoEndpoint(descriptor: fd1)
        later.startDeadlines = [.milliseconds(50), .milliseconds(300)]
        // Earlier than the first: fires at the earlier one, long before the first.
        let (fd2, _) = try loopbackSocket()
        let earlier = EchoEndpoint(descriptor: fd2)
        earlier.startDeadlines = [.seconds(10), .milliseconds(50)]
        reactor.add(later)
        reactor.add(earlier)
        let waitUntil = Date().addingTimeInterval(5)
        while Date() < waitUntil, later.firedAt.withLock({ $0.isEmpty }) || earlier.firedAt.withLock({ $0.isEmpty }) {
            Thread.sleep(forTimeInterval: 0.05)
        }
        Thread.sleep(forTimeInterval: 0.3)  // no second firing either
        let laterFired = later.firedAt.withLock { $0 }, earlierFired = earlier.firedAt.withLock { $0 }
        #expect(laterFired.count == 1)
        #expect(earlierFired.count == 1)
        if let start = later.startedAt, let fired = laterFired.first {
            #expect(fired - start >= .milliseconds(300))
        }
        if let start = earlier.startedAt, let fired = earlierFired.first {
            #expect(fired - start >= .milliseconds(50))
            #expect(fired - start < .seconds(10))
        }
    }

    @Test("shutdown cancels what is registered; an endpoint added afterwards is cancelled at once")
    func shutdown() throws {
        let reactor = try DatagramReactor(name: "test-reactor")
        let (fd, _) = try loopbackSocket()
        let running = EchoEndpoint(descriptor: fd)
        running.startDeadlines = [.seconds(60)]
        reactor.add(running)
        Thread.sleep(forTimeInterval: 0.1)
        reactor.shutdown()
        #expect(running.log.withLock { $0 } == ["start", "cancelled"])
        #expect(fcntl(fd, F_GETFD) == -1)  // closed
        let (late, _) = try loopbackSocket()
        let afterwards = EchoEndpoint(descriptor: late)
        reactor.add(afterwards)
        #expect(afterwards.log.withLock { $0 } == ["cancelled"])
        #expect(fcntl(late, F_GETFD) == -1)
    }
}
