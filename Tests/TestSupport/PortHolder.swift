import Foundation

/// A socket of the test's own on a loopback or wildcard port: it holds the port as another server
/// would, and binding one tells whether anything still holds the port. UDP without SO_REUSEADDR; TCP
/// with it, which passes over connections in TIME_WAIT but never over a listening socket.
public final class PortHolder {
    public enum Kind: Sendable { case udp, tcp }

    public let port: Int
    private let descriptor: Int32

    /// Binds `host:port` (port 0: one the kernel picks), and listens when TCP.
    public init(_ kind: Kind, host: String, port: Int = 0) throws {
        let fd = socket(AF_INET, Int32(kind == .udp ? SOCK_DGRAM.rawValue : SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        var one: Int32 = 1
        if kind == .tcp { setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr(host)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && (kind == .udp || listen(fd, 16) == 0) && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else {
            let code = errno
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: code) ?? .EIO)
        }
        descriptor = fd
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    deinit { close(descriptor) }

    /// Whether `host:port` can be bound now, i.e. no socket holds it.
    public static func canBind(_ kind: Kind, host: String, port: Int) -> Bool {
        (try? PortHolder(kind, host: host, port: port)) != nil
    }

    /// Sends one datagram to 127.0.0.1:`port`.
    public static func send(_ bytes: [UInt8], toLoopbackPort port: Int) throws {
        let sender = try PortHolder(.udp, host: "127.0.0.1")
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let sent = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(sender.descriptor, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard sent == bytes.count else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    }
}
