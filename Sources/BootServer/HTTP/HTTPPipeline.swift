import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Synchronization

/// One HTTP connection's channel pipeline, in the order the client's bytes meet it:
///
/// 1. `FastPath`: answers plain GETs and HEADs of files (small ones from the first request, large ones
///    once the router served them), and the service's fast routes (stage reports, a node's secrets),
///    from the raw bytes; hands every other request to 2 whole.
/// 2. NIO's HTTP/1 codec (`HTTPRequestDecoder`, `HTTPResponseEncoder`) and `HTTP1ToHTTPServerCodec`
///    (NIOHTTP1 parts to HTTPTypes).
/// 3. `ConnectionTimeoutHandler`: idle, header, body and send time-outs for every request, whichever
///    path answered it; tells 1 when a routed response ended.
/// 4. Hummingbird's `HTTPConnectionStateHandler` (graceful shutdown), then the router
///    (`HTTPService.makeRouter`, wrapped by `routed(by:)`) through a `NIOAsyncChannel`.
///
/// What Hummingbird's `HTTP1Channel` does, but with 1 and 3 in place and named; no handler adds another.
/// `HTTPService` binds the listening socket and accepts connections into it.
struct BootHTTPChannel: ServerChildChannel, HTTPChannelHandler {
    typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>

    let responder: HTTPChannelHandler.Responder
    let fastRoutes: FastRoutes
    let serverName: String?
    let timeouts: HTTPTimeouts
    let timedOut: @Sendable (ConnectionTimeoutReason, SocketAddress?) -> Void

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let pipeline = channel.pipeline.syncOperations
            try pipeline.addHandler(FastPath(routes: fastRoutes, serverName: serverName))
            try pipeline.configureHTTPServerPipeline(
                withPipeliningAssistance: false,  // Hummingbird answers a connection's requests in order
                withErrorHandling: false,  // Hummingbird answers errors
                withOutboundHeaderValidation: false,  // HTTPTypes validated the fields
                withEncoderConfiguration: .init(),
                withDecoderLimitConfiguration: Self.decoderLimits)
            try pipeline.addHandler(HTTP1ToHTTPServerCodec(secure: false))
            try pipeline.addHandler(ConnectionTimeoutHandler(limits: timeouts, closed: timedOut))
            try pipeline.addHandler(HTTPConnectionStateHandler(idleTimeout: nil, logger: logger))
            return try NIOAsyncChannel(wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
        }
    }

    /// Hummingbird's defaults.
    static let decoderLimits: NIOHTTPDecoderLimitConfiguration = {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = 80 * 1024
        limits.maxHeaderListSize = 80 * 1024
        limits.maxHeaderFieldCount = 1000
        return limits
    }()

    func handle(value asyncChannel: Value, logger: Logger) async {
        await handleHTTP(asyncChannel: asyncChannel, logger: logger)
    }
}

extension BootHTTPChannel {
    /// What Hummingbird's `Application` puts around the router for each routed request, here because
    /// `HTTPService` binds its own socket instead of running an `Application`: the request context, a
    /// request id in the logger, a 500 for an error no middleware answered, and the `Date` and
    /// `Server` fields.
    static func routed(by router: some HTTPResponder<BootRequestContext>, serverName: String?,
                       logger: Logger) -> HTTPChannelHandler.Responder {
        let dates = Mutex(HTTPDate())
        return { (request, writer: consuming ResponseWriter, channel) in
            var requestLogger = logger
            requestLogger[metadataKey: "hb.request.id"] = .stringConvertible(RequestID())
            let response = try await withLogger(requestLogger) { logger in
                let context = BootRequestContext(source: .init(channel: channel, logger: logger))
                var response: Response
                do {
                    response = try await router.respond(to: request, context: context)
                } catch let error as HTTPParserError {
                    throw error  // the connection answers 400 and closes
                } catch {
                    logger.debug("Unrecognised Error", metadata: ["error.type": "\(error)"])
                    response = Response(status: .internalServerError, body: .init())
                }
                response.headers[.date] = dates.withLock { $0.now() }
                if let serverName { response.headers[.server] = serverName }
                return response
            }
            do {
                try await writer.write(response: response.head, body: response.body)
            } catch is HTTPParserError {
                // Not rethrown as itself: the connection would answer it with a second response.
                throw RoutedResponseError.parseErrorWhileWritingResponse
            }
        }
    }
}

enum RoutedResponseError: Error {
    case parseErrorWhileWritingResponse
}
