#if canImport(Glibc)
import Glibc
#endif
import CLinux
import NIOCore

/// A peer's socket address held as the kernel gives it, compared without building a `SocketAddress`.
public struct DatagramPeer: Sendable {
    private var storage = sockaddr_storage()
    public private(set) var length: socklen_t = 0

    public init(_ address: SocketAddress) {
        length = address.withSockAddr { pointer, size in
            withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: pointer, count: size)) }
            return socklen_t(size)
        }
    }

    /// A sender as `recvfrom` filled it in.
    public init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    /// Whether `other` (as recvfrom filled it) is this peer: same family, address and port.
    public func matches(_ other: UnsafePointer<sockaddr_storage>, length otherLength: socklen_t) -> Bool {
        guard otherLength == length else { return false }
        return withUnsafePointer(to: storage) { mine in
            switch CInt(mine.pointee.ss_family) {
            case AF_INET:
                return mine.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { a in
                    other.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { b in
                        b.pointee.sin_family == a.pointee.sin_family && a.pointee.sin_port == b.pointee.sin_port
                            && a.pointee.sin_addr.s_addr == b.pointee.sin_addr.s_addr
                    }
                }
            default:
                return memcmp(mine, other, Int(length)) == 0
            }
        }
    }

    /// Calls `body` with the address as a `sockaddr` pointer and its length.
    public func withSockAddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        withUnsafePointer(to: storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}

/// Plain non-blocking UDP sockets for `DatagramReactor` endpoints.
public enum UDPSocket {
    /// A non-blocking, close-on-exec UDP socket bound to `address` (port 0: an ephemeral port). The
    /// socket lives in the network namespace of the calling thread.
    public static func open(boundTo address: SocketAddress) throws -> CInt {
        let family: CInt = if case .v6 = address { AF_INET6 } else { AF_INET }
        let fd = socket(family, CInt(SOCK_DGRAM.rawValue) | CInt(SOCK_NONBLOCK.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw DatagramReactor.ReactorError.system("socket", errno) }
        let bound = address.withSockAddr { pointer, size in bind(fd, pointer, socklen_t(size)) }
        guard bound == 0 else {
            let code = errno
            close(fd)
            throw DatagramReactor.ReactorError.system("bind \(address)", code)
        }
        return fd
    }

    /// The address `fd` is bound to.
    public static func localAddress(_ fd: CInt) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard result == 0 else { return nil }
        switch CInt(storage.ss_family) {
        case AF_INET:
            return withUnsafeBytes(of: storage) { SocketAddress($0.load(as: sockaddr_in.self)) }
        case AF_INET6:
            return withUnsafeBytes(of: storage) { SocketAddress($0.load(as: sockaddr_in6.self)) }
        default:
            return nil
        }
    }

    /// Reads one datagram into `buffer`; its length and who sent it, or nil (nothing queued, or an
    /// error such as an ICMP unreachable reported on the socket: the endpoint's deadline recovers).
    public static func receive(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer,
                               from sender: inout sockaddr_storage, senderLength: inout socklen_t) -> Int? {
        senderLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let count = withUnsafeMutablePointer(to: &sender) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                recvfrom(fd, buffer.baseAddress, buffer.count, 0, $0, &senderLength)
            }
        }
        return count >= 0 ? count : nil
    }

    /// Sends `head` then `body` as one datagram to `peer`, without copying either (sendmsg, two iovecs).
    /// A full socket buffer or an ICMP error drops it, as the network may: the sender's deadline
    /// retransmits.
    @discardableResult
    public static func send(_ fd: CInt, head: UnsafeRawBufferPointer, body: ByteBuffer?, to peer: DatagramPeer) -> Bool {
        peer.withSockAddr { address, length in
            withUnsafeTemporaryAllocation(of: iovec.self, capacity: 2) { vectors in
                vectors[0] = iovec(iov_base: UnsafeMutableRawPointer(mutating: head.baseAddress), iov_len: head.count)
                func sendVectors(_ count: Int) -> Bool {
                    var message = msghdr()
                    message.msg_name = UnsafeMutableRawPointer(mutating: address)
                    message.msg_namelen = length
                    message.msg_iov = vectors.baseAddress
                    message.msg_iovlen = count
                    return sendmsg(fd, &message, 0) >= 0
                }
                guard let body, body.readableBytes > 0 else { return sendVectors(1) }
                return body.withUnsafeReadableBytes { bytes in
                    vectors[1] = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
                    return sendVectors(2)
                }
            }
        }
    }
}
