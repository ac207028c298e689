import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOHTTP1

/// The few S3 calls a publish makes (HEAD, PUT, multipart upload, an anonymous ranged GET), path-style,
/// signed with `SigV4Signer`, over AsyncHTTPClient. Request bodies are streamed from the file, a
/// megabyte at a time: a multi-GiB image never sits in memory.
///
/// No error quotes a request's headers or a response beyond the store's own `Code` and `Message`, so
/// no signature or secret can reach a message.
public final class S3Client: Sendable {
    public let settings: StoreSettings
    let signer: SigV4Signer
    let http: HTTPClient
    /// `host[:port]` as sent in `Host` and signed.
    let hostHeader: String

    public init(settings: StoreSettings) {
        self.settings = settings
        signer = SigV4Signer(credentials: settings.credentials, region: settings.region)
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        // A read that stalls this long means the store hangs; a whole upload may take much longer.
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(120))
        // A refused connection is the answer: say so at once rather than retrying until a time-out.
        configuration.connectionPool.retryConnectionEstablishment = false
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        let components = URLComponents(string: settings.endpoint)
        let host = components?.host ?? ""
        hostHeader = components?.port.map { "\(host):\($0)" } ?? host
    }

    /// Must be called once the work is done (AsyncHTTPClient's rule).
    public func shutdown() async { try? await http.shutdown() }

    /// An answer: status, headers, and up to 1 MiB of body.
    public struct Response: Sendable {
        public var status: UInt
        public var headers: HTTPHeaders
        public var body: Data

        public func header(_ name: String) -> String? { headers.first(name: name) }

        /// The store's `<Code>` and `<Message>` from an S3 error body, e.g. `AccessDenied: Access Denied`.
        public var errorText: String? {
            let text = String(decoding: body.prefix(4096), as: UTF8.self)
            func element(_ name: String) -> String? {
                guard let start = text.range(of: "<\(name)>"), let end = text.range(of: "</\(name)>", range: start.upperBound..<text.endIndex) else { return nil }
                return String(text[start.upperBound..<end.lowerBound].prefix(200)).filter { $0.isASCII && !$0.isNewline }
            }
            switch (element("Code"), element("Message")) {
            case (let code?, let message?): return "\(code): \(message)"
            case (let code?, nil): return code
            default: return nil
            }
        }
    }

    /// A request body: none, bytes in memory (small XML), or a range of a file, streamed.
    public enum Body: Sendable {
        case none
        case bytes(Data)
        case file(path: String, offset: Int64, length: Int64)
    }

    /// A signed request to `path` (path-style: `/bucket/key`), not yet encoded.
    public func send(_ method: HTTPMethod, path: String, query: [(name: String, value: String)] = [], headers: [(name: String, value: String)] = [],
                     body: Body = .none, payloadSHA256: String = SigV4Signer.emptyPayloadSHA256,
                     timeout: TimeAmount = .seconds(60)) async throws -> Response {
        var signed = SigV4Signer.Request(method: method.rawValue, path: path, query: query,
                                         headers: [("host", hostHeader)] + headers, payloadSHA256: payloadSHA256)
        signed.headers += signer.signedHeaders(for: signed, date: Date())
        let encodedQuery = query.map { "\(SigV4Signer.uriEncode($0.name, slash: true))=\(SigV4Signer.uriEncode($0.value, slash: true))" }
            .joined(separator: "&")
        let url = settings.endpoint + SigV4Signer.uriEncode(path, slash: false) + (encodedQuery.isEmpty ? "" : "?" + encodedQuery)
        var request = HTTPClientRequest(url: url)
        request.method = method
        for (name, value) in signed.headers { request.headers.replaceOrAdd(name: name, value: value) }
        switch body {
        case .none: break
        case .bytes(let data): request.body = .bytes(ByteBuffer(bytes: data))
        case .file(let file, let offset, let length):
            request.body = .stream(FileChunks(path: file, offset: offset, length: length), length: .known(length))
        }
        return try await execute(request, method: method, what: "\(method.rawValue) \(path)", timeout: timeout)
    }

    /// An unsigned GET of `url` (as a node does), with a `Range` header.
    public func anonymousGet(_ url: String, range: ClosedRange<Int64>) async throws -> Response {
        var request = HTTPClientRequest(url: url)
        request.method = .GET
        request.headers.add(name: "Range", value: "bytes=\(range.lowerBound)-\(range.upperBound)")
        return try await execute(request, method: .GET, what: "GET \(url)", timeout: .seconds(60))
    }

    func execute(_ request: HTTPClientRequest, method: HTTPMethod, what: String, timeout: TimeAmount) async throws -> Response {
        do {
            let response = try await http.execute(request, timeout: timeout)
            var body = Data()
            if method != .HEAD {
                let buffer = try await response.body.collect(upTo: 1 << 20)
                body = Data(buffer.readableBytesView)
            }
            return Response(status: response.status.code, headers: response.headers, body: body)
        } catch let error as StoreError {
            throw error
        } catch {
            throw classify(error, what: what)
        }
    }

    /// A transport failure as one line naming the endpoint.
    func classify(_ error: Error, what: String) -> StoreError {
        let text = String(describing: error)
        let reason: String
        if let client = error as? HTTPClientError, [.connectTimeout, .readTimeout, .deadlineExceeded].contains(client) {
            reason = "no answer in time"
        } else if text.contains("connectionRefused") || text.contains("Connection refused") || text.contains("ECONNREFUSED") {
            reason = "connection refused (is the store listening on this address and port?)"
        } else if text.contains("NoRoute") || text.contains("unreachable") || text.contains("connectTimeout") {
            reason = "no route to the endpoint"
        } else if text.contains("lookup") || text.contains("DNS") || text.contains("resolve") {
            reason = "its name does not resolve"
        } else {
            reason = String(text.prefix(160))
        }
        return StoreError(.unreachable, "\(settings): cannot reach the store (\(what)): \(reason)")
    }
}

