#if canImport(Glibc)
import Glibc
#endif
import NIOCore

/// `StaticFastPath`'s answer taken one step earlier: before NIO's HTTP/1 decoder, on the raw bytes.
/// Profiles of 4 KiB GETs showed the codec (llhttp callbacks, the HTTPTypes conversion both ways, the
/// response encoder) costing more than our own work; here a plain request for a cached file is
/// answered with three buffers that already exist (the file version's encoded head, this second's
/// `Server`/`Date` lines, the content): no allocation, one `writev`.
///
/// Stage reports (`POST /api/v1/events` with a `Content-Length` body, five per booting node) are read
/// and recorded here too, through the router's own `EventIntake`, instead of each hopping to the
/// concurrency pool and back through Hummingbird. A report the intake refuses goes to the router, which
/// answers the error. (In a storm most of a report's cost is its TCP connection, which stays.)
///
/// It only delimits what it can delimit exactly: CRLF-terminated heads of requests without a body, and
/// report bodies by their `Content-Length`.
/// Each complete head is either answered here (GET/HEAD over HTTP/1.1, no condition, no Range, a
/// cached small file outside `images/` or a large file the router already answered, see
/// `EarlyDownload`, and nothing routed on this connection still unanswered, so responses keep request
/// order) or handed to the decoder whole, where `StaticFastPath` and the router take it
/// as before. A request with a body, an `Upgrade`, a bare-LF line, or anything it does not parse turns
/// it into a pass-through for the rest of the connection, so the decoder sees every byte it would have
/// seen without this handler.
final class EarlyStaticFastPath: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = IOData

    /// Tells `ConnectionTimeoutHandler` that a request was read and answered here (it never saw the
    /// parts); `streaming`: the body is still being sent (`StreamEnded` follows).
    struct Answered: Sendable {
        var streaming: Bool
    }

    struct StreamEnded: Sendable {}

    /// Heads longer than this are left to the decoder and its limits.
    static let headLimit = 16 * 1024

    private let provider: RootFileProvider
    private let routing: StaticFastPath.Routing
    private let serverName: String?
    private let counted: @Sendable (_ bodyBytes: Int) -> Void
    private let events: EventIntake?
    /// Largest report body read here (0: reports are the router's).
    private let eventBodyLimit: Int
    private let eventCounted: @Sendable (_ bodyBytes: Int) -> Void
    /// Bytes of a head (or a report) not complete yet.
    private var pending: ByteBuffer?
    private var passThrough = false
    private var closing = false
    private var trailer = Trailer()

    init(provider: RootFileProvider, routing: StaticFastPath.Routing, serverName: String?,
         counted: @escaping @Sendable (Int) -> Void, events: EventIntake? = nil,
         eventCounted: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.provider = provider
        self.routing = routing
        self.serverName = serverName
        self.counted = counted
        self.events = events
        eventBodyLimit = events?.maximumBodySize ?? 0
        self.eventCounted = eventCounted
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if passThrough { return context.fireChannelRead(data) }
        if closing { return }
        var buffer = unwrapInboundIn(data)
        if var held = pending {
            pending = nil
            held.writeBuffer(&buffer)
            buffer = held
        }
        var answered = false
        defer { if answered { context.flush() } }
        while buffer.readableBytes > 0 {
            let scan = buffer.withUnsafeReadableBytes { [eventBodyLimit] in RequestHead.scan($0, eventBodyLimit: eventBodyLimit) }
            switch scan {
            case .incomplete:
                if buffer.readableBytes > Self.headLimit {
                    passThrough = true
                    context.fireChannelRead(wrapInboundOut(buffer))
                } else {
                    pending = buffer
                }
                return
            case .unsupported:
                passThrough = true
                context.fireChannelRead(wrapInboundOut(buffer))
                return
            case .forward(let length):
                context.fireChannelRead(wrapInboundOut(buffer.readSlice(length: length)!))
            case .eligible(let length, let path, let isHead, let close):
                let target = buffer.getString(at: buffer.readerIndex + path.lowerBound, length: path.count)!
                guard routing.routed == 0, let answer = answer(target, isHead: isHead, context: context) else {
                    context.fireChannelRead(wrapInboundOut(buffer.readSlice(length: length)!))
                    continue
                }
                buffer.moveReaderIndex(forwardBy: length)
                if send(answer, close: close, context: context) {
                    answered = true
                } else {
                    return
                }
            case .event(let length, let bodyLength, let close):
                guard buffer.readableBytes >= length + bodyLength else {
                    pending = buffer  // at most headLimit + the intake's body limit
                    return
                }
                let body = buffer.getSlice(at: buffer.readerIndex + length, length: bodyLength)!
                guard routing.routed == 0, let answer = record(body, context: context) else {
                    context.fireChannelRead(wrapInboundOut(buffer.readSlice(length: length + bodyLength)!))
                    continue
                }
                buffer.moveReaderIndex(forwardBy: length + bodyLength)
                if send(answer, close: close, context: context) {
                    answered = true
                } else {
                    return
                }
            }
        }
    }

    private enum Answer {
        case content(head: ByteBuffer, body: ByteBuffer?)
        case file(head: ByteBuffer, download: EarlyDownload?)
        case event(head: ByteBuffer, body: ByteBuffer)
    }

    /// A stage report recorded, and the router's 202 answer to it; nil (nothing recorded) when the
    /// intake refuses it, so the router reads it again and answers the error.
    private func record(_ body: ByteBuffer, context: ChannelHandlerContext) -> Answer? {
        guard let events, let event = try? events.accept(body, from: context.remoteAddress?.ipv4Address) else { return nil }
        let json = EventIntake.responseBody(event)
        var head = context.channel.allocator.buffer(capacity: 128)
        head.writeString("HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncache-control: no-store\r\ncontent-length: \(json.readableBytes)\r\n")
        return .event(head: head, body: json)
    }

    /// A cached small file, or a recorded large one opened for sendfile (nil for HEAD).
    private func answer(_ target: String, isHead: Bool, context: ChannelHandlerContext) -> Answer? {
        if let id = provider.cachedFileIdentifier(target), let content = id.cached, let head = id.cachedHead {
            return .content(head: head, body: isHead ? nil : content)
        }
        if isHead {
            guard let file = provider.recordedLargeFile(target) else { return nil }
            return .file(head: file.head, download: nil)
        }
        guard let file = provider.openRecordedLargeFile(target) else { return nil }
        let download = EarlyDownload(relative: file.relative, version: file.version, descriptor: file.descriptor,
                                     remote: context.remoteAddress, provider: provider)
        return .file(head: file.head, download: download)
    }

    /// Writes the answer; false once the connection is closing (`Connection: close`).
    private func send(_ answer: Answer, close: Bool, context: ChannelHandlerContext) -> Bool {
        let lines = trailer.now(server: serverName, allocator: context.channel.allocator)
        let written: EventLoopPromise<Void>? = close ? context.eventLoop.makePromise() : nil
        switch answer {
        case .content(let head, let body):
            context.fireUserInboundEventTriggered(Answered(streaming: false))
            counted(body?.readableBytes ?? 0)
            context.write(wrapOutboundOut(.byteBuffer(head)), promise: nil)
            context.write(wrapOutboundOut(.byteBuffer(lines)), promise: body == nil ? written : nil)
            if let body { context.write(wrapOutboundOut(.byteBuffer(body)), promise: written) }
        case .event(let head, let body):
            context.fireUserInboundEventTriggered(Answered(streaming: false))
            eventCounted(body.readableBytes)
            context.write(wrapOutboundOut(.byteBuffer(head)), promise: nil)
            context.write(wrapOutboundOut(.byteBuffer(lines)), promise: nil)
            context.write(wrapOutboundOut(.byteBuffer(body)), promise: written)
        case .file(let head, let download):
            context.fireUserInboundEventTriggered(Answered(streaming: download != nil))
            counted(0)  // the body's bytes are counted by the provider's delivery, as the router's are
            context.write(wrapOutboundOut(.byteBuffer(head)), promise: nil)
            context.write(wrapOutboundOut(.byteBuffer(lines)), promise: download == nil ? written : nil)
            if let download {
                let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
                download.send(through: context, last: written) {
                    loopBound.value.fireUserInboundEventTriggered(StreamEnded())
                }
            }
        }
        guard let written else { return true }
        // Connection: close (busybox wget, lwIP): the answer, then the end of the connection.
        closing = true
        pending = nil
        context.flush()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        written.futureResult.whenComplete { _ in loopBound.value.close(promise: nil) }
        return false
    }

    /// The `Server` and `Date` lines and the blank line that ends the head, encoded once per second.
    private struct Trailer {
        private var date = HTTPDate()
        private var encodedSecond = -1
        private var bytes = ByteBuffer()

        mutating func now(server: String?, allocator: ByteBufferAllocator) -> ByteBuffer {
            let text = date.now()
            if date.second != encodedSecond {
                encodedSecond = date.second
                bytes = allocator.buffer(capacity: 64)
                if let server { bytes.writeString("server: \(server)\r\n") }
                bytes.writeString("date: \(text)\r\n\r\n")
            }
            return bytes
        }
    }
}

