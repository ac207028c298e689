import BootProtocols
@testable import BootServer
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import ImageBuildKit
import NIOCore
import NIOEmbedded
import NIOHTTPTypes
import NIOPosix
import Synchronization
import Testing

/// Values a closure outside the loop collects.
private final class Log<Value: Sendable>: Sendable {
    private let values = Mutex<[Value]>([])
    func append(_ value: Value) { values.withLock { $0.append(value) } }
    var all: [Value] { values.withLock { $0 } }
}

/// What passes a point of the pipeline: inbound bytes and events, outbound events (all passed on).
private final class Recorder: ChannelDuplexHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny
    var inboundEvents: [Any] = []
    var outboundEvents: [Any] = []

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        inboundEvents.append(event)
        context.fireUserInboundEventTriggered(event)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        outboundEvents.append(event)
        context.triggerUserOutboundEvent(event, promise: promise)
    }
}

/// `FastPath` in an `EmbeddedChannel`, over a test boot root whose `pxelinux.cfg/default` was served
/// once (its content and head are cached).
private struct FastPathHarness {
    let fixture: HTTPTestRoot
    let provider: RootFileProvider
    let channel = EmbeddedChannel()
    let recorder = Recorder()
    let reports = Log<String>()
    let forwardedLog = Log<String>()

    init(served: [String] = ["pxelinux.cfg/default"]) throws {
        fixture = try HTTPTestRoot()
        let root = try #require(BootRootReader.canonicalRoot(fixture.root))
        provider = RootFileProvider(root: root, threadPool: .singleton,
                                    cache: SmallFileCache(fileLimit: 256 * 1024, totalLimit: 1 << 20),
                                    observe: { $0.hasPrefix("images/") }, delivered: { _ in })
        for name in served {
            guard case .read(let content) = try provider.reader.content(name),
                  let version = provider.reader.cached(name)?.version else { throw FileReadError(path: name, offset: 0, message: "not cached") }
            #expect(content.readableBytes > 0)
            provider.recordHead(name, version: version)
        }
        let reports = self.reports
        let post = FastRoutes.Post(path: "/api/v1/events", maximumBodySize: 64) { body, _ in
            let text = String(buffer: body)
            guard text.hasPrefix("{") else { return nil }
            reports.append(text)
            return FastRoutes.Reply(status: .accepted, fields: [.contentType: "application/json"], body: ByteBuffer(string: #"{"ok":true}"#))
        }
        try channel.pipeline.syncOperations.addHandlers([
            FastPath(routes: FastRoutes(files: provider, posts: [post]), serverName: "imagebuild"), recorder,
        ])
        channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 8080), promise: nil)
    }

    /// Sends `text` as one read and returns the bytes written back.
    func exchange(_ text: String) throws -> String {
        try channel.writeInbound(ByteBuffer(string: text))
        return try written()
    }

    /// All bytes handed to the codec so far, as text.
    func forwarded() throws -> String {
        while let buffer = try channel.readInbound(as: ByteBuffer.self) { forwardedLog.append(String(buffer: buffer)) }
        return forwardedLog.all.joined()
    }

    func written() throws -> String {
        var out = ""
        while let data = try channel.readOutbound(as: IOData.self) {
            guard case .byteBuffer(let buffer) = data else { Issue.record("a file region for a small file"); continue }
            out += String(buffer: buffer)
        }
        return out
    }

    func cleanup() {
        _ = try? channel.finish()
        fixture.cleanup()
    }
}

@Suite("HTTP channel handlers in an EmbeddedChannel")
struct HTTPPipelineHandlerTests {
    static let get = "GET /pxelinux.cfg/default HTTP/1.1\r\nHost: x\r\n\r\n"

    /// Status line and header fields (lowercased names) of each response in `text`, and its body.
    private func responses(_ text: String) -> [(status: String, fields: [String: String], body: String)] {
        var rest = Substring(text), out: [(String, [String: String], String)] = []
        while let end = rest.range(of: "\r\n\r\n") {
            let lines = rest[..<end.lowerBound].components(separatedBy: "\r\n")
            var fields: [String: String] = [:]
            for line in lines.dropFirst() {
                let parts = line.split(separator: ":", maxSplits: 1)
                fields[parts[0].lowercased()] = parts[1].trimmingCharacters(in: .whitespaces)
            }
            let length = Int(fields["content-length"] ?? "0") ?? 0
            let bodyStart = end.upperBound
            let available = rest[bodyStart...]
            let body = String(available.prefix(length))
            out.append((lines[0], fields, body))
            rest = available.dropFirst(body.count)
        }
        return out
    }

