#if canImport(Glibc)
import Glibc
#endif
import HTTPTypes
import NIOCore

/// What the fast path answers itself, registered by the service (`HTTPService.makeFastRoutes`): GET and
/// HEAD of the boot root's files, and POST routes answered from their whole body.
struct FastRoutes: Sendable {
    /// A POST to exactly `path`, answered on the event loop; `answer` returns nil to leave the request
    /// to the router (which reads it again and answers, an error as a rule).
    struct Post: Sendable {
        var path: String
        /// Larger bodies go to the router (which answers 413).
        var maximumBodySize: Int
        var answer: @Sendable (_ body: ByteBuffer, _ remote: SocketAddress?) -> Reply?
    }

    /// A fast route's answer; `Content-Length` is added.
    struct Reply {
        var status: HTTPResponse.Status
        var fields: HTTPFields
        var body: ByteBuffer
    }

    /// A GET of a path under `prefix`, answered on the event loop; `answer` gets the rest of the path
    /// (no query), the request's head (`RequestHead.field`) and returns nil to leave it to the router.
    struct Get: Sendable {
        var prefix: String
        var answer: @Sendable (_ rest: String, _ head: ByteBuffer, _ remote: SocketAddress?) -> Reply?
    }

    /// Files: small ones from the first request, large ones once the router has served their version
    /// (see `RootFileProvider.fastFile`).
    var files: RootFileProvider
    var posts: [Post] = []
    var gets: [Get] = []
    /// Called per file answered, with the bytes of the body sent from memory (0 for sendfile: the
    /// provider's delivery counts those).
    var fileAnswered: @Sendable (_ bodyBytes: Int) -> Void = { _ in }

    /// The largest body of a POST to `target`, if it is a route here.
    func postLimit(_ target: Slice<UnsafeRawBufferPointer>) -> Int? {
        posts.first { target.elementsEqual($0.path.utf8) }?.maximumBodySize
    }
}

