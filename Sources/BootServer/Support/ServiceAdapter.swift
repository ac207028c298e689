import ServiceLifecycle

/// Runs a server's `run()` inside a ServiceGroup, turning the group's graceful
/// shutdown (SIGTERM/SIGINT) into cancellation, which every server here treats
/// as "close the listeners, cut transfers cleanly, flush state, return".
public struct ServerService: Service {
    public let name: String
    let body: @Sendable () async throws -> Void

    public init(name: String, _ body: @escaping @Sendable () async throws -> Void) {
        self.name = name
        self.body = body
    }

    public func run() async throws {
        try await cancelWhenGracefulShutdown { try await body() }
    }
}