    @Test("a GET of a served boot file: the file's head (FileMiddleware's fields), Server and Date, the content")
    func getBootFile() throws {
        let harness = try FastPathHarness()
        defer { harness.cleanup() }
        let answers = responses(try harness.exchange(Self.get))
        try #require(answers.count == 1)
        let version = try #require(harness.provider.reader.cached("pxelinux.cfg/default")?.version)
        #expect(answers[0].status == "HTTP/1.1 200 OK")
        #expect(answers[0].body == "DEFAULT imagebuild\n")
        #expect(answers[0].fields["content-length"] == "19")
        #expect(answers[0].fields["content-type"] == "text/plain; charset=utf-8")
        #expect(answers[0].fields["accept-ranges"] == "bytes")
        #expect(answers[0].fields["etag"] == ResponseHead.eTag(modified: version.modificationDate, size: 19))
        #expect(answers[0].fields["server"] == "imagebuild")
        #expect(answers[0].fields["date"]?.hasSuffix(" GMT") == true)
        #expect(try harness.forwarded().isEmpty, "the codec saw the answered request")
        #expect(harness.recorder.inboundEvents.contains { ($0 as? FastPath.Answered)?.streaming == false })
    }

    @Test("a HEAD: the same head, no body")
    func head() throws {
        let harness = try FastPathHarness()
        defer { harness.cleanup() }
        let text = try harness.exchange("HEAD /pxelinux.cfg/default HTTP/1.1\r\nHost: x\r\n\r\n").lowercased()
        #expect(text.hasPrefix("http/1.1 200 ok\r\n"))
        #expect(text.contains("content-length: 19\r\n"))
        #expect(text.hasSuffix("\r\n\r\n"), "a body followed the head: \(text)")
    }

    @Test("a small file never asked for is read and answered here, with the head the router would record; an observed one is not")
    func firstRequestOfASmallFile() throws {
        let harness = try FastPathHarness(served: [])
        defer { harness.cleanup() }
        let answers = responses(try harness.exchange("GET /ipxe/boot.ipxe HTTP/1.1\r\n\r\n"))
        try #require(answers.count == 1)
        #expect(answers[0].status == "HTTP/1.1 200 OK")
        #expect(answers[0].body == "#!ipxe\nchain nodes/${mac:hexhyp}.ipxe\n")
        let entry = try #require(harness.provider.reader.cached("ipxe/boot.ipxe", needing: .head))
        #expect(entry.head.map { String(buffer: $0) } == String(buffer: ResponseHead.file(path: "/ipxe/boot.ipxe", version: entry.version)))
        #expect(try harness.forwarded().isEmpty)
        // Under images/ every download is reported as it ends: the router serves the first one.
        try harness.fixture.write("\(harness.fixture.imageDir)/small.bin", "12345")
        let request = "GET /\(harness.fixture.imageDir)/small.bin HTTP/1.1\r\n\r\n"
        #expect(try harness.exchange(request) == "")
        #expect(try harness.forwarded() == request)
    }

    @Test("Range, conditions, a miss and paths that escape go to the codec untouched", arguments: [
        "GET /pxelinux.cfg/default HTTP/1.1\r\nRange: bytes=0-6\r\n\r\n",
        "GET /pxelinux.cfg/default HTTP/1.1\r\nIf-None-Match: W/\"x\"\r\n\r\n",
        "GET /ipxe/nope.ipxe HTTP/1.1\r\n\r\n",
        "GET /images/nope HTTP/1.1\r\n\r\n",
        "GET /../secret.txt HTTP/1.1\r\n\r\n",
        "GET /pxelinux.cfg/../../secret.txt HTTP/1.1\r\n\r\n",
        "GET /escape.txt HTTP/1.1\r\n\r\n",
    ])
    func forwarded(request: String) throws {
        let harness = try FastPathHarness()
        defer { harness.cleanup() }
        // Even a cache entry under an escaping name, of the very file outside the root, is not answered.
        var info = stat()
        #expect(lstat(harness.fixture.base + "/secret.txt", &info) == 0)
        let secret = BootFileVersion(info)
        harness.provider.cache.insert("../secret.txt", version: secret, content: ByteBuffer(string: "top secret\n"))
        harness.provider.cache.record(head: ResponseHead.file(path: "/../secret.txt", version: secret), for: "../secret.txt", matching: secret)
        #expect(try harness.exchange(request) == "")
        #expect(try harness.forwarded() == request)
    }