/// One large file sent with sendfile, as up to `maximumRegions` regions of at least `regionSize`
/// bytes, so an abandoned download reports the bytes sent to within one region (the router's reports
/// them to within one chunk). Every region is queued at once: what the connection answers next is
/// written after the last of them, and a multi-GB image costs no more bookkeeping than 64 regions.
/// The file is closed, and the delivery reported (timeline, log, byte counters), once every region's
/// write ended.
final class EarlyDownload {
    static let regionSize = 1 << 20
    static let maximumRegions = 64

    private let handle: NIOFileHandle
    private let relative: String
    private let size: Int64
    private let remote: SocketAddress?
    private let delivered: @Sendable (RootFileProvider.Delivery) -> Void
    private var sent: Int64 = 0
    private var outstanding = 0
    private var failure: (any Error)?

    /// Takes over `descriptor`: the recorded version, opened by the provider's reader.
    init(relative: String, version: BootFileVersion, descriptor: CInt, remote: SocketAddress?, provider: RootFileProvider) {
        handle = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: descriptor)
        self.relative = relative
        size = version.size
        self.remote = remote
        delivered = provider.delivered
    }

    func send(through context: ChannelHandlerContext, last: EventLoopPromise<Void>?, ended: @escaping () -> Void) {
        let size = Int(self.size)
        guard size > 0 else {
            finish(ended: ended)
            last?.succeed()
            return
        }
        let regionSize = max(Self.regionSize, (size + Self.maximumRegions - 1) / Self.maximumRegions)
        var offset = 0
        while offset < size {
            let end = min(offset + regionSize, size)
            let region = FileRegion(fileHandle: handle, readerIndex: offset, endIndex: end)
            let promise = context.eventLoop.makePromise(of: Void.self)
            outstanding += 1
            let count = Int64(end - offset)
            promise.futureResult.assumeIsolated().whenComplete { [self] result in
                switch result {
                case .success: sent += count
                case .failure(let error): failure = failure ?? error
                }
                outstanding -= 1
                if outstanding == 0 { finish(ended: ended) }
            }
            if end == size, let last { promise.futureResult.cascade(to: last) }
            context.write(NIOAny(IOData.fileRegion(region)), promise: promise)
            offset = end
        }
        context.flush()
    }

    private func finish(ended: () -> Void) {
        try? handle.close()
        delivered(.init(relative: relative, remote: remote, bytes: UInt64(sent), expected: UInt64(size), error: failure))
        ended()
    }
}

