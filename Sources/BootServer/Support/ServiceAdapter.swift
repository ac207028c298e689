import ServiceLifecycle

/// A loop of `BootServices` that is not a network service (the reload loop) as a member of its
/// ServiceGroup: the group's graceful shutdown (SIGTERM/SIGINT) cancels it. DHCP, TFTP and HTTP are
/// `BootService`s and handle shutdown themselves.
struct ServerService: Service {
    let name: String
    let body: @Sendable () async throws -> Void

    init(name: String, _ body: @escaping @Sendable () async throws -> Void) {
        self.name = name
        self.body = body
    }

    func run() async throws {
        try await cancelWhenGracefulShutdown { try await body() }
    }
}
