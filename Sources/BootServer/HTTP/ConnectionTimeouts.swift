import CLinux
import NIOCore
import NIOHTTPTypes

/// Time limits per connection, against clients that hold a connection without using it.
public struct HTTPTimeouts: Sendable, Hashable {
    /// No request in progress (before the first, between keep-alive requests).
    public var idle: TimeAmount = .seconds(60)
    /// From the first byte of a request head to its end (slowloris).
    public var header: TimeAmount = .seconds(15)
    /// Between two reads of a request body.
    public var body: TimeAmount = .seconds(15)
    /// The client has not read any of our response for this long: the socket stayed unwritable and the
    /// kernel's count of bytes the client acknowledged did not grow (sampled every quarter of this).
    public var send: TimeAmount = .seconds(60)

    public init() {}
}

/// Why a connection was closed by a time-out.
enum ConnectionTimeoutReason: String, Sendable, CaseIterable {
    case idle, header, body, send
}

/// Tracks one connection's activity; pure (time comes in as an argument), so every time-out rule is
/// unit-tested without sockets. `ConnectionTimeoutHandler` feeds it from the channel pipeline.
struct ConnectionTimeoutState {
    let limits: HTTPTimeouts
    private(set) var lastActivity: NIODeadline
    /// A read brought bytes but no complete head: a head is arriving since then.
    private(set) var headStarted: NIODeadline?
    /// A head arrived and its end has not: the body is arriving (last progress).
    private(set) var bodyProgress: NIODeadline?
    /// Requests whose head arrived and whose response has not ended.
    private(set) var inFlight = 0
    private(set) var unwritableSince: NIODeadline?
    /// While unwritable: the client's acknowledged-byte count at the last sample, when that sample was
    /// taken, and when the count last grew. Writability alone is no measure of progress: a response
    /// queued whole (the sendfile path queues every region at once) keeps the channel unwritable until
    /// it is nearly sent, however steadily a slow client reads it.
    private(set) var acknowledgedBytes: UInt64?
    private(set) var lastAcknowledgementSample: NIODeadline?
    private(set) var sendProgress: NIODeadline?
    private var partInThisRead = false

    init(limits: HTTPTimeouts, now: NIODeadline) {
        self.limits = limits
        lastActivity = now
    }

    enum RequestPart { case head, body, end }

    mutating func read(_ part: RequestPart, now: NIODeadline) {
        lastActivity = now
        partInThisRead = true
        switch part {
        case .head:
            headStarted = nil
            inFlight += 1
            bodyProgress = now
        case .body:
            bodyProgress = now
        case .end:
            bodyProgress = nil
        }
    }

    /// The socket delivered bytes; if none of them completed a part, a head is on its way.
    mutating func readComplete(now: NIODeadline) {
        lastActivity = now
        if !partInThisRead && bodyProgress == nil && headStarted == nil { headStarted = now }
        if bodyProgress != nil && !partInThisRead { bodyProgress = now }
        partInThisRead = false
    }

    /// `FastPath` read a whole request and answered it, below the parts seen here;
    /// `streaming`: its body is still going out (`wroteResponseEnd` follows), so no idle clock runs.
    mutating func answeredEarly(streaming: Bool, now: NIODeadline) {
        lastActivity = now
        headStarted = nil
        partInThisRead = true
        if streaming { inFlight += 1 }
    }

    mutating func wroteResponseEnd(now: NIODeadline) {
        lastActivity = now
        inFlight = max(0, inFlight - 1)
    }

    mutating func wrote(now: NIODeadline) {
        lastActivity = now
    }

    mutating func writabilityChanged(writable: Bool, now: NIODeadline) {
        if writable {
            unwritableSince = nil
            acknowledgedBytes = nil
            lastAcknowledgementSample = nil
            sendProgress = nil
            lastActivity = now
        } else if unwritableSince == nil {
            unwritableSince = now
        }
    }

    /// Whether to read the kernel's count of acknowledged bytes now: every quarter of the send limit
    /// while the socket stays unwritable, so a download that finishes within that costs no system call.
    func wantsAcknowledgementSample(now: NIODeadline) -> Bool {
        guard let since = unwritableSince else { return false }
        return now - (lastAcknowledgementSample ?? since) >= .nanoseconds(limits.send.nanoseconds / 4)
    }

