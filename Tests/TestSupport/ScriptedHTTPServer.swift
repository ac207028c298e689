import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An HTTP/1.1 server on 127.0.0.1 whose answers a test decides, for testing clients (stage 1's
/// loader and scripts): every request is recorded with the port it came from, which only the
/// kernel can tell, and answered by `respond`; each answer closes its connection (after reading
/// what the client sent ahead, so the close resets nothing). One thread per
/// connection; `stop()` closes the listener (and is called when the server is released).
public final class ScriptedHTTPServer: @unchecked Sendable {
    public struct Request: Sendable {
        public var method: String
        /// As the request line has it, query included.
        public var path: String
        /// Names in lower case; a repeated header keeps its last value.
        public var headers: [String: String]
        public var body: Data
        /// The client's source port.
        public var peerPort: Int

        public func header(_ name: String) -> String? { headers[name.lowercased()] }
        public var bodyText: String { String(decoding: body, as: UTF8.self) }
    }

    public struct Response: Sendable {
        public var status: Int
        public var reason: String
        public var body: Data

        public init(status: Int, reason: String, body: Data = Data()) {
            self.status = status
            self.reason = reason
            self.body = body
        }

        public static func ok(_ body: Data) -> Response { Response(status: 200, reason: "OK", body: body) }
        public static func text(_ status: Int, _ reason: String, _ body: String) -> Response {
            Response(status: status, reason: reason, body: Data(body.utf8))
        }
    }

    public let port: Int
    private let listener: Int32
    private let respond: @Sendable (Request) -> Response
    private let recorded = Mutex<[Request]>([])

    public init(respond: @escaping @Sendable (Request) -> Response) throws {
        self.respond = respond
        (listener, port) = try listenOnLoopback(backlog: 64, what: "test HTTP server")
        Thread { [self] in acceptLoop() }.start()
    }

    deinit { stop() }

    /// `http://127.0.0.1:PORT`
    public var base: String { "http://127.0.0.1:\(port)" }
    public var requests: [Request] { recorded.withLock { $0 } }
    public func requests(to path: String) -> [Request] { requests.filter { $0.path == path } }

    private let stopped = Mutex(false)
    public func stop() {
        let first = stopped.withLock { done in defer { done = true }; return !done }
        guard first else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private func acceptLoop() {
        while true {
            var peer = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let client = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(listener, $0, &length) }
            }
            if client < 0 { if errno == EINTR { continue } else { return } }
            let peerPort = Int(UInt16(bigEndian: peer.sin_port))
            Thread { [self] in serve(client, peerPort: peerPort) }.start()
        }
    }

    private func serve(_ client: Int32, peerPort: Int) {
        defer { close(client) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var head = [UInt8]()
        var byte: UInt8 = 0
        while !head.suffix(4).elementsEqual([13, 10, 13, 10]) {
            guard read(client, &byte, 1) == 1, head.count < 64 << 10 else { return }
            head.append(byte)
        }
        let lines = String(decoding: head, as: UTF8.self).components(separatedBy: "\r\n")
        let requestLine = lines[0].split(separator: " ")
        guard requestLine.count >= 2 else { return }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = [UInt8]()
        if let length = headers["content-length"].flatMap({ Int($0) }), length > 0, length < 1 << 20 {
            body = [UInt8](repeating: 0, count: length)
            var have = 0
            while have < length {
                let n = body.withUnsafeMutableBytes { read(client, $0.baseAddress! + have, length - have) }
                guard n > 0 else { return }
                have += n
            }
        }
        let request = Request(method: String(requestLine[0]), path: String(requestLine[1]), headers: headers,
                              body: Data(body), peerPort: peerPort)
        recorded.withLock { $0.append(request) }
        let response = respond(request)
        var answer = Data("HTTP/1.1 \(response.status) \(response.reason)\r\nContent-Length: \(response.body.count)\r\nConnection: close\r\n\r\n".utf8)
        answer.append(response.body)
        guard answer.withUnsafeBytes({ sendAll(client, $0) }) else { return }
        lingerBeforeClose(client)
    }
}

/// Writes all of `bytes` to the socket `fd`; false when the peer went away.
public func sendAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var sent = 0
    while sent < bytes.count {
        let n = send(fd, bytes.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL))
        if n <= 0 { return false }
        sent += n
    }
    return true
}

/// The first half of a lingering close, as web servers do it: no more writes, and what the client
/// still sends (requests it pipelined) is read and dropped until it closes (at most 2 s), so that
/// closing `fd` afterwards does not reset the connection under the answer already sent.
public func lingerBeforeClose(_ fd: Int32) {
    shutdown(fd, Int32(SHUT_WR))
    var drain = timeval(tv_sec: 2, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &drain, socklen_t(MemoryLayout<timeval>.size))
    var scratch = [UInt8](repeating: 0, count: 4096)
    while read(fd, &scratch, scratch.count) > 0 {}
}

/// A TCP socket listening on 127.0.0.1 at a port the kernel picks: the file descriptor and the port.
/// Test servers and proxies open theirs here.
public func listenOnLoopback(backlog: Int32, what: String) throws -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let listening = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && listen(fd, backlog) == 0 && getsockname(fd, $0, &length) == 0
        }
    }
    guard listening else {
        let reason = String(cString: strerror(errno))
        close(fd)
        throw ProcessError("\(what): \(reason)")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}
