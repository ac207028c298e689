import NIOCore
import NIOHTTP1
import NIOPosix

/// What one HTTP request came back with. Bodies are counted, not kept: a boot storm moves gigabytes.
struct HTTPOutcome: Sendable {
    var status: Int
    var bytes: Int
    /// Content-Length when the server sent one; a short body is a failed download.
    var contentLength: Int?
    /// When its last byte came (several URLs over one connection: where one ended and the next began).
    var ended: ContinuousClock.Instant?
}

enum HTTPClientError: Error, CustomStringConvertible {
    case badURL(String)
    case closedEarly(received: Int, url: String)
    case timedOut(String)
    case connect(String, any Error)

    var description: String {
        switch self {
        case .badURL(let url): "not an http:// URL: '\(url)'"
        case .closedEarly(let received, let url): "\(url): connection closed after \(received) body bytes"
        case .timedOut(let url): "\(url): no complete response in time"
        case .connect(let url, let error): "\(url): connect: \(error)"
        }
    }
}

/// `http://host[:port]/path` split for a request (no TLS, no user info: boot URLs are plain).
struct HTTPURL: Sendable {
    var host: String
    var port: Int
    var path: String

    init?(_ text: String) {
        guard text.hasPrefix("http://") else { return nil }
        let rest = text.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        path = slash == rest.endIndex ? "/" : String(rest[slash...])
        if let colon = authority.lastIndex(of: ":") {
            guard let port = Int(authority[authority.index(after: colon)...]) else { return nil }
            host = String(authority[..<colon])
            self.port = port
        } else {
            host = String(authority)
            port = 80
        }
        guard !host.isEmpty else { return nil }
    }
}

/// Requests on one connection, all sent in its first write and answered in order: one with
/// `Connection: close` like lpxelinux and busybox wget, or several kept alive and pipelined like
/// `imagebuild-fetch` with several URLs (the last says close). The answers are read in order; one
/// that is not a 200 ends the run.
final class HTTPFetchHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let heads: [HTTPRequestHead]
    private let body: ByteBuffer?
    private let promise: EventLoopPromise<[HTTPOutcome]>
    private let url: String
    private var outcomes: [HTTPOutcome] = []
    private var outcome = HTTPOutcome(status: 0, bytes: 0, contentLength: nil)
    private var done = false

    init(heads: [HTTPRequestHead], body: ByteBuffer?, url: String, promise: EventLoopPromise<[HTTPOutcome]>) {
        self.heads = heads
        self.body = body
        self.url = url
        self.promise = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        // All requests at once, in one write (HTTP/1.1 pipelining), as imagebuild-fetch sends them.
        for head in heads {
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            if let body { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
            context.write(wrapOutboundOut(.end(nil)), promise: nil)
        }
        context.flush()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let response):
            outcome = HTTPOutcome(status: Int(response.status.code), bytes: 0,
                                  contentLength: response.headers.first(name: "content-length").flatMap { Int($0) })
        case .body(let buffer):
            outcome.bytes += buffer.readableBytes
        case .end:
            guard !done else { return }
            outcome.ended = .now
            outcomes.append(outcome)
            // An answer that is not a 200 ends the run, as imagebuild-fetch stops at the first failure.
            if outcomes.count < heads.count, outcome.status == 200 { return }
            done = true
            promise.succeed(outcomes)
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !done else { return }
        done = true
        promise.fail(error)
        context.close(promise: nil)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        guard !done else { return }
        done = true
        promise.fail(HTTPClientError.closedEarly(received: outcome.bytes, url: heads.count > 1 ? "\(url) (answer \(outcomes.count + 1))" : url))
    }
}

enum HTTPClient {
    /// GET (or POST with a JSON body) `url` from a socket bound to `source` (nil: any address),
    /// bounded by `timeout` from connect to the last byte.
    static func fetch(_ url: String, method: HTTPMethod = .GET, jsonBody: String? = nil, source: SocketAddress?,
                      timeout: TimeAmount, group: any EventLoopGroup) async throws -> HTTPOutcome {
        try await fetch([url], method: method, jsonBody: jsonBody, source: source, timeout: timeout, group: group)[0]
    }

    /// `urls` (of one server) in order over one connection, kept alive between them; stops after the
    /// first answer that is not a 200 (the last outcome then). Bounded by `timeout` as a whole.
    static func fetch(_ urls: [String], method: HTTPMethod = .GET, jsonBody: String? = nil, source: SocketAddress?,
                      timeout: TimeAmount, group: any EventLoopGroup) async throws -> [HTTPOutcome] {
        let targets = try urls.map { url in
            guard let target = HTTPURL(url) else { throw HTTPClientError.badURL(url) }
            return target
        }
        let target = targets[0], url = urls[0]
        guard targets.allSatisfy({ $0.host == target.host && $0.port == target.port }) else { throw HTTPClientError.badURL(urls.joined(separator: ",")) }
        let loop = group.any()  // the loop this node's task runs on (EventLoopExecutor): no hop
        let promise = loop.makePromise(of: [HTTPOutcome].self)
        var body: ByteBuffer?
        if let jsonBody { body = ByteBuffer(string: jsonBody) }
        let heads = targets.indices.map { index in
            var headers = HTTPHeaders()
            headers.add(name: "Host", value: target.port == 80 ? target.host : "\(target.host):\(target.port)")
            headers.add(name: "User-Agent", value: "imagebuild-storm")
            headers.add(name: "Connection", value: index == targets.count - 1 ? "close" : "keep-alive")
            if let body {
                headers.add(name: "Content-Type", value: "application/json")
                headers.add(name: "Content-Length", value: String(body.readableBytes))
            }
            return HTTPRequestHead(version: .http1_1, method: method, uri: targets[index].path, headers: headers)
        }
        var bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelInitializer { [body] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(HTTPFetchHandler(heads: heads, body: body, url: url, promise: promise))
                }
            }
        if let source { bootstrap = bootstrap.bind(to: source) }
        let channel: any Channel
        do {
            // Boot URLs carry an address: connecting to it directly skips the resolver and Happy Eyeballs,
            // which cost the simulator more than the connection itself.
            if let address = try? SocketAddress(ipAddress: target.host, port: target.port) {
                channel = try await bootstrap.connect(to: address).get()
            } else {
                channel = try await bootstrap.connect(host: target.host, port: target.port).get()
            }
        } catch {
            promise.fail(error)  // the handler may never have been added
            throw HTTPClientError.connect(url, error)
        }
        let timer = loop.scheduleTask(in: timeout) {
            promise.fail(HTTPClientError.timedOut(url))
            channel.close(promise: nil)
        }
        defer { timer.cancel() }
        return try await promise.futureResult.get()
    }
}