    /// The client has acknowledged `bytes` of this connection's output in all (TCP_INFO).
    mutating func acknowledged(_ bytes: UInt64, now: NIODeadline) {
        if let previous = acknowledgedBytes, bytes > previous { sendProgress = now }
        acknowledgedBytes = bytes
        lastAcknowledgementSample = now
    }

    /// The reason to close the connection at `now`, if any.
    func expired(now: NIODeadline) -> ConnectionTimeoutReason? {
        if let since = unwritableSince, now - max(since, sendProgress ?? since) >= limits.send { return .send }
        if let since = headStarted, now - since >= limits.header { return .header }
        if let since = bodyProgress, now - since >= limits.body { return .body }
        if inFlight == 0, headStarted == nil, unwritableSince == nil, now - lastActivity >= limits.idle { return .idle }
        return nil
    }
}

/// Closes connections whose client stalls (see `HTTPTimeouts`). Sits after the HTTP codec, so it sees
/// request/response parts, learns of raw reads through `channelReadComplete` and of the requests
/// `FastPath` answered through its events. Being where every routed response passes, it also tells
/// `FastPath` when one ended (`FastPath.RoutedResponseEnded`), so answers keep request order. Time is
/// the event loop's (`EventLoop.now`), so an `EmbeddedEventLoop` drives it in tests.
final class ConnectionTimeoutHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let limits: HTTPTimeouts
    private var state: ConnectionTimeoutState
    private var timer: RepeatedTask?
    private let tick: TimeAmount
    private let closed: @Sendable (ConnectionTimeoutReason, SocketAddress?) -> Void

    init(limits: HTTPTimeouts, closed: @escaping @Sendable (ConnectionTimeoutReason, SocketAddress?) -> Void) {
        self.limits = limits
        state = ConnectionTimeoutState(limits: limits, now: .now())
        let shortest = min(limits.idle, limits.header, limits.body, limits.send)
        tick = max(.milliseconds(50), min(.seconds(1), .nanoseconds(shortest.nanoseconds / 4)))
        self.closed = closed
    }

    func handlerAdded(context: ChannelHandlerContext) {
        state = ConnectionTimeoutState(limits: limits, now: context.eventLoop.now)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { task in
            let (handler, context) = loopBound.value
            handler.check(context: context, task: task)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    private func check(context: ChannelHandlerContext, task: RepeatedTask) {
        let now = context.eventLoop.now
        if state.wantsAcknowledgementSample(now: now), let bytes = Self.acknowledgedBytes(context.channel) {
            state.acknowledged(bytes, now: now)
        }
        guard let reason = state.expired(now: now) else { return }
        task.cancel()
        timer = nil
        closed(reason, context.remoteAddress)
        context.close(promise: nil)
    }

    /// Bytes of our output the peer has acknowledged, from TCP_INFO; nil where the channel has no socket
    /// options (tests' embedded channels). On the channel's own loop the option is read at once.
    private static func acknowledgedBytes(_ channel: any Channel) -> UInt64? {
        guard let provider = channel as? any SocketOptionProvider else { return nil }
        var bytes: UInt64?
        provider.unsafeGetSocketOption(level: .tcp, name: .tcp_info).assumeIsolated()
            .whenSuccess { (info: ib_tcp_info_head) in bytes = info.bytes_acked }
        return bytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part: ConnectionTimeoutState.RequestPart
        switch unwrapInboundIn(data) {
        case .head: part = .head
        case .body: part = .body
        case .end: part = .end
        }
        state.read(part, now: context.eventLoop.now)
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        state.readComplete(now: context.eventLoop.now)
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let answered = event as? FastPath.Answered {
            state.answeredEarly(streaming: answered.streaming, now: context.eventLoop.now)
        } else if event is FastPath.StreamEnded {
            state.wroteResponseEnd(now: context.eventLoop.now)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        state.writabilityChanged(writable: context.channel.isWritable, now: context.eventLoop.now)
        context.fireChannelWritabilityChanged()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .end = unwrapOutboundIn(data) else {
            state.wrote(now: context.eventLoop.now)
            return context.write(data, promise: promise)
        }
        state.wroteResponseEnd(now: context.eventLoop.now)
        context.write(data, promise: promise)
        context.triggerUserOutboundEvent(FastPath.RoutedResponseEnded(), promise: nil)
    }
}
