import Foundation
import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Answers plain GET and HEAD requests for small cached files on the connection's event loop, before
/// they reach Hummingbird. What every booting node fetches (pxelinux.cfg files, iPXE scripts, boot
/// loaders) is a few KiB; through the router each such request hops to the concurrency pool and back,
/// which cost five times nginx's CPU per request (see benchmarks/results). Here it costs one `fstatat`
/// (`BootRootReader.cached`).
///
/// Only the plainest requests take this path, so its answers are exactly Hummingbird's: the response
/// headers are the ones `FileMiddleware` produced for the same file version (recorded by
/// `StaticFileGuard`), with a fresh `Date`; `Connection: close` (busybox wget, lwIP) closes after the
/// answer, as the router does. Anything else goes on to the router unchanged: Range and conditional
/// requests, files under `images/` (their downloads feed the timeline), files not cached or changed
/// since, and every request while a routed one on the same connection is unanswered (responses must
/// keep request order when a client pipelines).
final class StaticFastPath: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let provider: RootFileProvider
    private let serverName: String?
    private let counted: @Sendable (_ bodyBytes: Int) -> Void
    /// Requests routed on this connection whose response has not ended; shared with the connection's
    /// `EarlyStaticFastPath`, which answers nothing while one is outstanding.
    final class Routing {
        var routed = 0
    }

    private let routing = Routing()
    /// The answer to the request being read, sent at its end; nil while passing a request through.
    private var answer: Answer?
    private var passing = false
    /// A `Connection: close` request was answered: the connection is closing, later requests are dropped.
    private var closing = false
    private var date = HTTPDate()

    private let events: EventIntake?
    private let eventCounted: @Sendable (_ bodyBytes: Int) -> Void

    /// - Parameters:
    ///   - events: stage reports recorded by the early path (nil: the router reads them all).
    ///   - eventCounted: called per report answered there, with the answer's body size.
    init(provider: RootFileProvider, serverName: String?, events: EventIntake? = nil,
         eventCounted: @escaping @Sendable (Int) -> Void = { _ in }, counted: @escaping @Sendable (Int) -> Void) {
        self.provider = provider
        self.serverName = serverName
        self.events = events
        self.eventCounted = eventCounted
        self.counted = counted
    }

    /// Puts the connection's `EarlyStaticFastPath` in front of the HTTP decoder.
    func handlerAdded(context: ChannelHandlerContext) {
        let early = EarlyStaticFastPath(provider: provider, routing: routing, serverName: serverName, counted: counted,
                                        events: events, eventCounted: eventCounted)
        try? context.pipeline.syncOperations.addHandler(early, position: .first)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        let part = unwrapInboundIn(data)
        switch part {
        case .head(let request):
            if routing.routed == 0, let found = lookup(request) {
                answer = found
                passing = false
                return
            }
            routing.routed += 1
            passing = true
            context.fireChannelRead(data)
        case .body:
            if passing { context.fireChannelRead(data) }
        case .end:
            if passing {
                passing = false
                context.fireChannelRead(data)
                return
            }
            guard let answer else { return }
            self.answer = nil
            context.write(wrapOutboundOut(.head(answer.head)), promise: nil)
            if let body = answer.body { context.write(wrapOutboundOut(.body(body)), promise: nil) }
            if answer.close {
                closing = true
                let promise = context.eventLoop.makePromise(of: Void.self)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: promise)
                let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
                promise.futureResult.whenComplete { _ in loopBound.value.close(promise: nil) }
            } else {
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
            counted(answer.body?.readableBytes ?? 0)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data), routing.routed > 0 { routing.routed -= 1 }
        context.write(data, promise: promise)
    }

    /// No Range and no condition: the requests answered here, and the ones whose response headers
    /// `StaticFileGuard` records for it (a 206 or 304 has other headers).
    static func unconditional(_ fields: HTTPFields) -> Bool {
        fields[.range] == nil && fields[.ifNoneMatch] == nil && fields[.ifModifiedSince] == nil && fields[.ifRange] == nil
    }

    private struct Answer {
        var head: HTTPResponse
        var body: ByteBuffer?
        var close: Bool
    }

    private func lookup(_ request: HTTPRequest) -> Answer? {
        guard request.method == .get || request.method == .head, Self.unconditional(request.headerFields),
              let target = request.path else { return nil }
        let rawPath = target.utf8.firstIndex(of: UInt8(ascii: "?")).map { target[..<$0] } ?? target[...]
        let path: String
        if rawPath.utf8.contains(UInt8(ascii: "%")) {
            guard let decoded = String(rawPath).removingPercentEncoding else { return nil }
            path = decoded
        } else {
            path = String(rawPath)
        }
        guard let id = provider.cachedFileIdentifier(path), let content = id.cached, let headers = id.cachedHeaders else { return nil }
        var fields = headers
        fields[.date] = date.now()
        if let serverName { fields[.server] = serverName }
        let close = request.headerFields[.connection].map { $0.lowercased() == "close" } ?? false
        return Answer(head: HTTPResponse(status: .ok, headerFields: fields), body: request.method == .get ? content : nil, close: close)
    }
}

/// The `Date` header's value, formatted once per second (RFC 9110 §5.6.7 IMF-fixdate).
struct HTTPDate {
    /// The second `now()` last formatted (callers that cache more per second compare it).
    private(set) var second = 0
    private var text = ""

    mutating func now() -> String {
        var clock = timespec()
        clock_gettime(CLOCK_REALTIME, &clock)
        if clock.tv_sec != second || text.isEmpty {
            second = clock.tv_sec
            text = Self.format(second)
        }
        return text
    }

    static func format(_ seconds: Int) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(days[Int(parts.tm_wday)]), \(two(parts.tm_mday)) \(months[Int(parts.tm_mon)]) \(parts.tm_year + 1900) "
            + "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }
}
