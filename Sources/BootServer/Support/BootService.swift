import NIOCore
import ServiceLifecycle

/// What DHCP, TFTP and HTTP share, so `BootServices` starts all three one way: every service binds
/// its sockets first, and only when all are bound do they run, together, in one ServiceGroup. A busy
/// port or a missing address is then reported once (`StartupError.bind`, naming the service, the port
/// and the flag) before any service has answered a client, and nothing stays bound after it.
public protocol BootService: AnyObject, Service {
    /// `DHCP`, `TFTP` or `HTTP`: how logs and start-up errors name the service.
    var name: String { get }

    /// Binds every socket of the service and returns their addresses (with port 0, the ports the
    /// kernel chose). Reads nothing yet: what clients send waits in the sockets until `run()`.
    /// Throws the system's error as it came; `BootServices` phrases it for the administrator. A
    /// service whose bind failed holds nothing afterwards.
    func bind() async throws -> [SocketAddress]

    /// Serves the bound sockets until the task is cancelled or the group shuts down gracefully, then
    /// closes them and flushes the service's state. Throws `BootServiceNotBound` without `bind()`.
    func run() async throws

    /// Closes what `bind()` opened and flushes state: for a bound service that will not run (another
    /// service failed to bind), or to end a running one. Does nothing when nothing is bound.
    func stop() async
}

/// `run()` was called before `bind()`.
public struct BootServiceNotBound: Error, CustomStringConvertible {
    public let service: String
    public var description: String { "\(service): run() called before bind()" }
}
