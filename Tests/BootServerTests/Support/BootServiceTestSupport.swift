@testable import BootServer
import NIOCore

/// Binds `service`, serves it (`run()` in a child task, as a ServiceGroup runs it) while `body` runs,
/// then cancels it and waits until `run()` returned: its sockets are closed and its state flushed.
func serving<S: BootService, T>(_ service: S, _ body: ([SocketAddress]) async throws -> T) async throws -> T {
    let addresses = try await service.bind()
    return try await withThrowingTaskGroup(of: Void.self, returning: T.self) { tasks in
        tasks.addTask { try await service.run() }
        let result: T
        do {
            result = try await body(addresses)
        } catch {
            tasks.cancelAll()
            try? await tasks.waitForAll()
            throw error
        }
        tasks.cancelAll()
        try await tasks.waitForAll()
        return result
    }
}