/// The first handler of every HTTP connection (see `BootHTTPChannel`): it answers the requests a boot
/// storm is made of from the raw bytes, before NIO's HTTP/1 codec, and hands everything else to the
/// codec unchanged. Profiles of 4 KiB GETs showed the codec (llhttp callbacks, the HTTPTypes
/// conversion both ways, the response encoder) and the router's hop to the concurrency pool costing
/// more than our own work; here a GET of a cached file is answered with three buffers that already
/// exist (the version's head, this second's `Server`/`Date` lines, the content) in one `writev`, and a
/// large file with sendfile.
///
/// It answers (`FastRoutes`): GET/HEAD over HTTP/1.1 without a condition, Range or body, of a small file
/// or of a large one the router already served in this version, and GETs under a registered prefix
/// (a node's secrets); POSTs to a registered route with a `Content-Length` body.
/// It forwards a complete head (and such a POST's body) to the codec when it is not one of those, or
/// when a request it forwarded is still unanswered on this connection (responses keep request order:
/// `ConnectionTimeoutHandler` sends `RoutedResponseEnded` down the pipeline as each routed response
/// ends). A request with another kind of body, an `Upgrade`, a bare-LF line, or anything it does not
/// parse turns it into a pass-through for the rest of the connection, so the codec sees every byte it
/// would have seen without this handler.
final class FastPath: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    /// Tells `ConnectionTimeoutHandler` that a request was read and answered here (it never saw the
    /// parts); `streaming`: the body is still being sent (`StreamEnded` follows).
    struct Answered: Sendable {
        var streaming: Bool
    }

    struct StreamEnded: Sendable {}

    /// Sent towards the socket after the end of each response the router wrote.
    struct RoutedResponseEnded: Sendable {}

    /// Heads longer than this are left to the decoder and its limits.
    static let headLimit = 16 * 1024

    private let routes: FastRoutes
    /// Largest body read here (0: no POST routes).
    private let bodyLimit: Int
    /// Bytes of a head (or a POST) not complete yet.
    private var pending: ByteBuffer?
    private var passThrough = false
    private var closing = false
    /// Requests forwarded to the codec whose response has not ended.
    private var routed = 0
    private var trailer: ResponseHead.Trailer

    init(routes: FastRoutes, serverName: String?) {
        self.routes = routes
        bodyLimit = routes.posts.map(\.maximumBodySize).max() ?? 0
        trailer = ResponseHead.Trailer(server: serverName)
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
            let scan = buffer.withUnsafeReadableBytes { [routes] in RequestHead.scan($0, postLimit: routes.postLimit) }
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
                forward(buffer.readSlice(length: length)!, context: context)
            case .eligible(let length, let path, let isHead, let close):
                guard routed == 0, let answer = isHead ? file(at: path, in: buffer, isHead: true, context: context)
                        : get(path, length: length, in: buffer, context: context) ?? file(at: path, in: buffer, isHead: false, context: context)
                else {
                    forward(buffer.readSlice(length: length)!, context: context)
                    continue
                }
                buffer.moveReaderIndex(forwardBy: length)
                guard send(answer, close: close, context: context) else { return }
                answered = true
            case .post(let length, let target, let bodyLength, let close):
                guard buffer.readableBytes >= length + bodyLength else {
                    pending = buffer  // at most headLimit + bodyLimit
                    return
                }
                let body = buffer.getSlice(at: buffer.readerIndex + length, length: bodyLength)!
                guard routed == 0, let answer = post(target, in: buffer, body: body, context: context) else {
                    forward(buffer.readSlice(length: length + bodyLength)!, context: context)
                    continue
                }
                buffer.moveReaderIndex(forwardBy: length + bodyLength)
                guard send(answer, close: close, context: context) else { return }
                answered = true
            }
        }
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard event is RoutedResponseEnded else { return context.triggerUserOutboundEvent(event, promise: promise) }
        routed = max(0, routed - 1)
        promise?.succeed()
    }

    /// A whole request for the codec and the router.
    private func forward(_ request: ByteBuffer, context: ChannelHandlerContext) {
        routed += 1
        context.fireChannelRead(wrapInboundOut(request))
    }

    private enum Answer {
        case content(head: ByteBuffer, body: ByteBuffer?)
        case file(head: ByteBuffer, download: FileDownload?)
        case reply(head: ByteBuffer, body: ByteBuffer)
    }

    /// A POST route's answer, nil (nothing done) when it leaves the request to the router.
    /// - Parameter target: where the request target is among `buffer`'s readable bytes.
    private func post(_ target: Range<Int>, in buffer: ByteBuffer, body: ByteBuffer, context: ChannelHandlerContext) -> Answer? {
        guard let route = buffer.withUnsafeReadableBytes({ bytes in routes.posts.first { bytes[target].elementsEqual($0.path.utf8) } }),
              let reply = route.answer(body, context.remoteAddress) else { return nil }
        var fields = reply.fields
        fields[.contentLength] = String(reply.body.readableBytes)
        var head = context.channel.allocator.buffer(capacity: 128)
        ResponseHead.encode(reply.status, fields, into: &head)
        return .reply(head: head, body: reply.body)
    }

    /// A GET route's answer, nil when no route takes the path or the route leaves it to the router.
    /// - Parameters: `path`, `length`: the target's path and the head's length in `buffer`'s readable bytes.
    private func get(_ path: Range<Int>, length: Int, in buffer: ByteBuffer, context: ChannelHandlerContext) -> Answer? {
        guard !routes.gets.isEmpty else { return nil }
        let start = buffer.readerIndex + path.lowerBound
        guard let route = buffer.withUnsafeReadableBytes({ bytes in
            routes.gets.first { bytes[path].starts(with: $0.prefix.utf8) }
        }) else { return nil }
        let prefixLength = route.prefix.utf8.count
        let rest = buffer.getString(at: start + prefixLength, length: path.count - prefixLength)!
        guard let reply = route.answer(rest, buffer.getSlice(at: buffer.readerIndex, length: length)!, context.remoteAddress) else { return nil }
        var fields = reply.fields
        fields[.contentLength] = String(reply.body.readableBytes)
        var head = context.channel.allocator.buffer(capacity: 128)
        ResponseHead.encode(reply.status, fields, into: &head)
        return .reply(head: head, body: reply.body)
    }

    /// A cached small file, or a large one opened for sendfile (nil for HEAD); `path`: where the
    /// target's path is among `buffer`'s readable bytes.
    private func file(at path: Range<Int>, in buffer: ByteBuffer, isHead: Bool, context: ChannelHandlerContext) -> Answer? {
        // The name below the root: the path without its leading '/'s, made into a String once.
        var start = buffer.readerIndex + path.lowerBound
        let end = buffer.readerIndex + path.upperBound
        while start < end, buffer.getInteger(at: start, as: UInt8.self) == UInt8(ascii: "/") { start += 1 }
        let name = buffer.getString(at: start, length: end - start)!
        switch routes.files.fastFile(named: name, open: !isHead) {
        case nil:
            return nil
        case .content(let head, let content):
            return .content(head: head, body: isHead ? nil : content)
        case .head(let head):
            return .file(head: head, download: nil)
        case .open(let file):
            return .file(head: file.head, download: FileDownload(file, remote: context.remoteAddress, provider: routes.files))
        }
    }

    /// Writes the answer; false once the connection is closing (`Connection: close`).
    private func send(_ answer: Answer, close: Bool, context: ChannelHandlerContext) -> Bool {
        let lines = trailer.now(allocator: context.channel.allocator)
        let written: EventLoopPromise<Void>? = close ? context.eventLoop.makePromise() : nil
        switch answer {
        case .content(let head, let body):
            context.fireUserInboundEventTriggered(Answered(streaming: false))
            routes.fileAnswered(body?.readableBytes ?? 0)
            context.write(wrapOutboundOut(.byteBuffer(head)), promise: nil)
            context.write(wrapOutboundOut(.byteBuffer(lines)), promise: body == nil ? written : nil)
            if let body { context.write(wrapOutboundOut(.byteBuffer(body)), promise: written) }
        case .reply(let head, let body):
            context.fireUserInboundEventTriggered(Answered(streaming: false))
            context.write(wrapOutboundOut(.byteBuffer(head)), promise: nil)
            context.write(wrapOutboundOut(.byteBuffer(lines)), promise: nil)
            context.write(wrapOutboundOut(.byteBuffer(body)), promise: written)
        case .file(let head, let download):
            context.fireUserInboundEventTriggered(Answered(streaming: download != nil))
            routes.fileAnswered(0)  // the body's bytes are counted by the provider's delivery, as the router's are
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
}

/// One large file sent with sendfile, as up to `maximumRegions` regions of at least `regionSize`
/// bytes, so an abandoned download reports the bytes sent to within one region (the router's reports
/// them to within one chunk). Every region is queued at once: what the connection answers next is
/// written after the last of them, and a multi-GB image costs no more bookkeeping than 64 regions.
/// The file is closed, and the delivery reported (timeline, log, byte counters), once every region's
/// write ended.
final class FileDownload {
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

    /// Takes over the file's descriptor.
    init(_ file: RootFileProvider.OpenFile, remote: SocketAddress?, provider: RootFileProvider) {
        handle = NIOFileHandle(_deprecatedTakingOwnershipOfDescriptor: file.descriptor)
        relative = file.relative
        size = file.version.size
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

/// Where one request head ends in a byte stream, and whether `FastPath` may answer it.
enum RequestHead: Equatable {
    /// No blank line yet.
    case incomplete
    /// A body, an upgrade, bare LF, folded or malformed lines: only the decoder may read on.
    case unsupported
    /// A complete bodiless head of `length` bytes that the decoder and router must answer.
    case forward(length: Int)
    /// A complete plain GET or HEAD: `path` is the target's byte range before any query.
    case eligible(length: Int, path: Range<Int>, isHead: Bool, close: Bool)
    /// A complete head of a POST over HTTP/1.1 to a target `postLimit` knows (`target`: its bytes),
    /// whose body is `bodyLength` bytes (one `Content-Length`, 1...that route's limit) and follows the head.
    case post(length: Int, target: Range<Int>, bodyLength: Int, close: Bool)

    /// - Parameter postLimit: the largest body of a POST to this exact target answered before the
    ///   decoder (a fast route, see `FastRoutes`); nil for any other target.
    static func scan(_ bytes: UnsafeRawBufferPointer,
                     postLimit: (Slice<UnsafeRawBufferPointer>) -> Int? = { _ in nil }) -> RequestHead {
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
        let bodyLimit = eligible && method.elementsEqual("POST".utf8) ? postLimit(bytes[target]) ?? 0 : 0
        let isPost = bodyLimit > 0
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
                if isPost {
                    guard let bodyLength else { return .forward(length: length) }  // no body: the router says what is missing
                    return .post(length: length, target: target, bodyLength: bodyLength, close: close)
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
                if isPost {
                    // One plain decimal length within the limit; anything else (a second one, a sign,
                    // a huge one) is the decoder's to refuse.
                    guard bodyLength == nil, !value.isEmpty, value.count <= 9,
                          value.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return .unsupported }
                    let length = value.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
                    guard length > 0, length <= bodyLimit else { return .unsupported }
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
                    if isPost { return .unsupported }  // its body could not be handed on with the head
                    eligible = false
                }
            case .other:
                break
            }
            start = lineFeed + 1
        }
    }

    /// The value of the header `name` (ASCII, any case) in a complete head `RequestHead.scan` accepted,
    /// its surrounding blanks trimmed; nil when absent or not printable ASCII.
    static func field(_ name: String, in head: ByteBuffer) -> String? {
        head.withUnsafeReadableBytes { bytes -> String? in
            let lf = UInt8(ascii: "\n")
            guard var start = bytes.firstIndex(of: lf).map({ $0 + 1 }) else { return nil }
            let wanted = Array(name.utf8)
            while let lineFeed = bytes[start...].firstIndex(of: lf), lineFeed > start + 1 {
                let end = lineFeed - 1  // the CR
                if end - start > wanted.count, bytes[start + wanted.count] == UInt8(ascii: ":"),
                   zip(bytes[start..<(start + wanted.count)], wanted).allSatisfy({ lowercased($0) == lowercased($1) }) {
                    var valueStart = start + wanted.count + 1, valueEnd = end
                    while valueStart < valueEnd, bytes[valueStart] == UInt8(ascii: " ") || bytes[valueStart] == UInt8(ascii: "\t") { valueStart += 1 }
                    while valueEnd > valueStart, bytes[valueEnd - 1] == UInt8(ascii: " ") || bytes[valueEnd - 1] == UInt8(ascii: "\t") { valueEnd -= 1 }
                    let value = bytes[valueStart..<valueEnd]
                    guard value.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) else { return nil }
                    return String(decoding: value, as: UTF8.self)
                }
                start = lineFeed + 1
            }
            return nil
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

    private static func lowercased(_ byte: UInt8) -> UInt8 {
        byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
    }

    /// ASCII case-insensitive comparison with a lowercase literal.
    private static func equalsIgnoringCase(_ bytes: Slice<UnsafeRawBufferPointer>, _ lowercase: StaticString) -> Bool {
        guard bytes.count == lowercase.utf8CodeUnitCount else { return false }
        var index = 0
        for byte in bytes {
            if lowercased(byte) != lowercase.utf8Start[index] { return false }
            index += 1
        }
        return true
    }
}