    @Test("a pipelined pair is answered in order; behind a routed request, requests wait for its end")
    func pipelining() throws {
        let harness = try FastPathHarness()
        defer { harness.cleanup() }
        let pair = responses(try harness.exchange(Self.get + Self.get))
        #expect(pair.map(\.status) == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"])
        #expect(pair.map(\.body) == ["DEFAULT imagebuild\n", "DEFAULT imagebuild\n"])

        let ranged = "GET /pxelinux.cfg/default HTTP/1.1\r\nRange: bytes=0-6\r\n\r\n"
        #expect(try harness.exchange(ranged + Self.get) == "")
        #expect(try harness.forwarded() == ranged + Self.get, "the GET behind the routed one was answered first")
        // The router ends both responses; the next plain GET is the fast path's again.
        for _ in 0..<2 { harness.channel.pipeline.triggerUserOutboundEvent(FastPath.RoutedResponseEnded(), promise: nil) }
        #expect(responses(try harness.exchange(Self.get)).count == 1)
        #expect(try harness.forwarded() == ranged + Self.get)
    }

    @Test("Connection: close: the answer, then the connection closes")
    func close() throws {
        let harness = try FastPathHarness()
        defer { harness.cleanup() }
        let text = try harness.exchange("GET /pxelinux.cfg/default HTTP/1.1\r\nConnection: close\r\n\r\n" + Self.get)
        #expect(responses(text).count == 1)
        #expect(!harness.channel.isActive)
    }

    @Test("a fast POST route: answered 202 from its body; one it refuses goes to the router, which answers 400")
    func postRoute() throws {
        let harness = try FastPathHarness()
        defer { harness.cleanup() }
        let report = "POST /api/v1/events HTTP/1.1\r\nContent-Length: 8\r\n\r\n{\"a\":1}\n"
        let text = try harness.exchange(report).lowercased()
        #expect(text.hasPrefix("http/1.1 202 accepted\r\ncontent-type: application/json\r\ncontent-length: 11\r\nserver: imagebuild\r\ndate: "))
        #expect(text.hasSuffix("\r\n\r\n{\"ok\":true}"))
        #expect(harness.reports.all == ["{\"a\":1}\n"])
        let refused = "POST /api/v1/events HTTP/1.1\r\nContent-Length: 3\r\n\r\nbad"
        #expect(try harness.exchange(refused) == "")
        #expect(try harness.forwarded() == refused)
        #expect(harness.reports.all.count == 1)
    }

    // MARK: Time-outs

    private func timeoutChannel(_ limits: HTTPTimeouts) throws -> (EmbeddedChannel, Recorder, Log<ConnectionTimeoutReason>) {
        let channel = EmbeddedChannel()
        let recorder = Recorder()
        let reasons = Log<ConnectionTimeoutReason>()
        try channel.pipeline.syncOperations.addHandlers([
            recorder, ConnectionTimeoutHandler(limits: limits) { reason, _ in reasons.append(reason) },
        ])
        channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 8080), promise: nil)
        return (channel, recorder, reasons)
    }

    private var limits: HTTPTimeouts { HTTPTimeouts(idle: 4, header: 2, body: 2, send: 8) }

    @Test("time-outs: idle closes; a request in flight, or a fast-path download still streaming, does not")
    func idle() throws {
        let (channel, _, reasons) = try timeoutChannel(limits)
        try channel.writeInbound(HTTPRequestPart.head(.init(method: .get, scheme: nil, authority: nil, path: "/")))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(channel.isActive, "closed while the response was being made")
        try channel.writeOutbound(HTTPResponsePart.end(nil))
        channel.pipeline.fireUserInboundEventTriggered(FastPath.Answered(streaming: true))
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(channel.isActive, "closed while the fast path's download was streaming")
        channel.pipeline.fireUserInboundEventTriggered(FastPath.StreamEnded())
        channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(!channel.isActive)
        #expect(reasons.all == [.idle])
    }

    @Test("time-outs: a head that does not complete is cut at the header limit")
    func header() throws {
        let (channel, _, reasons) = try timeoutChannel(limits)
        channel.pipeline.fireChannelReadComplete()  // bytes came, no part
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(!channel.isActive)
        #expect(reasons.all == [.header])
    }

    @Test("the end of each routed response is told to the fast path, towards the socket")
    func routedResponseEnded() throws {
        let (channel, recorder, _) = try timeoutChannel(limits)
        try channel.writeOutbound(HTTPResponsePart.head(.init(status: .ok)))
        #expect(recorder.outboundEvents.isEmpty)
        try channel.writeOutbound(HTTPResponsePart.end(nil))
        #expect(recorder.outboundEvents.count == 1 && recorder.outboundEvents[0] is FastPath.RoutedResponseEnded)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }
}