/// A range of a file as an async sequence of 1 MiB buffers, read with `pread` as the upload asks for
/// them: the request streams the file, and memory holds one chunk at a time.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: String
    let offset: Int64
    let length: Int64
    static let chunk = 1 << 20

    struct AsyncIterator: AsyncIteratorProtocol {
        let path: String
        var position: Int64
        let end: Int64
        var fd: Int32 = -1

        mutating func next() async throws -> ByteBuffer? {
            guard position < end else {
                if fd >= 0 { close(fd); fd = -1 }
                return nil
            }
            if fd < 0 {
                fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw StoreError(.verify, "\(path): cannot be read (\(String(cString: strerror(errno))))") }
            }
            let count = Int(Swift.min(Int64(FileChunks.chunk), end - position))
            var buffer = ByteBuffer()
            buffer.reserveCapacity(count)
            let read = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { pointer in
                pread(fd, pointer.baseAddress, count, off_t(position))
            }
            guard read > 0 else {
                close(fd); fd = -1
                throw StoreError(.verify, "\(path): the file ended early (changed during the upload?)")
            }
            position += Int64(read)
            return buffer
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(path: path, position: offset, end: offset + length) }
}

/// SHA-256 of a range of a file (hex), read a megabyte at a time; `also` sees every chunk too (the
/// whole file's hash while the parts are hashed).
func sha256(ofFile path: String, offset: Int64, length: Int64, also: ((UnsafeRawBufferPointer) -> Void)? = nil) throws -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw StoreError(.verify, "\(path): cannot be read (\(String(cString: strerror(errno))))") }
    defer { close(fd) }
    var hasher = SHA256()
    var buffer = [UInt8](repeating: 0, count: FileChunks.chunk)
    var position = offset
    let end = offset + length
    while position < end {
        let count = Int(min(Int64(buffer.count), end - position))
        let read = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(position)) }
        guard read > 0 else { throw StoreError(.verify, "\(path): the file ended early (changed during the upload?)") }
        buffer.withUnsafeBytes { bytes in
            let chunk = UnsafeRawBufferPointer(rebasing: bytes[0..<read])
            hasher.update(bufferPointer: chunk)
            also?(chunk)
        }
        position += Int64(read)
    }
    return SigV4Signer.hex(hasher.finalize())
}