/// Where one request head ends in a byte stream, and whether `EarlyStaticFastPath` may answer it.
enum RequestHead: Equatable {
    /// No blank line yet.
    case incomplete
    /// A body, an upgrade, bare LF, folded or malformed lines: only the decoder may read on.
    case unsupported
    /// A complete bodiless head of `length` bytes that the decoder and router must answer.
    case forward(length: Int)
    /// A complete plain GET or HEAD: `path` is the target's byte range before any query.
    case eligible(length: Int, path: Range<Int>, isHead: Bool, close: Bool)
    /// A complete head of `POST /api/v1/events` over HTTP/1.1 whose body is `bodyLength` bytes
    /// (one `Content-Length`, 1...`eventBodyLimit`) and follows the head.
    case event(length: Int, bodyLength: Int, close: Bool)

    static func scan(_ bytes: UnsafeRawBufferPointer, eventBodyLimit: Int = 0) -> RequestHead {
        let cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n")
        guard let firstLF = bytes.firstIndex(of: lf) else { return .incomplete }
        guard firstLF > 0, bytes[firstLF - 1] == cr else { return .unsupported }
        // Request line: METHOD SP target SP version.
        let line = 0..<(firstLF - 1)
        guard let space1 = bytes[line].firstIndex(of: UInt8(ascii: " ")), space1 > 0 else { return .unsupported }
        let afterMethod = (space1 + 1)..<line.upperBound
        guard let space2 = bytes[afterMethod].firstIndex(of: UInt8(ascii: " ")), space2 > space1 + 1 else { return .unsupported }
        let method = bytes[0..<space1], target = (space1 + 1)..<space2, version = bytes[(space2 + 1)..<line.upperBound]
        var eligible = version.elementsEqual("HTTP/1.1".utf8) && bytes[target.lowerBound] == UInt8(ascii: "/")
        let isEvent = eventBodyLimit > 0 && eligible && method.elementsEqual("POST".utf8)
            && bytes[target].elementsEqual("/api/v1/events".utf8)
        var bodyLength: Int?
        let isHead = method.elementsEqual("HEAD".utf8)
        eligible = eligible && (isHead || method.elementsEqual("GET".utf8))
        var pathEnd = target.upperBound
        for index in target {
            let byte = bytes[index]
            if byte <= 0x20 || byte >= 0x7f { return .unsupported }
            if byte == UInt8(ascii: "%") || byte == UInt8(ascii: "#") { eligible = false }
            if byte == UInt8(ascii: "?"), pathEnd == target.upperBound { pathEnd = index }
        }
        // Header lines up to the blank one.
        var close = false
        var start = firstLF + 1
        while true {
            guard let lineFeed = bytes[start...].firstIndex(of: lf) else { return .incomplete }
            guard lineFeed > start, bytes[lineFeed - 1] == cr else { return .unsupported }
            let end = lineFeed - 1
            if end == start {
                let length = lineFeed + 1
                if isEvent {
                    guard let bodyLength else { return .forward(length: length) }  // no body: the router says what is missing
                    return .event(length: length, bodyLength: bodyLength, close: close)
                }
                return eligible ? .eligible(length: length, path: target.lowerBound..<pathEnd, isHead: isHead, close: close)
                                : .forward(length: length)
            }
            guard let colon = bytes[start..<end].firstIndex(of: UInt8(ascii: ":")), colon > start else { return .unsupported }
            let name = bytes[start..<colon]
            if name.contains(where: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }) { return .unsupported }
            var valueStart = colon + 1, valueEnd = end
            while valueStart < valueEnd, bytes[valueStart] == UInt8(ascii: " ") || bytes[valueStart] == UInt8(ascii: "\t") { valueStart += 1 }
            while valueEnd > valueStart, bytes[valueEnd - 1] == UInt8(ascii: " ") || bytes[valueEnd - 1] == UInt8(ascii: "\t") { valueEnd -= 1 }
            let value = bytes[valueStart..<valueEnd]
            switch Field(name) {
            case .contentLength:
                if isEvent {
                    // One plain decimal length within the limit; anything else (a second one, a sign,
                    // a huge one) is the decoder's to refuse.
                    guard bodyLength == nil, !value.isEmpty, value.count <= 9,
                          value.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return .unsupported }
                    let length = value.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
                    guard length > 0, length <= eventBodyLimit else { return .unsupported }
                    bodyLength = length
                } else {
                    guard value.elementsEqual("0".utf8) else { return .unsupported }
                    eligible = false
                }
            case .transferEncoding, .upgrade, .expect:
                return .unsupported
            case .conditionOrRange:
                eligible = false
            case .connection:
                if equalsIgnoringCase(value, "close") {
                    close = true
                } else if !equalsIgnoringCase(value, "keep-alive") {
                    if isEvent { return .unsupported }  // its body could not be handed on with the head
                    eligible = false
                }
            case .other:
                break
            }
            start = lineFeed + 1
        }
    }

    private enum Field {
        case contentLength, transferEncoding, upgrade, expect, conditionOrRange, connection, other

        init(_ name: Slice<UnsafeRawBufferPointer>) {
            switch name.count {
            case 5 where equalsIgnoringCase(name, "range"): self = .conditionOrRange
            case 6 where equalsIgnoringCase(name, "expect"): self = .expect
            case 7 where equalsIgnoringCase(name, "upgrade"): self = .upgrade
            case 8 where equalsIgnoringCase(name, "if-match") || equalsIgnoringCase(name, "if-range"): self = .conditionOrRange
            case 10 where equalsIgnoringCase(name, "connection"): self = .connection
            case 13 where equalsIgnoringCase(name, "if-none-match"): self = .conditionOrRange
            case 14 where equalsIgnoringCase(name, "content-length"): self = .contentLength
            case 17 where equalsIgnoringCase(name, "if-modified-since") || equalsIgnoringCase(name, "transfer-encoding"):
                self = equalsIgnoringCase(name, "transfer-encoding") ? .transferEncoding : .conditionOrRange
            case 19 where equalsIgnoringCase(name, "if-unmodified-since"): self = .conditionOrRange
            default: self = .other
            }
        }
    }

    /// ASCII case-insensitive comparison with a lowercase literal.
    private static func equalsIgnoringCase(_ bytes: Slice<UnsafeRawBufferPointer>, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        var index = 0
        for byte in bytes {
            let folded = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
            if folded != lowercase.utf8Start[index] { return false }
            index += 1
        }
        return true
    }
}
